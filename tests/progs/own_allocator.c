/* own_allocator.c - a program with an allocator of its own, as rustc links jemalloc in: its
 * malloc, calloc, realloc and free take the place of the shim's (the program comes first in
 * the lookup order), and its one-time start-up calls syscall(3) and clone(3) under a lock
 * its malloc takes (jemalloc reads /proc through syscall(SYS_open) so). The first call
 * comes from the dynamic linker's allocations at the shim's start-up. Prints "ok", exits 0;
 * with the argument "hold", then holds blocks the test configs match until stdin closes
 * (hold_common.h).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hold_common.h"

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;  /* not recursive */
static unsigned char *pool;
static size_t used, capacity = 64u << 20;
static char clone_stack[16384] __attribute__((aligned(16)));

static int child_fn(void *arg) {
    (void)arg;
    return 0;
}

static void start_up(void) {
    pthread_mutex_lock(&init_lock);
    if (!pool) {
        if (syscall(SYS_getpid) != getpid()) _exit(2);
        /* A child with memory of its own, as clone(3) makes one (the shim runs its fork handlers). */
        pid_t pid = clone(child_fn, clone_stack + sizeof clone_stack, SIGCHLD, NULL);
        if (pid < 0 || waitpid(pid, NULL, 0) != pid) _exit(3);
        void *m = mmap(NULL, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) _exit(4);
        pool = m;
    }
    pthread_mutex_unlock(&init_lock);
}

void *malloc(size_t n) {
    start_up();
    pthread_mutex_lock(&init_lock);
    size_t at = used;
    used += (n + 15) & ~(size_t)15;
    pthread_mutex_unlock(&init_lock);
    return used <= capacity ? pool + at : NULL;
}
void free(void *p) { (void)p; }
void *calloc(size_t a, size_t b) {
    void *p = malloc(a * b);  /* the pool's memory is fresh: zero */
    return p;
}
void *realloc(void *old, size_t n) {
    void *p = malloc(n);
    if (p && old) memcpy(p, old, n);  /* the pool outlives every block: reading past is safe */
    return p;
}

static void *volatile g_blocks[64];

int main(int argc, char **argv) {
    char *p = malloc(32);
    strcpy(p, "ok");
    puts(p);
    return argc > 1 && strcmp(argv[1], "hold") == 0 ? hold_blocks_until_eof(g_blocks, 64) : 0;
}
