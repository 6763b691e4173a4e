/* e2e_stackscrub.c - leaves a 32-byte key on the stack in frames that have returned, frees a
 * block a rule matches, and waits for the test to read its memory (policy.scrub_stack).
 *
 *   e2e_stackscrub main KIB      the main thread leaves the key about KIB KiB below main's
 *                                frame, then frees a 32-byte block from main
 *   e2e_stackscrub thread KIB    the same in a second thread, which then waits until main has
 *                                read stdin to its end
 *   e2e_stackscrub altstack      a SIGUSR1 handler on a signal stack that lies in main's frame
 *                                frees a 32-byte block while a function below main's frame
 *                                holds live data: exit 3 if that data changed
 *   e2e_stackscrub altstack-syscall   the same, the signal stack set with syscall(2)
 *   e2e_stackscrub clone-vm      a CLONE_VM child whose stack is a local array of its parent
 *                                frees a 32-byte block while the parent waits below that
 *                                array: exit 3 if the parent's live data changed
 *   e2e_stackscrub clone-vfork   the same with CLONE_VFORK
 *   e2e_stackscrub getattr       a second thread calls pthread_getattr_np, which frees a
 *                                32-byte block (its CPU set) under a lock of glibc's; exit 0
 *   e2e_stackscrub masked        8 threads, one after another, each blocking every signal
 *                                first, then allocating and freeing a 32-byte block; exit 0
 *                                (run with tests/libs/signal_in_free.c after the shim)
 *   e2e_stackscrub own-stack     a thread on a 32 KiB stack the program mapped, with an
 *                                inaccessible page of its own below, frees a 32-byte block
 *   e2e_stackscrub coroutine KIB as thread, but the thread's first 32-byte free is made on a
 *                                coroutine's stack (makecontext), before the key
 *
 * main, thread and coroutine print "seed HEX" (the test derives the key from it: no other copy of the
 * key is made), then "ready", and wait for EOF on stdin.
 */
#define _GNU_SOURCE
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
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "hold_common.h"

enum { kKey = 32 };

/* The key, written into this frame only. */
__attribute__((noinline)) static void leave_key(uint64_t seed) {
    volatile unsigned char key[kKey];
    uint64_t s = seed;
    for (int i = 0; i < kKey; ++i) key[i] = (unsigned char)(next_random(&s) >> 24);
    __asm__ __volatile__("" : : "r"(key) : "memory");
}

/* leave_key, called about kib KiB below the caller's frame. */
__attribute__((noinline)) static void leave_key_below(uint64_t seed, unsigned kib) {
    if (kib == 0) {
        leave_key(seed);
        return;
    }
    volatile char pad[1024];
    pad[0] = 1;
    leave_key_below(seed, kib - 1);
    __asm__ __volatile__("" : : "r"(pad) : "memory");
}

static void free_a_matched_block(void) {
    void *volatile p = malloc(kKey);
    free(p);
}

struct Job {
    uint64_t seed;
    unsigned kib;
    int coroutine;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int freed, done;

static ucontext_t caller, coroutine;

static void coroutine_main(void) {
    free_a_matched_block();
    swapcontext(&coroutine, &caller);
}

/* A first free on a stack that is not the thread's. */
static void free_on_a_coroutine(void) {
    static char stack[64 * 1024] __attribute__((aligned(16)));
    getcontext(&coroutine);
    coroutine.uc_stack.ss_sp = stack;
    coroutine.uc_stack.ss_size = sizeof stack;
    coroutine.uc_link = &caller;
    makecontext(&coroutine, coroutine_main, 0);
    swapcontext(&caller, &coroutine);
}

static void *thread_main(void *arg) {
    const struct Job *job = arg;
    if (job->coroutine) free_on_a_coroutine();
    leave_key_below(job->seed, job->kib);
    free_a_matched_block();
    pthread_mutex_lock(&lock);
    freed = 1;
    pthread_cond_broadcast(&changed);
    while (!done) pthread_cond_wait(&changed, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void handler(int sig) {
    (void)sig;
    free_a_matched_block();
}

/* Live data below main's frame while the handler runs above it, on the signal stack. */
__attribute__((noinline)) static int holds_live_data(void) {
    volatile uint64_t live[512];
    for (int i = 0; i < 512; ++i) live[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    raise(SIGUSR1);
    for (int i = 0; i < 512; ++i)
        if (live[i] != 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)) return 0;
    return 1;
}

static int altstack(int through_syscall) {
    char stack[64 * 1024] __attribute__((aligned(16)));
    stack_t ss = {.ss_sp = stack, .ss_size = sizeof stack, .ss_flags = 0};
    const int rc = through_syscall ? (int)syscall(SYS_sigaltstack, &ss, NULL) : sigaltstack(&ss, NULL);
    if (rc != 0) {
        perror("sigaltstack");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    if (!holds_live_data()) {
        fprintf(stderr, "live data below the signal stack was overwritten\n");
        return 3;
    }
    __asm__ __volatile__("" : : "r"(stack) : "memory");
    return 0;
}

static int clone_child(void *arg) {
    (void)arg;
    free_a_matched_block();
    return 0;
}

/* Live data in this frame, below the child's stack, while the child runs. */
__attribute__((noinline)) static int clone_on_own_stack(int flags) {
    char stack[64 * 1024] __attribute__((aligned(16)));
    volatile uint64_t live[64];
    for (int i = 0; i < 64; ++i) live[i] = 0x1111111111111111ull * (uint64_t)(i + 1);
    const int pid = clone(clone_child, stack + sizeof stack, flags | SIGCHLD, NULL);
    if (pid < 0) {
        perror("clone");
        return 2;
    }
    if (waitpid(pid, NULL, __WALL) != pid) return 2;
    for (int i = 0; i < 64; ++i)
        if (live[i] != 0x1111111111111111ull * (uint64_t)(i + 1)) {
            fprintf(stderr, "the parent's live data changed\n");
            return 3;
        }
    __asm__ __volatile__("" : : "r"(stack) : "memory");
    return 0;
}

/* A thread that no signal handler may interrupt while it allocates (as one that is cancelled
   with pthread_cancel, and whose handlers reach cancellation points, must be). */
static void *masked_main(void *arg) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    void *p = malloc(32);
    free(p);
    return arg;
}

static void *getattr_main(void *arg) {
    (void)arg;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) return (void *)1;
    pthread_attr_destroy(&attr);
    return NULL;
}

static void *free_and_return(void *arg) {
    free_a_matched_block();
    return arg;
}

static int on_own_stack(void) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), usable = 32 * 1024;
    char *base = mmap(NULL, usable + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (base == MAP_FAILED || mprotect(base, page, PROT_NONE) != 0) return 2;
    pthread_attr_t attr;
    pthread_t t;
    if (pthread_attr_init(&attr) != 0 || pthread_attr_setstack(&attr, base, usable + page) != 0 ||
        pthread_create(&t, &attr, free_and_return, NULL) != 0 || pthread_join(t, NULL) != 0)
        return 2;
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "altstack") == 0) return altstack(0);
    if (argc == 2 && strcmp(argv[1], "altstack-syscall") == 0) return altstack(1);
    if (argc == 2 && strcmp(argv[1], "clone-vm") == 0) return clone_on_own_stack(CLONE_VM);
    if (argc == 2 && strcmp(argv[1], "clone-vfork") == 0) return clone_on_own_stack(CLONE_VM | CLONE_VFORK);
    if (argc == 2 && strcmp(argv[1], "own-stack") == 0) return on_own_stack();
    if (argc == 2 && strcmp(argv[1], "masked") == 0) {
        for (int i = 0; i < 8; ++i) {
            pthread_t t;
            if (pthread_create(&t, NULL, masked_main, NULL) != 0 || pthread_join(t, NULL) != 0) return 2;
        }
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "getattr") == 0) {
        pthread_t t;
        void *rc = NULL;
        if (pthread_create(&t, NULL, getattr_main, NULL) != 0 || pthread_join(t, &rc) != 0) return 2;
        return rc ? 2 : 0;
    }
    if (argc != 3 || (strcmp(argv[1], "main") != 0 && strcmp(argv[1], "thread") != 0 &&
                      strcmp(argv[1], "coroutine") != 0)) {
        fprintf(stderr, "usage: e2e_stackscrub main|thread|coroutine KIB | altstack | altstack-syscall | clone-vm | "
                        "clone-vfork | getattr | masked | own-stack\n");
        return 2;
    }
    struct Job job = {(uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid() << 20 ^ 0x5851f42d4c957f2dull,
                      (unsigned)atoi(argv[2]), strcmp(argv[1], "coroutine") == 0};
    if (job.seed == 0) job.seed = 1;
    const int in_thread = strcmp(argv[1], "main") != 0;
    pthread_t t;
    if (in_thread) {
        if (pthread_create(&t, NULL, thread_main, &job) != 0) return 2;
        pthread_mutex_lock(&lock);
        while (!freed) pthread_cond_wait(&changed, &lock);
        pthread_mutex_unlock(&lock);
    } else {
        leave_key_below(job.seed, job.kib);
        free_a_matched_block();
    }
    printf("seed %016llx\n", (unsigned long long)job.seed);
    ready_until_eof();
    if (in_thread) {
        pthread_mutex_lock(&lock);
        done = 1;
        pthread_cond_broadcast(&changed);
        pthread_mutex_unlock(&lock);
        if (pthread_join(t, NULL) != 0) return 2;
    }
    return 0;
}
