/* jemalloc_api.c - allocates through jemalloc's own interface (mallocx, rallocx, xallocx,
 * sallocx, dallocx, sdallocx), as BIND 9.18's libisc does; linked with libjemalloc.so.2, so
 * that jemalloc comes after the shim in the lookup order. Writes a secret pattern into each
 * block, checks alignment, zeroing, that rallocx keeps the bytes and that a block holds the
 * real size nallocx promises, then prints the checks
 * made and "jemalloc api ok" (or the first failure, exit 1). With "hold" it then prints the
 * address of a live 64-byte block holding the secret and "ready", and waits for its input to
 * close (tests/shim/test_e2e_programs.cpp reads the block's mapping in smaps). With "lookup"
 * it asks jemalloc's "arenas.lookup" control, by name and by MIB, which arena holds a 64-byte
 * mallocx block and a 64-byte malloc block, and prints the four results ("lookup 0 0 0 0":
 * each one jemalloc's). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *mallocx(size_t size, int flags);
void *rallocx(void *ptr, size_t size, int flags);
size_t xallocx(void *ptr, size_t size, size_t extra, int flags);
size_t sallocx(const void *ptr, int flags);
void dallocx(void *ptr, int flags);
void sdallocx(void *ptr, size_t size, int flags);
size_t nallocx(size_t size, int flags);
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
int mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp);
int mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp, void *newp, size_t newlen);

#define LG_ALIGN(la) ((int)(la))
#define ZERO 0x40

static int fail(const char *what, size_t n) {
    printf("FAIL %s (%zu bytes)\n", what, n);
    return 1;
}

static int zeroed(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (p[i]) return 0;
    return 1;
}

/* The two answers of "arenas.lookup" for p: by name, then by MIB. */
static void lookup(void *p, int rc[2]) {
    unsigned arena;
    size_t len = sizeof arena;
    rc[0] = mallctl("arenas.lookup", &arena, &len, &p, sizeof p);
    size_t mib[4], miblen = 4;
    rc[1] = mallctlnametomib("arenas.lookup", mib, &miblen);
    if (rc[1] == 0) {
        len = sizeof arena;
        rc[1] = mallctlbymib(mib, miblen, &arena, &len, &p, sizeof p);
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "lookup") == 0) {
        void *x = mallocx(64, 0), *m = malloc(64);
        int a[2], b[2];
        lookup(x, a);
        lookup(m, b);
        printf("lookup %d %d %d %d\n", a[0], a[1], b[0], b[1]);
        dallocx(x, 0);
        free(m);
        return 0;
    }
    static const size_t sizes[] = {16, 64, 300, 4096, 20000, 300000};
    unsigned checks = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        const size_t n = sizes[i];
        unsigned char *p = mallocx(n, ZERO);
        if (!p || !zeroed(p, n)) return fail("mallocx zero", n);
        memset(p, 0x5a, n);
        if (sallocx(p, 0) < n) return fail("sallocx", n);
        if (sallocx(p, 0) < nallocx(n, 0)) return fail("sallocx below nallocx", n);
        if (xallocx(p, n, 0, 0) < n) return fail("xallocx", n);
        p = rallocx(p, 2 * n, ZERO);
        if (!p || p[0] != 0x5a || p[n - 1] != 0x5a || sallocx(p, 0) < 2 * n) return fail("rallocx grow", n);
        if (sallocx(p, 0) < nallocx(2 * n, 0)) return fail("rallocx grow below nallocx", n);
        p = rallocx(p, n / 2 + 1, 0);
        if (!p || p[0] != 0x5a || p[n / 2] != 0x5a) return fail("rallocx shrink", n);
        sdallocx(p, n / 2 + 1, 0);
        void *a = mallocx(n, LG_ALIGN(12));
        if (!a || (uintptr_t)a % 4096) return fail("mallocx aligned", n);
        dallocx(a, 0);
        checks += 10;
    }
    printf("checks %u\njemalloc api ok\n", checks);
    if (argc > 1 && strcmp(argv[1], "hold") == 0) {
        unsigned char *secret = mallocx(64, 0);
        memset(secret, 0xa5, 64);
        printf("block %p\nready\n", (void *)secret);
        fflush(stdout);
        while (getchar() != EOF) {
        }
        sdallocx(secret, 64, 0);
    }
    return 0;
}
