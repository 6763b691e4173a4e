/* discover_adjacent - a secret in anonymous memory that lies right after the program's own
 * image, for memlock-discover (tests/shim/test_discover.cpp).
 *
 *   discover_adjacent HEX [FILE]
 *
 * Maps 64 KiB of anonymous memory at the first page past the end of the program's data and
 * .bss (the kernel merges it with an anonymous .bss mapping, or it follows the file-backed
 * data mapping directly), as a runtime's own mmap can land (Erlang's carriers after a
 * library OpenSSL loaded), and decodes HEX into it, past the image. Then it sends SIGUSR1 to
 * its parent (memlock-discover takes its snapshot) and waits to be terminated. Exits 1 when
 * that address is taken. With FILE it also maps FILE's first page shared and writable and
 * decodes HEX into it (a copy the kernel writes back to the file), and FILE.private's first
 * page private and writable (a copy only the process holds).
 */
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

extern char _end[];

static int nibble(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: discover_adjacent HEX [FILE]\n");
        return 2;
    }
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t at = ((uintptr_t)_end + page - 1) & ~(page - 1);
    unsigned char *p = mmap((void *)at, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED || (uintptr_t)p != at) {
        fprintf(stderr, "discover_adjacent: %#lx is taken\n", (unsigned long)at);
        return 1;
    }
    volatile unsigned char *dst = p + (32 << 10);
    for (const char *h = argv[1]; h[0] && h[1]; h += 2) *dst++ = (unsigned char)(nibble(h[0]) << 4 | nibble(h[1]));
    if (argc == 3) {
        char private_path[4096];
        snprintf(private_path, sizeof private_path, "%s.private", argv[2]);
        const char *paths[2] = {argv[2], private_path};
        const int flags[2] = {MAP_SHARED, MAP_PRIVATE};
        for (int i = 0; i < 2; ++i) {
            const int fd = open(paths[i], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0 || ftruncate(fd, (off_t)page) != 0) return 3;
            volatile unsigned char *f = mmap(NULL, page, PROT_READ | PROT_WRITE, flags[i], fd, 0);
            if (f == MAP_FAILED) return 3;
            for (const char *h = argv[1]; h[0] && h[1]; h += 2) *f++ = (unsigned char)(nibble(h[0]) << 4 | nibble(h[1]));
        }
    }
    printf("ready %p\n", (void *)(p + (32 << 10)));
    fflush(stdout);
    kill(getppid(), SIGUSR1);
    for (;;) pause();
}
