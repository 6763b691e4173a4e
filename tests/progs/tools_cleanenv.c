// tools_cleanenv PROGRAM: runs PROGRAM in a child with an empty environment, as a daemon that
// cleans its children's environment does (postfix's master), with the child's stdout read
// here. Once the child has printed "ready", prints "child=PID" and "ready", then waits for its
// stdin (shared with the child) to close and for the child to exit. Exit 0, or 1 on failure.
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int out[2];
    if (argc != 2 || pipe(out) != 0) return 1;
    const pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        char *const args[] = {argv[1], NULL}, *const env[] = {NULL};
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        execve(argv[1], args, env);
        _exit(127);
    }
    close(out[1]);
    char line[64] = "";
    const ssize_t n = read(out[0], line, sizeof line - 1);
    if (n <= 0 || strncmp(line, "ready\n", 6) != 0) return 1;
    printf("child=%d\nready\n", (int)child);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    int status = 0;
    return waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
