// tools_pid: prints its pid and the shim library it has loaded (or "none"), then exits 0.
// memlock-run tests: the pid must be the one memlock-run started as; the shim path shows
// which library the wrapper found.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    char line[4096], shim[4096] = "none";
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (path && strstr(path, "libmemlock_shim.so")) {
            path[strcspn(path, "\n")] = '\0';
            snprintf(shim, sizeof shim, "%s", path);
            break;
        }
    }
    if (maps) fclose(maps);
    printf("pid=%d\nshim=%s\n", (int)getpid(), shim);
    return 0;
}
