// stack_scrub.hpp - wiping what returned functions left on the calling thread's stack
// (policy.scrub_stack).
//
// What it promises
//   - scrub_dead_stack(window) zeroes the bytes not already zero in up to `window` bytes of
//     the calling thread's stack below its own frame: memory below the stack pointer, which
//     the C ABI lets a signal frame overwrite at any time, and where functions that have
//     returned left their locals.
//   - It writes only inside the thread's stack as scrub_stack_prepare found it when the
//     thread started (pthread_getattr_np, without the guard; for the main thread and a stack
//     without glibc's guard, cut to the mapping that held the stack pointer then), and not at
//     all when the stack pointer lies outside it (a coroutine's or fiber's own stack), inside
//     the thread's signal stack (note_signal_stack), or in a thread that made a CLONE_VM child
//     which may still run on its memory (scrub_stack_clone_begin).
//   - A line that is already zero is read, not written: a stack page never used stays
//     unpopulated. It makes no system call and no allocation, takes no lock, and leaves errno
//     alone.
//
// What it does not do
//   - Threads not started through the shim's pthread_create after start-up (made with clone,
//     before the config was read, or through another library's pthread_create that comes
//     first) and stacks deeper than they were looked up are not scrubbed; other threads' stacks, registers, and frames still in use are not touched.
//   - A program that runs code on a stack it placed inside a thread's stack (a coroutine whose
//     stack is a local array of a function still running below it) keeps live frames below
//     the stack pointer, and a program that protects pages inside a thread's stack after it
//     started (the JVM's guard zones) faults when the window reaches them. docs/config.md
//     says so.
#ifndef MEMLOCK_SHIM_STACK_SCRUB_HPP
#define MEMLOCK_SHIM_STACK_SCRUB_HPP

#include <cstddef>

namespace mlshim {

void scrub_dead_stack(std::size_t window) noexcept;

// Looks up the calling thread's stack (and, for the main thread, its signal stack): at the
// shim's start-up for the main thread, before the start routine for a thread the program
// creates. It allocates from the next allocator and makes system calls (sched_getaffinity in
// glibc; the main thread, and a thread on a stack of the program's, read /proc/self/maps).
// pre: no allocator lock held. Preserves errno.
void scrub_stack_prepare(bool main_thread) noexcept;

// The calling thread's signal stack is now `ss` (sigaltstack(ss, ...) succeeded; ss may be
// NULL, which changes nothing). Fork children keep it, new threads start without one, as the
// kernel does.
void note_signal_stack(const void *ss) noexcept;

// Around a clone(2) with these flags: a CLONE_VM child without a thread pointer of its own
// shares the caller's thread-local state, so it would scrub below its own stack pointer inside
// the caller's bounds. With CLONE_VFORK the caller's thread (and so the child) stops scrubbing
// until the call returns (true: call scrub_stack_clone_end then); without, for good.
bool scrub_stack_clone_begin(unsigned long flags) noexcept;
void scrub_stack_clone_end() noexcept;

}  // namespace mlshim

#endif
