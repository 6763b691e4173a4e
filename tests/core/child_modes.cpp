// child_modes.cpp - the seam fakes, and the child modes of the core test binary.
//
// Tests that need a fresh process with other limits (RLIMIT_MEMLOCK without CAP_IPC_LOCK, a
// core dump) re-execute this binary with MEMLOCK_CORE_TEST_CHILD=<mode>. A constructor runs
// the mode before Criterion's main and exits; the parent test asserts on the child's output,
// exit status and files.
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core_test.hpp"
#include "memlock.hpp"

namespace core_test {

FakeState g_fake;

namespace {
memlock_syscalls g_real = [] {
    memlock_syscalls s{};
    memlock_get_syscalls(&s);
    return s;
}();

int fake_mlock(const void *addr, std::size_t len) {
    ++g_fake.mlock_calls;
    g_fake.last_addr = addr;
    g_fake.last_len = len;
    if (g_fake.result == 0 && g_fake.forward) return g_real.mlock(addr, len);
    return g_fake.result;
}
int fake_munlock(const void *addr, std::size_t len) {
    ++g_fake.munlock_calls;
    g_fake.last_addr = addr;
    g_fake.last_len = len;
    if (g_fake.result == 0 && g_fake.forward) return g_real.munlock(addr, len);
    return g_fake.result;
}
int fake_madvise(void *addr, std::size_t len, int advice) {
    ++g_fake.madvise_calls;
    g_fake.last_addr = addr;
    g_fake.last_len = len;
    g_fake.last_advice = advice;
    if (g_fake.result == 0 && g_fake.forward) return g_real.madvise(addr, len, advice);
    return g_fake.result;
}
int fake_mlock2(const void *addr, std::size_t len, unsigned flags) {
    ++g_fake.mlock2_calls;
    g_fake.last_addr = addr;
    g_fake.last_len = len;
    g_fake.last_flags = flags;
    if (g_fake.result == 0 && g_fake.forward) return g_real.mlock2(addr, len, flags);
    return g_fake.result;
}
int fake_memfd_secret(unsigned flags, int *fd) {
    ++g_fake.memfd_secret_calls;
    g_fake.last_flags = flags;
    if (g_fake.result == 0) return g_real.memfd_secret(flags, fd);  // a made-up fd is of no use
    return g_fake.result;
}
}  // namespace

const memlock_syscalls &real_syscalls() { return g_real; }

void install_fakes(int result) {
    g_fake = FakeState{};
    g_fake.result = result;
    const memlock_syscalls t{&fake_mlock, &fake_munlock, &fake_madvise, &fake_mlock2, &fake_memfd_secret};
    memlock_set_syscalls(&t);
}

void restore_syscalls() { memlock_set_syscalls(nullptr); }

}  // namespace core_test

namespace {

// ---- mode "mlock_limit": run without CAP_IPC_LOCK under RLIMIT_MEMLOCK = 64 KiB -------------
// Prints one "key=value" line per fact; the parent test asserts on them.
int child_mlock_limit() {
    const std::size_t big = 128 * 1024, small = 4096;
    void *p = nullptr;
    if (memlock_reserve(big, &p) != 0 || memlock_commit(p, big) != 0) return 2;

    std::printf("c_lock_128k=%d\n", memlock_lock(p, big));
    const std::error_code ec = memlock::lock(p, big);
    std::printf("cxx_lock_128k=%d:%s\n", ec.value(), ec.category().name());
    const int small_rc = memlock_lock(p, small);  // under the limit: must work
    std::printf("c_lock_4k=%d\n", small_rc);
    if (small_rc == 0) memlock_unlock(p, small);
    memlock_release(p, big);

    std::error_code rec;
    memlock::LockedBuffer req = memlock::LockedBuffer::create(big, rec, memlock::LockPolicy::require);
    std::printf("require=%d:%s empty=%d\n", rec.value(), rec.category().name(), req.empty() ? 1 : 0);

    std::error_code bec;
    memlock::LockedBuffer best = memlock::LockedBuffer::create(big, bec, memlock::LockPolicy::best_effort);
    bool usable = !best.empty();
    if (usable) {
        best.data()[0] = 1;
        best.data()[big - 1] = 2;
        usable = best.data()[0] == 1 && best.data()[big - 1] == 2;
    }
    std::printf("best_effort=%d usable=%d locked=%d lock_error=%d:%s dontdump=%d\n", bec.value(),
                usable ? 1 : 0, best.locked() ? 1 : 0, best.lock_error().value(),
                best.lock_error().category().name(), best.dontdump() ? 1 : 0);
    return 0;
}

// Decodes 32 hex digits into 16 bytes. false on bad input.
bool decode_marker(const char *hex, unsigned char out[16]) {
    if (hex == nullptr || std::strlen(hex) != 32) return false;
    for (int i = 0; i < 16; ++i) {
        unsigned v = 0;
        if (std::sscanf(hex + 2 * i, "%2x", &v) != 1) return false;
        out[i] = static_cast<unsigned char>(v);
    }
    return true;
}

// ---- mode "dump": writes 1024 copies of a secret marker into a LockedBuffer and of a plain
// marker into a plain mapping, then aborts (dumping core in the working directory).
// MEMLOCK_GUARD=1 holds a CoreDumpGuard while aborting.
int child_dump() {
    unsigned char secret[16], plain[16];
    if (!decode_marker(std::getenv("MEMLOCK_MARK_SECRET"), secret) ||
        !decode_marker(std::getenv("MEMLOCK_MARK_PLAIN"), plain))
        return 2;
    struct rlimit rl;
    if (getrlimit(RLIMIT_CORE, &rl) != 0) return 3;
    rl.rlim_cur = rl.rlim_max;  // the soft limit starts at 0 on this platform
    if (setrlimit(RLIMIT_CORE, &rl) != 0) return 3;

    const std::size_t n = 1024 * sizeof secret;
    std::error_code ec;
    memlock::LockedBuffer buf = memlock::LockedBuffer::create(n, ec);
    if (ec) return 4;
    void *q = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED) return 5;
    for (std::size_t i = 0; i < 1024; ++i) {
        std::memcpy(buf.data() + i * sizeof secret, secret, sizeof secret);
        std::memcpy(static_cast<unsigned char *>(q) + i * sizeof plain, plain, sizeof plain);
    }
    memlock_wipe(secret, sizeof secret);  // only the buffer holds the secret now
    memlock_wipe(plain, sizeof plain);

    const char *guard_env = std::getenv("MEMLOCK_GUARD");
    const bool guard = guard_env != nullptr && std::strcmp(guard_env, "1") == 0;
    if (guard) {
        static memlock::CoreDumpGuard g;  // stays alive through abort()
        if (!g.active()) return 6;
    }
    std::fflush(nullptr);
    std::abort();
}

__attribute__((constructor)) void run_child_mode() {
    const char *mode = std::getenv(core_test::kChildModeEnv);
    if (mode == nullptr) return;
    int rc = 100;
    if (std::strcmp(mode, "mlock_limit") == 0) rc = child_mlock_limit();
    else if (std::strcmp(mode, "dump") == 0) rc = child_dump();
    std::fflush(nullptr);
    std::_Exit(rc);
}

}  // namespace
