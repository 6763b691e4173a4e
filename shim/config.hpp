// config.hpp - the shim's configuration: parsed from JSON, validated, immutable afterwards.
//
// One parser serves the injected library and the tools (memlock-run --check), so their
// verdicts cannot drift. Parsing allocates freely (it runs once, at start-up, with the
// shim's own allocations passed through). See docs/config.md for the schema.
#ifndef MEMLOCK_SHIM_CONFIG_HPP
#define MEMLOCK_SHIM_CONFIG_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mlshim {

// What a rule does to the blocks it matches. Default: all three.
enum Action : unsigned {
    kActionLock = 1u << 0,      // mlock: never swapped
    kActionDontdump = 1u << 1,  // MADV_DONTDUMP: never in a core dump
    kActionWipe = 1u << 2,      // zeroed on free and when realloc moves the block
    kActionAll = kActionLock | kActionDontdump | kActionWipe,
};

// Limits the parser enforces (docs/config.md).
constexpr std::size_t kConfigMaxFileSize = std::size_t{1} << 20;  // load_config_file: 1 MiB
constexpr unsigned kConfigMaxDepth = 64;                           // nested arrays and objects
constexpr unsigned kRuleMaxDepth = 64;                             // Rule::depth: 1..64
constexpr std::size_t kConfigMaxRules = 256;                       // rules in one config
constexpr std::size_t kConfigMinArena = std::size_t{1} << 20;      // policy.max_arena >= 1 MiB
constexpr std::size_t kConfigMaxArena = std::size_t{64} << 30;     // policy.max_arena <= 64 GiB
constexpr std::size_t kConfigMaxScrubStack = std::size_t{1} << 30;  // policy.scrub_stack <= 1 GiB

enum class LockFailurePolicy { fallback, deny, abort };
// Where the memory of pools that lock comes from (policy.backing). secretmem: memfd_secret(2),
// out of the kernel's direct map; auto: secretmem where the kernel has it, else anonymous.
enum class Backing { anonymous, secretmem, automatic };
enum class LogLevel { error = 0, warn = 1, info = 2, debug = 3 };

struct Rule {
    std::string name;
    // Size condition, inclusive bounds. "size": n sets both; "min_size" alone leaves
    // max_size at SIZE_MAX.
    std::size_t min_size = 0;
    std::size_t max_size = SIZE_MAX;
    unsigned actions = kActionAll;
    // Caller conditions (empty = none). Globs in fnmatch(3) syntax. `module` holds the
    // globs of the "module" key (a glob or a list of them): a frame is in the module when its
    // object matches any of them.
    std::string symbol;
    std::vector<std::string> module;
    unsigned depth = 0;  // 0 = the default for the condition
};

struct Policy {
    std::size_t max_locked = 64u << 20;   // bytes the arena may mlock in total
    LockFailurePolicy on_lock_failure = LockFailurePolicy::fallback;
    std::size_t prealloc = 0;             // bytes committed and locked at start-up
    std::size_t max_arena = 1u << 30;     // address space reserved for the arena
    Backing backing = Backing::anonymous;
    std::size_t scrub_stack = 0;          // dead stack wiped below each free of a wiped block; 0: none
};

struct Config {
    int version = 1;
    std::vector<std::string> programs;  // empty = every program
    std::vector<Rule> rules;
    Policy policy;
    LogLevel log_level = LogLevel::warn;
    std::string log_file = "stderr";     // "stderr" or a path
    std::string stats_file;               // empty = none; "%p" expands to the pid
    std::string source;                   // the file it came from, for messages
};

// Parses and validates `text`. On failure returns false and sets `error` to one line:
//   "<source>:<line>:<column>: <what was expected>"            (JSON syntax)
//   "<source>: <json-path>: <what was expected>, got <what>"   (schema)
// Unknown keys are errors. On success fills `out` (out.source = source).
bool parse_config(const std::string &text, const std::string &source, Config &out,
                  std::string &error);

// Reads `path` and parses it; a read failure is reported as "<path>: <strerror>".
bool load_config_file(const std::string &path, Config &out, std::string &error);

// Parses "4096", "64KiB", "1 MiB", "2GiB", "16K" into bytes. JSON integers are accepted
// by the parser directly; this handles the string form. Returns false on junk or overflow.
bool parse_size(const std::string &text, std::size_t &out);

// fnmatch(3)-style glob: '*', '?', '[...]'. Does not allocate.
bool glob_match(const char *pattern, const char *text) noexcept;
// Checks a glob's syntax (balanced brackets, nothing dangling). Empty is invalid.
bool glob_valid(const std::string &pattern, std::string &why);

// Does the config apply to the executable at `exe_path` (e.g. readlink /proc/self/exe)?
// A pattern containing '/' is matched against the whole path, others against its basename.
bool program_matches(const Config &config, const char *exe_path) noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_CONFIG_HPP
