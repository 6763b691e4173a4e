/* versioned_malloc.c - a library preloaded before the shim that defines malloc under a default
 * version of its own (malloc@@MEMLOCK_TEST_1.0, tests/libs/versioned_malloc.map). References
 * to libc's malloc@GLIBC_2.2.5 never bind to it; calling it aborts. */
#include <stdlib.h>

void *malloc(size_t n) {
    (void)n;
    abort();
}
