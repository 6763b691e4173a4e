/* alloc_pairs SIZE ITERATIONS THREADS [naive]
 * Times ITERATIONS malloc(SIZE) + write + free pairs per thread and prints the mean
 * nanoseconds per pair. "naive" adds what a per-allocation approach does: mlock,
 * madvise(DONTDUMP), wipe, munlock, madvise(DODUMP) around each block. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static size_t size;
static long iterations;
static int naive;

static void *worker(void *arg) {
    (void)arg;
    for (long i = 0; i < iterations; ++i) {
        volatile char *p = malloc(size);
        if (!p) abort();
        p[0] = (char)i;
        p[size - 1] = (char)i;
        if (naive) {
            void *page = (void *)((unsigned long)p & ~4095ul);
            mlock((void *)p, size);
            madvise(page, 4096, MADV_DONTDUMP);
            explicit_bzero((void *)p, size);
            munlock((void *)p, size);
            madvise(page, 4096, MADV_DODUMP);
        }
        free((void *)p);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: alloc_pairs SIZE ITERATIONS THREADS [naive]\n");
        return 2;
    }
    size = strtoul(argv[1], NULL, 10);
    iterations = strtol(argv[2], NULL, 10);
    int threads = atoi(argv[3]);
    naive = argc > 4 && strcmp(argv[4], "naive") == 0;
    pthread_t tid[64];
    struct timespec a, b;
    worker(NULL); /* warm up: caches, slabs */
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int t = 0; t < threads; ++t) pthread_create(&tid[t], NULL, worker, NULL);
    for (int t = 0; t < threads; ++t) pthread_join(tid[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.2f\n", ns / (double)iterations);
    return 0;
}
