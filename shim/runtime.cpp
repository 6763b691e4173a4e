#include "runtime.hpp"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <gnu/lib-names.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backing.hpp"
#include "callers.hpp"
#include "config.hpp"
#include "fatal.hpp"
#include "fork_child.hpp"
#include "memlock.h"
#include "procmaps.hpp"
#include "stack_scrub.hpp"
#include "trace.hpp"
#include "unwind.hpp"

namespace mlshim {

namespace {

// ---- bootstrap pool: serves dlsym's own allocations while g_next is looked up ----------

constexpr std::size_t kBootBytes = 64 * 1024;
alignas(64) unsigned char g_boot[kBootBytes];
std::atomic<std::size_t> g_boot_used{0};
thread_local bool t_resolving __attribute__((tls_model("initial-exec"))) = false;

// Blocks carry their size in the 16 bytes before them. Never freed.
void *boot_alloc(std::size_t n) noexcept {
    std::size_t need = 16 + ((n + 15) & ~std::size_t{15});
    std::size_t at = g_boot_used.fetch_add(need);
    if (at + need > kBootBytes || need < n) {
        errno = ENOMEM;
        return nullptr;
    }
    *reinterpret_cast<std::size_t *>(g_boot + at) = n;
    return g_boot + at + 16;
}

std::size_t boot_size(const void *p) noexcept {
    return *reinterpret_cast<const std::size_t *>(static_cast<const unsigned char *>(p) - 16);
}

// ---- the next allocator ----------------------------------------------------------------

void resolve_next() noexcept;

void *boot_malloc(std::size_t n) noexcept {
    if (t_resolving) return boot_alloc(n);
    resolve_next();
    return g_next.malloc(n);
}
void boot_free(void *p) noexcept {
    if (in_bootstrap(p) || !p) return;
    resolve_next();
    g_next.free(p);
}
void *boot_calloc(std::size_t a, std::size_t b) noexcept {
    if (t_resolving) {
        std::size_t n;
        if (__builtin_mul_overflow(a, b, &n)) return errno = ENOMEM, nullptr;
        return boot_alloc(n);  // static memory, never handed out twice: already zero
    }
    resolve_next();
    return g_next.calloc(a, b);
}
// The lookup itself only ever uses malloc, calloc and free: anything else during it fails
// cleanly rather than re-entering the lookup.
#define BOOT_OR_FAIL(fail)  \
    if (t_resolving) {      \
        errno = ENOMEM;     \
        return fail;        \
    }                       \
    resolve_next()
void *boot_realloc(void *p, std::size_t n) noexcept { BOOT_OR_FAIL(nullptr); return g_next.realloc(p, n); }
void *boot_reallocarray(void *p, std::size_t a, std::size_t b) noexcept { BOOT_OR_FAIL(nullptr); return g_next.reallocarray(p, a, b); }
int boot_posix_memalign(void **m, std::size_t a, std::size_t n) noexcept { BOOT_OR_FAIL(ENOMEM); return g_next.posix_memalign(m, a, n); }
void *boot_aligned_alloc(std::size_t a, std::size_t n) noexcept { BOOT_OR_FAIL(nullptr); return g_next.aligned_alloc(a, n); }
void *boot_memalign(std::size_t a, std::size_t n) noexcept { BOOT_OR_FAIL(nullptr); return g_next.memalign(a, n); }
void *boot_valloc(std::size_t n) noexcept { BOOT_OR_FAIL(nullptr); return g_next.valloc(n); }
void *boot_pvalloc(std::size_t n) noexcept { BOOT_OR_FAIL(nullptr); return g_next.pvalloc(n); }
std::size_t boot_usable(void *p) noexcept {
    if (in_bootstrap(p)) return boot_size(p);
    BOOT_OR_FAIL(0);
    return g_next.malloc_usable_size(p);
}
#undef BOOT_OR_FAIL

// Stand-ins for functions an allocator further down may lack.
void *fallback_reallocarray(void *p, std::size_t a, std::size_t b) noexcept {
    std::size_t n;
    if (__builtin_mul_overflow(a, b, &n)) return errno = ENOMEM, nullptr;
    return g_next.realloc(p, n);
}

// The dynamic symbol and version tables of a loaded object.
struct DynTables {
    const ElfW(Sym) *symtab = nullptr;
    const ElfW(Half) *versym = nullptr;  // nullptr: the object has no symbol versions
    const ElfW(Verdef) *verdef = nullptr;
    const char *strtab = nullptr;
    const ElfW(Word) *hash = nullptr;
    const std::uint32_t *gnu_hash = nullptr;
};

DynTables dyn_tables(const link_map *map) noexcept {
    DynTables t;
    // The loader relocates these entries in place on most CPUs; where it does not, they
    // are still offsets from the load address.
    auto at = [map](ElfW(Addr) a) { return a < map->l_addr ? a + map->l_addr : a; };
    for (const ElfW(Dyn) *d = map->l_ld; d && d->d_tag != DT_NULL; ++d) {
        if (d->d_tag == DT_SYMTAB) t.symtab = reinterpret_cast<const ElfW(Sym) *>(at(d->d_un.d_ptr));
        if (d->d_tag == DT_VERSYM) t.versym = reinterpret_cast<const ElfW(Half) *>(at(d->d_un.d_ptr));
        if (d->d_tag == DT_VERDEF) t.verdef = reinterpret_cast<const ElfW(Verdef) *>(at(d->d_un.d_ptr));
        if (d->d_tag == DT_STRTAB) t.strtab = reinterpret_cast<const char *>(at(d->d_un.d_ptr));
        if (d->d_tag == DT_HASH) t.hash = reinterpret_cast<const ElfW(Word) *>(at(d->d_un.d_ptr));
        if (d->d_tag == DT_GNU_HASH) t.gnu_hash = reinterpret_cast<const std::uint32_t *>(at(d->d_un.d_ptr));
    }
    return t;
}

// The symbol at `f` (a function a lookup found) and its object, or false.
bool symbol_at(void *f, const ElfW(Sym) **sym, const link_map **map) noexcept {
    Dl_info info;
    void *symp = nullptr, *mapp = nullptr;
    if (!f || !dladdr1(f, &info, &symp, RTLD_DL_SYMENT) || !symp || !dladdr1(f, &info, &mapp, RTLD_DL_LINKMAP) ||
        !mapp)
        return false;
    *sym = static_cast<const ElfW(Sym) *>(symp);
    *map = static_cast<const link_map *>(mapp);
    return true;
}

// libc's default (not hidden) definition of `name` in its dynamic symbol table, and the
// version it carries ("GLIBC_2.2.5" for malloc on x86-64, "GLIBC_2.17" on arm64,
// "GLIBC_2.16" for aligned_alloc...), or {nullptr, nullptr}. Read from libc's tables with
// no dlopen, no dlsym on a handle and no libc function a sanitizer intercepts (strcmp
// included): the first lookup can come before libc is initialised (a sanitizer runtime's
// malloc calls, made from the executable's preinit_array while it makes its interceptors),
// when dlopen would run libc's initialisers with an empty environment. The address is the
// symbol's value: for an IFUNC it would be the resolver, not what dlsym returns.
extern "C" void _IO_list_lock(void);
bool same_name(const char *a, const char *b) noexcept {
    while (*a && *a == *b) ++a, ++b;
    return *a == *b;
}
struct LibcSymbol {
    void *addr;
    const char *version;
};
// libc's object and tables (map nullptr: not found), read once for a series of lookups.
struct LibcTables {
    const link_map *map = nullptr;
    DynTables t;
};
LibcTables libc_tables() noexcept {
    Dl_info info;
    void *mapp = nullptr;
    if (!dladdr1(reinterpret_cast<void *>(&_IO_list_lock), &info, &mapp, RTLD_DL_LINKMAP) || !mapp) return {};
    const auto *map = static_cast<const link_map *>(mapp);
    return {map, dyn_tables(map)};
}
LibcSymbol libc_definition(const LibcTables &libc, const char *name) noexcept {
    const link_map *map = libc.map;
    const DynTables &t = libc.t;
    if (!map || !t.symtab || !t.strtab) return {};
    auto wanted = [&](std::size_t i) {
        const ElfW(Sym) &sym = t.symtab[i];
        return sym.st_shndx != SHN_UNDEF && !(t.versym && (t.versym[i] & 0x8000)) &&
               same_name(t.strtab + sym.st_name, name);
    };
    std::size_t found = 0;
    if (t.gnu_hash) {
        std::uint32_t h = 5381;
        for (const char *c = name; *c; ++c) h = h * 33 + static_cast<unsigned char>(*c);
        const std::uint32_t nbuckets = t.gnu_hash[0], symoffset = t.gnu_hash[1], bloom_words = t.gnu_hash[2];
        const auto *buckets = reinterpret_cast<const std::uint32_t *>(
            reinterpret_cast<const ElfW(Addr) *>(t.gnu_hash + 4) + bloom_words);
        const std::uint32_t *chains = buckets + nbuckets;
        for (std::uint32_t i = nbuckets ? buckets[h % nbuckets] : 0; i >= symoffset && i != 0; ++i) {
            const std::uint32_t chain = chains[i - symoffset];
            if ((chain | 1) == (h | 1) && wanted(i)) {
                found = i;
                break;
            }
            if (chain & 1) break;
        }
    } else {
        const std::size_t count = t.hash ? t.hash[1] : 0;  // DT_HASH's chain count: every symbol
        for (std::size_t i = 1; i < count && !found; ++i)
            if (wanted(i)) found = i;
    }
    if (!found) return {};
    LibcSymbol r{reinterpret_cast<void *>(map->l_addr + t.symtab[found].st_value), nullptr};
    if (!t.versym || !t.verdef) return r;
    const ElfW(Half) ndx = t.versym[found] & 0x7fff;
    for (const ElfW(Verdef) *v = t.verdef;; v = reinterpret_cast<const ElfW(Verdef) *>(
                                                 reinterpret_cast<const char *>(v) + v->vd_next)) {
        if (v->vd_ndx == ndx && !(v->vd_flags & VER_FLG_BASE)) {
            r.version = t.strtab +
                        reinterpret_cast<const ElfW(Verdaux) *>(reinterpret_cast<const char *>(v) + v->vd_aux)->vda_name;
            return r;
        }
        if (!v->vd_next) return r;
    }
}

// The next definition of `name`. An allocator that exports only versioned symbols (glibc's
// libc_malloc_debug.so) is invisible to an unversioned lookup, and an unversioned one
// (jemalloc, mimalloc, a test's) to a versioned lookup: the unversioned lookup wins unless it
// lands on libc's own definition, in which case the versioned one (which may be earlier in
// the order) is taken.
template <typename F> F lookup(const LibcTables &tables, const char *name, F fallback) {
    void *f = dlsym(RTLD_NEXT, name);
    const LibcSymbol libc = libc_definition(tables, name);
    if (libc.version && (!f || f == libc.addr))
        if (void *v = dlvsym(RTLD_NEXT, name, libc.version)) f = v;
    return f ? reinterpret_cast<F>(f) : fallback;
}

// syscall(3)'s next definition: looked up with the allocator's at the shim's start-up, so that
// a first syscall(3) in a signal handler finds it set (a call before or during that lookup:
// next_syscall).
long (*g_next_syscall)(long, ...) = nullptr;
// clone(3)'s and _Fork's, likewise (glibc before 2.34 has no _Fork: nullptr).
int (*g_next_clone)(int (*)(void *), void *, int, void *, ...) = nullptr;
pid_t (*g_next_fork_bare)() = nullptr;
// pthread_create(3)'s, likewise.
int (*g_next_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) = nullptr;
std::atomic<bool> g_next_resolved{false};  // resolve_next has looked up all of the above and g_next

// The lock is a flag of the shim's own, not a pthread mutex: the first call can come from a
// library initialised before the shim (a sanitizer runtime's dlsym, while it sets up its own
// pthread_mutex_lock interceptor), and a mutex call would reach that library's half-made one.
void resolve_next() noexcept {
    static std::atomic_flag busy = ATOMIC_FLAG_INIT;
    if (g_next_resolved.load(std::memory_order_acquire)) return;
    while (busy.test_and_set(std::memory_order_acquire)) sched_yield();
    if (!g_next_resolved.load(std::memory_order_relaxed)) {
        t_resolving = true;
        const LibcTables libc = libc_tables();
        NextAllocator n{};
        n.malloc = lookup<decltype(n.malloc)>(libc, "malloc", nullptr);
        n.free = lookup<decltype(n.free)>(libc, "free", nullptr);
        n.calloc = lookup<decltype(n.calloc)>(libc, "calloc", nullptr);
        n.realloc = lookup<decltype(n.realloc)>(libc, "realloc", nullptr);
        n.reallocarray = lookup<decltype(n.reallocarray)>(libc, "reallocarray", fallback_reallocarray);
        n.posix_memalign = lookup<decltype(n.posix_memalign)>(libc, "posix_memalign", nullptr);
        n.aligned_alloc = lookup<decltype(n.aligned_alloc)>(libc, "aligned_alloc", nullptr);
        n.memalign = lookup<decltype(n.memalign)>(libc, "memalign", nullptr);
        n.valloc = lookup<decltype(n.valloc)>(libc, "valloc", nullptr);
        n.pvalloc = lookup<decltype(n.pvalloc)>(libc, "pvalloc", nullptr);
        n.malloc_usable_size = lookup<decltype(n.malloc_usable_size)>(libc, "malloc_usable_size", nullptr);
        __atomic_store_n(&g_next_syscall, lookup<decltype(g_next_syscall)>(libc, "syscall", nullptr), __ATOMIC_RELEASE);
        __atomic_store_n(&g_next_clone, lookup<decltype(g_next_clone)>(libc, "clone", nullptr), __ATOMIC_RELEASE);
        __atomic_store_n(&g_next_fork_bare, lookup<decltype(g_next_fork_bare)>(libc, "_Fork", nullptr), __ATOMIC_RELEASE);
        __atomic_store_n(&g_next_pthread_create, lookup<decltype(g_next_pthread_create)>(libc, "pthread_create", nullptr),
                         __ATOMIC_RELEASE);
        t_resolving = false;  // libc stays open (it is never unloaded): no dlclose here
        if (!n.malloc || !n.free || !n.calloc || !n.realloc || !n.posix_memalign || !n.aligned_alloc ||
            !n.memalign || !n.valloc || !n.pvalloc || !n.malloc_usable_size)
            fatal("cannot find the next allocator's functions (dlsym RTLD_NEXT failed)");
        g_next = n;
        g_next_resolved.store(true, std::memory_order_release);
    }
    busy.clear(std::memory_order_release);
}

// ---- state ---------------------------------------------------------------------------------

Config *g_config = nullptr;   // kept for the life of the process
StatsPage *g_stats = nullptr;
bool g_active = false;
// runtime_init has decided whether rules are in force (g_active): a library's constructor that
// runs before the shim's (the program's own dependencies are initialised first) finds it unset.
bool g_started = false;
bool g_tracing = false;  // MEMLOCK_SHIM_TRACE: memlock-discover records the heap (trace.hpp)
bool g_scrub_stack = false;  // policy.scrub_stack, and new threads look their stacks up (shim_pthread_create)

void report(LogLevel level, const char *what, const char *why) noexcept {
    BusyScope busy;
    log_msg(level, "%s: %s", what, why);
}

// ---- fork ------------------------------------------------------------------------------
//
// glibc's fork runs the prepare handlers, then takes the stdio list lock, then its own
// allocator's locks (malloc/arena.c, __malloc_fork_lock_parent), so that a thread holding a
// FILE lock while it allocates never waits for a forking thread that waits for that FILE.
// The shim's prepare handler runs before that point, so it takes the stdio list lock first
// itself (it is recursive: fork takes it again in the same thread), then the caller index's
// build lock, then the arena's locks: the order glibc's own allocator has. Like glibc, it
// takes no lock at all when the process is single-threaded (fork from a signal handler that
// interrupted an allocation then behaves as under glibc), and none in a fork nested inside a
// fork of the same thread (a signal handler that forks while fork runs): the outer fork
// holds them, and signals are blocked while they are taken and released, so they are held
// either all or none. docs/shim.md gives the argument in full.
extern "C" void _IO_list_unlock(void);
extern "C" void _IO_list_resetlock(void);

const char *g_single_threaded = nullptr;  // glibc's __libc_single_threaded (2.32 and later)
__thread unsigned t_fork_depth __attribute__((tls_model("initial-exec"))) = 0;
__thread bool t_fork_locked __attribute__((tls_model("initial-exec"))) = false;

bool single_threaded() noexcept { return g_single_threaded && *g_single_threaded; }

// What the child's handler of a single-threaded fork reads, on a page of its own: each page
// of the shim's that a fork child touches first costs it a trap (a fault, or on a hypervisor
// that shadows page tables, an exit), which a child that execs or exits at once pays for
// nothing. atfork_prepare writes it only when it changes, so that the parent does not
// copy it on write after every fork.
struct alignas(4096) SingleFork {
    bool walked = false;  // fast_backtrace_after_fork_child has work
    ForkPlan plan;        // set by the arena (SecureArena::plan_fork)
};
SingleFork g_single_fork;

// Plans the child's work for a fork by a single-threaded process (`single`), or plans none.
void plan_single_fork(bool single) noexcept {
    g_arena.plan_fork(single && !stats_moves_after_fork(g_stats));
    if (!single) return;  // walked is read only where the plan holds
    const bool walked = fast_backtrace_child_work();
    if (g_single_fork.walked != walked) g_single_fork.walked = walked;
}

// A secretmem pool is a shared mapping: fork gives the child the parent's pages, not a copy,
// and the child's handler copies them into a file of its own (postfork_child). Until it has,
// what the parent writes there after fork would be in the child's copy (blocks the parent
// rewrites or frees and wipes at once: the child would find them changed or zeroed). So the
// forking thread waits in the parent's handler, signals blocked, until the child has its
// copy: the child writes a byte to a pipe made before fork; EOF when the child ended first or
// fork failed. Only the outermost fork of a thread waits (a signal handler's fork nested in
// it does not); t_fork_gate_level is 0 when no fork of this thread waits. Other threads of the
// parent are not held: their writes in that window still reach the child's copy
// (docs/config.md, backing). pipe2 failing (EMFILE) leaves the fork unwaited.
// read, write and close are cancellation points: they run with cancellation disabled, so a
// pending cancellation stays pending.
__thread int t_fork_gate[2] __attribute__((tls_model("initial-exec"))) = {-1, -1};
__thread unsigned t_fork_gate_level __attribute__((tls_model("initial-exec"))) = 0;

void fork_gate_open() noexcept {
    if (t_fork_gate_level != 0) {  // nested in a fork that waits
        ++t_fork_gate_level;
        return;
    }
    if (!g_arena.fork_child_copies_secretmem()) return;
    t_fork_gate_level = 1;
    const int saved = errno;
    CancelOff no_cancel;
    if (::pipe2(t_fork_gate, O_CLOEXEC) != 0) t_fork_gate[0] = t_fork_gate[1] = -1;
    errno = saved;
}

// Ends this thread's innermost fork gate: true when that was the outermost one and it has a
// pipe, which the caller then uses up and closes.
inline bool fork_gate_end() noexcept {
    if (t_fork_gate_level == 0) return false;
    return --t_fork_gate_level == 0 && t_fork_gate[0] >= 0;
}

void fork_gate_wait() noexcept {
    if (!fork_gate_end()) return;
    const int saved = errno;
    CancelOff no_cancel;
    SignalsBlocked blocked;
    ::close(t_fork_gate[1]);
    char c;
    while (::read(t_fork_gate[0], &c, 1) < 0 && errno == EINTR) {}
    ::close(t_fork_gate[0]);
    t_fork_gate[0] = t_fork_gate[1] = -1;
    errno = saved;
}

MLSHIM_FORK_CHILD_TEXT void fork_gate_release() noexcept {
    if (!fork_gate_end()) return;
    const int saved = errno;
    CancelOff no_cancel;
    ::close(t_fork_gate[0]);
    const char c = 1;
    while (::write(t_fork_gate[1], &c, 1) < 0 && errno == EINTR) {}
    ::close(t_fork_gate[1]);
    t_fork_gate[0] = t_fork_gate[1] = -1;
    errno = saved;
}

// A single-threaded fork (not nested in another) takes no lock and counts nothing: the
// parent's handler then writes no memory (but a changed plan), as every page the parent
// writes after fork costs a copy-on-write fault. Any other fork plans none, before anything
// else: a signal handler may fork from here on, and its child must not take the planned path.
void atfork_prepare() {
    if (!g_active) return;
    fork_gate_open();
    if (t_fork_depth == 0 && single_threaded()) return plan_single_fork(true);
    plan_single_fork(false);
    if (t_fork_depth++ > 0) return;
    SignalsBlocked blocked;
    _IO_list_lock();
    callers_prefork();
    g_arena.prefork();
    t_fork_locked = true;
}
void atfork_parent() {
    if (!g_active) return;
    fork_gate_wait();
    if (t_fork_depth == 0) return;
    if (t_fork_depth > 1 || !t_fork_locked) {
        --t_fork_depth;
        return;
    }
    SignalsBlocked blocked;
    g_arena.postfork_parent();
    callers_postfork();
    _IO_list_unlock();
    t_fork_locked = false;
    --t_fork_depth;
    g_arena.relock_if_pending();  // a munlockall while the fork held the arena's locks
}
// What makes a fork child's memory its own, with no lock taken (a child of _Fork may have
// been made while another thread held one): its arena locked again (mlock is not inherited),
// its counters in a page of its own. other_threads: the parent had threads besides the
// forking one, whose counter slots are released.
MLSHIM_FORK_CHILD_TEXT void own_child_memory(bool other_threads) {
    fast_backtrace_after_fork_child();
    if (StatsPage *own = stats_after_fork(g_stats, g_arena.thread_slot(), other_threads); own != g_stats) {
        g_stats = own;
        g_arena.set_stats(own);
    }
    g_arena.postfork_child();
}

MLSHIM_FORK_CHILD_COMMON_TEXT void atfork_child() {
    if (g_single_fork.plan.holds()) {  // never under secretmem (plan_fork): no pipe to write
        if (g_single_fork.walked) fast_backtrace_after_fork_child();
        g_arena.postfork_child_planned(g_single_fork.plan);
        return;
    }
    if (!g_active) return;
    // The outermost fork of this thread re-initialises the locks it took; a nested one leaves
    // them to the outer fork, which releases them in this process too.
    bool outermost = t_fork_depth == 1;
    bool other_threads = t_fork_locked || !single_threaded();
    if (t_fork_depth > 0) --t_fork_depth;
    if (outermost && t_fork_locked) {
        callers_postfork_child();
        g_arena.postfork_child_locks();
        _IO_list_resetlock();
        // Only now: a signal handler's munlockall before here finds the locks held by this
        // thread (held across fork) and takes none.
        t_fork_locked = false;
    }
    own_child_memory(other_threads);
    fork_gate_release();
}

// A process made by the clone system call through syscall(3) (vsftpd makes its per-connection
// processes so, to give them new IPC and network namespaces) bypasses glibc's fork and with
// it the atfork handlers: its arena would stay unlocked, its counters the parent's. So
// syscall(3) runs the shim's handlers (and only those, as the program asked for no others)
// around a clone that makes a process with memory of its own (no CLONE_VM) and continues on
// the caller's stack (stack 0): a fork in effect. Other calls pass through unchanged
// (shim_syscall).
//
// clone_args comes from the caller and may not be readable: the kernel answers EFAULT then,
// and so must syscall(3), rather than crash in the shim. Its two words are read only once
// the kernel has said they can be (readable8); otherwise the call passes through and the
// kernel reports it. One that passes and is unreadable further on (its size names more
// bytes) runs the handlers, and the kernel's EFAULT reaches the parent's, which restore.
// (Another thread that unmaps the struct between the check and the read still crashes the
// program; the kernel would have answered EFAULT.)
constexpr unsigned long kSharedMemory = CLONE_VM | CLONE_THREAD;

long next_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) noexcept;

#ifdef SYS_clone3
// Can this process read the 8 bytes at p? rt_sigprocmask copies the new set (the kernel's
// sigset_t, _NSIG / 8 bytes: 8 on x86-64 and aarch64) from p before it looks at `how`: EFAULT
// if they cannot be read, else EINVAL for the invalid `how`, the mask unchanged. A system
// call that seccomp filters allow, as glibc makes it in fork, abort and pthread_create
// (process_vm_readv, which would copy the struct, is often not allowed). Preserves errno.
bool readable8(const void *p) noexcept {
    const int saved = errno;
    const bool fault = next_syscall(SYS_rt_sigprocmask, -1L, reinterpret_cast<long>(p), 0L, static_cast<long>(_NSIG / 8), 0L, 0L) < 0 &&
                       errno == EFAULT;
    errno = saved;
    return !fault;
}
#endif

bool makes_fork_child(long number, long a1, long a2) noexcept {
    if (number == SYS_clone) return (static_cast<unsigned long>(a1) & kSharedMemory) == 0 && a2 == 0;
#ifdef SYS_clone3
    if (number == SYS_clone3) {  // a1: struct clone_args * (flags first, stack at byte 40)
        // A null pointer or a size under 64 (CLONE_ARGS_SIZE_VER0): the kernel refuses it.
        const char *args = reinterpret_cast<const char *>(a1);
        if (!args || static_cast<unsigned long>(a2) < 64 || !readable8(args) || !readable8(args + 40)) return false;
        std::uint64_t flags, stack;
        std::memcpy(&flags, args, sizeof flags);
        std::memcpy(&stack, args + 40, sizeof stack);
        return (flags & kSharedMemory) == 0 && stack == 0;
    }
#endif
#ifdef SYS_fork
    if (number == SYS_fork) return true;
#endif
    return false;
}

// The file mapped at `addr` (the path /proc/self/maps shows); empty when none is.
std::string file_mapped_at(const void *addr) {
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    std::string path;
    each_mapping([&](std::uintptr_t start, std::uintptr_t stop, const char *line) {
        if (a < start || a >= stop) return a >= stop;
        const char *p = std::strchr(line, '/');  // the path is the first field that starts with '/'
        if (p) path = p;
        return false;
    });
    return path;
}

int first_object_phdr(dl_phdr_info *info, size_t, void *out) {
    *static_cast<const void **>(out) = info->dlpi_phdr;
    return 1;
}

}  // namespace

// The executable: /proc/self/exe, else what the loader was given (AT_EXECFN, which exists
// without /proc). Started as "ld.so PROGRAM", the loader is the executable (the one object
// without an interpreter: AT_BASE is 0), and the program is the first object in the link
// map, with an empty name there: the file its program headers are mapped from.
std::string self_exe() {
    if (::getauxval(AT_BASE) == 0) {
        const void *phdr = nullptr;
        dl_iterate_phdr(first_object_phdr, &phdr);
        std::string path = phdr ? file_mapped_at(phdr) : std::string();
        if (!path.empty()) return path;
    }
    char buf[4096];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = '\0';
        return std::string(buf);
    }
    const char *execfn = reinterpret_cast<const char *>(::getauxval(AT_EXECFN));
    return execfn ? std::string(execfn) : std::string();
}

namespace {

// The process that read the config (its fork children are not): the only one that writes
// stats.file at exit.
pid_t g_config_pid = 0;
// The config in force is the system config (system-wide mode): every program on the host,
// other users' included, reads it.
bool g_system_config = false;

// Is `path` a regular file, and its directory, owned by root and writable by nobody else?
// Used for the system configuration, the only one a secure-execution process reads.
bool root_owned_config(const char *path) noexcept {
    struct stat st;
    char dir[4096];
    const char *slash = std::strrchr(path, '/');
    std::size_t dlen = slash ? static_cast<std::size_t>(slash - path) : 0;
    if (dlen == 0 || dlen >= sizeof dir) return false;
    std::memcpy(dir, path, dlen);
    dir[dlen] = '\0';
    auto safe = [&](const char *p, bool want_dir) {
        return ::lstat(p, &st) == 0 && st.st_uid == 0 && !(st.st_mode & (S_IWGRP | S_IWOTH)) &&
               (want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode));
    };
    return safe(dir, true) && safe(path, false);
}

// Opens a log or stats destination: no symlink followed, no blocking on a FIFO, created
// 0600, regular files only, with one link (not another name of a file elsewhere, which root
// would append to). Returns the fd, or -1 with errno and `why` (when not null) set to the
// reason. A file it made itself (O_EXCL) and then refuses is removed.
int open_output(const char *path, int extra_flags, const char **why = nullptr) noexcept {
    const char *reason = nullptr;
    int fd = ::open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK | extra_flags, 0600);
    int err = errno;
    struct stat st;
    if (fd < 0) {
        reason = err == ELOOP ? "it is a symbolic link" : err == ENXIO ? "not a regular file" : memlock_strerror(err);
    } else if (::fstat(fd, &st) != 0) {
        err = errno;  // a refused fstat (a sandbox) keeps its error
        reason = memlock_strerror(err);
    } else if (!S_ISREG(st.st_mode)) {
        err = EINVAL, reason = "not a regular file";
    } else if (st.st_nlink != 1) {
        err = EMLINK, reason = "it has other hard links";
    }
    if (!reason) return fd;
    if (fd >= 0) {
        ::close(fd);
        if (extra_flags & O_EXCL) ::unlink(path);  // made here: not left behind
    }
    if (why) *why = reason;
    errno = err;
    return -1;
}

#ifndef MEMLOCK_SHIM_SYSCONFDIR
#define MEMLOCK_SHIM_SYSCONFDIR "/usr/local/etc"
#endif
// The system configuration: used when MEMLOCK_SHIM_CONFIG is not set (system-wide mode), and
// the only one a secure-execution process reads. Fixed at build time (SYSCONFDIR).
constexpr const char *kSystemConfig = MEMLOCK_SHIM_SYSCONFDIR "/memlock-shim/config.json";

// Documented exit statuses of a program the shim refuses to start.
constexpr int kExitConfig = 78;  // EX_CONFIG: the config is missing or invalid
constexpr int kExitOsErr = 71;   // EX_OSERR: the arena could not be set up

// log.file's descriptor is moved to this number or above (F_DUPFD_CLOEXEC), so that the
// program's own descriptors get the numbers they get without the shim.
constexpr rlim_t kLogFdFloor = 512;  // or half of RLIMIT_NOFILE, if that is less

// A copy of s with control characters escaped (fatal.hpp, escape_into).
std::string escaped(const std::string &s) {
    std::string out(s.size() * 4, '\0');
    out.resize(escape_into(&out[0], out.size(), s.data(), s.size()));
    return out;
}

[[noreturn]] void refuse(int status, const std::string &why, const std::string &exe) {
    std::string msg = "memlock-shim: " + escaped(why) + "\nmemlock-shim: refusing to run " + escaped(exe) +
                      " (pid " + std::to_string(::getpid()) + ") unprotected (exit " + std::to_string(status) +
                      "); fix this or set MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg.data(), msg.size());
    (void)ignored;
    ::_exit(status);
}

// MEMLOCK_SHIM_ON_CONFIG_ERROR, read and checked at every start (ignored under secure
// execution): true = run-unprotected. A value other than "fail", "run-unprotected" or empty
// is reported and the default (fail) applies.
bool g_run_unprotected = false;

void read_config_error_policy(bool secure) {
    const char *v = secure ? nullptr : std::getenv("MEMLOCK_SHIM_ON_CONFIG_ERROR");
    if (!v || !*v || std::strcmp(v, "fail") == 0) return;
    if (std::strcmp(v, "run-unprotected") == 0) {
        g_run_unprotected = true;
        return;
    }
    log_msg(LogLevel::warn, "MEMLOCK_SHIM_ON_CONFIG_ERROR=\"%.64s\" is not \"run-unprotected\" or \"fail\": a "
                            "config error will stop this program (fail)", v);
}

// Is this the process memlock-run started (MEMLOCK_RUN_PID is its pid), or one started
// without memlock-run (no MEMLOCK_RUN_PID)? A value that is not this pid marks a process that
// one started under memlock-run runs in turn. Under secure execution the environment is the
// caller's, so memlock-run's mark is not read.
bool started_by_memlock_run_here(bool secure) {
    const char *v = secure ? nullptr : std::getenv("MEMLOCK_RUN_PID");
    if (!v || !*v) return true;
    return std::to_string(::getpid()) == v;
}

// Does the parent process run the shim (its mappings name it) under the same preload and
// config (`config`, or none), as its environment (/proc/PPID/environ, its first MiB) shows?
// False when either cannot be read (another user's process, no /proc) or differs.
bool parent_runs_same_shim(const char *config) {
    char path[48];
    const int n = std::snprintf(path, sizeof path, "/proc/%ld/", static_cast<long>(::getppid()));
    std::snprintf(path + n, sizeof path - n, "environ");
    std::string env;
    if (const int fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY); fd >= 0) {
        char buf[4096];
        constexpr std::size_t kMax = std::size_t{1} << 20;
        for (ssize_t got; env.size() < kMax && (got = ::read(fd, buf, sizeof buf)) > 0;)
            env.append(buf, static_cast<std::size_t>(got));
        ::close(fd);
    }
    bool preloads = false;
    std::string their_config;
    for (std::size_t at = 0; at < env.size();) {
        std::size_t end = env.find('\0', at);
        if (end == std::string::npos) end = env.size();
        if (env.compare(at, 11, "LD_PRELOAD=") == 0)
            preloads = env.substr(at, end - at).find("libmemlock_shim") != std::string::npos;
        else if (env.compare(at, 20, "MEMLOCK_SHIM_CONFIG=") == 0)
            their_config = env.substr(at + 20, end - at - 20);
        at = end + 1;
    }
    if (!preloads || their_config != (config ? config : "")) return false;
    std::snprintf(path + n, sizeof path - n, "maps");
    bool loaded = false;
    each_mapping([&loaded](std::uintptr_t, std::uintptr_t, const char *line) {
        return !(loaded = std::strstr(line, "/libmemlock_shim.so") != nullptr);
    }, path);
    return loaded;
}

// Does this process say as warnings what is wrong with the shim's environment (no config; a
// rule naming an object or function that is not loaded)? The process memlock-run started
// does (through further execs too), and one started without memlock-run unless its parent
// runs the shim under the same preload and a config that applies to every program
// (`every_program`: no `programs` list, so the parent read the same rules). The others are
// the programs those run in turn (a script's commands, a daemon's helpers: they inherit the
// preload), which say it as an info line. Under secure execution nothing in the environment
// is read, and the process warns.
bool warns_of_environment(bool secure, const char *config, bool every_program) {
    if (secure) return true;
    if (const char *v = std::getenv("MEMLOCK_RUN_PID"); v && *v) return std::to_string(::getpid()) == v;
    return !every_program || !parent_runs_same_shim(config);
}

// A rule naming what no loaded object has: while the shim starts, kept until there is
// something to say (and only then is warns_of_environment asked, for the level); later (a
// re-index after dlclose), said at the level found, or at warn.
std::vector<std::string> *g_unmatched_pending = nullptr;
LogLevel g_unmatched_level = LogLevel::warn;

void report_unmatched(const char *text) {
    if (g_unmatched_pending) g_unmatched_pending->emplace_back(text);
    else log_msg(g_unmatched_level, "%s", text);
}

// Fails closed unless the operator asked to run unprotected.
void startup_error(int status, const std::string &why, const std::string &exe) {
    if (g_run_unprotected) {
        log_msg(LogLevel::error, "%s", why.c_str());
        log_msg(LogLevel::warn, "running %s UNPROTECTED (MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected)",
                exe.c_str());
        return;
    }
    refuse(status, why, exe);
}

// Copies text into out[size] (NUL-terminated); when it is cut, never inside a UTF-8 sequence.
void copy_utf8(char *out, std::size_t size, const char *text) noexcept {
    std::size_t n = std::strlen(text);
    if (n >= size) {
        n = size - 1;
        while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xc0) == 0x80) --n;
    }
    std::memcpy(out, text, n);
    out[n] = '\0';
}

// Names the rules in the counters page, for memlock-inspect: entry i is rule i, and the last
// entry the last rule that has one of its own (later rules share its counters).
void describe_rules(const Config &config, StatsPage &page) noexcept {
    const unsigned n = stats_rule_entries(page);
    for (unsigned i = 0; i < n; ++i) {
        const Rule &r = config.rules[i];
        StatsRuleInfo &info = page.rule_info[i];
        char caller[256] = "";
        int used = 0;
        if (!r.module.empty()) {
            // One glob as it is; a list in braces: "module {libcrypto.so*, libssl.so*} depth 8".
            std::string globs = r.module.size() == 1 ? r.module[0] : "{";
            for (std::size_t g = 0; r.module.size() > 1 && g < r.module.size(); ++g)
                globs += r.module[g] + (g + 1 < r.module.size() ? ", " : "}");
            used = std::snprintf(caller, sizeof caller, "module %s depth %u", globs.c_str(),
                                 r.depth ? r.depth : kDefaultModuleDepth);
        }
        if (!r.symbol.empty() && used >= 0 && static_cast<std::size_t>(used) < sizeof caller)
            std::snprintf(caller + used, sizeof caller - static_cast<std::size_t>(used), "%ssymbol %s depth %u",
                          used ? ", " : "", r.symbol.c_str(), r.depth ? r.depth : kDefaultSymbolDepth);
        // A caller rule's size bounds follow its callers: "module libcrypto.so* depth 8, up to 16384 bytes".
        const std::size_t len = std::strlen(caller);
        if (len && (r.min_size > 0 || r.max_size != SIZE_MAX)) {
            if (r.max_size == SIZE_MAX)
                std::snprintf(caller + len, sizeof caller - len, ", from %zu bytes", r.min_size);
            else if (r.min_size == r.max_size)
                std::snprintf(caller + len, sizeof caller - len, ", %zu bytes", r.min_size);
            else if (r.min_size == 0)
                std::snprintf(caller + len, sizeof caller - len, ", up to %zu bytes", r.max_size);
            else
                std::snprintf(caller + len, sizeof caller - len, ", %zu to %zu bytes", r.min_size, r.max_size);
        }
        const bool cut = r.name.size() >= sizeof info.name || std::strlen(caller) >= sizeof info.caller;
        copy_utf8(info.name, sizeof info.name, r.name.c_str());
        copy_utf8(info.caller, sizeof info.caller, caller);
        info.flags = (caller[0] ? kStatsRuleCaller : 0) | (cut ? kStatsRuleTruncated : 0);
    }
}

// ---- an allocator before the shim -----------------------------------------------------------
//
// The program's malloc calls go to the first object in the global lookup order that defines
// malloc: an allocator preloaded before the shim, linked into the program or defined by it
// takes them all, and no rule sees one. Whether the calls reach the shim is found by making
// one, malloc(1) through the first definition before the shim, with the shim's next allocator
// replaced for the moment by one that notes calls from this thread (a wrapper may pass malloc
// on as calloc or memalign); the block goes back through the same object's free. A wrapper
// that forwards to the next definition (libmemusage, heaptrack) reaches the shim that way; a
// replacement (jemalloc, libc_malloc_debug.so, whose malloc calls libc's directly) does not.
// The shim's constructor runs before those of the objects preloaded ahead of it: a wrapper
// that can forward only once its own constructor has run may be taken for a replacement.

std::atomic<bool> g_probe_reached{false};
pthread_t g_prober;
NextAllocator g_probe_next;  // the next allocator while the probe runs

template <typename F, F NextAllocator::*M> struct Noting;
template <typename R, typename... A, R (*NextAllocator::*M)(A...) noexcept>
struct Noting<R (*)(A...) noexcept, M> {
    static R call(A... a) noexcept {
        if (pthread_equal(pthread_self(), g_prober)) g_probe_reached.store(true, std::memory_order_relaxed);
        return (g_probe_next.*M)(a...);
    }
};

// The next allocator's functions that allocate (free and malloc_usable_size do not).
#define MLSHIM_ALLOCATING(F) F(malloc) F(calloc) F(realloc) F(reallocarray) F(posix_memalign) \
    F(aligned_alloc) F(memalign) F(valloc) F(pvalloc)

// Stores the allocating functions of `n` into g_next.
void publish_next(const NextAllocator &n) noexcept {
#define MLSHIM_PUBLISH(field) __atomic_store_n(&g_next.field, n.field, __ATOMIC_RELEASE);
    MLSHIM_ALLOCATING(MLSHIM_PUBLISH)
#undef MLSHIM_PUBLISH
}

// Calls `f` (a malloc) as malloc(1) and frees the block with `release` (its object's free, or
// none: kept). Did the call reach the shim's next allocator from this thread?
bool probe_reaches_shim(void *f, void *release) noexcept {
    g_prober = pthread_self();
    g_probe_next = g_next;  // written before the noting functions are published, read after
    g_probe_reached.store(false, std::memory_order_relaxed);
    NextAllocator noting = g_next;
#define MLSHIM_NOTE(field) noting.field = &Noting<decltype(noting.field), &NextAllocator::field>::call;
    MLSHIM_ALLOCATING(MLSHIM_NOTE)
#undef MLSHIM_NOTE
    const int saved_errno = errno;
    publish_next(noting);
    void *p = reinterpret_cast<void *(*)(std::size_t)>(f)(1);
    publish_next(g_probe_next);
    if (p && release) reinterpret_cast<void (*)(void *)>(release)(p);
    errno = saved_errno;
    return g_probe_reached.load(std::memory_order_relaxed);
}

// `m`'s own definition of `name` that a reference of libc's version `version` binds to (the
// program's and its libraries' references do): one without a version (jemalloc's, the
// shim's) or of that version (libc_malloc_debug.so's hidden malloc@GLIBC_2.2.5); nullptr if
// `m` has none (another library's default version, malloc@@OTHER_1, binds no such reference).
// A handle's lookup searches the object first, then its dependencies.
void *own_symbol(const link_map *m, const char *name, const char *version) noexcept {
    void *h = m->l_prev ? dlopen(m->l_name, RTLD_LAZY | RTLD_NOLOAD) : dlopen(nullptr, RTLD_LAZY);
    if (!h) return nullptr;  // the handles stay open: objects loaded at start-up are never unloaded
    const ElfW(Sym) *sym = nullptr;
    auto defined_in_m = [&](void *f) {
        const link_map *map = nullptr;
        return symbol_at(f, &sym, &map) && map == m && sym->st_shndx != SHN_UNDEF;
    };
    if (void *f = dlsym(h, name); defined_in_m(f)) {
        const DynTables t = dyn_tables(m);
        if (!t.versym || !t.symtab || sym < t.symtab || (t.versym[sym - t.symtab] & 0x7fff) <= 1) return f;
    }
    if (void *f = version ? dlvsym(h, name, version) : nullptr; defined_in_m(f)) return f;
    return nullptr;
}

// The shim's own link map (nullptr if the loader cannot say).
const link_map *shim_map() noexcept {
    Dl_info info;
    void *shim = nullptr;
    if (!dladdr1(reinterpret_cast<void *>(&shim_map), &info, &shim, RTLD_DL_LINKMAP)) return nullptr;
    return static_cast<const link_map *>(shim);
}

// The object loaded before the shim whose malloc takes the program's calls (the executable's
// path when it is the program itself), or empty when they reach the shim: no object before
// it in the lookup order (the order of loading, for the objects loaded at start-up) defines
// malloc, or the first that does forwards to the next definition. An executable's undefined
// malloc with an address (the PLT entry of a non-PIE program that takes malloc's address) is
// not a definition. pre: the match window is closed (the probe passes through).
std::string allocator_before_shim() {
    const link_map *shim = shim_map();
    if (!shim) return {};
    const link_map *m = shim;
    while (m->l_prev) m = m->l_prev;
    const LibcTables libc = libc_tables();
    const char *version = libc_definition(libc, "malloc").version;
    void *f = nullptr;
    for (; m != shim; m = m->l_next)
        if ((f = own_symbol(m, "malloc", version)) != nullptr) break;
    std::string name;
    if (f && !probe_reaches_shim(f, own_symbol(m, "free", libc_definition(libc, "free").version)))
        name = m->l_name && *m->l_name ? m->l_name : self_exe();
    dlerror();  // the lookups that found nothing leave no error for the program to read
    return name;
}

// The object whose `name` takes the program's calls, when it is not the shim's own export
// (a sanitizer runtime preloaded before the shim intercepts pthread_create); empty when the
// shim's does.
std::string definition_before_shim(const char *name) {
    const link_map *shim = shim_map();
    if (!shim) return {};
    void *own = own_symbol(shim, name, nullptr);
    // The program's handle searches the global scope in load order (RTLD_DEFAULT, from the
    // shim, which is linked -Bsymbolic, would find the shim's own first).
    void *program = dlopen(nullptr, RTLD_LAZY);
    void *first = program ? dlsym(program, name) : nullptr;
    Dl_info info;
    std::string where;
    if (own != first) where = first && dladdr(first, &info) && info.dli_fname ? info.dli_fname : "?";
    dlerror();
    return where;
}

// The path of the library a valgrind tool that replaces the allocator preloads
// (is_valgrind_allocator_preload), when the program runs under one; empty otherwise.
std::string valgrind_preload() {
    std::string found;
    dl_iterate_phdr(
        [](dl_phdr_info *info, size_t, void *out) {
            const char *name = info->dlpi_name ? info->dlpi_name : "";
            const char *slash = std::strrchr(name, '/'), *base = slash ? slash + 1 : name;
            if (!is_valgrind_allocator_preload(base)) return 0;
            *static_cast<std::string *>(out) = name;
            return 1;
        },
        &found);
    return found;
}

// Says at `level`, and in the counters, which object takes the program's malloc calls before
// the shim, if one does. pre: the match window is closed.
void report_allocator_before(const std::string &exe, LogLevel level) {
    const std::string before = allocator_before_shim();
    if (before.empty()) return;
    if (g_stats) copy_utf8(g_stats->allocator_before, sizeof g_stats->allocator_before, before.c_str());
    const char *outcome = g_tracing ? "memlock-discover sees none of its heap blocks" : "nothing is protected";
    if (before == exe)
        log_msg(level, "%s defines its own malloc, %s: %s", exe.c_str(), kBeforeShim, outcome);
    else
        log_msg(level, "malloc is defined by %s, %s: %s (load libmemlock_shim.so before it)", before.c_str(),
                kBeforeShim, outcome);
}

void runtime_start() {
    std::string exe = self_exe();
    // Secure execution (setuid, setgid, file capabilities; /etc/ld.so.preload reaches such
    // programs): the environment belongs to the caller. Only the system config counts.
    const bool secure = ::getauxval(AT_SECURE) != 0;
    read_config_error_policy(secure);
    const char *env_path = secure ? nullptr : std::getenv("MEMLOCK_SHIM_CONFIG");
    const char *path = env_path;
    if (!path || !*path) {
        if (g_tracing) return;  // memlock-discover traces the program without protecting it
        struct stat st;
        if (::lstat(kSystemConfig, &st) != 0) {
            // Silent when loaded system-wide (/etc/ld.so.preload): every program on the host
            // would say it.
            const char *preload = secure ? nullptr : std::getenv("LD_PRELOAD");
            if (preload && std::strstr(preload, "libmemlock_shim"))
                log_msg(warns_of_environment(secure, nullptr, true) ? LogLevel::warn : LogLevel::info,
                        "MEMLOCK_SHIM_CONFIG is not set: nothing is protected, every allocation passes through");
            return;
        }
        if (!root_owned_config(kSystemConfig)) {
            // One line, and nothing read from the file.
            log_msg(LogLevel::warn, "%s: ignored (it and its directory must be owned by root and not writable by "
                                    "group or others): running unprotected", kSystemConfig);
            return;
        }
        path = kSystemConfig;
    }
    auto *config = new Config();
    std::string error;
    if (!load_config_file(path, *config, error)) return startup_error(kExitConfig, error, exe);
    if (exe.empty() && !config->programs.empty())
        log_msg(LogLevel::warn, "cannot tell which program this is (no /proc/self/exe, no AT_EXECFN): applying %s, "
                                "whose programs list may not name it", path);
    else if (!program_matches(*config, exe.c_str())) {
        log_msg(LogLevel::info, "%s: config %s does not apply to this program", exe.c_str(), path);
        return;
    }

    g_system_config = path == kSystemConfig;
    int log_fd = STDERR_FILENO;
    std::string log_error;
    if (config->log_file != "stderr") {
        const char *why = nullptr;
        log_fd = open_output(config->log_file.c_str(), O_APPEND, &why);
        if (log_fd < 0) {
            log_error = std::string(path) + ": log.file: cannot open " + config->log_file + ": " + why;
            // A program's own config: an error like any other. The system config: other
            // users' programs cannot open root's log, and none may be stopped by it; theirs
            // log to stderr as under "stderr", what a user sees kept to warnings.
            if (!g_system_config) return startup_error(kExitConfig, log_error, exe);
            log_fd = STDERR_FILENO;
            if (config->log_level > LogLevel::warn) config->log_level = LogLevel::warn;
        } else {
            // Out of the way of the numbers the program expects its own files to get.
            struct rlimit files;
            const rlim_t floor = ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur / 2 < kLogFdFloor
                                     ? files.rlim_cur / 2
                                     : kLogFdFloor;
            if (const int high = ::fcntl(log_fd, F_DUPFD_CLOEXEC, static_cast<int>(floor)); high >= 0) {
                ::close(log_fd);
                log_fd = high;
            }
        }
    }
    log_configure(config->log_level, log_fd);
    // A root daemon's broken log file is the operator's to know; a user's program is silent.
    if (!log_error.empty() && ::geteuid() == 0 && !secure)
        log_msg(LogLevel::warn, "%s: logging to stderr", log_error.c_str());

    RuleTable table = compile_rules(config->rules);
    g_config = config;
    g_config_pid = ::getpid();
    if (table.rules.empty()) {
        log_msg(LogLevel::info, "config %s has no rules: nothing to protect", path);
        // memlock-discover traces the program under a config without rules.
        if (g_tracing) report_allocator_before(exe, LogLevel::warn);
        return;
    }
    // Valgrind's tools that track the heap take malloc, free and realloc wherever they are
    // defined, the shim's too, but not its other allocation functions: a block the shim's
    // calloc or aligned_alloc gave out would reach valgrind's free, an invalid free there.
    // So the shim protects nothing under valgrind, and says so.
    if (const std::string vg = valgrind_preload(); !vg.empty()) {
        log_msg(path == kSystemConfig ? LogLevel::info : LogLevel::warn,
                "running under valgrind (%s is loaded), whose allocator takes the program's: nothing is "
                "protected, every allocation passes through",
                vg.c_str());
        return;
    }
    for (const SizeRule &r : table.rules) g_rules[g_nrules++] = r;
    // What this process cannot protect: a warning under a config given to this program, an
    // info line under the system config, which every program on the host reads, and in the
    // programs that the one memlock-run started runs in turn (a shell script's commands, a
    // daemon's helpers: they inherit the preload). The program memlock-run started keeps its
    // pid (MEMLOCK_RUN_PID), through further execs too. memlock-inspect warns in every case.
    const bool own_config = path != kSystemConfig && started_by_memlock_run_here(secure);
    const std::vector<CallerCondition> &conditions = table.conditions;
    if (!conditions.empty()) {
        // A rule naming an object or function this process has not loaded (a glob with a typo
        // protects nothing; most programs under the system config load none of what it names).
        // Without memlock-run, the programs a process under the same config runs in turn say
        // it as an info line too (warns_of_environment).
        std::vector<std::string> pending;
        g_unmatched_level = own_config ? LogLevel::warn : LogLevel::info;
        g_unmatched_pending = &pending;
        std::string why = callers_init(conditions, report_unmatched);
        g_unmatched_pending = nullptr;
        if (!why.empty()) return startup_error(kExitOsErr, why, exe);
        if (!pending.empty() && own_config && !warns_of_environment(secure, env_path, config->programs.empty()))
            g_unmatched_level = LogLevel::info;
        for (const std::string &text : pending) log_msg(g_unmatched_level, "%s", text.c_str());
    }
    g_stats = stats_create(true);
    if (g_stats) {
        g_stats->rules = g_nrules;
        bool all_lock = true;
        for (const auto &r : config->rules) all_lock &= (r.actions & kActionLock) != 0;
        if (all_lock) g_stats->flags |= kStatsAllRulesLock;
        describe_rules(*config, *g_stats);
    }
    ArenaOptions opts;
    opts.pool_bytes = config->policy.max_arena;
    opts.max_locked = config->policy.max_locked;
    opts.on_lock_failure = config->policy.on_lock_failure;
    opts.prealloc = config->policy.prealloc;
    opts.backing = config->policy.backing;
    opts.scrub_stack = config->policy.scrub_stack;
    int rc;
    {
        BusyScope busy;
        rc = g_arena.init(opts, table.pool_actions.data(), static_cast<unsigned>(table.pool_actions.size()),
                          g_stats, report);
    }
    if (rc)
        return startup_error(kExitOsErr, std::string("cannot set up the secure arena: ") + memlock_strerror(rc),
                             exe);
    g_single_threaded = static_cast<const char *>(dlsym(RTLD_DEFAULT, "__libc_single_threaded"));
    g_arena.set_fork_plan(&g_single_fork.plan);
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    if (opts.scrub_stack) {
        scrub_stack_prepare(true);
        // A thread looks its stack up in the shim's pthread_create, before its start routine:
        // behind another library's, that routine runs before the other library has set the
        // thread up, and the look-up's allocations would reach it.
        const std::string before = definition_before_shim("pthread_create");
        g_scrub_stack = before.empty();
        log_msg(LogLevel::info, "a free of a wiped block scrubs up to %zu bytes of the caller's dead stack",
                opts.scrub_stack);
        if (!before.empty())
            log_msg(LogLevel::warn, "policy.scrub_stack: %s defines pthread_create before the shim: only the main "
                                    "thread's stack is scrubbed", before.c_str());
    }
    if (g_stats) g_stats->active.store(1);
    g_active = true;
    log_msg(LogLevel::info, "protecting %u rule(s) from %s in %s", g_nrules, path, exe.c_str());
    report_allocator_before(exe, own_config ? LogLevel::warn : LogLevel::info);
    open_window(table.lo, table.hi);
}

// Writes the counters to stats.file ("%p" = the pid, "%%" = "%"), through a temporary file
// renamed into place, so that no reader sees it half written; not under secure execution.
// Only in the process that read the config: a fork child may run in a sandbox (sshd's
// seccomp child) that kills it for an open or a rename, so its exit path makes no system call
// malloc would not make.
void write_stats_file() noexcept {
    if (!g_config || g_config->stats_file.empty() || !g_stats || ::getpid() != g_config_pid) return;
    CancelOff no_cancel;  // open and close are cancellation points; exit may run on any thread
    // A setuid or setgid program's caller could leave a file of root's per run.
    if (::getauxval(AT_SECURE) != 0) return;
    char path[4096];
    std::size_t used = 0;
    const std::string &pattern = g_config->stats_file;
    for (std::size_t i = 0; i < pattern.size() && used + 24 < sizeof path - 32; ++i) {
        if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == 'p') {
            used += static_cast<std::size_t>(std::snprintf(path + used, sizeof path - used, "%d", ::getpid()));
            ++i;
        } else if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == '%') {
            path[used++] = '%';
            ++i;
        } else {
            path[used++] = pattern[i];
        }
    }
    path[used] = '\0';
    char tmp[sizeof path + 32];  // room for ".tmp.PID" after any path
    std::snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, ::getpid());
    static char json[kStatsJsonBytes];  // too large for a small thread stack; only this process's exit writes it
    std::size_t len = stats_format_json(*g_stats, stats_rule_rows(g_stats), json, sizeof json);
    int fd = open_output(tmp, O_EXCL);
    bool ok = fd >= 0 && write_unkilled(fd, json, len);  // past RLIMIT_FSIZE: EFBIG, not killed
    int err = errno;
    if (fd >= 0) {
        ok = ::close(fd) == 0 && ok;
        if (ok) ok = ::rename(tmp, path) == 0;
        err = errno;
        if (!ok) ::unlink(tmp);
    }
    // Under the system config, a program run by another user may not write root's directory.
    const bool expected = g_system_config && ::geteuid() != 0 && (err == EACCES || err == EPERM);
    if (!ok)
        log_msg(expected ? LogLevel::info : LogLevel::warn, "stats.file: cannot write %s: %s", path,
                memlock_strerror(err));
}

}  // namespace

SizeRule g_rules[kMaxRules];
unsigned g_nrules = 0;
SizeRuleTable g_size_rule;
__thread bool t_busy __attribute__((tls_model("initial-exec"))) = false;

NextAllocator g_next = {boot_malloc,  boot_free,          boot_calloc,  boot_realloc,
                        boot_reallocarray, boot_posix_memalign, boot_aligned_alloc, boot_memalign,
                        boot_valloc,  boot_pvalloc,       boot_usable};
MatchWindow g_window = {SIZE_MAX, 0};
SecureArena g_arena;

void open_window(std::size_t lo, std::size_t hi) noexcept {
    for (std::size_t k = 0; k < kSizeTable && k <= hi - lo; ++k)
        g_size_rule.rule[k] = static_cast<std::uint16_t>(first_size_rule(lo + k));
    // Publish the window last: from here on matching sizes take the slow path.
    g_window.lo = lo;
    g_window.span = hi - lo;
}

bool in_bootstrap(const void *p) noexcept {
    return static_cast<std::size_t>(static_cast<const unsigned char *>(p) - g_boot) < kBootBytes;
}

void *next_function(const char *name) noexcept {
    BusyScope busy;
    void *f = lookup<void *>(libc_tables(), name, nullptr);
    dlerror();  // a lookup that found nothing leaves no error for the program to read
    return f;
}

ArenaInfo arena_info() noexcept {
    if (!g_active || !g_stats) return {0, 0};
    return {g_stats->committed_bytes.load(std::memory_order_relaxed),
            stats_totals(*g_stats, stats_rule_rows(g_stats)).live_bytes()};
}

// Leaves errno as it found it: C makes errno 0 when main starts, and start-up looks up what
// may not exist (the system config, the files of a caller rule's modules).
void runtime_init() noexcept {
    const int saved_errno = errno;
    log_set_program(program_invocation_short_name);  // before the program can rewrite its argv
    resolve_next();
    // Never in secure execution: the environment (and the socket it names) is the caller's.
    g_tracing = ::getauxval(AT_SECURE) == 0 && trace_init();
    try {
        runtime_start();
    } catch (...) {
        // Only allocation failure can throw here; the program cannot be protected.
        fatal("out of memory while reading the configuration");
    }
    g_started = true;
    errno = saved_errno;
}

// Makes no system call in a fork child (see write_stats_file); nothing to remove: the
// counters live in a memfd the kernel frees with the process.
void runtime_fini() noexcept {
    BusyScope busy;
    write_stats_file();
    if (g_tracing) trace_exit();
}

// ---- slow paths ----------------------------------------------------------------------------

int shim_dlclose(void *handle) noexcept {
    static int (*next)(void *) = nullptr;
    if (!next) next = reinterpret_cast<int (*)(void *)>(dlsym(RTLD_NEXT, "dlclose"));
    fast_backtrace_forget();  // before the code goes, as well as after (callers_objects_changed)
    int rc = next ? next(handle) : -1;
    callers_objects_changed();
    return rc;
}

namespace {

// Before start-up: does a config name rules for this process, as far as can be told without
// reading it (MEMLOCK_SHIM_CONFIG, where the environment counts, or the system config)?
bool config_may_apply() noexcept {
    const char *env_path = ::getauxval(AT_SECURE) != 0 ? nullptr : std::getenv("MEMLOCK_SHIM_CONFIG");
    struct stat st;
    return (env_path && *env_path) || ::lstat(kSystemConfig, &st) == 0;
}

}  // namespace

DlopenFn next_dlopen() noexcept {
    static std::atomic<DlopenFn> next{nullptr};
    DlopenFn f = next.load(std::memory_order_acquire);
    if (f) return f;
    f = reinterpret_cast<DlopenFn>(dlsym(RTLD_NEXT, "dlopen"));
    if (!f) fatal("cannot find the next dlopen (dlsym RTLD_NEXT failed)");
    next.store(f, std::memory_order_release);
    return f;
}

// A library opened with RTLD_DEEPBIND looks its symbols up in itself and its own dependencies
// before the program's scope: its malloc, free and realloc are glibc's, past the shim, and
// glibc aborts on an arena block it is given ("free(): invalid pointer"; FreeRADIUS frees
// blocks its server library allocated from modules it opens so). So while rules are in force the
// library binds as any other: to the shim first. The price: where the library and the program
// define one name twice, the library now gets the program's (what RTLD_DEEPBIND avoids).
// Before the shim has started (a constructor of one of the program's libraries, which runs
// before the shim's) the flag is dropped too where a config will be read: the rules that come
// into force afterwards would meet the library bound past the shim.
int without_deepbind(const char *file, int mode) noexcept {
    if (!g_active && (g_started || !config_may_apply())) return mode;
    static std::atomic<bool> said{false};
    if (!said.exchange(true, std::memory_order_relaxed)) {
        BusyScope busy;
        log_msg(LogLevel::warn,
                "dlopen %s: RTLD_DEEPBIND dropped, so that the library's free() reaches the shim (glibc's "
                "aborts on the arena's blocks); said once",
                file ? file : "(the program)");
    }
    return mode & ~RTLD_DEEPBIND;
}

// Lock-free, so that a fork in the middle of the first lookup leaves nothing held: threads
// that race look up alike, and one of them publishes its answer; a child forked while it did
// looks up on each call.
NextJemalloc next_jemalloc() noexcept {
    static NextJemalloc published;
    static std::atomic<int> state{0};  // 0: not looked up, 1: being published, 2: published
    if (state.load(std::memory_order_acquire) == 2) return published;
    NextJemalloc n;
    n.mallocx = reinterpret_cast<decltype(n.mallocx)>(dlsym(RTLD_NEXT, "mallocx"));
    n.rallocx = reinterpret_cast<decltype(n.rallocx)>(dlsym(RTLD_NEXT, "rallocx"));
    n.xallocx = reinterpret_cast<decltype(n.xallocx)>(dlsym(RTLD_NEXT, "xallocx"));
    n.sallocx = reinterpret_cast<decltype(n.sallocx)>(dlsym(RTLD_NEXT, "sallocx"));
    n.dallocx = reinterpret_cast<decltype(n.dallocx)>(dlsym(RTLD_NEXT, "dallocx"));
    n.sdallocx = reinterpret_cast<decltype(n.sdallocx)>(dlsym(RTLD_NEXT, "sdallocx"));
    n.nallocx = reinterpret_cast<decltype(n.nallocx)>(dlsym(RTLD_NEXT, "nallocx"));
    n.mallctl = reinterpret_cast<decltype(n.mallctl)>(dlsym(RTLD_NEXT, "mallctl"));
    n.mallctlnametomib = reinterpret_cast<decltype(n.mallctlnametomib)>(dlsym(RTLD_NEXT, "mallctlnametomib"));
    n.mallctlbymib = reinterpret_cast<decltype(n.mallctlbymib)>(dlsym(RTLD_NEXT, "mallctlbymib"));
    // A name not found leaves its error for the program's next dlerror(), which would report a
    // failure of a call the program did not make: taken back, as a successful call leaves it.
    if (!n.mallocx || !n.rallocx || !n.xallocx || !n.sallocx || !n.dallocx || !n.sdallocx || !n.nallocx ||
        !n.mallctl || !n.mallctlnametomib || !n.mallctlbymib)
        dlerror();
    int expected = 0;
    if (state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
        published = n;
        state.store(2, std::memory_order_release);
    }
    return n;
}

namespace {

// A call of syscall(3) or clone(3) before the shim has looked up libc's (resolve_next, at its
// start-up) may come from a program's own allocator: one preloaded before the shim (jemalloc)
// or linked into the program (rustc's), whose start-up calls syscall(3) under the lock its
// malloc takes. resolve_next's dlopen allocates through that malloc: it cannot be called then.

// Is clone(3)'s next definition known? Looks it up first, alone, if not yet: dlsym, with no
// dlopen and no lock of the shim's. (On glibc before 2.34 a thread's first dlsym allocates its
// error state; an allocator that calls clone(3) in its start-up is not known.) Threads that race
// store the same address. false, with errno = ENOSYS, if libc has none.
template <typename F> bool next_known(F &next, const char *name) noexcept {
    if (!__atomic_load_n(&next, __ATOMIC_ACQUIRE))
        __atomic_store_n(&next, reinterpret_cast<F>(dlsym(RTLD_NEXT, name)), __ATOMIC_RELEASE);
    if (__atomic_load_n(&next, __ATOMIC_ACQUIRE)) return true;
    errno = ENOSYS;
    return false;
}

#if defined(__x86_64__) || defined(__aarch64__)
// syscall(3) before libc's is known: the system call instruction itself, with glibc's
// contract on the result (-1 and errno for -4095 to -1). No lookup at all: even dlsym
// allocates on glibc before 2.34.
long direct_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) noexcept {
#if defined(__x86_64__)
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    long rc;
    __asm__ volatile("syscall"
                     : "=a"(rc)
                     : "a"(number), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
#else
    register long x8 __asm__("x8") = number;
    register long x0 __asm__("x0") = a1;
    register long x1 __asm__("x1") = a2;
    register long x2 __asm__("x2") = a3;
    register long x3 __asm__("x3") = a4;
    register long x4 __asm__("x4") = a5;
    register long x5 __asm__("x5") = a6;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory", "cc");
    const long rc = x0;
#endif
    if (rc < 0 && rc > -4096) {
        errno = static_cast<int>(-rc);
        return -1;
    }
    return rc;
}
#endif

// syscall(number, ...) through libc's, or before that is known (see direct_syscall).
long next_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) noexcept {
    if (auto next = __atomic_load_n(&g_next_syscall, __ATOMIC_ACQUIRE)) return next(number, a1, a2, a3, a4, a5, a6);
#if defined(__x86_64__) || defined(__aarch64__)
    return direct_syscall(number, a1, a2, a3, a4, a5, a6);
#else
    if (!next_known(g_next_syscall, "syscall")) return -1;
    return g_next_syscall(number, a1, a2, a3, a4, a5, a6);
#endif
}

// syscall(number, ...) before libc's is known, and for a clone that makes a fork child
// (between the shim's fork handlers).
__attribute__((noinline)) long syscall_slow(long number, long a1, long a2, long a3, long a4, long a5, long a6) noexcept {
    if (number == SYS_sigaltstack) return shim_sigaltstack(reinterpret_cast<const stack_t *>(a1), reinterpret_cast<stack_t *>(a2));
    if (number == SYS_munlock) return shim_munlock(reinterpret_cast<const void *>(a1), static_cast<std::size_t>(a2));
    if (number == SYS_madvise) return shim_madvise(reinterpret_cast<void *>(a1), static_cast<std::size_t>(a2), static_cast<int>(a3));
    if (number == SYS_munlockall || number == SYS_mlockall) return shim_lockall(number, static_cast<int>(a1));
    if (number == SYS_mlock || number == SYS_mlock2)
        return shim_mlock(number, reinterpret_cast<const void *>(a1), static_cast<std::size_t>(a2), static_cast<unsigned>(a3));
    if (!g_active || !makes_fork_child(number, a1, a2)) return next_syscall(number, a1, a2, a3, a4, a5, a6);
    atfork_prepare();
    long rc = next_syscall(number, a1, a2, a3, a4, a5, a6);
    int saved = errno;
    if (rc == 0)
        atfork_child();
    else
        atfork_parent();
    errno = saved;
    return rc;
}

}  // namespace

// sigaltstack(2) as libc's, noting the thread's signal stack for the stack scrubber.
int shim_sigaltstack(const stack_t *ss, stack_t *old) noexcept {
    const long rc = next_syscall(SYS_sigaltstack, reinterpret_cast<long>(ss), reinterpret_cast<long>(old), 0, 0, 0, 0);
    if (rc == 0) note_signal_stack(ss);
    return static_cast<int>(rc);
}

namespace {

int munlock_piece(std::uintptr_t lo, std::uintptr_t hi) noexcept {
    return next_syscall(SYS_munlock, static_cast<long>(lo), static_cast<long>(hi - lo), 0, 0, 0, 0) == 0 ? 0 : errno;
}

int dodump_piece(std::uintptr_t lo, std::uintptr_t hi) noexcept {
    return next_syscall(SYS_madvise, static_cast<long>(lo), static_cast<long>(hi - lo), MADV_DODUMP, 0, 0, 0) == 0 ? 0
                                                                                                               : errno;
}

// The whole pages [lo, hi) a call on [addr, addr + len) covers, as the kernel rounds them.
// False for an empty or wrapping range (the kernel answers those itself).
bool page_span(const void *addr, std::size_t len, std::uintptr_t &lo, std::uintptr_t &hi) noexcept {
    const std::uintptr_t page = static_cast<std::uintptr_t>(::getpagesize()), at = reinterpret_cast<std::uintptr_t>(addr);
    std::uintptr_t end;
    if (!len || __builtin_add_overflow(at, len, &end) || __builtin_add_overflow(end, page - 1, &end)) return false;
    lo = at & ~(page - 1);
    hi = end & ~(page - 1);
    return true;
}

// Can RLIMIT_MEMLOCK be why the program's own mlock of [addr, addr+len) failed, and can the
// call succeed once the arena gives back what it locked and has not used? Not with
// CAP_IPC_LOCK or no limit, nor for more pages than the limit, nor for a range with pages not
// mapped: mlock answers ENOMEM for those too, and the arena would give up its locks for a call
// that fails all the same. Preserves errno.
bool own_lock_may_fit(const void *addr, std::size_t len) noexcept {
    const int saved = errno;
    std::uintptr_t lo, hi;
    const std::size_t limit = backing_lock_limit();
    bool fits = limit != SIZE_MAX && page_span(addr, len, lo, hi) && hi - lo <= limit;
    // msync(MS_ASYNC) does nothing but answer ENOMEM when part of the range is not mapped.
    if (fits) fits = next_syscall(SYS_msync, static_cast<long>(lo), static_cast<long>(hi - lo), MS_ASYNC, 0, 0, 0) == 0;
    errno = saved;
    return fits;
}

int pieces_result(int err) noexcept {
    if (!err) return 0;
    errno = err;
    return -1;
}

}  // namespace

int shim_munlock(const void *addr, std::size_t len) noexcept {
    std::uintptr_t lo, hi;
    if (!g_active || !page_span(addr, len, lo, hi))
        return static_cast<int>(next_syscall(SYS_munlock, reinterpret_cast<long>(addr), static_cast<long>(len), 0, 0, 0, 0));
    return pieces_result(g_arena.for_each_unprotected(lo, hi, kActionLock, munlock_piece));
}

int shim_madvise(void *addr, std::size_t len, int advice) noexcept {
    std::uintptr_t lo, hi;
    if (advice != MADV_DODUMP || !g_active || !page_span(addr, len, lo, hi) || lo != reinterpret_cast<std::uintptr_t>(addr))
        return static_cast<int>(
            next_syscall(SYS_madvise, reinterpret_cast<long>(addr), static_cast<long>(len), advice, 0, 0, 0));
    return pieces_result(g_arena.for_each_unprotected(lo, hi, kActionDontdump, dodump_piece));
}

// mlock(2) (number SYS_mlock) and mlock2(2) as libc's. Refused by RLIMIT_MEMLOCK while the
// arena holds pages locked at start-up that it has not used, tried again once it has given
// them back: without the shim the program's lock would fit.
int shim_mlock(long number, const void *addr, std::size_t len, unsigned flags) noexcept {
    auto call = [&] {
        return static_cast<int>(next_syscall(number, reinterpret_cast<long>(addr), static_cast<long>(len), flags, 0, 0, 0));
    };
    const int rc = call();
    if (rc == 0 || !g_active || (errno != ENOMEM && errno != EAGAIN) || !own_lock_may_fit(addr, len)) return rc;
    const int err = errno;
    const std::size_t given = g_arena.give_back_unused_lock(err);
    if (!given) {
        errno = err;
        return rc;
    }
    log_msg(LogLevel::info,
            "the program's own mlock needs RLIMIT_MEMLOCK that arena pages locked at start-up and not used "
            "yet held: %zu KiB given back; matching allocations beyond what stays locked follow "
            "policy.on_lock_failure",
            given >> 10);
    return call();
}

int shim_lockall(long number, int flags) noexcept {
    backing_lockall_begin();
    const long rc = next_syscall(number, flags, 0, 0, 0, 0, 0);
    backing_lockall_end();
    if (number == SYS_munlockall && rc == 0 && g_active) {
        const int saved = errno;
        g_arena.relock_after_munlockall(t_fork_locked);  // in an atfork handler after the shim's
        errno = saved;
    }
    return static_cast<int>(rc);
}

long shim_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) noexcept {
    long (*next)(long, ...) = __atomic_load_n(&g_next_syscall, __ATOMIC_ACQUIRE);
    // The numbers makes_fork_child looks at further, sigaltstack (shim_sigaltstack), the
    // calls that could undo an arena page's protection (shim_munlock) or that the arena's
    // locked pages could make fail (shim_mlock), and mlockall, which the arena's relock must
    // see (shim_lockall); every other call goes straight through.
    const bool slow = number == SYS_clone || number == SYS_sigaltstack || number == SYS_munlock || number == SYS_madvise ||
                      number == SYS_munlockall || number == SYS_mlockall || number == SYS_mlock || number == SYS_mlock2
#ifdef SYS_clone3
                       || number == SYS_clone3
#endif
#ifdef SYS_fork
                       || number == SYS_fork
#endif
        ;
    if (__builtin_expect(!next || slow, 0)) return syscall_slow(number, a1, a2, a3, a4, a5, a6);
    return next(number, a1, a2, a3, a4, a5, a6);
}

namespace {

struct ThreadStart {
    void *(*fn)(void *);
    void *arg;
};

// The stack's look-up allocates (this free, pthread_getattr_np's CPU set) before the
// program's start routine runs, which may be the first to block signals: until then no signal
// handler runs on the thread. One that ran while glibc's allocator held a lock, and reached a
// cancellation point with the thread's cancellation pending, would end the thread with that
// lock held, and every thread that later needed it (new threads, exiting ones) would hang.
// And the look-up reads /proc/self/maps for a stack without glibc's guard (a guard size of 0,
// a stack of the program's): open and read are cancellation points, and a thread cancelled as
// soon as it was made would be unwound through the shim's noexcept look-up (std::terminate)
// before its start routine ran. So cancellation is off until the start routine runs, which
// meets the pending cancellation at its first cancellation point, as without the shim.
// Returns with every signal still blocked, and the creator's mask in `was`.
__attribute__((noinline)) void thread_look_up(void *p, sigset_t *was) noexcept {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, was);
    CancelOff no_cancel;
    g_next.free(p);
    scrub_stack_prepare(false);
}

// A signal left pending meanwhile is handled as the creator's mask comes back, and its
// handler may act on the thread's pending cancellation (a write, say): the forced unwind then
// passes through this frame, which must have no cleanup (no object with a destructor), so
// that it has no table of the calls that may throw, where glibc's pthread_sigmask, declared
// not to throw, would be missing and the unwinder would call std::terminate.
void *thread_start(void *p) {
    const ThreadStart start = *static_cast<ThreadStart *>(p);
    sigset_t was;
    thread_look_up(p, &was);
    pthread_sigmask(SIG_SETMASK, &was, nullptr);
    return start.fn(start.arg);
}

}  // namespace

int shim_pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) noexcept {
    if (!next_known(g_next_pthread_create, "pthread_create")) return ENOSYS;
    if (!g_scrub_stack || !fn) return g_next_pthread_create(thread, attr, fn, arg);
    auto *start = static_cast<ThreadStart *>(g_next.malloc(sizeof(ThreadStart)));
    if (!start) return EAGAIN;
    *start = {fn, arg};
    const int rc = g_next_pthread_create(thread, attr, thread_start, start);
    if (rc != 0) g_next.free(start);
    return rc;
}

// glibc's clone(fn, stack, flags, arg, ...) runs no atfork handler either (sandboxes and
// container tools make their children so, in new namespaces). For a process with memory of
// its own (no CLONE_VM) the shim runs its fork handlers around it: prepare, and the parent's
// after the call, also when it fails; the child's in the child, on its new stack, before
// fn(arg). So clone gets clone_child_start and a CloneStart in this frame, which the child
// reads in its own copy of the parent's memory. Everything else passes through unchanged:
// CLONE_VM (a thread, posix_spawn's child), fn or stack NULL (glibc's EINVAL), and
// CLONE_SETTLS: the child runs on a thread pointer the caller made, through which the
// handler's thread-local state cannot be reached; that child's arena stays unlocked, and
// the shim says so once.
namespace {

struct CloneStart {
    int (*fn)(void *);
    void *arg;
};

int clone_child_start(void *start) {
    const auto *s = static_cast<const CloneStart *>(start);
    atfork_child();
    return s->fn(s->arg);
}

}  // namespace

int shim_clone(int (*fn)(void *), void *stack, int flags, void *arg, void *ptid, void *tls, void *ctid) noexcept {
    if (!next_known(g_next_clone, "clone")) return -1;
    const auto f = static_cast<unsigned long>(static_cast<unsigned>(flags));
    if (scrub_stack_clone_begin(f)) {
        const int rc = g_next_clone(fn, stack, flags, arg, ptid, tls, ctid);
        const int saved = errno;
        scrub_stack_clone_end();
        errno = saved;
        return rc;
    }
    if (!g_active || (f & kSharedMemory) || !fn || !stack) return g_next_clone(fn, stack, flags, arg, ptid, tls, ctid);
    if (f & CLONE_SETTLS) {
        static std::atomic<bool> warned{false};
        if (!warned.exchange(true)) {
            const int saved = errno;
            BusyScope busy;
            log_msg(LogLevel::warn, "clone with CLONE_SETTLS and without CLONE_VM: the child's arena is not "
                                    "locked again (it may go to swap; still wiped and out of core dumps)");
            errno = saved;
        }
        return g_next_clone(fn, stack, flags, arg, ptid, tls, ctid);
    }
    CloneStart start{fn, arg};
    atfork_prepare();
    const int rc = g_next_clone(clone_child_start, stack, flags, &start, ptid, tls, ctid);
    const int saved = errno;
    atfork_parent();
    errno = saved;
    return rc;
}

// _Fork (glibc 2.34 and later) makes a fork child without running the atfork handlers,
// and may be called from a signal handler. The shim runs no handler around it either (its
// prepare handler takes locks); the child only makes its memory its own, which takes none:
// otherwise its arena would stay unlocked and its counters would be its parent's.
//
// Where libc has no _Fork (glibc before 2.34), the shim's export is what a program finds when
// it looks for one: it is then fork(), what such a program falls back to when it finds none
// (the fork handlers run, the shim's too). After start-up (resolve_next has looked _Fork up)
// nothing is looked up here: dlsym allocates, and this may run in a signal handler.
MLSHIM_FORK_CHILD_TEXT pid_t shim_fork_bare() noexcept {
    pid_t (*next)() = __atomic_load_n(&g_next_fork_bare, __ATOMIC_ACQUIRE);
    if (!next && !g_next_resolved.load(std::memory_order_acquire) && next_known(g_next_fork_bare, "_Fork"))
        next = g_next_fork_bare;
    if (!next) return ::fork();
    if (g_active) fork_gate_open();
    const pid_t pid = next();
    if (pid == 0 && g_active) {
        const int saved = errno;
        own_child_memory(t_fork_locked || !single_threaded());
        errno = saved;
        fork_gate_release();
    } else if (g_active) {
        fork_gate_wait();
    }
    return pid;
}

// A matching allocation the arena cannot hold (its address space is used up, or the block is
// larger than the arena) under policy fallback: the next allocator serves it, unprotected,
// as it would without the shim. Counted, and reported once per process, only when the next
// allocator serves it: a request it refuses too (more than any allocator can give) fails as it
// would without the shim, and nothing left the arena. errno is the next allocator's: the
// caller's on success (alloc_in restores it), its error otherwise.
__attribute__((noinline, cold)) void *serve_from_next(std::size_t n, std::size_t align, bool zero) noexcept {
    static std::atomic<bool> warned{false};
    void *p = align <= 16 ? (zero ? g_next.calloc(1, n) : g_next.malloc(n)) : g_next.memalign(align, n);
    if (!p) return nullptr;
    if (g_stats) g_stats->overflows.fetch_add(1);
    if (!warned.exchange(true)) {
        BusyScope busy;
        log_msg(LogLevel::warn,  // keeps errno
                "the secure arena is full: matching allocations are served by the program's allocator, "
                "unprotected (counted in overflows): %s", g_arena.space_why());
    }
    return p;
}

// A block from pool `pool`, counted for rule entry `rule`. No BusyScope here: the arena never
// allocates, and reports through report(), which sets it.
void *alloc_in(unsigned pool, unsigned rule, std::size_t n, std::size_t align, bool zero) noexcept {
    // A size no allocator can serve (glibc refuses it too): ENOMEM, and neither counted as
    // denied nor reported, since it says nothing about the arena.
    if (n > static_cast<std::size_t>(PTRDIFF_MAX)) return errno = ENOMEM, nullptr;
    const int saved = errno;
    void *p = g_arena.alloc(pool, n, align, rule);
    if (!p) {
        if (!g_arena.serves_overflow()) return nullptr;
        errno = saved;  // the arena's ENOMEM is not the answer: the next allocator's is
        return serve_from_next(n, align, zero);
    }
    if (zero && !g_arena.wipes(p)) std::memset(p, 0, n);
    return p;
}

void *arena_alloc(int rule, std::size_t n, std::size_t align, bool zero) noexcept {
    const auto r = static_cast<unsigned>(rule);
    return alloc_in(g_rules[r].pool, stats_rule_index(r), n, align, zero);
}

namespace {

// arena_malloc() past the arena's fast path: a cached block of another class (or a thread
// that counts in the shared slot), else a block from the pool.
__attribute__((noinline)) void *arena_malloc_uncached(int rule, std::size_t n) noexcept {
    const auto r = static_cast<unsigned>(rule);
    if (void *p = g_arena.alloc_cached(g_rules[r].pool, n, stats_rule_index(r))) return p;
    return alloc_in(g_rules[r].pool, stats_rule_index(r), n, 16, false);
}

}  // namespace

// The fast path makes no call: rule and n stay in their registers for the tail call.
MLSHIM_HOT_ENTRY void *arena_malloc(int rule, std::size_t n) noexcept {
    const auto r = static_cast<unsigned>(rule);
    if (void *p = g_arena.alloc_fast(g_rules[r].pool, n, stats_rule_index(r))) return p;
    return arena_malloc_uncached(rule, n);
}

std::size_t usable_other(void *p) noexcept {
    if (in_bootstrap(p)) return boot_size(p);
    return g_next.malloc_usable_size(p);
}

void free_other(void *p) noexcept {
    if (in_bootstrap(p)) return;
    g_next.free(p);
}

bool grow_owned_in_place(void *p, std::size_t have, std::size_t n, bool zero) noexcept {
    if (!g_arena.grow_in_place(p, n)) return false;
    // Zero up to the usable size the run now has (sallocx's answer), not only to n.
    if (zero && !g_arena.wipes(p)) std::memset(static_cast<char *>(p) + have, 0, g_arena.usable_size(p) - have);
    return true;
}

// A matched block stays in the arena, whatever size it grows or shrinks to. pre: owns(p), n > 0.
void *realloc_owned(void *p, std::size_t n, std::size_t align, bool zero, const char *what) noexcept {
    std::size_t have = g_arena.usable_size(p, what);
    const bool aligned = reinterpret_cast<std::uintptr_t>(p) % align == 0;
    if (aligned && n <= have && (n > have / 2 || have <= 16)) return p;
    if (aligned && n > have && grow_owned_in_place(p, have, n, zero)) return p;
    int saved = errno;
    // A shrink moves only within the arena, and only where the lock policy has nothing to
    // act on: with no room, the block stays where it is. Under fallback a full arena just
    // says no (new blocks would go to the next allocator, unprotected); under deny and
    // abort, only a block the thread's cache holds is taken (its blocks are aligned to 16
    // only: a larger alignment keeps the block), since making room could count a denial or
    // stop the program for a request that keeping the block answers.
    const unsigned pool = g_arena.pool_of(p), rule = g_arena.rule_of(p);
    const bool grows = n > have || !aligned;
    void *q = grows                       ? alloc_in(pool, rule, n, align, zero)
              : g_arena.serves_overflow() ? g_arena.alloc(pool, n, align, rule)
              : align <= 16               ? g_arena.alloc_cached(pool, n, rule)
                                          : nullptr;
    if (q && !grows && g_arena.locked(p) && !g_arena.locked(q)) {
        g_arena.free(q);  // the lock budget is spent (fallback serves unlocked): keep the lock
        q = nullptr;
    }
    if (!q) {
        if (grows) return nullptr;  // errno = ENOMEM, p untouched
        errno = saved;              // a shrink never fails: keep the block as it is
        return p;
    }
    std::memcpy(q, p, n < have ? n : have);
    g_arena.free(p);  // wipes the old copy
    return q;
}

void *slow_realloc(void *p, std::size_t n, const void *ra) noexcept {
    if (g_arena.owns(p)) {
        if (n == 0) {  // glibc: realloc(p, 0) frees p and returns NULL
            g_arena.usable_size(p, "realloc(): invalid pointer");  // a dead block is named as realloc's
            g_arena.free(p);
            return nullptr;
        }
        return realloc_owned(p, n, 16, false, "realloc(): invalid pointer");
    }
    int rule = n == 0 || !may_match(n) ? -1 : match(n, ra);
    if (rule < 0) {
        if (!in_bootstrap(p)) return g_next.realloc(p, n);
        if (n == 0) return nullptr;  // as glibc: realloc(p, 0) frees (bootstrap blocks are never reused)
        void *q = g_next.malloc(n);
        if (q) std::memcpy(q, p, n < boot_size(p) ? n : boot_size(p));
        return q;
    }
    // The block comes to match: move it into the arena and wipe the copy left behind.
    void *q = arena_alloc(rule, n, 16, false);
    if (!q) return nullptr;
    if (p) {
        std::size_t have = usable_other(p);
        std::memcpy(q, p, n < have ? n : have);
        if (!in_bootstrap(p)) {
            memlock_wipe(p, have);
            g_next.free(p);
        }
    }
    return q;
}

}  // namespace mlshim
