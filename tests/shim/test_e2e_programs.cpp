// End-to-end: a C++ program under the shim, and what the built library exports and links.
// The libc contract and real programs (python3, perl, sort, git, g++) run three ways in
// test_e2e_conformance.cpp and test_e2e_realprogs.cpp.
#include <criterion/criterion.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

std::string write_config(const TempDir &dir, const std::string &rules) {
    cr_assert(dir.ok());
    const std::string path = dir.file("rules.json");
    cr_assert(write_file(path, R"({"version": 1, "rules": [)" + rules + R"(],
  "stats": {"file": ")" + dir.file("stats.%p.json") + R"("}})"));
    return path;
}

// Runs argv with the shim (config non-empty) or without it; returns the result and the pid's
// stats file (empty without the shim).
struct Shimmed {
    RunResult result;
    std::string stats;
};

Shimmed run_with(const TempDir &dir, const std::vector<std::string> &argv, const std::string &config,
                 std::vector<std::pair<std::string, std::string>> extra_env = {}) {
    RunOptions opts = plain_env(argv);
    opts.env = std::move(extra_env);
    if (!config.empty())
        for (auto &kv : shim_env(config)) opts.env.push_back(kv);
    opts.timeout_ms = 120000;
    LiveProgram prog;
    cr_assert_not_null(start_program_into(prog, opts), "cannot start %s", argv[0].c_str());
    const pid_t pid = prog.pid();
    Shimmed s{prog.finish(120000), {}};
    if (!config.empty()) {
        const auto text = read_file(dir.file("stats." + std::to_string(pid) + ".json"));
        cr_assert(text.has_value(), "no stats file for %s (pid %d)\n%s", argv[0].c_str(), static_cast<int>(pid),
                  s.result.describe().c_str());
        s.stats = *text;
    }
    return s;
}

// Runs tests/progs/`prog` under a rule that matches every size: it must exit 0, print
// exactly `out`, and the rule must have matched some of its allocations.
Shimmed run_matching_everything(const TempDir &dir, const std::string &prog, const char *out) {
    need_built(prog);
    const std::string config = write_config(dir, R"({"name": "all", "min_size": 0})");
    Shimmed with = run_with(dir, {shim_program(prog)}, config);
    cr_assert(with.result.exited_with(0), "%s", with.result.describe().c_str());
    cr_assert_str_eq(with.result.out.c_str(), out);
    cr_assert_gt(stat_value(with.stats, "matched_allocations"), 0u, "%s", with.stats.c_str());
    return with;
}

}  // namespace

Test(e2e_programs, cxx_new_delete_and_string_are_served_by_the_arena) {
    need_built("e2e_cxx");
    TempDir dir;
    const std::string config = write_config(dir, R"({"name": "cxx", "min_size": 24, "max_size": 4096})");
    const Shimmed with = run_with(dir, {shim_program("e2e_cxx"), "2000"}, config);
    cr_assert(with.result.exited_with(0), "%s", with.result.describe().c_str());
    cr_assert_str_empty(with.result.err.c_str());
    const auto allocations = line_value(with.result.out, "allocations");
    cr_assert(allocations.has_value() && with.result.out.find("\nok\n") != std::string::npos, "%s",
              with.result.describe().c_str());
    // Every new, string and vector allocation of the program matches the rule.
    cr_assert_geq(stat_value(with.stats, "matched_allocations"), std::stoull(*allocations), "%s",
                  with.stats.c_str());
    cr_assert_geq(stat_value(with.stats, "frees"), std::stoull(*allocations) - 16, "%s", with.stats.c_str());
    cr_assert_gt(stat_value(with.stats, "locked_bytes"), 0u, "%s", with.stats.c_str());

    const Shimmed without = run_with(dir, {shim_program("e2e_cxx"), "2000"}, "");
    cr_assert(without.result.exited_with(0), "%s", without.result.describe().c_str());
    cr_assert_str_eq(with.result.out.c_str(), without.result.out.c_str());
}

// Only the hooks are exported: no C++ runtime, no JSON library. dlopen and dlclose are
// interposed too (shim/exports.map: RTLD_DEEPBIND is dropped, caller rules forget the address
// ranges of an unloaded object).
Test(e2e_programs, exports_only_the_interposed_functions) {
    need_built("");
    RunOptions o;
    o.argv = {"nm", "-D", "--defined-only", shim_library()};
    o.unset_env = {"LD_PRELOAD"};
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    std::vector<std::string> names;
    for (const auto &line : split_lines(r.out)) {
        std::istringstream in(line);
        std::string addr, type, name;
        if (in >> addr >> type >> name) names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    std::string got;
    for (const auto &n : names) got += n + " ";
    const std::string expected =
        "_Fork aligned_alloc calloc cfree clone dallocx dlclose dlopen free free_aligned_sized free_sized madvise mallctl "
        "mallctlbymib mallinfo mallinfo2 malloc malloc_usable_size mallocx memalign mlock mlock2 mlockall munlock munlockall posix_memalign pthread_create pvalloc rallocx "
        "realloc reallocarray sallocx sdallocx sigaltstack syscall valloc xallocx ";
    cr_assert_str_eq(got.c_str(), expected.c_str());
}

// DT_NEEDED names libc, the loader, and libdl and libpthread (which held the pinned dl* and
// pthread_* symbols before glibc 2.34): no library the shim takes no symbol from (g++ adds
// libm), since every loaded library is mappings that each fork copies and each child unmaps.
Test(e2e_programs, needs_only_the_libraries_it_takes_symbols_from) {
    need_built("");
    RunOptions o;
    o.argv = {"readelf", "-dW", shim_library()};
    o.unset_env = {"LD_PRELOAD"};
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    std::set<std::string> needed;
    for (const auto &line : split_lines(r.out)) {
        const auto open = line.find("(NEEDED)"), lb = line.find('['), rb = line.find(']');
        if (open != std::string::npos && lb != std::string::npos && rb > lb) needed.insert(line.substr(lb + 1, rb - lb - 1));
    }
    const std::set<std::string> allowed = {"libc.so.6", "libdl.so.2", "libpthread.so.0", "ld-linux-x86-64.so.2",
                                           "ld-linux-aarch64.so.1"};
    for (const auto &lib : needed)
        cr_assert(allowed.count(lib), "the shim needs %s:\n%s", lib.c_str(), r.out.c_str());
    cr_assert(needed.count("libc.so.6"), "%s", r.out.c_str());
}

Test(e2e_programs, links_no_cxx_runtime) {
    need_built("");
    RunOptions o;
    o.argv = {"ldd", shim_library()};
    o.unset_env = {"LD_PRELOAD"};
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("libc.so") != std::string::npos, "%s", r.out.c_str());
    cr_assert(r.out.find("libstdc++") == std::string::npos, "links the C++ runtime:\n%s", r.out.c_str());
    cr_assert(r.out.find("libgcc_s") == std::string::npos, "links libgcc_s:\n%s", r.out.c_str());
}

// A library opened with RTLD_DEEPBIND (FreeRADIUS's modules) frees and reallocates blocks the
// program allocated: under match-all they are the arena's, and its free and realloc, bound to
// glibc's by the flag, aborted ("free(): invalid pointer"). The shim drops the flag and says so
// once; dlopen still sees the program as its caller (both libraries are found by bare name
// through the program's RUNPATH). Without the shim nothing is said.
Test(e2e_programs, a_library_opened_with_deepbind_frees_the_programs_blocks) {
    TempDir dir;
    const Shimmed with = run_matching_everything(dir, "deepbind", "deepbind ok\n");
    const std::string said = "memlock-shim: warning: dlopen libdeepfree.so: RTLD_DEEPBIND dropped, so that the "
                             "library's free() reaches the shim (glibc's aborts on the arena's blocks); said once "
                             "(program deepbind, pid ";
    cr_assert_eq(with.result.err.compare(0, said.size(), said), 0, "%s", with.result.err.c_str());
    cr_assert_eq(split_lines(with.result.err).size(), 1u, "%s", with.result.err.c_str());

    const Shimmed without = run_with(dir, {shim_program("deepbind")}, "");
    cr_assert(without.result.exited_with(0), "%s", without.result.describe().c_str());
    cr_assert_str_eq(without.result.out.c_str(), "deepbind ok\n");
    cr_assert_str_empty(without.result.err.c_str());
}

// A library of the program's own opens libdeepfree.so with RTLD_DEEPBIND from its constructor,
// which runs before the preloaded shim's: the flag is dropped then too, and the blocks the
// program allocates under the rules afterwards are freed through the shim.
Test(e2e_programs, a_library_opened_with_deepbind_before_the_shim_starts_frees_the_programs_blocks) {
    TempDir dir;
    const Shimmed with = run_matching_everything(dir, "deepbind_early", "deepbind early ok\n");
    cr_assert_neq(with.result.err.find("dlopen libdeepfree.so: RTLD_DEEPBIND dropped"), std::string::npos, "%s",
                  with.result.err.c_str());
}

// jemalloc's interface where jemalloc is not loaded, found by name as a program probing for it
// finds it: the shim's, on malloc's terms. Under on_lock_failure deny a shrinking rallocx takes
// only a block the thread's cache holds, which is aligned to 16 only: a page-aligned block
// shrunk with MALLOCX_LG_ALIGN(12) stays where it is, page-aligned. The rule does not wipe: a
// run that rallocx grows in place with MALLOCX_ZERO over a freed block's pages is zeroed up
// to its usable size. The first mallocx, which looks jemalloc's functions up and finds none,
// leaves no error for the program's dlerror().
Test(e2e_programs, rallocx_keeps_the_alignment_and_zeroing_asked_for) {
    need_built("jemalloc_absent");
    TempDir dir;
    cr_assert(dir.ok());
    const std::string config = dir.file("rules.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [{"name": "all", "min_size": 0, "actions": ["lock", "dontdump"]}],
  "policy": {"on_lock_failure": "deny"}, "stats": {"file": ")" + dir.file("stats.%p.json") + R"("}})"));
    const Shimmed with = run_with(dir, {shim_program("jemalloc_absent")}, config);
    cr_assert(with.result.exited_with(0), "%s", with.result.describe().c_str());
    cr_assert_str_eq(with.result.out.c_str(), "jemalloc absent ok\n");
}

// jemalloc's own interface, as BIND 9.18's libisc allocates through it (libjemalloc.so.2 after
// the shim): under match-all a mallocx block lies in locked, never-dumped arena memory (it was
// jemalloc's, whatever the rules), and mallocx, rallocx, xallocx, sallocx, dallocx and sdallocx
// keep their contract (zeroing, alignment, bytes kept, a block at least nallocx's real size)
// with and without the shim.
Test(e2e_programs, jemallocs_own_interface_reaches_the_rules) {
    need_built("jemalloc_api");
    TempDir dir;
    const std::string config = write_config(dir, R"({"name": "all", "min_size": 0})");
    RunOptions opts = plain_env({shim_program("jemalloc_api"), "hold"});
    for (auto &kv : shim_env(config)) opts.env.push_back(kv);
    LiveProgram child;
    start_until_ready(child, opts);
    const auto block = line_value(child.out(), "block");
    cr_assert(block.has_value(), "%s", child.out().c_str());
    const void *at = reinterpret_cast<const void *>(std::stoull(*block, nullptr, 16));
    cr_assert(range_has_flag(at, 64, "lo", true, child.pid()) && range_has_flag(at, 64, "dd", true, child.pid()),
              "the mallocx block at %s is not in locked, dontdump memory", block->c_str());
    const RunResult with = child.finish();
    cr_assert(with.exited_with(0), "%s", with.describe().c_str());
    cr_assert_str_empty(with.err.c_str());

    const RunResult without = run_program(plain_env({shim_program("jemalloc_api")}));
    cr_assert(without.exited_with(0), "%s", without.describe().c_str());
    cr_assert_str_eq(without.out.c_str(), "checks 60\njemalloc api ok\n");
    cr_assert_eq(with.out.compare(0, without.out.size(), without.out), 0, "%s", with.out.c_str());
}

// jemalloc's "arenas.lookup" (by name or by MIB) of a block the arena served answers EINVAL, as
// jemalloc does for any address not its own, where jemalloc 5.3.0 itself would follow its radix
// tree into memory it never mapped (SIGSEGV); its own blocks are looked up as without the shim.
Test(e2e_programs, jemallocs_arena_lookup_of_an_arena_block_answers_einval) {
    need_built("jemalloc_api");
    TempDir dir;
    const RunResult without = run_program(plain_env({shim_program("jemalloc_api"), "lookup"}));
    cr_assert(without.exited_with(0), "%s", without.describe().c_str());
    cr_assert_str_eq(without.out.c_str(), "lookup 0 0 0 0\n");
    const struct {
        const char *rules;
        const char *out;
    } cases[] = {
        {R"({"name": "all", "min_size": 0})", "lookup 22 22 22 22\n"},
        {R"({"name": "big", "min_size": 1000000})", "lookup 0 0 0 0\n"},
    };
    for (const auto &c : cases) {
        const std::string config = write_config(dir, c.rules);
        RunOptions opts = plain_env({shim_program("jemalloc_api"), "lookup"});
        for (auto &kv : shim_env(config)) opts.env.push_back(kv);
        const RunResult with = run_program(opts);
        cr_assert(with.exited_with(0), "%s: %s", c.rules, with.describe().c_str());
        cr_assert_str_eq(with.out.c_str(), c.out, "%s", c.rules);
        cr_assert_str_empty(with.err.c_str());
    }
}
