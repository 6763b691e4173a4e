// memlock-shim: where the code lies that a fork child runs before the program does.
#ifndef MEMLOCK_SHIM_FORK_CHILD_HPP
#define MEMLOCK_SHIM_FORK_CHILD_HPP

// fork copies no page-table entries of a library's code, so a child faults once for each
// 64 KiB window of code it runs (the kernel maps the pages around a fault with it). The
// functions of the shim's child handler lie side by side (GNU ld's sorted text, before the
// rest) and the core's system-call wrappers they call right after them (the Makefile links
// the core first): about 3 KiB, one window for the whole handler at most load addresses, two
// where a window's boundary falls inside it.
#define MLSHIM_FORK_CHILD_TEXT __attribute__((section(".text.sorted.memlock_fork_child")))

#endif
