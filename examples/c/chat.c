/* A small chat program on Tailor's C ABI.
 *
 *   cargo build --release -p tailor-ffi
 *   cc -std=c11 -O2 examples/c/chat.c -I ffi/include -L target/release -ltailor_ffi \
 *      -Wl,-rpath,$PWD/target/release -o chat
 *   ./chat "$(cargo run --release -q -p tailor-cli -- models path)" [PROFILE.db EMBEDDER_DIR]
 *
 * Each line you type is a user turn; the answer streams as it is generated. With a profile,
 * relevant memories go into the prompt, "/remember TEXT" stores one, "/good" and
 * "/fix CORRECTED ANSWER" record feedback on the last answer, "/train" trains a new adapter
 * version from the feedback (a short run) and swaps it in. "/quit" or end of input exits.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tailor.h"

static int fail(const char *what, TailorStatus st) {
    char msg[1024];
    tailor_last_error_message(msg, sizeof msg);
    fprintf(stderr, "%s: %s: %s\n", what, tailor_status_name(st), msg);
    return 1;
}

static int32_t print_chunk(const char *chunk, size_t len, void *user_data) {
    (void)user_data;
    fwrite(chunk, 1, len, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop the answer here */
}

static int32_t print_progress(const TailorProgress *p, void *user_data) {
    (void)user_data;
    fprintf(stderr, "\r[train] step %zu/%zu loss %.3f", p->step, p->total_steps, p->loss);
    return 0;
}

/* Appends `s` to `out` as a JSON string body (quotes and control characters escaped). */
static void json_escape(char *out, size_t cap, const char *s) {
    size_t n = strlen(out);
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
}

/* Pulls the "text" value out of a generation's JSON (enough for this example). */
static void answer_text(const char *json, char *out, size_t cap) {
    out[0] = '\0';
    const char *t = json ? strstr(json, "\"text\":\"") : NULL;
    if (!t) return;
    t += 8;
    size_t n = 0;
    for (; *t && *t != '"' && n + 2 < cap; t++) {
        if (*t == '\\' && t[1]) {
            out[n++] = *t++;
        }
        out[n++] = *t;
    }
    out[n] = '\0';
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf [PROFILE.db EMBEDDER_DIR]\n", argv[0]);
        return 2;
    }
    if (tailor_abi_version() != TAILOR_ABI_VERSION) {
        fprintf(stderr, "libtailor_ffi has ABI %u, this program was built for %u\n", tailor_abi_version(), TAILOR_ABI_VERSION);
        return 1;
    }
    TailorEngine *engine = NULL;
    TailorProfile *profile = NULL;
    TailorSession *session = NULL;
    TailorStatus st = tailor_engine_open(argv[1], NULL, &engine);
    if (st != TAILOR_OK) return fail("open the model", st);
    if (argc == 4) {
        st = tailor_profile_open(engine, argv[2], argv[3], NULL, &profile);
        if (st != TAILOR_OK) return fail("open the profile", st);
        st = tailor_profile_session_new(profile, "{\"system\": \"You are a helpful assistant.\"}", &session);
    } else {
        st = tailor_session_new(engine, "{\"system\": \"You are a helpful assistant.\"}", &session);
    }
    if (st != TAILOR_OK) return fail("start a session", st);

    char line[4096], last_prompt[4096] = "", last_answer[8192] = "";
    const char *params = "{\"max_tokens\": 256, \"sampling\": {\"temperature\": 0.7, \"top_p\": 0.9, \"seed\": 1}}";
    for (;;) {
        printf("> ");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0') continue;
        if (strcmp(line, "/quit") == 0) break;
        if (line[0] == '/' && !profile) {
            printf("(commands need a profile)\n");
            continue;
        }
        if (strncmp(line, "/remember ", 10) == 0) {
            int64_t id = 0;
            st = tailor_memory_add(profile, line + 10, NULL, &id);
            if (st != TAILOR_OK) fail("remember", st); else printf("(memory %lld stored)\n", (long long)id);
            continue;
        }
        if (strcmp(line, "/good") == 0 || strncmp(line, "/fix ", 5) == 0) {
            char fb[16384] = "{\"prompt\": \"";
            json_escape(fb, sizeof fb, last_prompt);
            strcat(fb, "\", \"answer\": \"");
            json_escape(fb, sizeof fb, last_answer);
            if (line[1] == 'g') {
                strcat(fb, "\", \"kind\": \"thumbs_up\"}");
            } else {
                strcat(fb, "\", \"kind\": \"correction\", \"corrected\": \"");
                json_escape(fb, sizeof fb, line + 5);
                strcat(fb, "\"}");
            }
            st = tailor_feedback_add(profile, fb, NULL);
            if (st != TAILOR_OK) fail("feedback", st); else printf("(feedback stored)\n");
            continue;
        }
        if (strcmp(line, "/train") == 0) {
            TailorTrainingJob *job = NULL;
            char *status = NULL;
            int32_t state = 0;
            st = tailor_training_start(profile, "{\"max_steps\": 20}", print_progress, NULL, NULL, &job);
            if (st == TAILOR_ERR_BUSY) {
                /* Feedback already started a run in the background: follow that one. */
                st = tailor_profile_training_job(profile, &job);
            }
            if (st != TAILOR_OK) { fail("train", st); continue; }
            st = tailor_training_wait(job, &state, &status);
            fprintf(stderr, "\n");
            printf("(%s: %s)\n", state == TAILOR_JOB_PROMOTED ? "promoted, now running" : "not promoted", status ? status : "");
            tailor_string_free(status);
            tailor_training_free(job);
            continue;
        }
        char *result = NULL;
        st = tailor_session_chat(session, line, params, print_chunk, NULL, &result);
        printf("\n");
        if (st != TAILOR_OK) {
            fail("generate", st);
        } else {
            snprintf(last_prompt, sizeof last_prompt, "%s", line);
            answer_text(result, last_answer, sizeof last_answer);
        }
        tailor_string_free(result);
    }
    tailor_session_free(session);
    tailor_profile_free(profile);
    tailor_engine_free(engine);
    return 0;
}
