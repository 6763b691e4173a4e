/* callers_forkdl.c - fork while another thread makes the caller index rebuild.
 *
 * One thread loops: dlopen + dlclose of libm (each dlclose makes the shim re-index the
 * loaded objects on the next caller-rule allocation), then an allocation from
 * secret_maker. The main thread forks 30 children; each drops one extra reference to libm
 * (dlclose of a handle opened before the thread started: no unloading, but the shim must
 * re-index), allocates from secret_maker once and exits. (A child of a threaded program may
 * not dlopen: glibc's loader state can be mid-change.) A child that inherited the index's
 * build lock held would block forever: each child has an alarm, and the program prints how
 * many were killed by it ("hung N"), then exits 0. The forks start once the thread has made
 * its first allocation, so that the parent has matched one however the threads are scheduled.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) void *secret_maker(size_t n) {
    void *p = malloc(n);
    __asm__ volatile("" ::: "memory");
    return p;
}

static void churn_once(void) {
    void *h = dlopen("libm.so.6", RTLD_NOW);
    if (h) dlclose(h);
    free(secret_maker(40));
}

static int churned;

static void *churn(void *arg) {
    (void)arg;
    for (;;) {
        churn_once();
        __atomic_store_n(&churned, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

int main(void) {
    void *extra = dlopen("libm.so.6", RTLD_NOW);
    pthread_t t;
    pthread_create(&t, NULL, churn, NULL);
    while (!__atomic_load_n(&churned, __ATOMIC_ACQUIRE)) sched_yield();
    int hung = 0;
    for (int i = 0; i < 30; ++i) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);  /* a hang guard: a healthy child exits at once */
            if (extra) dlclose(extra);
            free(secret_maker(40));
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) ++hung;
    }
    printf("hung %d\n", hung);
    return 0;
}
