/* fork_cost MIB FORKS
 * Commits about MIB MiB (a fraction: 0.0625 is 64 KiB) in live 1 KiB blocks (matched by the bench's size rule), then times
 * FORKS rounds of fork + the child's _exit + waitpid. Prints the mean CPU microseconds per
 * round, the parent's and the child's together (CPU time, not wall time: on a busy machine
 * the wait for the child to be scheduled would dominate), then the minor page faults per round
 * of the parent and of the child (each one costs a trap, and a copy when it is copy-on-write),
 * then the parent's and the child's CPU microseconds apart (the parent's holds fork's copy of
 * the mappings and page tables, the child's its fork handlers and the unmapping at its exit). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: fork_cost MIB FORKS\n");
        return 2;
    }
    long blocks = (long)(strtod(argv[1], NULL) * 1024), forks = strtol(argv[2], NULL, 10);
    for (long i = 0; i < blocks; ++i) {
        char *p = malloc(1024);
        if (!p) return 1;
        memset(p, 1, 1024);  /* live for the whole run */
    }
    struct timespec a, b;
    struct rusage self0, self1;
    getrusage(RUSAGE_SELF, &self0);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    for (long i = 0; i < forks; ++i) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0 || waitpid(pid, NULL, 0) != pid) return 1;
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    getrusage(RUSAGE_SELF, &self1);
    struct rusage ch;
    getrusage(RUSAGE_CHILDREN, &ch);
    double child = (ch.ru_utime.tv_sec + ch.ru_stime.tv_sec) * 1e6 + ch.ru_utime.tv_usec + ch.ru_stime.tv_usec;
    double parent = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
    printf("%.2f %.2f %.2f %.2f %.2f\n", (parent + child) / (double)forks,
           (double)(self1.ru_minflt - self0.ru_minflt) / forks, (double)ch.ru_minflt / forks, parent / (double)forks,
           child / (double)forks);
    return 0;
}
