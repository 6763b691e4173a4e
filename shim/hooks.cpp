// hooks.cpp - the functions libmemlock_shim.so exports (see exports.map).
//
// Each hook checks the libc contract's arguments, sends sizes outside the match window
// straight to the next allocator, and hands the rest to the runtime. Blocks are routed by
// address: arena blocks to the arena, everything else to where it came from.
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "memlock.h"
#include "runtime.hpp"

using namespace mlshim;

#define SHIM_EXPORT extern "C" __attribute__((visibility("default")))
// The allocation's depth-1 caller, for caller rules.
#define CALLER __builtin_return_address(0)

namespace {

constexpr std::size_t kMinAlign = 16;  // glibc's MALLOC_ALIGNMENT on x86_64

bool is_pow2(std::size_t a) { return a && !(a & (a - 1)); }

// malloc of a size that may match, for the depth-1 caller ra (malloc itself, realloc(NULL,
// n), small-alignment memalign). pre: may_match(n). The callers test the window first, so
// that the fast path does not compute ra.
inline void *malloc_matching(std::size_t n, const void *ra) {
    int rule = match(n, ra);
    return rule < 0 ? g_next.malloc(n) : arena_malloc(rule, n);
}

// The alignment glibc's memalign gives for `align`: malloc's up to 16, else the power of two
// at or above it. pre: align <= SIZE_MAX / 2 + 1
std::size_t memalign_alignment(std::size_t align) {
    if (align <= kMinAlign) return kMinAlign;
    return is_pow2(align) ? align : std::size_t{1} << (64 - __builtin_clzll(align));
}

// glibc's memalign: alignments up to 16 are malloc's; others round up to a power of two. An
// unmatched call reaches the next allocator with the caller's alignment, unrounded.
void *memalign_impl(std::size_t align, std::size_t n, void *(*next)(std::size_t, std::size_t), const void *ra) {
    if (!may_match(n)) return next(align, n);
    if (align <= kMinAlign) return malloc_matching(n, ra);
    if (align > SIZE_MAX / 2 + 1) {
        errno = EINVAL;
        return nullptr;
    }
    int rule = match(n, ra);
    return rule < 0 ? next(align, n) : arena_alloc(rule, n, memalign_alignment(align), false);
}

// aligned_alloc with an alignment that is not a power of two (0 included), of a size that may
// match: C17 makes it an error, which glibc 2.38 and later report (EINVAL), while earlier
// glibc serves it as memalign does. The next allocator's answer decides; where it serves the
// block and a rule matches, the arena serves it instead, as memalign's.
__attribute__((noinline, cold)) void *aligned_alloc_unusual(std::size_t align, std::size_t n, const void *ra) {
    const int saved = errno;
    void *p = g_next.aligned_alloc(align, n);
    if (!p) return nullptr;  // errno from the next allocator
    if (align > SIZE_MAX / 2 + 1) return p;  // no power of two above it: the next allocator's block
    int rule = match(n, ra);
    if (rule < 0) return p;
    g_next.free(p);  // untouched: nothing to wipe
    void *q = arena_alloc(rule, n, memalign_alignment(align), false);
    if (q) errno = saved;
    return q;
}

}  // namespace

__attribute__((constructor(101))) static void shim_init() { runtime_init(); }
__attribute__((destructor(101))) static void shim_fini() { runtime_fini(); }

namespace {

// malloc of a size whose first rule (g_size_rule's entry `first`) has a caller condition.
__attribute__((noinline)) void *malloc_callers(std::size_t n, const void *ra, unsigned first) {
    int rule = match_callers(n, ra, first - kSizeRuleCaller);
    return rule < 0 ? g_next.malloc(n) : arena_malloc(rule, n);
}

}  // namespace

// malloc_matching() spelled out, so that each way out is a tail call: the matched path saves
// no register, and the caller's address is read only where a caller rule asks for it.
SHIM_EXPORT MLSHIM_HOT_ENTRY void *malloc(std::size_t n) {
    if (__builtin_expect(!may_match(n), 1)) return g_next.malloc(n);
    const unsigned first = match_size(n);
    if (__builtin_expect(first < kSizeRuleCaller, 1)) return arena_malloc(static_cast<int>(first), n);
    if (first == kNoSizeRule) return g_next.malloc(n);
    return malloc_callers(n, CALLER, first);
}

SHIM_EXPORT MLSHIM_HOT_ENTRY void free(void *p) {
    if (!p) return;  // as glibc's; programs free NULL often (nginx: about 50 times per request)
    if (g_arena.owns(p)) return g_arena.free(p);
    free_other(p);
}

namespace {

// The hooks' paths past the match window, out of line: a pass-through call then saves no
// registers and ends in a jump to the next allocator.
__attribute__((noinline)) void *calloc_matching(std::size_t count, std::size_t size, std::size_t n, const void *ra) {
    int rule = match(n, ra);
    return rule < 0 ? g_next.calloc(count, size) : arena_alloc(rule, n, kMinAlign, true);
}

__attribute__((noinline)) void *realloc_other(void *p, std::size_t n, const void *ra) {
    if (!p) return may_match(n) ? malloc_matching(n, ra) : g_next.malloc(n);
    return slow_realloc(p, n, ra);
}

__attribute__((always_inline)) inline void *realloc_impl(void *p, std::size_t n, const void *ra) {
    if (__builtin_expect(p && !g_arena.owns(p) && !may_match(n) && !in_bootstrap(p), 1)) return g_next.realloc(p, n);
    return realloc_other(p, n, ra);
}

__attribute__((noinline)) int posix_memalign_matching(void **memptr, std::size_t align, std::size_t n, const void *ra) {
    if (align % sizeof(void *) || !is_pow2(align)) return EINVAL;
    int rule = match(n, ra);
    if (rule < 0) return g_next.posix_memalign(memptr, align, n);
    int saved = errno;
    void *q = arena_alloc(rule, n, align < kMinAlign ? kMinAlign : align, false);
    if (!q) return ENOMEM;  // errno = ENOMEM too, as glibc's; *memptr untouched
    errno = saved;
    *memptr = q;
    return 0;
}

// pvalloc of a size whose page-rounded size may match: the arena serves `rounded` bytes,
// page-aligned; an unmatched call reaches the next allocator with the caller's size, which
// it rounds its own way (glibc 2.36 serves pvalloc(0) as a 1-byte block).
__attribute__((noinline)) void *pvalloc_matching(std::size_t n, std::size_t rounded, const void *ra) {
    int rule = match(rounded, ra);
    return rule < 0 ? g_next.pvalloc(n) : arena_alloc(rule, rounded, memlock_page_size(), false);
}

}  // namespace

SHIM_EXPORT void *calloc(std::size_t count, std::size_t size) {
    std::size_t n;
    if (__builtin_mul_overflow(count, size, &n) || __builtin_expect(!may_match(n), 1))
        return g_next.calloc(count, size);  // the next allocator reports the overflow itself
    return calloc_matching(count, size, n, CALLER);
}

SHIM_EXPORT void *realloc(void *p, std::size_t n) { return realloc_impl(p, n, CALLER); }

SHIM_EXPORT void *reallocarray(void *p, std::size_t count, std::size_t size) {
    std::size_t n;
    if (__builtin_mul_overflow(count, size, &n)) {
        errno = ENOMEM;
        return nullptr;
    }
    return realloc_impl(p, n, CALLER);
}

SHIM_EXPORT int posix_memalign(void **memptr, std::size_t align, std::size_t n) {
    if (__builtin_expect(!may_match(n), 1)) return g_next.posix_memalign(memptr, align, n);
    return posix_memalign_matching(memptr, align, n, CALLER);
}

SHIM_EXPORT void *aligned_alloc(std::size_t align, std::size_t n) {
    if (__builtin_expect(!may_match(n), 1)) return g_next.aligned_alloc(align, n);
    if (!is_pow2(align)) return aligned_alloc_unusual(align, n, CALLER);
    return memalign_impl(align, n, g_next.aligned_alloc, CALLER);
}

SHIM_EXPORT void *memalign(std::size_t align, std::size_t n) {
    return memalign_impl(align, n, g_next.memalign, CALLER);
}

SHIM_EXPORT void *valloc(std::size_t n) {
    if (__builtin_expect(!may_match(n), 1)) return g_next.valloc(n);
    return memalign_impl(memlock_page_size(), n, [](std::size_t, std::size_t m) { return g_next.valloc(m); }, CALLER);
}

SHIM_EXPORT void *pvalloc(std::size_t n) {
    const std::size_t page = memlock_page_size();  // 4 KiB, or 16/64 KiB on some aarch64 kernels
    std::size_t rounded;
    if (__builtin_add_overflow(n, page - 1, &rounded)) {
        errno = ENOMEM;
        return nullptr;
    }
    rounded &= ~(page - 1);
    if (rounded == 0) rounded = page;
    if (__builtin_expect(!may_match(rounded), 1)) return g_next.pvalloc(n);
    return pvalloc_matching(n, rounded, CALLER);
}

SHIM_EXPORT std::size_t malloc_usable_size(void *p) {
    if (!p) return 0;
    if (g_arena.owns(p)) return g_arena.usable_size(p);
    return usable_other(p);
}

// mallinfo2 and mallinfo: the next definition's figures with the arena's added, as glibc counts
// its own heap: the memory committed in `arena`, live matched blocks in `uordblks`, the rest of
// what is committed in `fordblks`. Where there is none (glibc before 2.33 has no mallinfo2),
// the arena's alone. An allocator preloaded after the shim without mallinfo (jemalloc,
// mimalloc) leaves libc's, which do not count its heap. mallinfo's int fields wrap, as glibc's do.
struct Mallinfo2 {
    std::size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
struct Mallinfo {
    int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

namespace {

char g_no_mallinfo;  // with_arena's `next` when there is no next definition

template <class Info> Info with_arena(const char *name) {
    static std::atomic<void *> next{nullptr};  // a race looks it up twice, with the same answer
    void *f = next.load(std::memory_order_acquire);
    if (!f) {
        f = next_function(name);
        next.store(f ? f : &g_no_mallinfo, std::memory_order_release);
    }
    Info m = f && f != &g_no_mallinfo ? reinterpret_cast<Info (*)()>(f)() : Info{};
    const ArenaInfo a = arena_info();
    const std::uint64_t free_bytes = a.committed > a.live ? a.committed - a.live : 0;
    using Field = decltype(m.arena);
    m.arena = static_cast<Field>(m.arena + a.committed);
    m.uordblks = static_cast<Field>(m.uordblks + a.live);
    m.fordblks = static_cast<Field>(m.fordblks + free_bytes);
    return m;
}

}  // namespace

SHIM_EXPORT Mallinfo2 mallinfo2() { return with_arena<Mallinfo2>("mallinfo2"); }
SHIM_EXPORT Mallinfo mallinfo() { return with_arena<Mallinfo>("mallinfo"); }

// C23 / glibc 2.43: the size and alignment are hints; the block is freed as by free().
SHIM_EXPORT void free_sized(void *p, std::size_t) { free(p); }
SHIM_EXPORT void free_aligned_sized(void *p, std::size_t, std::size_t) { free(p); }

// glibc before 2.26 declared cfree, and programs built then call it; later glibc keeps
// cfree@GLIBC_2.2.5 for them, an alias of its own free, which would take an arena block for
// one of its heap's and abort (or corrupt its heap). The reference binds here first.
SHIM_EXPORT void cfree(void *p) { free(p); }

// ---- jemalloc's own interface ------------------------------------------------------------
// A library that allocates through jemalloc's mallocx family instead of malloc (BIND 9.18's
// libisc) bypassed the rules: its blocks (DNSSEC keys, TSIG secrets) were jemalloc's, even
// under match-all. Each function here takes the arena's blocks and passes the others on to
// jemalloc's; a mallocx that a rule matches is served by the arena. Where no object after the
// shim defines the function (jemalloc is not loaded), it is answered on malloc's terms.
namespace {

constexpr int kJeLgAlign = 0x3f;  // MALLOCX_LG_ALIGN(la): the low 6 bits
constexpr int kJeZero = 0x40;     // MALLOCX_ZERO

std::size_t je_align(int flags) {
    const int lg = flags & kJeLgAlign;
    return lg < 4 ? kMinAlign : lg > 47 ? std::size_t{1} << 47 : std::size_t{1} << lg;
}

// The size the arena serves for mallocx(n, flags) or rallocx: at least jemalloc's nallocx(n,
// flags), which the shim does not interpose and which jemalloc documents as the block's real
// size (a program may use that many bytes; the arena's size classes above 16 KiB are
// finer than jemalloc's).
std::size_t je_size(std::size_t n, int flags) {
    const auto nallocx = next_jemalloc().nallocx;
    const std::size_t real = nallocx ? nallocx(n, flags) : 0;
    return real > n ? real : n;
}

// A block for mallocx(n, flags) that no rule matched, or that rallocx moves out of the arena.
__attribute__((noinline)) void *je_other_alloc(std::size_t n, int flags) {
    if (auto next = next_jemalloc().mallocx) return next(n, flags);
    const std::size_t align = je_align(flags);
    void *p = align <= kMinAlign && (flags & kJeZero) ? g_next.calloc(1, n) : g_next.memalign(align, n);
    if (p && align > kMinAlign && (flags & kJeZero)) std::memset(p, 0, n);
    return p;
}

// rallocx of a block the arena does not hold.
__attribute__((noinline)) void *je_other_realloc(void *p, std::size_t n, int flags, const void *ra) {
    const std::size_t align = je_align(flags);
    int rule = may_match(n) ? match(n, ra) : -1;
    if (rule < 0) {
        if (auto next = next_jemalloc().rallocx) return next(p, n, flags);
        if (align <= kMinAlign && !(flags & kJeZero)) return g_next.realloc(p, n);
    }
    // It comes to match (or no jemalloc: a new block): move it, and wipe the copy left behind.
    void *q = rule >= 0 ? arena_alloc(rule, je_size(n, flags), align, flags & kJeZero) : je_other_alloc(n, flags);
    if (!q) return nullptr;
    const auto sallocx = next_jemalloc().sallocx;
    const std::size_t have = sallocx ? sallocx(p, 0) : usable_other(p);
    std::memcpy(q, p, n < have ? n : have);
    memlock_wipe(p, have);
    if (auto next = next_jemalloc().dallocx) next(p, 0);
    else free_other(p);
    return q;
}

}  // namespace

SHIM_EXPORT void *mallocx(std::size_t n, int flags) {
    if (n && may_match(n)) {
        const int rule = match(n, CALLER);
        if (rule >= 0) return arena_alloc(rule, je_size(n, flags), je_align(flags), flags & kJeZero);
    }
    return je_other_alloc(n, flags);
}

SHIM_EXPORT void *rallocx(void *p, std::size_t n, int flags) {
    if (g_arena.owns(p)) return realloc_owned(p, je_size(n ? n : 1, flags), je_align(flags), flags & kJeZero, "rallocx(): invalid pointer");
    return je_other_realloc(p, n, flags, CALLER);
}

SHIM_EXPORT std::size_t xallocx(void *p, std::size_t n, std::size_t extra, int flags) {
    if (g_arena.owns(p)) {
        // In place only: a run grows into the free pages after it, up to n + extra.
        const std::size_t have = g_arena.usable_size(p, "xallocx(): invalid pointer");
        const std::size_t want = n + extra < n ? SIZE_MAX : n + extra;
        const bool zero = flags & kJeZero;
        if (want > have && !grow_owned_in_place(p, have, want, zero) && n > have) grow_owned_in_place(p, have, n, zero);
        return g_arena.usable_size(p);
    }
    if (auto next = next_jemalloc().xallocx) return next(p, n, extra, flags);
    return usable_other(p);
}

SHIM_EXPORT std::size_t sallocx(const void *p, int flags) {
    void *q = const_cast<void *>(p);
    if (g_arena.owns(q)) return g_arena.usable_size(q, "sallocx(): invalid pointer");
    if (auto next = next_jemalloc().sallocx) return next(p, flags);
    return usable_other(q);
}

SHIM_EXPORT void dallocx(void *p, int flags) {
    if (g_arena.owns(p)) return g_arena.free(p);
    if (auto next = next_jemalloc().dallocx) return next(p, flags);
    free_other(p);
}

SHIM_EXPORT void sdallocx(void *p, std::size_t n, int flags) {
    if (g_arena.owns(p)) return g_arena.free(p);
    if (auto next = next_jemalloc().sdallocx) return next(p, n, flags);
    free_other(p);
}

// jemalloc's "arenas.lookup" control names the jemalloc arena that holds a block. Given an
// address of the shim's arena, jemalloc 5.3.0 follows its radix tree into a leaf it never made
// and the process dies; later versions answer EINVAL, as for any address not theirs. So the
// lookup of an arena address, by name or by MIB, answers EINVAL here, and every other call
// goes on to jemalloc's. Where jemalloc is not loaded no control exists (ENOENT).
namespace {

bool looks_up_arena_block(const void *newp, std::size_t newlen) {
    if (!newp || newlen != sizeof(void *)) return false;
    void *p;
    std::memcpy(&p, newp, sizeof p);
    return g_arena.owns(p);
}

// Is mib jemalloc's MIB for "arenas.lookup"? Asked of jemalloc each time: only a call that
// passes an arena address asks.
bool is_lookup_mib(const std::size_t *mib, std::size_t miblen) {
    const auto nametomib = next_jemalloc().mallctlnametomib;
    std::size_t lookup[4];
    std::size_t len = 4;
    return mib && nametomib && nametomib("arenas.lookup", lookup, &len) == 0 && miblen == len &&
           std::memcmp(mib, lookup, len * sizeof lookup[0]) == 0;
}

}  // namespace

SHIM_EXPORT int mallctl(const char *name, void *oldp, std::size_t *oldlenp, void *newp, std::size_t newlen) {
    if (name && std::strcmp(name, "arenas.lookup") == 0 && looks_up_arena_block(newp, newlen)) return EINVAL;
    if (auto next = next_jemalloc().mallctl) return next(name, oldp, oldlenp, newp, newlen);
    return ENOENT;
}

SHIM_EXPORT int mallctlbymib(const std::size_t *mib, std::size_t miblen, void *oldp, std::size_t *oldlenp, void *newp,
                             std::size_t newlen) {
    const auto next = next_jemalloc().mallctlbymib;
    if (!next) return ENOENT;
    if (looks_up_arena_block(newp, newlen) && is_lookup_mib(mib, miblen)) return EINVAL;
    return next(mib, miblen, oldp, oldlenp, newp, newlen);
}

// Caller rules index the loaded objects; an unloaded object's ranges must go with it.
SHIM_EXPORT int dlclose(void *handle) { return shim_dlclose(handle); }

// RTLD_DEEPBIND would bind the library's free to glibc's, past the shim (without_deepbind).
// dlopen finds its caller by its return address (the caller's RUNPATH, $ORIGIN and namespace
// apply), so glibc's is reached by a jump.
SHIM_EXPORT void *dlopen(const char *file, int mode) {
    if (__builtin_expect(mode & RTLD_DEEPBIND, 0)) mode = without_deepbind(file, mode);
    return next_dlopen()(file, mode);
}

// A process made with syscall(SYS_clone, ...) runs no atfork handler: see shim_syscall.
#if defined(__x86_64__) || defined(__aarch64__)
// On x86-64 (System V) and aarch64 (AAPCS64, as Linux uses it) a variadic call passes its
// integer arguments where a call with these seven parameters reads them, as glibc's own
// syscall does: no va_list (which costs some 100 instructions per call).
SHIM_EXPORT long shim_syscall_entry(long number, long a1, long a2, long a3, long a4, long a5, long a6) __asm__("syscall");
long shim_syscall_entry(long number, long a1, long a2, long a3, long a4, long a5, long a6) {
    return shim_syscall(number, a1, a2, a3, a4, a5, a6);
}
#else
SHIM_EXPORT long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (long &x : a) x = va_arg(ap, long);
    va_end(ap);
    return shim_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
#endif

// Under policy.scrub_stack a new thread looks its stack up first (stack_scrub.hpp).
SHIM_EXPORT int pthread_create(pthread_t *__restrict thread, const pthread_attr_t *__restrict attr,
                               void *(*fn)(void *), void *__restrict arg) noexcept {
    return shim_pthread_create(thread, attr, fn, arg);
}

// Notes the thread's signal stack, which policy.scrub_stack leaves alone (stack_scrub.hpp).
SHIM_EXPORT int sigaltstack(const stack_t *__restrict ss, stack_t *__restrict old) noexcept {
    return shim_sigaltstack(ss, old);
}

// A page of the arena keeps its pool's protection: see shim_munlock.
SHIM_EXPORT int munlock(const void *addr, std::size_t len) noexcept { return shim_munlock(addr, len); }
SHIM_EXPORT int madvise(void *addr, std::size_t len, int advice) noexcept { return shim_madvise(addr, len, advice); }
SHIM_EXPORT int munlockall() noexcept { return shim_lockall(SYS_munlockall, 0); }
SHIM_EXPORT int mlockall(int flags) noexcept { return shim_lockall(SYS_mlockall, flags); }
// The program's lock fits as it would without the shim: see shim_mlock.
SHIM_EXPORT int mlock(const void *addr, std::size_t len) noexcept { return shim_mlock(SYS_mlock, addr, len, 0); }
SHIM_EXPORT int mlock2(const void *addr, std::size_t len, unsigned flags) noexcept {
    const int rc = shim_mlock(SYS_mlock2, addr, len, flags);
    if (rc == 0 || errno != ENOSYS) return rc;
    // As glibc's on a kernel without mlock2: mlock for no flags, EINVAL for others.
    if (!flags) return shim_mlock(SYS_mlock, addr, len, 0);
    errno = EINVAL;
    return -1;
}

// _Fork runs no atfork handler: see shim_fork_bare.
SHIM_EXPORT pid_t _Fork() { return shim_fork_bare(); }

// glibc's clone(fn, stack, flags, arg, ...) runs no atfork handler either: see shim_clone.
#if defined(__x86_64__) || defined(__aarch64__)
// The optional parent_tid, tls and child_tid are read where a call with seven parameters
// reads them, as glibc's own clone does, whether or not the caller passed them.
SHIM_EXPORT int shim_clone_entry(int (*fn)(void *), void *stack, int flags, void *arg, void *ptid, void *tls,
                                 void *ctid) __asm__("clone");
int shim_clone_entry(int (*fn)(void *), void *stack, int flags, void *arg, void *ptid, void *tls, void *ctid) {
    return shim_clone(fn, stack, flags, arg, ptid, tls, ctid);
}
#else
SHIM_EXPORT int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...) {
    va_list ap;
    va_start(ap, arg);
    void *ptid = va_arg(ap, void *), *tls = va_arg(ap, void *), *ctid = va_arg(ap, void *);
    va_end(ap);
    return shim_clone(fn, stack, flags, arg, ptid, tls, ctid);
}
#endif
