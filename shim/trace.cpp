#include "trace.hpp"

#include <dlfcn.h>
#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "fatal.hpp"
#include "runtime.hpp"

namespace mlshim {

namespace {

std::atomic<int> g_fd{-1};
int g_pid = 0;
NextAllocator g_real;  // the allocator the wrappers forward to
using BacktraceFn = int (*)(void **, int);
BacktraceFn g_backtrace = nullptr;
// Set while a wrapper records: the unwinder's own allocations pass through unrecorded.
__thread bool t_recording __attribute__((tls_model("initial-exec"))) = false;

void send_record(TraceRecord &r) noexcept {
    int fd = g_fd.load(std::memory_order_relaxed);
    if (fd < 0) return;
    CancelOff no_cancel;  // send is a cancellation point, and this runs inside malloc and free
    r.pid = g_pid;
    const std::size_t len = kTraceHeaderBytes + r.nframes * sizeof r.frames[0];
    ssize_t rc;
    do rc = ::send(fd, &r, len, MSG_NOSIGNAL);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) g_fd.store(-1, std::memory_order_relaxed);  // the reader is gone, or the fd was closed
}

void record_alloc(void *p, std::size_t n) noexcept {
    if (!p || t_busy || t_recording || g_fd.load(std::memory_order_relaxed) < 0) return;
    int saved = errno;
    t_recording = true;
    TraceRecord r;
    r.kind = static_cast<std::uint32_t>(TraceKind::alloc);
    r.parent = 0;
    r.addr = reinterpret_cast<std::uintptr_t>(p);
    r.size = n;
    void *buf[kTraceFrames];
    int got = g_backtrace ? g_backtrace(buf, static_cast<int>(kTraceFrames)) : 0;
    r.nframes = got > 0 ? static_cast<std::uint32_t>(got) : 0;
    for (std::uint32_t i = 0; i < r.nframes; ++i) r.frames[i] = reinterpret_cast<std::uintptr_t>(buf[i]);
    send_record(r);
    t_recording = false;
    errno = saved;
}

void record_free(void *p) noexcept {
    if (!p || g_fd.load(std::memory_order_relaxed) < 0) return;
    int saved = errno;
    TraceRecord r;
    r.kind = static_cast<std::uint32_t>(TraceKind::free);
    r.parent = 0;
    r.nframes = 0;
    r.addr = reinterpret_cast<std::uintptr_t>(p);
    r.size = 0;
    send_record(r);
    errno = saved;
}

// start and fork: the image's fingerprint (trace.hpp).
void send_event(TraceKind kind, int parent) noexcept {
    TraceRecord r;
    r.kind = static_cast<std::uint32_t>(kind);
    r.parent = parent;
    r.nframes = 0;
    r.addr = ::getauxval(AT_RANDOM);
    r.size = 0;
    if (r.addr) std::memcpy(&r.size, reinterpret_cast<const void *>(r.addr), sizeof r.size);
    send_record(r);
}

// ---- the recording wrappers that replace g_next's members ----------------------------------

void *t_malloc(std::size_t n) noexcept {
    void *p = g_real.malloc(n);
    record_alloc(p, n);
    return p;
}
void t_free(void *p) noexcept {
    record_free(p);
    g_real.free(p);
}
void *t_calloc(std::size_t a, std::size_t b) noexcept {
    void *p = g_real.calloc(a, b);
    record_alloc(p, a * b);  // non-null only when a * b did not overflow
    return p;
}
void *t_realloc(void *p, std::size_t n) noexcept {
    void *q = g_real.realloc(p, n);
    if (q || n == 0) record_free(p);
    record_alloc(q, n);
    return q;
}
void *t_reallocarray(void *p, std::size_t a, std::size_t b) noexcept {
    void *q = g_real.reallocarray(p, a, b);
    if (q) record_free(p);
    record_alloc(q, a * b);
    return q;
}
int t_posix_memalign(void **m, std::size_t a, std::size_t n) noexcept {
    int rc = g_real.posix_memalign(m, a, n);
    if (rc == 0) record_alloc(*m, n);
    return rc;
}
void *t_aligned_alloc(std::size_t a, std::size_t n) noexcept {
    void *p = g_real.aligned_alloc(a, n);
    record_alloc(p, n);
    return p;
}
void *t_memalign(std::size_t a, std::size_t n) noexcept {
    void *p = g_real.memalign(a, n);
    record_alloc(p, n);
    return p;
}
void *t_valloc(std::size_t n) noexcept {
    void *p = g_real.valloc(n);
    record_alloc(p, n);
    return p;
}
void *t_pvalloc(std::size_t n) noexcept {
    void *p = g_real.pvalloc(n);
    record_alloc(p, n);
    return p;
}

void trace_child() {
    int parent = g_pid;
    g_pid = static_cast<int>(::getpid());
    send_event(TraceKind::fork, parent);
}

}  // namespace

bool trace_init() noexcept {
    const char *v = std::getenv(kTraceEnv);
    if (!v || !*v) return false;
    BusyScope busy;
    char *end = nullptr;
    long fd = std::strtol(v, &end, 10);
    struct stat st;
    if (*end || fd < 0 || fd > 1 << 20 || ::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) {
        log_msg(LogLevel::warn, "%s=%s is not an open socket: not tracing", kTraceEnv, v);
        return false;
    }
    // The same unwinder as the caller rules, so that recorded stacks and matched stacks agree.
    if (void *lib = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL))
        g_backtrace = reinterpret_cast<BacktraceFn>(dlsym(lib, "unw_backtrace"));
    if (!g_backtrace) {
        log_msg(LogLevel::warn, "tracing without libunwind.so.8 (Debian package libunwind8): glibc's backtrace");
        g_backtrace = ::backtrace;
    }
    void *warm[kTraceFrames];
    g_backtrace(warm, static_cast<int>(kTraceFrames));  // the first call allocates its caches
    g_pid = static_cast<int>(::getpid());
    g_fd.store(static_cast<int>(fd));
    send_event(TraceKind::start, 0);
    g_real = g_next;
    g_next = NextAllocator{t_malloc,        t_free,         t_calloc,   t_realloc, t_reallocarray,
                           t_posix_memalign, t_aligned_alloc, t_memalign, t_valloc,  t_pvalloc,
                           g_real.malloc_usable_size};
    pthread_atfork(nullptr, nullptr, trace_child);
    return true;
}

void trace_exit() noexcept {
    if (g_fd.load() < 0) return;
    send_event(TraceKind::exit, 0);
    if (g_fd.load() >= 0) ::raise(SIGSTOP);
}

}  // namespace mlshim
