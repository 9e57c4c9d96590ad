/* Helpers shared by the C test programs: CHECK(call) runs a tailor_* call and, when it does
 * not return TAILOR_OK, prints the call, the status name and the last error, and exits. */
#ifndef TAILOR_TEST_CHECK_H
#define TAILOR_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tailor.h"

static void tt_fail(const char *file, int line, const char *what, TailorStatus st) {
    char msg[1024];
    size_t need = tailor_last_error_message(msg, sizeof msg);
    fprintf(stderr, "%s:%d: %s -> %s (%d): %s (%zu bytes)\n", file, line, what, tailor_status_name(st), (int)st,
            need ? msg : "(no message)", need);
    exit(1);
}

#define CHECK(call)                                                         \
    do {                                                                    \
        TailorStatus st_ = (call);                                          \
        if (st_ != TAILOR_OK) tt_fail(__FILE__, __LINE__, #call, st_);      \
    } while (0)

#define EXPECT_STATUS(call, want)                                           \
    do {                                                                    \
        TailorStatus st_ = (call);                                          \
        if (st_ != (want)) {                                                \
            fprintf(stderr, "%s:%d: %s -> %s, expected %s\n", __FILE__, __LINE__, #call, \
                    tailor_status_name(st_), tailor_status_name(want));     \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

#define ASSERT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

#define ASSERT_CONTAINS(haystack, needle)                                   \
    do {                                                                    \
        if (!(haystack) || !strstr((haystack), (needle))) {                 \
            fprintf(stderr, "%s:%d: expected `%s` in: %s\n", __FILE__, __LINE__, (needle), \
                    (haystack) ? (haystack) : "(null)");                    \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

#endif
