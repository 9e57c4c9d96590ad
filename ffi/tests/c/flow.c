/* The full flow through the C ABI, as an app would run it:
 *   flow MODEL.gguf WORKDIR EMBEDDER_DIR MAX_TOKENS STEERING.safetensors
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

/* ---- training progress (called on the training thread) ---- */
struct progress_state {
    atomic_int calls;
    atomic_int stop_at; /* non-zero: ask to stop at this step */
    atomic_size_t last_step;
};

static int32_t on_progress(const TailorProgress *p, void *user_data) {
    struct progress_state *s = user_data;
    ASSERT(p->step >= 1 && p->step <= p->total_steps);
    ASSERT(p->loss == p->loss); /* not NaN */
    atomic_fetch_add(&s->calls, 1);
    atomic_store(&s->last_step, p->step);
    int stop_at = atomic_load(&s->stop_at);
    return stop_at && (int)p->step >= stop_at ? 1 : 0;
}

/* The finalizer of the progress callback's user_data. */
static atomic_int freed_user_data;
static void free_progress_state(void *user_data) {
    ASSERT(user_data != NULL);
    atomic_fetch_add(&freed_user_data, 1);
}

static int64_t add_feedback(TailorProfile *profile, const char *prompt, const char *answer, const char *corrected) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"prompt\": \"%s\", \"answer\": \"%s\", \"kind\": \"correction\", \"corrected\": \"%s\"}", prompt,
             answer, corrected);
    int64_t id = 0;
    CHECK(tailor_feedback_add(profile, json, &id));
    ASSERT(id > 0);
    return id;
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
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODEL.gguf WORKDIR EMBEDDER_DIR MAX_TOKENS STEERING.safetensors\n", argv[0]);
        return 2;
    }
    const char *model = argv[1];
    int max_tokens = atoi(argv[4]);
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

    /* 1b. A constrained answer: a JSON schema and a forced tool call always parse; a bad
     * grammar is an invalid argument before any work. The answers only on the real model
     * (MAX_TOKENS >= 16): the valgrind run's tiny byte-level model needs a 376-token prompt
     * for the tool list, minutes under valgrind, and the C boundary is the same calls. */
    if (max_tokens >= 16) {
        CHECK(tailor_session_generate_chat(session, "[{\"role\": \"user\", \"content\": \"Is Paris in France?\"}]",
                                           "{\"max_tokens\": 96, \"grammar\": {\"type\": \"json_schema\", \"value\": {\"type\": \"object\", "
                                           "\"properties\": {\"answer\": {\"enum\": [\"yes\", \"no\"]}}, \"required\": [\"answer\"], "
                                           "\"additionalProperties\": false}}}",
                                           NULL, NULL, &result));
        printf("schema: %s\n", result);
        ASSERT(strstr(result, "\"text\":\"{\\\"answer\\\": \\\"yes\\\"}\"") || strstr(result, "\"text\":\"{\\\"answer\\\": \\\"no\\\"}\""));
        ASSERT_CONTAINS(result, "\"finish_reason\":\"stop\"");
        tailor_string_free(result);
        CHECK(tailor_session_generate_chat(session, "[{\"role\": \"user\", \"content\": \"Turn the lights on.\"}]",
                                           "{\"max_tokens\": 96, \"tools\": {\"tools\": [{\"name\": \"lights\", \"parameters\": "
                                           "{\"properties\": {\"on\": {\"type\": \"boolean\"}}, \"required\": [\"on\"]}}], \"choice\": \"required\"}}",
                                           NULL, NULL, &result));
        printf("tool call: %s\n", result);
        ASSERT_CONTAINS(result, "\"tool_calls\":[{\"id\":\"call_");
        ASSERT_CONTAINS(result, "\"name\":\"lights\",\"arguments\":\"{\\\"on\\\": ");
        tailor_string_free(result);
    }
    result = NULL;
    EXPECT_STATUS(tailor_session_generate(session, "x", "{\"grammar\": {\"type\": \"regex\", \"value\": \"(unclosed\"}}", NULL, NULL, &result),
                  TAILOR_ERR_INVALID_ARGUMENT);
    ASSERT(result == NULL);
    need = tailor_last_error_message(NULL, 0);
    big = malloc(need);
    tailor_last_error_message(big, need);
    ASSERT_CONTAINS(big, "grammar");
    free(big);

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

    /* Steering: a vector added to the residual stream changes the greedy answer; turned
     * off, the answer is the base's again, exactly. */
    char *base = NULL, *steered = NULL, *again = NULL;
    snprintf(params, sizeof params, "{\"max_tokens\": 8, \"ignore_eos\": true}");
    CHECK(tailor_session_reset(session));
    CHECK(tailor_session_generate(session, "The weather today is", params, NULL, NULL, &base));
    CHECK(tailor_steering_load(engine, "push", argv[5]));
    const char *sname = "push";
    const float scale = 8.0f;
    const uint32_t first = 0, last = 1;
    CHECK(tailor_steering_activate(engine, &sname, &scale, &first, &last, 1));
    CHECK(tailor_session_generate(session, "The weather today is", params, NULL, NULL, &steered));
    CHECK(tailor_steering_activate(engine, NULL, NULL, NULL, NULL, 0));
    CHECK(tailor_session_generate(session, "The weather today is", params, NULL, NULL, &again));
    const char *tb = strstr(base, "\"token_ids\""), *ts = strstr(steered, "\"token_ids\""), *ta = strstr(again, "\"token_ids\"");
    ASSERT(tb && ts && ta);
    ASSERT(strncmp(tb, ts, strcspn(tb, "]")) != 0);
    ASSERT(strncmp(tb, ta, strcspn(tb, "]") + 1) == 0);
    printf("steering: %s -> %s\n", base, steered);
    tailor_string_free(base);
    tailor_string_free(steered);
    tailor_string_free(again);
    CHECK(tailor_adapter_list(engine, &result));
    ASSERT_CONTAINS(result, "{\"name\":\"push\",\"active_scale\":null}");
    tailor_string_free(result);
    CHECK(tailor_steering_unload(engine, "push"));

    tailor_session_free(session);

    /* 3. A profile: memories. */
    char profile_path[1024], *json = NULL;
    snprintf(profile_path, sizeof profile_path, "%s/me.db", argv[2]);
    TailorProfile *profile = NULL;
    CHECK(tailor_profile_open(engine, profile_path, argv[3], NULL, &profile));
    TailorProfile *second = NULL;
    EXPECT_STATUS(tailor_profile_open(engine, profile_path, argv[3], NULL, &second), TAILOR_ERR_BUSY);
    ASSERT(second == NULL);
    /* This flow starts its training runs itself (section 7 turns automatic runs on). */
    CHECK(tailor_profile_set_auto_train(profile, 0));
    int64_t dog = 0, cat = 0, city = 0;
    CHECK(tailor_memory_add(profile, "I have a golden retriever called Biscuit.", "{\"source\": \"chat\"}", &dog));
    CHECK(tailor_memory_add(profile, "My sister's cat is named Pepper.", NULL, &cat));
    CHECK(tailor_memory_add(profile, "I live in Lisbon and work as a nurse.", NULL, &city));
    ASSERT(dog > 0 && cat > 0 && city > 0 && dog != cat && cat != city);
    size_t count = 0;
    CHECK(tailor_memory_count(profile, &count));
    ASSERT(count == 3);
    CHECK(tailor_memory_search(profile, "What is my dog's name?", 3, NULL, &json)); /* hybrid */
    printf("search: %s\n", json);
    ASSERT_CONTAINS(json, "Biscuit");
    tailor_string_free(json);
    CHECK(tailor_memory_search(profile, "What is my dog's name?", 1, "{\"mode\": \"vector\"}", &json));
    ASSERT_CONTAINS(json, "Biscuit");
    ASSERT(strstr(json, "Pepper") == NULL);
    tailor_string_free(json);
    CHECK(tailor_memory_search(profile, "Lisbon", 1, "{\"mode\": \"lexical\"}", &json));
    ASSERT_CONTAINS(json, "nurse");
    tailor_string_free(json);
    CHECK(tailor_memory_list(profile, 0, 10, &json));
    ASSERT_CONTAINS(json, "Pepper");
    tailor_string_free(json);
    CHECK(tailor_memory_export(profile, &json));
    ASSERT_CONTAINS(json, "golden retriever");
    tailor_string_free(json);
    CHECK(tailor_memory_forget(profile, cat));
    EXPECT_STATUS(tailor_memory_forget(profile, cat), TAILOR_ERR_NOT_FOUND);
    CHECK(tailor_memory_count(profile, &count));
    ASSERT(count == 2);

    /* 4. A profile session retrieves memories into the chat prompt. */
    TailorSession *me = NULL;
    CHECK(tailor_profile_session_new(profile, "{\"system\": \"Answer briefly.\"}", &me));
    snprintf(params, sizeof params, "{\"max_tokens\": %d}", max_tokens);
    CHECK(tailor_session_chat(me, "What is my dog called?", params, NULL, NULL, &result));
    printf("with memory: %s\n", result);
    ASSERT_CONTAINS(result, "\"memories\":[{\"id\":");
    tailor_string_free(result);
    /* Memories off: the adapter answers alone; on again: retrieved again. */
    const char *dog_q = "[{\"role\": \"user\", \"content\": \"What is my dog called?\"}]";
    CHECK(tailor_session_set_memory_enabled(me, 0));
    CHECK(tailor_session_generate_chat(me, dog_q, "{\"max_tokens\": 1}", NULL, NULL, &result));
    ASSERT_CONTAINS(result, "\"memories\":[]");
    tailor_string_free(result);
    CHECK(tailor_session_set_memory_enabled(me, 1));
    CHECK(tailor_session_generate_chat(me, dog_q, "{\"max_tokens\": 1}", NULL, NULL, &result));
    ASSERT_CONTAINS(result, "\"memories\":[{\"id\":");
    tailor_string_free(result);
    TailorSession *alone = NULL;
    CHECK(tailor_profile_session_new(profile, "{\"memory\": false}", &alone));
    CHECK(tailor_session_generate_chat(alone, dog_q, "{\"max_tokens\": 1}", NULL, NULL, &result));
    ASSERT_CONTAINS(result, "\"memories\":[]");
    tailor_string_free(result);
    tailor_session_free(alone);

    /* 5. Feedback, and a short training run with progress; the promoted version is swapped
     *    into the registry. */
    int64_t first_feedback = add_feedback(profile, "What is my dog called?", "I don't know.", "Your dog is called Biscuit.");
    add_feedback(profile, "What is my dog's name?", "I am not sure.", "Your dog's name is Biscuit.");
    add_feedback(profile, "Where do I live?", "I cannot know that.", "You live in Lisbon.");
    add_feedback(profile, "What do I do for work?", "No idea.", "You work as a nurse.");
    CHECK(tailor_feedback_list(profile, NULL, &json));
    ASSERT_CONTAINS(json, "Lisbon");
    tailor_string_free(json);
    int32_t running = -1;
    CHECK(tailor_training_running(profile, &running));
    ASSERT(running == 0); /* automatic runs are off */
    TailorTrainingJob *job = NULL;
    CHECK(tailor_profile_training_job(profile, &job));
    ASSERT(job == NULL);

    char *version = NULL;
    CHECK(tailor_profile_active_version(profile, &version));
    ASSERT(version == NULL);
    struct progress_state ps;
    memset(&ps, 0, sizeof ps);
    const char *train_opts = "{\"max_steps\": 3, \"learning_rate\": 0.002, \"warmup_steps\": 0, \"max_seq_len\": 64, "
                             "\"held_out_every\": 1000, \"max_general_increase\": 10.0, \"replay\": 0, "
                             "\"distill\": 0, \"max_specificity_loss\": null, \"checkpoint_every\": 0}";
    CHECK(tailor_training_start(profile, train_opts, on_progress, &ps, free_progress_state, &job));
    TailorTrainingJob *busy = NULL;
    int other = 0;
    EXPECT_STATUS(tailor_training_start(profile, train_opts, NULL, &other, free_progress_state, &busy), TAILOR_ERR_BUSY);
    ASSERT(atomic_load(&freed_user_data) == 1); /* a failed start releases user_data at once */
    int32_t state = -1;
    CHECK(tailor_training_wait(job, &state, &json));
    printf("training: %s (%d progress calls)\n", json, atomic_load(&ps.calls));
    ASSERT(state == TAILOR_JOB_PROMOTED);
    ASSERT(atomic_load(&ps.calls) == 3);
    ASSERT(atomic_load(&freed_user_data) == 2); /* released once the run ended */
    ASSERT_CONTAINS(json, "\"state\":\"promoted\"");
    tailor_string_free(json);
    CHECK(tailor_training_status(job, &state, NULL));
    ASSERT(state == TAILOR_JOB_PROMOTED);
    tailor_training_free(job);

    CHECK(tailor_profile_active_version(profile, &version));
    ASSERT(version != NULL);
    printf("active version: %s\n", version);
    CHECK(tailor_adapter_list(engine, &json));
    printf("registry: %s\n", json);
    ASSERT_CONTAINS(json, "\"name\":\"personal\"");
    ASSERT_CONTAINS(json, "\"active_weight\":1.0");
    tailor_string_free(json);

    /* The running session picks the new adapter up at its next generation. */
    CHECK(tailor_session_chat(me, "Where do I live?", params, NULL, NULL, &result));
    printf("after training: %s\n", result);
    tailor_string_free(result);

    /* The promoted version is a PEFT directory any engine can load by name. */
    char dir[1200];
    snprintf(dir, sizeof dir, "%s.adapters/%s", profile_path, version);
    CHECK(tailor_adapter_load(engine, "copy", dir));
    const char *names[] = {"personal", "copy"};
    const float weights[] = {0.5f, 0.5f};
    CHECK(tailor_adapter_activate(engine, names, weights, 2));
    CHECK(tailor_adapter_list(engine, &json));
    ASSERT_CONTAINS(json, "\"name\":\"copy\"");
    ASSERT_CONTAINS(json, "\"active_weight\":0.5");
    tailor_string_free(json);
    CHECK(tailor_adapter_unload(engine, "copy"));
    EXPECT_STATUS(tailor_adapter_unload(engine, "copy"), TAILOR_ERR_NOT_FOUND);
    tailor_string_free(version);

    /* 6. Cancel a run: from the progress callback, then with tailor_training_cancel. */
    memset(&ps, 0, sizeof ps);
    atomic_store(&ps.stop_at, 1);
    add_feedback(profile, "What is my sister's cat called?", "Whiskers?", "Her cat is named Pepper.");
    const char *long_opts = "{\"max_steps\": 200, \"max_seq_len\": 64, \"held_out_every\": 1000, \"replay\": 0, "
                            "\"distill\": 0, \"max_specificity_loss\": null, \"checkpoint_every\": 0}";
    CHECK(tailor_training_start(profile, long_opts, on_progress, &ps, NULL, &job));
    TailorStatus waited = tailor_training_wait(job, &state, &json);
    printf("stopped by the callback: %s\n", json);
    ASSERT(waited == TAILOR_ERR_CANCELLED);
    ASSERT(state == TAILOR_JOB_CANCELLED);
    ASSERT(atomic_load(&ps.calls) == 1);
    tailor_string_free(json);
    tailor_training_free(job);

    memset(&ps, 0, sizeof ps);
    CHECK(tailor_training_start(profile, long_opts, on_progress, &ps, NULL, &job));
    CHECK(tailor_training_cancel(job));
    EXPECT_STATUS(tailor_training_wait(job, &state, &json), TAILOR_ERR_CANCELLED);
    ASSERT(state == TAILOR_JOB_CANCELLED);
    ASSERT(atomic_load(&ps.calls) <= 1);
    tailor_string_free(json);
    tailor_training_free(job);

    /* The cancelled runs changed nothing: the promoted version still runs. */
    CHECK(tailor_profile_active_version(profile, &version));
    ASSERT(version != NULL);

    /* Forgetting feedback the version learned from deletes it and swaps the base back in. */
    char *tainted = NULL;
    CHECK(tailor_feedback_forget(profile, &first_feedback, 1, &tainted));
    printf("forgetting feedback %lld tainted %s\n", (long long)first_feedback, tainted);
    ASSERT_CONTAINS(tainted, version);
    tailor_string_free(tainted);
    tailor_string_free(version);
    CHECK(tailor_profile_active_version(profile, &version));
    ASSERT(version == NULL);
    CHECK(tailor_adapter_list(engine, &json));
    ASSERT(strstr(json, "\"active_weight\":1.0") == NULL);
    tailor_string_free(json);
    CHECK(tailor_feedback_list(profile, NULL, &json));
    ASSERT(strstr(json, "\"What is my dog called?\"") == NULL);
    tailor_string_free(json);

    /* 7. Automatic training: with the threshold at 2 new events, the second feedback starts a
     *    background run by itself; a handle from tailor_profile_training_job follows it (its
     *    free leaves the run going), and tailor_training_start is busy meanwhile. */
    CHECK(tailor_feedback_forget_all(profile, NULL));
    CHECK(tailor_profile_set_auto_train(profile, 2));
    add_feedback(profile, "What is my dog called?", "Rex.", "Your dog is called Biscuit.");
    CHECK(tailor_training_running(profile, &running));
    ASSERT(running == 0);
    add_feedback(profile, "Where do I live?", "In Paris.", "You live in Lisbon.");
    CHECK(tailor_training_running(profile, &running));
    ASSERT(running == 1);
    job = NULL;
    CHECK(tailor_profile_training_job(profile, &job));
    ASSERT(job != NULL);
    tailor_training_free(job); /* a look only: the run goes on */
    CHECK(tailor_training_running(profile, &running));
    ASSERT(running == 1);
    TailorTrainingJob *explicit_job = NULL;
    EXPECT_STATUS(tailor_training_start(profile, NULL, NULL, NULL, NULL, &explicit_job), TAILOR_ERR_BUSY);
    ASSERT(explicit_job == NULL);
    job = NULL;
    CHECK(tailor_profile_training_job(profile, &job));
    CHECK(tailor_training_status(job, &state, NULL));
    ASSERT(state == TAILOR_JOB_RUNNING);
    CHECK(tailor_training_cancel(job));
    EXPECT_STATUS(tailor_training_wait(job, &state, &json), TAILOR_ERR_CANCELLED);
    printf("automatic run: %s\n", json);
    ASSERT(state == TAILOR_JOB_CANCELLED);
    tailor_string_free(json);
    tailor_training_free(job);
    CHECK(tailor_training_running(profile, &running));
    ASSERT(running == 0);

    tailor_session_free(me);
    tailor_profile_free(profile);
    tailor_engine_free(engine);
    printf("flow: ok\n");
    return 0;
}
