/* deepbind_early.c - hands blocks it allocated to libdeepfree.so, which its own library
 * libdeepearly.so opened with RTLD_DEEPBIND from a constructor, before the preloaded shim's
 * constructor ran. Prints "deepbind early ok" and exits 0 (or glibc aborts). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void early_deep_free(void *p);

int main(void) {
    static const size_t sizes[] = {24, 100, 5000, 200000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        char *p = malloc(sizes[i]);
        memset(p, 'k', sizes[i]);
        early_deep_free(p);
    }
    printf("deepbind early ok\n");
    return 0;
}
