/* secretlib.c - a test library whose two loaders allocate the same sizes through one shared
 * helper, for caller rules (tests/shim/test_e2e_callers.cpp).
 *
 *   load_secret_key(n) -> alloc_helper(n) -> malloc(n)
 *   load_plain_data(n) -> alloc_helper(n) -> malloc(n)
 *
 * alloc_helper is the depth-1 caller of malloc for both; the loaders are depth 2. Nothing is
 * inlined and no call is a tail call (the empty asm after each call keeps the frame), so the
 * stack really has these frames whatever the optimisation level.
 */
#include <stddef.h>
#include <stdlib.h>

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

__attribute__((noinline, visibility("default"))) void *alloc_helper(size_t n) {
    void *p = malloc(n);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, visibility("default"))) void *load_secret_key(size_t n) {
    void *p = alloc_helper(n);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, visibility("default"))) void *load_plain_data(size_t n) {
    void *p = alloc_helper(n);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, visibility("default"))) void release_block(void *p) {
    free(p);
    KEEP_FRAME();
}
