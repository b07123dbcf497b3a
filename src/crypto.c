/*
 * crypto.c: SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104), base64 and base64url (RFC 4648), hex,
 * constant-time comparison and kernel randomness, with no library beyond libc.
 *
 * Nothing here allocates; every output buffer comes with its size or has a documented fixed size.
 */
#include "crypto.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#define SHA256_BLOCK_SIZE 64

struct sha256_ctx {
    uint32_t h[8];
    uint64_t total; /* bytes hashed so far */
    uint8_t block[SHA256_BLOCK_SIZE];
    size_t used; /* bytes waiting in block */
};

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static void sha256_init(struct sha256_ctx *c)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

    memcpy(c->h, h0, sizeof(h0));
    c->total = 0;
    c->used = 0;
}

/* Runs the compression function over one 64-byte block (FIPS 180-4, 6.2.2). */
static void sha256_block(struct sha256_ctx *c, const uint8_t *p)
{
    uint32_t w[64], a, b, cc, d, e, f, g, h, t1, t2;
    int i;

    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);

        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = c->h[0];
    b = c->h[1];
    cc = c->h[2];
    d = c->h[3];
    e = c->h[4];
    f = c->h[5];
    g = c->h[6];
    h = c->h[7];
    for (i = 0; i < 64; i++) {
        t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] +
             w[i];
        t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
    c->h[5] += f;
    c->h[6] += g;
    c->h[7] += h;
}

static void sha256_update(struct sha256_ctx *c, const void *data, size_t len)
{
    const uint8_t *p = data;

    c->total += len;
    if (c->used > 0) {
        size_t take = SHA256_BLOCK_SIZE - c->used;

        if (take > len)
            take = len;
        memcpy(c->block + c->used, p, take);
        c->used += take;
        p += take;
        len -= take;
        if (c->used < SHA256_BLOCK_SIZE)
            return;
        sha256_block(c, c->block);
        c->used = 0;
    }
    while (len >= SHA256_BLOCK_SIZE) {
        sha256_block(c, p);
        p += SHA256_BLOCK_SIZE;
        len -= SHA256_BLOCK_SIZE;
    }
    if (len > 0) {
        memcpy(c->block, p, len);
        c->used = len;
    }
}

/* Pads (0x80, zeros, 64-bit big-endian bit length) and writes the digest. */
static void sha256_final(struct sha256_ctx *c, uint8_t out[SHA256_DIGEST_SIZE])
{
    uint64_t bits = c->total * 8;
    int i;

    c->block[c->used++] = 0x80;
    if (c->used > SHA256_BLOCK_SIZE - 8) {
        memset(c->block + c->used, 0, SHA256_BLOCK_SIZE - c->used);
        sha256_block(c, c->block);
        c->used = 0;
    }
    memset(c->block + c->used, 0, SHA256_BLOCK_SIZE - 8 - c->used);
    for (i = 0; i < 8; i++)
        c->block[SHA256_BLOCK_SIZE - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha256_block(c, c->block);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
    memset(c, 0, sizeof(*c));
}

void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_SIZE])
{
    struct sha256_ctx c;

    sha256_init(&c);
    sha256_update(&c, data, len);
    sha256_final(&c, out);
}

/* HMAC per RFC 2104: keys longer than the block are hashed first; pads are wiped after use. */
void hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                 uint8_t out[SHA256_DIGEST_SIZE])
{
    uint8_t k[SHA256_BLOCK_SIZE], pad[SHA256_BLOCK_SIZE], inner[SHA256_DIGEST_SIZE];
    struct sha256_ctx c;
    size_t i;

    memset(k, 0, sizeof(k));
    if (key_len > SHA256_BLOCK_SIZE)
        sha256(key, key_len, k);
    else if (key_len > 0)
        memcpy(k, key, key_len);

    for (i = 0; i < SHA256_BLOCK_SIZE; i++)
        pad[i] = k[i] ^ 0x36;
    sha256_init(&c);
    sha256_update(&c, pad, sizeof(pad));
    sha256_update(&c, data, len);
    sha256_final(&c, inner);

    for (i = 0; i < SHA256_BLOCK_SIZE; i++)
        pad[i] = k[i] ^ 0x5c;
    sha256_init(&c);
    sha256_update(&c, pad, sizeof(pad));
    sha256_update(&c, inner, sizeof(inner));
    sha256_final(&c, out);

    memset(k, 0, sizeof(k));
    memset(pad, 0, sizeof(pad));
    memset(inner, 0, sizeof(inner));
}

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t base64_encode(const void *data, size_t len, bool url, char *out, size_t out_size)
{
    const uint8_t *p = data;
    const char *alpha = url ? b64_url : b64_std;
    size_t need, n = 0, i;

    if (len > (SIZE_MAX - 1) / 4 * 3 - 3)
        return 0;
    need = url ? (len / 3) * 4 + (len % 3 ? len % 3 + 1 : 0) : (len + 2) / 3 * 4;
    if (out == NULL || out_size < need + 1)
        return 0;
    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

        out[n++] = alpha[v >> 18];
        out[n++] = alpha[(v >> 12) & 63];
        out[n++] = alpha[(v >> 6) & 63];
        out[n++] = alpha[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;

        out[n++] = alpha[v >> 18];
        out[n++] = alpha[(v >> 12) & 63];
        if (!url) {
            out[n++] = '=';
            out[n++] = '=';
        }
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;

        out[n++] = alpha[v >> 18];
        out[n++] = alpha[(v >> 12) & 63];
        out[n++] = alpha[(v >> 6) & 63];
        if (!url)
            out[n++] = '=';
    }
    out[n] = '\0';
    return n;
}

/* The 6-bit value of c in either alphabet, or -1. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/*
 * Strict decoder: accepts either alphabet, padding optional but only at the end and only as much as
 * the length implies; rejects whitespace, a lone final character and non-zero trailing bits.
 */
long base64_decode(const char *s, size_t len, void *out, size_t out_size)
{
    uint8_t *o = out;
    size_t n = 0, i, pad = 0, rem;
    uint32_t acc = 0;
    int bits = 0;

    if (s == NULL || (out == NULL && out_size > 0))
        return -1;
    while (pad < 2 && len > 0 && s[len - 1] == '=') {
        len--;
        pad++;
    }
    rem = len % 4;
    if (rem == 1)
        return -1;
    if (pad > 0 && (rem == 0 || pad != 4 - rem))
        return -1;
    if (len / 4 * 3 + (rem ? rem - 1 : 0) > out_size)
        return -1;
    if (len / 4 * 3 > (size_t)0x7fffffff)
        return -1;
    for (i = 0; i < len; i++) {
        int v = b64_value((unsigned char)s[i]);

        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[n++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)n;
}

void hex_encode(const void *data, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    const uint8_t *p = data;
    size_t i;

    for (i = 0; i < len; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * len] = '\0';
}

bool crypto_equal(const void *a, const void *b, size_t len)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t diff = 0;
    size_t i;

    for (i = 0; i < len; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

/* Reads len bytes from getrandom(2), retrying on EINTR and short reads (large requests). */
int crypto_random(void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}
