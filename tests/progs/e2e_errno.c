/* e2e_errno.c - prints "errno at main: N", the errno value main starts with (C makes it 0 at
 * program start-up), then "errno after free: N" for a free of a 32-byte and of a 1 MiB block
 * with errno set to 4242 before each (POSIX: free leaves errno alone; glibc does since 2.33).
 * Exits 0 when all three are as required, 1 otherwise.
 */
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
    const int small = errno_after_free(32);
    const int large = errno_after_free(1 << 20);
    printf("errno at main: %d\n", at_main);
    printf("errno after free: %d %d\n", small, large);
    return at_main == 0 && small == 4242 && large == 4242 ? 0 : 1;
}
