// unwind.hpp - the return addresses on the calling thread's stack, fast.
//
// What it promises
//   - fast_backtrace walks the stack with the same call frame information (.eh_frame) that
//     libgcc's unwinder reads, but keeps what it learns: the rule that gives a frame's caller
//     (CFA from the stack or frame pointer plus an offset, where the return address and the
//     saved frame pointer are) is worked out once per return address and cached. A walk
//     whose rules are all cached reads two or three words per frame and calls nothing.
//   - Only what is exact is cached. A frame whose rule needs more (a DWARF expression, a CFA
//     in another register, a signal frame), code without call frame information, or a
//     platform other than x86_64: fast_backtrace returns -1 and the caller unwinds with
//     libgcc (the answer is then the same, only slower).
//   - The cache never outlives code: it is dropped (a generation count) around every
//     dlclose, before the object goes and after, so a rule read from an unloaded object is
//     never applied to code loaded at its address later.
//   - Lock-free (a sequence count per cache slot) and allocation-free; it runs inside the
//     interposed allocation functions, on any thread, and in a fork child.
//   - A walk is kept with the stack words it read (where, and what they held). The next walk
//     that starts at the same stack pointer (and frame pointer, if the walk used the one it
//     started with), in the same generation, and finds the same words there is that walk: it
//     checks them in the order the walk read them (so it reads no word the walk itself would
//     not) and reuses its return addresses.
//   - After fast_backtrace_share, fork children post the return addresses they made rules for
//     to the process that called it, which makes those rules too (from its own code, a few per
//     walk), so that its later children start with them. No rule crosses processes.
#ifndef MEMLOCK_SHIM_UNWIND_HPP
#define MEMLOCK_SHIM_UNWIND_HPP

#include <cstdint>

namespace mlshim {

// Writes into pcs the return addresses of the stack from the frame whose return address is
// `from` outwards (pcs[0] == from), at most `max` of them. Returns how many (fewer when the
// stack ends first), or -1: this stack cannot be walked here (unwind it with libgcc).
// `from` must be a return address into a frame that calls, directly or through the shim's
// own frames, this function. *walk names the walk when it is kept (0 otherwise): while
// another walk gives the same name, it gives the same return addresses, so what was worked
// out from them (which rules they match) holds for it too. Names are never given twice; the
// low kFastBacktraceWalkBits of a name tell which of the kept walks' table entries holds it.
// With `copied`, a replayed walk leaves pcs unwritten and says so (*copied false); they are
// then fast_backtrace_copy's to write, for a caller that may need no more than the name.
constexpr unsigned kFastBacktraceWalkBits = 8;
int fast_backtrace(std::uintptr_t from, std::uintptr_t *pcs, int max, std::uint64_t *walk, bool *copied = nullptr) noexcept;

// Writes the first n return addresses of the kept walk named `walk` into pcs. false: that
// walk is no longer kept (its entry holds another), and pcs may hold anything.
bool fast_backtrace_copy(std::uint64_t walk, std::uintptr_t *pcs, int n) noexcept;

// Code may be unloaded (dlclose): forget every cached rule.
void fast_backtrace_forget() noexcept;

// Makes the ring fork children post the return addresses they learn to (one shared page),
// and makes this process the one that learns from it. false: mmap failed, nothing shared.
bool fast_backtrace_share() noexcept;

// In a fork child: post to the ring, never learn from it; when the parent shared the ring or
// walked, the child keeps none of its first kFastBacktraceChildUnkept walks, whichever threads
// make them (each kept walk would copy a page of the table shared with the parent). Makes no
// system call and writes no thread-local variable.
constexpr unsigned kFastBacktraceChildUnkept = 256;
void fast_backtrace_after_fork_child() noexcept;
// Has fast_backtrace_after_fork_child anything to do (the ring shared, or walks made)?
bool fast_backtrace_child_work() noexcept;

// Rules made since start-up, walks that fell back to libgcc, rules made from addresses fork
// children posted, and walks that read their rules (not replayed), for tests and benchmarks.
// The last is counted without a locked add: exact in one thread, about right in several.
struct FastBacktraceCounts {
    unsigned long long rules, fallbacks, hints, walks;
};
FastBacktraceCounts fast_backtrace_counts() noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_UNWIND_HPP
