/*
 * crypto.c: leadbridge's cryptography as thin, bounded wrappers over OpenSSL's libcrypto: digests
 * (EVP_Digest), HMAC (EVP_MAC "HMAC"), base64 (EVP_EncodeBlock/EVP_DecodeBlock), constant-time
 * comparison (CRYPTO_memcmp), randomness (RAND_bytes) and wiping (OPENSSL_cleanse).
 *
 * What stays here is policy, not cryptography: base64url on top of EVP's standard alphabet, a
 * strict decoder (EVP_DecodeBlock accepts whitespace and ignores spare bits; signatures must not),
 * and fixed-size stack chunks so no call allocates for its output.
 */
#include "crypto.h"

#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

static const struct {
    const char *name;
    size_t size;
} alg_info[CRYPTO_ALG__MAX] = {
    [CRYPTO_SHA1] = {"sha1", 20},
    [CRYPTO_SHA256] = {"sha256", 32},
    [CRYPTO_SHA512] = {"sha512", 64},
};

static const EVP_MD *alg_md(enum crypto_alg alg)
{
    switch (alg) {
    case CRYPTO_SHA1:
        return EVP_sha1();
    case CRYPTO_SHA256:
        return EVP_sha256();
    case CRYPTO_SHA512:
        return EVP_sha512();
    case CRYPTO_ALG__MAX:
        break;
    }
    return NULL;
}

size_t crypto_digest_size(enum crypto_alg alg)
{
    return (unsigned)alg < CRYPTO_ALG__MAX ? alg_info[alg].size : 0;
}

const char *crypto_alg_name(enum crypto_alg alg)
{
    return (unsigned)alg < CRYPTO_ALG__MAX ? alg_info[alg].name : "?";
}

int crypto_alg_from_name(const char *name, enum crypto_alg *out)
{
    int i;

    if (name == NULL)
        return -1;
    for (i = 0; i < CRYPTO_ALG__MAX; i++) {
        if (strcasecmp(name, alg_info[i].name) == 0) {
            *out = (enum crypto_alg)i;
            return 0;
        }
    }
    return -1;
}

void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_SIZE])
{
    unsigned int n = 0;

    if (EVP_Digest(len > 0 ? data : "", len, out, &n, EVP_sha256(), NULL) != 1 ||
        n != SHA256_DIGEST_SIZE)
        memset(out, 0, SHA256_DIGEST_SIZE);
}

size_t crypto_hmac_parts(enum crypto_alg alg, const void *key, size_t key_len,
                         const struct crypto_part *parts, size_t n, uint8_t out[CRYPTO_MAX_DIGEST])
{
    const EVP_MD *md = alg_md(alg);
    EVP_MAC *mac = NULL;
    EVP_MAC_CTX *ctx = NULL;
    OSSL_PARAM params[2];
    size_t got = 0, i, want = crypto_digest_size(alg);
    static const uint8_t empty[1];

    memset(out, 0, CRYPTO_MAX_DIGEST);
    if (md == NULL)
        return 0;
    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL)
        goto out;
    ctx = EVP_MAC_CTX_new(mac);
    if (ctx == NULL)
        goto out;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *)EVP_MD_get0_name(md), 0);
    params[1] = OSSL_PARAM_construct_end();
    /* An empty key is a valid HMAC key; a NULL key would mean "keep the previous one". */
    if (EVP_MAC_init(ctx, key_len > 0 ? key : empty, key_len, params) != 1)
        goto out;
    for (i = 0; i < n; i++) {
        if (parts[i].len > 0 && EVP_MAC_update(ctx, parts[i].data, parts[i].len) != 1)
            goto out;
    }
    if (EVP_MAC_final(ctx, out, &got, CRYPTO_MAX_DIGEST) != 1 || got != want) {
        memset(out, 0, CRYPTO_MAX_DIGEST);
        got = 0;
    }
out:
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return got;
}

size_t crypto_hmac(enum crypto_alg alg, const void *key, size_t key_len, const void *data,
                   size_t len, uint8_t out[CRYPTO_MAX_DIGEST])
{
    struct crypto_part part = {data, len};

    return crypto_hmac_parts(alg, key, key_len, &part, 1, out);
}

void hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                 uint8_t out[SHA256_DIGEST_SIZE])
{
    uint8_t mac[CRYPTO_MAX_DIGEST];

    crypto_hmac(CRYPTO_SHA256, key, key_len, data, len, mac);
    memcpy(out, mac, SHA256_DIGEST_SIZE);
    OPENSSL_cleanse(mac, sizeof(mac));
}

/* Input bytes per EVP_EncodeBlock call: a multiple of 3, so only the last call pads. */
#define B64_CHUNK 48

size_t base64_encode(const void *data, size_t len, bool url, char *out, size_t out_size)
{
    const unsigned char *p = data;
    unsigned char chunk[B64_CHUNK / 3 * 4 + 1];
    size_t need, n = 0, i;

    if (len > (SIZE_MAX - 1) / 4 * 3 - 3)
        return 0;
    need = url ? (len / 3) * 4 + (len % 3 ? len % 3 + 1 : 0) : (len + 2) / 3 * 4;
    if (out == NULL || out_size < need + 1)
        return 0;
    for (i = 0; i < len; i += B64_CHUNK) {
        size_t take = len - i < B64_CHUNK ? len - i : B64_CHUNK;
        int k = EVP_EncodeBlock(chunk, p + i, (int)take), j;

        for (j = 0; j < k; j++) {
            unsigned char c = chunk[j];

            if (url && c == '=')
                break;
            if (url)
                c = c == '+' ? '-' : c == '/' ? '_' : c;
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

/* The 6-bit value of c in either alphabet, or -1. Used only to validate before EVP decodes. */
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

/* Characters per EVP_DecodeBlock call: a multiple of 4. */
#define B64_DCHUNK 64

/*
 * Strict decoder: accepts either alphabet, padding optional but only at the end and only as much as
 * the length implies; rejects whitespace, a lone final character and non-zero trailing bits. The
 * input is checked here, translated to the standard alphabet and padded in stack chunks, and
 * decoded by EVP_DecodeBlock.
 */
long base64_decode(const char *s, size_t len, void *out, size_t out_size)
{
    unsigned char *o = out;
    unsigned char chunk[B64_DCHUNK], dec[B64_DCHUNK / 4 * 3];
    size_t n = 0, i, pad = 0, rem, total;

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
    total = len / 4 * 3 + (rem ? rem - 1 : 0);
    if (total > out_size || len / 4 * 3 > (size_t)0x7fffffff)
        return -1;
    for (i = 0; i < len; i++) {
        if (b64_value((unsigned char)s[i]) < 0)
            return -1;
    }
    /* The spare low bits of the last character must be zero (2 chars: 4 bits, 3 chars: 2). */
    if (rem != 0 && (b64_value((unsigned char)s[len - 1]) & (rem == 2 ? 15 : 3)) != 0)
        return -1;
    for (i = 0; i < len; i += B64_DCHUNK) {
        size_t take = len - i < B64_DCHUNK ? len - i : B64_DCHUNK, j, groups;
        int k;

        for (j = 0; j < take; j++) {
            unsigned char c = (unsigned char)s[i + j];

            chunk[j] = c == '-' ? '+' : c == '_' ? '/' : c;
        }
        while (j % 4 != 0)
            chunk[j++] = '=';
        groups = j / 4;
        k = EVP_DecodeBlock(dec, chunk, (int)j);
        if (k < 0 || (size_t)k != groups * 3)
            return -1;
        /* EVP counts padded positions as output bytes: keep only the real ones. */
        k = (int)(total - n < (size_t)k ? total - n : (size_t)k);
        memcpy(o + n, dec, (size_t)k);
        n += (size_t)k;
    }
    OPENSSL_cleanse(dec, sizeof(dec));
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

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long hex_decode(const char *s, size_t len, void *out, size_t out_size)
{
    uint8_t *o = out;
    size_t i;

    if (s == NULL || len % 2 != 0 || len / 2 > out_size || len / 2 > (size_t)0x7fffffff)
        return -1;
    for (i = 0; i < len; i += 2) {
        int hi = hex_value((unsigned char)s[i]), lo = hex_value((unsigned char)s[i + 1]);

        if (hi < 0 || lo < 0)
            return -1;
        o[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(len / 2);
}

bool crypto_equal(const void *a, const void *b, size_t len)
{
    return len == 0 || CRYPTO_memcmp(a, b, len) == 0;
}

/* RAND_bytes takes an int length: large requests go in pieces. */
int crypto_random(void *buf, size_t len)
{
    unsigned char *p = buf;

    while (len > 0) {
        int take = len > 1u << 20 ? 1 << 20 : (int)len;

        if (RAND_bytes(p, take) != 1)
            return -1;
        p += take;
        len -= (size_t)take;
    }
    return 0;
}

void crypto_wipe(void *buf, size_t len)
{
    if (buf != NULL && len > 0)
        OPENSSL_cleanse(buf, len);
}
