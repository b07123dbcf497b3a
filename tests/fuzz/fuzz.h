/*
 * fuzz.h: what every fuzz harness in tests/fuzz/ shares.
 *
 * Each fuzz_<name>.c defines LLVMFuzzerTestOneInput() for one input surface of the bridge. It is
 * built two ways: with clang and -fsanitize=fuzzer,address,undefined by `scripts/fuzz` (libFuzzer
 * supplies main()), and with any C compiler against replay.c, whose main() feeds every file of the
 * harness's committed corpus (tests/fuzz/corpus/<name>/) to it: `make check` runs those, so every
 * input that ever crashed stays fixed. A harness must not keep state between inputs that changes
 * what the next one does, must free everything it allocates, and calls fuzz_fail() (abort) when a
 * property it checks does not hold.
 */
#ifndef LB_FUZZ_H
#define LB_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Prints what broke to stderr and aborts (libFuzzer saves the input as a crash). */
void fuzz_fail(const char *what) __attribute__((noreturn));

#endif
