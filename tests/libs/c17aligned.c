// libc17aligned.so: a next allocator whose aligned_alloc refuses, as C17 and glibc 2.38 and
// later do, an alignment that is not a power of two (EINVAL); it serves the others through
// glibc's own memalign (__libc_memalign, which no preloaded library interposes), so its
// blocks are glibc's, freed by glibc's free. Preloaded after the shim
// (tests/shim/test_e2e_forkcorners.cpp).
#include <errno.h>
#include <stddef.h>

extern void *__libc_memalign(size_t align, size_t n);

void *aligned_alloc(size_t align, size_t n) {
    if (align == 0 || (align & (align - 1))) {
        errno = EINVAL;
        return NULL;
    }
    return __libc_memalign(align, n);
}
