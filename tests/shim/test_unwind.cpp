// The fast stack walk gives the return addresses libgcc's unwinder gives, frame for frame,
// through frames addressed from the stack pointer and from the frame pointer, deep stacks,
// threads and after the cache is forgotten; where it cannot walk (a signal frame) it says
// so instead of guessing.
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <unwind.h>

#include <cstdint>
#include <vector>

#include "unwind.hpp"

using namespace mlshim;

namespace {

struct Walk {
    int fast_n = 0;
    std::uint64_t walk = 0;  // its name, 0: not kept
    bool copied = true;      // fast holds the return addresses (a replay asked to leave them does not)
    std::vector<std::uintptr_t> fast;
    std::vector<std::uintptr_t> libgcc;  // from the same return address on
};

struct Collect {
    std::vector<std::uintptr_t> *out;
};

_Unwind_Reason_Code collect(_Unwind_Context *ctx, void *arg) {
    static_cast<Collect *>(arg)->out->push_back(_Unwind_GetIP(ctx));
    return _URC_NO_REASON;
}

// Set: walk_here lets a replay leave its return addresses (fast_backtrace's `copied`).
bool g_leave_replays;

// Both walks from the return address into walk_here's caller, at most `max` frames.
__attribute__((noinline)) Walk walk_here(int max) {
    const auto from = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
    Walk w;
    w.fast.resize(static_cast<std::size_t>(max));
    w.fast_n = fast_backtrace(from, w.fast.data(), max, &w.walk, g_leave_replays ? &w.copied : nullptr);
    std::vector<std::uintptr_t> all;
    Collect c{&all};
    _Unwind_Backtrace(collect, &c);
    std::size_t i = 0;
    while (i < all.size() && all[i] != from) ++i;
    for (; i < all.size() && w.libgcc.size() < static_cast<std::size_t>(max); ++i)
        if (all[i]) w.libgcc.push_back(all[i]);
    return w;
}

void expect_same(const Walk &w, const char *where) {
    cr_assert_geq(w.fast_n, 1, "%s: the fast walk gave up (%d)", where, w.fast_n);
    cr_assert_eq(static_cast<std::size_t>(w.fast_n), w.libgcc.size(), "%s: %d frames, libgcc %zu", where, w.fast_n,
                 w.libgcc.size());
    for (int i = 0; i < w.fast_n; ++i)
        cr_expect_eq(w.fast[static_cast<std::size_t>(i)], w.libgcc[static_cast<std::size_t>(i)],
                     "%s: frame %d: %#lx, libgcc %#lx", where, i, static_cast<unsigned long>(w.fast[static_cast<std::size_t>(i)]),
                     static_cast<unsigned long>(w.libgcc[static_cast<std::size_t>(i)]));
}

volatile int g_sink;

// Frames of different shapes. Each does work after its call, so none is a tail call.
__attribute__((noinline)) Walk leafish(int max) {
    Walk w = walk_here(max);
    g_sink = g_sink + 1;
    return w;
}

__attribute__((noinline)) Walk with_array(int max) {
    volatile char big[3000];
    big[0] = static_cast<char>(max);
    Walk w = leafish(max);
    g_sink = g_sink + big[0];
    return w;
}

// A variable-length array: the compiler addresses this frame from the frame pointer.
__attribute__((noinline)) Walk with_vla(int max, int n) {
    volatile char vla[n];
    vla[0] = 1;
    Walk w = with_array(max);
    g_sink = g_sink + vla[0];
    return w;
}

__attribute__((noinline, optimize("no-omit-frame-pointer"))) Walk with_frame_pointer(int max) {
    Walk w = with_vla(max, 100 + g_sink % 7);
    g_sink = g_sink + 2;
    return w;
}

__attribute__((noinline)) Walk recurse(int depth, int max) {
    if (depth == 0) return with_frame_pointer(max);
    Walk w = recurse(depth - 1, max);
    g_sink = g_sink + depth;
    return w;
}

}  // namespace

Test(unwind, matches_libgcc_through_every_kind_of_frame) {
    for (int max : {1, 2, 5, 8, 16}) expect_same(recurse(3, max), "shallow");
}

Test(unwind, walks_to_the_end_of_the_stack) {
    // More frames asked for than there are: both walks stop at the outermost frame.
    Walk w = recurse(2, 64);
    expect_same(w, "whole stack");
    cr_expect_lt(w.fast_n, 64);
}

Test(unwind, deep_stacks) {
    expect_same(recurse(40, 64), "deep");
}

namespace {
void *thread_walk(void *arg) {
    *static_cast<Walk *>(arg) = recurse(5, 64);
    return nullptr;
}
}  // namespace

Test(unwind, in_a_thread) {
    Walk w;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, nullptr, thread_walk, &w), 0);
    pthread_join(t, nullptr);
    expect_same(w, "thread");
}

Test(unwind, rules_are_cached_and_forgotten) {
    // Every walk from one call site, so that each sees the same return addresses.
    unsigned long long made[5];
    for (int i = 0; i < 5; ++i) {
        if (i == 3) fast_backtrace_forget();
        const unsigned long long before = fast_backtrace_counts().rules;
        expect_same(recurse(4, 16), "walk");
        made[i] = fast_backtrace_counts().rules - before;
    }
    cr_expect_gt(made[0], 0u, "the first walk made no rules");
    cr_expect_eq(made[1] + made[2], 0u, "identical walks made new rules");
    cr_expect_eq(made[3], made[0], "forgotten rules were used again");
    cr_expect_eq(made[4], 0u, "rules made again were not kept");
}

// ---- walks kept with the words they read ------------------------------------------------------

namespace {

// A frame that calls Next and does work after it (so the call is not a tail call); K tells
// the copies apart.
template <Walk (*Next)(int), int K> __attribute__((noinline)) Walk calls(int max) {
    Walk w = Next(max);
    g_sink = g_sink + K;
    return w;
}

// Three callers of the same shape: a walk from inside `inner` starts at the same stack pointer
// through each, and only the return address into the caller tells them apart.
constexpr Walk (*inner)(int) = calls<walk_here, 11>;
constexpr Walk (*caller_one)(int) = calls<inner, 1>;
constexpr Walk (*caller_two)(int) = calls<inner, 2>;
constexpr Walk (*caller_three)(int) = calls<inner, 3>;
Walk (*volatile g_callers[3])(int) = {caller_one, caller_two, caller_three};

unsigned long long walks() { return fast_backtrace_counts().walks; }

}  // namespace

Test(unwind, a_walk_from_the_same_place_over_the_same_words_is_replayed) {
    for (int max : {4, 8, 16}) {
        // Every walk from one call site: the first reads its rules, the others are replays.
        unsigned long long before = 0;
        std::uint64_t name = 0;
        for (int i = 0; i < 5; ++i) {
            const Walk w = recurse(3, max);
            expect_same(w, "walk");
            if (i == 0) before = walks(), name = w.walk;
            cr_expect_eq(w.walk, name, "max %d: a replay is named as the walk kept", max);
        }
        cr_expect_neq(name, 0u);
        cr_expect_eq(walks(), before, "max %d: identical walks read their rules again (%llu times)", max, walks() - before);
    }
}

Test(unwind, another_caller_at_the_same_stack_depth_is_kept_beside_it) {
    Walk seen[2];
    for (int round = 0; round < 6; ++round) {
        const unsigned long long before = walks();
        const Walk w = g_callers[round % 2](8);
        expect_same(w, round % 2 ? "through caller_two" : "through caller_one");
        // Each caller's walk is read once, then replayed: the two are kept side by side.
        cr_expect_eq(walks(), before + (round < 2 ? 1 : 0), "round %d: walks %llu", round, walks() - before);
        // Kept, and under a name of its own: what was decided for the other walk is not its.
        cr_expect_neq(w.walk, 0u, "round %d: not kept", round);
        if (round >= 1) cr_expect_neq(w.walk, seen[(round + 1) % 2].walk, "round %d: the other caller's name", round);
        if (round >= 2) cr_expect_eq(w.walk, seen[round % 2].walk, "round %d: not a replay of its own walk", round);
        seen[round % 2] = w;
    }
    cr_assert_eq(seen[0].fast[0], seen[1].fast[0], "not the same call site in inner");
    cr_expect_neq(seen[0].fast[1], seen[1].fast[1], "the two callers gave the same return address");
}

Test(unwind, a_replay_left_uncopied_is_copied_while_its_walk_is_kept) {
    g_leave_replays = true;
    Walk walks[2];
    for (Walk &each : walks) each = g_callers[0](8);  // one call site: the second is a replay
    Walk &w = walks[1];
    cr_assert_not(w.copied, "a replay wrote the return addresses it was asked to leave");
    cr_assert_eq(w.walk, walks[0].walk, "not a replay of the walk kept");
    for (std::uintptr_t pc : w.fast) cr_expect_eq(pc, 0u, "a replay wrote %#lx, asked to leave it", static_cast<unsigned long>(pc));
    w.fast.assign(8, 0);
    cr_assert(fast_backtrace_copy(w.walk, w.fast.data(), w.fast_n), "the kept walk was not copied");
    expect_same(w, "copied later");
    // The other callers' walks start at the same stack pointer: the second caller's is kept
    // beside it. The third's then takes one of the two entries, and the second's, walked again
    // if that was its entry, the other: the first walk is no longer kept.
    const Walk second = g_callers[1](8);
    cr_assert(second.copied, "a walk that read its rules left its return addresses");
    cr_assert_neq(second.walk, w.walk);
    cr_expect(fast_backtrace_copy(w.walk, w.fast.data(), w.fast_n), "the walk kept beside another was not copied");
    for (int i = 0; i < 2; ++i) cr_assert_neq(g_callers[2 - i](8).walk, 0u, "not kept");
    cr_expect_not(fast_backtrace_copy(w.walk, w.fast.data(), w.fast_n), "a walk no longer kept was copied");
    g_leave_replays = false;
}

Test(unwind, a_frame_pointer_frame_is_replayed_only_with_its_frame_pointer) {
    // with_vla and with_frame_pointer are addressed from the frame pointer: the same stack
    // pointer with different stack contents below must not replay a wrong walk.
    for (int i = 0; i < 8; ++i) expect_same(recurse(i % 3, 16), "depths alternate");
    for (int i = 0; i < 4; ++i) expect_same(with_vla(16, 100 + i), "vla of another size");
}

Test(unwind, replays_are_forgotten_with_the_rules) {
    const Walk first = recurse(3, 8);
    expect_same(first, "first");
    const unsigned long long before = walks();
    fast_backtrace_forget();
    const Walk after = recurse(3, 8);
    expect_same(after, "after forgetting");
    cr_expect_eq(walks(), before + 1, "a walk of the forgotten generation was replayed");
    cr_expect_neq(after.walk, first.walk, "the walk of the new generation has the forgotten one's name");
}

namespace {
Walk g_in_handler;
void on_signal(int) { g_in_handler = recurse(1, 32); }
}  // namespace

Test(unwind, signal_frames_fall_back) {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    cr_assert_eq(sigaction(SIGUSR1, &sa, nullptr), 0);
    raise(SIGUSR1);
    const Walk &w = g_in_handler;
    // libgcc walks through the kernel's signal frame; the fast walk hands such stacks to it.
    cr_assert_gt(w.libgcc.size(), 8u);
    cr_expect_eq(w.fast_n, -1, "the fast walk went through a signal frame (%d frames)", w.fast_n);
    // Within the frames before the signal frame it still agrees.
    Walk near = {};
    struct sigaction sb {};
    sb.sa_handler = [](int) { g_in_handler = recurse(1, 4); };
    cr_assert_eq(sigaction(SIGUSR1, &sb, nullptr), 0);
    raise(SIGUSR1);
    near = g_in_handler;
    expect_same(near, "inside the handler");
    cr_expect_gt(fast_backtrace_counts().fallbacks, 0u);
}

// ---- what fork children learn, their parent learns --------------------------------------------

namespace {

// Call sites only the fork children of the test below walk through first.
constexpr Walk (*child_path_c)(int) = calls<walk_here, 3>;
constexpr Walk (*child_path_b)(int) = calls<child_path_c, 5>;
constexpr Walk (*child_path_a)(int) = calls<child_path_b, 7>;

// Forks a child that walks child_path_a (as the shim's fork handler would, it stops being the
// ring's owner); returns how many rules that walk made in the child, or -1.
long rules_made_by_a_child() {
    const pid_t pid = fork();
    if (pid == 0) {
        fast_backtrace_after_fork_child();
        const unsigned long long before = fast_backtrace_counts().rules;
        const Walk w = child_path_a(8);
        const unsigned long long made = fast_backtrace_counts().rules - before;
        _exit(w.fast_n == 8 && w.fast == w.libgcc ? static_cast<int>(made < 100 ? made : 100) : 101);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) > 100) return -1;
    return WEXITSTATUS(status);
}

}  // namespace

Test(unwind, the_parent_learns_what_its_fork_children_learned) {
    cr_assert(fast_backtrace_share(), "no shared ring");
    expect_same(recurse(2, 8), "the parent's own walk");
    // Two children forked from the same call site: the same return addresses on their stacks.
    long made[2];
    unsigned long long learned = 0;
    for (int round = 0; round < 2; ++round) {
        made[round] = rules_made_by_a_child();
        if (round == 1) break;
        // The parent's next walks take the child's return addresses and make their rules.
        const unsigned long long hints = fast_backtrace_counts().hints;
        for (int i = 0; i < 16; ++i) expect_same(recurse(2, 8), "a walk that learns");
        learned = fast_backtrace_counts().hints - hints;
    }
    cr_assert_gt(made[0], 0, "the first child made no rule for call sites new to it (%ld)", made[0]);
    cr_assert_geq(learned, static_cast<unsigned long long>(made[0]), "the parent learned %llu of the %ld rules its child made",
                  learned, made[0]);
    cr_assert_eq(made[1], 0, "the second child made %ld rules its parent had learned", made[1]);
}

Test(unwind, a_fork_child_keeps_no_walk_before_it_has_walked_a_while) {
    cr_expect_neq(recurse(2, 8).walk, 0u, "the parent's walk was not kept");
    const pid_t pid = fork();
    if (pid == 0) {
        fast_backtrace_after_fork_child();
        // One call site: every walk the same, kept only once the first ones are done.
        int status = 0;
        std::uint64_t kept = 0;
        for (unsigned i = 0; i < kFastBacktraceChildUnkept + 3; ++i) {
            const unsigned long long before = walks();
            const Walk w = recurse(2, 8);
            const bool walked = walks() == before + 1;
            if (w.fast_n != 8 || w.fast != w.libgcc) status |= 1;                      // wrong frames
            if (i < kFastBacktraceChildUnkept && (w.walk || !walked)) status |= 2;      // kept, or replayed
            if (i == kFastBacktraceChildUnkept && (!w.walk || !walked)) status |= 4;    // not kept then
            if (i == kFastBacktraceChildUnkept) kept = w.walk;
            if (i > kFastBacktraceChildUnkept && (w.walk != kept || walked)) status |= 8;  // not replayed
        }
        _exit(status);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child did not exit");
    cr_expect_eq(WEXITSTATUS(status), 0, "the child's walks: %s%s%s%s", WEXITSTATUS(status) & 1 ? "wrong frames; " : "",
                 WEXITSTATUS(status) & 2 ? "one of its first walks was kept or replayed; " : "",
                 WEXITSTATUS(status) & 4 ? "the first walk after those was not kept; " : "",
                 WEXITSTATUS(status) & 8 ? "a later walk was not a replay" : "");
}

// A parent that neither walked nor shared the ring (size rules, or caller rules of depth 1):
// its child's table holds nothing of the parent's, and the handler writes nothing: the child
// keeps its walks at once.
Test(unwind, a_fork_child_of_a_parent_that_never_walked_nor_shared_keeps_its_first_walk) {
    cr_assert_eq(walks(), 0u, "this process walked before the test");
    const pid_t pid = fork();
    if (pid == 0) {
        fast_backtrace_after_fork_child();
        Walk w[2];
        for (Walk &each : w) each = recurse(2, 8);  // one call site
        _exit(w[0].walk == 0 ? 1 : w[1].walk != w[0].walk ? 2 : 0);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child did not exit");
    cr_expect_eq(WEXITSTATUS(status), 0, "%s",
                 WEXITSTATUS(status) == 1 ? "the child's first walk was not kept" : "the child's second walk was not a replay");
}

Test(unwind, a_fork_child_posts_but_never_learns) {
    cr_assert(fast_backtrace_share(), "no shared ring");
    const pid_t pid = fork();
    if (pid == 0) {
        fast_backtrace_after_fork_child();
        // The grandchild's walk posts; the child (not the owner) walks without learning them.
        const pid_t g = fork();
        if (g == 0) {
            fast_backtrace_after_fork_child();
            child_path_a(8);
            _exit(0);
        }
        int st = 0;
        waitpid(g, &st, 0);
        const unsigned long long hints = fast_backtrace_counts().hints;
        for (int i = 0; i < 16; ++i) recurse(2, 8);
        _exit(fast_backtrace_counts().hints == hints ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a child that is not the owner learned (status %#x)",
              status);
    // The owner does.
    const unsigned long long hints = fast_backtrace_counts().hints;
    for (int i = 0; i < 16; ++i) recurse(2, 8);
    cr_assert_gt(fast_backtrace_counts().hints, hints, "the owner learned nothing the grandchild posted");
}
