/*
 * test_crypto.c: unit tests for src/crypto.c and src/leadref.c.
 *
 * The wrappers over libcrypto: SHA-256 against the FIPS 180-4 / NIST examples, HMAC-SHA256 against
 * every RFC 4231 case, HMAC-SHA512 against RFC 4231 and HMAC-SHA1 against RFC 2202, base64 against
 * RFC 4648 section 10 (plus our strictness), hex both ways, and the signed lead references: round
 * trip, tampering, expiry.
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "leadref.h"

static void expect_hex(const uint8_t *digest, size_t len, const char *want)
{
    char hex[2 * SHA256_DIGEST_SIZE + 1];

    cr_assert(len <= SHA256_DIGEST_SIZE);
    hex_encode(digest, len, hex);
    cr_assert_str_eq(hex, want);
}

static void expect_sha256(const void *data, size_t len, const char *want)
{
    uint8_t d[SHA256_DIGEST_SIZE];

    sha256(data, len, d);
    expect_hex(d, sizeof(d), want);
}

Test(sha256, nist_vectors)
{
    static const char two_blocks[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

    expect_sha256("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect_sha256("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect_sha256(two_blocks, sizeof(two_blocks) - 1,
                  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

Test(sha256, one_million_a)
{
    char *a = malloc(1000000);

    cr_assert_not_null(a);
    memset(a, 'a', 1000000);
    expect_sha256(a, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

Test(sha256, padding_boundaries)
{
    /* 55, 56 and 64 bytes straddle the length field's block boundary. */
    char a[64];

    memset(a, 'a', sizeof(a));
    expect_sha256(a, 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    expect_sha256(a, 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
    expect_sha256(a, 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

static void expect_hmac(const void *key, size_t key_len, const void *data, size_t len,
                        size_t show, const char *want)
{
    uint8_t d[SHA256_DIGEST_SIZE];

    hmac_sha256(key, key_len, data, len, d);
    expect_hex(d, show, want);
}

Test(hmac_sha256, rfc4231)
{
    uint8_t k[131], data[50];
    size_t i;
    static const char long_data[] =
        "This is a test using a larger than block-size key and a larger than block-size data. The "
        "key needs to be hashed before being used by the HMAC algorithm.";
    static const char long_key[] = "Test Using Larger Than Block-Size Key - Hash Key First";

    /* Case 1 */
    memset(k, 0x0b, 20);
    expect_hmac(k, 20, "Hi There", 8, 32,
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    /* Case 2: a key shorter than the output */
    expect_hmac("Jefe", 4, "what do ya want for nothing?", 28, 32,
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* Case 3 */
    memset(k, 0xaa, 20);
    memset(data, 0xdd, 50);
    expect_hmac(k, 20, data, 50, 32,
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
    /* Case 4 */
    for (i = 0; i < 25; i++)
        k[i] = (uint8_t)(i + 1);
    memset(data, 0xcd, 50);
    expect_hmac(k, 25, data, 50, 32,
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
    /* Case 5: truncated to 128 bits */
    memset(k, 0x0c, 20);
    expect_hmac(k, 20, "Test With Truncation", 20, 16, "a3b6167473100ee06e0c796c2955552b");
    /* Case 6: a key longer than the block is hashed first */
    memset(k, 0xaa, 131);
    expect_hmac(k, 131, long_key, sizeof(long_key) - 1, 32,
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    /* Case 7: long key and long data */
    expect_hmac(k, 131, long_data, sizeof(long_data) - 1, 32,
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

static void expect_generic(enum crypto_alg alg, const void *key, size_t key_len, const void *data,
                           size_t len, const char *want)
{
    uint8_t d[CRYPTO_MAX_DIGEST];
    char hex[2 * CRYPTO_MAX_DIGEST + 1];
    size_t n = crypto_hmac(alg, key, key_len, data, len, d);

    cr_assert_eq(n, strlen(want) / 2, "%s: %zu bytes", crypto_alg_name(alg), n);
    hex_encode(d, n, hex);
    cr_assert_str_eq(hex, want);
}

Test(crypto_hmac, sha512_rfc4231)
{
    uint8_t k[131];

    memset(k, 0x0b, 20);
    expect_generic(CRYPTO_SHA512, k, 20, "Hi There", 8,
                   "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
                   "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854");
    expect_generic(CRYPTO_SHA512, "Jefe", 4, "what do ya want for nothing?", 28,
                   "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                   "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737");
    memset(k, 0xaa, 131);
    expect_generic(CRYPTO_SHA512, k, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54,
                   "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
                   "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598");
}

Test(crypto_hmac, sha1_rfc2202)
{
    uint8_t k[80];

    memset(k, 0x0b, 20);
    expect_generic(CRYPTO_SHA1, k, 20, "Hi There", 8, "b617318655057264e28bc0b6fb378c8ef146be00");
    expect_generic(CRYPTO_SHA1, "Jefe", 4, "what do ya want for nothing?", 28,
                   "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    memset(k, 0xaa, 80);
    expect_generic(CRYPTO_SHA1, k, 80, "Test Using Larger Than Block-Size Key - Hash Key First", 54,
                   "aa4ae5e15272d00e95705637ce8a3b55ed402112");
}

Test(crypto_hmac, empty_key_and_message)
{
    expect_generic(CRYPTO_SHA256, "", 0, "", 0,
                   "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

Test(crypto_hmac, parts_equal_the_whole)
{
    static const struct crypto_part parts[] = {
        {"what do ", 8}, {"", 0}, {"ya want", 7}, {" for nothing?", 13}};
    uint8_t a[CRYPTO_MAX_DIGEST], b[CRYPTO_MAX_DIGEST];
    int alg;

    for (alg = 0; alg < CRYPTO_ALG__MAX; alg++) {
        size_t n = crypto_hmac_parts((enum crypto_alg)alg, "Jefe", 4, parts, 4, a);

        cr_assert_eq(n, crypto_digest_size((enum crypto_alg)alg));
        cr_assert_eq(crypto_hmac((enum crypto_alg)alg, "Jefe", 4, "what do ya want for nothing?",
                                 28, b),
                     n);
        cr_assert_eq(memcmp(a, b, n), 0);
    }
}

Test(crypto_hmac, names_and_unknown_alg)
{
    enum crypto_alg alg = CRYPTO_SHA1;
    uint8_t d[CRYPTO_MAX_DIGEST];

    cr_assert_eq(crypto_alg_from_name("SHA512", &alg), 0);
    cr_assert_eq(alg, CRYPTO_SHA512);
    cr_assert_eq(crypto_alg_from_name("sha1", &alg), 0);
    cr_assert_eq(alg, CRYPTO_SHA1);
    cr_assert_eq(crypto_alg_from_name("md5", &alg), -1);
    cr_assert_eq(crypto_alg_from_name(NULL, &alg), -1);
    cr_assert_str_eq(crypto_alg_name(CRYPTO_SHA256), "sha256");
    cr_assert_eq(crypto_digest_size(CRYPTO_SHA1), 20);
    cr_assert_eq(crypto_digest_size(CRYPTO_ALG__MAX), 0);
    cr_assert_eq(crypto_hmac(CRYPTO_ALG__MAX, "k", 1, "m", 1, d), 0);
}

Test(base64, rfc4648_encode)
{
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const std[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                                      "Zm9vYmFy"};
    static const char *const url[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    char out[16];
    size_t i;

    for (i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        size_t n = base64_encode(in[i], strlen(in[i]), false, out, sizeof(out));

        cr_assert_eq(n, strlen(std[i]));
        cr_assert_str_eq(out, std[i]);
        n = base64_encode(in[i], strlen(in[i]), true, out, sizeof(out));
        cr_assert_eq(n, strlen(url[i]));
        cr_assert_str_eq(out, url[i]);
    }
}

Test(base64, rfc4648_decode)
{
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const std[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                                      "Zm9vYmFy"};
    static const char *const url[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    char out[16];
    size_t i;

    for (i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        long n = base64_decode(std[i], strlen(std[i]), out, sizeof(out));

        cr_assert_eq(n, (long)strlen(in[i]), "%s", std[i]);
        cr_assert_eq(memcmp(out, in[i], (size_t)n), 0);
        n = base64_decode(url[i], strlen(url[i]), out, sizeof(out));
        cr_assert_eq(n, (long)strlen(in[i]), "%s", url[i]);
        cr_assert_eq(memcmp(out, in[i], (size_t)n), 0);
    }
}

Test(base64, url_alphabet_round_trip)
{
    uint8_t all[256], back[256];
    char std[400], url[400];
    size_t len, n;
    long m;

    for (n = 0; n < sizeof(all); n++)
        all[n] = (uint8_t)(255 - n);
    for (len = 0; len <= sizeof(all); len += 37) {
        n = base64_encode(all, len, true, url, sizeof(url));
        cr_assert(len == 0 || n > 0);
        cr_assert_null(strpbrk(url, "+/="), "url alphabet leaked: %s", url);
        m = base64_decode(url, n, back, sizeof(back));
        cr_assert_eq(m, (long)len);
        cr_assert_eq(memcmp(all, back, len), 0);
    }
    /* The bytes 0xfb 0xff encode to the characters that differ between alphabets. */
    n = base64_encode("\xfb\xff", 2, false, std, sizeof(std));
    cr_assert_str_eq(std, "+/8=");
    n = base64_encode("\xfb\xff", 2, true, url, sizeof(url));
    cr_assert_str_eq(url, "-_8");
    cr_assert_eq(base64_decode("-_8", 3, back, sizeof(back)), 2);
    cr_assert_eq(memcmp(back, "\xfb\xff", 2), 0);
}

Test(base64, rejects_bad_input)
{
    char out[32];

    cr_assert_eq(base64_decode("Zm9v!", 5, out, sizeof(out)), -1);
    cr_assert_eq(base64_decode("Zm 9v", 5, out, sizeof(out)), -1);
    cr_assert_eq(base64_decode("Z", 1, out, sizeof(out)), -1);        /* lone sextet */
    cr_assert_eq(base64_decode("Zm9vY", 5, out, sizeof(out)), -1);
    cr_assert_eq(base64_decode("Zm=v", 4, out, sizeof(out)), -1);     /* padding inside */
    cr_assert_eq(base64_decode("Zg===", 5, out, sizeof(out)), -1);    /* too much padding */
    cr_assert_eq(base64_decode("Zm9v=", 5, out, sizeof(out)), -1);    /* padding after full */
    cr_assert_eq(base64_decode("Zh==", 4, out, sizeof(out)), -1);     /* non-zero spare bits */
    cr_assert_eq(base64_decode("Zm9=", 4, out, sizeof(out)), -1);
    cr_assert_eq(base64_decode("Zm\0v", 4, out, sizeof(out)), -1);
}

Test(base64, out_size_too_small)
{
    char out[8];

    /* "foo" needs 4 characters and the NUL. */
    cr_assert_eq(base64_encode("foo", 3, false, out, 4), 0);
    cr_assert_eq(base64_encode("foo", 3, false, out, 5), 4);
    cr_assert_eq(base64_encode("fo", 2, true, out, 3), 0);
    cr_assert_eq(base64_encode("fo", 2, true, out, 4), 3);
    cr_assert_eq(base64_decode("Zm9vYmFy", 8, out, 5), -1);
    cr_assert_eq(base64_decode("Zm9vYmFy", 8, out, 6), 6);
    cr_assert_eq(base64_decode("Zm9vYg==", 8, out, 3), -1);
    cr_assert_eq(base64_decode("Zm9vYg==", 8, out, 4), 4);
}

Test(hex, lowercase)
{
    char out[9];

    hex_encode("\x00\x9f\xAB\xff", 4, out);
    cr_assert_str_eq(out, "009fabff");
    hex_encode("", 0, out);
    cr_assert_str_eq(out, "");
}

Test(hex, decode)
{
    uint8_t out[4];

    cr_assert_eq(hex_decode("009fABff", 8, out, sizeof(out)), 4);
    cr_assert_eq(memcmp(out, "\x00\x9f\xab\xff", 4), 0);
    cr_assert_eq(hex_decode("", 0, out, sizeof(out)), 0);
    cr_assert_eq(hex_decode("abc", 3, out, sizeof(out)), -1);      /* odd */
    cr_assert_eq(hex_decode("zz", 2, out, sizeof(out)), -1);
    cr_assert_eq(hex_decode("0011223344", 10, out, sizeof(out)), -1); /* no room */
}

Test(base64, long_input_crosses_chunks)
{
    uint8_t in[1000], back[1000];
    char enc[1400];
    size_t i, len;

    for (i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)(i * 7 + 3);
    for (len = 40; len < sizeof(in); len += 37) {
        size_t n = base64_encode(in, len, false, enc, sizeof(enc));

        cr_assert_eq(n, (len + 2) / 3 * 4);
        cr_assert_eq(base64_decode(enc, n, back, sizeof(back)), (long)len);
        cr_assert_eq(memcmp(in, back, len), 0);
        n = base64_encode(in, len, true, enc, sizeof(enc));
        cr_assert_eq(base64_decode(enc, n, back, sizeof(back)), (long)len);
        cr_assert_eq(memcmp(in, back, len), 0);
    }
}

Test(crypto_equal, compares_every_byte)
{
    cr_assert(crypto_equal("abcdef", "abcdef", 6));
    cr_assert_not(crypto_equal("abcdef", "abcdeg", 6));
    cr_assert_not(crypto_equal("xbcdef", "abcdef", 6));
    cr_assert(crypto_equal("a", "b", 0));
}

Test(crypto_random, fills_and_varies)
{
    uint8_t a[64], b[64], zero[64];
    static uint8_t big[1 << 20];
    size_t i, nonzero = 0;

    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    memset(zero, 0, sizeof(zero));
    cr_assert_eq(crypto_random(a, sizeof(a)), 0);
    cr_assert_eq(crypto_random(b, sizeof(b)), 0);
    cr_assert_neq(memcmp(a, zero, sizeof(a)), 0);
    cr_assert_neq(memcmp(a, b, sizeof(a)), 0);
    /* A megabyte: the tail must be filled too. */
    cr_assert_eq(crypto_random(big, sizeof(big)), 0);
    for (i = sizeof(big) - 4096; i < sizeof(big); i++)
        nonzero += big[i] != 0;
    cr_assert_gt(nonzero, 3000);
}

/* --- lead references --- */

#define SECRET "test-secret-for-refs"
#define NOW 1700000000LL

Test(leadref, round_trip)
{
    char ref[LEADREF_MAX], target[32], lead_id[64];

    cr_assert_eq(leadref_sign(SECRET, "leadpro", "12345678901234567890", NOW + 60, ref,
                              sizeof(ref)),
                 LB_OK);
    cr_assert_eq(strspn(ref, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."),
                 strlen(ref));
    cr_assert_eq(leadref_verify(SECRET, ref, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_OK);
    cr_assert_str_eq(target, "leadpro");
    cr_assert_str_eq(lead_id, "12345678901234567890");
    /* The last valid second is the expiry itself. */
    cr_assert_eq(leadref_verify(SECRET, ref, NOW + 60, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_OK);
}

Test(leadref, payload_is_as_documented)
{
    char ref[LEADREF_MAX], payload[128], want_sig[64];
    uint8_t mac[SHA256_DIGEST_SIZE];
    const char *dot;
    long n;
    static const char expect[] = "lofty\nabc-1\n1700000060";

    cr_assert_eq(leadref_sign(SECRET, "lofty", "abc-1", NOW + 60, ref, sizeof(ref)), LB_OK);
    dot = strchr(ref, '.');
    cr_assert_not_null(dot);
    n = base64_decode(ref, (size_t)(dot - ref), payload, sizeof(payload));
    cr_assert_eq(n, (long)sizeof(expect) - 1);
    cr_assert_eq(memcmp(payload, expect, sizeof(expect) - 1), 0);
    hmac_sha256(SECRET, strlen(SECRET), expect, sizeof(expect) - 1, mac);
    cr_assert_gt(base64_encode(mac, sizeof(mac), true, want_sig, sizeof(want_sig)), 0);
    cr_assert_str_eq(dot + 1, want_sig);
}

Test(leadref, expired_is_gone)
{
    char ref[LEADREF_MAX], target[32], lead_id[64];

    cr_assert_eq(leadref_sign(SECRET, "leadpro", "42", NOW, ref, sizeof(ref)), LB_OK);
    cr_assert_eq(leadref_verify(SECRET, ref, NOW + 1, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_GONE);
    cr_assert_str_eq(lead_id, "");
}

Test(leadref, any_changed_byte_is_forbidden)
{
    char ref[LEADREF_MAX], bad[LEADREF_MAX], target[32], lead_id[64];
    size_t i, len;
    static const char subst[] = "AQg-_.9z";

    cr_assert_eq(leadref_sign(SECRET, "leadping", "L-77", NOW + 3600, ref, sizeof(ref)), LB_OK);
    len = strlen(ref);
    for (i = 0; i < len; i++) {
        size_t s;

        for (s = 0; s < sizeof(subst) - 1; s++) {
            if (ref[i] == subst[s])
                continue;
            memcpy(bad, ref, len + 1);
            bad[i] = subst[s];
            cr_assert_eq(leadref_verify(SECRET, bad, NOW, target, sizeof(target), lead_id,
                                        sizeof(lead_id)),
                         LB_ERR_FORBIDDEN, "byte %zu changed to %c: %s", i, subst[s], bad);
            cr_assert_str_eq(target, "");
        }
    }
}

Test(leadref, malformed_is_forbidden)
{
    char ref[LEADREF_MAX], bad[LEADREF_MAX + 64], target[32], lead_id[64];
    size_t len, i;
    int n;

    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9", NOW + 60, ref, sizeof(ref)), LB_OK);
    len = strlen(ref);
    /* Every truncation. */
    for (i = 0; i < len; i++) {
        memcpy(bad, ref, i);
        bad[i] = '\0';
        cr_assert_eq(leadref_verify(SECRET, bad, NOW, target, sizeof(target), lead_id,
                                    sizeof(lead_id)),
                     LB_ERR_FORBIDDEN, "truncated to %zu", i);
    }
    /* Extra dots, padding, appended bytes. */
    n = snprintf(bad, sizeof(bad), "%s.", ref);
    cr_assert(n > 0);
    cr_assert_eq(leadref_verify(SECRET, bad, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    n = snprintf(bad, sizeof(bad), ".%s", ref);
    cr_assert(n > 0);
    cr_assert_eq(leadref_verify(SECRET, bad, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    n = snprintf(bad, sizeof(bad), "%s=", ref);
    cr_assert(n > 0);
    cr_assert_eq(leadref_verify(SECRET, bad, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    n = snprintf(bad, sizeof(bad), "%sA", ref);
    cr_assert(n > 0);
    cr_assert_eq(leadref_verify(SECRET, bad, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    cr_assert_eq(leadref_verify(SECRET, "", NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    cr_assert_eq(leadref_verify(SECRET, ".", NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    cr_assert_eq(leadref_verify(SECRET, NULL, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    /* Far too long. */
    memset(bad, 'A', sizeof(bad) - 1);
    bad[sizeof(bad) - 1] = '\0';
    bad[10] = '.';
    cr_assert_eq(leadref_verify(SECRET, bad, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
}

Test(leadref, wrong_secret_is_forbidden)
{
    char ref[LEADREF_MAX], target[32], lead_id[64];

    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9", NOW + 60, ref, sizeof(ref)), LB_OK);
    cr_assert_eq(leadref_verify("another-secret", ref, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    /* An expired ref under the wrong secret is forbidden, not gone: nothing leaks. */
    cr_assert_eq(leadref_verify("another-secret", ref, NOW + 61, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
}

Test(leadref, signed_garbage_payload_is_forbidden)
{
    /* A correctly signed payload that does not have the three fields must still be refused. */
    static const char *const payloads[] = {"leadpro\n9", "leadpro\n9\n", "\n9\n100",
                                           "leadpro\n\n100", "leadpro\n9\n1x0",
                                           "leadpro\n9\n100\n5", "leadpro\n9\n-100",
                                           "a\nb\n99999999999999999999"};
    char ref[LEADREF_MAX], enc[256], target[32], lead_id[64];
    uint8_t mac[SHA256_DIGEST_SIZE];
    size_t i, n;

    for (i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
        n = base64_encode(payloads[i], strlen(payloads[i]), true, enc, sizeof(enc));
        cr_assert_gt(n, 0);
        hmac_sha256(SECRET, strlen(SECRET), payloads[i], strlen(payloads[i]), mac);
        cr_assert_gt(snprintf(ref, sizeof(ref), "%s.", enc), 0);
        cr_assert_gt(base64_encode(mac, sizeof(mac), true, ref + n + 1, sizeof(ref) - n - 1), 0);
        cr_assert_eq(leadref_verify(SECRET, ref, 0, target, sizeof(target), lead_id,
                                    sizeof(lead_id)),
                     LB_ERR_FORBIDDEN, "payload %zu", i);
    }
}

Test(leadref, signing_refuses_bad_fields)
{
    char ref[LEADREF_MAX];

    cr_assert_eq(leadref_sign(SECRET, "lead\npro", "9", NOW, ref, sizeof(ref)), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9\n10", NOW, ref, sizeof(ref)), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign(SECRET, "", "9", NOW, ref, sizeof(ref)), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign(SECRET, "leadpro", "", NOW, ref, sizeof(ref)), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign("", "leadpro", "9", NOW, ref, sizeof(ref)), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign(NULL, "leadpro", "9", NOW, ref, sizeof(ref)), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign(SECRET, NULL, "9", NOW, ref, sizeof(ref)), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9", -1, ref, sizeof(ref)), LB_ERR_INTERNAL);
}

Test(leadref, output_buffers_bounded)
{
    char ref[LEADREF_MAX], small[16], target[4], lead_id[64], big_id[600];
    size_t need;

    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9", NOW, small, sizeof(small)),
                 LB_ERR_INTERNAL);
    cr_assert_str_eq(small, "");
    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9", NOW, ref, sizeof(ref)), LB_OK);
    need = strlen(ref) + 1;
    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9", NOW, ref, need - 1), LB_ERR_INTERNAL);
    cr_assert_eq(leadref_sign(SECRET, "leadpro", "9", NOW, ref, need), LB_OK);
    /* A genuine ref whose target does not fit the caller's buffer is not usable. */
    cr_assert_eq(leadref_verify(SECRET, ref, NOW, target, sizeof(target), lead_id,
                                sizeof(lead_id)),
                 LB_ERR_FORBIDDEN);
    /* An id too long for a reference is refused at signing. */
    memset(big_id, '7', sizeof(big_id) - 1);
    big_id[sizeof(big_id) - 1] = '\0';
    cr_assert_eq(leadref_sign(SECRET, "leadpro", big_id, NOW, ref, sizeof(ref)),
                 LB_ERR_INTERNAL);
}

/*
 * Whatever leadref_sign accepts, leadref_verify takes back (issue 9: a fuzzer found expiries that
 * signed but never verified). The edges: the largest expiry a reference holds, one past it, the
 * type's limits, and every lead id length up to the point where signing must refuse.
 */
Test(leadref, sign_and_verify_agree_on_the_edges)
{
    static const long long expiries[] = {0, 1, NOW, LEADREF_EXPIRES_MAX - 1, LEADREF_EXPIRES_MAX,
                                         LEADREF_EXPIRES_MAX + 1, LLONG_MAX - 1, LLONG_MAX};
    char ref[LEADREF_MAX * 2], target[LEADREF_MAX], lead_id[LEADREF_MAX], id[LEADREF_MAX + 8];
    size_t i, len, signed_ok = 0;

    for (i = 0; i < sizeof(expiries) / sizeof(expiries[0]); i++) {
        enum lb_err rc = leadref_sign(SECRET, "leadpro", "42", expiries[i], ref, sizeof(ref));

        cr_assert_eq(rc, expiries[i] <= LEADREF_EXPIRES_MAX ? LB_OK : LB_ERR_INTERNAL,
                     "expiry %lld", expiries[i]);
        if (rc != LB_OK)
            continue;
        cr_assert_eq(leadref_verify(SECRET, ref, expiries[i], target, sizeof(target), lead_id,
                                    sizeof(lead_id)),
                     LB_OK, "expiry %lld signed but does not verify", expiries[i]);
        cr_assert_str_eq(lead_id, "42");
        if (expiries[i] < LLONG_MAX)
            cr_assert_eq(leadref_verify(SECRET, ref, expiries[i] + 1, target, sizeof(target),
                                        lead_id, sizeof(lead_id)),
                         LB_ERR_GONE, "expiry %lld", expiries[i]);
    }
    /* Lead ids of every length, with a large output buffer: a signed reference always verifies. */
    for (len = 1; len < sizeof(id); len++) {
        memset(id, 'x', len);
        id[len] = '\0';
        if (leadref_sign(SECRET, "lofty", id, LEADREF_EXPIRES_MAX, ref, sizeof(ref)) != LB_OK)
            continue;
        signed_ok++;
        cr_assert_leq(strlen(ref), LEADREF_MAX, "id length %zu", len);
        cr_assert_eq(leadref_verify(SECRET, ref, NOW, target, sizeof(target), lead_id,
                                    sizeof(lead_id)),
                     LB_OK, "id length %zu signed but does not verify", len);
        cr_assert_str_eq(lead_id, id);
    }
    cr_assert_gt(signed_ok, 100);
}
