// seqlock.hpp - the writer's side of the sequence counts over the shim's lock-free tables
// (unwind rules, kept walks, kept answers): one writer at a time rewrites an entry, readers
// read it without a lock and check the count around what they read.
//
// What it promises
//   - An entry's count is odd while a writer fills it, and two more once it is done.
//   - A writer that finds the entry being written gives up instead of waiting (a table of
//     answers worked out again later, never a lock in an allocation).
//   - A reader that sees any field a writer stored after seq_begin_write also sees the count
//     changed, once it has read the count again after an acquire fence.
#ifndef MEMLOCK_SHIM_SEQLOCK_HPP
#define MEMLOCK_SHIM_SEQLOCK_HPP

#include <atomic>

namespace mlshim {

// Takes the entry for writing; s1: the count it had. false: another writer has it.
template <class T> inline bool seq_begin_write(std::atomic<T> &seq, T &s1) noexcept {
    s1 = seq.load(std::memory_order_relaxed);
    if ((s1 & 1) || !seq.compare_exchange_strong(s1, s1 + 1, std::memory_order_acquire)) return false;
    std::atomic_thread_fence(std::memory_order_release);
    return true;
}

// Publishes what was written since seq_begin_write gave s1.
template <class T> inline void seq_end_write(std::atomic<T> &seq, T s1) noexcept { seq.store(s1 + 2, std::memory_order_release); }

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_SEQLOCK_HPP
