// locked_buffer.cpp - memlock::LockedBuffer: one secret in memory of its own, locked and kept
// out of core dumps, wiped on destruction. Shows both failure policies and locked().
#include <cstdio>
#include <cstring>
#include <system_error>

#include "memlock.hpp"

namespace {

void report(const char *what, const memlock::LockedBuffer &b) {
    std::printf("%s: %zu bytes, locked=%s dontdump=%s", what, b.size(), b.locked() ? "yes" : "no",
                b.dontdump() ? "yes" : "no");
    if (b.lock_error()) std::printf(" (lock: %s)", b.lock_error().message().c_str());
    std::printf("\n");
}

}  // namespace

int main() {
    memlock::CoreDumpGuard no_cores;  // belt and braces: no core dump at all while secrets live
    std::printf("core dumps %s\n", no_cores.active() ? "disabled" : "still enabled");

    // require (default): no buffer unless it is locked and marked dontdump.
    std::error_code ec;
    memlock::LockedBuffer key = memlock::LockedBuffer::create(32, ec);
    if (ec) {
        std::fprintf(stderr, "require: cannot create a locked buffer: %s\n", ec.message().c_str());
        return 1;
    }
    for (std::size_t i = 0; i < key.size(); ++i) key.data()[i] = static_cast<unsigned char>(i * 7);
    report("require", key);

    // best_effort: always a usable buffer; locked() says whether the lock took.
    memlock::LockedBuffer scratch = memlock::LockedBuffer::create(1 << 20, ec, memlock::LockPolicy::best_effort);
    if (ec) {
        std::fprintf(stderr, "best_effort: cannot map: %s\n", ec.message().c_str());
        return 1;
    }
    report("best_effort", scratch);

    memlock::LockedBuffer moved = std::move(key);  // move-only: ownership moves, nothing is copied
    std::printf("after move: key empty=%s, moved holds %zu bytes\n", key.empty() ? "yes" : "no", moved.size());
    return 0;  // destructors wipe, unlock and unmap
}
