// callers.hpp - rules by caller: which function or loaded object made an allocation.
//
// What it promises
//   - Names and objects are resolved to address ranges ahead of time, never per allocation:
//     at start-up for the objects loaded then, and again when the set of loaded objects
//     changes (an allocation from an address no indexed object covers, after a dlopen; a
//     dlclose, which the shim interposes, that unloaded something). Only objects loaded
//     since the last index are read from disk; the others' ranges are kept while they stay
//     loaded, and a dlclose that unloads nothing changes nothing.
//   - Function names come from each object's on-disk symbol tables (.dynsym and, where the
//     file has one, .symtab); objects match a module glob by path, basename or soname.
//   - The immediate caller (depth 1) costs one lookup: it is the interposed function's return
//     address. Deeper frames come from fast_backtrace (unwind.hpp), which reads each frame's
//     call frame information once and then walks with cached rules (a few loads per frame);
//     a stack it cannot walk (a signal frame, code without unwind information) goes to
//     libgcc's _Unwind_Backtrace, linked into the shim and hidden (so it needs no unwinding
//     library on the system and never interposes on the program's), warmed up at start-up.
//     Either runs only when some rule looks deeper than depth 1, and each frame is checked
//     against the index of loaded objects once per allocation, whatever the rules.
//   - Everything here runs with the shim's busy flag set: its own allocations pass through.
#ifndef MEMLOCK_SHIM_CALLERS_HPP
#define MEMLOCK_SHIM_CALLERS_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mlshim {

constexpr unsigned kDefaultSymbolDepth = 4;
constexpr unsigned kDefaultModuleDepth = 1;
constexpr unsigned kMaxCallerDepth = 64;

// The caller conditions of one rule. An empty glob (list) is no condition.
struct CallerCondition {
    std::string name;      // the rule's, for messages
    std::string symbol;
    unsigned symbol_depth = kDefaultSymbolDepth;
    std::vector<std::string> module;  // a frame is in the module when its object matches any
    unsigned module_depth = kDefaultModuleDepth;
};

// The return addresses of one allocation's callers, unwound at most once per allocation
// (match_callers in runtime.hpp walks the rules with one of these).
struct CallerFrames {
    std::uintptr_t pc[kMaxCallerDepth];
    unsigned n = 0;
    bool unwound = false;
    bool pending = false;       // pc is not written yet: a replayed walk's, for fast_backtrace_copy
    std::uint64_t indexed = 0;  // bit d - 1: frame d lies in an object the index covers
    std::uint64_t walk = 0;     // fast_backtrace's name for the walk that gave pc, or 0
};

// Does one of `globs` match an object's path, basename or soname ("" = none)? What a module
// condition selects; memlock-run --check asks it of the objects a program links.
bool module_matches(const std::vector<std::string> &globs, const std::string &path, const std::string &soname);

// "a", or "a" or "b" (or ...): the globs as a message names them.
std::string quoted_globs(const std::vector<std::string> &globs);

// Indexes the loaded objects for `conditions` (condition i is caller rule i). Returns an
// empty string, or why caller rules cannot work here.
// Globs that match nothing yet are reported through `warn` (once each).
std::string callers_init(const std::vector<CallerCondition> &conditions, void (*warn)(const char *text));

// The set of loaded objects may have changed (dlclose): the next lookup checks the loader's
// load and unload counters, and re-indexes if they moved.
void callers_objects_changed() noexcept;

// How many loaded objects were read from disk to index them, since callers_init.
unsigned long long callers_objects_read() noexcept;

// How many times a replayed stack walk was decided by the answer kept for it, without
// searching its frames, in the calling thread.
unsigned long long callers_decisions_reused() noexcept;

// fork(2): hold the index's build lock across the fork, so that neither process inherits it
// held by a thread that does not exist there. postfork releases it in the parent;
// postfork_child makes it new in the child.
void callers_prefork() noexcept;
void callers_postfork() noexcept;
void callers_postfork_child() noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_CALLERS_HPP
