// A library of 66 functions that tests/progs/testlib_builtin.c also builds in and exports:
// memlock-run --check finds it built in there (tests/shim/test_tools.cpp).
#include <stdlib.h>

void *memlock_testlib_malloc(size_t n) { return malloc(n); }
void memlock_testlib_free(void *p) { free(p); }

#define TESTLIB_FN(n) int memlock_testlib_f##n(int x) { return x + n; }
#define TESTLIB_TEN(d) TESTLIB_FN(d##0) TESTLIB_FN(d##1) TESTLIB_FN(d##2) TESTLIB_FN(d##3) TESTLIB_FN(d##4) \
    TESTLIB_FN(d##5) TESTLIB_FN(d##6) TESTLIB_FN(d##7) TESTLIB_FN(d##8) TESTLIB_FN(d##9)
TESTLIB_FN(0) TESTLIB_FN(1) TESTLIB_FN(2) TESTLIB_FN(3) TESTLIB_FN(4) TESTLIB_FN(5) TESTLIB_FN(6) TESTLIB_FN(7)
TESTLIB_FN(8) TESTLIB_FN(9) TESTLIB_TEN(1) TESTLIB_TEN(2) TESTLIB_TEN(3) TESTLIB_TEN(4) TESTLIB_TEN(5)
TESTLIB_FN(60) TESTLIB_FN(61) TESTLIB_FN(62) TESTLIB_FN(63)
