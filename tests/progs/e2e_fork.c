/* e2e_fork.c [MIB [clone|libc-clone|libc-clone-vfork|_Fork]] - a shimmed program that forks while
 * holding matching blocks.
 *
 * With "clone" it makes the child as vsftpd makes its connections' processes: with the clone
 * system call through syscall(3) (flags SIGCHLD, no stack), which runs no atfork handler.
 * With "libc-clone" it makes it with glibc's clone(fn, stack, SIGCHLD | CLONE_PARENT_SETTID,
 * arg, &tid), as sandboxes do, which runs none either; the child runs on a stack of its own
 * and the parent checks that clone stored the child's pid in tid. "libc-clone-vfork" adds
 * CLONE_VFORK: the parent is suspended until the child exits. With "_Fork" it makes it with
 * glibc's _Fork (2.34 and later, looked up with dlsym), which runs no atfork handler either.
 *
 * Expects rules {size 32} and {min 512..2048}. The parent allocates matching blocks, fills
 * them (with MIB, also MIB MiB of 1000-byte blocks, kept live) and forks. The child checks it
 * can read them, prints "child PID", one "block ADDR" line per block, with MIB "bulk LO HI"
 * (the range the MIB MiB of blocks lie in) and "ready", then waits for EOF on stdin (the test inspects its smaps
 * meanwhile), frees the parent's blocks, allocates and frees new ones, and exits 0 when
 * all went well. The parent waits for the child, prints "child-exit N", frees its own
 * copies and exits with the child's status.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

static unsigned char *blocks[kBlocks];
static long bulk;
static unsigned char *lo, *hi;

/* The child's part: exits 0 when all went well. */
static void run_child(void) {
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

static int clone_child(void *arg) {
    (void)arg;
    run_child();
    return 0;
}

/* The child made with glibc's clone, on a stack of its own; -1 on failure. */
static pid_t libc_clone(int flags) {
    const size_t stack_size = 256 * 1024;
    char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) return -1;
    pid_t tid = 0;
    pid_t child = clone(clone_child, stack + stack_size, flags | CLONE_PARENT_SETTID | SIGCHLD, NULL, &tid);
    if (child > 0 && tid != child) {
        printf("clone stored tid %d for child %d\n", (int)tid, (int)child);
        fflush(stdout);
    }
    return child;
}

int main(int argc, char **argv) {
    bulk = argc > 1 ? atol(argv[1]) * 1024 * 1024 / 1000 : 0;
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

    const char *how = argc > 2 ? argv[2] : "fork";
    pid_t child;
    if (strcmp(how, "clone") == 0)
        child = (pid_t)syscall(SYS_clone, (long)SIGCHLD, 0L, 0L, 0L, 0L);
    else if (strcmp(how, "libc-clone") == 0)
        child = libc_clone(0);
    else if (strcmp(how, "libc-clone-vfork") == 0)
        child = libc_clone(CLONE_VFORK);
    else if (strcmp(how, "_Fork") == 0) {
        pid_t (*bare_fork)(void) = (pid_t(*)(void))dlsym(RTLD_DEFAULT, "_Fork");
        if (!bare_fork) {
            printf("no _Fork\n");
            return 2;
        }
        child = bare_fork();
    }
    else
        child = fork();
    if (child < 0) return 2;
    if (child == 0) run_child();
    int status = 0;
    if (waitpid(child, &status, 0) != child) return 2;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("child-exit %d\n", code);
    int ok = check(blocks);
    for (int i = 0; i < kBlocks; ++i) free(blocks[i]);
    printf("parent-%s\n", ok ? "ok" : "corrupt");
    return code ? code : !ok;
}
