/* failalloc.c - an allocator that fails on request, preloaded AFTER the shim:
 *
 *   LD_PRELOAD="libmemlock_shim.so libfailalloc.so" PROG
 *
 * so that it is the shim's "next allocator". Every function forwards to glibc's own entry
 * points (__libc_malloc and friends: no dlsym, so no allocation while resolving), except that
 * once armed, every Nth call of an allocating function returns NULL with errno ENOMEM (or
 * ENOMEM for posix_memalign), the way a real allocator fails when memory runs out.
 *
 * Arming is explicit, after start-up, so that the dynamic loader, libc and the shim's own
 * start-up are not the ones failing: the program looks up
 *
 *   void failalloc_arm(unsigned every);   // 0 disarms
 *   unsigned long failalloc_failures(void);  // NULLs returned so far
 *
 * with dlsym(RTLD_DEFAULT, ...). Counting is atomic: threads may allocate concurrently.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

#define EXPORT __attribute__((visibility("default")))

static unsigned every = 0;          /* 0: never fail */
static unsigned long calls = 0;
static unsigned long failures = 0;

EXPORT void failalloc_arm(unsigned n) {
    __atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&every, n, __ATOMIC_RELEASE);
}

EXPORT unsigned long failalloc_failures(void) { return __atomic_load_n(&failures, __ATOMIC_RELAXED); }

/* Should this call fail? */
static int fail_now(void) {
    unsigned n = __atomic_load_n(&every, __ATOMIC_ACQUIRE);
    if (n == 0) return 0;
    if (__atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED) % n != 0) return 0;
    __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
    return 1;
}

EXPORT void *malloc(size_t n) {
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_malloc(n);
}

EXPORT void free(void *p) { __libc_free(p); }

EXPORT void *calloc(size_t n, size_t size) {
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_calloc(n, size);
}

/* realloc(p, 0) frees and allocates nothing: it never fails here. */
EXPORT void *realloc(void *p, size_t n) {
    if (n != 0 && fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(p, n);
}

EXPORT void *reallocarray(void *p, size_t n, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, bytes);
}

EXPORT void *memalign(size_t align, size_t n) {
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_memalign(align, n);
}

EXPORT void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }

EXPORT int posix_memalign(void **out, size_t align, size_t n) {
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
    int saved = errno;
    void *p = memalign(align, n);
    if (!p) {
        errno = saved;
        return ENOMEM;
    }
    *out = p;
    return 0;
}

EXPORT void *valloc(size_t n) {
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_valloc(n);
}

EXPORT void *pvalloc(size_t n) {
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_pvalloc(n);
}
