// tests/libs/memlock_testlib.c built in and exported (-rdynamic), as a program that links a
// library in statically and exports its names does; built again as testlib_linked, which links
// libmemlock_testlib.so instead (the Makefile).
#ifndef TESTLIB_LINKED
#include "../libs/memlock_testlib.c"
#else
#include <stddef.h>
void *memlock_testlib_malloc(size_t n);
void memlock_testlib_free(void *p);
#endif

int main(void) {
    memlock_testlib_free(memlock_testlib_malloc(16));
    return 0;
}
