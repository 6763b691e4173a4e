/* libforkref.so: references _Fork (glibc 2.34 and later) as programs that probe for it do, a
 * weak reference, and calls it; linked -z now, so that the loader binds the reference when it
 * relocates this library at start-up, before the preloaded shim's own relocation. */
#define _GNU_SOURCE
#include <sys/types.h>

extern pid_t _Fork(void) __attribute__((weak));

int forkref_has_fork(void) { return _Fork != 0; }

pid_t forkref_fork(void) { return _Fork(); }
