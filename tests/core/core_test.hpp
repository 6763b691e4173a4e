// core_test.hpp - shared pieces of the core tests: counting/failing fakes for the system-call
// seam, and the names of the child modes the test binary re-executes itself in.
#ifndef MEMLOCK_TESTS_CORE_TEST_HPP
#define MEMLOCK_TESTS_CORE_TEST_HPP

#include <cstddef>

#include "memlock.h"

namespace core_test {

// What the fakes saw and what they return. One instance per test process (Criterion forks
// each test), reset by install_fakes().
struct FakeState {
    int result = 0;             // returned by every fake (0 or an errno value)
    int mlock_calls = 0;
    int munlock_calls = 0;
    int madvise_calls = 0;
    int mlock2_calls = 0;
    int memfd_secret_calls = 0;
    unsigned last_flags = 0;    // mlock2's
    const void *last_addr = nullptr;
    std::size_t last_len = 0;
    int last_advice = -1;
    bool forward = false;       // call the real provider after recording (result ignored when 0)
};
extern FakeState g_fake;

// Installs the counting fakes (all five members) with g_fake reset and g_fake.result = result.
void install_fakes(int result);
// Restores the real system calls (memlock_set_syscalls(nullptr)). Criterion .fini for seam tests.
void restore_syscalls();
// The real providers, captured before any test changed the seam.
const memlock_syscalls &real_syscalls();

// Environment variable that makes the test binary run a child mode instead of Criterion.
constexpr const char *kChildModeEnv = "MEMLOCK_CORE_TEST_CHILD";

}  // namespace core_test

#endif  // MEMLOCK_TESTS_CORE_TEST_HPP
