/* e2e_errno.c - prints "errno at main: N", the errno value main starts with (C makes it 0 at
 * program start-up), "dlerror at main: TEXT" (no dl* call has failed yet: "(none)"), then
 * "errno after free: N" for a free of a 32-byte and of a 1 MiB block with errno set to 4242
 * before each (POSIX: free leaves errno alone; glibc does since 2.33). Exits 0 when all are
 * as required, 1 otherwise.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int errno_after_free(size_t n) {
    char *p = malloc(n);
    if (!p) return -1;
    memset(p, 1, n);
    errno = 4242;
    free(p);
    return errno;
}

int main(void) {
    const int at_main = errno;
    const char *dl_error = dlerror();
    const int small = errno_after_free(32);
    const int large = errno_after_free(1 << 20);
    printf("errno at main: %d\n", at_main);
    printf("dlerror at main: %s\n", dl_error ? dl_error : "(none)");
    printf("errno after free: %d %d\n", small, large);
    return at_main == 0 && !dl_error && small == 4242 && large == 4242 ? 0 : 1;
}
