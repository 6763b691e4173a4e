/* enosys_exec.c - runs a program as if the kernel were older: the listed system calls fail
 * with ENOSYS, as they do on a kernel that predates them.
 *
 * Usage: enosys_exec NR[,NR...] PROGRAM [ARGS...]
 *   NR: system call numbers of this architecture (x86-64: mlock2 325, memfd_create 319,
 *   memfd_secret 447). Sets PR_SET_NO_NEW_PRIVS, installs a seccomp filter that answers
 *   ENOSYS for those numbers (and allows everything else), checks that each now fails with
 *   ENOSYS, then execs PROGRAM (searched in PATH). The filter is inherited by PROGRAM and its
 *   children. Exit status 125 when the filter cannot be installed or is not in effect, 127
 *   when PROGRAM cannot be executed.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "enosys_exec: unknown architecture"
#endif

#define MAX_CALLS 16

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: enosys_exec NR[,NR...] PROGRAM [ARGS...]\n");
        return 125;
    }
    unsigned nrs[MAX_CALLS];
    unsigned n = 0;
    for (char *s = argv[1], *end; *s; s = *end ? end + 1 : end) {
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || (*end && *end != ',') || v > 4095 || n == MAX_CALLS) {
            fprintf(stderr, "enosys_exec: bad system call list: %s\n", argv[1]);
            return 125;
        }
        nrs[n++] = (unsigned)v;
    }

    /* arch check, then one compare per number, then allow. */
    struct sock_filter prog[3 + 2 * MAX_CALLS + 1];
    unsigned k = 0;
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_AUDIT_ARCH, 1, 0);
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (unsigned i = 0; i < n; ++i) {
        prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i], 0, 1);
        prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA));
    }
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog fprog = {(unsigned short)k, prog};

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) != 0) {
        fprintf(stderr, "enosys_exec: cannot install the seccomp filter: %s\n", strerror(errno));
        return 125;
    }
    for (unsigned i = 0; i < n; ++i) {
        errno = 0;
        long rc = syscall(nrs[i], 0, 0, 0);
        if (rc != -1 || errno != ENOSYS) {
            fprintf(stderr, "enosys_exec: system call %u still works (returned %ld, %s)\n", nrs[i], rc,
                    strerror(errno));
            return 125;
        }
    }
    execvp(argv[2], argv + 2);
    fprintf(stderr, "enosys_exec: %s: %s\n", argv[2], strerror(errno));
    return 127;
}
