/* e2e_fds.c - a program that takes every descriptor number over, as a daemon that closes its
 * descriptors and opens its own does, while the shim has something to log.
 *
 *   e2e_fds FILE COUNT [stderr]
 *
 * Opens FILE (created, emptied, append) and prints "fd N", the number it got; writes
 * "line1\n" to it and duplicates it onto every number from 3 to 1023 (or RLIMIT_NOFILE),
 * replacing whatever was open there, and with "stderr" onto 2 as well. Then allocates COUNT blocks of 1000 bytes (matched by a
 * rule {512..2048}; more than policy.max_locked allows makes the shim warn), frees them,
 * writes "line2\n" to FILE, prints "done" and exits 0.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return 2;
    printf("fd %d\n", fd);
    fflush(stdout);
    if (write(fd, "line1\n", 6) != 6) return 2;
    struct rlimit rl;
    int top = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1024 ? (int)rl.rlim_cur : 1024;
    for (int n = argc > 3 && strcmp(argv[3], "stderr") == 0 ? 2 : 3; n < top; ++n)
        if (n != fd && dup2(fd, n) != n) return 3;
    long count = atol(argv[2]);
    char **blocks = calloc((size_t)count, sizeof *blocks);
    if (!blocks) return 2;
    for (long i = 0; i < count; ++i)
        if ((blocks[i] = malloc(1000)) != NULL) memset(blocks[i], 0x5a, 1000);
    for (long i = 0; i < count; ++i) free(blocks[i]);
    free(blocks);
    if (write(fd, "line2\n", 6) != 6) return 2;
    printf("done\n");
    return 0;
}
