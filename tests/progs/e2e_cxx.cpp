// e2e_cxx.cpp - a C++ program whose new/delete and std::string traffic the shim serves.
//
// Expects a rule matching 24..4096 bytes. Does ROUNDS (argv[1], default 2000) rounds of:
// new/delete of a 32-byte object, a std::string of 100 characters (101 bytes), a
// std::vector<char> of 1000 bytes, and an over-aligned (64) object; keeps a window of live
// strings that it checks. Prints "allocations N" (the matched allocations it made, at least),
// "checksum C" (independent of the allocator) and "ok"; exits 0, or 1 on corrupt data.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace {

struct Key {
    std::uint64_t words[4];
};

struct alignas(64) Wide {
    unsigned char bytes[128];
};

}  // namespace

int main(int argc, char **argv) {
    long rounds = argc > 1 ? std::atol(argv[1]) : 2000;
    std::vector<std::string> window(16);
    std::uint64_t checksum = 0, allocations = 0;
    bool ok = true;
    for (long r = 0; r < rounds; ++r) {
        auto key = std::make_unique<Key>();
        for (int i = 0; i < 4; ++i) key->words[i] = static_cast<std::uint64_t>(r) * 0x9e3779b97f4a7c15ull + i;
        checksum += key->words[3] & 0xffff;
        ++allocations;

        std::string s(100, static_cast<char>('a' + r % 26));
        s[static_cast<std::size_t>(r % 100)] = '#';
        std::string &slot = window[static_cast<std::size_t>(r % 16)];
        if (!slot.empty() && (slot.size() != 100 || slot[static_cast<std::size_t>((r - 16) % 100)] != '#'))
            ok = false;
        slot = std::string(s.data(), s.size());  // a temporary: another 101-byte allocation
        allocations += 2;

        std::vector<char> v(1000, static_cast<char>(r & 0x7f));
        for (char c : v) checksum += static_cast<unsigned char>(c);
        ++allocations;

        auto *w = new Wide();
        if (reinterpret_cast<std::uintptr_t>(w) % 64 != 0) ok = false;
        w->bytes[127] = static_cast<unsigned char>(r);
        checksum += w->bytes[127];
        delete w;
        ++allocations;
    }
    std::printf("allocations %llu\nchecksum %llu\n%s\n", static_cast<unsigned long long>(allocations),
                static_cast<unsigned long long>(checksum), ok ? "ok" : "corrupt");
    return ok ? 0 : 1;
}
