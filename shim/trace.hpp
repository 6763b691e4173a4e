// trace.hpp - the shim's tracing mode, the interface between the shim and memlock-discover.
//
// With MEMLOCK_SHIM_TRACE=<fd> in the environment, where fd is one end of an AF_UNIX
// SOCK_SEQPACKET socket, the shim sends one TraceRecord per event to that fd:
//   start  the process started (or exec'd) under the shim: its table of live blocks is empty
//   alloc  the next allocator handed out [addr, addr + size); frames: raw return addresses,
//          innermost first, starting inside the shim (the reader drops the shim's frames)
//   free   the block at addr goes back to the next allocator (sent before it does)
//   fork   this process (pid) was forked from `parent`: it starts with the parent's table
//          (start and fork carry the image's fingerprint: addr is where AT_RANDOM points, size
//          its first 8 bytes, both new at every exec; a process that exec'd since, into an
//          image that does not trace, no longer matches them)
//   exit   the process is exiting (the shim's destructor, after the program's atexit
//          handlers): right after sending it, the process stops itself with SIGSTOP, so the
//          reader can scan its memory; the reader resumes it with SIGCONT.
// Each record is one message, so writers in several threads and processes never interleave.
//
// What it costs: nothing unless the variable is set. Tracing replaces the next allocator's
// function pointers (g_next) with recording wrappers at start-up, so the hooks themselves
// are unchanged; a process that does not trace runs exactly the code it runs without this.
// Blocks served by the arena are not recorded (the reader finds the arena by its `dd` pages).
//
// Limits: a program that closes the fd (closefrom) ends its own tracing (the next send fails
// and the shim stops sending); a process that leaves through _exit or a signal sends no exit
// record.
#ifndef MEMLOCK_SHIM_TRACE_HPP
#define MEMLOCK_SHIM_TRACE_HPP

#include <cstddef>
#include <cstdint>

namespace mlshim {

constexpr const char *kTraceEnv = "MEMLOCK_SHIM_TRACE";
constexpr unsigned kTraceFrames = 32;

enum class TraceKind : std::uint32_t { start = 1, alloc = 2, free = 3, fork = 4, exit = 5 };

struct TraceRecord {
    std::uint32_t kind;     // TraceKind
    std::int32_t pid;
    std::int32_t parent;    // fork: the parent's pid
    std::uint32_t nframes;  // alloc: entries of frames[] sent
    std::uint64_t addr;
    std::uint64_t size;
    std::uint64_t frames[kTraceFrames];
};
// A message is the header plus nframes return addresses.
constexpr std::size_t kTraceHeaderBytes = offsetof(TraceRecord, frames);

// From runtime_init, once the next allocator is known: starts tracing if the environment asks
// for it (a bad value is reported and ignored). Returns whether the process traces.
bool trace_init() noexcept;
// From runtime_fini: sends the exit record and stops until the reader resumes the process.
void trace_exit() noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_TRACE_HPP
