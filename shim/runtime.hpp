// runtime.hpp - the shim's state and the slow paths behind the interposed functions.
//
// shim/hooks.cpp exports the allocation functions and only forwards: a size outside the
// match window goes straight to the next allocator (g_next); everything else comes here.
// This file owns start-up (config, arena, fork and exit handling), the bootstrap pool that
// serves allocations made while the next allocator is being looked up, and the libc
// semantics of the matched paths.
#ifndef MEMLOCK_SHIM_RUNTIME_HPP
#define MEMLOCK_SHIM_RUNTIME_HPP

#include <signal.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "arena.hpp"
#include "config.hpp"
#include "rules.hpp"

namespace mlshim {

// The allocation functions that come after the shim in the lookup order (glibc's, or a
// preloaded allocator's). Until they are looked up, each member points to a bootstrap
// function that looks them up first. noexcept, as glibc declares them: a pass-through call
// is then a jump, with no terminate region of its own.
struct NextAllocator {
    void *(*malloc)(std::size_t) noexcept;
    void (*free)(void *) noexcept;
    void *(*calloc)(std::size_t, std::size_t) noexcept;
    void *(*realloc)(void *, std::size_t) noexcept;
    void *(*reallocarray)(void *, std::size_t, std::size_t) noexcept;
    int (*posix_memalign)(void **, std::size_t, std::size_t) noexcept;
    void *(*aligned_alloc)(std::size_t, std::size_t) noexcept;
    void *(*memalign)(std::size_t, std::size_t) noexcept;
    void *(*valloc)(std::size_t) noexcept;
    void *(*pvalloc)(std::size_t) noexcept;
    std::size_t (*malloc_usable_size)(void *) noexcept;
};
extern NextAllocator g_next;

// Sizes n with n - lo <= span may match a rule; all others pass through untouched.
struct MatchWindow {
    std::size_t lo;
    std::size_t span;
};
extern MatchWindow g_window;
inline bool may_match(std::size_t n) noexcept { return n - g_window.lo <= g_window.span; }

extern SecureArena g_arena;

// Is p a block of the bootstrap pool?
bool in_bootstrap(const void *p) noexcept;

// The program's executable (started as "ld.so PROGRAM" too: not the loader); empty when it
// cannot be told.
std::string self_exe();

// The next definition of `name` (looked up as the allocation functions are: a versioned
// definition of libc's version counts), or nullptr; no dlerror() is left pending.
void *next_function(const char *name) noexcept;

// What mallinfo adds for the arena: bytes committed, and bytes of live matched blocks
// (zero without an arena or its counters).
struct ArenaInfo {
    std::uint64_t committed, live;
};
ArenaInfo arena_info() noexcept;

void runtime_init() noexcept;   // from the library constructor
void runtime_fini() noexcept;   // from the library destructor

// The rules in force (rules.hpp), in config order: the first that holds picks the pool.
constexpr unsigned kMaxRules = kConfigMaxRules;
extern SizeRule g_rules[kMaxRules];
extern unsigned g_nrules;

// Set while the shim itself runs (start-up, logging): allocations made meanwhile, by
// anything the shim calls, pass through to the next allocator and never re-enter the arena.
// __thread, not thread_local: a constant-initialised flag needs no TLS wrapper call.
extern __thread bool t_busy __attribute__((tls_model("initial-exec")));

// Sets t_busy for its lifetime.
class BusyScope {
public:
    BusyScope() noexcept : was_(t_busy) { t_busy = true; }
    ~BusyScope() { t_busy = was_; }
    BusyScope(const BusyScope &) = delete;
    BusyScope &operator=(const BusyScope &) = delete;

private:
    bool was_;
};

// match() from rule `from` on, which has a caller condition: walks the callers
// (callers.cpp), and counts each caller rule it checks (SecureArena::count_consulted).
// Called directly by the interposed functions, so that the stack it unwinds holds as few of
// the shim's own frames as possible.
int match_callers(std::size_t n, const void *ra, unsigned from) noexcept;

// The first rule whose size condition holds for the first kSizeTable sizes of the window
// (n - g_window.lo < kSizeTable): its index, with kSizeRuleCaller added where it has a caller
// condition, or kNoSizeRule. Filled at start-up, before the window opens.
constexpr std::size_t kSizeTable = 1024;
constexpr std::uint16_t kSizeRuleCaller = 0x4000;
constexpr std::uint16_t kNoSizeRule = 0xffff;
static_assert(kMaxRules < kSizeRuleCaller, "a rule index fits below the caller flag");
struct SizeRuleTable {
    std::uint16_t rule[kSizeTable];
    constexpr SizeRuleTable() : rule{} {
        for (std::uint16_t &r : rule) r = kNoSizeRule;
    }
};
extern SizeRuleTable g_size_rule;

// Fills g_size_rule from g_rules for the window [lo, hi], then opens the window: from then on
// those sizes may match (runtime_init, last; tests that set g_rules themselves).
void open_window(std::size_t lo, std::size_t hi) noexcept;

// The first rule whose size condition holds for n, in g_size_rule's terms: its index, with
// kSizeRuleCaller added where it has a caller condition, or kNoSizeRule.
inline unsigned first_size_rule(std::size_t n) noexcept {
    for (unsigned i = 0; i < g_nrules; ++i)
        if (n >= g_rules[i].min && n <= g_rules[i].max) return g_rules[i].caller < 0 ? i : i + kSizeRuleCaller;
    return kNoSizeRule;
}

// first_size_rule(n) (pre: may_match(n)), from g_size_rule where it holds n, or kNoSizeRule
// while the shim itself is allocating.
inline unsigned match_size(std::size_t n) noexcept {
    if (t_busy) return kNoSizeRule;
    const std::size_t k = n - g_window.lo;
    if (__builtin_expect(k < kSizeTable, 1)) return g_size_rule.rule[k];
    return first_size_rule(n);
}

// The rule (index into g_rules) a candidate size matches, or -1: pass it through (no rule
// matches, or the shim itself is allocating). `ra` is the interposed function's return
// address: the allocation's depth-1 caller. Size conditions first; callers only for sizes
// that fit. pre: may_match(n).
inline int match(std::size_t n, const void *ra) noexcept {
    const unsigned first = match_size(n);
    if (first < kSizeRuleCaller) return static_cast<int>(first);
    return first == kNoSizeRule ? -1 : match_callers(n, ra, first - kSizeRuleCaller);
}
// A block from the arena, in the rule's pool and counted for it. pre: rule from match(),
// align a power of two. nullptr with errno = ENOMEM when the arena or the lock policy
// refuses. zero: the block is zero-filled.
void *arena_alloc(int rule, std::size_t n, std::size_t align, bool zero) noexcept;
// arena_alloc(rule, n, 16, false), with the thread cache's common case first.
void *arena_malloc(int rule, std::size_t n) noexcept;
// realloc's contract for any p (arena, bootstrap or the next allocator's) and any n.
void *slow_realloc(void *p, std::size_t n, const void *ra) noexcept;
// realloc's contract for an arena block p and n > 0; the block it returns is aligned to
// `align`, and with zero its bytes past the old block's are zero. p not a live block: fatal,
// with the message `what` ("realloc(): invalid pointer").
void *realloc_owned(void *p, std::size_t n, std::size_t align, bool zero, const char *what) noexcept;
// Grows arena block p (`have` bytes usable) in place to at least n bytes, as
// SecureArena::grow_in_place does; with zero, the bytes it gains are zero. pre: owns(p), p live.
bool grow_owned_in_place(void *p, std::size_t have, std::size_t n, bool zero) noexcept;

// jemalloc's own interface (mallocx and the functions that go with it), as the objects after
// the shim define it: each member is null where none does (jemalloc is not loaded).
struct NextJemalloc {
    void *(*mallocx)(std::size_t, int) = nullptr;
    void *(*rallocx)(void *, std::size_t, int) = nullptr;
    std::size_t (*xallocx)(void *, std::size_t, std::size_t, int) = nullptr;
    std::size_t (*sallocx)(const void *, int) = nullptr;
    void (*dallocx)(void *, int) = nullptr;
    void (*sdallocx)(void *, std::size_t, int) = nullptr;
    std::size_t (*nallocx)(std::size_t, int) = nullptr;
    int (*mallctl)(const char *, void *, std::size_t *, void *, std::size_t) = nullptr;
    int (*mallctlnametomib)(const char *, std::size_t *, std::size_t *) = nullptr;
    int (*mallctlbymib)(const std::size_t *, std::size_t, void *, std::size_t *, void *, std::size_t) = nullptr;
};
NextJemalloc next_jemalloc() noexcept;
// dlclose, through to the next definition; caller rules re-index after it.
int shim_dlclose(void *handle) noexcept;
// The next definition of dlopen (glibc's), looked up on first use.
using DlopenFn = void *(*)(const char *, int);
DlopenFn next_dlopen() noexcept;
// dlopen's mode for `file` when it asks for RTLD_DEEPBIND: without it while rules are in force
// (said once per process), as it was otherwise.
int without_deepbind(const char *file, int mode) noexcept;
// syscall(3), through to the next definition; a clone that makes a fork child runs the
// shim's fork handlers around it, as fork(2) would.
long shim_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) noexcept;
// sigaltstack(2) through libc, noting the calling thread's signal stack (stack_scrub.hpp).
int shim_sigaltstack(const stack_t *ss, stack_t *old) noexcept;
// munlock(2), madvise(2) and munlockall(2) as the program calls them: a page of an arena pool
// keeps what its pool's rules ask (libsodium's sodium_munlock, for one, advises its block
// MADV_DODUMP and unlocks it). munlock leaves the pages of pools that lock locked and
// madvise(MADV_DODUMP) leaves those of pools that exclude them from core dumps excluded;
// each still reaches the rest of the range. munlockall locks the arena again at once.
// shim_lockall: mlockall(2) (number SYS_mlockall) or munlockall(2), seen by the arena's
// relock (backing_relock).
int shim_munlock(const void *addr, std::size_t len) noexcept;
int shim_madvise(void *addr, std::size_t len, int advice) noexcept;
int shim_lockall(long number, int flags) noexcept;
int shim_mlock(long number, const void *addr, std::size_t len, unsigned flags) noexcept;
// clone(3), through to the next definition; one that makes a process with memory of its own
// (no CLONE_VM) runs the shim's fork handlers around it, the child's before fn(arg).
// ptid, tls, ctid: clone's optional arguments, passed on as they are.
int shim_clone(int (*fn)(void *), void *stack, int flags, void *arg, void *ptid, void *tls, void *ctid) noexcept;
// pthread_create(3), through to the next definition; under policy.scrub_stack the new thread
// looks its stack up (scrub_stack_prepare) before it calls fn(arg).
int shim_pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) noexcept;
// _Fork(), through to the next definition; its child locks its arena again and counts in a
// page of its own, with no fork handler run. fork() where libc has no _Fork.
pid_t shim_fork_bare() noexcept;
// free and malloc_usable_size for blocks that are not in the arena.
void free_other(void *p) noexcept;
std::size_t usable_other(void *p) noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_RUNTIME_HPP
