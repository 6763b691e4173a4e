// fatal.hpp - the shim's single fatal path and its logger.
//
// fatal() writes "memlock-shim: fatal: <what>[: <detail>][ <pointer>]\n" to stderr with
// write(2) and aborts. It uses no stdio and no heap, so it is safe inside the allocator.
// The texts passed to it are stable: tests assert them byte for byte.
#ifndef MEMLOCK_SHIM_FATAL_HPP
#define MEMLOCK_SHIM_FATAL_HPP

#include "config.hpp"

#include <pthread.h>
#include <signal.h>

namespace mlshim {

// For its lifetime the calling thread's cancellation is disabled (pthread_setcancelstate), so
// that a system call of the shim's that is a cancellation point (write, open, read, close,
// sigtimedwait) never acts on a cancellation pending on the program's thread: the shim's
// functions are noexcept, and the forced unwind would end the process in std::terminate (or,
// past them, end the thread with the shim's locks held). The state is restored as it was;
// re-enabling acts on no pending cancellation of the deferred type (the next cancellation
// point of the program's does).
class CancelOff {
public:
    CancelOff() noexcept { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &was_); }
    ~CancelOff() { pthread_setcancelstate(was_, nullptr); }
    CancelOff(const CancelOff &) = delete;
    CancelOff &operator=(const CancelOff &) = delete;

private:
    int was_ = PTHREAD_CANCEL_ENABLE;
};

// For its lifetime every signal is blocked on the calling thread (pthread_sigmask), so that no
// handler of the program's runs while the shim holds a lock or a half-made state the handler
// could need (one that allocates, forks or calls munlockall). The mask is restored as it was.
class SignalsBlocked {
public:
    SignalsBlocked() noexcept {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &was_);
    }
    ~SignalsBlocked() { pthread_sigmask(SIG_SETMASK, &was_, nullptr); }
    SignalsBlocked(const SignalsBlocked &) = delete;
    SignalsBlocked &operator=(const SignalsBlocked &) = delete;

private:
    sigset_t was_;
};

[[noreturn]] void fatal(const char *what, const char *detail = nullptr,
                        const void *pointer = nullptr) noexcept;

// Where log lines go and which are kept. Default: stderr, warn. A descriptor other than
// stderr is log.file's: it and stderr are remembered by device and inode, and a line goes to
// it only while it still names that file (a program that closes its descriptors and opens
// others may reuse the number); a line it does not take goes to stderr while that still names
// what it named at start-up, else nowhere. Lines are written with SIGXFSZ blocked: a file at
// RLIMIT_FSIZE does not take the line, and the process is not killed.
void log_configure(LogLevel level, int fd) noexcept;
bool log_enabled(LogLevel level) noexcept;
// The program's name in log lines: the basename the user invoked it by (argv[0], as in
// program_invocation_short_name), copied at start-up, before the program can rewrite argv to
// set its process title (nginx, redis). Not the executable's (a multi-call binary reached
// through a symbolic link, such as redis-server -> redis-check-rdb, goes by the link's name).
void log_set_program(const char *name) noexcept;
// Writes "memlock-shim: <level>: <formatted> (program <name>, pid <pid>)\n" with one write(2).
// Formats into a stack buffer (vsnprintf with %s/%d/%zu-style conversions only, which do not
// allocate). Control characters, DEL and backslashes of the formatted text and of the
// program's name are written as \xNN, so no string from a config or the environment can
// start a line of its own or hide in one.
void log_msg(LogLevel level, const char *fmt, ...) noexcept __attribute__((format(printf, 2, 3)));

// Writes buf[0, len) to fd with SIGXFSZ blocked and cancellation disabled (CancelOff): a
// write to a regular file at RLIMIT_FSIZE fails with EFBIG instead of killing the process
// (the signal's default action), and the signal the kernel raised for it is taken back
// (rt_sigtimedwait) before the mask is restored. True if all of it was written.
bool write_unkilled(int fd, const char *buf, std::size_t len) noexcept;

// Does RLIMIT_FSIZE (the soft limit, read now) let a file grow to `size` bytes? A write or
// ftruncate past it fails with EFBIG and raises SIGXFSZ, whose default action kills. (A
// getrlimit: for start-up only, not for code a sandboxed process runs.)
bool file_size_allows(std::uint64_t size) noexcept;

// Copies in[0, len) into out (at most cap bytes), escaping as log_msg does. Returns bytes written.
std::size_t escape_into(char *out, std::size_t cap, const char *in, std::size_t len) noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_FATAL_HPP
