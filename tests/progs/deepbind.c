/* deepbind.c - hands blocks it allocated to a library opened with RTLD_DEEPBIND, which frees and
 * reallocates them (tests/libs/deepfree.c), as FreeRADIUS's modules do. Both libraries are
 * opened by their bare names, found through this program's RUNPATH ($ORIGIN/../libs): dlopen
 * must still see this program as its caller under the shim. Prints "deepbind ok" and exits 0;
 * otherwise says what failed and exits 1 (or glibc aborts). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *open_by_name(const char *name, int mode) {
    void *h = dlopen(name, mode);
    if (!h) {
        printf("dlopen %s: %s\n", name, dlerror());
        exit(1);
    }
    return h;
}

int main(void) {
    open_by_name("libsecretlib.so", RTLD_NOW);
    void *lib = open_by_name("libdeepfree.so", RTLD_NOW | RTLD_DEEPBIND);
    void (*deep_free)(void *) = (void (*)(void *))dlsym(lib, "deep_free");
    void *(*deep_realloc)(void *, size_t) = (void *(*)(void *, size_t))dlsym(lib, "deep_realloc");
    if (!deep_free || !deep_realloc) {
        printf("dlsym: %s\n", dlerror());
        return 1;
    }
    static const size_t sizes[] = {24, 100, 5000, 200000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        char *p = malloc(sizes[i]);
        memset(p, 'k', sizes[i]);
        deep_free(p);
        char *q = malloc(sizes[i]);
        memset(q, 'k', sizes[i]);
        q = deep_realloc(q, 2 * sizes[i]);
        if (!q || q[sizes[i] - 1] != 'k') {
            printf("deep_realloc(%zu) lost the block's bytes\n", sizes[i]);
            return 1;
        }
        free(q);
    }
    printf("deepbind ok\n");
    return 0;
}
