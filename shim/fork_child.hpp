// memlock-shim: where the code lies that a fork child runs before the program does.
#ifndef MEMLOCK_SHIM_FORK_CHILD_HPP
#define MEMLOCK_SHIM_FORK_CHILD_HPP

// fork copies no page-table entries of a library's code, so a child faults once for each
// 64 KiB window of code it runs (the kernel maps the pages around a fault with it), and on a
// hypervisor that shadows page tables, each page it touches first costs it an exit. The
// functions of the shim's child handler lie side by side (GNU ld's sorted text, in the order
// of these names, before the rest of the code): first those that only some children run
// (after a multi-threaded fork, after _Fork, when locking falls short), then those that every
// child runs, and right after them the core's system-call wrappers (the Makefile links the
// core first). A child of a single-threaded process runs about 1 KiB of it.
#define MLSHIM_FORK_CHILD_TEXT __attribute__((section(".text.sorted.memlock_fork_child.1")))
#define MLSHIM_FORK_CHILD_COMMON_TEXT __attribute__((section(".text.sorted.memlock_fork_child.2")))

#endif
