/* callers_common.h - the body shared by the caller-rule test programs (callers_linked,
 * callers_dlopen): allocate blocks through libsecretlib's two loaders and from the program
 * itself, fill them with markers generated at run time, print where they are, wait.
 *
 * Each round allocates kBlocks blocks of kSize bytes from load_secret_key, from
 * load_plain_data and from the program's own malloc, and fills each kind with its own
 * 16-byte marker repeated over the block. Output, one item a line:
 *   pid N
 *   secret ADDR / plain ADDR / own ADDR        (every block, all rounds)
 *   secret_marker HEX / plain_marker HEX / own_marker HEX
 *   ready
 * then waits for EOF on stdin, frees everything, prints "done" and exits 0.
 *
 * The raw marker bytes exist only in the blocks: they are written a byte at a time (no
 * memcpy through vector registers), printed as hex digits, and every libc function is called
 * once before they exist (lazy binding saves registers on the stack).
 */
#ifndef CALLERS_COMMON_H
#define CALLERS_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { kMarker = 16, kBlocks = 4, kSize = 1000, kMaxRounds = 2 };

typedef void *(*loader_fn)(size_t);

static unsigned char *g_secret[kMaxRounds * kBlocks], *g_plain[kMaxRounds * kBlocks], *g_own[kMaxRounds * kBlocks];
static int g_count;
static uint64_t g_state;

static uint64_t next_random(void) {
    uint64_t x = g_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    g_state = x;
    return x;
}

/* Calls every libc function used later once, and seeds the generator. */
static void prepare(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    g_state = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 16; ++i) next_random();
    void *p = malloc(kSize);
    if (!p) exit(3);
    free(p);
    printf("starting\n");
    fflush(stdout);
    if (read(0, NULL, 0) < 0) exit(3);
}

/* One round: kBlocks blocks of each kind. */
static void allocate_round(loader_fn secret, loader_fn plain) {
    for (int i = 0; i < kBlocks; ++i) {
        g_secret[g_count] = secret(kSize);
        g_plain[g_count] = plain(kSize);
        g_own[g_count] = malloc(kSize);
        if (!g_secret[g_count] || !g_plain[g_count] || !g_own[g_count]) exit(3);
        ++g_count;
    }
}

/* A fresh marker at the start of blocks[0], then repeated over every block. */
static void fill(unsigned char **blocks) {
    unsigned char *first = blocks[0];
    for (int i = 0; i < kMarker; ++i) first[i] = (unsigned char)(next_random() >> 24);
    for (int b = 0; b < g_count; ++b)
        for (size_t off = 0; off + kMarker <= kSize; ++off)
            if (blocks[b] != first || off >= kMarker) blocks[b][off] = first[off % kMarker];
}

static void print_hex(const char *label, const unsigned char *p) {
    printf("%s ", label);
    for (int i = 0; i < kMarker; ++i) printf("%02x", p[i]);
    printf("\n");
}

/* Fills, reports, waits for EOF on stdin, frees. Returns the exit status. */
static int report_and_wait(void) {
    fill(g_secret);
    fill(g_plain);
    fill(g_own);
    printf("pid %d\n", (int)getpid());
    for (int i = 0; i < g_count; ++i) printf("secret %p\nplain %p\nown %p\n", g_secret[i], g_plain[i], g_own[i]);
    print_hex("secret_marker", g_secret[0]);
    print_hex("plain_marker", g_plain[0]);
    print_hex("own_marker", g_own[0]);
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    for (int i = 0; i < g_count; ++i) {
        free(g_secret[i]);
        free(g_plain[i]);
        free(g_own[i]);
    }
    printf("done\n");
    return 0;
}

#endif
