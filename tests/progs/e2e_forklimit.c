/* e2e_forklimit.c - a fork child that may lock less than its parent did: a daemon that lowers
 * RLIMIT_MEMLOCK (or drops to a user with a low one) after start-up, then forks its workers.
 *
 * Usage: e2e_forklimit LIMIT_BYTES. Expects a config whose rule matches every size
 * (min_size 0) and whose policy.max_locked is above LIMIT_BYTES, and to start as root (with
 * CAP_IPC_LOCK: its budget locks whatever the limit). The parent allocates a 3 MiB block (a
 * page run at the bottom of the arena), then 64 blocks of 1000 bytes (a slab above it), frees
 * the large block (its pages hold no block any more), sets RLIMIT_MEMLOCK (soft and hard) to
 * LIMIT_BYTES, drops to user and group 65534 (and with them CAP_IPC_LOCK) and forks. The child
 * checks the blocks, prints "child PID", one "block ADDR" line per block and "ready", waits
 * for EOF on stdin (the test reads its smaps meanwhile), frees them, allocates and frees
 * 8 MiB in 1000-byte blocks (more than it can lock) and exits 0. The parent prints
 * "parent PID", waits and exits with the child's status.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

enum { kBlocks = 64, kSize = 1000, kLater = 8 << 20 };

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const rlim_t limit = (rlim_t)strtoull(argv[1], NULL, 10);
    printf("parent %d\n", (int)getpid());
    fflush(stdout);
    unsigned char *big = malloc(3 << 20), *blocks[kBlocks];
    if (!big) return 2;
    memset(big, 7, 3 << 20);
    for (int i = 0; i < kBlocks; ++i) {
        if (!(blocks[i] = malloc(kSize))) return 2;
        memset(blocks[i], i + 1, kSize);
    }
    free(big);
    const struct rlimit rl = {limit, limit};
    if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
        perror("setrlimit");
        return 2;
    }
    if (geteuid() == 0 && (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)) {
        perror("setresuid");
        return 2;
    }

    pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) {
        for (int i = 0; i < kBlocks; ++i)
            for (int j = 0; j < kSize; ++j)
                if (blocks[i][j] != (unsigned char)(i + 1)) _exit(3);
        printf("child %d\n", (int)getpid());
        for (int i = 0; i < kBlocks; ++i) printf("block %p\n", (void *)blocks[i]);
        printf("ready\n");
        fflush(stdout);
        char buf[64];
        while (read(0, buf, sizeof buf) > 0) {
        }
        for (int i = 0; i < kBlocks; ++i) free(blocks[i]);
        static void *later[kLater / kSize];
        for (int i = 0; i < kLater / kSize; ++i) {
            if (!(later[i] = malloc(kSize))) _exit(4);
            memset(later[i], 1, kSize);
        }
        for (int i = 0; i < kLater / kSize; ++i) free(later[i]);
        _exit(0);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child) return 2;
    for (int i = 0; i < kBlocks; ++i) free(blocks[i]);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}
