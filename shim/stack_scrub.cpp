// stack_scrub.cpp - see stack_scrub.hpp.
#include "stack_scrub.hpp"

#include "procmaps.hpp"
#include "runtime.hpp"

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>

namespace mlshim {
namespace {

// [lo, hi): the calling thread's stack as looked up when it started (lo == hi: none), and
// [alt_lo, alt_hi): its signal stack.
struct ThreadStack {
    std::uintptr_t lo, hi;
    std::uintptr_t alt_lo, alt_hi;
};
__thread ThreadStack t_stack __attribute__((tls_model("initial-exec"))) = {0, 0, 0, 0};

// No thread scrubs while a CLONE_VM child may run on memory the scrub could reach (pauses),
// or ever again once one without CLONE_VFORK was made (off).
std::atomic<unsigned> g_paused{0};
std::atomic<bool> g_off{false};

constexpr std::uintptr_t kLine = 64;
// Left alone below the zeroing loop's own frame: its red zone (128 bytes on x86-64) and more.
constexpr std::uintptr_t kOwnFrame = 256;

// The calling thread's stack from glibc, without the guard (glibc before 2.27 counts it in),
// and for the main thread cut to the mapping that holds sp: glibc reports a main thread's
// stack down to what RLIMIT_STACK allows, and a read below the mapping would grow it.
__attribute__((noinline, cold)) ThreadStack look_up(std::uintptr_t sp, bool main_thread) noexcept {
    ThreadStack none{0, 0, t_stack.alt_lo, t_stack.alt_hi};
    BusyScope busy;  // what pthread_getattr_np allocates goes to the next allocator
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) return none;
    void *addr = nullptr;
    std::size_t size = 0, guard = 0;
    const int rc = pthread_attr_getstack(&attr, &addr, &size) | pthread_attr_getguardsize(&attr, &guard);
    pthread_attr_destroy(&attr);
    if (rc != 0 || size <= guard) return none;
    std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(addr) + guard, hi = lo - guard + size;
    if (main_thread) {
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
    if (!(lo <= sp && sp < hi)) return none;
    return {lo, hi, none.alt_lo, none.alt_hi};
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
    if (!(stack.lo <= sp && sp < stack.hi) || (stack.alt_lo <= sp && sp < stack.alt_hi)) return;
    if (g_off.load(std::memory_order_relaxed) || g_paused.load(std::memory_order_relaxed)) return;
    const std::uintptr_t top = sp & ~(kLine - 1);
    const std::uintptr_t reach = std::min<std::uintptr_t>(top - stack.lo, window);
    zero_dead_lines((top - reach + kLine - 1) & ~(kLine - 1), top);
}

void scrub_stack_prepare(bool main_thread) noexcept {
    const int saved = errno;
    t_stack = look_up(reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)), main_thread);
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
        g_off.store(true, std::memory_order_relaxed);
        return false;
    }
    g_paused.fetch_add(1, std::memory_order_relaxed);
    return true;
}

void scrub_stack_clone_end() noexcept { g_paused.fetch_sub(1, std::memory_order_relaxed); }

}  // namespace mlshim
