/* conformance.c - the malloc API contract (glibc 2.36 semantics), checked from inside a program.
 *
 * The same binary runs without the shim, under a rule set that matches nothing and under one that
 * matches every size (tests/shim/test_e2e_conformance.cpp); all three must agree. Prints one line
 * per failed check ("FAIL <check>: <detail>") and a last line "conformance: N checks, M failed";
 * exits 0 only when nothing failed. N does not depend on the allocator: every check runs whatever
 * the previous ones returned, so the three runs print the same bytes when all pass.
 *
 * Covered: alignment of posix_memalign, aligned_alloc and memalign for every power of two up to
 * 64 KiB and of valloc/pvalloc; invalid alignments; overflow and errno; realloc grow, shrink, move,
 * NULL and 0, and a failed realloc; malloc_usable_size; malloc(0); free(NULL); calloc over reused
 * memory; blocks freed by another thread; fork from a threaded program; blocks outliving their
 * thread; free preserving errno; cfree, which programs built against glibc before 2.26 call;
 * mallinfo2 and mallinfo counting the blocks handed out (as glibc's own tst-mallinfo2 checks).
 */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The overflowing, oversized and freed-pointer uses below are the point of the checks. */
#pragma GCC diagnostic ignored "-Walloc-size-larger-than="
#pragma GCC diagnostic ignored "-Wuse-after-free"

static unsigned long checks = 0, failures = 0;

/* Counts one check; prints a line when it fails. */
#define CHECK(name, cond, ...)                      \
    do {                                            \
        ++checks;                                   \
        if (!(cond)) {                              \
            ++failures;                             \
            printf("FAIL %s: ", name);              \
            printf(__VA_ARGS__);                    \
            printf("\n");                           \
        }                                           \
    } while (0)

/* The system's page size: 4 KiB, or 16/64 KiB on some aarch64 kernels (valloc, pvalloc). */
#define PAGE ((size_t)sysconf(_SC_PAGESIZE))
#define MAX_ALIGN ((size_t)65536)
/* A request no allocator can serve, without arithmetic overflow in the request itself. */
#define HUGE_SIZE (SIZE_MAX - 4096)
#define POISON ((void *)0x1234)

static int aligned(const void *p, size_t a) { return p != NULL && (uintptr_t)p % a == 0; }

/* The byte pattern of block `seed` at offset i. */
static unsigned char pat(size_t seed, size_t i) { return (unsigned char)(seed * 131 + i * 7 + 1); }

static void fill(void *p, size_t n, size_t seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; ++i) b[i] = pat(seed, i);
}

/* 1 if the first n bytes of p still hold the pattern of seed. */
static int intact(const void *p, size_t n, size_t seed) {
    const unsigned char *b = p;
    if (!p) return 0;
    for (size_t i = 0; i < n; ++i)
        if (b[i] != pat(seed, i)) return 0;
    return 1;
}

static int all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    if (!p) return 0;
    for (size_t i = 0; i < n; ++i)
        if (b[i]) return 0;
    return 1;
}

/* A block that passed its checks: the whole usable size is writable, and free keeps errno. */
static void use_and_free(void *p) {
    if (p) memset(p, 0xa5, malloc_usable_size(p));
    free(p);
}

/* ---- alignment -------------------------------------------------------------------------- */

/* Sizes every aligned function is asked for at alignment a. */
static size_t aligned_sizes(size_t a, size_t out[5]) {
    out[0] = 0;
    out[1] = 1;
    out[2] = a - 1;
    out[3] = a;
    out[4] = 3 * a + 1;
    return 5;
}

static void check_aligned_block(const char *fn, void *p, size_t a, size_t n) {
    CHECK(fn, aligned(p, a), "align=%zu size=%zu p=%p", a, n, p);
    CHECK(fn, p && malloc_usable_size(p) >= n, "align=%zu size=%zu usable=%zu", a, n,
          p ? malloc_usable_size(p) : 0);
    use_and_free(p);
}

static void alignment(void) {
    for (size_t a = 1; a <= MAX_ALIGN; a *= 2) {
        size_t sizes[5];
        size_t count = aligned_sizes(a, sizes);
        for (size_t s = 0; s < count; ++s) {
            size_t n = sizes[s];
            void *p = POISON;
            int rc = posix_memalign(&p, a, n);
            if (a < sizeof(void *)) { /* not a multiple of sizeof(void *): invalid */
                CHECK("posix_memalign-small-align", rc == EINVAL && p == POISON, "align=%zu rc=%d p=%p", a, rc, p);
            } else {
                CHECK("posix_memalign", rc == 0, "align=%zu size=%zu rc=%d", a, n, rc);
                check_aligned_block("posix_memalign", rc == 0 ? p : NULL, a, n);
            }
            check_aligned_block("aligned_alloc", aligned_alloc(a, n), a, n);
            check_aligned_block("memalign", memalign(a, n), a, n);
        }
    }
    size_t page_sizes[] = {0, 1, PAGE - 1, PAGE, 3 * PAGE + 1};
    for (size_t s = 0; s < sizeof page_sizes / sizeof page_sizes[0]; ++s) {
        size_t n = page_sizes[s];
        check_aligned_block("valloc", valloc(n), PAGE, n);
        /* pvalloc rounds the size up to whole pages (glibc 2.36 serves pvalloc(0) as 1 byte). */
        size_t rounded = (n + PAGE - 1) / PAGE * PAGE;
        check_aligned_block("pvalloc", pvalloc(n), PAGE, rounded);
    }
    /* glibc rounds a non-power-of-two alignment up to the next power of two. */
    size_t odd[][2] = {{3, 4}, {24, 32}, {48, 64}, {96, 128}, {5000, 8192}, {40000, 65536}};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; ++i) {
        check_aligned_block("memalign-round-up", memalign(odd[i][0], 100), odd[i][1], 100);
        check_aligned_block("aligned_alloc-round-up", aligned_alloc(odd[i][0], 100), odd[i][1], 100);
    }
}

static void invalid_alignment(void) {
    size_t bad[] = {0, 1, 2, 3, 4, 12, 24, 48, 4095, 4097, (size_t)1 << 63 | 8, SIZE_MAX};
    size_t sizes[] = {0, 64, 100000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
            void *p = POISON;
            errno = 777;
            int rc = posix_memalign(&p, bad[i], sizes[s]);
            CHECK("posix_memalign-einval", rc == EINVAL && p == POISON && errno == 777,
                  "align=%zu size=%zu rc=%d p=%p errno=%d", bad[i], sizes[s], rc, p, errno);
        }
    /* memalign and aligned_alloc: an alignment above SIZE_MAX / 2 + 1 is EINVAL. */
    size_t huge[] = {SIZE_MAX / 2 + 2, SIZE_MAX - 4095, SIZE_MAX};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; ++i)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
            errno = 0;
            void *p = memalign(huge[i], sizes[s]);
            CHECK("memalign-einval", p == NULL && errno == EINVAL, "align=%zx size=%zu p=%p errno=%d", huge[i],
                  sizes[s], p, errno);
            free(p);
            errno = 0;
            p = aligned_alloc(huge[i], sizes[s]);
            CHECK("aligned_alloc-einval", p == NULL && errno == EINVAL, "align=%zx size=%zu p=%p errno=%d",
                  huge[i], sizes[s], p, errno);
            free(p);
        }
    /* SIZE_MAX / 2 + 1 is a valid alignment that no request can be served at. */
    errno = 0;
    void *p = memalign(SIZE_MAX / 2 + 1, 64);
    CHECK("memalign-max-align", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    free(p);
}

/* ---- overflow and errno ------------------------------------------------------------------ */

static void overflow(void) {
    errno = 0;
    void *p = calloc(SIZE_MAX / 2, 3);
    CHECK("calloc-overflow", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    free(p);
    errno = 0;
    p = calloc((size_t)1 << 33, (size_t)1 << 33);
    CHECK("calloc-overflow-2", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    free(p);
    errno = 0;
    p = calloc(HUGE_SIZE, 1);
    CHECK("calloc-huge", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    free(p);

    size_t huge[] = {SIZE_MAX, HUGE_SIZE, SIZE_MAX / 2 + 1};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; ++i) {
        size_t n = huge[i];
        errno = 0;
        p = malloc(n);
        CHECK("malloc-huge", p == NULL && errno == ENOMEM, "n=%zx p=%p errno=%d", n, p, errno);
        free(p);
        errno = 0;
        p = valloc(n);
        CHECK("valloc-huge", p == NULL && errno == ENOMEM, "n=%zx p=%p errno=%d", n, p, errno);
        free(p);
        errno = 0;
        p = pvalloc(n);
        CHECK("pvalloc-huge", p == NULL && errno == ENOMEM, "n=%zx p=%p errno=%d", n, p, errno);
        free(p);
        errno = 0;
        p = aligned_alloc(64, n);
        CHECK("aligned_alloc-huge", p == NULL && errno == ENOMEM, "n=%zx p=%p errno=%d", n, p, errno);
        free(p);
        errno = 0;
        p = memalign(4096, n);
        CHECK("memalign-huge", p == NULL && errno == ENOMEM, "n=%zx p=%p errno=%d", n, p, errno);
        free(p);
        p = POISON;
        int rc = posix_memalign(&p, 64, n);
        CHECK("posix_memalign-huge", rc == ENOMEM && p == POISON, "n=%zx rc=%d p=%p", n, rc, p);
    }

    /* reallocarray: an overflowing count leaves the block as it was, and usable. */
    size_t sizes[] = {1, 48, 4096, 200000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        size_t n = sizes[i];
        unsigned char *b = malloc(n);
        if (b) fill(b, n, i);
        errno = 0;
        void *q = reallocarray(b, SIZE_MAX / 2, 3);
        CHECK("reallocarray-overflow", q == NULL && errno == ENOMEM, "n=%zu q=%p errno=%d", n, q, errno);
        CHECK("reallocarray-overflow-intact", intact(b, n, i), "n=%zu", n);
        q = reallocarray(b, 2, n);
        CHECK("reallocarray-after-overflow", intact(q, n, i), "n=%zu q=%p", n, q);
        use_and_free(q ? q : b);
    }
}

/* ---- realloc ------------------------------------------------------------------------------ */

static void realloc_contract(void) {
    /* realloc(NULL, n) is malloc(n). */
    void *p = realloc(NULL, 100);
    CHECK("realloc-null", p != NULL && malloc_usable_size(p) >= 100, "p=%p", p);
    use_and_free(p);

    /* Grow through every size range (small, large, mmapped), then shrink; the common prefix
     * survives each step. */
    size_t steps[] = {1, 16, 17, 100, 1000, 4096, 4097, 65536, 200000, 1 << 20, 4 << 20,
                      1 << 20, 200000, 4097, 1000, 100, 17, 1};
    size_t have = 0;
    unsigned char *b = NULL;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; ++i) {
        size_t n = steps[i];
        unsigned char *q = realloc(b, n);
        size_t keep = have < n ? have : n;
        CHECK("realloc-step", q != NULL, "%zu -> %zu", have, n);
        CHECK("realloc-step-content", q && intact(q, keep, i), "%zu -> %zu", have, n);
        CHECK("realloc-step-usable", q && malloc_usable_size(q) >= n, "%zu -> %zu usable=%zu", have, n,
              q ? malloc_usable_size(q) : 0);
        if (!q) break;
        fill(q, n, i + 1);
        b = q;
        have = n;
    }
    free(b);

    /* Moves: neighbours keep the block from growing in place, and it must move with its data. */
    for (size_t n = 24; n <= 300000; n = n * 4 + 8) {
        unsigned char *a = malloc(n), *fence = malloc(n);
        if (a) fill(a, n, n);
        if (fence) fill(fence, n, n + 1);
        unsigned char *q = realloc(a, n * 8);
        CHECK("realloc-move", q != NULL && intact(q, n, n), "n=%zu q=%p", n, (void *)q);
        CHECK("realloc-move-fence", intact(fence, n, n + 1), "n=%zu", n);
        free(q ? q : a);
        free(fence);
    }

    /* realloc(p, 0) frees p and returns NULL; realloc(NULL, 0) is malloc(0). */
    size_t zero_sizes[] = {1, 100, 5000, 300000};
    for (size_t i = 0; i < sizeof zero_sizes / sizeof zero_sizes[0]; ++i) {
        p = malloc(zero_sizes[i]);
        void *q = realloc(p, 0);
        CHECK("realloc-zero", q == NULL, "n=%zu q=%p", zero_sizes[i], q);
        free(q);
    }
    p = realloc(NULL, 0);
    CHECK("realloc-null-zero", p != NULL, "realloc(NULL, 0) returned NULL");
    free(p);

    /* A failed realloc returns NULL with ENOMEM and leaves the block intact and usable. */
    size_t sizes[] = {1, 64, 5000, 300000};
    size_t huge[] = {HUGE_SIZE, SIZE_MAX / 2 + 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i)
        for (size_t h = 0; h < sizeof huge / sizeof huge[0]; ++h) {
            size_t n = sizes[i];
            unsigned char *a = malloc(n);
            if (a) fill(a, n, n + h);
            errno = 0;
            void *q = realloc(a, huge[h]);
            CHECK("realloc-huge", q == NULL && errno == ENOMEM, "n=%zu huge=%zx q=%p errno=%d", n, huge[h], q,
                  errno);
            CHECK("realloc-huge-intact", intact(a, n, n + h), "n=%zu", n);
            q = realloc(a, 2 * n + 100);
            CHECK("realloc-huge-then-grow", intact(q, n, n + h), "n=%zu q=%p", n, q);
            use_and_free(q ? q : a);
        }
}

/* ---- usable size, malloc(0), free(NULL), calloc --------------------------------------------- */

static void usable_size(void) {
    for (size_t n = 0; n <= 4096; ++n) {
        void *p = malloc(n);
        size_t u = p ? malloc_usable_size(p) : 0;
        CHECK("malloc-usable", p != NULL && u >= n, "n=%zu p=%p usable=%zu", n, p, u);
        CHECK("malloc-align", aligned(p, 16), "n=%zu p=%p", n, p);
        use_and_free(p);
    }
    size_t large[] = {8191, 65536, 131073, 1 << 20, (4 << 20) + 3};
    for (size_t i = 0; i < sizeof large / sizeof large[0]; ++i) {
        void *p = malloc(large[i]);
        size_t u = p ? malloc_usable_size(p) : 0;
        CHECK("malloc-usable-large", p != NULL && u >= large[i], "n=%zu p=%p usable=%zu", large[i], p, u);
        use_and_free(p);
    }
    CHECK("malloc-usable-null", malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL)=%zu",
          malloc_usable_size(NULL));
}

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

static void malloc_zero(void) {
    enum { n = 1000 };
    void **p = calloc(n, sizeof *p);
    void **sorted = calloc(n, sizeof *sorted);
    int nonnull = 1, distinct = 1;
    for (int i = 0; i < n; ++i) {
        p[i] = malloc(0);
        if (!p[i]) nonnull = 0;
    }
    memcpy(sorted, p, n * sizeof *p);
    qsort(sorted, n, sizeof *sorted, cmp_ptr);
    for (int i = 1; i < n; ++i)
        if (sorted[i] == sorted[i - 1]) distinct = 0;
    CHECK("malloc-zero-nonnull", nonnull, "malloc(0) returned NULL");
    CHECK("malloc-zero-distinct", distinct, "malloc(0) returned the same pointer twice");
    for (int i = 0; i < n; ++i) free(p[i]);
    free(sorted);
    free(p);
}

static void free_null(void) {
    errno = 4243;
    free(NULL);
    CHECK("free-null", errno == 4243, "errno=%d", errno);
}

/* cfree, which glibc before 2.26 declared: programs built then still call it, and glibc keeps
 * cfree@GLIBC_2.2.5 (GLIBC_2.17 on aarch64) for them, an alias of its free. A block it frees
 * must be one the allocator in front can take back. */
#if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
#if defined(__x86_64__)
__asm__(".symver legacy_cfree, cfree@GLIBC_2.2.5");
#else
__asm__(".symver legacy_cfree, cfree@GLIBC_2.17");
#endif
void legacy_cfree(void *p);

static void cfree_blocks(void) {
    size_t sizes[] = {16, 100, 4096, 100000};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
        unsigned char *p = malloc(sizes[s]);
        CHECK("cfree", p != NULL, "malloc(%zu) failed", sizes[s]);
        if (!p) continue;
        fill(p, sizes[s], s);
        legacy_cfree(p);
        unsigned char *q = malloc(sizes[s]);
        CHECK("cfree", q != NULL, "malloc(%zu) after cfree failed", sizes[s]);
        free(q);
    }
}
#else
static void cfree_blocks(void) {}
#endif

/* mallinfo2: bytes in use grow by at least what was allocated, and fall back after the frees;
 * the heap holds what is in use. mallinfo (int fields) agrees while the figures fit. */
static void mallinfo_counts(void) {
    enum { blocks = 1000, size = 100 };
    static void *p[blocks];
    const struct mallinfo2 before = mallinfo2();
    for (unsigned i = 0; i < blocks; ++i) p[i] = malloc(size);
    const struct mallinfo2 during = mallinfo2();
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    const struct mallinfo old = mallinfo();
#pragma GCC diagnostic pop
    for (unsigned i = 0; i < blocks; ++i) free(p[i]);
    const struct mallinfo2 after = mallinfo2();
    CHECK("mallinfo2", during.uordblks >= before.uordblks + blocks * size, "uordblks %zu, then %zu after %u blocks of %u",
          before.uordblks, during.uordblks, blocks, size);
    CHECK("mallinfo2", during.arena >= during.uordblks, "arena %zu < uordblks %zu", during.arena, during.uordblks);
    CHECK("mallinfo2", after.uordblks < during.uordblks, "uordblks %zu after the frees, %zu before", after.uordblks,
          during.uordblks);
    CHECK("mallinfo", before.uordblks + blocks * size > INT_MAX || old.uordblks >= (int)(before.uordblks + blocks * size),
          "uordblks %d, mallinfo2's %zu before", old.uordblks, before.uordblks);
}

/* Memory that held 0xff is handed out again by calloc: it must read as zero. */
static void calloc_reused(void) {
    enum { blocks = 8, rounds = 25 };
    size_t sizes[] = {1, 16, 24, 100, 1000, 4096, 10000, 100000, 300000};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
        size_t n = sizes[s];
        int zero = 1;
        for (int r = 0; r < rounds; ++r) {
            void *p[blocks];
            for (int i = 0; i < blocks; ++i) {
                p[i] = malloc(n);
                if (p[i]) memset(p[i], 0xff, malloc_usable_size(p[i]));
            }
            for (int i = 0; i < blocks; ++i) free(p[i]);
            for (int i = 0; i < blocks; ++i) {
                p[i] = r % 2 ? calloc(n, 1) : calloc(1, n);
                if (!all_zero(p[i], n)) zero = 0;
                if (p[i]) memset(p[i], 0xff, n);
            }
            for (int i = 0; i < blocks; ++i) free(p[i]);
        }
        CHECK("calloc-reused-zero", zero, "n=%zu", n);
    }
}

static void free_errno(void) {
    size_t sizes[] = {0, 1, 16, 32, 1000, 5000, 70000, 1 << 20, 8 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        void *blocks[4];
        blocks[0] = malloc(sizes[i]);
        blocks[1] = calloc(1, sizes[i]);
        blocks[2] = memalign(4096, sizes[i]);
        blocks[3] = realloc(malloc(8), sizes[i] + 1);
        for (int k = 0; k < 4; ++k) {
            errno = 4242;
            free(blocks[k]);
            CHECK("free-errno", errno == 4242, "n=%zu kind=%d errno=%d", sizes[i], k, errno);
        }
    }
}

/* ---- threads -------------------------------------------------------------------------------- */

/* Producer/consumer: every block is allocated by one thread and freed by the other. */
enum { kHandoffBlocks = 100000, kQueue = 1024 };

struct handoff {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    void *slot[kQueue];
    size_t size[kQueue];
    unsigned head, tail; /* produced, consumed */
    unsigned long damaged;
};

static size_t handoff_size(unsigned i) { return i % 64 == 0 ? 1000 + i % 70000 : 1 + i % 300; }

static void *producer(void *arg) {
    struct handoff *h = arg;
    for (unsigned i = 0; i < kHandoffBlocks; ++i) {
        size_t n = handoff_size(i);
        void *p = i % 3 == 0 ? calloc(1, n) : malloc(n);
        if (p) fill(p, n, i);
        pthread_mutex_lock(&h->lock);
        while (h->head - h->tail == kQueue) pthread_cond_wait(&h->changed, &h->lock);
        h->slot[h->head % kQueue] = p;
        h->size[h->head % kQueue] = n;
        ++h->head;
        pthread_cond_broadcast(&h->changed);
        pthread_mutex_unlock(&h->lock);
    }
    return NULL;
}

static void *consumer(void *arg) {
    struct handoff *h = arg;
    for (unsigned i = 0; i < kHandoffBlocks; ++i) {
        pthread_mutex_lock(&h->lock);
        while (h->head == h->tail) pthread_cond_wait(&h->changed, &h->lock);
        void *p = h->slot[h->tail % kQueue];
        size_t n = h->size[h->tail % kQueue];
        ++h->tail;
        pthread_cond_broadcast(&h->changed);
        pthread_mutex_unlock(&h->lock);
        if (!intact(p, n, i)) ++h->damaged;
        if (i % 5 == 0 && p) p = realloc(p, n + 1); /* some grow on the other side first */
        free(p);
    }
    return NULL;
}

static void cross_thread_free(void) {
    static struct handoff h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, {0}, 0, 0, 0};
    pthread_t prod, cons;
    int rc1 = pthread_create(&cons, NULL, consumer, &h);
    int rc2 = pthread_create(&prod, NULL, producer, &h);
    CHECK("cross-thread-start", rc1 == 0 && rc2 == 0, "pthread_create: %d %d", rc1, rc2);
    if (rc2 == 0) pthread_join(prod, NULL);
    if (rc1 == 0) pthread_join(cons, NULL);
    CHECK("cross-thread-count", h.tail == kHandoffBlocks, "consumed %u of %d", h.tail, kHandoffBlocks);
    CHECK("cross-thread-content", h.damaged == 0, "%lu blocks damaged", h.damaged);
}

/* Blocks allocated by threads that exit before main frees them. */
enum { kExitThreads = 8, kExitBlocks = 500 };

struct thread_blocks {
    unsigned id;
    void *p[kExitBlocks];
    size_t n[kExitBlocks];
};

static size_t exit_size(unsigned id, unsigned i) { return (id * 97 + i * 31) % (i % 50 == 0 ? 90000 : 700); }

static void *allocate_and_exit(void *arg) {
    struct thread_blocks *t = arg;
    for (unsigned i = 0; i < kExitBlocks; ++i) {
        size_t n = exit_size(t->id, i);
        t->n[i] = n;
        t->p[i] = i % 7 == 0 ? memalign(64, n) : i % 3 == 0 ? calloc(n, 1) : malloc(n);
        if (t->p[i]) fill(t->p[i], n, t->id * kExitBlocks + i);
        if (i % 4 == 0) { /* churn, so the thread has freed memory of its own when it exits */
            void *tmp = malloc(n + 8);
            free(tmp);
        }
    }
    return NULL;
}

static void thread_exit(void) {
    static struct thread_blocks t[kExitThreads];
    for (unsigned k = 0; k < kExitThreads; ++k) {
        pthread_t th;
        t[k].id = k;
        int rc = pthread_create(&th, NULL, allocate_and_exit, &t[k]);
        CHECK("thread-exit-start", rc == 0, "pthread_create: %d", rc);
        if (rc == 0) pthread_join(th, NULL);
    }
    unsigned long damaged = 0, missing = 0;
    for (unsigned k = 0; k < kExitThreads; ++k)
        for (unsigned i = 0; i < kExitBlocks; ++i) {
            if (!t[k].p[i]) ++missing;
            else if (!intact(t[k].p[i], t[k].n[i], k * kExitBlocks + i)) ++damaged;
            if (i % 2 && t[k].p[i]) t[k].p[i] = realloc(t[k].p[i], t[k].n[i] * 2 + 1);
            free(t[k].p[i]);
        }
    CHECK("thread-exit-alloc", missing == 0, "%lu allocations failed", missing);
    CHECK("thread-exit-content", damaged == 0, "%lu blocks damaged after their thread exited", damaged);
}

/* fork while other threads allocate: the child's allocator must work (no lock held forever). */
enum { kChurnThreads = 3, kForks = 20 };
static volatile int stop_churn = 0;

static void *churn(void *arg) {
    size_t seed = (size_t)(uintptr_t)arg;
    void *keep[16] = {0};
    for (size_t i = 0; !stop_churn; ++i) {
        size_t n = (seed * 17 + i * 13) % (i % 32 == 0 ? 200000 : 2000);
        unsigned k = (unsigned)(i % 16);
        keep[k] = i % 5 == 0 ? realloc(keep[k], n + 1) : (free(keep[k]), malloc(n));
    }
    for (unsigned k = 0; k < 16; ++k) free(keep[k]);
    return NULL;
}

/* What a forked child does; returns its exit status. */
static int child_allocates(unsigned round) {
    alarm(30); /* a deadlocked allocator shows as SIGALRM, not as a hung test */
    void *p[64];
    for (unsigned i = 0; i < 64; ++i) {
        size_t n = (round * 7 + i * 61) % (i % 8 == 0 ? 150000 : 3000) + 1;
        p[i] = i % 2 ? calloc(1, n) : malloc(n);
        if (!p[i]) return 2;
        fill(p[i], n, i);
        void *q = realloc(p[i], n * 2);
        if (!q || !intact(q, n, i)) return 3;
        p[i] = q;
    }
    for (unsigned i = 0; i < 64; ++i) free(p[i]);
    void *a = NULL;
    if (posix_memalign(&a, 4096, 100) || !aligned(a, 4096)) return 4;
    free(a);
    return 0;
}

static void fork_threaded(void) {
    pthread_t th[kChurnThreads];
    int started[kChurnThreads];
    stop_churn = 0;
    for (unsigned k = 0; k < kChurnThreads; ++k)
        started[k] = pthread_create(&th[k], NULL, churn, (void *)(uintptr_t)(k + 1)) == 0;
    for (unsigned f = 0; f < kForks; ++f) {
        void *mine = malloc(100 + f);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) _exit(child_allocates(f));
        int status = -1;
        if (pid > 0)
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
        CHECK("fork-threaded", pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "round %u: pid=%d status=0x%x", f, (int)pid, status);
        free(mine);
    }
    stop_churn = 1;
    for (unsigned k = 0; k < kChurnThreads; ++k)
        if (started[k]) pthread_join(th[k], NULL);
}

int main(void) {
    alignment();
    invalid_alignment();
    overflow();
    realloc_contract();
    usable_size();
    malloc_zero();
    free_null();
    cfree_blocks();
    mallinfo_counts();
    calloc_reused();
    free_errno();
    cross_thread_free();
    thread_exit();
    fork_threaded();
    printf("conformance: %lu checks, %lu failed\n", checks, failures);
    return failures ? 1 : 0;
}
