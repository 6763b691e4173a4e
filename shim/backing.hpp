// backing.hpp - where the memory of a pool that locks comes from (policy.backing): the one
// seam between the arena and the kind of memory under it.
//
//   anonymous: the reservation itself (private anonymous), locked on fault at start-up.
//   secretmem: a memfd_secret(2) file mapped over the reservation: locked by the kernel, out
//              of its direct map (no other process, root included, reads it through
//              /proc/PID/mem or ptrace) and out of core dumps.
//
// What differs, and nothing else does: how the start-up budget is locked, whether free pages
// can be given back (a secretmem file's pages cannot, while it is mapped), and what a fork
// child must do (a secretmem mapping is shared with the child: it copies it into its own).
// Commit (mprotect), wipe, mincore and the allocator's bookkeeping are the same for both.
#ifndef MEMLOCK_SHIM_BACKING_HPP
#define MEMLOCK_SHIM_BACKING_HPP

#include <cstddef>

namespace mlshim {

// Locks [start, start+len) of a reservation for the life of the process: mlock2 on fault, or
// (secret) a memfd_secret file mapped over it. Either way the whole range counts against
// RLIMIT_MEMLOCK now and its pages lock as they are first touched. 0 or the error; on error
// the range is as it was. pre: page-aligned.
int backing_lock(bool secret, void *start, std::size_t len) noexcept;

// Locks [start, start+len) again (after fork, or after the program's munlockall): on fault
// (mlock2 MLOCK_ONFAULT) or populating it (mlock). The program's mlockall and munlockall
// rewrite the lock flags of every mapping; one that runs between the kernel's two steps of
// such a call (the flags set under the mmap lock, then the range populated after it is let
// go) has the kernel populate a range asked to lock on fault, and where the range holds
// inaccessible pages the call fails with ENOMEM that no limit refused. So a call refused
// with ENOMEM while one of those ran beside it is made again (up to 8 times). 0 or the
// error. pre: page-aligned.
int backing_relock(void *start, std::size_t len, bool on_fault) noexcept;
// Around the program's mlockall(2) and munlockall(2) (shim_lockall), for backing_relock.
void backing_lockall_begin() noexcept;
void backing_lockall_end() noexcept;

// Maps [start, start+len) of address space that no mapping holds, inaccessible and locked
// (mmap MAP_FIXED_NOREPLACE | MAP_LOCKED: no mlock call), for anonymous memory that locks
// as it is committed. It counts against RLIMIT_MEMLOCK now (EAGAIN past it, EPERM without
// the right to lock). 0, EEXIST when something is mapped there, or the error (nothing
// mapped then). pre: page-aligned.
int backing_map_locked(void *start, std::size_t len) noexcept;

// The same, len bytes wherever the kernel puts them (*out), to be given their advice and moved
// over address space of the arena's own that holds nothing (memlock_move_over). 0 or the
// error. Preserves errno.
int backing_map_locked_anywhere(std::size_t len, void **out) noexcept;

// Grows the mapping that ends at `end` (locked on fault: mlock2 MLOCK_ONFAULT, or grown so)
// in place by len bytes (mremap, no move): the new range has its flags, so it is locked on
// fault, and is not populated; it is inaccessible (PROT_NONE) until committed. It counts
// against RLIMIT_MEMLOCK now (EAGAIN past it). 0, or the error (ENOMEM: the space after it is
// taken, or RLIMIT_AS; nothing changed then).
// pre: page-aligned; `page` the page size.
int backing_grow_locked(void *end, std::size_t len, std::size_t page) noexcept;

// Is `err` from backing_lock(secret = true) a kernel without usable memfd_secret (ENOSYS,
// disabled at boot, another platform), rather than a limit (EAGAIN, ENOMEM)?
bool backing_secret_missing(int err) noexcept;

// RLIMIT_MEMLOCK's soft limit in bytes when it binds this process (no CAP_IPC_LOCK, a finite
// limit), else SIZE_MAX (also when either cannot be read).
std::size_t backing_lock_limit() noexcept;

// Can free pages of this kind go back to the kernel (MADV_DONTNEED[_LOCKED])? A secretmem
// file's pages cannot: the kernel refuses MADV_DONTNEED, MADV_REMOVE and hole punching.
inline bool backing_can_discard(bool secret) noexcept { return !secret; }

// Transparent huge pages, for anonymous memory only (a memfd_secret file has none).
// backing_huge_page_size: the size of a huge page (the PMD size,
// /sys/kernel/mm/transparent_hugepage/hpage_pmd_size) when the kernel gives them to a mapping
// that asks (.../enabled is "always" or "madvise"), 0 otherwise (0 also when the files cannot
// be read). Reads the files; call it at start-up.
// backing_advise_huge: madvise MADV_HUGEPAGE: [start, start+len) faults in a huge page at a
// time wherever a whole huge page's range lies in one mapping. 0 or the error.
// backing_collapse: madvise MADV_COLLAPSE (Linux >= 6.1): makes [start, start+len) (whole
// huge pages) huge pages now, copying the small pages there and filling the rest with zeros;
// locked pages stay locked. 0 or the error (EINVAL where the kernel lacks it).
// backing_advise_small: madvise MADV_NOHUGEPAGE: no huge page faults in there, and
// khugepaged leaves the range alone (it would otherwise collapse small pages into a huge
// page, filling the pages around them). 0 or the error.
// All of them preserve errno. pre: page-aligned.
std::size_t backing_huge_page_size() noexcept;
// Does the kernel guess at overcommit (vm.overcommit_memory 0, its default, or the file cannot
// be read)? Then the commits of a MAP_NORESERVE reservation escape the accounting that
// glibc's mmap goes through. In strict mode (2) they are accounted as they are made; in mode 1
// nothing is refused. Reads the file (preserves errno); call it at start-up.
bool backing_overcommit_guessed() noexcept;
int backing_advise_huge(void *start, std::size_t len) noexcept;
int backing_advise_small(void *start, std::size_t len) noexcept;
int backing_collapse(void *start, std::size_t len) noexcept;

// In a fork child: gives [start, start+len) (secretmem, shared with the parent) memory of its
// own with the resident pages of [start, start+rw_len) copied: a new memfd_secret file, or
// with `anonymous` private anonymous memory, marked dontdump (the caller locks it). Parent
// and child then never see each other's writes. 0 or the error (the range is then still shared).
int backing_unshare(void *start, std::size_t len, std::size_t rw_len, bool anonymous) noexcept;

// A page of zeros (len at most a page) that the kernel gives every fork child as a page of
// zeros again (MADV_WIPEONFORK, Linux 4.14 and later): what a process writes there tells it
// from its fork children without a write in the child. nullptr where that cannot be had, or
// where madvise accepts any advice (qemu-user) and so cannot be trusted to. Preserves errno.
void *backing_map_wiped_on_fork(std::size_t len) noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_BACKING_HPP
