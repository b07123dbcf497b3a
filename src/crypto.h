/*
 * crypto.h: the cryptography leadbridge needs, all done by OpenSSL's libcrypto: SHA-256, HMAC with
 * SHA-1/SHA-256/SHA-512, base64 and base64url, hex, constant-time comparison (CRYPTO_memcmp) and
 * random bytes (RAND_bytes). This module adds only bounds, strict input checks and one calling
 * convention; it holds no hash or MAC implementation of its own.
 *
 * Nothing here allocates on the caller's behalf; every output buffer comes with its size or has a
 * documented fixed size. All functions are safe to call from several threads at once.
 */
#ifndef LB_CRYPTO_H
#define LB_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_SIZE 32
/* The largest digest any crypto_alg produces (SHA-512). */
#define CRYPTO_MAX_DIGEST 64

/* The hash functions an HMAC can use. */
enum crypto_alg {
    CRYPTO_SHA1,
    CRYPTO_SHA256,
    CRYPTO_SHA512,
    CRYPTO_ALG__MAX
};

/* One piece of a message that is signed in parts (e.g. "id.timestamp.body"). */
struct crypto_part {
    const void *data;
    size_t len;
};

void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_SIZE]);
void hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                 uint8_t out[SHA256_DIGEST_SIZE]);

/* The digest size of alg in bytes (20, 32 or 64), or 0 for an unknown alg. */
size_t crypto_digest_size(enum crypto_alg alg);
/* The alg named "sha1", "sha256" or "sha512" (case-insensitive). Returns 0, or -1 if unknown. */
int crypto_alg_from_name(const char *name, enum crypto_alg *out);
/* The lowercase name of alg ("sha256"), or "?". */
const char *crypto_alg_name(enum crypto_alg alg);

/*
 * HMAC(alg, key) over data. Writes crypto_digest_size(alg) bytes to out and returns that size, or 0
 * on failure (unknown alg, library error); out is then zeroed.
 */
size_t crypto_hmac(enum crypto_alg alg, const void *key, size_t key_len, const void *data,
                   size_t len, uint8_t out[CRYPTO_MAX_DIGEST]);
/* The same over the concatenation of n parts, without copying them together. */
size_t crypto_hmac_parts(enum crypto_alg alg, const void *key, size_t key_len,
                         const struct crypto_part *parts, size_t n, uint8_t out[CRYPTO_MAX_DIGEST]);

/* Encodes len bytes; writes a NUL-terminated string. Returns the length, or 0 if out_size is too
 * small (needs 4*ceil(len/3)+1 for base64). url selects base64url without padding. */
size_t base64_encode(const void *data, size_t len, bool url, char *out, size_t out_size);
/* Decodes (either alphabet; padding optional). Returns bytes written or -1 on bad input/space. */
long base64_decode(const char *s, size_t len, void *out, size_t out_size);

/* Lowercase hex of len bytes into out (2*len+1 bytes). */
void hex_encode(const void *data, size_t len, char *out);
/* Decodes len hex digits (either case; len even). Returns bytes written, or -1 on a non-hex
 * character, an odd length or too little space. */
long hex_decode(const char *s, size_t len, void *out, size_t out_size);

/* Compares without leaking the position of the first difference (CRYPTO_memcmp). */
bool crypto_equal(const void *a, const void *b, size_t len);
/* Fills buf with strong random bytes (RAND_bytes). Returns 0, or -1 on failure. */
int crypto_random(void *buf, size_t len);
/* Overwrites len bytes in a way the compiler cannot drop (OPENSSL_cleanse). */
void crypto_wipe(void *buf, size_t len);

#endif
