/*
 * leadref.c: signing and checking the opaque lead references handed to pages (see leadref.h).
 *
 * payload = target "\n" lead_id "\n" expiry (decimal seconds since the epoch);
 * ref = base64url(payload) "." base64url(HMAC-SHA256(secret, payload)), unpadded.
 * Verification decodes into fixed buffers, checks the MAC in constant time before it looks at the
 * payload, and only then reads the fields and the expiry.
 */
#include "leadref.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "crypto.h"

/* Longest decoded payload we ever accept or produce. */
#define LEADREF_PAYLOAD_MAX LEADREF_MAX

/* Whether s (len bytes) uses only the unpadded base64url alphabet. */
static bool leadref_is_b64url(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* Whether s is a usable field: non-empty, without the separator. */
static bool leadref_field_ok(const char *s)
{
    return s != NULL && s[0] != '\0' && strchr(s, '\n') == NULL;
}

enum lb_err leadref_sign(const char *secret, const char *target, const char *lead_id,
                         long long expires, char *out, size_t out_size)
{
    char payload[LEADREF_PAYLOAD_MAX];
    uint8_t mac[SHA256_DIGEST_SIZE];
    size_t n, m;
    int len;

    if (out == NULL || out_size == 0)
        return LB_ERR_INTERNAL;
    out[0] = '\0';
    if (secret == NULL || secret[0] == '\0' || !leadref_field_ok(target) ||
        !leadref_field_ok(lead_id) || expires < 0 || expires > LEADREF_EXPIRES_MAX)
        return LB_ERR_INTERNAL;
    len = snprintf(payload, sizeof(payload), "%s\n%s\n%lld", target, lead_id, expires);
    if (len < 0 || (size_t)len >= sizeof(payload))
        return LB_ERR_INTERNAL;
    hmac_sha256(secret, strlen(secret), payload, (size_t)len, mac);

    n = base64_encode(payload, (size_t)len, true, out, out_size);
    if (n == 0 || n + 1 >= out_size)
        goto too_small;
    out[n++] = '.';
    m = base64_encode(mac, sizeof(mac), true, out + n, out_size - n);
    if (m == 0 || n + m > LEADREF_MAX)
        goto too_small;
    return LB_OK;

too_small:
    out[0] = '\0';
    return LB_ERR_INTERNAL;
}

/* Copies len bytes of s into out as a string; false when it does not fit. */
static bool leadref_copy(const char *s, size_t len, char *out, size_t out_size)
{
    if (out == NULL || len >= out_size)
        return false;
    memcpy(out, s, len);
    out[len] = '\0';
    return true;
}

/*
 * Checks ref and, when genuine, splits the payload. Returns LB_OK, LB_ERR_FORBIDDEN (malformed,
 * tampered, or a field too long for the caller's buffer) or LB_ERR_GONE (genuine but expired). On
 * anything but LB_OK, target and lead_id are left empty.
 */
enum lb_err leadref_verify(const char *secret, const char *ref, long long now, char *target,
                           size_t target_size, char *lead_id, size_t lead_id_size)
{
    char payload[LEADREF_PAYLOAD_MAX];
    uint8_t mac[SHA256_DIGEST_SIZE], want[SHA256_DIGEST_SIZE];
    const char *dot, *nl1, *nl2, *p, *end;
    size_t ref_len, body_len;
    long plen, mlen;
    long long expires = 0;
    enum lb_err rc = LB_ERR_FORBIDDEN;

    if (target != NULL && target_size > 0)
        target[0] = '\0';
    if (lead_id != NULL && lead_id_size > 0)
        lead_id[0] = '\0';
    if (secret == NULL || secret[0] == '\0' || ref == NULL)
        goto out;
    ref_len = strnlen(ref, LEADREF_MAX + 1);
    if (ref_len > LEADREF_MAX)
        goto out;
    dot = memchr(ref, '.', ref_len);
    if (dot == NULL)
        goto out;
    body_len = (size_t)(dot - ref);
    if (body_len == 0 || !leadref_is_b64url(ref, body_len) ||
        !leadref_is_b64url(dot + 1, ref_len - body_len - 1))
        goto out;
    plen = base64_decode(ref, body_len, payload, sizeof(payload));
    mlen = base64_decode(dot + 1, ref_len - body_len - 1, mac, sizeof(mac));
    if (plen <= 0 || mlen != (long)sizeof(mac))
        goto out;
    hmac_sha256(secret, strlen(secret), payload, (size_t)plen, want);
    if (!crypto_equal(mac, want, sizeof(want)))
        goto out;

    end = payload + plen;
    if (memchr(payload, '\0', (size_t)plen) != NULL)
        goto out;
    nl1 = memchr(payload, '\n', (size_t)plen);
    if (nl1 == NULL)
        goto out;
    nl2 = memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1));
    if (nl2 == NULL || nl1 == payload || nl2 == nl1 + 1 || nl2 + 1 == end)
        goto out;
    if (end - (nl2 + 1) > 18) /* LEADREF_EXPIRES_MAX has 18 digits */
        goto out;
    for (p = nl2 + 1; p < end; p++) {
        if (*p < '0' || *p > '9')
            goto out;
        expires = expires * 10 + (*p - '0');
    }
    if (now > expires) {
        rc = LB_ERR_GONE;
        goto out;
    }
    if (!leadref_copy(payload, (size_t)(nl1 - payload), target, target_size) ||
        !leadref_copy(nl1 + 1, (size_t)(nl2 - nl1 - 1), lead_id, lead_id_size))
        goto out;
    rc = LB_OK;

out:
    if (rc != LB_OK) {
        if (target != NULL && target_size > 0)
            target[0] = '\0';
        if (lead_id != NULL && lead_id_size > 0)
            lead_id[0] = '\0';
    }
    return rc;
}
