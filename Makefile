# memlock-shim build. `make` builds everything, `make test` runs every test,
# `make demo` runs a real program under the shim, `make bench` prints benchmark ratios.
# Packages are installed by scripts/install-deps.sh (a no-op when they are present).

VERSION := $(shell cat VERSION)
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= $(PREFIX)/etc
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
# The configs `make install` puts in SYSCONFDIR/memlock-shim (the package: debian/config.json).
ETC_CONFIGS ?= $(wildcard config/*.json)
DESTDIR ?=

CC ?= gcc
CXX ?= g++
B := build

# ARCH=aarch64 cross-builds everything into build/aarch64 with Debian's cross compiler
# (g++-aarch64-linux-gnu); nlohmann_json (header only) still comes from /usr/include.
ARCH ?= x86_64
STRIP := strip
ifeq ($(ARCH),aarch64)
CC := aarch64-linux-gnu-gcc
CXX := aarch64-linux-gnu-g++
STRIP := aarch64-linux-gnu-strip
B := build/aarch64
EXTRA_INC := -idirafter /usr/include
else ifneq ($(ARCH),x86_64)
$(error ARCH=$(ARCH): only x86_64 and aarch64 are supported)
endif
# The Debian multiarch triplet (lib/x86_64-linux-gnu, lib/aarch64-linux-gnu): where the package
# puts the libraries; the compiler of ARCH answers it.
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

WARN := -Wall -Wextra -Wshadow -Wformat=2 -Wundef -Werror
CFLAGS_COMMON := -O2 -g -fPIC $(WARN) -D_GNU_SOURCE -DMEMLOCK_VERSION='"$(VERSION)"'
CXXSTD := -std=c++17
CORE_INC := -Icore/include $(EXTRA_INC)

# The injected library: no builtin allocation folding (malloc+memset -> calloc would recurse),
# initial-exec TLS, nothing exported but the hooks, its C++ runtime linked in and hidden.
SHIM_CXXFLAGS := $(CXXSTD) $(CFLAGS_COMMON) $(CORE_INC) -Ishim -fno-builtin -ftls-model=initial-exec \
	-fvisibility=hidden -fvisibility-inlines-hidden -fno-plt -flto=auto -ffat-lto-objects \
	-DMEMLOCK_SHIM_SYSCONFDIR='"$(SYSCONFDIR)"'
SHIM_LDFLAGS := -shared -Wl,-soname,libmemlock_shim.so -flto=auto -O2 -static-libstdc++ -static-libgcc -Wl,--version-script=shim/exports.map \
	-Wl,-z,now -Wl,-z,relro -Wl,--no-undefined -Wl,-Bsymbolic

TOOL_LDFLAGS := -static-libstdc++ -static-libgcc -Wl,-z,now -Wl,-z,relro
# What the shipped objects (the shim, the tools) link besides their own code, so that they
# load on every glibc from 2.17 on (scripts/check-abi): compat/ pins or replaces the libc
# symbols newer than that; libdl and libpthread held the pinned dl* and pthread_* before 2.34.
COMPAT_OBJ := $(B)/compat/glibc_compat.o
SHIM_COMPAT_OBJ := $(B)/compat/glibc_compat_shim.o
GLIBC_LIBS := -Wl,--no-as-needed -l:libdl.so.2 -l:libpthread.so.0 -Wl,--as-needed

SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

CORE_SRC := $(wildcard core/src/*.cpp)
CORE_OBJ := $(CORE_SRC:%.cpp=$(B)/%.o)
# shim sources: hooks.cpp is the injected part; everything else is plain code unit tests link.
SHIM_LIB_SRC := $(filter-out shim/hooks.cpp,$(wildcard shim/*.cpp))
SHIM_LIB_OBJ := $(SHIM_LIB_SRC:%.cpp=$(B)/%.o)

TEST_CORE_SRC := $(wildcard tests/core/*.cpp)
TEST_SHIM_SRC := $(wildcard tests/shim/*.cpp)
PROG_C_SRC := $(wildcard tests/progs/*.c)
PROG_CXX_SRC := $(wildcard tests/progs/*.cpp)
PROGS := $(PROG_C_SRC:tests/progs/%.c=$(B)/progs/%) $(PROG_CXX_SRC:tests/progs/%.cpp=$(B)/progs/%)

TOOLS := $(B)/memlock-run $(B)/memlock-inspect $(B)/memlock-discover
EXAMPLES := $(B)/examples/minimal $(B)/examples/locked_buffer

.PHONY: all deps core shim tools examples progs test test-core test-core-san test-shim demo bench proof-keys \
	install uninstall clean check-abi

all: deps core shim tools examples man

# The packages are installed before any rule runs (so that `make -j` never compiles while
# apt is still installing a header). install-deps.sh is a quick no-op once they are there.
ifeq ($(filter clean deps,$(MAKECMDGOALS)),)
ifneq ($(shell sh scripts/install-deps.sh >&2; echo $$?),0)
$(error scripts/install-deps.sh failed: see the messages above)
endif
endif
deps:
	@sh scripts/install-deps.sh

core: $(B)/libmemlock.a $(B)/libmemlock.so $(B)/memlock.pc
shim: $(B)/libmemlock_shim.so
tools: $(TOOLS)
examples: $(EXAMPLES)
progs: $(PROGS)

# ---- core -------------------------------------------------------------------------------
$(B)/core/src/%.o: core/src/%.cpp core/include/memlock.h core/include/memlock.hpp
	@mkdir -p $(@D)
	$(CXX) $(CXXSTD) $(CFLAGS_COMMON) $(CORE_INC) -fvisibility=hidden -c $< -o $@

$(B)/libmemlock.a: $(CORE_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(B)/libmemlock.so.0: $(CORE_OBJ)
	@mkdir -p $(@D)
	$(CXX) -shared -Wl,-soname,libmemlock.so.0 -Wl,--no-undefined $^ -o $@

$(B)/libmemlock.so: $(B)/libmemlock.so.0
	ln -sf libmemlock.so.0 $@

# `make install` writes its own copy with the PREFIX/LIBDIR it is given (PC_SUBST).
PC_SUBST = sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' core/memlock.pc.in
$(B)/memlock.pc: core/memlock.pc.in VERSION Makefile
	@mkdir -p $(@D)
	$(PC_SUBST) > $@

$(B)/examples/minimal: core/examples/minimal.c $(B)/libmemlock.a
	@mkdir -p $(@D)
	$(CC) -std=c11 $(CFLAGS_COMMON) $(CORE_INC) $< $(B)/libmemlock.a -lstdc++ -o $@

$(B)/examples/locked_buffer: core/examples/locked_buffer.cpp $(B)/libmemlock.a
	@mkdir -p $(@D)
	$(CXX) $(CXXSTD) $(CFLAGS_COMMON) $(CORE_INC) $< $(B)/libmemlock.a -o $@

# ---- shim -------------------------------------------------------------------------------
$(B)/shim/%.o: shim/%.cpp $(wildcard shim/*.hpp) core/include/memlock.h
	@mkdir -p $(@D)
	$(CXX) $(SHIM_CXXFLAGS) -c $< -o $@

$(B)/libmemlock_shim.so: $(B)/shim/hooks.o $(SHIM_LIB_OBJ) $(CORE_OBJ) $(SHIM_COMPAT_OBJ) shim/exports.map
	$(CXX) $(SHIM_LDFLAGS) $(CORE_OBJ) $(B)/shim/hooks.o $(SHIM_LIB_OBJ) $(SHIM_COMPAT_OBJ) $(GLIBC_LIBS) -o $@

# Not LTO-compiled: its symbol versions must reach the linker as written.
$(B)/compat/%.o: compat/%.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 $(CFLAGS_COMMON) -fvisibility=hidden -c $< -o $@
# The shim's copy: the shim exports a dlopen of its own.
$(SHIM_COMPAT_OBJ): compat/glibc_compat.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 $(CFLAGS_COMMON) -fvisibility=hidden -DMEMLOCK_COMPAT_OWN_DLOPEN -c $< -o $@

# ---- tools ------------------------------------------------------------------------------
# Each tool is one source file linked with the shim's plain code (its config parser, its
# stats layout), so the tools and the shim cannot disagree. The C++ runtime is linked in, so
# that a tool copied onto an older system needs nothing but its libc (scripts/check-abi).
$(B)/memlock-%: tools/memlock-%.cpp $(wildcard tools/*.hpp) $(wildcard shim/*.hpp) $(SHIM_LIB_OBJ) $(CORE_OBJ) \
	    $(COMPAT_OBJ) $(B)/compat/glibc_start.o
	$(CXX) $(CXXSTD) $(CFLAGS_COMMON) $(CORE_INC) -Ishim -DMEMLOCK_SHIM_LIBDIR='"$(LIBDIR)"' \
	    -DMEMLOCK_SHIM_MULTIARCH='"$(MULTIARCH)"' \
	    $< $(SHIM_LIB_OBJ) $(CORE_OBJ) $(COMPAT_OBJ) $(B)/compat/glibc_start.o $(TOOL_LDFLAGS) $(GLIBC_LIBS) -o $@

# ---- tests ------------------------------------------------------------------------------
$(B)/progs/%: tests/progs/%.c tests/progs/stress_common.h tests/progs/hold_common.h
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -Wno-error=unused-result -fno-builtin $< -o $@ -lpthread -ldl

# e2e_layout built with a sanitizer runtime, or with a library that starts as one does, which
# the shim comes before (tests/shim/test_e2e_protection.cpp).
$(B)/progs/e2e_layout_asan: tests/progs/e2e_layout.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -fno-builtin -fsanitize=address $< -o $@
$(B)/progs/e2e_layout_tsan: tests/progs/e2e_layout.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -fno-builtin -fsanitize=thread $< -o $@
$(B)/progs/e2e_layout_preinit: tests/progs/e2e_layout.c $(B)/libs/libpreinit_runtime.so
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -fno-builtin -DPREINIT_RUNTIME $< -o $@ \
	    -L $(B)/libs -Wl,-rpath,$(abspath $(B)/libs) -lpreinit_runtime
progs: $(B)/progs/e2e_layout_asan $(B)/progs/e2e_layout_tsan $(B)/progs/e2e_layout_preinit

# A musl libc program (memlock-run must refuse it; tests/shim/test_reach.cpp).
MUSL_CC ?= musl-gcc
$(B)/progs/musl_probe: tests/musl/musl_probe.c
	@mkdir -p $(@D)
	$(MUSL_CC) -std=gnu11 -O1 $(WARN) $< -o $@
progs: $(B)/progs/musl_probe

# A program the dynamic loader never sees (memlock-run must refuse it).
$(B)/progs/tools_static: tests/progs/tools_static.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 $(WARN) -static $< -o $@

# An HTTPS server with OpenSSL linked in, not loaded (scripts/keyproof.py: config/openssl-linked.json).
$(B)/progs/tls_linked: tests/progs/tls_linked.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) $< -o $@ -Wl,-Bstatic -lssl -lcrypto -Wl,-Bdynamic -lpthread -ldl

$(B)/progs/%: tests/progs/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXSTD) -O1 -g $(WARN) $< -o $@ -lpthread -ldl

# Test objects, one per source (an edit recompiles one file; `make -j` builds them side by
# side), compiled as plain code: build/tobj/<source path>.o. The shipped objects are built apart.
TEST_HEADERS := tests/helpers.hpp $(wildcard shim/*.hpp) $(wildcard tools/*.hpp) $(wildcard core/include/*.h*) $(wildcard tests/shim/*.hpp) \
	$(wildcard tests/core/*.hpp)
$(B)/tobj/%.o: %.cpp $(TEST_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXSTD) $(CFLAGS_COMMON) $(CORE_INC) -Ishim -Itests -DMEMLOCK_TEST_SYSCONFDIR='"$(SYSCONFDIR)"' -c $< -o $@

# CRITERION_LIB: how the test binaries link Criterion (the aarch64 unit run links the arm64
# library from a cached Debian root; tests/reach/test-aarch64-units.sh).
CRITERION_LIB ?= -lcriterion
$(B)/tests/test_core: $(patsubst %.cpp,$(B)/tobj/%.o,$(TEST_CORE_SRC) $(CORE_SRC))
	@mkdir -p $(@D)
	$(CXX) $^ -o $@ $(CRITERION_LIB)

$(B)/tests/test_core_san: $(TEST_CORE_SRC) $(CORE_SRC) tests/san_main.cpp tests/helpers.hpp $(wildcard tests/core/*.hpp)
	@mkdir -p $(@D)
	$(CXX) $(CXXSTD) $(CFLAGS_COMMON) $(SAN) $(CORE_INC) -Itests $(TEST_CORE_SRC) $(CORE_SRC) tests/san_main.cpp -o $@ -lcriterion

$(B)/tests/test_shim: $(patsubst %.cpp,$(B)/tobj/%.o,$(TEST_SHIM_SRC) $(SHIM_LIB_SRC) $(CORE_SRC))
	@mkdir -p $(@D)
	$(CXX) $^ -o $@ $(CRITERION_LIB) -lpthread

# The config and rule unit tests alone: what the aarch64 unit run adds to test_core under qemu-user.
UNIT_SRC := tests/shim/test_config.cpp tests/shim/test_rules.cpp
$(B)/tests/test_units: $(patsubst %.cpp,$(B)/tobj/%.o,$(UNIT_SRC) $(SHIM_LIB_SRC) $(CORE_SRC))
	@mkdir -p $(@D)
	$(CXX) $^ -o $@ $(CRITERION_LIB) -lpthread -ldl

# Criterion runs each test in its own process; -j2 uses both cores.
CRITERION_ARGS ?= --jobs=2

test: all progs $(B)/tests/test_core $(B)/tests/test_core_san $(B)/tests/test_shim
	scripts/check-abi $(ABI_OBJECTS)
	$(B)/examples/minimal > /dev/null
	$(B)/examples/locked_buffer > /dev/null
	$(B)/tests/test_core $(CRITERION_ARGS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(B)/tests/test_core_san $(CRITERION_ARGS)
	MEMLOCK_TEST_BUILD=$(CURDIR)/$(B) $(B)/tests/test_shim $(CRITERION_ARGS)
	$(ROBUSTNESS_RUN)
	$(MAKE) --no-print-directory difftest-smoke
	$(MAKE) --no-print-directory test-containers
	$(MAKE) --no-print-directory test-reach

# The shipped objects load on glibc 2.17 and need only libc's libraries (scripts/check-abi).
ABI_OBJECTS := $(B)/libmemlock_shim.so $(TOOLS)
check-abi: $(ABI_OBJECTS)
	scripts/check-abi $^

test-core: $(B)/tests/test_core $(B)/tests/test_core_san
	$(B)/tests/test_core $(CRITERION_ARGS)
	$(B)/tests/test_core_san $(CRITERION_ARGS)

test-shim: all progs $(B)/tests/test_shim
	MEMLOCK_TEST_BUILD=$(CURDIR)/$(B) $(B)/tests/test_shim $(CRITERION_ARGS)

# ---- caller-rule test programs ------------------------------------------------------------
# tests/libs/NAME.c -> build/libs/libNAME.so, and the programs tests/progs/callers_*.c that
# call them (tests/shim/test_e2e_callers.cpp). No inlining, no tail calls in the libraries
# (see their sources): the test rules count stack frames. callers_dlopen loads its library at
# run time, so it is not linked against it.
CALLER_LIB_SRC := $(wildcard tests/libs/*.c)
CALLER_LIBS := $(CALLER_LIB_SRC:tests/libs/%.c=$(B)/libs/lib%.so)
CALLER_PROG_SRC := $(wildcard tests/progs/callers_*.c)
CALLER_TEST_BINS := $(CALLER_LIBS) $(CALLER_PROG_SRC:tests/progs/%.c=$(B)/progs/%)

$(B)/libs/lib%.so: tests/libs/%.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -shared -fPIC -O1 -g $(WARN) -fno-builtin -Wl,-soname,lib$*.so $< -o $@

$(B)/progs/callers_dlopen: tests/progs/callers_dlopen.c tests/progs/callers_common.h $(CALLER_LIBS)
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -fno-builtin $< -o $@ -ldl

$(B)/progs/callers_%: tests/progs/callers_%.c tests/progs/callers_common.h $(CALLER_LIBS)
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -fno-builtin $< -o $@ -L $(B)/libs -Wl,-rpath,$(abspath $(B)/libs) -lsecretlib

# Binds _Fork when the loader relocates it at start-up (-z now), before the shim's relocation.
$(B)/libs/libforkref.so: tests/libs/forkref.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -shared -fPIC -O1 -g $(WARN) -Wl,-z,now -Wl,-soname,libforkref.so $< -o $@

$(B)/progs/fork_bare_lib: tests/progs/fork_bare_lib.c $(B)/libs/libforkref.so
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -Wl,-z,now $< -o $@ -L $(B)/libs -Wl,-rpath,$(abspath $(B)/libs) -lforkref

# jemalloc's own interface, from libjemalloc.so.2 (after the shim in the lookup order).
$(B)/progs/jemalloc_api: tests/progs/jemalloc_api.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -fno-builtin $< -o $@ -l:libjemalloc.so.2

# Opens tests/libs' libraries by bare name through its RUNPATH, one with RTLD_DEEPBIND.
$(B)/progs/deepbind: tests/progs/deepbind.c $(CALLER_LIBS)
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) $< -o $@ -ldl -Wl,--enable-new-dtags -Wl,-rpath,'$$ORIGIN/../libs'

# Its constructor opens libdeepfree.so by bare name, through its own RUNPATH.
$(B)/libs/libdeepearly.so: tests/libs/deepearly.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -shared -fPIC -O1 -g $(WARN) -fno-builtin -Wl,-soname,libdeepearly.so $< -o $@ -ldl \
	    -Wl,--enable-new-dtags -Wl,-rpath,'$$ORIGIN'

# malloc under a version of its own (tests/shim/test_e2e_compose.cpp).
$(B)/libs/libversioned_malloc.so: tests/libs/versioned_malloc.c tests/libs/versioned_malloc.map
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -shared -fPIC -O1 -g $(WARN) -fno-builtin -Wl,-soname,libversioned_malloc.so $< -o $@ \
	    -Wl,--version-script=tests/libs/versioned_malloc.map

$(B)/libs/libforward_calloc.so: tests/libs/forward_calloc.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -shared -fPIC -O1 -g $(WARN) -fno-builtin -Wl,-soname,libforward_calloc.so $< -o $@ -ldl

$(B)/progs/deepbind_early: tests/progs/deepbind_early.c $(CALLER_LIBS)
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) $< -o $@ -L $(B)/libs -ldeepearly -Wl,--enable-new-dtags -Wl,-rpath,'$$ORIGIN/../libs'

progs: $(CALLER_TEST_BINS)

# memlock-discover's test program allocates through libsecretlib too.
$(B)/progs/discover_secrets: tests/progs/discover_secrets.c $(CALLER_LIBS)
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -fno-builtin $< -o $@ -lpthread -L $(B)/libs -Wl,-rpath,$(abspath $(B)/libs) -lsecretlib
# tests/libs/memlock_testlib.c built into a program that exports its functions, and the same
# program linked with libmemlock_testlib.so (memlock-run --check: tests/shim/test_tools.cpp).
$(B)/progs/testlib_builtin: tests/progs/testlib_builtin.c tests/libs/memlock_testlib.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -rdynamic $< -o $@

$(B)/progs/testlib_linked: tests/progs/testlib_builtin.c $(B)/libs/libmemlock_testlib.so
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O1 -g $(WARN) -DTESTLIB_LINKED $< -o $@ -L $(B)/libs -Wl,-rpath,$(abspath $(B)/libs) \
	    -lmemlock_testlib
progs: $(B)/progs/testlib_linked
# ---- end of caller-rule test programs ----------------------------------------------------

# ---- robustness: fuzzer, sanitizer and TSan builds, stress and fault tests ------------------
# fuzz/config_fuzzer.cpp: libFuzzer over the config parser, the rule compiler and the globs.
# `make fuzz` runs it for FUZZ_SECONDS into build/fuzz/corpus (seeded by fuzz/corpus, which it
# never writes); `make test` runs a bounded, seeded smoke run of FUZZ_SMOKE_RUNS inputs.
# test_shim_san: the shim's tests (unit and end-to-end but the real daemons') under ASan+UBSan;
# the injected library itself is never sanitized. test_tsan: the arena and the rules under threads, with
# ThreadSanitizer (clang). test_stress: the arena's mlock/madvise failures through the core
# seam, under ASan+UBSan. The end-to-end storms and faults (tests/shim/test_e2e_stress.cpp)
# run in test_shim, with the stress_* programs and libfailalloc.so.
FUZZ_CXX ?= clang++-14
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_RUNS ?= 100000
FUZZ_FLAGS := $(CXXSTD) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -D_GNU_SOURCE \
	$(WARN) $(CORE_INC) -Ishim
FUZZ_RUN_FLAGS := -dict=fuzz/config.dict -timeout=10 -rss_limit_mb=2048 -artifact_prefix=$(B)/fuzz/artifacts/
TSAN_CXX ?= clang++-14
TSAN_FLAGS := $(CXXSTD) -g -O1 -fsanitize=thread -fno-omit-frame-pointer -D_GNU_SOURCE $(WARN) $(CORE_INC) \
	-Ishim -Itests -DMEMLOCK_VERSION='"$(VERSION)"'
STRESS_SRC := tests/stress/test_faults.cpp
ROBUSTNESS_TESTS := $(B)/tests/test_shim_san $(B)/tests/test_tsan $(B)/tests/test_stress $(B)/libs/libfailalloc.so \
	$(B)/fuzz/config_fuzzer

.PHONY: fuzz fuzz-smoke test-robustness

$(B)/fuzz/config_fuzzer: fuzz/config_fuzzer.cpp shim/config.cpp shim/rules.cpp $(wildcard shim/*.hpp)
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_FLAGS) fuzz/config_fuzzer.cpp shim/config.cpp shim/rules.cpp -o $@

fuzz: $(B)/fuzz/config_fuzzer
	@mkdir -p $(B)/fuzz/corpus $(B)/fuzz/artifacts
	$< $(FUZZ_RUN_FLAGS) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(B)/fuzz/corpus fuzz/corpus

# The first corpus directory receives new inputs: a scratch one, emptied each run.
fuzz-smoke: $(B)/fuzz/config_fuzzer
	@rm -rf $(B)/fuzz/smoke && mkdir -p $(B)/fuzz/smoke $(B)/fuzz/artifacts
	$< $(FUZZ_RUN_FLAGS) -runs=$(FUZZ_SMOKE_RUNS) -seed=1 -print_final_stats=1 $(B)/fuzz/smoke fuzz/corpus

# Sanitized objects, one per source (so that `make -j` builds them side by side and an edit
# recompiles one file): build/san/<source path>.o.
SAN_HEADERS := tests/helpers.hpp $(wildcard shim/*.hpp) $(wildcard core/include/*.h*) $(wildcard tests/shim/*.hpp)
$(B)/san/%.o: %.cpp $(SAN_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXSTD) $(CFLAGS_COMMON) $(SAN) -O1 $(CORE_INC) -Ishim -Itests -c $< -o $@
SAN_LIB_OBJ := $(patsubst %.cpp,$(B)/san/%.o,$(SHIM_LIB_SRC) $(CORE_SRC))

# The real-daemon tests (test_e2e_daemons.cpp) run once, in test_shim: under the sanitizers
# they would check only a script's launch and a JSON line, at minutes of daemons per run.
SAN_SHIM_SRC := $(filter-out tests/shim/test_e2e_daemons.cpp,$(TEST_SHIM_SRC))
$(B)/tests/test_shim_san: $(patsubst %.cpp,$(B)/san/%.o,$(SAN_SHIM_SRC) tests/san_main.cpp) $(SAN_LIB_OBJ)
	@mkdir -p $(@D)
	$(CXX) $(SAN) $^ -o $@ -lcriterion -lpthread -ldl

$(B)/tests/test_tsan: tests/stress/test_tsan.cpp $(SHIM_LIB_SRC) $(CORE_SRC) tests/helpers.hpp $(wildcard shim/*.hpp)
	@mkdir -p $(@D)
	$(TSAN_CXX) $(TSAN_FLAGS) $< $(SHIM_LIB_SRC) $(CORE_SRC) -o $@ -lpthread -ldl

$(B)/tests/test_stress: $(patsubst %.cpp,$(B)/san/%.o,$(STRESS_SRC) tests/san_main.cpp) $(SAN_LIB_OBJ)
	@mkdir -p $(@D)
	$(CXX) $(SAN) $^ -o $@ -lcriterion -lpthread -ldl

# The allocator after the shim that fails on request (tests/stress/failalloc.c).
$(B)/libs/libfailalloc.so: tests/stress/failalloc.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -shared -fPIC -O1 -g $(WARN) -fno-builtin $< -o $@ -ldl

progs: $(B)/libs/libfailalloc.so

# Run by `make test` (after test_shim) and by `make test-robustness` alone.
define ROBUSTNESS_RUN
$(MAKE) --no-print-directory fuzz-smoke
TSAN_OPTIONS=halt_on_error=1 MEMLOCK_TEST_BUILD=$(CURDIR)/$(B) $(B)/tests/test_tsan
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(B)/tests/test_stress $(CRITERION_ARGS)
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 MEMLOCK_TEST_BUILD=$(CURDIR)/$(B) \
	    $(B)/tests/test_shim_san $(CRITERION_ARGS)
endef

test-robustness: all progs $(ROBUSTNESS_TESTS)
	$(ROBUSTNESS_RUN)

# Prerequisites are expanded where a rule is read: ROBUSTNESS_TESTS exists only from here on.
test: $(ROBUSTNESS_TESTS)
# ---- end of robustness ------------------------------------------------------------------------

# scripts/alloc-difftest.sh: a seeded random sequence of allocation calls checked against
# glibc's contract (tests/progs/alloc_difftest.c), without the shim and under match-none,
# match-all, size rules, a full arena, pools of mixed actions and a low RLIMIT_MEMLOCK; a
# transcript that differs from the one without the shim fails. `make difftest` runs
# DIFFTEST_SEEDS seeds of DIFFTEST_OPS calls in DIFFTEST_GROUPS; `make test` runs two short seeds.
DIFFTEST_SEEDS ?= 1 2 3 4 5 6 7 8
DIFFTEST_OPS ?= 20000
DIFFTEST_GROUPS ?= plain tcache perturb
.PHONY: difftest difftest-smoke
difftest: all progs
	@for s in $(DIFFTEST_SEEDS); do scripts/alloc-difftest.sh $(B) $$s $(DIFFTEST_OPS) $(DIFFTEST_GROUPS) || exit 1; done
difftest-smoke: all progs
	@for s in 1 2; do scripts/alloc-difftest.sh $(B) $$s 3000 plain || exit 1; done

# ---- containers, systemd and Kubernetes (deploy/, tests/containers/) ----------------------
# container-layer: the build context of deploy/container/Dockerfile.layer in build/container/layer
# (opt/memlock-shim/ = the unpacked `make dist` tarball, and the static copier the layer runs). test-containers:
# the layer and an image built and run with podman, systemd booted in podman, the Kubernetes
# manifests. Debian roots and podman images are cached under build/ (roots/, podman/).
.PHONY: container-layer test-containers
$(B)/container/memlock-shim-copy: deploy/container/memlock-shim-copy.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -Os -static $(WARN) $< -o $@

container-layer: dist $(B)/container/memlock-shim-copy
	rm -rf $(B)/container/layer && mkdir -p $(B)/container/layer/opt
	tar -C $(B)/container/layer/opt -xzf $(DIST_TAR)
	mv $(B)/container/layer/opt/$(DIST_NAME) $(B)/container/layer/opt/memlock-shim
	cp $(B)/container/memlock-shim-copy $(B)/container/layer/

test-containers: container-layer
	rm -rf $(B)/container/systemd-root
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(B))/container/systemd-root > /dev/null
	sh tests/containers/test-kubernetes.sh $(B)
	sh tests/containers/test-image.sh $(B)
	sh tests/containers/test-systemd.sh $(B)
# ---- end of containers ----------------------------------------------------------------------

# ---- older systems and other CPUs (tests/reach/) ------------------------------------------------
# test-bullseye: the tarball in a Debian 11 root (glibc 2.31, OpenSSL 1.1.1), cached under
# build/roots; about half a minute once the root exists (the first debootstrap takes minutes).
# test-aarch64 (when the cross compiler is installed): the aarch64 tarball's shim in an
# aarch64 program under qemu-aarch64, and the core, config and rule unit tests under qemu-user.
.PHONY: test-reach test-aarch64
test-reach: dist
	sh tests/reach/test-bullseye.sh $(B) $(DIST_TAR)
	if command -v aarch64-linux-gnu-g++ > /dev/null; then $(MAKE) --no-print-directory test-aarch64; \
	else echo "test-reach: no aarch64 cross compiler: the arm64 test did not run"; fi

test-aarch64:
	$(MAKE) --no-print-directory dist ARCH=aarch64
	sh tests/reach/test-aarch64.sh build/aarch64 dist/memlock-shim-$(VERSION)-aarch64-linux-gnu.tar.gz
	sh tests/reach/test-aarch64-units.sh
# ---- end of older systems ------------------------------------------------------------------

# ---- demo and bench ---------------------------------------------------------------------
demo: all
	sh scripts/demo.sh $(B)

$(B)/bench/%: bench/%.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O2 $(WARN) -fno-builtin $< -o $@ -lpthread -ldl

# fork_cost linked with -z now, as Debian links its daemons.
$(B)/bench/fork_cost_now: bench/fork_cost.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -O2 $(WARN) -fno-builtin -Wl,-z,now $< -o $@ -lpthread -ldl

bench: all progs $(B)/bench/alloc_pairs $(B)/bench/live_secrets $(B)/bench/caller_pairs $(B)/bench/fork_cost \
       $(B)/bench/fork_cost_now $(B)/bench/dl_cycle $(B)/bench/phases
	python3 scripts/bench.py $(B)
	python3 scripts/bench_daemons.py $(B)
	python3 scripts/bench_daemons.py $(B) 0 config/match-all.json

# The table of private-key copies in real daemons' dumps: no shim, size rules, the profiles.
proof-keys: all $(B)/progs/tls_linked
	python3 scripts/keyproof.py --table --build $(B)

# ---- man pages, bash completion, Debian package ------------------------------------------
# docs/man/NAME.SECTION.scd -> build/man/NAME.SECTION (scdoc). `make deb` builds the package
# with dpkg tools (scripts/build-deb.sh: its own build for PREFIX=/usr, the multiarch LIBDIR
# and /etc); tests/packaging/run.sh checks pages, completion, the package and its install.
MAN_SRC := $(wildcard docs/man/*.scd)
MAN_PAGES := $(MAN_SRC:docs/man/%.scd=$(B)/man/%)
DEB_VERSION := $(VERSION)-1
.PHONY: man deb test-packaging

man: $(MAN_PAGES)
$(B)/man/%: docs/man/%.scd
	@mkdir -p $(@D)
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) scdoc < $< > $@.tmp && mv $@.tmp $@

deb: all
	sh scripts/build-deb.sh $(B) $(DEB_VERSION) $(MULTIARCH)

test-packaging: deb
	sh tests/packaging/run.sh $(B) $(DEB_VERSION)

test: test-packaging

# ---- install ----------------------------------------------------------------------------
# Configs already in SYSCONFDIR/memlock-shim are kept (an operator may have edited them).
install: core shim tools man
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(SYSCONFDIR)/memlock-shim $(DESTDIR)$(DATADIR)/doc/memlock-shim \
	    $(DESTDIR)$(DATADIR)/memlock-shim $(DESTDIR)$(DATADIR)/bash-completion/completions \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 644 $(B)/libmemlock.a $(DESTDIR)$(LIBDIR)/
	install -m 755 $(B)/libmemlock.so.0 $(DESTDIR)$(LIBDIR)/
	ln -sf libmemlock.so.0 $(DESTDIR)$(LIBDIR)/libmemlock.so
	install -m 755 $(B)/libmemlock_shim.so $(DESTDIR)$(LIBDIR)/
	install -m 644 core/include/memlock.h core/include/memlock.hpp $(DESTDIR)$(INCLUDEDIR)/
	$(PC_SUBST) > $(DESTDIR)$(LIBDIR)/pkgconfig/memlock.pc
	chmod 644 $(DESTDIR)$(LIBDIR)/pkgconfig/memlock.pc
	install -m 755 $(TOOLS) $(DESTDIR)$(BINDIR)/
	for f in $(ETC_CONFIGS); do \
	    [ -e $(DESTDIR)$(SYSCONFDIR)/memlock-shim/$${f##*/} ] || \
	    install -m 644 $$f $(DESTDIR)$(SYSCONFDIR)/memlock-shim/ || exit 1; done
	install -m 644 config/*.json $(DESTDIR)$(DATADIR)/memlock-shim/
	for p in $(MAN_PAGES); do install -m 644 $$p $(DESTDIR)$(MANDIR)/man$${p##*.}/ || exit 1; done
	install -m 644 tools/bash-completion/memlock-run tools/bash-completion/memlock-inspect \
	    $(DESTDIR)$(DATADIR)/bash-completion/completions/
	install -m 644 $(wildcard README.md CHANGELOG.md LICENSE-APACHE LICENSE-MIT) docs/*.md \
	    $(DESTDIR)$(DATADIR)/doc/memlock-shim/
	install -d $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/systemd $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/container \
	    $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/prometheus
	install -m 644 deploy/README.md $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/
	install -m 644 deploy/systemd/memlock-shim.conf $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/systemd/
	install -m 644 deploy/prometheus/memlock-shim-metrics.service deploy/prometheus/memlock-shim-metrics.timer \
	    $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/prometheus/
	install -m 644 deploy/container/Dockerfile deploy/container/Dockerfile.layer deploy/container/Dockerfile.example \
	    $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/container/
	install -d $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/kubernetes
	install -m 644 deploy/kubernetes/*.yaml $(DESTDIR)$(DATADIR)/doc/memlock-shim/deploy/kubernetes/

# ---- dist: the relocatable tarball ----------------------------------------------------------
# dist/memlock-shim-VERSION-ARCH-linux-gnu.tar.gz, one top folder that works wherever it is
# unpacked (the tools find ../lib/libmemlock_shim.so beside their own directory):
#   bin/        memlock-run, memlock-inspect, memlock-discover
#   lib/        libmemlock_shim.so (it loads nothing but libc's libraries)
# (debug info stripped; the symbol tables stay)
#   etc/memlock-shim/  the shipped configs
#   share/doc/memlock-shim/  README, docs, deploy examples;  LICENSE-*  at the top
# Reproducible: sorted, owned by root, dated by the last commit, gzip without a name.
DIST_NAME := memlock-shim-$(VERSION)-$(ARCH)-linux-gnu
DIST_TREE := $(B)/dist/$(DIST_NAME)
DIST_TAR := dist/$(DIST_NAME).tar.gz
DIST_DATE := $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
.PHONY: dist
dist: $(B)/libmemlock_shim.so $(TOOLS)
	rm -rf $(DIST_TREE) && mkdir -p dist
	install -d $(DIST_TREE)/bin $(DIST_TREE)/lib $(DIST_TREE)/etc/memlock-shim \
	    $(DIST_TREE)/share/doc/memlock-shim/deploy
	install -m 755 $(TOOLS) $(DIST_TREE)/bin/
	install -m 755 $(B)/libmemlock_shim.so $(DIST_TREE)/lib/
	$(STRIP) --strip-debug $(DIST_TREE)/bin/* $(DIST_TREE)/lib/*
	install -m 644 config/*.json $(DIST_TREE)/etc/memlock-shim/
	install -m 644 LICENSE-APACHE LICENSE-MIT $(DIST_TREE)/
	install -m 644 README.md CHANGELOG.md docs/*.md $(DIST_TREE)/share/doc/memlock-shim/
	cp -R deploy/. $(DIST_TREE)/share/doc/memlock-shim/deploy/
	tar -C $(B)/dist --sort=name --owner=0 --group=0 --numeric-owner --mtime=@$(DIST_DATE) \
	    -cf - $(DIST_NAME) | gzip -9n > $(DIST_TAR).tmp && mv $(DIST_TAR).tmp $(DIST_TAR)
	@echo "dist: $(DIST_TAR)"

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libmemlock.a $(DESTDIR)$(LIBDIR)/libmemlock.so $(DESTDIR)$(LIBDIR)/libmemlock.so.0 \
	    $(DESTDIR)$(LIBDIR)/libmemlock_shim.so $(DESTDIR)$(LIBDIR)/pkgconfig/memlock.pc \
	    $(DESTDIR)$(INCLUDEDIR)/memlock.h $(DESTDIR)$(INCLUDEDIR)/memlock.hpp \
	    $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(TOOLS))) \
	    $(addprefix $(DESTDIR)$(DATADIR)/bash-completion/completions/,memlock-run memlock-inspect) \
	    $(foreach p,$(MAN_PAGES),$(DESTDIR)$(MANDIR)/man$(subst .,,$(suffix $(p)))/$(notdir $(p)))
	rm -rf $(DESTDIR)$(SYSCONFDIR)/memlock-shim $(DESTDIR)$(DATADIR)/doc/memlock-shim $(DESTDIR)$(DATADIR)/memlock-shim

clean:
	rm -rf $(B) dist

.SECONDARY:
