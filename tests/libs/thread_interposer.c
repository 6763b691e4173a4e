/* thread_interposer.c - preloaded before the shim, intercepts pthread_create as a sanitizer
 * runtime does: its threads start in a routine of its own that sets the thread up before the
 * program's start routine runs, and its realloc ends the process when called in a thread that
 * is not set up yet (a sanitizer's allocator faults there). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static __thread int set_up;  /* the main thread needs none */

struct start {
    void *(*fn)(void *);
    void *arg;
};

static void *started(void *p) {
    const struct start s = *(struct start *)p;
    free(p);
    set_up = 1;
    return s.fn(s.arg);
}

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
    int (*next)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
        (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(RTLD_NEXT, "pthread_create");
    struct start *s = malloc(sizeof *s);
    if (!next || !s) return 11; /* EAGAIN */
    s->fn = fn;
    s->arg = arg;
    const int rc = next(thread, attr, started, s);
    if (rc) free(s);
    return rc;
}

void *realloc(void *p, size_t n) {
    static void *(*next)(void *, size_t);
    if (!set_up && gettid() != getpid()) {
        static const char msg[] = "thread_interposer: realloc in a thread it has not set up\n";
        if (write(2, msg, sizeof msg - 1) < 0) _exit(98);
        _exit(99);
    }
    if (!next) next = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    return next(p, n);
}
