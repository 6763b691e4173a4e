/* callers_linked.c - an ordinary program linked against libsecretlib (see callers_common.h
 * for what it allocates and prints). No arguments. */
#include "callers_common.h"

void *load_secret_key(size_t n);
void *load_plain_data(size_t n);

int main(int argc, char **argv) {
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: callers_linked\n");
        return 2;
    }
    prepare();
    allocate_round(load_secret_key, load_plain_data);
    return report_and_wait();
}
