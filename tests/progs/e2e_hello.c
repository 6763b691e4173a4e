/* e2e_hello.c - a small well-behaved program: allocates and frees a few blocks of the sizes
 * the end-to-end rules match (32, 1000) and some they do not, prints "hello N" where N is
 * the sum of checks that passed (always 3), exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    int ok = 0;
    size_t sizes[] = {32, 1000, 64};
    for (int i = 0; i < 3; ++i) {
        unsigned char *p = malloc(sizes[i]);
        if (!p) continue;
        memset(p, i + 1, sizes[i]);
        ok += p[sizes[i] - 1] == (unsigned char)(i + 1);
        free(p);
    }
    printf("hello %d\n", ok);
    return ok == 3 ? 0 : 1;
}
