/* callers_dlopen.c - a program that loads libsecretlib with dlopen after start-up and calls
 * it through dlsym (see callers_common.h for what it allocates and prints).
 *
 *   callers_dlopen LIB          dlopen LIB, one round
 *   callers_dlopen LIB LIB2     dlopen LIB, one round, dlclose it (its blocks stay live),
 *                               dlopen LIB2 (e.g. a copy of LIB), a second round
 */
#include <dlfcn.h>

#include "callers_common.h"

static void *open_round(const char *path) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        exit(4);
    }
    loader_fn secret = (loader_fn)(uintptr_t)dlsym(lib, "load_secret_key");
    loader_fn plain = (loader_fn)(uintptr_t)dlsym(lib, "load_plain_data");
    if (!secret || !plain) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        exit(4);
    }
    allocate_round(secret, plain);
    return lib;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: callers_dlopen LIB [LIB2]\n");
        return 2;
    }
    prepare();
    void *lib = open_round(argv[1]);
    if (argc == 3) {
        if (dlclose(lib) != 0) {
            fprintf(stderr, "dlclose: %s\n", dlerror());
            return 4;
        }
        lib = open_round(argv[2]);
    }
    int rc = report_and_wait();
    dlclose(lib);
    return rc;
}
