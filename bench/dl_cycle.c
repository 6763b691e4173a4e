/* dl_cycle LIB CYCLES [BIG]
 * Loads BIG (e.g. libLLVM) once, then times CYCLES rounds of dlopen(LIB) + a 32-byte
 * allocation made by LIB's alloc_helper (tests/libs/secretlib.c) + free + dlclose.
 * Prints the mean microseconds per round. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef void *(*alloc_fn)(size_t);

static void cycle(const char *lib) {
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    alloc_fn f = h ? (alloc_fn)(uintptr_t)dlsym(h, "alloc_helper") : NULL;
    if (!f) {
        fprintf(stderr, "dl_cycle: %s: %s\n", lib, dlerror());
        exit(1);
    }
    free(f(32));
    dlclose(h);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: dl_cycle LIB CYCLES [BIG]\n");
        return 2;
    }
    if (argc == 4 && !dlopen(argv[3], RTLD_NOW | RTLD_GLOBAL)) {
        fprintf(stderr, "dl_cycle: %s: %s\n", argv[3], dlerror());
        return 1;
    }
    long cycles = strtol(argv[2], NULL, 10);
    cycle(argv[1]); /* warm up */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < cycles; ++i) cycle(argv[1]);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3) / (double)cycles);
    return 0;
}
