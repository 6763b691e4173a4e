// memlock.cpp - the C ABI of memlock.h: every memory-management system call of the project.
//
// Rules for this file: no heap (malloc/new), no stdio, no exceptions. The shim calls these
// functions from inside its malloc. Every function preserves the caller's errno.
#include "memlock.h"

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>

#if defined(__unix__) || defined(__APPLE__)
#define MEMLOCK_HAVE_UNIX 1
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#else
#define MEMLOCK_HAVE_UNIX 0
#endif

#if MEMLOCK_HAVE_UNIX && defined(__linux__) && defined(MADV_DONTDUMP) && defined(MADV_DODUMP)
#define MEMLOCK_HAVE_DONTDUMP 1
#else
#define MEMLOCK_HAVE_DONTDUMP 0
#endif

#ifndef MEMLOCK_VERSION
#error "MEMLOCK_VERSION must be defined by the build (-DMEMLOCK_VERSION='\"x.y.z\"')"
#endif

namespace {

// Restores errno on scope exit: the library never changes the caller's errno.
class ErrnoKeeper {
public:
    ErrnoKeeper() noexcept : saved_(errno) {}
    ~ErrnoKeeper() { errno = saved_; }
    ErrnoKeeper(const ErrnoKeeper &) = delete;
    ErrnoKeeper &operator=(const ErrnoKeeper &) = delete;

private:
    int saved_;
};

// ---- real providers: 0 or errno, errno preserved ------------------------------------------
// On Linux the kernel is called directly, not through the libc wrappers: sanitizer runtimes
// intercept mlock/munlock as silent no-ops, and an interposing allocator must not depend on
// whatever else interposes those names. On x86-64 and aarch64 the call is the instruction
// itself: the answer comes back as -errno, so neither libc's syscall() nor errno is touched,
// and a fork child's relock (shim/arena.cpp) reads no libc page its own start did not (each
// would be one more page fault in every child).
#if MEMLOCK_HAVE_UNIX && defined(__linux__)
#if defined(__x86_64__)
int kernel_call(long nr, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r < 0 && r > -4096 ? static_cast<int>(-r) : 0;
}
#elif defined(__aarch64__)
int kernel_call(long nr, long a, long b, long c) {
    register long x8 __asm__("x8") = nr;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory", "cc");
    return x0 < 0 && x0 > -4096 ? static_cast<int>(-x0) : 0;
}
#else
int kernel_call(long nr, long a, long b, long c) {
    ErrnoKeeper keep;
    return ::syscall(nr, a, b, c) == -1 ? errno : 0;
}
#endif
long arg(const void *p) { return static_cast<long>(reinterpret_cast<std::uintptr_t>(p)); }
long arg(size_t n) { return static_cast<long>(n); }

// For calls that answer 0 on success (mlock, munlock, madvise, mlock2).
int real_mlock(const void *addr, size_t len) { return kernel_call(SYS_mlock, arg(addr), arg(len), 0); }
int real_munlock(const void *addr, size_t len) { return kernel_call(SYS_munlock, arg(addr), arg(len), 0); }
int real_madvise(void *addr, size_t len, int advice) {
    return kernel_call(SYS_madvise, arg(addr), arg(len), advice);
}
int real_mlock2(const void *addr, size_t len, unsigned flags) {
#ifdef SYS_mlock2
    return kernel_call(SYS_mlock2, arg(addr), arg(len), static_cast<long>(flags));
#else
    (void)addr, (void)len, (void)flags;
    return ENOSYS;
#endif
}
// The kernel answers ENOSYS both when it lacks memfd_secret and when secretmem.enable=0:
// the module parameter tells the two apart.
bool secretmem_disabled_at_boot() {
    const int fd = ::open("/sys/module/secretmem/parameters/enable", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char c = 0;
    const ssize_t n = ::read(fd, &c, 1);
    ::close(fd);
    return n == 1 && (c == 'N' || c == 'n' || c == '0');
}
int real_memfd_secret(unsigned flags, int *fd) {
    ErrnoKeeper keep;
#ifdef SYS_memfd_secret
    const long r = ::syscall(SYS_memfd_secret, flags);
    if (r >= 0) {
        *fd = static_cast<int>(r);
        return 0;
    }
    if (errno == ENOSYS && secretmem_disabled_at_boot()) return MEMLOCK_ESECRET_DISABLED;
    return errno;
#else
    (void)flags, (void)fd;
    return ENOSYS;
#endif
}
#elif MEMLOCK_HAVE_UNIX
int real_mlock(const void *addr, size_t len) {
    ErrnoKeeper keep;
    return ::mlock(addr, len) == 0 ? 0 : errno;
}
int real_munlock(const void *addr, size_t len) {
    ErrnoKeeper keep;
    return ::munlock(addr, len) == 0 ? 0 : errno;
}
int real_madvise(void *addr, size_t len, int advice) {
    ErrnoKeeper keep;
    return ::madvise(addr, len, advice) == 0 ? 0 : errno;
}
int real_mlock2(const void *, size_t, unsigned) { return ENOSYS; }
int real_memfd_secret(unsigned, int *) { return ENOSYS; }
#else
int real_mlock(const void *, size_t) { return MEMLOCK_EUNSUPPORTED; }
int real_munlock(const void *, size_t) { return MEMLOCK_EUNSUPPORTED; }
int real_madvise(void *, size_t, int) { return MEMLOCK_EUNSUPPORTED; }
int real_mlock2(const void *, size_t, unsigned) { return MEMLOCK_EUNSUPPORTED; }
int real_memfd_secret(unsigned, int *) { return MEMLOCK_EUNSUPPORTED; }
#endif

// ---- the seam: one relaxed atomic load per call ------------------------------------------
using MlockFn = int (*)(const void *, size_t);
using MadviseFn = int (*)(void *, size_t, int);
using Mlock2Fn = int (*)(const void *, size_t, unsigned);
using SecretFn = int (*)(unsigned, int *);

std::atomic<MlockFn> g_mlock{&real_mlock};
std::atomic<MlockFn> g_munlock{&real_munlock};
std::atomic<MadviseFn> g_madvise{&real_madvise};
std::atomic<Mlock2Fn> g_mlock2{&real_mlock2};
std::atomic<SecretFn> g_memfd_secret{&real_memfd_secret};

int call_mlock(void *addr, size_t len) { return g_mlock.load(std::memory_order_relaxed)(addr, len); }
int call_munlock(void *addr, size_t len) {
    return g_munlock.load(std::memory_order_relaxed)(addr, len);
}
#if MEMLOCK_HAVE_DONTDUMP
int call_madvise(void *addr, size_t len, int advice) {
    return g_madvise.load(std::memory_order_relaxed)(addr, len, advice);
}
#endif

// ---- page rounding ------------------------------------------------------------------------
// Rounds [addr, addr+len) out to whole pages. pre: len > 0. false if the range wraps.
bool round_to_pages(void *addr, size_t len, void **start, size_t *rounded) {
    const uintptr_t page = memlock_page_size();
    const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    if (len > UINTPTR_MAX - a) return false;
    const uintptr_t end = a + len;
    if (end > UINTPTR_MAX - (page - 1)) return false;
    const uintptr_t lo = a & ~(page - 1);
    const uintptr_t hi = (end + page - 1) & ~(page - 1);
    *start = reinterpret_cast<void *>(lo);
    *rounded = hi - lo;
    return true;
}

bool page_aligned(const void *addr, size_t len) {
    const uintptr_t mask = memlock_page_size() - 1;
    return (reinterpret_cast<uintptr_t>(addr) & mask) == 0 && (len & mask) == 0;
}

#if MEMLOCK_HAVE_UNIX && defined(__linux__)
// len bytes of new memory anywhere in the address space, readable and writable or not: a new
// memfd_secret file (its descriptor closed once mapped), or private anonymous memory.
int map_fresh(size_t len, int prot, bool anonymous, void **out) {
    if (anonymous) {
        ErrnoKeeper keep;
        void *p = ::mmap(nullptr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return errno;
        *out = p;
        return 0;
    }
    int fd = -1;
    int rc = memlock_secret_create(&fd);
    if (rc) return rc;
    ErrnoKeeper keep;
    void *p = MAP_FAILED;
    struct rlimit fsize;  // ftruncate past RLIMIT_FSIZE raises SIGXFSZ, which kills: fail first
    if (::getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != RLIM_INFINITY && len > fsize.rlim_cur) rc = EFBIG;
    else if (::ftruncate(fd, static_cast<off_t>(len)) != 0) rc = errno;
    else if ((p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, 0)) == MAP_FAILED) rc = errno;
    ::close(fd);
    if (!rc) *out = p;
    return rc;
}
#endif

#if MEMLOCK_HAVE_UNIX
// Does mincore(2) answer a byte per page of memlock_page_size()? qemu-user passes the call to
// the host kernel unchanged, which answers a byte per host page: with a guest page of 16 or
// 64 KiB on a 4 KiB host, 4 or 16 bytes per guest page, past the end of a vector sized for
// guest pages, and vec[i] then describes the i-th host page, not the i-th page. Probed once,
// on a fresh readable page (qemu answers ENOMEM for an inaccessible one, and may leave part
// of a guest page of the stack unmapped on the host), with the bytes after the first set to
// a value mincore never writes (it writes 0 or 1 in the low bit, the other bits reserved as
// 0). Where the probe cannot be made, mincore is taken to answer per page, as kernels do.
bool mincore_per_page() {
    static std::atomic<int> known{0};  // 0: not probed yet, 1: per page, 2: finer
    int v = known.load(std::memory_order_relaxed);
    if (v) return v == 1;
    const size_t page = memlock_page_size();
    constexpr size_t kFinest = 4096;  // no Linux kernel has smaller pages
    unsigned char vec[256 + 1];       // pages up to 1 MiB can be probed
    v = 1;
    if (page > kFinest && page / kFinest < sizeof vec) {
        ErrnoKeeper keep;
        void *at = ::mmap(nullptr, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (at != MAP_FAILED) {
            std::memset(vec, 0xee, sizeof vec);
            if (::mincore(at, page, vec) == 0 && vec[1] != 0xee) v = 2;
            ::munmap(at, page);
        }
    }
    known.store(v, std::memory_order_relaxed);
    return v == 1;
}
#endif

}  // namespace

extern "C" {

// ---- thin wrappers --------------------------------------------------------------------------
int memlock_lock(void *addr, size_t len) { return len == 0 ? 0 : call_mlock(addr, len); }

int memlock_unlock(void *addr, size_t len) { return len == 0 ? 0 : call_munlock(addr, len); }

int memlock_lock_onfault(void *addr, size_t len) {
    if (len == 0) return 0;
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif
    return g_mlock2.load(std::memory_order_relaxed)(addr, len, MLOCK_ONFAULT);
}

#if MEMLOCK_HAVE_DONTDUMP
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#else  // advise() reports MEMLOCK_EUNSUPPORTED whatever the advice
#define MADV_DONTDUMP 0
#define MADV_DODUMP 0
#define MADV_DONTNEED 0
#define MADV_DONTNEED_LOCKED 0
#endif

// The madvise wrappers below: len 0 is a no-op, and platforms without MADV_DONTDUMP (the
// marker of the Linux madvise family used here) report MEMLOCK_EUNSUPPORTED.
static int advise(void *addr, size_t len, int advice) {
    if (len == 0) return 0;
#if MEMLOCK_HAVE_DONTDUMP
    return call_madvise(addr, len, advice);
#else
    (void)addr;
    (void)advice;
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_dontdump(void *addr, size_t len) { return advise(addr, len, MADV_DONTDUMP); }
int memlock_dodump(void *addr, size_t len) { return advise(addr, len, MADV_DODUMP); }
int memlock_discard(void *addr, size_t len) { return advise(addr, len, MADV_DONTNEED); }
int memlock_discard_locked(void *addr, size_t len) { return advise(addr, len, MADV_DONTNEED_LOCKED); }

// ---- page-granular helpers ------------------------------------------------------------------
#define MEMLOCK_PAGES_BODY(thin)                                    \
    if (len == 0) return 0;                                         \
    void *start;                                                    \
    size_t rounded;                                                 \
    if (!round_to_pages(addr, len, &start, &rounded)) return EINVAL; \
    return thin(start, rounded)

int memlock_lock_pages(void *addr, size_t len) { MEMLOCK_PAGES_BODY(memlock_lock); }
int memlock_unlock_pages(void *addr, size_t len) { MEMLOCK_PAGES_BODY(memlock_unlock); }
int memlock_dontdump_pages(void *addr, size_t len) { MEMLOCK_PAGES_BODY(memlock_dontdump); }
int memlock_dodump_pages(void *addr, size_t len) { MEMLOCK_PAGES_BODY(memlock_dodump); }

#undef MEMLOCK_PAGES_BODY

size_t memlock_page_size(void) {
    static std::atomic<size_t> cached{0};
    size_t page = cached.load(std::memory_order_relaxed);
    if (page != 0) return page;
#if MEMLOCK_HAVE_UNIX
    ErrnoKeeper keep;
    const long v = ::sysconf(_SC_PAGESIZE);
    page = v > 0 ? static_cast<size_t>(v) : 4096;
#else
    page = 4096;
#endif
    cached.store(page, std::memory_order_relaxed);
    return page;
}

// ---- anonymous mappings -------------------------------------------------------------------
int memlock_reserve(size_t len, void **out) {
    if (out == nullptr || len == 0) return EINVAL;
#if MEMLOCK_HAVE_UNIX
    const size_t page = memlock_page_size();
    if (len > SIZE_MAX - (page - 1)) return ENOMEM;
    const size_t rounded = (len + page - 1) & ~(page - 1);
    ErrnoKeeper keep;
    void *p = ::mmap(nullptr, rounded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno;
    *out = p;
    return 0;
#else
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_reserve_at(void *addr, size_t len) {
    if (len == 0) return EINVAL;
#if MEMLOCK_HAVE_UNIX
    const size_t page = memlock_page_size();
    if (len > SIZE_MAX - (page - 1)) return ENOMEM;
    const size_t rounded = (len + page - 1) & ~(page - 1);
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
    ErrnoKeeper keep;
    // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and take addr as a hint.
    void *p = ::mmap(addr, rounded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                     -1, 0);
    if (p == MAP_FAILED) return errno;
    if (p != addr) {
        ::munmap(p, rounded);
        return EEXIST;
    }
    return 0;
#else
    (void)addr;
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_move_over(void *from, void *to, size_t len) {
    if (len == 0 || !page_aligned(from, len) || !page_aligned(to, 0)) return EINVAL;
#if MEMLOCK_HAVE_UNIX && defined(__linux__)
    ErrnoKeeper keep;
    if (::mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to) != MAP_FAILED) return 0;
    const int rc = errno;
    ::munmap(from, len);
    return rc;
#else
    (void)from;
    (void)to;
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_commit(void *addr, size_t len) {
    if (len == 0) return 0;
#if MEMLOCK_HAVE_UNIX
    ErrnoKeeper keep;
    return ::mprotect(addr, len, PROT_READ | PROT_WRITE) == 0 ? 0 : errno;
#else
    (void)addr;
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_release(void *addr, size_t len) {
    if (len == 0) return 0;
#if MEMLOCK_HAVE_UNIX
    ErrnoKeeper keep;
    return ::munmap(addr, len) == 0 ? 0 : errno;
#else
    (void)addr;
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_can_commit(size_t len) {
    if (len == 0) return 0;
#if MEMLOCK_HAVE_UNIX
    const size_t page = memlock_page_size();
    if (len > SIZE_MAX - (page - 1)) return ENOMEM;
    const size_t rounded = (len + page - 1) & ~(page - 1);
    ErrnoKeeper keep;
    void *p = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return errno;
    ::munmap(p, rounded);
    return 0;
#else
    return MEMLOCK_EUNSUPPORTED;
#endif
}

// ---- secretmem mappings ---------------------------------------------------------------------
int memlock_secret_create(int *fd) {
    if (fd == nullptr) return EINVAL;
#if MEMLOCK_HAVE_UNIX && defined(__linux__)
    return g_memfd_secret.load(std::memory_order_relaxed)(O_CLOEXEC, fd);
#else
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_secret_map(void *addr, size_t len) {
    if (len == 0 || !page_aligned(addr, len)) return EINVAL;
#if MEMLOCK_HAVE_UNIX && defined(__linux__)
    void *fresh = nullptr;
    const int rc = map_fresh(len, PROT_NONE, false, &fresh);
    return rc ? rc : memlock_move_over(fresh, addr, len);
#else
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_secret_unshare(void *addr, size_t len, size_t rw_len, int anonymous) {
    if (len == 0 || rw_len > len || !page_aligned(addr, len) || !page_aligned(nullptr, rw_len)) return EINVAL;
#if MEMLOCK_HAVE_UNIX && defined(__linux__)
    void *fresh = nullptr;
    int rc = map_fresh(len, PROT_READ | PROT_WRITE, anonymous != 0, &fresh);
    if (rc) return rc;
    // Only resident pages hold anything: a page never touched reads as zero in the copy too,
    // and touching it here would allocate it in both.
    const size_t page = memlock_page_size();
    constexpr size_t kChunk = 512;
    unsigned char vec[kChunk];
    auto *from = static_cast<unsigned char *>(addr), *to = static_cast<unsigned char *>(fresh);
    for (size_t done = 0; done < rw_len; done += kChunk * page) {
        const size_t n = rw_len - done < kChunk * page ? rw_len - done : kChunk * page;
        const bool known = memlock_resident(from + done, n, vec) == 0;
        for (size_t i = 0; i < n / page; ++i)
            if (!known || (vec[i] & 1)) std::memcpy(to + done + i * page, from + done + i * page, page);
    }
    {
        ErrnoKeeper keep;
        if (rw_len < len && ::mprotect(to + rw_len, len - rw_len, PROT_NONE) != 0) rc = errno;
    }
    if (rc) {
        memlock_wipe(fresh, rw_len);
        memlock_release(fresh, len);
        return rc;
    }
    return memlock_move_over(fresh, addr, len);
#else
    (void)anonymous;
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_resident(void *addr, size_t len, unsigned char *vec) {
    if (len == 0) return 0;
#if MEMLOCK_HAVE_UNIX
    ErrnoKeeper keep;
    if (!page_aligned(addr, 0)) return EINVAL;  // as mincore answers
    if (!mincore_per_page()) return MEMLOCK_EUNSUPPORTED;
    return ::mincore(addr, len, vec) == 0 ? 0 : errno;
#else
    (void)addr, (void)vec;
    return MEMLOCK_EUNSUPPORTED;
#endif
}

// ---- wiping -------------------------------------------------------------------------------
void memlock_wipe(void *p, size_t len) {
    if (len == 0) return;
#if defined(__GLIBC__)
    ::explicit_bzero(p, len);  // glibc >= 2.25: never elided
#else
    std::memset(p, 0, len);
    // The compiler must assume the asm reads *p, so the stores above stay.
    __asm__ __volatile__("" : : "r"(p) : "memory");
#endif
}

// ---- errors -------------------------------------------------------------------------------
// Async-signal-safe: static strings only.
const char *memlock_strerror(int err) {
    switch (err) {
    case 0: return "success";
    case MEMLOCK_EUNSUPPORTED: return "operation not supported on this platform";
    case MEMLOCK_ESECRET_DISABLED:
        return "memfd_secret is disabled at boot (kernel parameter secretmem.enable=0; before Linux 6.5 it "
               "needs secretmem.enable=1)";
    case ENOMEM: return "ENOMEM: out of memory, RLIMIT_MEMLOCK reached, or range not mapped";
    case EPERM: return "EPERM: operation not permitted (locking needs CAP_IPC_LOCK or RLIMIT_MEMLOCK)";
    case EAGAIN: return "EAGAIN: some or all of the range could not be locked, or a locked mapping would exceed RLIMIT_MEMLOCK";
    case EINVAL: return "EINVAL: invalid argument (unaligned address, bad length or advice)";
    case ENOSYS: return "ENOSYS: system call not implemented";
    case EOPNOTSUPP: return "EOPNOTSUPP: operation not supported";
    case EFAULT: return "EFAULT: bad address";
    case EACCES: return "EACCES: permission denied";
    case EBADF: return "EBADF: bad file descriptor";
    case ENODEV: return "ENODEV: no such device";
    case EOVERFLOW: return "EOVERFLOW: value too large";
    case EEXIST: return "EEXIST: already exists";
    case EBUSY: return "EBUSY: resource busy";
    case EINTR: return "EINTR: interrupted system call";
    case EFBIG: return "EFBIG: file too large (RLIMIT_FSIZE)";
    case ENOENT: return "ENOENT: no such file or directory";
    case ENOTDIR: return "ENOTDIR: not a directory";
    case EISDIR: return "EISDIR: is a directory";
    case ELOOP: return "ELOOP: too many levels of symbolic links";
    case ENAMETOOLONG: return "ENAMETOOLONG: file name too long";
    case EROFS: return "EROFS: read-only file system";
    case ENOSPC: return "ENOSPC: no space left on device";
    case EDQUOT: return "EDQUOT: disk quota exceeded";
    case EMFILE: return "EMFILE: too many open files (RLIMIT_NOFILE)";
    case ENFILE: return "ENFILE: too many open files in the system";
    case EIO: return "EIO: input/output error";
    default: return "unknown error";
    }
}

// ---- core dumps ---------------------------------------------------------------------------
int memlock_disable_core_dumps(memlock_core_limit *saved) {
    if (saved == nullptr) return EINVAL;
#if MEMLOCK_HAVE_UNIX
    ErrnoKeeper keep;
    struct rlimit rl;
    if (::getrlimit(RLIMIT_CORE, &rl) != 0) return errno;
    saved->soft = rl.rlim_cur;
    saved->hard = rl.rlim_max;
    rl.rlim_cur = 0;  // soft only: the hard limit stays, so restoring needs no privilege
    if (::setrlimit(RLIMIT_CORE, &rl) != 0) return errno;
    return 0;
#else
    return MEMLOCK_EUNSUPPORTED;
#endif
}

int memlock_restore_core_dumps(const memlock_core_limit *saved) {
    if (saved == nullptr) return EINVAL;
#if MEMLOCK_HAVE_UNIX
    ErrnoKeeper keep;
    struct rlimit rl;
    rl.rlim_cur = static_cast<rlim_t>(saved->soft);
    rl.rlim_max = static_cast<rlim_t>(saved->hard);
    return ::setrlimit(RLIMIT_CORE, &rl) == 0 ? 0 : errno;
#else
    return MEMLOCK_EUNSUPPORTED;
#endif
}

// ---- the seam -----------------------------------------------------------------------------
void memlock_set_syscalls(const memlock_syscalls *table) {
    MlockFn l = &real_mlock, u = &real_munlock;
    MadviseFn m = &real_madvise;
    Mlock2Fn l2 = &real_mlock2;
    SecretFn sec = &real_memfd_secret;
    if (table != nullptr) {
        if (table->mlock != nullptr) l = table->mlock;
        if (table->munlock != nullptr) u = table->munlock;
        if (table->madvise != nullptr) m = table->madvise;
        if (table->mlock2 != nullptr) l2 = table->mlock2;
        if (table->memfd_secret != nullptr) sec = table->memfd_secret;
    }
    g_mlock.store(l, std::memory_order_relaxed);
    g_munlock.store(u, std::memory_order_relaxed);
    g_madvise.store(m, std::memory_order_relaxed);
    g_mlock2.store(l2, std::memory_order_relaxed);
    g_memfd_secret.store(sec, std::memory_order_relaxed);
}

void memlock_get_syscalls(memlock_syscalls *out) {
    if (out == nullptr) return;
    out->mlock = g_mlock.load(std::memory_order_relaxed);
    out->munlock = g_munlock.load(std::memory_order_relaxed);
    out->madvise = g_madvise.load(std::memory_order_relaxed);
    out->mlock2 = g_mlock2.load(std::memory_order_relaxed);
    out->memfd_secret = g_memfd_secret.load(std::memory_order_relaxed);
}

// ---- version ------------------------------------------------------------------------------
const char *memlock_version(void) { return MEMLOCK_VERSION; }

}  // extern "C"
