/*
 * memlock.h - the operating-system boundary of memlock-shim (C ABI).
 *
 * What this API promises
 *   - Thin wrappers over mlock(2), munlock(2) and madvise(2) with MADV_DONTDUMP /
 *     MADV_DODUMP, mirroring the Rust crate os-memlock: the address and length are passed
 *     through unchanged, and a length of 0 succeeds without any system call.
 *   - Every function returns 0 on success, the errno value of the failed system call
 *     (unchanged, never lost), or MEMLOCK_EUNSUPPORTED when the platform lacks the call
 *     (decided at compile time: dontdump/dodump are Linux-only, everything is unsupported
 *     on non-Unix systems). Nothing is printed, nothing is swallowed, errno is not relied on.
 *   - The caller's errno is preserved by every function.
 *   - Page-granular variants (*_pages) round a byte range out to whole pages first.
 *   - A seam (memlock_set_syscalls) through which tests replace the system calls.
 *   - Anonymous mapping helpers (reserve, commit, release) for the shim's arena, so that
 *     every memory-management system call of the project lives in this library.
 *   - memfd_secret(2) helpers (Linux >= 5.14): memory removed from the kernel's direct map,
 *     which no other process (root included) reads through /proc/PID/mem or ptrace.
 *
 * What it does not promise
 *   - Locks do not stack: one munlock unlocks a page for every object on it. The *_pages
 *     functions therefore affect every byte that shares a page with the range: the caller
 *     must own those whole pages (a page-aligned allocation) or accept the effect on its
 *     neighbours. Plain heap pointers share pages with unrelated data.
 *   - mlock keeps pages out of swap; it does not keep them from root, ptrace, /proc/PID/mem,
 *     hibernation images or the kernel. MADV_DONTDUMP keeps pages out of core dumps written
 *     by the kernel and by gcore; it does not hide them from a live reader.
 *   - Locks are not inherited across fork(2); MADV_DONTDUMP is.
 *
 * Thread safety: every function may be called from any thread. memlock_set_syscalls must not
 * race with calls that use the seam (tests set it while single-threaded).
 */
#ifndef MEMLOCK_H
#define MEMLOCK_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MEMLOCK_API __attribute__((visibility("default")))
#else
#define MEMLOCK_API
#endif

/* Returned when the platform does not provide the operation. Never a valid errno value. */
#define MEMLOCK_EUNSUPPORTED (-1)
/* Returned by the memfd_secret helpers when the kernel has the call but it is disabled at boot
 * (secretmem.enable=0 on the kernel command line; before Linux 6.5 that is the default and
 * secretmem.enable=1 turns it on). Never a valid errno value. A kernel without the call at
 * all (before 5.14, CONFIG_SECRETMEM off, or a seccomp filter answering ENOSYS) gives ENOSYS. */
#define MEMLOCK_ESECRET_DISABLED (-2)

/* ---- thin wrappers: address and length passed through unchanged ---------------------- */

/* mlock(addr, len). pre: none (the kernel rounds to pages itself). */
MEMLOCK_API int memlock_lock(void *addr, size_t len);
/* munlock(addr, len). */
MEMLOCK_API int memlock_unlock(void *addr, size_t len);
/* mlock2(addr, len, MLOCK_ONFAULT): locks pages as they are first touched instead of
 * populating the whole range now (a large, sparsely used range costs only what is used).
 * The whole range counts against RLIMIT_MEMLOCK at once, as with mlock. Where the kernel
 * lacks mlock2 or MLOCK_ONFAULT (before Linux 4.4, some emulators) it returns ENOSYS or
 * EINVAL and locks nothing: plain mlock populates the whole range, and fails (ENOMEM) on
 * pages that are not accessible yet, so the caller locks memory as it commits it instead. */
MEMLOCK_API int memlock_lock_onfault(void *addr, size_t len);
/* madvise(addr, len, MADV_DONTDUMP). pre: addr page-aligned, else EINVAL from the kernel. */
MEMLOCK_API int memlock_dontdump(void *addr, size_t len);
/* madvise(addr, len, MADV_DODUMP), the reverse of memlock_dontdump. Same precondition. */
MEMLOCK_API int memlock_dodump(void *addr, size_t len);

/* madvise(addr, len, MADV_DONTNEED): gives the pages back to the kernel; the range stays
 * mapped and reads as zero afterwards. The kernel refuses it (EINVAL) on locked pages.
 * pre: addr page-aligned. */
MEMLOCK_API int memlock_discard(void *addr, size_t len);
/* madvise(addr, len, MADV_DONTNEED_LOCKED) (Linux >= 5.18): the same for locked pages,
 * without unlocking them: the range stays locked (and charged to RLIMIT_MEMLOCK), and pages
 * touched again are locked as they fault in, with no mlock call. EINVAL where the kernel
 * lacks it (or a seccomp filter refuses the advice). pre: addr page-aligned. */
MEMLOCK_API int memlock_discard_locked(void *addr, size_t len);

/* ---- page-granular helpers ------------------------------------------------------------
 * Round [addr, addr+len) out to [page_floor(addr), page_ceil(addr+len)) and apply the call
 * to that range. Every byte on those pages is affected, including data that is not the
 * caller's: see "What it does not promise" above. len == 0 makes no system call. */
/* EINVAL, without a system call, if the rounded range would wrap the address space. */
MEMLOCK_API int memlock_lock_pages(void *addr, size_t len);
MEMLOCK_API int memlock_unlock_pages(void *addr, size_t len);
MEMLOCK_API int memlock_dontdump_pages(void *addr, size_t len);
MEMLOCK_API int memlock_dodump_pages(void *addr, size_t len);

/* The system page size (cached after the first call). */
MEMLOCK_API size_t memlock_page_size(void);

/* ---- anonymous mappings ----------------------------------------------------------------
 * memlock_reserve: maps len bytes (rounded up to pages) of inaccessible address space
 * (PROT_NONE, MAP_NORESERVE): costs no memory until committed. On success *out holds the
 * page-aligned start. pre: out != NULL. len == 0 is EINVAL.
 * memlock_commit: makes [addr, addr+len) readable and writable (mprotect). pre: inside a
 * reservation, page-aligned. Fresh pages read as zero.
 * memlock_release: unmaps [addr, addr+len) (munmap). pre: page-aligned.
 * memlock_can_commit: whether the kernel's overcommit accounting lets this process commit len
 * more bytes (rounded up to pages) of private writable memory now, as it checks malloc's own
 * mmap: maps them read-write without MAP_NORESERVE, never touched, and unmaps them. 0, or the
 * kernel's error (ENOMEM). A reservation (MAP_NORESERVE) is not accounted, and neither are
 * its commits: this asks before committing a large part of one.
 * For commit, release and can_commit, len == 0 succeeds without a system call. None of the
 * calls of this group goes through the seam below. */
MEMLOCK_API int memlock_reserve(size_t len, void **out);
/* The same at exactly addr (page-aligned), never over an existing mapping: EEXIST when part
 * of [addr, addr+len) is mapped already (nothing is left mapped then). */
MEMLOCK_API int memlock_reserve_at(void *addr, size_t len);
/* Moves the mapping [from, from+len) over [to, to+len) in one mremap (MREMAP_FIXED), replacing
 * what is there: its contents, protection and flags go with it (a MAP_LOCKED one counts against
 * RLIMIT_MEMLOCK once), and so does its advice (MADV_DONTDUMP). A mapping made elsewhere and
 * moved over a target replaces it whole or fails. On a kernel error [from, from+len) is
 * unmapped, and [to, to+len) may be too (the kernel unmaps the target before some of its
 * checks). Linux only (MEMLOCK_EUNSUPPORTED elsewhere). len == 0, or an address or len not
 * page-aligned, is EINVAL, and nothing is unmapped. */
MEMLOCK_API int memlock_move_over(void *from, void *to, size_t len);
MEMLOCK_API int memlock_commit(void *addr, size_t len);
MEMLOCK_API int memlock_release(void *addr, size_t len);
MEMLOCK_API int memlock_can_commit(size_t len);

/* ---- secretmem (memfd_secret) mappings --------------------------------------------------
 * Pages of a memfd_secret file are removed from the kernel's direct map: reads through
 * /proc/PID/mem, process_vm_readv and ptrace fail for every other process, root included;
 * the process itself reads and writes them as usual. A mapping of one is MAP_SHARED (a forked
 * child shares it), locked (the WHOLE mapped length counts against RLIMIT_MEMLOCK and VmLck
 * at mmap time: EAGAIN over the limit without CAP_IPC_LOCK) and never dumped; its pages are
 * allocated on first touch (read or write) and zeroed when the file goes. They cannot be
 * given back while the file lives: the kernel refuses MADV_DONTNEED, MADV_REMOVE and
 * fallocate(PUNCH_HOLE) on them, and the size can be set only once. mlock of such a range
 * fails (ENOMEM) and is not needed.
 *
 * memlock_secret_create: a new close-on-exec memfd_secret descriptor in *fd. ENOSYS or
 * MEMLOCK_ESECRET_DISABLED as described above. Goes through the seam (member memfd_secret).
 * pre: fd != NULL (else EINVAL).
 * memlock_secret_map: replaces [addr, addr+len) (a reservation) with a MAP_SHARED, PROT_NONE
 * mapping of a new memfd_secret file of size len (make it accessible with memlock_commit).
 * The descriptor is closed: the mapping keeps the file alive. On failure the range is left as
 * it was. pre: addr and len page-aligned, len > 0 (else EINVAL).
 * memlock_secret_unshare: gives [addr, addr+len) (a secretmem mapping that a fork shares with
 * another process) memory of its own: the resident pages of [addr, addr+rw_len) are copied
 * into it, [addr, addr+rw_len) is readable and writable, the rest PROT_NONE; the other
 * process no longer sees this one's writes nor this one its. The new memory is a new
 * memfd_secret file, or, with `anonymous` != 0, private anonymous memory (neither locked nor
 * dontdump: the caller does that). Made beside the range and moved over it in one mremap, so
 * on failure the range is left as it was. pre: page-aligned, rw_len <= len, len > 0. */
MEMLOCK_API int memlock_secret_create(int *fd);
MEMLOCK_API int memlock_secret_map(void *addr, size_t len);
MEMLOCK_API int memlock_secret_unshare(void *addr, size_t len, size_t rw_len, int anonymous);

/* mincore(addr, len, vec): vec[i] & 1 tells whether page i of the range is resident.
 * pre: addr page-aligned; vec holds (len + page - 1) / page bytes. len == 0 makes no call.
 * MEMLOCK_EUNSUPPORTED (vec untouched) where mincore answers for pages smaller than
 * memlock_page_size() (qemu-user emulating 16 or 64 KiB pages on a 4 KiB host passes the
 * call through to the host: probed once). */
MEMLOCK_API int memlock_resident(void *addr, size_t len, unsigned char *vec);

/* ---- wiping ---------------------------------------------------------------------------- */

/* Writes len zero bytes at p in a way the compiler cannot remove. len == 0 is a no-op. */
MEMLOCK_API void memlock_wipe(void *p, size_t len);

/* ---- errors ---------------------------------------------------------------------------- */

/* A static, human-readable description of a value returned by this API
 * (0, an errno value, or MEMLOCK_EUNSUPPORTED). Async-signal-safe; never NULL. */
MEMLOCK_API const char *memlock_strerror(int err);

/* ---- core dumps ------------------------------------------------------------------------
 * memlock_disable_core_dumps lowers only the SOFT RLIMIT_CORE to 0; the hard limit is left
 * as it was, so the previous soft limit can be restored without privileges. The previous
 * limit (soft, hard) is stored in *saved. pre: saved != NULL (else EINVAL).
 * memlock_restore_core_dumps sets RLIMIT_CORE back to *saved (EINVAL if saved is NULL, or
 * the kernel's error, e.g. EPERM when raising a hard limit without CAP_SYS_RESOURCE).
 * Process-wide: not thread-safe against other changes of RLIMIT_CORE. */
typedef struct memlock_core_limit {
    unsigned long long soft;
    unsigned long long hard;
} memlock_core_limit;
MEMLOCK_API int memlock_disable_core_dumps(memlock_core_limit *saved);
MEMLOCK_API int memlock_restore_core_dumps(const memlock_core_limit *saved);

/* ---- the system-call seam (for tests) --------------------------------------------------
 * Each provider function returns 0 or an errno value (not -1). A NULL member, or a NULL
 * table, selects the real system call. memlock_get_syscalls copies the table in force
 * (real providers appear as non-NULL pointers), so a test can restore it or call through
 * to the previous provider. The table is read with relaxed atomic loads: one load per call. */
typedef struct memlock_syscalls {
    int (*mlock)(const void *addr, size_t len);
    int (*munlock)(const void *addr, size_t len);
    int (*madvise)(void *addr, size_t len, int advice);
    int (*mlock2)(const void *addr, size_t len, unsigned flags);
    /* memfd_secret(flags): the new descriptor in *fd; ENOSYS or MEMLOCK_ESECRET_DISABLED. */
    int (*memfd_secret)(unsigned flags, int *fd);
} memlock_syscalls;
MEMLOCK_API void memlock_set_syscalls(const memlock_syscalls *table);
MEMLOCK_API void memlock_get_syscalls(memlock_syscalls *out);

/* ---- version --------------------------------------------------------------------------- */
/* The library's version, e.g. "0.1.0" (the file VERSION at build time). */
MEMLOCK_API const char *memlock_version(void);

#ifdef __cplusplus
}
#endif

#endif /* MEMLOCK_H */
