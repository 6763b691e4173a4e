/* libdeepfree.so: frees and reallocates blocks its caller allocated. tests/progs/deepbind.c
 * opens it with RTLD_DEEPBIND, as FreeRADIUS opens its modules: its free and realloc are then
 * looked up in itself and its own dependencies (glibc) before the program's scope, where the
 * shim is (tests/shim/test_e2e_programs.cpp). */
#include <stdlib.h>

void deep_free(void *p) { free(p); }
void *deep_realloc(void *p, size_t n) { return realloc(p, n); }
