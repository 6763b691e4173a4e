/* stress_failalloc.c - the allocator after the shim fails every Nth call (libfailalloc.so,
 * preloaded after the shim): unmatched calls must fail cleanly, matched ones keep working.
 *
 *   stress_failalloc EVERY ROUNDS
 *
 * Expects the rules {size 77} and {min_size 1500, max_size 1600}, and
 * LD_PRELOAD="libmemlock_shim.so libfailalloc.so". Three threads (main included), once
 * failures are armed, each ROUNDS times:
 *   - malloc(64), calloc(8, 8), posix_memalign(64, 256), realloc(64 -> 200) (unmatched):
 *     NULL/ENOMEM allowed, with errno ENOMEM, *memptr untouched, the realloc'd block intact;
 *   - malloc(77), malloc(1536), calloc(1, 77) (matched): never NULL, zeroed when calloc'd;
 *   - realloc of a matched block to 3000 bytes (out of the arena, into the failing
 *     allocator): NULL/ENOMEM allowed, and then the block is intact and still usable;
 *   - realloc of an unmatched block to 1536 bytes (into the arena): never NULL;
 *   - every matched block reads zero right after free.
 * Then disarms and prints "unmatched_failures N" (NULLs seen), "injected N" (NULLs the
 * failing allocator returned), "live KEPT" and "failalloc ok". Exits 0 when every check
 * passed, 1 otherwise, 2 on a setup error (e.g. libfailalloc.so not preloaded).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stress_common.h"

#define THREADS 3
#define KEPT 4

static int rounds;
static long unmatched_failures = 0;
static int failed = 0;
static pthread_barrier_t start;

static void fail(const char *what, long detail) {
    if (__atomic_exchange_n(&failed, 1, __ATOMIC_RELAXED) == 0) printf("FAIL %s (%ld)\n", what, detail);
}

/* An unmatched result: NULL must come with ENOMEM (err: errno read after the call). */
static void unmatched(const void *p, int err, const char *what) {
    if (!p) {
        if (err != ENOMEM) fail(what, err);
        __atomic_add_fetch(&unmatched_failures, 1, __ATOMIC_RELAXED);
    }
}

static void free_matched(unsigned char *p, size_t n) {
    free(p);
    if (!all_zero(p, n)) fail("freed matched block is not zero", (long)n);
}

static void *worker(void *arg) {
    (void)arg;
    pthread_barrier_wait(&start);
    for (int r = 0; r < rounds && !failed; ++r) {
        errno = 0;
        unsigned char *a = malloc(64);
        unmatched(a, errno, "malloc(64) NULL without ENOMEM");
        if (a) memset(a, 1, 64);
        errno = 0;
        unsigned char *b = calloc(8, 8);
        unmatched(b, errno, "calloc(8, 8) NULL without ENOMEM");
        if (b && !all_zero(b, 64)) fail("calloc(8, 8) not zeroed", r);
        void *c = (void *)&r;  /* sentinel: must survive a failure */
        int rc = posix_memalign(&c, 64, 256);
        if (rc != 0) {
            if (rc != ENOMEM) fail("posix_memalign failed without ENOMEM", rc);
            if (c != (void *)&r) fail("posix_memalign changed *memptr on failure", rc);
            __atomic_add_fetch(&unmatched_failures, 1, __ATOMIC_RELAXED);
            c = NULL;
        }
        if (a) {
            errno = 0;
            unsigned char *grown = realloc(a, 200);
            if (!grown) {
                unmatched(NULL, errno, "realloc(64 -> 200) NULL without ENOMEM");
                if (!filled(a, 64, 1)) fail("a failed realloc changed the block", r);
            } else {
                a = grown;
                if (!filled(a, 64, 1)) fail("realloc(64 -> 200) lost the contents", r);
            }
        }

        unsigned char *k = malloc(77), *m = malloc(1536), *z = calloc(1, 77);
        if (!k || !m || !z) {
            fail("a matched allocation failed", r);
            break;
        }
        if (!all_zero(z, 77)) fail("matched calloc not zeroed", r);
        memset(k, 0x77, 77);
        memset(m, 0x15, 1536);
        errno = 0;
        unsigned char *out = realloc(m, 3000);  /* leaves the arena */
        if (!out) {
            unmatched(NULL, errno, "realloc(1536 -> 3000) NULL without ENOMEM");
            if (!filled(m, 1536, 0x15)) fail("a failed realloc out of the arena changed the block", r);
            free_matched(m, 1536);
        } else {
            if (!filled(out, 1536, 0x15)) fail("realloc out of the arena lost the contents", r);
            free(out);
        }
        if (b) {
            memset(b, 0x42, 64);
            unsigned char *in = realloc(b, 1536);  /* moves into the arena: cannot fail */
            if (!in) fail("realloc into the arena failed", r);
            else if (!filled(in, 64, 0x42)) fail("realloc into the arena lost the contents", r);
            else free_matched(in, 1536);
        }
        if (!filled(k, 77, 0x77)) fail("matched block changed", r);
        free_matched(k, 77);
        free_matched(z, 77);
        free(a);
        free(c);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    unsigned every = (unsigned)atoi(argv[1]);
    rounds = atoi(argv[2]);
    void (*arm)(unsigned) = (void (*)(unsigned))dlsym(RTLD_DEFAULT, "failalloc_arm");
    unsigned long (*injected)(void) = (unsigned long (*)(void))dlsym(RTLD_DEFAULT, "failalloc_failures");
    if (!arm || !injected) {
        printf("libfailalloc.so is not loaded\n");
        return 2;
    }
    unsigned char *kept[KEPT];
    for (int i = 0; i < KEPT; ++i) {
        kept[i] = malloc(1536);
        if (!kept[i]) return 2;
        memset(kept[i], 0x33, 1536);
    }
    printf("start\n");  /* stdout's buffer is allocated before failures begin */
    fflush(stdout);
    pthread_barrier_init(&start, NULL, THREADS);
    pthread_t t[THREADS - 1];
    for (int i = 0; i < THREADS - 1; ++i)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0) return 2;
    arm(every);
    worker(NULL);
    for (int i = 0; i < THREADS - 1; ++i) pthread_join(t[i], NULL);
    arm(0);
    for (int i = 0; i < KEPT; ++i)
        if (!filled(kept[i], 1536, 0x33)) fail("kept block changed", i);
    printf("unmatched_failures %ld\ninjected %lu\nlive %d\n", unmatched_failures, injected(), KEPT);
    if (failed) return 1;
    printf("failalloc ok\n");
    return 0;
}
