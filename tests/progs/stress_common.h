/* stress_common.h - checks the stress programs (stress_*.c) make on the blocks they own. */
#ifndef MEMLOCK_TESTS_STRESS_COMMON_H
#define MEMLOCK_TESTS_STRESS_COMMON_H

#include <stddef.h>

/* 1 if the n bytes at p are all zero (read through volatile: p may have just been freed). */
static inline int all_zero(const volatile unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (p[i]) return 0;
    return 1;
}

/* 1 if the n bytes at p all hold v. */
static inline int filled(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; ++i)
        if (p[i] != v) return 0;
    return 1;
}

#endif
