/* fork_bare_lib - makes a child with _Fork through libforkref.so, a library loaded at start-up
 * that binds _Fork when it is relocated (-z now). Prints "has _Fork: yes|no" and, when it has,
 * "child-exit N"; exits 0 when all went well. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int forkref_has_fork(void);
pid_t forkref_fork(void);

int main(void) {
    char *keep = malloc(32);  /* a live block, matched under match-all */
    if (!keep) return 2;
    const int has = forkref_has_fork();
    printf("has _Fork: %s\n", has ? "yes" : "no");
    fflush(stdout);
    if (!has) return 0;
    pid_t child = forkref_fork();
    if (child == 0) _exit(7);
    if (child < 0) return 2;
    int status = 0;
    if (waitpid(child, &status, 0) != child) return 2;
    printf("child-exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    free(keep);
    return 0;
}
