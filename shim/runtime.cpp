#include "runtime.hpp"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "callers.hpp"
#include "config.hpp"
#include "fatal.hpp"
#include "memlock.h"

namespace mlshim {

namespace {

// ---- bootstrap pool: serves dlsym's own allocations while g_next is looked up ----------

constexpr std::size_t kBootBytes = 64 * 1024;
alignas(64) unsigned char g_boot[kBootBytes];
std::atomic<std::size_t> g_boot_used{0};
thread_local bool t_resolving __attribute__((tls_model("initial-exec"))) = false;

// Blocks carry their size in the 16 bytes before them. Never freed.
void *boot_alloc(std::size_t n) noexcept {
    std::size_t need = 16 + ((n + 15) & ~std::size_t{15});
    std::size_t at = g_boot_used.fetch_add(need);
    if (at + need > kBootBytes || need < n) {
        errno = ENOMEM;
        return nullptr;
    }
    *reinterpret_cast<std::size_t *>(g_boot + at) = n;
    return g_boot + at + 16;
}

std::size_t boot_size(const void *p) noexcept {
    return *reinterpret_cast<const std::size_t *>(static_cast<const unsigned char *>(p) - 16);
}

// ---- the next allocator ----------------------------------------------------------------

void resolve_next() noexcept;

void *boot_malloc(std::size_t n) {
    if (t_resolving) return boot_alloc(n);
    resolve_next();
    return g_next.malloc(n);
}
void boot_free(void *p) {
    if (in_bootstrap(p) || !p) return;
    resolve_next();
    g_next.free(p);
}
void *boot_calloc(std::size_t a, std::size_t b) {
    if (t_resolving) {
        std::size_t n;
        if (__builtin_mul_overflow(a, b, &n)) return errno = ENOMEM, nullptr;
        return boot_alloc(n);  // static memory, never handed out twice: already zero
    }
    resolve_next();
    return g_next.calloc(a, b);
}
// The lookup itself only ever uses malloc, calloc and free: anything else during it fails
// cleanly rather than re-entering the lookup.
#define BOOT_OR_FAIL(fail)  \
    if (t_resolving) {      \
        errno = ENOMEM;     \
        return fail;        \
    }                       \
    resolve_next()
void *boot_realloc(void *p, std::size_t n) { BOOT_OR_FAIL(nullptr); return g_next.realloc(p, n); }
void *boot_reallocarray(void *p, std::size_t a, std::size_t b) { BOOT_OR_FAIL(nullptr); return g_next.reallocarray(p, a, b); }
int boot_posix_memalign(void **m, std::size_t a, std::size_t n) { BOOT_OR_FAIL(ENOMEM); return g_next.posix_memalign(m, a, n); }
void *boot_aligned_alloc(std::size_t a, std::size_t n) { BOOT_OR_FAIL(nullptr); return g_next.aligned_alloc(a, n); }
void *boot_memalign(std::size_t a, std::size_t n) { BOOT_OR_FAIL(nullptr); return g_next.memalign(a, n); }
void *boot_valloc(std::size_t n) { BOOT_OR_FAIL(nullptr); return g_next.valloc(n); }
void *boot_pvalloc(std::size_t n) { BOOT_OR_FAIL(nullptr); return g_next.pvalloc(n); }
std::size_t boot_usable(void *p) {
    if (in_bootstrap(p)) return boot_size(p);
    BOOT_OR_FAIL(0);
    return g_next.malloc_usable_size(p);
}
#undef BOOT_OR_FAIL

// Stand-ins for functions an allocator further down may lack.
void *fallback_reallocarray(void *p, std::size_t a, std::size_t b) {
    std::size_t n;
    if (__builtin_mul_overflow(a, b, &n)) return errno = ENOMEM, nullptr;
    return g_next.realloc(p, n);
}

template <typename F> F lookup(const char *name, F fallback) {
    void *f = dlsym(RTLD_NEXT, name);
    return f ? reinterpret_cast<F>(f) : fallback;
}

void resolve_next() noexcept {
    static std::atomic<bool> done{false};
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    if (done.load(std::memory_order_acquire)) return;
    pthread_mutex_lock(&lock);
    if (!done.load(std::memory_order_relaxed)) {
        t_resolving = true;
        NextAllocator n{};
        n.malloc = lookup<decltype(n.malloc)>("malloc", nullptr);
        n.free = lookup<decltype(n.free)>("free", nullptr);
        n.calloc = lookup<decltype(n.calloc)>("calloc", nullptr);
        n.realloc = lookup<decltype(n.realloc)>("realloc", nullptr);
        n.reallocarray = lookup<decltype(n.reallocarray)>("reallocarray", fallback_reallocarray);
        n.posix_memalign = lookup<decltype(n.posix_memalign)>("posix_memalign", nullptr);
        n.aligned_alloc = lookup<decltype(n.aligned_alloc)>("aligned_alloc", nullptr);
        n.memalign = lookup<decltype(n.memalign)>("memalign", nullptr);
        n.valloc = lookup<decltype(n.valloc)>("valloc", nullptr);
        n.pvalloc = lookup<decltype(n.pvalloc)>("pvalloc", nullptr);
        n.malloc_usable_size = lookup<decltype(n.malloc_usable_size)>("malloc_usable_size", nullptr);
        t_resolving = false;
        if (!n.malloc || !n.free || !n.calloc || !n.realloc || !n.posix_memalign || !n.aligned_alloc ||
            !n.memalign || !n.valloc || !n.pvalloc || !n.malloc_usable_size)
            fatal("cannot find the next allocator's functions (dlsym RTLD_NEXT failed)");
        g_next = n;
        done.store(true, std::memory_order_release);
    }
    pthread_mutex_unlock(&lock);
}

// ---- state ---------------------------------------------------------------------------------

Config *g_config = nullptr;   // kept for the life of the process
StatsPage *g_stats = nullptr;
bool g_active = false;

void report(LogLevel level, const char *what, const char *why) noexcept {
    BusyScope busy;
    log_msg(level, "%s: %s", what, why);
}

// Lock order across fork: the caller index's build lock, then the arena's locks (an index
// rebuild allocates, so it may take arena locks while holding the build lock).
void atfork_prepare() {
    if (!g_active) return;
    callers_prefork();
    g_arena.prefork();
}
void atfork_parent() {
    if (!g_active) return;
    g_arena.postfork_parent();
    callers_postfork();
}
void atfork_child() {
    if (!g_active) return;
    callers_postfork();
    g_stats = stats_recreate_after_fork(g_stats);
    g_arena.set_stats(g_stats);
    g_arena.postfork_child();
}

// Removes stats files of processes that no longer exist.
void sweep_stale_stats() noexcept {
    DIR *d = opendir("/dev/shm");
    if (!d) return;
    while (dirent *e = readdir(d)) {
        const char *prefix = "memlock-shim.";
        if (std::strncmp(e->d_name, prefix, std::strlen(prefix)) != 0) continue;
        char *end = nullptr;
        long pid = std::strtol(e->d_name + std::strlen(prefix), &end, 10);
        if (pid <= 0 || *end) continue;
        if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
        char path[64];
        ::unlink(stats_path(static_cast<int>(pid), path, sizeof path));
    }
    closedir(d);
}

std::string self_exe() {
    char buf[4096];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return std::string();
    buf[n] = '\0';
    return std::string(buf);
}

// Documented exit statuses of a program the shim refuses to start.
constexpr int kExitConfig = 78;  // EX_CONFIG: the config is missing or invalid
constexpr int kExitOsErr = 71;   // EX_OSERR: the arena could not be set up

[[noreturn]] void refuse(int status, const std::string &why, const std::string &exe) {
    std::string msg = "memlock-shim: " + why + "\nmemlock-shim: refusing to run " + exe +
                      " unprotected (exit " + std::to_string(status) +
                      "); fix this or set MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg.data(), msg.size());
    (void)ignored;
    ::_exit(status);
}

// Fails closed unless the operator asked to run unprotected.
void startup_error(int status, const std::string &why, const std::string &exe) {
    const char *override_env = std::getenv("MEMLOCK_SHIM_ON_CONFIG_ERROR");
    if (override_env && std::strcmp(override_env, "run-unprotected") == 0) {
        log_msg(LogLevel::error, "%s", why.c_str());
        log_msg(LogLevel::warn, "running %s UNPROTECTED (MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected)",
                exe.c_str());
        return;
    }
    if (override_env && *override_env && std::strcmp(override_env, "fail") != 0)
        refuse(status, why + " (and MEMLOCK_SHIM_ON_CONFIG_ERROR=\"" + override_env +
                           "\" is not \"run-unprotected\" or \"fail\")", exe);
    refuse(status, why, exe);
}

void runtime_start() {
    std::string exe = self_exe();
    const char *path = std::getenv("MEMLOCK_SHIM_CONFIG");
    if (!path || !*path) {
        log_msg(LogLevel::warn, "MEMLOCK_SHIM_CONFIG is not set: nothing is protected, every allocation "
                                "passes through");
        return;
    }
    auto *config = new Config();
    std::string error;
    if (!load_config_file(path, *config, error)) return startup_error(kExitConfig, error, exe);
    if (!program_matches(*config, exe.c_str())) {
        log_msg(LogLevel::info, "%s: config %s does not apply to this program", exe.c_str(), path);
        return;
    }

    int log_fd = STDERR_FILENO;
    if (config->log_file != "stderr") {
        log_fd = ::open(config->log_file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (log_fd < 0)
            return startup_error(kExitConfig,
                                 std::string(path) + ": log.file: cannot open " + config->log_file + ": " +
                                     memlock_strerror(errno),
                                 exe);
    }
    log_configure(config->log_level, log_fd);

    RuleTable table = compile_rules(config->rules);
    g_config = config;
    if (table.rules.empty()) {
        log_msg(LogLevel::info, "config %s has no rules: nothing to protect", path);
        return;
    }
    for (const SizeRule &r : table.rules) g_rules[g_nrules++] = r;
    const std::vector<CallerCondition> &conditions = table.conditions;
    if (!conditions.empty()) {
        std::string why = callers_init(conditions, [](const char *text) { log_msg(LogLevel::warn, "%s", text); });
        if (!why.empty()) return startup_error(kExitOsErr, why, exe);
    }
    sweep_stale_stats();
    g_stats = stats_create(true);
    if (g_stats) g_stats->rules = g_nrules;
    ArenaOptions opts;
    opts.pool_bytes = config->policy.max_arena;
    opts.max_locked = config->policy.max_locked;
    opts.on_lock_failure = config->policy.on_lock_failure;
    opts.prealloc = config->policy.prealloc;
    int rc;
    {
        BusyScope busy;
        rc = g_arena.init(opts, table.pool_actions.data(), static_cast<unsigned>(table.pool_actions.size()),
                          g_stats, report);
    }
    if (rc)
        return startup_error(kExitOsErr, std::string("cannot set up the secure arena: ") + memlock_strerror(rc),
                             exe);
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    if (g_stats) g_stats->active.store(1);
    g_active = true;
    log_msg(LogLevel::info, "protecting %u rule(s) from %s in %s", g_nrules, path, exe.c_str());
    // Publish the window last: from here on matching sizes take the slow path.
    g_window.lo = table.lo;
    g_window.span = table.hi - table.lo;
}

void write_stats_file() noexcept {
    if (!g_config || g_config->stats_file.empty() || !g_stats) return;
    // Expand %p to the pid (and %% to %).
    char path[4096];
    std::size_t used = 0;
    const std::string &pattern = g_config->stats_file;
    for (std::size_t i = 0; i < pattern.size() && used + 24 < sizeof path; ++i) {
        if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == 'p') {
            used += static_cast<std::size_t>(std::snprintf(path + used, sizeof path - used, "%d", ::getpid()));
            ++i;
        } else if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == '%') {
            path[used++] = '%';
            ++i;
        } else {
            path[used++] = pattern[i];
        }
    }
    path[used] = '\0';
    char json[2048];
    std::size_t len = stats_format_json(*g_stats, json, sizeof json);
    int fd = ::open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_msg(LogLevel::warn, "stats.file: cannot write %s: %s", path, memlock_strerror(errno));
        return;
    }
    ssize_t ignored = ::write(fd, json, len);
    (void)ignored;
    ::close(fd);
}

}  // namespace

SizeRule g_rules[kMaxRules];
unsigned g_nrules = 0;
__thread bool t_busy __attribute__((tls_model("initial-exec"))) = false;

NextAllocator g_next = {boot_malloc,  boot_free,          boot_calloc,  boot_realloc,
                        boot_reallocarray, boot_posix_memalign, boot_aligned_alloc, boot_memalign,
                        boot_valloc,  boot_pvalloc,       boot_usable};
MatchWindow g_window = {SIZE_MAX, 0};
SecureArena g_arena;

bool in_bootstrap(const void *p) noexcept {
    return static_cast<std::size_t>(static_cast<const unsigned char *>(p) - g_boot) < kBootBytes;
}

void runtime_init() noexcept {
    resolve_next();
    try {
        runtime_start();
    } catch (...) {
        // Only allocation failure can throw here; the program cannot be protected.
        fatal("out of memory while reading the configuration");
    }
}

void runtime_fini() noexcept {
    BusyScope busy;
    write_stats_file();
    if (g_stats) stats_unlink(g_stats);
}

// ---- slow paths ----------------------------------------------------------------------------

int shim_dlclose(void *handle) noexcept {
    static int (*next)(void *) = nullptr;
    if (!next) next = reinterpret_cast<int (*)(void *)>(dlsym(RTLD_NEXT, "dlclose"));
    int rc = next ? next(handle) : -1;
    callers_objects_changed();
    return rc;
}

// A matching allocation the arena cannot hold (its address space is used up, or the block is
// larger than the arena) under policy fallback: the next allocator serves it, unprotected,
// as it would without the shim. Counted, and reported once per process.
void *serve_from_next(std::size_t n, std::size_t align, bool zero) noexcept {
    static std::atomic<bool> warned{false};
    if (g_stats) g_stats->overflows.fetch_add(1);
    if (!warned.exchange(true)) {
        BusyScope busy;
        char exe[256];
        ssize_t len = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[len > 0 ? len : 0] = '\0';
        log_msg(LogLevel::warn,
                "%s (pid %d): the secure arena is full: matching allocations are served by the program's "
                "allocator, unprotected (counted in overflows): raise policy.max_arena",
                len > 0 ? exe : "?", static_cast<int>(::getpid()));
    }
    if (align <= 16) return zero ? g_next.calloc(1, n) : g_next.malloc(n);
    return g_next.memalign(align, n);
}

// No BusyScope here: the arena never allocates, and reports through report(), which sets it.
void *arena_alloc(int pool, std::size_t n, std::size_t align, bool zero) noexcept {
    void *p = g_arena.alloc(static_cast<unsigned>(pool), n, align);
    if (!p) return g_arena.serves_overflow() ? serve_from_next(n, align, zero) : nullptr;
    if (zero && !g_arena.wipes(p)) std::memset(p, 0, n);
    return p;
}

std::size_t usable_other(void *p) noexcept {
    if (in_bootstrap(p)) return boot_size(p);
    return g_next.malloc_usable_size(p);
}

void free_other(void *p) noexcept {
    if (in_bootstrap(p)) return;
    g_next.free(p);
}

void *slow_realloc(void *p, std::size_t n, const void *ra) noexcept {
    if (g_arena.owns(p)) {
        // A matched block stays in the arena, whatever size it grows or shrinks to.
        if (n == 0) {  // glibc: realloc(p, 0) frees p and returns NULL
            g_arena.free(p);
            return nullptr;
        }
        std::size_t have = g_arena.usable_size(p);
        if (n <= have && (n > have / 2 || have <= 16)) return p;
        if (n > have && g_arena.grow_in_place(p, n)) return p;
        int saved = errno;
        void *q = arena_alloc(static_cast<int>(g_arena.pool_of(p)), n, 16, false);
        if (!q) {
            if (n > have) return nullptr;  // errno = ENOMEM, p untouched
            errno = saved;                 // a shrink never fails: keep the block as it is
            return p;
        }
        std::memcpy(q, p, n < have ? n : have);
        g_arena.free(p);  // wipes the old copy
        return q;
    }
    int pool = n == 0 || !may_match(n) ? -1 : match(n, ra);
    if (pool < 0) {
        if (!in_bootstrap(p)) return g_next.realloc(p, n);
        if (n == 0) return nullptr;  // as glibc: realloc(p, 0) frees (bootstrap blocks are never reused)
        void *q = g_next.malloc(n);
        if (q) std::memcpy(q, p, n < boot_size(p) ? n : boot_size(p));
        return q;
    }
    // The block comes to match: move it into the arena and wipe the copy left behind.
    void *q = arena_alloc(pool, n, 16, false);
    if (!q) return nullptr;
    if (p) {
        std::size_t have = usable_other(p);
        std::memcpy(q, p, n < have ? n : have);
        if (!in_bootstrap(p)) {
            memlock_wipe(p, have);
            g_next.free(p);
        }
    }
    return q;
}

}  // namespace mlshim
