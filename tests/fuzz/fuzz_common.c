/*
 * fuzz_common.c: helpers linked into every harness (see fuzz.h).
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>

void fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz: property violated: %s\n", what);
    abort();
}
