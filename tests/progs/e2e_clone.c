/* e2e_clone.c vm|failures|settls - clone calls a shimmed program makes that must come back as
 * without the shim.
 *
 * Expects rules {size 32} and {min 512..2048}.
 *
 * vm: a thread-like child made with glibc's clone(fn, stack, CLONE_VM | CLONE_FS |
 * CLONE_FILES | CLONE_SYSVSEM | CLONE_PARENT_SETTID | CLONE_CHILD_SETTID |
 * CLONE_CHILD_CLEARTID | SIGCHLD, arg, &ptid, NULL, &ctid), sharing the parent's memory: it
 * reads and frees half of the parent's matching blocks and allocates new ones, which the
 * parent then reads and frees. Prints "vm-child-exit N", "tids ok" (clone stored the child's
 * pid in ptid and the kernel cleared ctid at its exit) and "ok".
 *
 * failures: calls that fail, each printed as "NAME RC ERRNO": glibc's clone with a NULL fn
 * (EINVAL from glibc) and with CLONE_SIGHAND without CLONE_VM (EINVAL from the kernel);
 * syscall(SYS_clone3, ...) with a struct clone_args on a PROT_NONE page, on an unmapped
 * page, and straddling the end of a readable page (its flags and stack readable, the rest
 * not), all EFAULT. A second thread is alive meanwhile, so that fork handlers that take
 * locks take them; it then allocates and frees matching blocks, and the program makes a
 * child with clone3 (a fork in effect) that does the same. Prints "clone3-child-exit N" and
 * "ok".
 *
 * settls: glibc's clone(fn, stack, SIGCHLD | CLONE_SETTLS, arg, NULL, tls) with a thread
 * pointer of its own, as a program that runs no libc code in the child may; fn exits with 7
 * through the exit system call. Prints "settls-child-exit N".
 *
 * Exits 0 when all went well.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { kBlocks = 16, kPage = 4096 };

static unsigned char *blocks[kBlocks];
static unsigned char *child_blocks[kBlocks];
static size_t size_of(int i) { return i % 2 ? 32 : 1000; }

/* Allocates and frees matching blocks; 0 if one failed. */
static int churn(void) {
    for (int round = 0; round < 1000; ++round) {
        void *a = malloc(32), *b = malloc(1000);
        if (!a || !b) return 0;
        memset(a, 1, 32);
        memset(b, 2, 1000);
        free(a);
        free(b);
    }
    return 1;
}

static int vm_child(void *arg) {
    (void)arg;
    for (int i = 0; i < kBlocks; ++i)
        for (size_t j = 0; j < size_of(i); ++j)
            if (blocks[i][j] != (unsigned char)(i + 1)) return 3;
    for (int i = 0; i < kBlocks; i += 2) {
        free(blocks[i]);
        blocks[i] = NULL;
    }
    for (int i = 0; i < kBlocks; ++i) {
        child_blocks[i] = malloc(size_of(i));
        if (!child_blocks[i]) return 4;
        memset(child_blocks[i], 0x40 + i, size_of(i));
    }
    return 0;
}

static int run_vm(void) {
    for (int i = 0; i < kBlocks; ++i) {
        blocks[i] = malloc(size_of(i));
        if (!blocks[i]) return 2;
        memset(blocks[i], i + 1, size_of(i));
    }
    const size_t stack_size = 256 * 1024;
    char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) return 2;
    static volatile pid_t ptid = 0, ctid = -1;
    const int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SYSVSEM | CLONE_PARENT_SETTID | CLONE_CHILD_SETTID |
                      CLONE_CHILD_CLEARTID | SIGCHLD;
    pid_t child = clone(vm_child, stack + stack_size, flags, NULL, (pid_t *)&ptid, NULL, (pid_t *)&ctid);
    if (child < 0) {
        printf("clone failed: %s\n", strerror(errno));
        return 2;
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child) return 2;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("vm-child-exit %d\n", code);
    if (ptid == child && ctid == 0) printf("tids ok\n");
    else printf("tids: ptid %d ctid %d child %d\n", (int)ptid, (int)ctid, (int)child);
    int ok = code == 0;
    for (int i = 0; ok && i < kBlocks; ++i) {
        for (size_t j = 0; j < size_of(i); ++j)
            if (child_blocks[i][j] != (unsigned char)(0x40 + i) || (blocks[i] && blocks[i][j] != (unsigned char)(i + 1)))
                ok = 0;
        free(blocks[i]);
        free(child_blocks[i]);
    }
    ok = ok && churn();
    printf("%s\n", ok ? "ok" : "corrupt");
    return !ok;
}

static void report(const char *name, long rc) {
    printf("%s %ld %s\n", name, rc, rc < 0 ? strerror(errno) : "-");
}

static int never_run(void *arg) {
    (void)arg;
    return 9;
}

static pthread_barrier_t started, go;

static void *second_thread(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    pthread_barrier_wait(&go);
    return churn() ? arg : (void *)1;
}

static int run_failures(void) {
    void *held = malloc(32);
    if (!held) return 2;
    memset(held, 7, 32);
    pthread_t thread;
    pthread_barrier_init(&started, NULL, 2);
    pthread_barrier_init(&go, NULL, 2);
    if (pthread_create(&thread, NULL, second_thread, NULL) != 0) return 2;
    pthread_barrier_wait(&started);

    /* a stack page (glibc's clone writes fn and arg below its top), a readable page, a
     * PROT_NONE page and an unmapped one */
    char *pages = mmap(NULL, 4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages == MAP_FAILED) return 2;
    char *stack = pages + kPage;  /* never run on: both clones fail */
    char *none = pages + 2 * kPage, *unmapped = pages + 3 * kPage;
    if (mprotect(none, kPage, PROT_NONE) != 0 || munmap(unmapped, kPage) != 0) return 2;
    /* flags 0, exit_signal SIGCHLD, stack 0: a fork in effect, if the kernel could read it */
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    char *straddling = none - 48;
    memcpy(straddling, &args, 48);

    errno = 0;
    report("clone-null-fn", clone(NULL, stack, SIGCHLD, NULL));
    errno = 0;
    report("clone-sighand-without-vm", clone(never_run, stack, CLONE_SIGHAND | SIGCHLD, NULL));
    errno = 0;
    report("clone3-prot-none", syscall(SYS_clone3, none, sizeof args));
    errno = 0;
    report("clone3-unmapped", syscall(SYS_clone3, unmapped, sizeof args));
    errno = 0;
    report("clone3-straddling", syscall(SYS_clone3, straddling, sizeof args));
    fflush(stdout);

    pthread_barrier_wait(&go);
    void *thread_result = NULL;
    if (pthread_join(thread, &thread_result) != 0 || thread_result != NULL) return 2;

    pid_t child = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (child < 0) {
        printf("clone3 failed: %s\n", strerror(errno));
        return 2;
    }
    if (child == 0) {
        const unsigned char *h = held;
        for (int j = 0; j < 32; ++j)
            if (h[j] != 7) _exit(3);
        free(held);
        _exit(churn() ? 0 : 4);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child) return 2;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("clone3-child-exit %d\n", code);
    free(held);
    const int ok = code == 0 && churn();
    printf("%s\n", ok ? "ok" : "failed");
    return !ok;
}

static int settls_child(void *arg) {
    (void)arg;
    syscall(SYS_exit, 7L);
    return 0;
}

static int run_settls(void) {
    static char stack[64 * 1024] __attribute__((aligned(16)));
    static uintptr_t tls[64];
    tls[0] = (uintptr_t)tls;  /* x86-64: the thread pointer points to itself */
    void *held = malloc(32);
    if (!held) return 2;
    pid_t child = clone(settls_child, stack + sizeof stack, SIGCHLD | CLONE_SETTLS, NULL, NULL, tls);
    if (child < 0) return 2;
    int status = 0;
    if (waitpid(child, &status, 0) != child) return 2;
    printf("settls-child-exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    free(held);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "vm") == 0) return run_vm();
    if (argc > 1 && strcmp(argv[1], "failures") == 0) return run_failures();
    if (argc > 1 && strcmp(argv[1], "settls") == 0) return run_settls();
    fprintf(stderr, "usage: e2e_clone vm|failures|settls\n");
    return 2;
}
