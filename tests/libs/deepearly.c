/* libdeepearly.so: a library of tests/progs/deepbind_early's own (DT_NEEDED), whose constructor
 * opens libdeepfree.so with RTLD_DEEPBIND. The program's libraries are initialised before a
 * preloaded library: this constructor runs before the shim's. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void (*opened_free)(void *);

__attribute__((constructor)) static void open_deep(void) {
    void *lib = dlopen("libdeepfree.so", RTLD_NOW | RTLD_DEEPBIND);  // through this library's RUNPATH
    if (lib) opened_free = (void (*)(void *))dlsym(lib, "deep_free");
    if (!opened_free) {
        printf("dlopen libdeepfree.so: %s\n", dlerror());
        exit(1);
    }
}

void early_deep_free(void *p) { opened_free(p); }
