// memlock-shim-copy SRC DST: copies the tree SRC into the directory DST (created if missing):
// directories, regular files (with their permission bits) and symbolic links, recursively.
// Existing files in DST are replaced. Built static, it is the only program in the layer image
// (which has no shell and no libc), so that a Kubernetes initContainer can copy the tree into
// a shared volume. Exit status: 0 done, 1 a copy failed (message on stderr), 64 usage.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(const char *path) {
    fprintf(stderr, "memlock-shim-copy: %s: %s\n", path, strerror(errno));
    return -1;
}

static int copy_file(const char *src, const char *dst, mode_t mode) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return fail(src);
    unlink(dst);
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 07777);
    if (out < 0) {
        close(in);
        return fail(dst);
    }
    char buf[65536];
    ssize_t n;
    int rc = 0;
    while ((n = read(in, buf, sizeof buf)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = fail(src);
            break;
        }
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                rc = fail(dst);
                break;
            }
            done += w;
        }
        if (rc) break;
    }
    // The umask must not narrow the modes: the shim and the tools must stay readable by all.
    if (rc == 0 && fchmod(out, mode & 07777) != 0) rc = fail(dst);
    if (close(out) != 0 && rc == 0) rc = fail(dst);
    close(in);
    return rc;
}

static int copy_tree(const char *src, const char *dst) {
    struct stat st;
    if (lstat(src, &st) != 0) return fail(src);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(src, target, sizeof target - 1);
        if (n < 0) return fail(src);
        target[n] = '\0';
        unlink(dst);
        return symlink(target, dst) == 0 ? 0 : fail(dst);
    }
    if (S_ISREG(st.st_mode)) return copy_file(src, dst, st.st_mode);
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "memlock-shim-copy: %s: not a file, directory or symbolic link\n", src);
        return -1;
    }
    if (mkdir(dst, 0755) != 0 && errno != EEXIST) return fail(dst);
    if (chmod(dst, st.st_mode & 07777) != 0) return fail(dst);
    DIR *d = opendir(src);
    if (!d) return fail(src);
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char s[PATH_MAX], t[PATH_MAX];
        if (snprintf(s, sizeof s, "%s/%s", src, e->d_name) >= (int)sizeof s ||
            snprintf(t, sizeof t, "%s/%s", dst, e->d_name) >= (int)sizeof t) {
            errno = ENAMETOOLONG;
            rc = fail(src);
            break;
        }
        rc = copy_tree(s, t);
    }
    closedir(d);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: memlock-shim-copy SRC DST\n"
                        "copies the tree SRC into DST (as `cp -a SRC/. DST/` would)\n");
        return 64;
    }
    if (copy_tree(argv[1], argv[2]) != 0) return 1;
    printf("memlock-shim-copy: %s copied to %s\n", argv[1], argv[2]);
    return 0;
}
