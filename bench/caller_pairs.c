/* caller_pairs SIZE ITERATIONS
 * malloc(SIZE) + write + free pairs made 20 calls deep (below chain_0 ... chain_19), so that
 * caller rules have frames to walk. Prints the mean nanoseconds per pair. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static size_t size;
static long iterations;

__attribute__((noinline)) static double leaf(void) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < iterations; ++i) {
        volatile char *p = malloc(size);
        if (!p) abort();
        p[0] = (char)i;
        free((void *)p);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)iterations;
}

/* A chain of distinct frames: the compiler may neither inline nor tail-call them. */
#define LINK(n, next)                                      \
    __attribute__((noinline)) double chain_##n(void) {     \
        double r = next();                                 \
        __asm__ volatile("" ::: "memory");                 \
        return r;                                          \
    }
LINK(19, leaf) LINK(18, chain_19) LINK(17, chain_18) LINK(16, chain_17) LINK(15, chain_16)
LINK(14, chain_15) LINK(13, chain_14) LINK(12, chain_13) LINK(11, chain_12) LINK(10, chain_11)
LINK(9, chain_10) LINK(8, chain_9) LINK(7, chain_8) LINK(6, chain_7) LINK(5, chain_6)
LINK(4, chain_5) LINK(3, chain_4) LINK(2, chain_3) LINK(1, chain_2) LINK(0, chain_1)

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: caller_pairs SIZE ITERATIONS\n");
        return 2;
    }
    size = strtoul(argv[1], NULL, 10);
    iterations = strtol(argv[2], NULL, 10);
    long real = iterations;
    iterations = real / 10 + 1;
    chain_0(); /* warm up */
    iterations = real;
    printf("%.2f\n", chain_0());
    return 0;
}
