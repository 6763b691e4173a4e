// tools_hold: allocates blocks the test configs match (32 bytes and 1 KiB), writes to them,
// prints "ready" and waits for its stdin to close. memlock-inspect tests inspect it meanwhile.
#include "hold_common.h"

static void *volatile g_blocks[512];

int main(void) { return hold_blocks_until_eof(g_blocks, 512); }
