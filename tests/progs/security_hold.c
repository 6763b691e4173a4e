// security_hold: allocates blocks the test configs match (32 bytes, 1 KiB), prints "ready" and
// waits for its stdin to close. Arguments change what it does first:
//   huge     malloc(SIZE_MAX) and calloc(SIZE_MAX/2, 4): each must fail with ENOMEM (exit 3 if not)
//   nodump   prctl(PR_SET_DUMPABLE, 0): the kernel then hides its memory from other users
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "hold_common.h"

static void *volatile g_blocks[64];

int main(int argc, char **argv) {
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "huge") == 0) {
            errno = 0;
            volatile size_t huge = SIZE_MAX;
            void *volatile p = malloc(huge);
            if (p || errno != ENOMEM) return 3;
            errno = 0;
            p = calloc(huge / 2, 4);
            if (p || errno != ENOMEM) return 3;
        } else if (strcmp(argv[i], "nodump") == 0) {
            if (prctl(PR_SET_DUMPABLE, 0) != 0) return 4;
        }
    }
    return hold_blocks_until_eof(g_blocks, 64);
}
