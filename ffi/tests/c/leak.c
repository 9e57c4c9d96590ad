/* Deliberately leaks a JSON string and an engine: valgrind must fail this run, which shows the
 * valgrind runs of flow.c and hostile.c would catch a leak.   leak MODEL.gguf */
#include <stdio.h>

#include "check.h"

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    TailorEngine *engine = NULL;
    char *info = NULL;
    CHECK(tailor_engine_open(argv[1], NULL, &engine));
    CHECK(tailor_engine_info(engine, &info));
    printf("%s\n", info);
    return 0; /* neither tailor_string_free(info) nor tailor_engine_free(engine) */
}
