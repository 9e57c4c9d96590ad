/* The full flow through the C ABI, as an app would run it:
 *   flow MODEL.gguf WORKDIR EMBEDDER_DIR [MAX_TOKENS]
 * open an engine, stream a generation and stop it from the callback, cancel one from another
 * pthread, ... Exits 0 and prints "flow: ok" when every step held. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* ---- streaming: stop from the callback after `stop_after` chunks ---- */
struct stream_state {
    int chunks;
    int stop_after;
    size_t bytes;
    char text[4096];
};

static int32_t on_chunk(const char *chunk, size_t len, void *user_data) {
    struct stream_state *s = user_data;
    ASSERT(chunk[len] == '\0');
    ASSERT(strlen(chunk) == len);
    if (s->bytes + len < sizeof s->text) {
        memcpy(s->text + s->bytes, chunk, len);
        s->bytes += len;
        s->text[s->bytes] = '\0';
    }
    s->chunks++;
    return s->chunks >= s->stop_after ? 1 : 0;
}

/* ---- cancel from another thread ---- */
struct cancel_state {
    TailorCancelToken *token;
    atomic_int first_chunk; /* set by the callback */
    atomic_int cancelled;   /* set by the canceller */
    int chunks;
};

static int32_t on_chunk_wait_cancel(const char *chunk, size_t len, void *user_data) {
    (void)chunk;
    (void)len;
    struct cancel_state *s = user_data;
    s->chunks++;
    atomic_store(&s->first_chunk, 1);
    /* Hold the generation until the other thread has cancelled, so the cancel certainly
     * lands while it runs. */
    while (!atomic_load(&s->cancelled)) {
    }
    return 0;
}

static void *canceller(void *arg) {
    struct cancel_state *s = arg;
    while (!atomic_load(&s->first_chunk)) {
    }
    CHECK(tailor_cancel_token_cancel(s->token));
    atomic_store(&s->cancelled, 1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf WORKDIR EMBEDDER_DIR [MAX_TOKENS]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1];
    int max_tokens = argc > 4 ? atoi(argv[4]) : 24;
    char params[256];

    ASSERT(tailor_abi_version() == TAILOR_ABI_VERSION);
    printf("tailor %s, ABI %u\n", tailor_version(), tailor_abi_version());

    /* A missing model: a status and a message, no crash. */
    TailorEngine *engine = (TailorEngine *)1;
    EXPECT_STATUS(tailor_engine_open("/nonexistent/model.gguf", NULL, &engine), TAILOR_ERR_NOT_FOUND);
    ASSERT(engine == NULL);
    char small[8];
    size_t need = tailor_last_error_message(small, sizeof small);
    ASSERT(need > sizeof small && strlen(small) == sizeof small - 1);
    char *big = malloc(need);
    ASSERT(tailor_last_error_message(big, need) == need && strlen(big) == need - 1);
    ASSERT_CONTAINS(big, "/nonexistent/model.gguf");
    free(big);

    CHECK(tailor_engine_open(model, "{\"threads\": 2}", &engine));
    char *info = NULL;
    CHECK(tailor_engine_info(engine, &info));
    printf("engine: %s\n", info);
    ASSERT_CONTAINS(info, "\"n_layers\"");
    tailor_string_free(info);

    /* 1. Stream a generation and stop it from the callback after 3 chunks. */
    TailorSession *session = NULL;
    CHECK(tailor_session_new(engine, NULL, &session));
    struct stream_state st = {0};
    st.stop_after = 3;
    snprintf(params, sizeof params, "{\"max_tokens\": %d, \"ignore_eos\": true}", max_tokens);
    char *result = NULL;
    CHECK(tailor_session_chat(session, "What is the capital of France?", params, on_chunk, &st, &result));
    printf("streamed (%d chunks): %s\n", st.chunks, st.text);
    ASSERT(st.chunks == 3);
    ASSERT_CONTAINS(result, "\"finish_reason\":\"callback\"");
    tailor_string_free(result);

    /* 2. Cancel a generation from another pthread. */
    struct cancel_state cs;
    memset(&cs, 0, sizeof cs);
    CHECK(tailor_session_cancel_token(session, &cs.token));
    pthread_t th;
    ASSERT(pthread_create(&th, NULL, canceller, &cs) == 0);
    snprintf(params, sizeof params, "{\"max_tokens\": %d, \"ignore_eos\": true}", max_tokens * 4);
    result = NULL;
    EXPECT_STATUS(tailor_session_generate(session, "Once upon a time", params, on_chunk_wait_cancel, &cs, &result),
                  TAILOR_ERR_CANCELLED);
    ASSERT(pthread_join(th, NULL) == 0);
    ASSERT_CONTAINS(result, "\"finish_reason\":\"cancelled\"");
    ASSERT(cs.chunks < max_tokens * 4);
    printf("cancelled after %d chunks\n", cs.chunks);
    tailor_string_free(result);
    tailor_cancel_token_free(cs.token);

    tailor_session_free(session);
    tailor_engine_free(engine);
    printf("flow: ok\n");
    return 0;
}
