// The entry point of the sanitizer test binaries: Criterion's own, except that the runner
// process ends with _exit, so LeakSanitizer checks only the test workers. Criterion's runner
// (never the code under test: the tests run in the workers, which start in Criterion's
// worker entry, not here) now and then leaves a 48-byte block of its own at exit, and a
// leak report there fails `make test` with every test passed.
#include <criterion/criterion.h>
#include <unistd.h>

#include <cstdio>

int main(int argc, char *argv[]) {
    criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (criterion_handle_args(argc, argv, true)) result = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    std::fflush(nullptr);
    _exit(result);
}
