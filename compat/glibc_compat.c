// glibc_compat.c - lets the shim and the tools, built against a new glibc, load on every
// glibc from the architecture's baseline on (x86-64: 2.2.5, so 2.17 as promised; aarch64: 2.17).
//
// Linked (never LTO-compiled) into libmemlock_shim.so and the tools, it defines hidden
// replacements for the libc symbols whose default version is newer than GLIBC_2.17. A
// hidden definition in the link wins over libc's for every reference in it, including the
// static libstdc++ and libgcc_eh, so no newer version is ever recorded. scripts/check-abi
// fails the build when one creeps in; add its replacement here.
//
// What each replacement promises
//   - moved symbols (dl*, pthread_* moved into libc by 2.34; fstat and friends by 2.33) call
//     the symbol's baseline version, which every glibc since has kept as the same function;
//     the objects that held it then (libdl.so.2, libpthread.so.0) are linked as DT_NEEDED;
//   - new symbols (explicit_bzero 2.25, getentropy 2.25, arc4random 2.36, the
//     __libc_single_threaded hint 2.32, _dl_find_object 2.35) are implemented here, with the
//     same contract; _dl_find_object uses libc's own where it exists.
// Nothing here allocates.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define BASE_VERSION "GLIBC_2.2.5"
#define STAT_VER 1  // _STAT_VER_LINUX
#elif defined(__aarch64__)
#define BASE_VERSION "GLIBC_2.17"
#define STAT_VER 0  // _STAT_VER_KERNEL
#else
#error "glibc_compat.c: only x86_64 and aarch64 are supported"
#endif

#define HIDDEN __attribute__((visibility("hidden")))

// PIN(ret, name, (params), (args)): `name` in this link is a hidden function that calls
// name@BASE_VERSION. compat_<name> carries the symbol `name` (its C name stays free for the
// system header's declaration).
#define PIN_VERSION(ret, name, target, version, params, args)                      \
    ret compat_old_##name params;                                                 \
    __asm__(".symver compat_old_" #name ", " #target "@" version);                \
    HIDDEN ret compat_##name params __asm__(#name);                               \
    ret compat_##name params { return compat_old_##name args; }
#define PIN_AS(ret, name, target, params, args) PIN_VERSION(ret, name, target, BASE_VERSION, params, args)
#define PIN(ret, name, params, args) PIN_AS(ret, name, name, params, args)

// ---- libdl (in libc since 2.34) --------------------------------------------------------------
// dlsym(RTLD_NEXT, ...) searches after the object its caller is in: this one, the same object
// as the code that called the wrapper.
// The shim defines dlopen itself (shim/hooks.cpp) and reaches glibc's through dlsym(RTLD_NEXT):
// its copy of this file is built without this one (MEMLOCK_COMPAT_OWN_DLOPEN).
#ifndef MEMLOCK_COMPAT_OWN_DLOPEN
PIN(void *, dlopen, (const char *file, int mode), (file, mode))
#endif
PIN(void *, dlsym, (void *handle, const char *name), (handle, name))
PIN(void *, dlvsym, (void *handle, const char *name, const char *version), (handle, name, version))
PIN(char *, dlerror, (void), ())
PIN(int, dladdr, (const void *addr, Dl_info *info), (addr, info))
#if defined(__x86_64__)
#define DLADDR1_VERSION "GLIBC_2.3.3"  // younger than the x86-64 baseline
#else
#define DLADDR1_VERSION BASE_VERSION
#endif
PIN_VERSION(int, dladdr1, dladdr1, DLADDR1_VERSION, (const void *addr, Dl_info *info, void **extra, int flags),
            (addr, info, extra, flags))

// ---- libpthread (in libc since 2.34) -----------------------------------------------------------
PIN(int, pthread_once, (pthread_once_t *once, void (*init)(void)), (once, init))
PIN(int, pthread_mutex_trylock, (pthread_mutex_t *mutex), (mutex))
PIN(int, pthread_key_create, (pthread_key_t *key, void (*destructor)(void *)), (key, destructor))
PIN(int, __pthread_key_create, (pthread_key_t *key, void (*destructor)(void *)), (key, destructor))
PIN(int, pthread_key_delete, (pthread_key_t key), (key))
PIN(int, pthread_setspecific, (pthread_key_t key, const void *value), (key, value))
PIN(void *, pthread_getspecific, (pthread_key_t key), (key))
PIN(int, pthread_attr_getstack, (const pthread_attr_t *attr, void **addr, size_t *size), (attr, addr, size))
PIN(int, pthread_attr_getguardsize, (const pthread_attr_t *attr, size_t *size), (attr, size))
// New versions in 2.32 (same functions).
PIN(int, pthread_sigmask, (int how, const sigset_t *set, sigset_t *old), (how, set, old))
PIN(int, pthread_getattr_np, (pthread_t thread, pthread_attr_t *attr), (thread, attr))

// ---- stat family (real functions since 2.33; before, inline calls of __xstat and friends) ------
// struct stat and struct stat64 are one layout on both architectures.
PIN_AS(int, xstat, __xstat, (int ver, const char *path, struct stat *st), (ver, path, st))
PIN_AS(int, lxstat, __lxstat, (int ver, const char *path, struct stat *st), (ver, path, st))
PIN_AS(int, fxstat, __fxstat, (int ver, int fd, struct stat *st), (ver, fd, st))

#define STAT_VIA(name, old, params, args)                  \
    HIDDEN int compat_##name params __asm__(#name);        \
    int compat_##name params { return compat_old_##old args; }
STAT_VIA(stat, xstat, (const char *path, struct stat *st), (STAT_VER, path, st))
STAT_VIA(stat64, xstat, (const char *path, struct stat *st), (STAT_VER, path, st))
STAT_VIA(lstat, lxstat, (const char *path, struct stat *st), (STAT_VER, path, st))
STAT_VIA(lstat64, lxstat, (const char *path, struct stat *st), (STAT_VER, path, st))
STAT_VIA(fstat, fxstat, (int fd, struct stat *st), (STAT_VER, fd, st))
STAT_VIA(fstat64, fxstat, (int fd, struct stat *st), (STAT_VER, fd, st))

// ---- symbols newer than the baseline ------------------------------------------------------------

// libstdc++ skips atomic operations while this is non-zero. Zero: always atomic, always right.
HIDDEN char __libc_single_threaded = 0;

// glibc >= 2.25: a memset the compiler may not remove.
HIDDEN void compat_explicit_bzero(void *p, size_t n) __asm__("explicit_bzero");
void compat_explicit_bzero(void *p, size_t n) {
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

// glibc >= 2.25: up to 256 bytes from getrandom(2); -1 and errno (EIO above 256, ENOSYS
// before Linux 3.17).
HIDDEN int compat_getentropy(void *buf, size_t n) __asm__("getentropy");
int compat_getentropy(void *buf, size_t n) {
    if (n > 256) {
        errno = EIO;
        return -1;
    }
    unsigned char *p = (unsigned char *)buf;
    while (n > 0) {
        long got = syscall(SYS_getrandom, p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

// glibc >= 2.36 (libstdc++'s random_device "arc4random" token): never fails; without
// getrandom(2), /dev/urandom; with neither, abort as glibc does.
HIDDEN uint32_t compat_arc4random(void) __asm__("arc4random");
uint32_t compat_arc4random(void) {
    uint32_t v;
    if (compat_getentropy(&v, sizeof v) == 0) return v;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t got = read(fd, &v, sizeof v);
        close(fd);
        if (got == (ssize_t)sizeof v) return v;
    }
    abort();
}

// glibc >= 2.35: the loaded object that contains `pc`, and its PT_GNU_EH_FRAME (libgcc's
// unwinder calls this for every frame). libc's own when it has one (found once, through
// dlvsym), otherwise the same answer from dl_iterate_phdr, as libgcc did before 2.35.
#ifdef DLFO_STRUCT_HAS_EH_DBASE
struct find_state {
    uintptr_t pc;
    struct dl_find_object *result;
    int found;
};

static int find_object_cb(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    struct find_state *s = (struct find_state *)arg;
    uintptr_t lo = UINTPTR_MAX, hi = 0, eh = 0;
    int inside = 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD) {
            if (start < lo) lo = start;
            if (start + ph->p_memsz > hi) hi = start + ph->p_memsz;
            if (s->pc >= start && s->pc < start + ph->p_memsz) inside = 1;
        } else if (ph->p_type == PT_GNU_EH_FRAME) {
            eh = start;
        }
    }
    if (!inside) return 0;
    memset(s->result, 0, sizeof *s->result);
    s->result->dlfo_map_start = (void *)lo;
    s->result->dlfo_map_end = (void *)hi;
    s->result->dlfo_eh_frame = (void *)eh;
    s->found = 1;
    return 1;
}

typedef int (*find_object_fn)(void *, struct dl_find_object *);
static find_object_fn resolve_find_object(void) {
    // A cached answer: 1 = not in this libc, else libc's function.
    static uintptr_t cached;
    uintptr_t c = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (!c) {
        void *f = compat_dlvsym(RTLD_DEFAULT, "_dl_find_object", "GLIBC_2.35");
        c = f ? (uintptr_t)f : 1;
        __atomic_store_n(&cached, c, __ATOMIC_RELEASE);
    }
    return c == 1 ? NULL : (find_object_fn)c;
}

HIDDEN int compat_dl_find_object(void *pc, struct dl_find_object *result) __asm__("_dl_find_object");
int compat_dl_find_object(void *pc, struct dl_find_object *result) {
    find_object_fn libc_find = resolve_find_object();
    if (libc_find) return libc_find(pc, result);
    struct find_state s = {(uintptr_t)pc, result, 0};
    dl_iterate_phdr(find_object_cb, &s);
    return s.found ? 0 : -1;
}
#endif
