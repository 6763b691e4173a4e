/* signal_in_free.c - a library preloaded after the shim whose free raises SIGUSR1 on every
 * thread but the main one before passing the call on to the next free, as a signal may arrive
 * at any instruction of an allocator that holds its locks. Its SIGUSR1 handler counts the
 * times it runs inside that free; at exit it prints "handlers inside free on other threads: N"
 * to stderr. A program whose threads block every signal before they allocate gets 0: nothing
 * in a thread should enter the allocator before the program's start routine does. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static void (*next_free)(void *);
static __thread int in_free;
static int inside;

static void on_usr1(int sig) {
    (void)sig;
    if (in_free) __atomic_fetch_add(&inside, 1, __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void set_up(void) {
    next_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
}

__attribute__((destructor)) static void report(void) {
    fprintf(stderr, "handlers inside free on other threads: %d\n", __atomic_load_n(&inside, __ATOMIC_RELAXED));
}

void free(void *p) {
    if (!next_free) return;  /* a free made by dlsym before the constructor's lookup ends: dropped */
    const int other = syscall(SYS_gettid) != getpid();
    in_free = other;
    if (other) raise(SIGUSR1);
    next_free(p);
    in_free = 0;
}
