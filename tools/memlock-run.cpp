// memlock-run - starts a program under the memlock shim, or says why it cannot be protected.
//
// It validates the config with the shim's own parser, compares what the config needs with
// the locked-memory limit and CAP_IPC_LOCK the program will have, refuses programs the
// dynamic loader would silently run without the preload (static, or started in
// secure-execution mode: setuid/setgid to another user or group, file capabilities), then
// sets LD_PRELOAD and MEMLOCK_SHIM_CONFIG and execs the program in its own place, so it keeps
// the PID (PID 1 in a container) and receives signals directly.
// Exit statuses: see usage() and docs/operators.md.
#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <limits.h>
#include <pwd.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <sstream>
#include <vector>

#include "callers.hpp"
#include "config.hpp"
#include "elf.hpp"
#include "stats.hpp"
#include "memlock.h"
#include "tool.hpp"

#ifndef MEMLOCK_SHIM_LIBDIR
#define MEMLOCK_SHIM_LIBDIR "/usr/local/lib"
#endif
#ifndef MEMLOCK_SHIM_MULTIARCH
#define MEMLOCK_SHIM_MULTIARCH "x86_64-linux-gnu"  // gcc -print-multiarch: the Debian package's lib/<triplet>
#endif

using mltool::die;
using mltool::human_bytes;
using mltool::usage_error;
using mltool::warn;

namespace {

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE: the shim library is missing
constexpr int kExitNoPerm = 77;       // EX_NOPERM: limits too low and policy "abort"
constexpr int kExitCannotRun = 126;   // the program cannot be preloaded or executed
constexpr int kExitNotFound = 127;    // the program does not exist
constexpr const char *kShimName = "libmemlock_shim.so";

void usage() {
    std::printf(
        "Usage: memlock-run [--config FILE] [--shim PATH] [--check] [--quiet] [--] PROGRAM [ARGS...]\n"
        "       memlock-run [--config FILE] --check [--user NAME] [[--] PROGRAM]\n"
        "\n"
        "Runs PROGRAM with the memlock shim preloaded: allocations matching the config's rules are\n"
        "served from locked, MADV_DONTDUMP, wiped memory. PROGRAM replaces memlock-run (same PID).\n"
        "\n"
        "  --config FILE  the config (default: $MEMLOCK_SHIM_CONFIG); see docs/config.md\n"
        "  --shim PATH    the shim library (default: $MEMLOCK_SHIM_LIB, else ../lib/%s/%s or\n"
        "                 ../lib/%s next to this executable, else %s/%s)\n"
        "  --check        validate the config, the limits and PROGRAM (if given); run nothing\n"
        "  --user NAME    with --check: also report what a process that drops to user NAME after\n"
        "                 start-up (a daemon's workers) keeps locked and what its forks can lock\n"
        "  --quiet        no warnings (errors are still printed)\n"
        "  --help, --version\n"
        "\n"
        "Before starting PROGRAM, the soft RLIMIT_MEMLOCK is raised toward the hard limit when the\n"
        "config needs more. If the program still cannot lock policy.max_locked bytes, memlock-run says\n"
        "what to change and follows policy.on_lock_failure: fallback and deny start the program,\n"
        "abort refuses to.\n"
        "\n"
        "Exit status (when PROGRAM is not started; otherwise PROGRAM's own):\n"
        "  0    --check: everything is in order (warnings aside)\n"
        "  64   usage error\n"
        "  69   the shim library was not found\n"
        "  77   locked-memory limit too low and policy.on_lock_failure is \"abort\"\n"
        "  78   no config, or the config is invalid or unreadable\n"
        "  126  PROGRAM cannot be preloaded (static, setuid/setgid to another user or group,\n"
        "       file capabilities for a user other than root, 32-bit, musl libc)\n"
        "       or is not executable\n"
        "  127  PROGRAM not found\n",
        MEMLOCK_SHIM_MULTIARCH, kShimName, kShimName, MEMLOCK_SHIM_LIBDIR, kShimName);
}

struct Options {
    std::string config;
    std::string shim;
    bool check = false;
    std::string user;               // --check --user: the user the workers drop to
    std::vector<std::string> argv;  // PROGRAM [ARGS...]
};

Options parse_args(int argc, char **argv) {
    Options o;
    int i = 1;
    auto value = [&](const std::string &opt) -> std::string {
        if (i + 1 >= argc) usage_error(opt + " needs a value");
        return argv[++i];
    };
    for (; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--") {
            ++i;
            break;
        }
        if (a.empty() || a[0] != '-') break;
        if (a == "--help" || a == "-h") {
            usage();
            std::exit(0);
        } else if (a == "--version") {
            std::printf("memlock-run %s\n", MEMLOCK_VERSION);
            std::exit(0);
        } else if (a == "--config") {
            o.config = value(a);
        } else if (a.rfind("--config=", 0) == 0) {
            o.config = a.substr(9);
        } else if (a == "--shim") {
            o.shim = value(a);
        } else if (a.rfind("--shim=", 0) == 0) {
            o.shim = a.substr(7);
        } else if (a == "--check") {
            o.check = true;
        } else if (a == "--user") {
            o.user = value(a);
        } else if (a == "--quiet" || a == "-q") {
            mltool::g_quiet = true;
        } else {
            usage_error("unknown option " + a);
        }
    }
    for (; i < argc; ++i) o.argv.emplace_back(argv[i]);
    if (o.argv.empty() && !o.check) usage_error("no program to run");
    if (o.argv.size() > 1 && o.check) usage_error("--check takes at most the program, not its arguments");
    if (!o.user.empty() && !o.check) usage_error("--user goes with --check");
    return o;
}

std::string env(const char *name) {
    const char *v = std::getenv(name);
    return v ? v : "";
}

std::string dir_of(const std::string &path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

std::string absolute(const std::string &path) {
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

bool is_regular(const std::string &path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// ---- ELF ------------------------------------------------------------------------------------

struct Elf {
    bool ok = false;           // an ELF64 file whose headers could be read
    unsigned char elf_class = 0;
    std::uint16_t type = 0;    // ET_EXEC, ET_DYN
    std::uint16_t machine = 0;
    bool has_interp = false;   // a PT_INTERP program header: started by the dynamic loader
};

// Reads the ELF header and program headers of `path`. Handles ELF64 little-endian only
// (everything else is reported through elf_class / ok).
Elf read_elf(const std::string &path) {
    Elf e;
    std::ifstream in(path, std::ios::binary);
    Elf64_Ehdr h{};
    if (!in.read(reinterpret_cast<char *>(&h), sizeof h) || std::memcmp(h.e_ident, ELFMAG, SELFMAG) != 0)
        return e;
    e.elf_class = h.e_ident[EI_CLASS];
    if (e.elf_class != ELFCLASS64 || h.e_ident[EI_DATA] != ELFDATA2LSB || h.e_phentsize != sizeof(Elf64_Phdr))
        return e;
    e.type = h.e_type;
    e.machine = h.e_machine;
    // What the kernel's ELF loader asks before it runs a file (else ENOEXEC, and execvp hands
    // the file to /bin/sh): an executable or a position-independent one, program headers.
    if ((h.e_type != ET_EXEC && h.e_type != ET_DYN) || h.e_phnum < 1 || h.e_phnum > 65536 / sizeof(Elf64_Phdr))
        return e;
    in.seekg(static_cast<std::streamoff>(h.e_phoff));
    for (unsigned i = 0; i < h.e_phnum; ++i) {
        Elf64_Phdr ph{};
        if (!in.read(reinterpret_cast<char *>(&ph), sizeof ph)) return e;
        if (ph.p_type == PT_INTERP) e.has_interp = true;
    }
    e.ok = true;
    return e;
}

// ---- the shim --------------------------------------------------------------------------------

// --shim, $MEMLOCK_SHIM_LIB, ../lib/<multiarch> (the Debian package) or ../lib (make install)
// next to this executable, the same directory (build tree), the configured LIBDIR. The result is absolute and is an ELF64 shared object.
std::string locate_shim(const std::string &requested, Elf &elf) {
    std::vector<std::string> candidates;
    std::string source;
    if (!requested.empty()) {
        candidates = {requested};
        source = "--shim";
    } else if (!env("MEMLOCK_SHIM_LIB").empty()) {
        candidates = {env("MEMLOCK_SHIM_LIB")};
        source = "MEMLOCK_SHIM_LIB";
    } else {
        const std::string here = dir_of(absolute("/proc/self/exe"));
        candidates = {here + "/../lib/" MEMLOCK_SHIM_MULTIARCH "/" + kShimName, here + "/../lib/" + kShimName,
                      here + "/" + kShimName,
                      std::string(MEMLOCK_SHIM_LIBDIR) + "/" + kShimName};
    }
    for (const auto &c : candidates) {
        if (!is_regular(c)) continue;
        const std::string path = absolute(c);
        elf = read_elf(path);
        if (!elf.ok || elf.type != ET_DYN)
            die(kExitUnavailable, path + ": not a 64-bit shared library; point --shim or MEMLOCK_SHIM_LIB at " +
                                      kShimName);
        if (path.find_first_of(": ") != std::string::npos)
            die(kExitUnavailable, path + ": LD_PRELOAD cannot name a path containing ':' or ' '; install the "
                                         "shim elsewhere");
        return path;
    }
    std::string tried;
    for (const auto &c : candidates) tried += (tried.empty() ? "" : ", ") + c;
    die(kExitUnavailable, "cannot find the shim library (" + (source.empty() ? "tried " : source + ": ") + tried +
                              "); install it (make install) or pass --shim PATH");
}

// ---- the program -----------------------------------------------------------------------------

// Finds argv[0] as execvp would: a name with '/' as given, others in $PATH.
std::string find_program(const std::string &name) {
    if (name.find('/') != std::string::npos) {
        if (::access(name.c_str(), F_OK) != 0) die(kExitNotFound, name + ": " + std::strerror(errno));
        return name;
    }
    // As execvp searches, which env(1) uses too: without PATH, the system's default path.
    std::string path;
    if (const char *p = std::getenv("PATH")) {
        path = p;
    } else {
        path.resize(::confstr(_CS_PATH, nullptr, 0));
        if (!path.empty()) path.resize(::confstr(_CS_PATH, path.data(), path.size()) - 1);
    }
    std::string first_found;
    std::size_t from = 0;
    while (from <= path.size()) {
        std::size_t to = path.find(':', from);
        if (to == std::string::npos) to = path.size();
        const std::string dir = to == from ? "." : path.substr(from, to - from);
        const std::string cand = dir + "/" + name;
        if (is_regular(cand)) {
            if (::access(cand.c_str(), X_OK) == 0) return cand;
            if (first_found.empty()) first_found = cand;
        }
        from = to + 1;
    }
    if (!first_found.empty()) return first_found;  // reported as not executable
    die(kExitNotFound, name + ": command not found in PATH (" + path + ")");
}

std::string base_name(const std::string &path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Whether `path` is env(1): by its name, or the same file as the system's env under another.
bool is_env(const std::string &path) {
    if (base_name(path) == "env") return true;
    struct stat st, env;
    if (::stat(path.c_str(), &st) != 0) return false;
    for (const char *system_env : {"/usr/bin/env", "/bin/env"})
        if (::stat(system_env, &env) == 0 && env.st_dev == st.st_dev && env.st_ino == st.st_ino) return true;
    return false;
}

// What GNU env(1) does with the text after "#!/usr/bin/env" (which the kernel passes as one
// argument): "NAME", or with -S/--split-string the words of the text, where env's options
// and NAME=VALUE assignments come before the program. Only what can be followed exactly is
// followed; anything else is `unclear` and refused, since following it wrongly would check
// one program and start another.
struct EnvRun {
    std::string program;  // "" if there is none
    std::string drops;    // how env takes the preload away before it runs the program, or ""
    std::string unclear;  // why memlock-run cannot tell what env runs, or ""
};
EnvRun env_words(const std::vector<std::string> &words);
EnvRun env_line(const std::string &text) {
    std::vector<std::string> words;
    // Blanks before the argument are not part of it; after it, the kernel has taken off those
    // it takes off (a NUL-ended line keeps them: "prog " names "prog ").
    std::string rest = text;
    const auto b = rest.find_first_not_of(" \t");
    rest = b == std::string::npos ? "" : rest.substr(b);
    bool split = false;
    for (const char *opt : {"--split-string=", "--split-string", "-S"})
        if (rest.rfind(opt, 0) == 0) {
            rest = rest.substr(std::strlen(opt));
            split = true;
            break;
        }
    if (!split) {
        if (!rest.empty()) words.push_back(rest);
    } else if (rest.find_first_of("'\"\\$#") != std::string::npos) {
        EnvRun run;
        run.unclear = "quotes, escapes, variables or comments in the -S text";  // env's own syntax
        return run;
    } else {
        std::istringstream in(rest);
        for (std::string w; in >> w;) words.push_back(w);
    }
    return env_words(words);
}

// The same for env's arguments as words (after -S, or on a command line).
EnvRun env_words(const std::vector<std::string> &words) {
    EnvRun run;
    // Relative paths further on (the program's interpreter, PATH entries) would name other files.
    const char *chdir = "-C: env changes the working directory first";
    auto shims_variable = [](const std::string &name) { return name == "LD_PRELOAD" || name == "MEMLOCK_SHIM_CONFIG"; };
    auto unset = [&](const std::string &name) {
        if (shims_variable(name)) run.drops = "unsets " + name;
        if (name == "PATH") run.unclear = "-u PATH";
    };
    auto next_word = [&](std::size_t &i) { return ++i < words.size() ? words[i] : std::string(); };
    bool options = true, operands = false;
    for (std::size_t i = 0; i < words.size() && run.unclear.empty(); ++i) {
        const std::string &w = words[i];
        if (options && w == "--") {
            options = false;
        } else if (options && w.rfind("--", 0) == 0) {
            const auto eq = w.find('=');
            const std::string name = w.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
            const bool takes = name == "unset" || name == "chdir";
            const std::string value = eq != std::string::npos ? w.substr(eq + 1) : takes ? next_word(i) : "";
            if (name == "ignore-environment") run.drops = "clears the environment (--ignore-environment)";
            else if (name == "unset") unset(value);
            else if (name == "chdir") run.unclear = chdir;
            else if (name != "null" && name != "debug" && name != "block-signal" && name != "default-signal" &&
                     name != "ignore-signal" && name != "list-signal-handling")
                run.unclear = "option " + w;  // --split-string again, or a name env would complete
        } else if (options && w[0] == '-' && w.size() > 1) {
            // A cluster of short options; -u and -C take the rest of the word or the next one.
            for (std::size_t k = 1; k < w.size() && run.unclear.empty(); ++k) {
                const char c = w[k];
                if (c == 'i') run.drops = "clears the environment (-i)";
                if (c == 'i' || c == 'v' || c == '0') continue;
                if (c != 'u' && c != 'C') {
                    run.unclear = "option " + w;
                    break;
                }
                const std::string value = k + 1 < w.size() ? w.substr(k + 1) : next_word(i);
                if (c == 'u') unset(value);
                else run.unclear = chdir;
                break;
            }
        } else if (!operands && w == "-") {
            // The first operand "-" is -i (env keeps this for compatibility, after -- too).
            run.drops = "clears the environment (-)";
            operands = true;
        } else if (const auto eq = w.find('='); eq != std::string::npos) {
            // Any word with "=" before the program is an assignment, and ends the options.
            options = false;
            operands = true;
            const std::string name = w.substr(0, eq);
            if (shims_variable(name)) run.drops = "sets " + name;
            if (name == "PATH") run.unclear = "PATH=...";
        } else {
            run.program = w;
            break;
        }
    }
    return run;
}

// Why the kernel would start the executable `path` in secure-execution mode (AT_SECURE),
// where the dynamic loader ignores LD_PRELOAD, or "" when it would not. Linux asks for it
// (cap_bprm_creds_from_file, security/commoncap.c) when the exec leaves the effective user or
// group other than the real one, or (since 6.17) changes the effective ones, and when a caller
// whose real user is not root gains capabilities from the file. So memlock-run itself must
// run with equal real and effective IDs; then a setuid file must belong to that user, a
// setgid file to that group, and a file with capabilities be started by root (root may start
// its own setuid-root programs: Debian's exim4). On the safe side: under no_new_privs or on a
// nosuid mount the bits change nothing, and capabilities may grant nothing new, yet such a
// program is refused. Not foreseen: a security module asking for secure execution on a
// domain transition.
std::string secure_execution(const std::string &path, const struct stat &st) {
    const uid_t ruid = ::getuid(), euid = ::geteuid();
    const gid_t rgid = ::getgid(), egid = ::getegid();
    if (ruid != euid)
        return "memlock-run runs with real uid " + std::to_string(ruid) + " and effective uid " + std::to_string(euid);
    if (rgid != egid)
        return "memlock-run runs with real gid " + std::to_string(rgid) + " and effective gid " + std::to_string(egid);
    const bool setgid = (st.st_mode & S_ISGID) && (st.st_mode & S_IXGRP);  // without g+x: a locking mark
    if ((st.st_mode & S_ISUID) && st.st_uid != ruid)
        return "setuid to uid " + std::to_string(st.st_uid) + ", started by uid " + std::to_string(ruid);
    if (setgid && st.st_gid != rgid)
        return "setgid to gid " + std::to_string(st.st_gid) + ", started by gid " + std::to_string(rgid);
    if (ruid != 0 && ::getxattr(path.c_str(), "security.capability", nullptr, 0) > 0)
        return "has file capabilities (see getcap), started by uid " + std::to_string(ruid);
    return "";
}

std::string check_preloadable(const std::string &path, const Elf &shim, int depth = 0);

// The executable that env, as `who` (the script and its #! line, or env's path on the command
// line) starts with the arguments read into `next`, after checking it as check_preloadable
// does. Exits 126 when env takes the preload away, or when what it runs cannot be told.
std::string follow_env(const std::string &who, const EnvRun &next, const Elf &shim, int depth) {
    if (!next.drops.empty()) die(kExitCannotRun, who + " " + next.drops + ", so the program would run unprotected");
    if (!next.unclear.empty())
        die(kExitCannotRun, who + ": cannot tell which program env runs, or with what environment (" + next.unclear +
                                "); name the program itself");
    const std::string program = find_program(next.program);
    if (is_env(program)) die(kExitCannotRun, who + " runs env again; name the program itself");
    return check_preloadable(program, shim, depth + 1);
}

// The executable the kernel will load for `path` (the interpreter, for a script), after
// checking that the dynamic loader will honour LD_PRELOAD for it. Exits 126 otherwise.
std::string check_preloadable(const std::string &path, const Elf &shim, int depth) {
    auto refuse = [&](const std::string &why) -> void {
        die(kExitCannotRun, path + ": " + why);
    };
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) die(kExitNotFound, path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) refuse("not a regular file");
    if (::access(path.c_str(), X_OK) != 0) refuse("not executable (chmod +x, or check the mount's noexec)");

    // The kernel reads a script's #! line from its first 256 bytes (BINPRM_BUF_SIZE): up to a
    // newline among them, else the first 255, cutting the arguments off; an interpreter path
    // not ended (by a blank or a NUL) within those 255 is not run at all.
    char head[256 + 1] = {};
    std::ifstream in(path, std::ios::binary);
    in.read(head, sizeof head - 1);
    if (head[0] == '#' && head[1] == '!') {
        // "#!interpreter [arg]": the interpreter is what loads the shim. As binfmt_script: the
        // line ends at a newline, else at byte 255, and loses the blanks before that end; the
        // argument is a C string, so a NUL ends it first (keeping blanks before the NUL).
        const std::size_t nul = std::strlen(head), stop = std::strcspn(head, "\n");
        const bool newline = head[stop] == '\n';
        std::size_t end = newline ? stop : sizeof head - 2;
        const std::string raw(head + 2, std::min(end, nul) - 2);
        if (!newline && nul >= end && raw.find_first_of(" \t", raw.find_first_not_of(" \t")) == std::string::npos)
            refuse("the #! line's interpreter path goes past the 255 bytes the kernel reads of it");
        while (end > 2 && (head[end - 1] == ' ' || head[end - 1] == '\t')) --end;
        const std::string line(head + 2, std::min(end, nul) - 2);
        const auto b = line.find_first_not_of(" \t");
        if (b == std::string::npos) refuse("script without an interpreter after #!");
        const auto e = line.find_first_of(" \t", b);
        const std::string interp = line.substr(b, e - b);
        if (depth >= 4) refuse("too many levels of script interpreters");
        const std::string loaded = check_preloadable(interp, shim, depth + 1);
        // "#!/usr/bin/env NAME": env then runs NAME, which must take the preload as well.
        if (!is_env(loaded)) return loaded;
        const EnvRun next = env_line(e == std::string::npos ? "" : line.substr(e));
        if (next.program.empty() && next.drops.empty() && next.unclear.empty())
            refuse("#!" + interp + " names no program for env to run");
        return follow_env(path + ": #!" + interp, next, shim, depth);
    }
    // The kernel ignores a script's setuid and setgid bits and capabilities: an executable's count.
    if (const std::string why = secure_execution(path, st); !why.empty())
        refuse(why + "; the dynamic loader ignores LD_PRELOAD for such programs, so it would run unprotected");
    const Elf e = read_elf(path);
    if (e.elf_class == ELFCLASS32) refuse("a 32-bit program; the shim is 64-bit");
    if (!e.ok) refuse("not an ELF executable or a #! script");
    if (e.machine != shim.machine) refuse("built for another CPU architecture than the shim");
    if (!e.has_interp)
        refuse("statically linked (no PT_INTERP): there is no dynamic loader to apply LD_PRELOAD, so it "
               "would run unprotected");
    const std::string interp = mltool::elf_interpreter(path);
    if (mltool::is_musl_loader(interp))
        refuse("a musl libc program (loaded by " + interp + "); the shim is built for glibc and musl's loader "
               "cannot load it, so it would fail to start. Use a glibc build of the program (e.g. from a "
               "Debian- or Ubuntu-based image instead of Alpine); musl programs are not supported");
    // execvp (env's lookup) goes on to the next PATH entry when a program's loader cannot be
    // run, so one that cannot would make env run another file than the one checked.
    if (interp.empty()) refuse("its PT_INTERP (the dynamic loader's name) is malformed: the kernel will not run it");
    struct stat ld;
    if (::stat(interp.c_str(), &ld) != 0 || ::access(interp.c_str(), X_OK) != 0)
        refuse("its dynamic loader " + interp + " cannot be run: " + std::strerror(errno));
    if (!S_ISREG(ld.st_mode)) refuse("its dynamic loader " + interp + " is not a regular file: the kernel will not run it");
    return absolute(path);
}

// ---- limits ----------------------------------------------------------------------------------

// Would the program hold CAP_IPC_LOCK after execve? (capabilities(7), "Transformation of
// capabilities during execve"): a root process gets its bounding set, others only their
// ambient set (file capabilities are refused above for users other than root).
bool program_gets_ipc_lock() {
    std::ifstream in("/proc/self/status");
    std::string line;
    // Root gets nothing for being root under SECBIT_NOROOT (setpriv --securebits +noroot).
    const int bits = ::prctl(PR_GET_SECUREBITS);
    const bool root = ::geteuid() == 0 && !(bits > 0 && (bits & SECBIT_NOROOT));
    const std::string want = root ? "CapBnd:" : "CapAmb:";
    while (std::getline(in, line))
        if (line.rfind(want, 0) == 0)
            return (std::strtoull(line.c_str() + want.size(), nullptr, 16) >> 14) & 1;  // CAP_IPC_LOCK
    return false;
}

std::string rlim_text(rlim_t v) { return v == RLIM_INFINITY ? "unlimited" : human_bytes(v); }

const char *policy_name(mlshim::LockFailurePolicy p) {
    switch (p) {
    case mlshim::LockFailurePolicy::deny: return "deny";
    case mlshim::LockFailurePolicy::abort: return "abort";
    case mlshim::LockFailurePolicy::fallback: break;
    }
    return "fallback";
}

// Reports (to stdout under --check) what the config needs and what the program will have,
// raises the soft limit when that helps, and applies the policy to a shortfall.
void check_limits(const mlshim::Config &c, bool report) {
    bool locks = false;
    for (const auto &r : c.rules) locks |= (r.actions & mlshim::kActionLock) != 0;
    const std::uint64_t need = c.policy.max_locked;
    const char *policy = policy_name(c.policy.on_lock_failure);
    if (report) {
        if (locks)
            std::printf("needs:   up to %s locked (policy.max_locked), %s locked at start-up (policy.prealloc), "
                        "on_lock_failure %s\n",
                        human_bytes(need).c_str(), human_bytes(c.policy.prealloc).c_str(), policy);
        else
            std::printf("needs:   no locked memory (no rule has the lock action)\n");
    }

    struct rlimit rl;
    if (::getrlimit(RLIMIT_MEMLOCK, &rl) != 0) rl.rlim_cur = rl.rlim_max = 0;
    const bool cap = program_gets_ipc_lock();
    const rlim_t was = rl.rlim_cur;
    if (locks && !cap && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need && rl.rlim_max > rl.rlim_cur) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
        if (::setrlimit(RLIMIT_MEMLOCK, &rl) != 0) rl.rlim_cur = was;
    }
    if (report) {
        std::printf("has:     RLIMIT_MEMLOCK soft %s, hard %s; CAP_IPC_LOCK %s\n", rlim_text(rl.rlim_cur).c_str(),
                    rlim_text(rl.rlim_max).c_str(), cap ? "yes" : "no");
        if (rl.rlim_cur != was)
            std::printf("raised:  soft RLIMIT_MEMLOCK from %s to %s (the program inherits it)\n",
                        rlim_text(was).c_str(), rlim_text(rl.rlim_cur).c_str());
    } else if (rl.rlim_cur != was) {
        warn("raised the soft RLIMIT_MEMLOCK from " + rlim_text(was) + " to " + rlim_text(rl.rlim_cur));
    }

    const bool enough = !locks || cap || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need;
    if (report) std::printf("limits:  %s\n", enough ? "sufficient" : "INSUFFICIENT");
    if (report && locks && cap && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        std::printf("note:    sufficient through CAP_IPC_LOCK alone: a process that drops it (a user switch, see "
                    "--user; or a daemon that drops its capabilities and stays root) locks up to RLIMIT_MEMLOCK "
                    "(%s) in all, and policy.prealloc beyond it\n",
                    rlim_text(rl.rlim_cur).c_str());
    if (enough) return;

    const std::string n = std::to_string(need);
    std::string msg = "the config may lock up to " + human_bytes(need) +
                      " (policy.max_locked) but the program can lock only " + rlim_text(rl.rlim_cur) +
                      " (RLIMIT_MEMLOCK soft " + rlim_text(rl.rlim_cur) + ", hard " + rlim_text(rl.rlim_max) +
                      "; no CAP_IPC_LOCK)";
    if (c.policy.prealloc > rl.rlim_cur)
        msg += "\neven policy.prealloc (" + human_bytes(c.policy.prealloc) + ") is over the limit";
    msg += "\nto fix, raise the memlock limit to at least " + n +
           " bytes or grant CAP_IPC_LOCK (or lower policy.max_locked):"
           "\n  docker run --ulimit memlock=" + n + ":" + n + " ...   or   docker run --cap-add IPC_LOCK ..."
           "\n  systemd unit: LimitMEMLOCK=" + n + "   or   AmbientCapabilities=CAP_IPC_LOCK"
           "\n  Kubernetes container: securityContext: {capabilities: {add: [\"IPC_LOCK\"]}}"
           "\n  shell: ulimit -l " + std::to_string((need + 1023) / 1024) + " (KiB; up to the hard limit)";
    switch (c.policy.on_lock_failure) {
    case mlshim::LockFailurePolicy::abort:
        die(kExitNoPerm, msg + "\npolicy.on_lock_failure is abort: refusing to start (exit 77)");
    case mlshim::LockFailurePolicy::deny:
        warn(msg + "\npolicy.on_lock_failure is deny: starting anyway; matching allocations "
                   "beyond the limit will fail (ENOMEM)");
        break;
    case mlshim::LockFailurePolicy::fallback:
        warn(msg + "\npolicy.on_lock_failure is fallback: starting anyway; memory beyond the "
                   "limit is served unlocked (still excluded from core dumps and wiped)");
        break;
    }
}

// Does the kernel lock on fault (mlock2 MLOCK_ONFAULT)? Probed on one page of reserved
// address space, as the arena locks its budget at start-up. ENOSYS or EINVAL: it does not
// (Linux < 4.4, qemu-user, a seccomp filter); any other answer (the limit) means it does.
bool kernel_locks_on_fault() {
    void *page = nullptr;
    const std::size_t len = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    if (memlock_reserve(len, &page) != 0) return true;
    const int err = memlock_lock_onfault(page, len);
    memlock_release(page, len);
    return err != ENOSYS && err != EINVAL;
}

// A size as the config writes it: whole MiB where it is one, else KiB (rounded down).
std::string config_size(std::uint64_t bytes) {
    return bytes % (1 << 20) == 0 ? std::to_string(bytes >> 20) + "MiB" : std::to_string(bytes >> 10) + "KiB";
}

// The lock budget the arena takes at start-up: policy.max_locked, or where the limit refuses
// it (no CAP_IPC_LOCK), the largest halving of it the limit accepts (none below 64 KiB), in
// whole pages of the kernel's size as the arena counts them.
std::uint64_t startup_budget(std::uint64_t max_locked, rlim_t limit, bool unlimited) {
    if (unlimited) return max_locked;
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    std::uint64_t len = max_locked / page * page;
    while (len >= 65536 && len > limit) len = len / 2 / page * page;
    return len >= 65536 ? len : 0;
}

// Is the arena's locked budget memfd_secret memory: policy.backing "secretmem" or "auto" on a
// kernel that has memfd_secret (probed as the shim does: a new descriptor, closed at once).
// "secretmem" without it falls back to anonymous memory or locks nothing (on_lock_failure).
bool arena_uses_secretmem(const mlshim::Config &c) {
    if (c.policy.backing == mlshim::Backing::anonymous) return false;
    int fd = -1;
    if (memlock_secret_create(&fd) != 0) return false;
    ::close(fd);
    return true;
}

// --check --user NAME: a process that switches to a non-root user (setuid, as daemons' workers
// do) keeps its rlimits and loses CAP_IPC_LOCK (capabilities(7)). The arena locked its first
// region (or prealloc) on fault at start-up, before the switch (or, under secretmem, mapped its
// budget from a memfd_secret file, which is unswappable without any lock): the worker keeps
// it, and pages it commits there lock as they are touched. What the switch limits: the
// regions the arena maps locked as it grows (mremap or mmap MAP_LOCKED: counted against
// RLIMIT_MEMLOCK), a process forked after it (mlock is not inherited: the child locks again,
// or maps a secretmem file of its own, under the user's limit, and where that is too low locks
// what fits, pages in use first) and, on kernels without lock-on-fault, every lock made after
// it (prealloc helps).
void check_user(const mlshim::Config &c, const std::string &user) {
    const struct passwd *pw = ::getpwnam(user.c_str());
    if (!pw) usage_error("--user: no such user: " + user);
    struct rlimit rl;
    if (::getrlimit(RLIMIT_MEMLOCK, &rl) != 0) rl.rlim_cur = rl.rlim_max = 0;
    const bool root = pw->pw_uid == 0;
    const bool starter_cap = program_gets_ipc_lock();
    const bool cap = root && starter_cap;
    const bool unlimited = cap || rl.rlim_cur == RLIM_INFINITY;
    std::printf("user:    %s (uid %u): RLIMIT_MEMLOCK soft %s, hard %s (kept across the switch); CAP_IPC_LOCK %s\n",
                user.c_str(), static_cast<unsigned>(pw->pw_uid), rlim_text(rl.rlim_cur).c_str(),
                rlim_text(rl.rlim_max).c_str(), cap ? "yes" : root ? "no" : "no (dropped with the switch)");
    const std::uint64_t max = c.policy.max_locked;
    const bool secret = arena_uses_secretmem(c);
    if (unlimited) {
        std::printf(secret ? "worker:  can map all of max_locked %s as memfd_secret memory after the switch\n"
                           : "worker:  can lock all of max_locked %s after the switch\n",
                    human_bytes(max).c_str());
        return;
    }
    if (!kernel_locks_on_fault()) {
        // Each slab is mlocked as it is committed: after the switch, up to the limit in all.
        const std::uint64_t can = std::min<std::uint64_t>(std::max<std::uint64_t>(rl.rlim_cur, c.policy.prealloc), max);
        std::printf("worker:  can lock %s of max_locked %s: this kernel has no lock-on-fault (mlock2 MLOCK_ONFAULT), "
                    "so the arena mlocks memory as it commits it, and after the switch only up to RLIMIT_MEMLOCK in "
                    "all; beyond that on_lock_failure applies\n",
                    human_bytes(can).c_str(), human_bytes(max).c_str());
        const std::uint64_t suggest = std::min<std::uint64_t>(rl.rlim_cur, max) & ~std::uint64_t{0xfffff};
        if (c.policy.prealloc >= suggest || suggest == 0)
            std::printf("prealloc: %s is committed and locked at start-up, before the switch\n",
                        human_bytes(c.policy.prealloc).c_str());
        else
            std::printf("suggest: \"prealloc\": \"%s\" in policy: committed and locked at start-up, before the "
                        "switch and before any sandbox that forbids mlock (sshd's preauth child is killed by it); "
                        "resident from the start\n",
                        config_size(suggest).c_str());
        return;
    }
    const std::uint64_t budget = startup_budget(max, rl.rlim_cur, starter_cap);
    const std::string b = human_bytes(budget), limit = rlim_text(rl.rlim_cur);
    const std::string fix = "if the workers fork, set \"max_locked\": \"" + config_size(rl.rlim_cur) +
                            "\" in policy or raise the limit to " + b;
    if (secret) {
        // A memfd_secret mapping is unswappable by nature: nothing is mlocked, on fault or
        // otherwise, but the whole mapping counts against RLIMIT_MEMLOCK when it is mapped.
        std::printf("worker:  keeps the %s of memfd_secret memory mapped at start-up, before the switch "
                    "(policy.max_locked %s, policy.backing %s): the arena memory it commits there is never "
                    "swapped (secretmem pages cannot be), without any locking call; beyond it on_lock_failure "
                    "applies\n",
                    b.c_str(), human_bytes(max).c_str(), c.policy.backing == mlshim::Backing::automatic ? "auto" : "secretmem");
        if (budget <= rl.rlim_cur)
            std::printf("forked:  a process forked after the switch maps the %s of memfd_secret memory of its own "
                        "within the user's limit\n",
                        b.c_str());
        else if (c.policy.on_lock_failure == mlshim::LockFailurePolicy::abort)
            std::printf("forked:  a process forked after the switch cannot map the %s of memfd_secret memory of its "
                        "own under the user's RLIMIT_MEMLOCK (%s): it stops (on_lock_failure abort); %s\n",
                        b.c_str(), limit.c_str(), fix.c_str());
        else
            std::printf("forked:  a process forked after the switch cannot map the %s of memfd_secret memory of its "
                        "own under the user's RLIMIT_MEMLOCK (%s): it copies its arena into anonymous memory "
                        "(readable by root through /proc/PID/mem) and locks only %s of it, the pages in use first "
                        "(the rest still out of core dumps and wiped; memlock-inspect says degraded); %s\n",
                        b.c_str(), limit.c_str(), limit.c_str(), fix.c_str());
        std::printf("prealloc: not needed (the memfd_secret memory is mapped at start-up)\n");
    } else {
        // The arena locks on fault at start-up only its first region (or prealloc), and maps the
        // regions it grows by locked (mremap or mmap MAP_LOCKED): after the switch under RLIMIT_MEMLOCK.
        const std::uint64_t can = std::min<std::uint64_t>(std::max<std::uint64_t>(rl.rlim_cur, c.policy.prealloc), max);
        std::printf("worker:  can lock %s of max_locked %s: the arena locks its first region (or policy.prealloc) on "
                    "fault at start-up, before the switch, and maps the regions it grows by locked (mremap or mmap "
                    "MAP_LOCKED, no mlock call), after the switch only up to RLIMIT_MEMLOCK in all; beyond that "
                    "on_lock_failure applies\n",
                    human_bytes(can).c_str(), human_bytes(max).c_str());
        if (can <= rl.rlim_cur)
            std::printf("forked:  a process forked after the switch locks its %s again within the user's limit\n",
                        human_bytes(can).c_str());
        else
            std::printf("forked:  a process forked after the switch can lock only %s of its %s again under the "
                        "user's RLIMIT_MEMLOCK: it locks the pages in use first (the rest still out of core dumps and "
                        "wiped; memlock-inspect says degraded); if the workers fork, set \"prealloc\": \"%s\" in "
                        "policy or raise the limit to %s\n",
                        rlim_text(rl.rlim_cur).c_str(), human_bytes(can).c_str(), config_size(rl.rlim_cur).c_str(),
                        human_bytes(can).c_str());
        std::printf("prealloc: %s committed and locked at start-up, before the switch (what a worker may lock beyond "
                    "RLIMIT_MEMLOCK; resident from the start)\n",
                    human_bytes(c.policy.prealloc).c_str());
    }
}

// ---- environment -----------------------------------------------------------------------------

// The entries of LD_PRELOAD `old` but any copy of the shim, ':'-separated.
std::string preload_without_shim(const std::string &old) {
    std::string out;
    std::size_t from = 0;
    while (from < old.size()) {
        std::size_t to = old.find_first_of(": ", from);
        if (to == std::string::npos) to = old.size();
        const std::string entry = old.substr(from, to - from);
        if (!entry.empty() && base_name(entry) != kShimName) out += (out.empty() ? "" : ":") + entry;
        from = to + 1;
    }
    return out;
}

// LD_PRELOAD with the shim first, keeping the other entries; any other copy of the shim is
// dropped (two shims would both start up in one process).
std::string preload_with(const std::string &shim, const std::string &old) {
    const std::string others = preload_without_shim(old);
    return others.empty() ? shim : shim + ":" + others;
}

// argv for execv: pointers into `args`, then nullptr.
std::vector<char *> exec_args(const std::vector<std::string> &args) {
    std::vector<char *> out;
    for (const auto &a : args) out.push_back(const_cast<char *>(a.c_str()));
    out.push_back(nullptr);
    return out;
}

// ---- the rules' modules ----------------------------------------------------------------------

// What `args` writes to stdout (stderr discarded), run with LD_PRELOAD set to `preload` (unset
// when ""), within 10 seconds; "" when it cannot be run.
std::string output_of(const std::vector<std::string> &args, const std::string &preload) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return "";
    const pid_t pid = ::fork();
    if (pid < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        return "";
    }
    if (pid == 0) {
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(fds[1], STDOUT_FILENO);
        ::dup2(null, STDERR_FILENO);
        preload.empty() ? ::unsetenv("LD_PRELOAD") : ::setenv("LD_PRELOAD", preload.c_str(), 1);
        sigset_t alarm_only;
        sigemptyset(&alarm_only);
        sigaddset(&alarm_only, SIGALRM);
        ::signal(SIGALRM, SIG_DFL);
        ::sigprocmask(SIG_UNBLOCK, &alarm_only, nullptr);
        ::alarm(10);
        ::execv(args[0].c_str(), exec_args(args).data());
        ::_exit(127);
    }
    ::close(fds[1]);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR);)
        if (n > 0) out.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    ::waitpid(pid, nullptr, 0);
    return out;
}

// The files the lines of the loader's list (ld.so --list: "NAME => PATH (0x...)", "PATH (0x...)")
// or of its cache (ldconfig -p: "NAME (FLAGS) => PATH") name; "not found" is left out.
std::vector<std::string> listed_paths(const std::string &text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        const auto arrow = line.find(" => ");
        if (arrow == std::string::npos && line.find(" (0x") == std::string::npos) continue;
        std::string path = arrow == std::string::npos ? line : line.substr(arrow + 4);
        path = path.substr(0, path.find(" (0x"));
        path.erase(0, path.find_first_not_of(" \t"));
        if (!path.empty() && path != "not found") out.push_back(path);
    }
    return out;
}

// The shared libraries the loader finds by name here: the files in $LD_LIBRARY_PATH's
// directories, then those in its cache.
std::vector<std::string> installed_libraries(const std::string &preload) {
    std::vector<std::string> out;
    std::istringstream dirs(env("LD_LIBRARY_PATH"));
    for (std::string dir; std::getline(dirs, dir, ':');)
        if (DIR *d = dir.empty() ? nullptr : ::opendir(dir.c_str())) {
            while (const dirent *e = ::readdir(d)) out.push_back(dir + "/" + e->d_name);
            ::closedir(d);
        }
    for (auto &path : listed_paths(output_of({"/sbin/ldconfig", "-p"}, preload))) out.push_back(std::move(path));
    return out;
}

// A library that matches a rule's globs, built into an object the program links (or the
// program itself): that object defines and exports `shared`, of the `exported` functions the
// library exports.
struct BuiltIn {
    std::string object, library;
    std::set<std::string> shared;
    std::size_t exported = 0;
};

// Of the installed libraries that match `globs`, the one most of whose functions one of
// `objects` defines and exports too, and that object.
BuiltIn find_built_in(const std::vector<std::string> &globs, const std::vector<std::string> &objects,
                      const std::string &preload) {
    BuiltIn best;
    std::set<std::string> seen;
    for (const std::string &library : installed_libraries(preload)) {
        if (!mlshim::module_matches(globs, library, "") || !seen.insert(absolute(library)).second) continue;
        std::set<std::string> names;
        mlshim::ElfView(library).each_exported_function([&](const char *name) { names.insert(name); });
        for (const std::string &object : objects) {
            std::set<std::string> shared;
            mlshim::ElfView(object).each_exported_function([&](const char *name) {
                if (names.count(name)) shared.insert(name);
            });
            if (shared.size() > best.shared.size()) best = {object, library, std::move(shared), names.size()};
        }
    }
    return best;
}

// A few of `names`, ", "-separated: those with "alloc" first (what a rule by function name
// selects), the shortest first.
std::string some_of(const std::set<std::string> &names) {
    std::vector<std::string> v(names.begin(), names.end());
    auto alloc = [](const std::string &n) { return n.find("alloc") != std::string::npos; };
    std::stable_sort(v.begin(), v.end(), [&](const std::string &a, const std::string &b) {
        return alloc(a) != alloc(b) ? alloc(a) : a.size() < b.size();
    });
    std::string out;
    for (std::size_t i = 0; i < v.size() && i < 3; ++i) out += (i ? ", " : "") + v[i];
    return v.size() > 3 ? out + ", ..." : out;
}

// --check: a rule by module selects the code of the objects that match its globs (the shim's
// module_matches). For each such rule that nothing the program links (its dependencies as its
// dynamic loader lists them, under the environment the program gets but the shim) nor the
// program itself matches, a line; and a warning when an installed library that matches it is
// built in: an object of the program defines and exports at least 10 of its functions and
// either 50 or half of them.
// The loader lists the dependencies only when it is the one memlock-run itself runs under (the
// system's), and only for a program without audit libraries (DT_AUDIT, DT_DEPAUDIT), whose code
// the loader would run: PT_INTERP and those are the program's to name, and --check runs nothing
// the program chose.
void check_modules(const mlshim::Config &c, const std::string &program, const std::string &preload) {
    if (std::none_of(c.rules.begin(), c.rules.end(), [](const mlshim::Rule &r) { return !r.module.empty(); }))
        return;
    const std::string loader = mltool::elf_interpreter(program);
    std::string own = mltool::elf_interpreter("/proc/self/exe");
    if (own.empty()) own = absolute("/proc/self/exe");  // started as "ld.so memlock-run"
    struct stat theirs, ours;
    if (loader.empty() || ::stat(loader.c_str(), &theirs) != 0 || ::stat(own.c_str(), &ours) != 0 ||
        theirs.st_dev != ours.st_dev || theirs.st_ino != ours.st_ino) {
        std::printf("rules:   not checked: %s names %s as its loader, not this system's %s\n", program.c_str(),
                    loader.empty() ? "no file" : loader.c_str(), own.c_str());
        return;
    }
    const mlshim::ElfView elf(program);
    if (elf.has_dynamic_tag(DT_AUDIT) || elf.has_dynamic_tag(DT_DEPAUDIT)) {
        std::printf("rules:   not checked: %s names audit libraries (DT_AUDIT), which listing its dependencies "
                    "would run\n", program.c_str());
        return;
    }
    std::vector<std::string> objects{program};
    for (auto &path : listed_paths(output_of({own, "--list", program}, preload))) objects.push_back(std::move(path));
    if (objects.size() == 1) return;  // the loader listed nothing: nothing to compare
    std::vector<std::string> sonames;
    for (const auto &o : objects) sonames.push_back(mlshim::ElfView(o).soname());
    for (const auto &r : c.rules) {
        bool linked = r.module.empty();
        for (std::size_t i = 0; i < objects.size() && !linked; ++i)
            linked = mlshim::module_matches(r.module, objects[i], sonames[i]);
        if (linked) continue;
        const std::string globs = mlshim::quoted_globs(r.module);
        std::printf("rules:   \"%s\": nothing %s links matches %s: the rule protects nothing unless the program "
                    "loads one later (dlopen)\n",
                    r.name.c_str(), program.c_str(), globs.c_str());
        const BuiltIn b = find_built_in(r.module, objects, preload);
        const std::size_t n = b.shared.size();
        if (n >= 10 && (n >= 50 || 2 * n >= b.exported))
            warn(b.object + " has " + b.library + " built in: it exports " + std::to_string(n) + " of that library's " +
                 std::to_string(b.exported) + " functions itself (" + some_of(b.shared) + "); rule \"" + r.name +
                 "\" selects by module (" + globs + "), which cannot select code built into another object: select "
                 "by function name instead (\"symbol\"; config/openssl-linked.json does so for OpenSSL)");
    }
}

// A program (or a script's interpreter) built with AddressSanitizer (it links libasan)
// refuses to start with a library preloaded ahead of its runtime unless ASAN_OPTIONS holds
// verify_asan_link_order=0, and its LeakSanitizer does not scan the arena: a block referenced
// only from an arena block is reported as leaked and the program exits 1. Returns `options`
// with whichever of the two settings it does not decide itself appended, and says so;
// `options` unchanged for another program.
std::string asan_options_for(const std::string &program, const std::string &options) {
    bool asan = false;
    mlshim::ElfView(program).each_dynamic_string(DT_NEEDED, [&](const char *name) {
        return !(asan = std::strncmp(name, "libasan.so", 10) == 0);
    });
    if (!asan) return options;
    std::string added;
    for (const std::string setting : {"verify_asan_link_order=0", "detect_leaks=0"})
        if (options.find(setting.substr(0, setting.find('=') + 1)) == std::string::npos)
            added += (added.empty() ? "" : ":") + setting;
    if (added.empty()) return options;
    warn(program + " is built with AddressSanitizer: ASAN_OPTIONS gets " + added +
         " (ASan refuses a library preloaded ahead of its runtime, and LeakSanitizer cannot see pointers kept in "
         "the arena)");
    return options.empty() ? added : options + ":" + added;
}

}  // namespace

int main(int argc, char **argv) {
    mltool::g_tool = "memlock-run";
    const Options o = parse_args(argc, argv);

    std::string config_path = o.config.empty() ? env("MEMLOCK_SHIM_CONFIG") : o.config;
    if (config_path.empty())
        die(mltool::kExitConfig, "no config: pass --config FILE or set MEMLOCK_SHIM_CONFIG");
    config_path = absolute(config_path);
    mlshim::Config config;
    std::string error;
    const bool valid = mlshim::load_config_file(config_path, config, error);
    if (!valid) {
        if (o.check || env("MEMLOCK_SHIM_ON_CONFIG_ERROR") != "run-unprotected")
            die(mltool::kExitConfig, error + "\nfix the config (see docs/config.md); nothing was started");
        warn(error + "\nMEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected: the program runs UNPROTECTED");
    }
    if (o.check)
        std::printf("config:  %s: valid (%zu rule%s, programs: %s)\n", config_path.c_str(), config.rules.size(),
                    config.rules.size() == 1 ? "" : "s",
                    config.programs.empty() ? "any" : std::to_string(config.programs.size()).c_str());

    Elf shim_elf;
    const std::string shim = locate_shim(o.shim, shim_elf);
    if (o.check) std::printf("shim:    %s\n", shim.c_str());

    std::string program, loaded;
    if (!o.argv.empty()) {
        program = find_program(o.argv[0]);
        loaded = check_preloadable(program, shim_elf);
        // memlock-run -- env [OPTION]... [NAME=VALUE]... PROGRAM: what env runs counts.
        if (is_env(loaded) && o.argv.size() > 1) {
            const EnvRun next = env_words({o.argv.begin() + 1, o.argv.end()});
            if (!next.program.empty() || !next.drops.empty() || !next.unclear.empty())
                loaded = follow_env(program, next, shim_elf, 0);
        }
        if (valid && !mlshim::program_matches(config, loaded.c_str()))
            warn("the config's programs list does not include " + loaded +
                 ": the shim will pass every allocation through (unprotected)");
        if (o.check) std::printf("program: %s: can be preloaded (loads %s)\n", program.c_str(), loaded.c_str());
        // The program comes first in the lookup order, before any preloaded library (the shim
        // says so again when it starts).
        if (o.check && mlshim::ElfView(loaded).exports_function("malloc"))
            warn(loaded + " defines its own malloc, " + mlshim::kBeforeShim);
        if (o.check && valid) check_modules(config, loaded, preload_without_shim(env("LD_PRELOAD")));
    }
    if (valid) check_limits(config, o.check);
    if (valid && !o.user.empty()) check_user(config, o.user);
    std::fflush(stdout);
    if (o.check) return 0;

    ::setenv("LD_PRELOAD", preload_with(shim, env("LD_PRELOAD")).c_str(), 1);
    ::setenv("MEMLOCK_SHIM_CONFIG", config_path.c_str(), 1);
    if (const std::string asan = asan_options_for(loaded, env("ASAN_OPTIONS")); asan != env("ASAN_OPTIONS"))
        ::setenv("ASAN_OPTIONS", asan.c_str(), 1);
    // The program keeps this pid: the shim reports a rule that names nothing loaded as a
    // warning there, and at info level in the programs it runs in turn (docs/config.md).
    ::setenv("MEMLOCK_RUN_PID", std::to_string(::getpid()).c_str(), 1);
    ::execv(program.c_str(), exec_args(o.argv).data());
    die(errno == ENOENT ? kExitNotFound : kExitCannotRun, program + ": cannot execute: " + std::strerror(errno));
}
