// End-to-end: the malloc API contract (tests/progs/conformance.c) holds without the shim, with
// a config that matches nothing and with one that matches every allocation.
#include <criterion/criterion.h>

#include <string>

#include "e2e.hpp"
#include "helpers.hpp"
#include "three_ways.hpp"

using namespace memlock_test;

namespace {

// The producer/consumer check alone allocates this many blocks (conformance.c, kHandoffBlocks).
constexpr unsigned long long kHandoffBlocks = 100000;

}  // namespace

Test(e2e_conformance, malloc_contract_holds_without_shim_match_none_and_match_all) {
    const std::string prog = shim_program("conformance");
    cr_assert(file_exists(prog), "%s missing: run `make progs`", prog.c_str());
    const ThreeWays t = run_three_ways({prog});
    t.expect_same(0);

    const auto lines = split_lines(t.without().result.out);
    cr_assert_eq(lines.size(), 1u, "only the summary is printed when every check passes:\n%s",
                 t.without().result.out.c_str());
    unsigned long checks = 0, failed = 1;
    cr_assert_eq(std::sscanf(lines[0].c_str(), "conformance: %lu checks, %lu failed", &checks, &failed), 2,
                 "%s", lines[0].c_str());
    cr_assert_eq(failed, 0u);
    cr_assert_gt(checks, 5000u, "%s", lines[0].c_str());
    cr_assert_str_empty(t.without().result.err.c_str());
    cr_assert_str_empty(t.none().result.err.c_str());
    // match-all: nothing is said either. The deliberately impossible requests fail in the next
    // allocator as they do without the shim, so the arena reports no overflow; and locking
    // never fell back (config/match-all.json allows 1 GiB).
    cr_assert_str_empty(t.all().result.err.c_str());

    // match-none has no rules: no arena, no stats file, every call passed through.
    cr_assert(t.none().stats.files.empty(), "%s", t.none().stats.describe().c_str());
    // match-all: the checks ran against the arena (forked children _exit without stats).
    const std::string stats = t.all().stats.most("matched_allocations");
    cr_assert_geq(json_uint(stats, "matched_allocations").value_or(0), kHandoffBlocks, "%s", stats.c_str());
    cr_assert_gt(json_uint(stats, "frees").value_or(0), kHandoffBlocks, "%s", stats.c_str());
    cr_assert_gt(json_uint(stats, "locked_bytes").value_or(0), 0u, "%s", stats.c_str());
    cr_assert_eq(json_uint(stats, "fallbacks").value_or(1), 0u, "%s", stats.c_str());
}

// C makes errno 0 when main starts, and free leaves it alone. The shim's start-up looks things
// up that may not exist (the system config when MEMLOCK_SHIM_CONFIG is empty, the modules of a
// caller rule, symbols in each object loaded before it): with no config, with
// config/default.json's caller rule and with match-all, main still starts with errno 0 and no
// dlerror() pending (tests/progs/e2e_errno.c).
Test(e2e_conformance, errno_is_zero_and_no_dlerror_is_pending_at_main_and_free_keeps_errno) {
    const std::string prog = need_built("e2e_errno");
    const std::string configs[] = {"", source_dir() + "/config/default.json", source_dir() + "/config/match-all.json"};
    for (const auto &config : configs) {
        const RunResult r = run_program(shim_options(config, {prog}));
        cr_assert(r.exited_with(0), "config \"%s\": %s", config.c_str(), r.describe().c_str());
        cr_assert_str_eq(r.out.c_str(), "errno at main: 0\ndlerror at main: (none)\nerrno after free: 4242 4242\n",
                         "config \"%s\"", config.c_str());
    }
}
