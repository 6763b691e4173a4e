// hold_common.h - the allocate-then-wait loop of the programs that tests inspect while they run,
// and the generator of the markers they look for.
#ifndef MEMLOCK_TESTS_HOLD_COMMON_H
#define MEMLOCK_TESTS_HOLD_COMMON_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

// xorshift64: the next value of *s (pre: *s != 0). A test derives the same bytes from a
// printed seed, so a marker's bytes exist only where the program writes them.
static inline uint64_t next_random(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

// Calls handler on SIGALRM (SA_RESTART) every usec microseconds; alarm_every(NULL, 0) stops the
// timer and leaves the handler.
static inline void alarm_every(void (*handler)(int), long usec) {
    if (handler) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = handler;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGALRM, &sa, NULL);
    }
    struct itimerval it = {{0, usec}, {0, usec}};
    setitimer(ITIMER_REAL, &it, NULL);
}

// Prints "ready" and waits for stdin to close. Returns 0.
static inline int ready_until_eof(void) {
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}

// Allocates n blocks the test configs match (32 bytes and 1 KiB, alternating) into blocks[]
// and writes to each. Returns 0, or 1 when a malloc failed.
static inline int fill_blocks(void *volatile *blocks, int n) {
    for (int i = 0; i < n; ++i) {
        const size_t size = i % 2 ? 32 : 1024;
        blocks[i] = malloc(size);
        if (!blocks[i]) return 1;
        memset(blocks[i], 0x5a, size);
    }
    return 0;
}

// fill_blocks, then prints "ready" and waits for stdin to close. Returns 0, or 1 when a malloc
// failed.
static inline int hold_blocks_until_eof(void *volatile *blocks, int n) {
    return fill_blocks(blocks, n) ? 1 : ready_until_eof();
}

#endif  // MEMLOCK_TESTS_HOLD_COMMON_H
