/* musl_probe.c - a musl libc program (built with musl-gcc), for the tests that memlock-run
 * refuses it and that memlock-inspect names it.
 *
 * Usage: musl_probe FILE [wait]
 * Writes "started" to FILE (so a test can tell whether it ever ran); with "wait", prints
 * "ready" and waits until stdin reaches EOF. Exit status 0.
 */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 64;
    FILE *f = fopen(argv[1], "w");
    if (!f) return 1;
    fputs("started\n", f);
    fclose(f);
    if (argc > 2) {
        char buf[64];
        puts("ready");
        fflush(stdout);
        while (read(0, buf, sizeof buf) > 0) {
        }
    }
    return 0;
}
