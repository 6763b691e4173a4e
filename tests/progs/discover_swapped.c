/* discover_swapped - a file mapping whose path, read by another process, names another file,
 * for memlock-discover --pid (tests/shim/test_discover.cpp).
 *
 *   discover_swapped FILE KEPT HEX1 HEX2 [HIDE]
 *
 * With HIDE (a directory FILE lies under), the program first enters a mount namespace of its
 * own and mounts an empty tmpfs on HIDE: /proc/PID/maps then shows FILE's path as this
 * process sees it, and another process's FILE (what the caller put under HIDE: a symlink, a
 * FIFO, another file) is a different thing. It creates FILE (and its parent directory) with a
 * marker, maps its first page private and writable and decodes HEX1 into it; maps KEPT (an
 * ELF file) the same way and decodes HEX2 into it. Without HIDE, FILE's own name can do it:
 * the kernel shows a newline in it as the four characters "\012", which can name another file.
 * Prints "ready" and waits to be killed; exits 3 when it cannot.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int nibble(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* Maps path's first page private and writable and decodes hex into its middle; with marker,
 * creates the file first, holding marker. */
static int map_with(const char *path, const char *hex, const char *marker) {
    const long page = sysconf(_SC_PAGESIZE);
    const int fd = open(path, marker ? O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC : O_RDONLY | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (marker && (write(fd, marker, strlen(marker)) != (ssize_t)strlen(marker) || ftruncate(fd, page) != 0)) return -1;
    volatile unsigned char *p = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return -1;
    p += page / 2;
    for (; hex[0] && hex[1]; hex += 2) *p++ = (unsigned char)(nibble(hex[0]) << 4 | nibble(hex[1]));
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: discover_swapped FILE KEPT HEX1 HEX2 [HIDE]\n");
        return 2;
    }
    const char *file = argv[1];
    if (argc == 6 && (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
                      mount("discover_swapped", argv[5], "tmpfs", 0, "size=64k") != 0)) {
        perror("discover_swapped: a tmpfs of its own");
        return 3;
    }
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", file);
    char *slash = strrchr(parent, '/');
    if (slash) *slash = '\0';
    mkdir(parent, 0700);
    if (map_with(file, argv[3], "discover_swapped: the mapped file\n") != 0 || map_with(argv[2], argv[4], NULL) != 0) {
        perror("discover_swapped: map");
        return 3;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
