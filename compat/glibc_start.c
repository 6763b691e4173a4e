// glibc_start.c - the tools' entry into libc, as programs linked before glibc 2.34 made it
// (linked into the executables only; see glibc_compat.c for the rest).
//
// A 2.34+ crt1.o calls __libc_start_main@GLIBC_2.34 with no init function: libc then runs the
// program's constructors itself. Older glibc has only the baseline version, and runs the
// constructors only through the init function it is handed. This hidden __libc_start_main
// calls the baseline version with such a function (what libc_nonshared's __libc_csu_init did:
// _init, then .init_array; the dynamic loader runs .preinit_array). Every glibc since 2.34
// still honours an init function given to the baseline version.
#include <stddef.h>

#if defined(__x86_64__)
#define BASE_VERSION "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define BASE_VERSION "GLIBC_2.17"
#else
#error "glibc_start.c: only x86_64 and aarch64 are supported"
#endif

#define HIDDEN __attribute__((visibility("hidden")))

typedef int (*main_fn)(int, char **, char **);
typedef void (*init_fn)(int, char **, char **);

extern void _init(void);  // crti.o
extern init_fn __init_array_start[] HIDDEN;  // the linker's
extern init_fn __init_array_end[] HIDDEN;

static void run_constructors(int argc, char **argv, char **envp) {
    _init();
    for (init_fn *f = __init_array_start; f < __init_array_end; ++f) (*f)(argc, argv, envp);
}

int compat_old_libc_start_main(main_fn main, int argc, char **argv, init_fn init, void (*fini)(void),
                               void (*rtld_fini)(void), void *stack_end);
__asm__(".symver compat_old_libc_start_main, __libc_start_main@" BASE_VERSION);

HIDDEN int compat_libc_start_main(main_fn main, int argc, char **argv, init_fn init, void (*fini)(void),
                                  void (*rtld_fini)(void), void *stack_end) __asm__("__libc_start_main");
int compat_libc_start_main(main_fn main, int argc, char **argv, init_fn init, void (*fini)(void),
                           void (*rtld_fini)(void), void *stack_end) {
    // The destructors (.fini_array) are the dynamic loader's at exit, on every version.
    (void)fini;
    return compat_old_libc_start_main(main, argc, argv, init ? init : run_constructors, NULL, rtld_fini,
                                      stack_end);
}
