/* preinit_runtime.c - behaves as a sanitizer runtime (libasan, libtsan) does at start-up, for
 * tests/progs/e2e_layout.c built as e2e_layout_preinit.
 *
 * It defines strcmp, pthread_mutex_lock, pthread_mutex_unlock and dlopen, each forwarding to
 * the next definition through a pointer that preinit_runtime_init sets, called from the
 * executable's preinit_array: before any library's initialiser, libc's included. Before
 * setting them it calls dlsym for a name nothing defines, so that glibc allocates its error
 * message (the first malloc of the process, as a sanitizer's lookup of a function the libc
 * lacks makes it). A library before this one that calls one of these functions then calls a
 * null pointer.
 */
#include <dlfcn.h>
#include <pthread.h>

static int (*real_strcmp)(const char *, const char *);
static int (*real_lock)(pthread_mutex_t *);
static int (*real_unlock)(pthread_mutex_t *);
static void *(*real_dlopen)(const char *, int);

int strcmp(const char *a, const char *b) { return real_strcmp(a, b); }
int pthread_mutex_lock(pthread_mutex_t *m) { return real_lock(m); }
int pthread_mutex_unlock(pthread_mutex_t *m) { return real_unlock(m); }
void *dlopen(const char *file, int mode) { return real_dlopen(file, mode); }

void preinit_runtime_init(void) {
    dlsym(RTLD_NEXT, "preinit_runtime_no_such_function");
    real_strcmp = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "strcmp");
    real_lock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_lock");
    real_unlock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_unlock");
    real_dlopen = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
}
