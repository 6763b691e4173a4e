/* discover_split - a secret left in a freed heap block that a smaller block later reuses in
 * part, for memlock-discover (tests/shim/test_discover.cpp).
 *
 *   discover_split HEX
 *
 * read_key_file allocates a 4096-byte block, decodes HEX into it at offset 3072 and frees it
 * without a wipe, as a daemon frees the buffer it read its key file into (rsyslog's TLS
 * driver). make_record then allocates a 1536-byte block (larger than glibc caches per
 * thread), which malloc carves out of the start of the freed one, and keeps it: the copy lies
 * in the part of the freed block nothing has reused. Then it sends SIGUSR1 to its parent
 * (memlock-discover takes its snapshot) and waits to be terminated. Exits 1 when malloc
 * placed the second block elsewhere (nothing to show).
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static int nibble(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

__attribute__((noinline)) unsigned char *read_key_file(const char *hex) {
    unsigned char *buf = malloc(4096);
    if (!buf) return NULL;
    memset(buf, 0, 4096);
    volatile unsigned char *dst = buf + 3072;
    for (; hex[0] && hex[1]; hex += 2) *dst++ = (unsigned char)(nibble(hex[0]) << 4 | nibble(hex[1]));
    KEEP_FRAME();
    return buf;
}

__attribute__((noinline)) void *make_record(size_t n) {
    void *p = malloc(n);
    if (p) memset(p, 0x5a, n);
    KEEP_FRAME();
    return p;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: discover_split HEX\n");
        return 2;
    }
    unsigned char *buf = read_key_file(argv[1]);
    void *guard = malloc(256); /* keeps the freed block from merging with the top of the heap */
    if (!buf || !guard) return 3;
    const uintptr_t lo = (uintptr_t)buf;
    free(buf); /* freed without a wipe */
    unsigned char *record = make_record(1536);
    if (!record || (uintptr_t)record < lo || (uintptr_t)record >= lo + 4096) {
        fprintf(stderr, "discover_split: the small block is not inside the freed one\n");
        return 1;
    }
    printf("ready %p %p\n", (void *)lo, (void *)record);
    fflush(stdout);
    kill(getppid(), SIGUSR1);
    for (;;) pause();
}
