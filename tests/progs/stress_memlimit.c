/* stress_memlimit.c - allocates matched blocks in a loop well past what may be locked
 * (RLIMIT_MEMLOCK lowered from outside), with frees and reuse along the way.
 *
 *   stress_memlimit COUNT [hold]
 *
 * Expects the rules {size 77} and {min_size 1500, max_size 1600}; allocates COUNT blocks of
 * 1536 bytes, each filled with its own pattern, and frees every fourth one at once (checking
 * it reads zero after free; the next allocation reuses it). At the first NULL it checks errno
 * is ENOMEM, prints "null errno=ENOMEM at I" and stops allocating. Then:
 *   - every block still held must have kept its contents ("FAIL intact I" otherwise);
 *   - with "hold": prints "pid N", "first ADDR", "last ADDR", "ready", waits for EOF on stdin;
 *   - frees all but KEPT blocks, checking each reads zero after free;
 *   - prints "allocated N" (blocks obtained), "wiped N" (frees checked), "live KEPT", "done".
 * Exits 0 when every check passed, 1 otherwise, 2 on a setup error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stress_common.h"

#define SIZE 1536
#define KEPT 3

static int failures = 0;

static unsigned char pattern(long i) { return (unsigned char)(0x80 | (i * 37 & 0x7f)); }

static long wiped = 0;

static void free_checked(unsigned char *p) {
    free(p);
    if (all_zero(p, SIZE)) {
        ++wiped;
    } else {
        printf("FAIL not wiped %p\n", (void *)p);
        ++failures;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long count = atol(argv[1]);
    int hold = argc > 2 && strcmp(argv[2], "hold") == 0;
    unsigned char **blocks = calloc((size_t)count, sizeof *blocks); /* not a matched size */
    long *ids = calloc((size_t)count, sizeof *ids);
    if (!blocks || !ids) return 2;
    long held = 0, got = 0;
    for (long i = 0; i < count; ++i) {
        errno = 0;
        unsigned char *p = malloc(SIZE);
        if (!p) {
            if (errno == ENOMEM) printf("null errno=ENOMEM at %ld\n", i);
            else printf("FAIL null errno=%d at %ld\n", errno, i), ++failures;
            break;
        }
        ++got;
        memset(p, pattern(i), SIZE);
        if (i % 4 == 3) {
            free_checked(p);
            continue;
        }
        blocks[held] = p;
        ids[held++] = i;
    }
    for (long k = 0; k < held; ++k)
        for (int j = 0; j < SIZE; j += 97)
            if (blocks[k][j] != pattern(ids[k])) {
                printf("FAIL intact %ld\n", ids[k]);
                ++failures;
                break;
            }
    if (hold && held > 0) {
        printf("pid %d\nfirst %p\nlast %p\nready\n", (int)getpid(), (void *)blocks[0], (void *)blocks[held - 1]);
        fflush(stdout);
        char buf[64];
        while (read(0, buf, sizeof buf) > 0) {
        }
    }
    for (long k = KEPT; k < held; ++k) free_checked(blocks[k]);
    printf("allocated %ld\nwiped %ld\nlive %ld\ndone\n", got, wiped, held < KEPT ? held : (long)KEPT);
    return failures ? 1 : 0;
}
