// End-to-end: the shim composes with another allocator preloaded after it. Calls that do not
// match go to the next definition in the lookup order (here jemalloc), matching ones to the
// arena, and each free goes back to the allocator its block came from.
#include <criterion/criterion.h>

#include <sstream>
#include <string>

#include "helpers.hpp"

using namespace memlock_test;

namespace {

const char *const kJemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

}  // namespace

Test(e2e_compose, unmatched_blocks_come_from_the_next_preloaded_allocator) {
    cr_assert(file_exists(kJemalloc), "%s missing (scripts/install-deps.sh installs libjemalloc2)", kJemalloc);
    TempDir dir;
    const std::string config = dir.file("rules.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [{"name": "keys", "size": 32},
                                   {"name": "buffers", "min_size": 512, "max_size": 2048}]})"));
    RunOptions opts;
    opts.argv = {shim_program("e2e_layout")};
    opts.env = {{"LD_PRELOAD", shim_library() + " " + kJemalloc}, {"MEMLOCK_SHIM_CONFIG", config}};
    LiveProgram child;
    cr_assert_not_null(start_program_into(child, opts));
    cr_assert(child.wait_for_line("ready"), "stdout: %s\nstderr: %s", child.out().c_str(), child.err().c_str());

    const auto maps = read_smaps(child.pid());
    bool jemalloc_loaded = false;
    for (const auto &m : maps) jemalloc_loaded |= m.path.find("libjemalloc") != std::string::npos;
    cr_assert(jemalloc_loaded, "jemalloc is not mapped");
    unsigned matched = 0, plain = 0;
    for (const auto &line : split_lines(child.out())) {
        std::istringstream in(line);
        std::string kind, addr_text;
        std::size_t size = 0;
        if (!(in >> kind >> addr_text >> size) || (kind != "match" && kind != "plain")) continue;
        const void *addr = parse_pointer(addr_text);
        const auto m = find_mapping(maps, addr);
        cr_assert(m.has_value(), "%s: in no mapping", line.c_str());
        if (kind == "match") {
            ++matched;
            cr_assert(range_has_flag(addr, size, "lo", true, child.pid()), "%s: not locked", line.c_str());
            cr_assert(range_has_flag(addr, size, "dd", true, child.pid()), "%s: not dontdump", line.c_str());
        } else {
            ++plain;
            // jemalloc serves from its own mmap'd extents, never glibc's brk heap.
            cr_assert_neq(m->path, "[heap]", "%s: served by glibc, not by jemalloc", line.c_str());
            cr_assert_not(m->has_flag("lo") || m->has_flag("dd"), "%s: unmatched block protected", line.c_str());
        }
    }
    cr_assert_eq(matched, 5u);
    cr_assert_eq(plain, 3u);
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("done\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}
