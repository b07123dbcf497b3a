/*
 * crypto.h: the little cryptography leadbridge needs, with no extra library: SHA-256, HMAC-SHA256
 * (FIPS 180-4, RFC 2104, tested against RFC 4231's vectors), base64 and base64url, constant-time
 * comparison and random bytes from the kernel.
 */
#ifndef LB_CRYPTO_H
#define LB_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_SIZE 32

void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_SIZE]);
void hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                 uint8_t out[SHA256_DIGEST_SIZE]);

/* Encodes len bytes; writes a NUL-terminated string. Returns the length, or 0 if out_size is too
 * small (needs 4*ceil(len/3)+1 for base64). url selects base64url without padding. */
size_t base64_encode(const void *data, size_t len, bool url, char *out, size_t out_size);
/* Decodes (either alphabet; padding optional). Returns bytes written or -1 on bad input/space. */
long base64_decode(const char *s, size_t len, void *out, size_t out_size);

/* Lowercase hex of len bytes into out (2*len+1 bytes). */
void hex_encode(const void *data, size_t len, char *out);

/* Compares without leaking the position of the first difference. */
bool crypto_equal(const void *a, const void *b, size_t len);
/* Fills buf from getrandom(2). Returns 0, or -1 on failure. */
int crypto_random(void *buf, size_t len);

#endif
