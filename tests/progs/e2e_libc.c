/* e2e_libc.c - the allocation functions' libc contract, checked from inside a program.
 *
 * Runs the same checks with or without the shim (under a rule that matches every size, every
 * call goes to the arena). Prints "ok <check>" or "FAIL <check>: ..." per check and a last line
 * "passed N failed M"; exits 0 when nothing failed.
 */
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The overflowing and oversized requests below are deliberate. */
#pragma GCC diagnostic ignored "-Walloc-size-larger-than="
#pragma GCC diagnostic ignored "-Wuse-after-free"

static int passed = 0, failed = 0;

#define CHECK(name, cond, ...)                        \
    do {                                              \
        if (cond) {                                   \
            passed++;                                 \
        } else {                                      \
            failed++;                                 \
            printf("FAIL %s: ", name);                \
            printf(__VA_ARGS__);                      \
            printf("\n");                             \
        }                                             \
    } while (0)

static void malloc_zero(void) {
    enum { n = 64 };
    void *p[n];
    int ok = 1;
    for (int i = 0; i < n; ++i) {
        p[i] = malloc(0);
        if (!p[i]) ok = 0;
    }
    for (int i = 0; i < n && ok; ++i)
        for (int j = i + 1; j < n; ++j)
            if (p[i] == p[j]) ok = 0;
    CHECK("malloc-zero-unique", ok, "malloc(0) returned NULL or a duplicate");
    for (int i = 0; i < n; ++i) free(p[i]);
    printf("ok malloc-zero\n");
}

static void calloc_overflow(void) {
    errno = 0;
    void *p = calloc(SIZE_MAX / 2, 3);
    CHECK("calloc-overflow", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    errno = 0;
    p = calloc(((size_t)1 << 33), ((size_t)1 << 33));
    CHECK("calloc-overflow-2", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    printf("ok calloc-overflow\n");
}

static void reallocarray_overflow(void) {
    unsigned char *p = malloc(48);
    if (!p) {
        CHECK("reallocarray-setup", 0, "malloc(48) failed");
        return;
    }
    for (int i = 0; i < 48; ++i) p[i] = (unsigned char)(i + 1);
    errno = 0;
    void *q = reallocarray(p, SIZE_MAX / 2, 3);
    CHECK("reallocarray-overflow", q == NULL && errno == ENOMEM, "q=%p errno=%d", q, errno);
    int intact = 1;
    for (int i = 0; i < 48; ++i)
        if (p[i] != (unsigned char)(i + 1)) intact = 0;
    CHECK("reallocarray-overflow-intact", intact, "block changed");
    q = reallocarray(p, 10, 100);
    CHECK("reallocarray-grow", q != NULL && ((unsigned char *)q)[47] == 48, "q=%p", q);
    free(q ? q : p);
    printf("ok reallocarray-overflow\n");
}

static void posix_memalign_errors(void) {
    size_t bad[] = {0, 1, 2, 4, 3, 24, 48, 4095, 4097, (size_t)1 << 63 | 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        void *mem = (void *)0x1234;
        errno = 777;
        int rc = posix_memalign(&mem, bad[i], 64);
        CHECK("posix-memalign-einval", rc == EINVAL && mem == (void *)0x1234 && errno == 777,
              "align=%zu rc=%d mem=%p errno=%d", bad[i], rc, mem, errno);
    }
    void *mem = (void *)0x1234;
    int rc = posix_memalign(&mem, 64, SIZE_MAX - 4096);
    CHECK("posix-memalign-enomem", rc == ENOMEM && mem == (void *)0x1234, "rc=%d mem=%p", rc, mem);
    printf("ok posix-memalign-errors\n");
}

static void alignments(void) {
    for (size_t a = 16; a <= 65536; a *= 2) {
        size_t sizes[] = {1, 32, a, a + 1, 3 * a};
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
            size_t n = sizes[s];
            void *p = NULL;
            int rc = posix_memalign(&p, a, n);
            CHECK("posix-memalign-align", rc == 0 && p && (uintptr_t)p % a == 0, "a=%zu n=%zu rc=%d p=%p", a, n,
                  rc, p);
            if (p) memset(p, 0xab, n);
            free(p);
            size_t an = (n + a - 1) / a * a; /* aligned_alloc: size a multiple of the alignment */
            p = aligned_alloc(a, an);
            CHECK("aligned-alloc-align", p && (uintptr_t)p % a == 0, "a=%zu n=%zu p=%p", a, an, p);
            if (p) memset(p, 0xab, an);
            free(p);
            p = memalign(a, n);
            CHECK("memalign-align", p && (uintptr_t)p % a == 0, "a=%zu n=%zu p=%p", a, n, p);
            if (p) {
                memset(p, 0xab, n);
                CHECK("memalign-usable", malloc_usable_size(p) >= n, "a=%zu n=%zu usable=%zu", a, n,
                      malloc_usable_size(p));
            }
            free(p);
        }
    }
    long page = sysconf(_SC_PAGESIZE);
    void *v = valloc(100);
    CHECK("valloc-align", v && (uintptr_t)v % (uintptr_t)page == 0, "p=%p", v);
    free(v);
    v = pvalloc(100);
    CHECK("pvalloc-align", v && (uintptr_t)v % (uintptr_t)page == 0 && malloc_usable_size(v) >= (size_t)page,
          "p=%p", v);
    free(v);
    printf("ok alignments\n");
}

static void realloc_zero(void) {
    void *p = malloc(100);
    errno = 0;
    void *q = realloc(p, 0);
    CHECK("realloc-zero-null", q == NULL, "realloc(p, 0) returned %p", q);
    if (q) free(q);
    void *r = realloc(NULL, 0);
    CHECK("realloc-null-zero", r != NULL, "realloc(NULL, 0) returned NULL");
    free(r);
    printf("ok realloc-zero\n");
}

static void free_preserves_errno(void) {
    size_t sizes[] = {0, 16, 32, 1000, 5000, 70000, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        void *p = malloc(sizes[i]);
        errno = 4242;
        free(p);
        CHECK("free-errno", errno == 4242, "size=%zu errno=%d", sizes[i], errno);
    }
    errno = 4243;
    free(NULL);
    CHECK("free-null-errno", errno == 4243, "errno=%d", errno);
    printf("ok free-errno\n");
}

static void usable_size(void) {
    for (size_t n = 1; n <= 200000; n = n * 3 / 2 + 1) {
        unsigned char *p = malloc(n);
        if (!p) {
            CHECK("usable-alloc", 0, "malloc(%zu) failed", n);
            continue;
        }
        size_t u = malloc_usable_size(p);
        CHECK("usable-size", u >= n, "n=%zu usable=%zu", n, u);
        memset(p, 0x11, u); /* the whole usable size is writable */
        free(p);
    }
    CHECK("usable-null", malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) != 0");
    printf("ok usable-size\n");
}

static void calloc_reused_zero(void) {
    size_t sizes[] = {16, 32, 48, 1000, 4096, 100000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        size_t n = sizes[i];
        for (int round = 0; round < 4; ++round) {
            unsigned char *p = malloc(n);
            if (!p) continue;
            memset(p, 0xff, n);
            free(p);
            unsigned char *q = calloc(1, n);
            int zero = q != NULL;
            for (size_t j = 0; q && j < n; ++j)
                if (q[j]) zero = 0;
            CHECK("calloc-zero", zero, "n=%zu q=%p", n, (void *)q);
            free(q);
        }
    }
    printf("ok calloc-zero\n");
}

static void huge(void) {
    errno = 0;
    void *p = malloc(SIZE_MAX - 4096);
    CHECK("malloc-huge", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    void *base = malloc(64);
    errno = 0;
    void *q = realloc(base, SIZE_MAX - 4096);
    CHECK("realloc-huge", q == NULL && errno == ENOMEM, "q=%p errno=%d", q, errno);
    free(base);
    errno = 0;
    p = aligned_alloc(64, SIZE_MAX - 4095);
    CHECK("aligned-alloc-huge", p == NULL && errno == ENOMEM, "p=%p errno=%d", p, errno);
    printf("ok huge\n");
}

int main(void) {
    free(NULL);
    malloc_zero();
    calloc_overflow();
    reallocarray_overflow();
    posix_memalign_errors();
    alignments();
    realloc_zero();
    free_preserves_errno();
    usable_size();
    calloc_reused_zero();
    huge();
    printf("passed %d failed %d\n", passed, failed);
    return failed ? 1 : 0;
}
