/* minimal.c - the C API in a few calls: lock and dontdump a page-aligned buffer with the page
 * helpers, use it, wipe it, then undo both. Exits 0 when every call succeeded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memlock.h"

int main(void) {
    const size_t page = memlock_page_size();
    /* A page-aligned allocation of whole pages: the page helpers then touch nothing else. */
    unsigned char *secret = aligned_alloc(page, page);
    if (secret == NULL) {
        fprintf(stderr, "aligned_alloc failed\n");
        return 1;
    }
    printf("memlock %s, page size %zu\n", memlock_version(), page);

    int rc = memlock_dontdump_pages(secret, page);
    printf("dontdump_pages: %s\n", memlock_strerror(rc));
    int failures = rc != 0;
    rc = memlock_lock_pages(secret, page);
    printf("lock_pages:     %s\n", memlock_strerror(rc));
    failures += rc != 0;

    memcpy(secret, "correct horse battery staple", 29);
    printf("using %zu locked bytes\n", strlen((const char *)secret));

    memlock_wipe(secret, page); /* always before unlocking: the secret never reaches swap */
    rc = memlock_unlock_pages(secret, page);
    printf("unlock_pages:   %s\n", memlock_strerror(rc));
    failures += rc != 0;
    rc = memlock_dodump_pages(secret, page);
    printf("dodump_pages:   %s\n", memlock_strerror(rc));
    failures += rc != 0;
    free(secret);
    return failures == 0 ? 0 : 1;
}
