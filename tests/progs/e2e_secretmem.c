/* e2e_secretmem.c - blocks the rules match ({size 32}, {512..2048}) hold a marker made at run
 * time; another process tries to read them while this one uses them, and fork children change
 * their copies.
 *
 *   e2e_secretmem wait   prints "secret ADDR" for 4 matching blocks of 1024 bytes, "plain ADDR"
 *                        for a block no rule matches (the same marker), "marker HEX", then
 *                        "ready"; waits for EOF on stdin; then rewrites and checks every block
 *                        and prints "intact" (the program reads and writes them as usual).
 *   e2e_secretmem fork   a 32-byte and a 1024-byte block hold 'A'...; a forked child sees
 *                        them, writes 'C' and frees and allocates blocks; the parent, which
 *                        writes 'P' meanwhile, must see none of it and the child none of the
 *                        parent's; then the other way round with a second fork started from
 *                        a child. Prints "fork ok" and exits 0, else a reason and exits 1.
 *   e2e_secretmem snapshot  32 matching blocks hold 'A'...; 20 times a child forked checks
 *                        them a moment later while the parent rewrites them with 'P' right
 *                        after fork: each child must see them as they were at the fork.
 *                        Prints "snapshot N of 20" (children that saw a parent's write) and
 *                        exits 0 when N is 0.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { kBlocks = 4, kSize = 1024, kKey = 32 };

static int check(int ok, const char *what) {
    if (!ok) printf("failed: %s\n", what);
    return ok;
}

static int run_wait(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t s = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ 0x9e3779b97f4a7c15ull;
    unsigned char *blocks[kBlocks];
    for (int i = 0; i < kBlocks; ++i)
        if (!(blocks[i] = malloc(kSize))) return 3;
    unsigned char *plain = malloc(8192);
    if (!plain) return 3;
    for (int i = 0; i < kSize; ++i) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        blocks[0][i] = (unsigned char)(s >> 24);
    }
    for (int i = 1; i < kBlocks; ++i) memcpy(blocks[i], blocks[0], kSize);
    memcpy(plain, blocks[0], kSize);
    for (int i = 0; i < kBlocks; ++i) printf("secret %p\n", (void *)blocks[i]);
    printf("plain %p\nmarker ", (void *)plain);
    for (int i = 0; i < 16; ++i) printf("%02x", blocks[0][i]);
    printf("\nready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    int ok = 1;
    for (int i = 0; i < kBlocks; ++i) {
        ok &= memcmp(blocks[i], plain, kSize) == 0;
        memset(blocks[i], i, kSize);
        ok &= blocks[i][kSize - 1] == i;
        free(blocks[i]);
    }
    printf(ok ? "intact\n" : "changed\n");
    return ok ? 0 : 1;
}

/* One fork: the child changes its copies and its allocator state, the parent its own; each
 * must see only its own writes. Returns 1 when both did. */
static int fork_round(unsigned char *key, unsigned char *buf) {
    int to_child[2], to_parent[2];
    if (pipe(to_child) || pipe(to_parent)) return check(0, "pipe");
    char mark = (char)key[0];
    pid_t pid = fork();
    if (pid < 0) return check(0, "fork");
    if (pid == 0) {
        int ok = check(key[0] == mark && buf[kSize - 1] == mark, "the child sees the parent's blocks");
        key[0] = 'C';
        buf[kSize - 1] = 'C';
        void *more[64];
        for (int i = 0; i < 64; ++i) more[i] = malloc(i % 2 ? kKey : kSize);
        for (int i = 0; i < 64; ++i) free(more[i]);
        char c = 'w';
        if (write(to_parent[1], &c, 1) != 1 || read(to_child[0], &c, 1) != 1) ok = 0;
        ok &= check(key[0] == 'C' && buf[kSize - 1] == 'C', "the child keeps its own writes");
        fflush(stdout);
        _exit(ok ? 0 : 1);
    }
    char c;
    int ok = read(to_parent[0], &c, 1) == 1;
    ok &= check(key[0] == mark && buf[kSize - 1] == mark, "the parent does not see the child's writes");
    key[0] = 'P';
    buf[kSize - 1] = 'P';
    ok &= write(to_child[1], &c, 1) == 1;
    int status = 0;
    ok &= waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    ok &= check(key[0] == 'P', "the parent keeps its own writes");
    close(to_child[0]), close(to_child[1]), close(to_parent[0]), close(to_parent[1]);
    key[0] = buf[kSize - 1] = (unsigned char)mark;
    return ok;
}

static int run_fork(void) {
    unsigned char *key = malloc(kKey), *buf = malloc(kSize);
    if (!key || !buf) return 3;
    memset(key, 'A', kKey);
    memset(buf, 'A', kSize);
    int ok = fork_round(key, buf);
    /* A child forks again: a second generation copies the copy. */
    pid_t pid = fork();
    if (pid == 0) {
        key[0] = buf[kSize - 1] = 'B';
        _exit(fork_round(key, buf) ? 0 : 1);
    }
    int status = 0;
    ok &= check(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "second generation");
    ok &= check(key[0] == 'A' && buf[kSize - 1] == 'A', "the parent's blocks after two generations");
    free(key);
    free(buf);
    printf(ok ? "fork ok\n" : "fork failed\n");
    return ok ? 0 : 1;
}

static int run_snapshot(void) {
    enum { kCount = 32, kRounds = 20 };
    unsigned char *b[kCount];
    for (int i = 0; i < kCount; ++i)
        if (!(b[i] = malloc(i % 2 ? kKey : kSize))) return 3;
    int bad = 0;
    for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < kCount; ++i) memset(b[i], 'A', i % 2 ? kKey : kSize);
        pid_t pid = fork();
        if (pid < 0) return 3;
        if (pid == 0) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
            int ok = 1;
            for (int i = 0; i < kCount; ++i)
                for (int k = 0; k < (i % 2 ? kKey : kSize); ++k) ok &= b[i][k] == 'A';
            _exit(ok ? 0 : 1);
        }
        for (int i = 0; i < kCount; ++i) memset(b[i], 'P', i % 2 ? kKey : kSize);
        int status = 0;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ++bad;
    }
    for (int i = 0; i < kCount; ++i) free(b[i]);
    printf("snapshot %d of %d\n", bad, kRounds);
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "wait") == 0) return run_wait();
    if (argc == 2 && strcmp(argv[1], "fork") == 0) return run_fork();
    if (argc == 2 && strcmp(argv[1], "snapshot") == 0) return run_snapshot();
    fprintf(stderr, "usage: e2e_secretmem wait|fork|snapshot\n");
    return 2;
}
