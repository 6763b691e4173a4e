/* jemalloc_absent.c - calls jemalloc's interface where jemalloc is not loaded: found by name
 * (dlsym RTLD_DEFAULT, as programs probing for jemalloc do), it is the shim's, which answers
 * on malloc's terms. A page-aligned block that rallocx shrinks stays page-aligned, its bytes
 * kept; a run that rallocx grows in place with MALLOCX_ZERO is zero up to its usable size.
 * Prints "jemalloc absent ok" (or "no mallocx" where nothing defines it, exit 0);
 * otherwise says what failed and exits 1. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LG_ALIGN(la) ((int)(la))
#define ZERO 0x40

int main(void) {
    void *(*mallocx)(size_t, int) = (void *(*)(size_t, int))dlsym(RTLD_DEFAULT, "mallocx");
    void *(*rallocx)(void *, size_t, int) = (void *(*)(void *, size_t, int))dlsym(RTLD_DEFAULT, "rallocx");
    void (*dallocx)(void *, int) = (void (*)(void *, int))dlsym(RTLD_DEFAULT, "dallocx");
    if (!mallocx || !rallocx || !dallocx) {
        printf("no mallocx\n");
        return 0;
    }
    dlerror();
    void *first = mallocx(64, 0);  // the shim looks jemalloc's functions up, and finds none
    const char *said = dlerror();
    if (!first || said) {
        printf("mallocx(64, 0) = %p, then dlerror() = %s\n", first, said ? said : "(null)");
        return 1;
    }
    dallocx(first, 0);
    for (int i = 0; i < 20; ++i) {
        free(malloc(100));  // the thread's cache now holds a block of the size class
        unsigned char *p = mallocx(8192, LG_ALIGN(12));
        if (!p || (uintptr_t)p % 4096) {
            printf("mallocx(8192, LG_ALIGN(12)) = %p\n", (void *)p);
            return 1;
        }
        memset(p, 0x5a, 8192);
        unsigned char *q = rallocx(p, 100, LG_ALIGN(12));
        if (!q || (uintptr_t)q % 4096 || q[0] != 0x5a || q[99] != 0x5a) {
            printf("rallocx(p, 100, LG_ALIGN(12)) = %p: not page-aligned or bytes lost\n", (void *)q);
            return 1;
        }
        dallocx(q, 0);
    }
    /* A run that grows in place over the pages of the run after it, freed unwiped (a rule
     * without "wipe"): with MALLOCX_ZERO every byte past the old block's, up to sallocx's size,
     * is zero. */
    size_t (*sallocx)(const void *, int) = (size_t (*)(const void *, int))dlsym(RTLD_DEFAULT, "sallocx");
    unsigned char *run[4];
    for (int i = 0; i < 4; ++i) run[i] = mallocx(300000, 0);
    memset(run[2], 0xff, sallocx(run[2], 0));
    dallocx(run[2], 0);
    const size_t had = sallocx(run[1], 0);
    unsigned char *c = rallocx(run[1], had + 1, ZERO);
    const size_t now = c ? sallocx(c, 0) : 0;
    for (size_t k = had; k < now; ++k)
        if (c[k]) {
            printf("rallocx(%zu, MALLOCX_ZERO): byte %zu of %zu is not zero\n", had + 1, k, now);
            return 1;
        }
    dallocx(c, 0);
    dallocx(run[0], 0);
    dallocx(run[3], 0);
    printf("jemalloc absent ok\n");
    return 0;
}
