// tools_static: linked with -static (see the Makefile), so no dynamic loader ever runs it and
// LD_PRELOAD cannot reach it. memlock-run must refuse it.
#include <stdio.h>

int main(void) {
    puts("static program ran");
    return 0;
}
