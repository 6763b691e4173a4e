// The caller index re-reads only what was loaded since it was built: a dlopen + dlclose +
// matching malloc cycle reads one object (the library loaded), and a dlclose that unloads
// nothing reads none. Work is counted (objects read from disk), not timed.
#include <criterion/criterion.h>
#include <dlfcn.h>

#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include "callers.hpp"
#include "helpers.hpp"
#include "runtime.hpp"

using namespace mlshim;
using namespace memlock_test;

namespace {

__attribute__((noinline)) void here() { __asm__ volatile("" ::: "memory"); }

// A 32-byte allocation whose depth-1 caller is `ra`: matched by rule 0 (pool 0) or not (-1).
int match_from(const void *ra) { return match_callers(32, ra, 0); }

void *open_secretlib(const void **loader) {
    const std::string lib = shim_build_dir() + "/libs/libsecretlib.so";
    void *h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
    cr_assert(h, "dlopen %s: %s (run `make progs`)", lib.c_str(), dlerror());
    *loader = dlsym(h, "alloc_helper");
    cr_assert(*loader);
    return h;
}

void use_one_rule() {
#if defined(__SANITIZE_ADDRESS__)
    // Replaced indexes are kept for the life of the process (readers may still hold them):
    // by design, not a leak.
    __lsan_disable();
#endif
    std::vector<CallerCondition> conds(1);
    conds[0].name = "helper";
    conds[0].symbol = "alloc_helper";
    conds[0].symbol_depth = 1;
    g_rules[0] = SizeRule{32, 32, 0, 0};
    g_nrules = 1;
    const std::string why = callers_init(conds, nullptr);
    cr_assert_str_empty(why.c_str());
}

}  // namespace

Test(callers_reindex, a_dlopen_dlclose_cycle_reads_only_the_library_loaded) {
    use_one_rule();
    const unsigned long long at_start = callers_objects_read();
    cr_assert_gt(at_start, 1u, "every object loaded at start-up is read once");
    for (int cycle = 1; cycle <= 5; ++cycle) {
        const void *loader = nullptr;
        void *h = open_secretlib(&loader);
        // The library's function is not indexed yet: the lookup indexes the new object alone.
        cr_assert_eq(match_from(static_cast<const char *>(loader) + 1), 0, "cycle %d: the rule matches", cycle);
        cr_assert_eq(callers_objects_read(), at_start + cycle, "cycle %d: one object read on dlopen", cycle);
        cr_assert_eq(dlclose(h), 0);
        callers_objects_changed();  // what the shim's dlclose does
        cr_assert_eq(match_from(reinterpret_cast<const void *>(&here)), -1);
        cr_assert_eq(callers_objects_read(), at_start + cycle, "cycle %d: dlclose reads nothing", cycle);
    }
}

Test(callers_reindex, a_dlclose_that_unloads_nothing_changes_nothing) {
    use_one_rule();
    const void *loader = nullptr;
    void *first = open_secretlib(&loader);
    cr_assert_eq(match_from(static_cast<const char *>(loader) + 1), 0);
    const unsigned long long read = callers_objects_read();
    void *second = open_secretlib(&loader);  // the same object, one more reference
    cr_assert_eq(dlclose(second), 0);
    callers_objects_changed();
    cr_assert_eq(match_from(static_cast<const char *>(loader) + 1), 0, "still loaded: still matched");
    cr_assert_eq(callers_objects_read(), read, "nothing was loaded or unloaded: nothing is read");
    dlclose(first);
}
