/* e2e_wipe.c - checks, through pointers it kept, that the shim leaves no copy of a block's
 * contents behind: after free, after a realloc that moves a matching block, and after a
 * realloc that moves a non-matching block into the arena.
 *
 * Expects rules {size 32} and {min 512..2048}. Prints one "ok <check>" or "FAIL <check>: ..."
 * line per check; exits 0 when every check passed, 1 otherwise. Reading freed memory is
 * deliberate here: arena pages stay mapped, and glibc keeps freed small chunks mapped.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; ++i) p[i] = (unsigned char)(0x80 | ((seed * 31 + i * 7) & 0x7f));
}

/* First index in [from, to) whose byte is not zero, or -1. */
static long first_nonzero(const volatile unsigned char *p, size_t from, size_t to) {
    for (size_t i = from; i < to; ++i)
        if (p[i] != 0) return (long)i;
    return -1;
}

static void report(const char *check, long bad) {
    if (bad < 0) {
        printf("ok %s\n", check);
    } else {
        printf("FAIL %s: byte %ld is not zero\n", check, bad);
        failures++;
    }
}

static void freed_block_reads_zero(size_t size, const char *check) {
    unsigned char *p = malloc(size);
    if (!p) {
        printf("FAIL %s: malloc(%zu) returned NULL\n", check, size);
        failures++;
        return;
    }
    fill(p, size, (unsigned)size);
    volatile unsigned char *saved = p;
    free(p);
    report(check, first_nonzero(saved, 0, size));
}

int main(void) {
    freed_block_reads_zero(32, "free-32");
    freed_block_reads_zero(1000, "free-1000");
    freed_block_reads_zero(2048, "free-2048");

    /* realloc of a matching block to a larger matching size moves it within the arena. */
    unsigned char *a = malloc(600);
    if (!a) return 2;
    fill(a, 600, 1);
    volatile unsigned char *old_a = a;
    unsigned char *b = realloc(a, 2000);
    if (!b) return 2;
    if (b == a) {
        printf("FAIL realloc-arena-move: block did not move\n");
        failures++;
    } else {
        report("realloc-arena-move-old-zero", first_nonzero(old_a, 0, 600));
        unsigned char expect[600];
        fill(expect, 600, 1);
        if (memcmp(b, expect, 600) != 0) {
            printf("FAIL realloc-arena-move-contents\n");
            failures++;
        } else {
            printf("ok realloc-arena-move-contents\n");
        }
    }
    free(b);

    /* A non-matching block (100 bytes, glibc heap) grown to a matching size (1000 bytes)
     * moves into the arena; the old heap chunk must hold no copy. glibc writes its free-list
     * links into the first 16 bytes of a freed chunk; everything after must be zero. */
    unsigned char *c = malloc(100);
    if (!c) return 2;
    fill(c, 100, 2);
    volatile unsigned char *old_c = c;
    unsigned char *d = realloc(c, 1000);
    if (!d) return 2;
    if (d == c) {
        printf("FAIL realloc-into-arena: block did not move\n");
        failures++;
    } else {
        report("realloc-into-arena-old-wiped", first_nonzero(old_c, 16, 100));
        int same = 1;
        unsigned char expect[100];
        fill(expect, 100, 2);
        for (size_t i = 0; i < 16; ++i)
            if (old_c[i] != expect[i]) same = 0;
        if (same) {
            printf("FAIL realloc-into-arena-old-head: first 16 bytes still hold the data\n");
            failures++;
        } else {
            printf("ok realloc-into-arena-old-head\n");
        }
        if (memcmp(d, expect, 100) != 0) {
            printf("FAIL realloc-into-arena-contents\n");
            failures++;
        } else {
            printf("ok realloc-into-arena-contents\n");
        }
    }
    free(d);

    /* Shrinking a matching block by more than half moves it too. */
    unsigned char *e = malloc(2048);
    if (!e) return 2;
    fill(e, 2048, 3);
    volatile unsigned char *old_e = e;
    unsigned char *f = realloc(e, 32);
    if (!f) return 2;
    if (f != e) report("realloc-shrink-old-zero", first_nonzero(old_e, 0, 2048));
    else printf("ok realloc-shrink-in-place\n");
    free(f);

    printf("%s\n", failures ? "failed" : "all-ok");
    return failures ? 1 : 0;
}
