/* e2e_ownlimit.c - a program that locks memory of its own under a low RLIMIT_MEMLOCK, as
 * gpg-agent locks its secure memory and libsodium its guarded buffers.
 *
 * usage: e2e_ownlimit BYTES mlock|mlock2|syscall
 * Maps BYTES (whole pages) and locks them with mlock(2), mlock2(2) (no flags) or
 * syscall(SYS_mlock), then allocates a 32-byte block. Prints "own ADDR", "mlock 0" or
 * "mlock ERRNO-NAME", "block ADDR", "ready", then waits for its stdin to close and exits 0.
 * Exit 2 on bad usage or a failed mapping or allocation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const size_t len = strtoull(argv[1], NULL, 10);
    void *own = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (own == MAP_FAILED) return 2;
    int rc;
    if (!strcmp(argv[2], "mlock")) rc = mlock(own, len);
    else if (!strcmp(argv[2], "mlock2")) rc = mlock2(own, len, 0);
    else if (!strcmp(argv[2], "syscall")) rc = (int)syscall(SYS_mlock, own, len);
    else return 2;
    const int err = errno;
    memset(own, 1, len);
    char *block = malloc(32);
    if (!block) return 2;
    memset(block, 2, 32);
    printf("own %p\nmlock %s\nblock %p\nready\n", own, rc == 0 ? "0" : strerrorname_np(err), (void *)block);
    fflush(stdout);
    while (getchar() != EOF) {}
    free(block);
    return 0;
}
