// security_sandbox: forks a child that installs a seccomp filter as sshd's preauth child does
// (after start-up), one that kills the process on any open, unlink or rename, then allocates
// (32 bytes and 1 KiB: blocks the test configs match), frees, forks a grandchild inside the
// sandbox that does the same (the shim's fork handler creates nothing: memfd_create is among
// the calls the filter kills), and exits through exit(3), so that every destructor and atexit
// handler runs. Prints "child exited N" or "child killed by signal N" and exits 0 only if
// the child exited 0; the child exits 12 when the grandchild did not exit 0.
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KILL_ON(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)

static int sandbox(void) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        KILL_ON(SYS_open), KILL_ON(SYS_openat), KILL_ON(SYS_unlink), KILL_ON(SYS_unlinkat),
        KILL_ON(SYS_rename), KILL_ON(SYS_renameat), KILL_ON(SYS_renameat2), KILL_ON(SYS_memfd_create),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

static void allocate(void) {
    for (int i = 0; i < 64; ++i) {
        char *p = malloc(i % 2 ? 32 : 1024);
        if (!p) _exit(11);
        memset(p, 0x5a, 32);
        free(p);
    }
}

int main(void) {
    void *warm = malloc(32);
    free(warm);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        if (!sandbox()) _exit(10);
        allocate();
        pid_t grandchild = fork();
        if (grandchild < 0) _exit(13);
        if (grandchild == 0) {
            allocate();
            exit(0);
        }
        int gst = 0;
        if (waitpid(grandchild, &gst, 0) != grandchild || !WIFEXITED(gst) || WEXITSTATUS(gst) != 0) _exit(12);
        exit(0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid) return 2;
    if (WIFEXITED(st)) printf("child exited %d\n", WEXITSTATUS(st));
    else printf("child killed by signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
