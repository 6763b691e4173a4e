/* e2e_fork.c [MIB [clone]] - a shimmed program that forks while holding matching blocks.
 *
 * With "clone" it makes the child as vsftpd makes its connections' processes: with the clone
 * system call through syscall(3) (flags SIGCHLD, no stack), which runs no atfork handler.
 *
 * Expects rules {size 32} and {min 512..2048}. The parent allocates matching blocks, fills
 * them (with MIB, also MIB MiB of 1000-byte blocks, kept live) and forks. The child checks it
 * can read them, prints "child PID", one "block ADDR" line per block, with MIB "bulk LO HI"
 * (the range the MIB MiB of blocks lie in) and "ready", then waits for EOF on stdin (the test inspects its smaps
 * meanwhile), frees the parent's blocks, allocates and frees new ones, and exits 0 when
 * all went well. The parent waits for the child, prints "child-exit N", frees its own
 * copies and exits with the child's status.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { kBlocks = 64 };

static size_t size_of(int i) { return i % 2 ? 32 : 1000; }

static int check(unsigned char *const *blocks) {
    for (int i = 0; i < kBlocks; ++i)
        for (size_t j = 0; j < size_of(i); ++j)
            if (blocks[i][j] != (unsigned char)(i + 1)) return 0;
    return 1;
}

int main(int argc, char **argv) {
    unsigned char *blocks[kBlocks];
    const long bulk = argc > 1 ? atol(argv[1]) * 1024 * 1024 / 1000 : 0;
    unsigned char *lo = NULL, *hi = NULL;
    for (long i = 0; i < bulk; ++i) {
        unsigned char *p = malloc(1000);
        if (!p) return 2;
        memset(p, 0x5a, 1000);
        if (!lo || p < lo) lo = p;
        if (p + 1000 > hi) hi = p + 1000;
    }
    for (int i = 0; i < kBlocks; ++i) {
        blocks[i] = malloc(size_of(i));
        if (!blocks[i]) return 2;
        memset(blocks[i], i + 1, size_of(i));
    }
    printf("parent %d\n", (int)getpid());
    fflush(stdout);

    const int raw_clone = argc > 2 && strcmp(argv[2], "clone") == 0;
    pid_t child = raw_clone ? (pid_t)syscall(SYS_clone, (long)SIGCHLD, 0L, 0L, 0L, 0L) : fork();
    if (child < 0) return 2;
    if (child == 0) {
        if (!check(blocks)) {
            printf("child cannot read the parent's blocks\n");
            fflush(stdout);
            _exit(3);
        }
        printf("child %d\n", (int)getpid());
        for (int i = 0; i < kBlocks; ++i) printf("block %p\n", (void *)blocks[i]);
        if (bulk) printf("bulk %p %p\n", (void *)lo, (void *)hi);
        printf("ready\n");
        fflush(stdout);
        char buf[64];
        while (read(0, buf, sizeof buf) > 0) {
        }
        for (int i = 0; i < kBlocks; ++i) free(blocks[i]);
        for (int round = 0; round < 1000; ++round) {
            void *a = malloc(32), *b = malloc(1000);
            if (!a || !b) _exit(4);
            memset(a, 1, 32);
            memset(b, 2, 1000);
            free(a);
            free(b);
        }
        printf("child-done\n");
        fflush(stdout);
        exit(0);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child) return 2;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("child-exit %d\n", code);
    int ok = check(blocks);
    for (int i = 0; i < kBlocks; ++i) free(blocks[i]);
    printf("parent-%s\n", ok ? "ok" : "corrupt");
    return code ? code : !ok;
}
