/* libatfork_grow.so - a library whose fork prepare handler allocates.
 *
 * Preloaded after the shim, its constructor runs first and registers its handler before the
 * shim's: prepare handlers run in the reverse order, so it runs after the shim's, right
 * before the fork. With ATFORK_GROW_MIB=N it allocates N MiB of 1000-byte blocks there (kept
 * live), filled, and prints "grown LO HI" (the range they lie in); with ATFORK_MUNLOCKALL=1 it
 * calls munlockall() there, while the shim's handler holds the arena's locks; with
 * ATFORK_OWNLOCK=1 it locks 64 KiB of its own there (mlock, which RLIMIT_MEMLOCK may refuse),
 * advises them MADV_DODUMP and unlocks them. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static long grow_blocks;
static int unlock_all;
static void *own_pages;
enum { kOwnBytes = 64 << 10 };

static void grow(void) {
    if (unlock_all && munlockall() != 0) abort();
    if (own_pages) {
        (void)mlock(own_pages, kOwnBytes);
        if (madvise(own_pages, kOwnBytes, MADV_DODUMP) != 0 || munlock(own_pages, kOwnBytes) != 0) abort();
    }
    unsigned char *lo = NULL, *hi = NULL;
    for (long i = 0; i < grow_blocks; ++i) {
        unsigned char *p = malloc(1000);
        if (!p) abort();
        memset(p, 0x3c, 1000);
        if (!lo || p < lo) lo = p;
        if (p + 1000 > hi) hi = p + 1000;
    }
    if (grow_blocks) {
        printf("grown %p %p\n", (void *)lo, (void *)hi);
        fflush(stdout);
    }
}

__attribute__((constructor)) static void init(void) {
    const char *mib = getenv("ATFORK_GROW_MIB");
    grow_blocks = mib ? atol(mib) * 1024 * 1024 / 1000 : 0;
    unlock_all = getenv("ATFORK_MUNLOCKALL") != NULL;
    if (getenv("ATFORK_OWNLOCK")) {
        own_pages = mmap(NULL, kOwnBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (own_pages == MAP_FAILED) abort();
    }
    pthread_atfork(grow, NULL, NULL);
}
