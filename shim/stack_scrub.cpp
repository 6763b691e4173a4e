// stack_scrub.cpp - see stack_scrub.hpp.
#include "stack_scrub.hpp"

#include "procmaps.hpp"
#include "runtime.hpp"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

namespace mlshim {
namespace {

// [lo, hi): the calling thread's stack as looked up when it started (lo == hi: none), and
// [alt_lo, alt_hi): its signal stack. paused, off: a CLONE_VM child that shares this
// thread-local state may run (scrub_stack_clone_begin).
struct ThreadStack {
    std::uintptr_t lo, hi;
    std::uintptr_t alt_lo, alt_hi;
    unsigned paused;
    bool off;
};
__thread ThreadStack t_stack __attribute__((tls_model("initial-exec"))) = {0, 0, 0, 0, 0, false};

constexpr std::uintptr_t kLine = 64;
// Left alone below the zeroing loop's own frame: its red zone (128 bytes on x86-64) and more.
constexpr std::uintptr_t kOwnFrame = 256;

struct Bounds {
    std::uintptr_t lo, hi;
};

// The calling thread's stack from glibc, without the guard (which glibc before 2.27 counts in,
// as asked for rather than in whole pages), and cut to the mapping that holds sp where glibc's
// bounds may hold more than that: the main thread's (reported down to what RLIMIT_STACK
// allows; a read below the mapping would grow it), and a stack without glibc's guard (the
// program's own, which may have an inaccessible page of its own at the bottom).
__attribute__((noinline, cold)) Bounds look_up(std::uintptr_t sp, bool main_thread) noexcept {
    BusyScope busy;  // what pthread_getattr_np allocates goes to the next allocator
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) return {0, 0};
    void *addr = nullptr;
    std::size_t size = 0, guard = 0;
    const int rc = pthread_attr_getstack(&attr, &addr, &size) | pthread_attr_getguardsize(&attr, &guard);
    pthread_attr_destroy(&attr);
    if (rc != 0 || size <= guard) return {0, 0};
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto base = reinterpret_cast<std::uintptr_t>(addr);
    std::uintptr_t lo = (base + guard + page - 1) & ~(page - 1), hi = base + size;
    if (main_thread || guard == 0) {
        std::uintptr_t map_lo = 0, map_hi = 0;
        each_mapping([&](std::uintptr_t start, std::uintptr_t end, const char *) {
            if (sp >= start && sp < end) {
                map_lo = start;
                map_hi = end;
            }
            return end <= sp;
        });
        lo = std::max(lo, map_lo);
        hi = std::min(hi, map_hi);
    }
    if (!(lo <= sp && sp < hi)) return {0, 0};
    return {lo, hi};
}

// Zeroes the lines of [lo, hi) that are not zero (pre: both multiples of kLine), 16 bytes a
// load: a window that is mostly zero already costs its reads. Never reaches its own frame.
__attribute__((no_sanitize("address", "undefined"), noinline)) void zero_dead_lines(std::uintptr_t lo,
                                                                                   std::uintptr_t hi) noexcept {
    using Chunk = std::uint64_t __attribute__((vector_size(16), may_alias));
    const auto own = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
    hi = std::min(hi, (own - kOwnFrame) & ~(kLine - 1));
    for (std::uintptr_t at = hi; at > lo; at -= kLine) {
        auto *line = reinterpret_cast<Chunk *>(at - kLine);
        const Chunk any = line[0] | line[1] | line[2] | line[3];
        if (any[0] | any[1])
            for (unsigned i = 0; i < kLine / sizeof(Chunk); ++i) line[i] = Chunk{};
    }
    __asm__ __volatile__("" : : : "memory");
}

}  // namespace

__attribute__((noinline)) void scrub_dead_stack(std::size_t window) noexcept {
    const auto sp = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
    const ThreadStack &stack = t_stack;
    if (!(stack.lo <= sp && sp < stack.hi) || (stack.alt_lo <= sp && sp < stack.alt_hi) || stack.paused || stack.off)
        return;
    const std::uintptr_t top = sp & ~(kLine - 1);
    const std::uintptr_t reach = std::min<std::uintptr_t>(top - stack.lo, window);
    zero_dead_lines((top - reach + kLine - 1) & ~(kLine - 1), top);
}

void scrub_stack_prepare(bool main_thread) noexcept {
    const int saved = errno;
    const Bounds b = look_up(reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)), main_thread);
    t_stack.lo = b.lo;
    t_stack.hi = b.hi;
    // A signal stack set before the shim knew (by a library initialised before it).
    stack_t cur;
    if (main_thread && sigaltstack(nullptr, &cur) == 0) note_signal_stack(&cur);
    errno = saved;
}

void note_signal_stack(const void *ss) noexcept {
    if (!ss) return;
    const auto &s = *static_cast<const stack_t *>(ss);
    ThreadStack &stack = t_stack;
    if (s.ss_flags & SS_DISABLE) {
        stack.alt_lo = stack.alt_hi = 0;
    } else {
        stack.alt_lo = reinterpret_cast<std::uintptr_t>(s.ss_sp);
        stack.alt_hi = stack.alt_lo + s.ss_size;
    }
}

bool scrub_stack_clone_begin(unsigned long flags) noexcept {
    if (!(flags & CLONE_VM) || (flags & CLONE_SETTLS)) return false;
    if (!(flags & CLONE_VFORK)) {
        t_stack.off = true;
        return false;
    }
    ++t_stack.paused;
    return true;
}

void scrub_stack_clone_end() noexcept { --t_stack.paused; }

}  // namespace mlshim
