// End-to-end: the shim composes with another allocator preloaded after it. Calls that do not
// match go to the next definition in the lookup order (here jemalloc), matching ones to the
// arena, and each free goes back to the allocator its block came from. With an allocator
// that comes before the shim (preloaded first, or the program's own), the program runs as it
// does without the shim, and the shim says at start-up that no rule sees an allocation.
#include <criterion/criterion.h>

#include <string>
#include <utility>
#include <vector>

#include "e2e.hpp"
#include "three_ways.hpp"

using namespace memlock_test;

namespace {

const char *const kJemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
// Both ship with libc6.
const char *const kMallocDebug = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0";
const char *const kMemusage = "/usr/lib/x86_64-linux-gnu/libmemusage.so";

std::string test_lib(const std::string &name) { return shim_build_dir() + "/libs/lib" + name + ".so"; }

// argv run three ways with `lib` preloaded before the shim; each run exits 0 and prints what
// the run without the shim prints.
ThreeWays run_after(const std::string &lib, const std::vector<std::string> &argv) {
    cr_assert(file_exists(lib), "%s missing", lib.c_str());
    ThreeWayOptions o;
    o.preload_before = lib;
    const ThreeWays t = run_three_ways(argv, o);
    t.expect_same(0);
    return t;
}

// The shim's start-up warning of a process whose malloc calls `object` takes before the shim.
std::string allocator_before(const std::string &object, bool program) {
    const std::string why = ", which comes before the shim in the lookup order: the program's allocations never reach "
                            "the shim, and no rule sees them: nothing is protected";
    return "memlock-shim: warning: " +
           (program ? object + " defines its own malloc" + why + "\n"
                    : "malloc is defined by " + object + why + " (load libmemlock_shim.so before it)\n");
}

}  // namespace

Test(e2e_compose, unmatched_blocks_come_from_the_next_preloaded_allocator) {
    cr_assert(file_exists(kJemalloc), "%s missing (scripts/install-deps.sh installs libjemalloc2)", kJemalloc);
    TempDir dir;
    const std::string config = dir.file("rules.json");
    cr_assert(write_file(config, e2e_rules_config("")));
    RunOptions opts;
    opts.argv = {shim_program("e2e_layout")};
    opts.env = {{"LD_PRELOAD", shim_library() + " " + kJemalloc}, {"MEMLOCK_SHIM_CONFIG", config}};
    LiveProgram child;
    start_until_ready(child, opts);

    const auto maps = read_smaps(child.pid());
    bool jemalloc_loaded = false;
    for (const auto &m : maps) jemalloc_loaded |= m.path.find("libjemalloc") != std::string::npos;
    cr_assert(jemalloc_loaded, "jemalloc is not mapped");
    unsigned matched = 0, plain = 0;
    for (const auto &b : printed_blocks(child.out())) {
        const char *line = b.line.c_str();
        const auto m = find_mapping(maps, b.addr);
        cr_assert(m.has_value(), "%s: in no mapping", line);
        if (b.matched) {
            ++matched;
            cr_assert(range_has_flag(b.addr, b.size, "lo", true, child.pid()), "%s: not locked", line);
            cr_assert(range_has_flag(b.addr, b.size, "dd", true, child.pid()), "%s: not dontdump", line);
        } else {
            ++plain;
            // jemalloc serves from its own mmap'd extents, never glibc's brk heap.
            cr_assert_neq(m->path, "[heap]", "%s: served by glibc, not by jemalloc", line);
            cr_assert_not(m->has_flag("lo") || m->has_flag("dd"), "%s: unmatched block protected", line);
        }
    }
    cr_assert_eq(matched, 5u);
    cr_assert_eq(plain, 3u);
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("done\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}

// With an allocator before the shim no rule sees the program's allocations: the shim names the
// allocator once at start-up, and in its counters (memlock-inspect warns). Nothing is said
// without rules. jemalloc also calls syscall(3) while it starts, under the lock its malloc
// takes, before the shim has looked up libc's: the program runs.
Test(e2e_compose, an_allocator_before_the_shim_is_named_at_start_up) {
    // python3 (not PIE) takes malloc's address: its PLT entry for malloc is not a definition.
    const std::vector<std::string> python = {"/usr/bin/python3", "-c", "print('ok')"};
    for (const auto &[lib, argv] : {std::make_pair(kJemalloc, std::vector<std::string>{shim_program("e2e_hello")}),
                                    std::make_pair(kMallocDebug, std::vector<std::string>{shim_program("e2e_hello")}),
                                    std::make_pair(kJemalloc, python)}) {
        const ThreeWays t = run_after(lib, argv);
        cr_assert_str_empty(t.without().result.err.c_str());
        cr_assert_str_empty(t.none().result.err.c_str());
        const std::string expected = allocator_before(lib, false);
        assert_log_eq(t.all().result.err, expected.c_str());
        cr_assert(contains(t.all().stats.describe(), std::string("\"allocator_before_shim\": \"") + lib + "\""), "%s",
                  t.all().stats.describe().c_str());
    }
}

// A program that defines malloc itself comes first in the lookup order (as rustc, which links
// jemalloc in); its allocator's start-up also calls syscall(3) and clone(3): the program runs.
Test(e2e_compose, a_program_with_its_own_malloc_is_named_at_start_up) {
    const std::string prog = shim_program("own_allocator");
    const ThreeWays t = run_three_ways({prog});
    t.expect_same(0);
    cr_assert_str_eq(t.without().result.out.c_str(), "ok\n");
    const std::string expected = allocator_before(real(prog), true);
    assert_log_eq(t.all().result.err, expected.c_str());
}

// A wrapper before the shim that forwards to the next allocator (libmemusage, as heaptrack's;
// one that passes malloc on as calloc) hands the calls on to the shim, and a malloc under
// another library's version (malloc@@MEMLOCK_TEST_1.0, which aborts) takes none of the
// program's calls: nothing to say, and the arena serves them.
Test(e2e_compose, an_object_before_the_shim_that_takes_no_call_from_it_is_not_reported) {
    for (const std::string &lib : {std::string(kMemusage), test_lib("forward_calloc"), test_lib("versioned_malloc")}) {
        const ThreeWays t = run_after(lib, {shim_program("e2e_hello")});
        cr_assert_str_eq(t.without().result.out.c_str(), "hello 3\n");
        cr_assert(!contains(t.all().result.err, "memlock-shim"), "%s: %s", lib.c_str(),
                  t.all().result.describe().c_str());
        cr_assert_gt(t.all().stats.total("matched_allocations"), 0u, "%s", t.all().stats.describe().c_str());
        cr_assert(contains(t.all().stats.describe(), "\"allocator_before_shim\": null"), "%s",
                  t.all().stats.describe().c_str());
    }
}
