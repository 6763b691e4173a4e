/* e2e_threads.c - 4 threads of matched and unmatched allocation traffic, with blocks freed
 * by a thread other than the one that allocated them.
 *
 * Expects rules {size 32} and {min 512..2048}. Each thread runs ITERS rounds (argv[1],
 * default 200000); every round allocates one matched block (32 or 1000 bytes) and one
 * unmatched (64 or 4096 bytes), tags them, checks and frees the tags of blocks from earlier
 * rounds, and every 8th round hands a matched block to the next thread, which frees it.
 * Prints "matched N" (matched allocations made) and "ok"; exits 0, or 1 on a corrupt block.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { kThreads = 4, kKeep = 64, kMailbox = 256 };

struct mailbox {
    pthread_mutex_t lock;
    void *slots[kMailbox];
    unsigned count;
};

static struct mailbox boxes[kThreads];
static long iters = 200000;
static int corrupt = 0;
static unsigned long matched_total[kThreads];

static void tag(unsigned char *p, size_t n, unsigned v) {
    memset(p, (int)(v & 0xff), n < 64 ? n : 64);
    memcpy(p, &n, sizeof n);
}

static int tag_ok(const unsigned char *p, unsigned v) {
    size_t n;
    memcpy(&n, p, sizeof n);
    size_t end = n < 64 ? n : 64;
    for (size_t i = sizeof n; i < end; ++i)
        if (p[i] != (unsigned char)(v & 0xff)) return 0;
    return 1;
}

static void post(int to, void *p) {
    struct mailbox *b = &boxes[to];
    pthread_mutex_lock(&b->lock);
    if (b->count < kMailbox) {
        b->slots[b->count++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&b->lock);
    if (p) {
        if (!tag_ok(p, 0xcc)) __atomic_store_n(&corrupt, 1, __ATOMIC_RELAXED);
        free(p); /* mailbox full: free it here */
    }
}

static void drain(int self) {
    struct mailbox *b = &boxes[self];
    void *got[kMailbox];
    pthread_mutex_lock(&b->lock);
    unsigned n = b->count;
    memcpy(got, b->slots, n * sizeof(void *));
    b->count = 0;
    pthread_mutex_unlock(&b->lock);
    for (unsigned i = 0; i < n; ++i) {
        if (!tag_ok(got[i], 0xcc)) __atomic_store_n(&corrupt, 1, __ATOMIC_RELAXED);
        free(got[i]);
    }
}

static void *worker(void *arg) {
    int self = (int)(intptr_t)arg;
    unsigned char *keep_m[kKeep] = {0}, *keep_u[kKeep] = {0};
    unsigned long matched = 0;
    for (long r = 0; r < iters; ++r) {
        unsigned slot = (unsigned)(r % kKeep);
        unsigned v = (unsigned)(self * 64 + slot);
        if (keep_m[slot]) {
            if (!tag_ok(keep_m[slot], v)) __atomic_store_n(&corrupt, 1, __ATOMIC_RELAXED);
            free(keep_m[slot]);
        }
        if (keep_u[slot]) {
            if (!tag_ok(keep_u[slot], v)) __atomic_store_n(&corrupt, 1, __ATOMIC_RELAXED);
            free(keep_u[slot]);
        }
        size_t ms = (r & 1) ? 32 : 1000, us = (r & 2) ? 64 : 4096;
        keep_m[slot] = malloc(ms);
        keep_u[slot] = malloc(us);
        if (!keep_m[slot] || !keep_u[slot]) {
            __atomic_store_n(&corrupt, 1, __ATOMIC_RELAXED);
            break;
        }
        matched++;
        tag(keep_m[slot], ms, v);
        tag(keep_u[slot], us, v);
        if (r % 8 == 0) {
            unsigned char *x = malloc((r & 8) ? 32 : 1000);
            if (!x) continue;
            matched++;
            tag(x, (r & 8) ? 32 : 1000, 0xcc);
            post((self + 1) % kThreads, x);
        }
        if (r % 64 == 0) drain(self);
    }
    for (unsigned s = 0; s < kKeep; ++s) {
        if (keep_m[s]) free(keep_m[s]);
        if (keep_u[s]) free(keep_u[s]);
    }
    matched_total[self] = matched;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) iters = atol(argv[1]);
    pthread_t t[kThreads];
    for (int i = 0; i < kThreads; ++i) pthread_mutex_init(&boxes[i].lock, NULL);
    for (int i = 0; i < kThreads; ++i)
        if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) != 0) return 2;
    for (int i = 0; i < kThreads; ++i) pthread_join(t[i], NULL);
    for (int i = 0; i < kThreads; ++i) drain(i);
    unsigned long total = 0;
    for (int i = 0; i < kThreads; ++i) total += matched_total[i];
    printf("matched %lu\n", total);
    printf("%s\n", corrupt ? "corrupt" : "ok");
    return corrupt ? 1 : 0;
}
