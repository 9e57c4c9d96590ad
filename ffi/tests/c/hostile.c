/* Hostile calls through the C ABI: NULL for every pointer argument, invalid UTF-8 and JSON,
 * a freed session's cancel token, one session used from two threads, and several sessions on
 * several pthreads sharing one engine. Every call returns a status; nothing crashes.
 *   hostile MODEL.gguf WORKDIR EMBEDDER_DIR */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* The call must fail with TAILOR_ERR_INVALID_ARGUMENT and leave a message naming the problem. */
#define EXPECT_INVALID(call)                                                            \
    do {                                                                                \
        tailor_last_error_clear();                                                      \
        EXPECT_STATUS(call, TAILOR_ERR_INVALID_ARGUMENT);                               \
        ASSERT(tailor_last_error_code() == TAILOR_ERR_INVALID_ARGUMENT);                \
        ASSERT(tailor_last_error_message(NULL, 0) > 1);                                 \
        invalid_calls++;                                                                \
    } while (0)

static int invalid_calls = 0;

static int32_t count_chunks(const char *chunk, size_t len, void *user_data) {
    (void)chunk;
    (void)len;
    (*(int *)user_data)++;
    return 0;
}

/* ---- several sessions on several threads, one engine ---- */
#define THREADS 3
struct worker {
    TailorEngine *engine;
    int index;
    char text[2048];
    TailorStatus status;
};

static void *generate_worker(void *arg) {
    struct worker *w = arg;
    TailorSession *s = NULL;
    w->status = tailor_session_new(w->engine, NULL, &s);
    if (w->status != TAILOR_OK) return NULL;
    char *result = NULL;
    w->status = tailor_session_generate_chat(s, "[{\"role\": \"user\", \"content\": \"Name three colours.\"}]",
                                             "{\"max_tokens\": 12, \"ignore_eos\": true}", NULL, NULL, &result);
    if (w->status == TAILOR_OK) {
        /* Keep just the "text" value (timings differ between threads). */
        const char *t = strstr(result, "\"text\":");
        const char *end = t ? strstr(t, ",\"prompt_tokens\"") : NULL;
        snprintf(w->text, sizeof w->text, "%.*s", t && end ? (int)(end - t) : 1, t && end ? t : "?");
    }
    tailor_string_free(result);
    tailor_session_free(s);
    return NULL;
}

/* ---- one session from two threads: the second call gets TAILOR_ERR_BUSY ---- */
struct busy_state {
    TailorSession *session;
    atomic_int inside;  /* the first generation is running its callback */
    atomic_int release; /* let it finish */
    TailorStatus second;
};

static int32_t hold(const char *chunk, size_t len, void *user_data) {
    (void)chunk;
    (void)len;
    struct busy_state *b = user_data;
    atomic_store(&b->inside, 1);
    while (!atomic_load(&b->release)) {
    }
    return 1;
}

static void *second_caller(void *arg) {
    struct busy_state *b = arg;
    while (!atomic_load(&b->inside)) {
    }
    b->second = tailor_session_generate(b->session, "Hello", "{\"max_tokens\": 2}", NULL, NULL, NULL);
    atomic_store(&b->release, 1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf WORKDIR EMBEDDER_DIR\n", argv[0]);
        return 2;
    }
    const char *model = argv[1];
    char *s = NULL;
    int64_t id = 0;
    size_t n = 0;
    int32_t i32 = 0;
    const char *name = "x";
    float weight = 1.0f;
    uint32_t layer = 0;

    /* Status names and messages. */
    ASSERT(strcmp(tailor_status_name(TAILOR_ERR_PANIC), "TAILOR_ERR_PANIC") == 0);
    ASSERT(strcmp(tailor_status_name(12345), "TAILOR_ERR_UNKNOWN") == 0);
    tailor_last_error_clear();
    ASSERT(tailor_last_error_code() == TAILOR_OK);
    ASSERT(tailor_last_error_message(NULL, 0) == 0);

    /* Frees accept NULL. */
    tailor_string_free(NULL);
    tailor_engine_free(NULL);
    tailor_session_free(NULL);
    tailor_cancel_token_free(NULL);
    tailor_profile_free(NULL);
    tailor_training_free(NULL);

    /* Engine: NULL arguments, invalid UTF-8, bad JSON, a file that is not a model. */
    TailorEngine *engine = NULL;
    EXPECT_INVALID(tailor_engine_open(NULL, NULL, &engine));
    EXPECT_INVALID(tailor_engine_open(model, NULL, NULL));
    EXPECT_INVALID(tailor_engine_open("\xff\xfe.gguf", NULL, &engine));
    EXPECT_INVALID(tailor_engine_open(model, "{not json", &engine));
    EXPECT_INVALID(tailor_engine_open(model, "{\"threads\": \"two\"}", &engine));
    ASSERT(engine == NULL);
    char notmodel[1024];
    snprintf(notmodel, sizeof notmodel, "%s/not-a-model.gguf", argv[2]);
    FILE *f = fopen(notmodel, "wb");
    ASSERT(f);
    fputs("GGUF but not really", f);
    fclose(f);
    EXPECT_STATUS(tailor_engine_open(notmodel, NULL, &engine), TAILOR_ERR_CORRUPT_DATA);
    CHECK(tailor_engine_open(model, "{\"threads\": 2}", &engine));
    EXPECT_INVALID(tailor_engine_info(NULL, &s));
    EXPECT_INVALID(tailor_engine_info(engine, NULL));
    EXPECT_INVALID(tailor_engine_render_chat(NULL, "[]", &s));
    EXPECT_INVALID(tailor_engine_render_chat(engine, NULL, &s));
    EXPECT_INVALID(tailor_engine_render_chat(engine, "[]", NULL));
    EXPECT_INVALID(tailor_engine_render_chat(engine, "[{\"role\": 1}]", &s));
    CHECK(tailor_engine_render_chat(engine, "[{\"role\": \"user\", \"content\": \"Hi\"}]", &s));
    ASSERT_CONTAINS(s, "Hi");
    tailor_string_free(s);

    /* Adapters and steering. */
    EXPECT_INVALID(tailor_adapter_load(NULL, "a", "/tmp"));
    EXPECT_INVALID(tailor_adapter_load(engine, NULL, "/tmp"));
    EXPECT_INVALID(tailor_adapter_load(engine, "a", NULL));
    EXPECT_STATUS(tailor_adapter_load(engine, "a", "/nonexistent-adapter"), TAILOR_ERR_NOT_FOUND);
    EXPECT_INVALID(tailor_adapter_activate(NULL, &name, &weight, 1));
    EXPECT_INVALID(tailor_adapter_activate(engine, NULL, &weight, 1));
    EXPECT_INVALID(tailor_adapter_activate(engine, &name, NULL, 1));
    const char *null_name = NULL;
    EXPECT_INVALID(tailor_adapter_activate(engine, &null_name, &weight, 1));
    EXPECT_STATUS(tailor_adapter_activate(engine, &name, &weight, 1), TAILOR_ERR_NOT_FOUND);
    CHECK(tailor_adapter_activate(engine, NULL, NULL, 0));
    EXPECT_INVALID(tailor_adapter_unload(NULL, "a"));
    EXPECT_INVALID(tailor_adapter_unload(engine, NULL));
    EXPECT_STATUS(tailor_adapter_unload(engine, "a"), TAILOR_ERR_NOT_FOUND);
    EXPECT_INVALID(tailor_adapter_list(NULL, &s));
    EXPECT_INVALID(tailor_adapter_list(engine, NULL));
    EXPECT_INVALID(tailor_steering_load(NULL, "a", "/tmp/x.safetensors"));
    EXPECT_INVALID(tailor_steering_load(engine, NULL, "/tmp/x.safetensors"));
    EXPECT_INVALID(tailor_steering_load(engine, "a", NULL));
    EXPECT_STATUS(tailor_steering_load(engine, "a", "/nonexistent.safetensors"), TAILOR_ERR_NOT_FOUND);
    EXPECT_STATUS(tailor_steering_load(engine, "a", notmodel), TAILOR_ERR_CORRUPT_DATA);
    EXPECT_INVALID(tailor_steering_activate(NULL, &name, &weight, &layer, &layer, 1));
    EXPECT_INVALID(tailor_steering_activate(engine, NULL, &weight, &layer, &layer, 1));
    EXPECT_INVALID(tailor_steering_activate(engine, &name, NULL, &layer, &layer, 1));
    EXPECT_INVALID(tailor_steering_activate(engine, &name, &weight, NULL, &layer, 1));
    EXPECT_INVALID(tailor_steering_activate(engine, &name, &weight, &layer, NULL, 1));
    EXPECT_STATUS(tailor_steering_activate(engine, &name, &weight, &layer, &layer, 1), TAILOR_ERR_NOT_FOUND);
    CHECK(tailor_steering_activate(engine, NULL, NULL, NULL, NULL, 0));
    EXPECT_INVALID(tailor_steering_unload(NULL, "a"));
    EXPECT_INVALID(tailor_steering_unload(engine, NULL));
    EXPECT_STATUS(tailor_steering_unload(engine, "a"), TAILOR_ERR_NOT_FOUND);

    /* Sessions. */
    TailorSession *session = NULL;
    TailorCancelToken *token = NULL;
    int chunks = 0;
    EXPECT_INVALID(tailor_session_new(NULL, NULL, &session));
    EXPECT_INVALID(tailor_session_new(engine, NULL, NULL));
    EXPECT_INVALID(tailor_session_new(engine, "{\"context_length\": \"big\"}", &session));
    EXPECT_INVALID(tailor_session_new(engine, "{\"no_such_option\": 1}", &session));
    CHECK(tailor_session_new(engine, "{\"context_length\": 64}", &session));
    EXPECT_INVALID(tailor_session_cancel_token(NULL, &token));
    EXPECT_INVALID(tailor_session_cancel_token(session, NULL));
    EXPECT_INVALID(tailor_cancel_token_cancel(NULL));
    EXPECT_INVALID(tailor_session_generate(NULL, "Hi", NULL, NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_generate(session, NULL, NULL, NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_generate(session, "caf\xc3", NULL, NULL, NULL, &s)); /* cut UTF-8 */
    EXPECT_INVALID(tailor_session_generate(session, "Hi", "[1, 2]", NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_generate(session, "Hi", "{\"sampling\": {\"temperature\": -1, \"top_p\": 7}}", NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_generate(session, "", NULL, NULL, NULL, &s)); /* empty prompt */
    ASSERT(s == NULL);
    EXPECT_INVALID(tailor_session_generate_chat(NULL, "[]", NULL, NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_generate_chat(session, NULL, NULL, NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_generate_chat(session, "{\"role\": \"user\"}", NULL, NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_chat(NULL, "Hi", NULL, NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_chat(session, NULL, NULL, NULL, NULL, &s));
    EXPECT_INVALID(tailor_session_chat(session, "\xc0\xaf", NULL, NULL, NULL, &s)); /* overlong */
    EXPECT_INVALID(tailor_session_history(NULL, &s));
    EXPECT_INVALID(tailor_session_history(session, NULL));
    EXPECT_INVALID(tailor_session_set_history(NULL, "[]"));
    EXPECT_INVALID(tailor_session_set_history(session, NULL));
    EXPECT_INVALID(tailor_session_set_history(session, "[{\"content\": \"no role\"}]"));
    EXPECT_INVALID(tailor_session_cached_tokens(NULL, &n));
    EXPECT_INVALID(tailor_session_cached_tokens(session, NULL));
    EXPECT_INVALID(tailor_session_reset(NULL));
    EXPECT_INVALID(tailor_session_set_memory_enabled(NULL, 0));
    EXPECT_INVALID(tailor_session_set_memory_enabled(session, 1)); /* an engine session has no memories */
    CHECK(tailor_session_set_memory_enabled(session, 0));
    TailorSession *with_memory = NULL;
    EXPECT_INVALID(tailor_session_new(engine, "{\"memory\": true}", &with_memory));
    ASSERT(with_memory == NULL);
    /* A prompt longer than the 64-token window. */
    char longp[4096];
    memset(longp, 0, sizeof longp);
    for (int i = 0; i < 100; i++) strcat(longp, "word ");
    EXPECT_STATUS(tailor_session_generate(session, longp, NULL, NULL, NULL, NULL), TAILOR_ERR_CONTEXT_OVERFLOW);
    /* Valid calls still work after all that; NULL callback and NULL result are fine. */
    CHECK(tailor_session_generate(session, "Hi", "{\"max_tokens\": 2}", NULL, NULL, NULL));
    CHECK(tailor_session_generate(session, "Hi", "{\"max_tokens\": 3, \"ignore_eos\": true}", count_chunks, &chunks, NULL));
    CHECK(tailor_session_cached_tokens(session, &n));
    ASSERT(n > 0);
    CHECK(tailor_session_set_history(session, "[{\"role\": \"system\", \"content\": \"Be brief.\"}]"));
    CHECK(tailor_session_history(session, &s));
    ASSERT_CONTAINS(s, "Be brief.");
    tailor_string_free(s);
    CHECK(tailor_session_reset(session));
    CHECK(tailor_session_cached_tokens(session, &n));
    ASSERT(n == 0);

    /* One session used from two threads at once: the second call is refused, not raced. */
    struct busy_state b;
    memset(&b, 0, sizeof b);
    b.session = session;
    pthread_t th;
    ASSERT(pthread_create(&th, NULL, second_caller, &b) == 0);
    CHECK(tailor_session_generate(session, "Hello", "{\"max_tokens\": 4, \"ignore_eos\": true}", hold, &b, NULL));
    ASSERT(pthread_join(th, NULL) == 0);
    ASSERT(b.second == TAILOR_ERR_BUSY);

    /* A freed session's cancel token stays valid and harmless. */
    CHECK(tailor_session_cancel_token(session, &token));
    tailor_session_free(session);
    CHECK(tailor_cancel_token_cancel(token));
    CHECK(tailor_cancel_token_cancel(token));
    tailor_cancel_token_free(token);

    /* Several sessions on several threads sharing the engine: greedy answers agree. */
    struct worker w[THREADS];
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].engine = engine;
        w[i].index = i;
        ASSERT(pthread_create(&threads[i], NULL, generate_worker, &w[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) ASSERT(pthread_join(threads[i], NULL) == 0);
    for (int i = 0; i < THREADS; i++) {
        printf("thread %d: %s\n", i, w[i].text);
        ASSERT(w[i].status == TAILOR_OK);
        ASSERT(strcmp(w[i].text, w[0].text) == 0);
    }

    /* Profiles, memories, feedback, training. */
    char profile_path[1024];
    snprintf(profile_path, sizeof profile_path, "%s/hostile.db", argv[2]);
    TailorProfile *profile = NULL;
    EXPECT_INVALID(tailor_profile_open(NULL, profile_path, argv[3], NULL, &profile));
    EXPECT_INVALID(tailor_profile_open(engine, NULL, argv[3], NULL, &profile));
    EXPECT_INVALID(tailor_profile_open(engine, profile_path, NULL, NULL, &profile));
    EXPECT_INVALID(tailor_profile_open(engine, profile_path, argv[3], NULL, NULL));
    EXPECT_INVALID(tailor_profile_open(engine, profile_path, argv[3], "{\"memory_prompt\": 5}", &profile));
    EXPECT_STATUS(tailor_profile_open(engine, profile_path, "/nonexistent-embedder", NULL, &profile), TAILOR_ERR_NOT_FOUND);
    EXPECT_STATUS(tailor_profile_open(engine, notmodel, argv[3], NULL, &profile), TAILOR_ERR_CORRUPT_DATA);
    ASSERT(profile == NULL);
    uint8_t key[32] = {1, 2, 3};
    char enc_path[1100];
    snprintf(enc_path, sizeof enc_path, "%s/encrypted.db", argv[2]);
    EXPECT_INVALID(tailor_profile_open_encrypted(engine, enc_path, argv[3], NULL, 32, NULL, &profile));
    EXPECT_INVALID(tailor_profile_open_encrypted(engine, enc_path, argv[3], key, 16, NULL, &profile));
    EXPECT_INVALID(tailor_profile_open_encrypted(engine, NULL, argv[3], key, 32, NULL, &profile));
    TailorStatus enc = tailor_profile_open_encrypted(engine, enc_path, argv[3], key, 32, NULL, &profile);
    ASSERT(enc == TAILOR_ERR_UNSUPPORTED || enc == TAILOR_OK); /* built without / with `encryption` */
    tailor_profile_free(profile);
    profile = NULL;
    CHECK(tailor_profile_open(engine, profile_path, argv[3], NULL, &profile));
    EXPECT_INVALID(tailor_profile_session_new(NULL, NULL, &session));
    EXPECT_INVALID(tailor_profile_session_new(profile, NULL, NULL));
    EXPECT_INVALID(tailor_profile_active_version(NULL, &s));
    EXPECT_INVALID(tailor_profile_active_version(profile, NULL));
    EXPECT_INVALID(tailor_profile_rollback(NULL, &s));
    EXPECT_STATUS(tailor_profile_rollback(profile, NULL), TAILOR_ERR_NOT_FOUND);
    EXPECT_INVALID(tailor_memory_add(NULL, "text", NULL, &id));
    EXPECT_INVALID(tailor_memory_add(profile, NULL, NULL, &id));
    EXPECT_INVALID(tailor_memory_add(profile, "", NULL, &id));
    EXPECT_INVALID(tailor_memory_add(profile, "\xe2\x82", NULL, &id));
    EXPECT_INVALID(tailor_memory_add(profile, "text", "{broken", &id));
    EXPECT_INVALID(tailor_memory_search(NULL, "q", 3, NULL, &s));
    EXPECT_INVALID(tailor_memory_search(profile, NULL, 3, NULL, &s));
    EXPECT_INVALID(tailor_memory_search(profile, "q", 3, NULL, NULL));
    EXPECT_INVALID(tailor_memory_search(profile, "q", 3, "[]", &s));
    EXPECT_INVALID(tailor_memory_list(NULL, 0, 10, &s));
    EXPECT_INVALID(tailor_memory_list(profile, 0, 10, NULL));
    EXPECT_INVALID(tailor_memory_forget(NULL, 1));
    EXPECT_STATUS(tailor_memory_forget(profile, 424242), TAILOR_ERR_NOT_FOUND);
    EXPECT_INVALID(tailor_memory_forget_all(NULL, &n));
    EXPECT_INVALID(tailor_memory_export(NULL, &s));
    EXPECT_INVALID(tailor_memory_export(profile, NULL));
    EXPECT_INVALID(tailor_memory_import(NULL, "{}", &s));
    EXPECT_INVALID(tailor_memory_import(profile, NULL, &s));
    EXPECT_STATUS(tailor_memory_import(profile, "{\"not\": \"an export\"}", &s), TAILOR_ERR_CORRUPT_DATA);
    EXPECT_INVALID(tailor_memory_count(NULL, &n));
    EXPECT_INVALID(tailor_memory_count(profile, NULL));
    EXPECT_INVALID(tailor_feedback_add(NULL, "{}", &id));
    EXPECT_INVALID(tailor_feedback_add(profile, NULL, &id));
    EXPECT_INVALID(tailor_feedback_add(profile, "{\"prompt\": \"p\", \"answer\": \"a\", \"kind\": \"meh\"}", &id));
    EXPECT_INVALID(tailor_feedback_list(NULL, NULL, &s));
    EXPECT_INVALID(tailor_feedback_list(profile, NULL, NULL));
    EXPECT_INVALID(tailor_feedback_forget(NULL, &id, 1, NULL));
    EXPECT_INVALID(tailor_feedback_forget(profile, NULL, 1, NULL));
    EXPECT_INVALID(tailor_feedback_forget_all(NULL, NULL));
    TailorTrainingJob *job = NULL;
    EXPECT_INVALID(tailor_training_start(NULL, NULL, NULL, NULL, NULL, &job));
    EXPECT_INVALID(tailor_training_start(profile, NULL, NULL, NULL, NULL, NULL));
    EXPECT_INVALID(tailor_training_start(profile, "{\"max_stepz\": 2}", NULL, NULL, NULL, &job));
    EXPECT_INVALID(tailor_training_start(profile, "{\"learning_rate\": \"fast\"}", NULL, NULL, NULL, &job));
    EXPECT_INVALID(tailor_training_status(NULL, &i32, &s));
    EXPECT_INVALID(tailor_training_cancel(NULL));
    EXPECT_INVALID(tailor_training_wait(NULL, &i32, &s));
    EXPECT_INVALID(tailor_training_running(NULL, &i32));
    EXPECT_INVALID(tailor_training_running(profile, NULL));
    EXPECT_INVALID(tailor_profile_set_auto_train(NULL, 3));
    EXPECT_INVALID(tailor_profile_set_auto_train(profile, -1));
    EXPECT_INVALID(tailor_profile_training_job(NULL, &job));
    EXPECT_INVALID(tailor_profile_training_job(profile, NULL));
    ASSERT(job == NULL);
    CHECK(tailor_profile_training_job(profile, &job)); /* no run yet */
    ASSERT(job == NULL);
    /* No feedback: the job fails, with a status and a message. */
    CHECK(tailor_training_start(profile, "{\"max_steps\": 1}", NULL, NULL, NULL, &job));
    EXPECT_STATUS(tailor_training_wait(job, &i32, &s), TAILOR_ERR_INVALID_ARGUMENT);
    ASSERT(i32 == TAILOR_JOB_FAILED);
    ASSERT_CONTAINS(s, "NoFeedback");
    tailor_string_free(s);
    tailor_training_free(job);
    /* The profile's last run, looked at through a second handle. */
    job = NULL;
    CHECK(tailor_profile_training_job(profile, &job));
    ASSERT(job != NULL);
    CHECK(tailor_training_status(job, &i32, NULL));
    ASSERT(i32 == TAILOR_JOB_FAILED);
    tailor_training_free(job);
    CHECK(tailor_training_running(profile, &i32));
    ASSERT(i32 == 0);
    /* Valid calls on the profile still work. */
    CHECK(tailor_memory_add(profile, "The user's favourite colour is teal.", NULL, &id));
    CHECK(tailor_memory_forget_all(profile, &n));
    ASSERT(n == 1);
    tailor_profile_free(profile);

    /* The last error is per thread and copied, never truncated mid-character. */
    TailorEngine *none = NULL;
    EXPECT_INVALID(tailor_engine_open("\xff", NULL, &none));
    char tiny[4];
    size_t need = tailor_last_error_message(tiny, sizeof tiny);
    ASSERT(need > sizeof tiny && strlen(tiny) == 3);
    ASSERT(tailor_last_error_message(tiny, 1) == need && tiny[0] == '\0');

    tailor_engine_free(engine);
    printf("hostile: ok (%d invalid-argument calls)\n", invalid_calls);
    return 0;
}
