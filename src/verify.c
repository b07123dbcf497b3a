/*
 * verify.c: inbound verification of form builders' webhooks (see verify.h, leadbridge.conf(5)).
 *
 * Every signing scheme is one row of scheme_table: which header carries the signature, the hash,
 * the encoding, a prefix, a template of what is signed ("{timestamp}:{body}") and where the
 * timestamp is. "hmac" takes all of these from the config; the named schemes fix them. The shared
 * secret schemes (header, bearer, basic) compare SHA-256 digests of the presented and the
 * configured credential with CRYPTO_memcmp, so neither content nor length leaks through timing.
 */
#include "verify.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "conf.h"
#include "crypto.h"

#define VERIFY_PATH_SIZE 512
#define VERIFY_MAX_SECRETS 2
#define VERIFY_KEY_MAX 256
#define VERIFY_MAX_PARTS 16
#define VERIFY_MAX_CANDIDATES 8
/* Longest URL a HubSpot-style signature covers. */
#define VERIFY_URL_MAX 4096
#define VERIFY_DEFAULT_TOLERANCE 300

enum verify_scheme {
    VS_TYPEFORM = 0,
    VS_WEBFLOW,
    VS_TALLY,
    VS_HUBSPOT_V3,
    VS_STANDARD_WEBHOOKS,
    VS_HMAC,
    VS_HEADER,
    VS_BEARER,
    VS_BASIC,
    VS__MAX
};

enum sig_encoding { ENC_HEX = 0, ENC_BASE64, ENC__MAX };
enum ts_unit { TS_SECONDS = 0, TS_MILLISECONDS, TS__MAX };

/* What a scheme signs and where it says so; NULL header: not a signature scheme. */
struct scheme_info {
    const char *name;
    const char *header;
    enum crypto_alg alg;
    enum sig_encoding encoding;
    const char *prefix;
    const char *signed_tpl;
    const char *ts_header;
    enum ts_unit unit;
    bool versioned_list; /* "v1,<sig> v1,<sig>" (Standard Webhooks) */
    bool whsec;          /* secrets may be "whsec_" + base64 */
    bool decode_url;     /* HubSpot decodes some %XX in the signed URL */
};

static const struct scheme_info scheme_table[VS__MAX] = {
    [VS_TYPEFORM] = {"typeform", "Typeform-Signature", CRYPTO_SHA256, ENC_BASE64, "sha256=",
                     "{body}", NULL, TS_SECONDS, false, false, false},
    [VS_WEBFLOW] = {"webflow", "X-Webflow-Signature", CRYPTO_SHA256, ENC_HEX, "",
                    "{timestamp}:{body}", "X-Webflow-Timestamp", TS_MILLISECONDS, false, false,
                    false},
    [VS_TALLY] = {"tally", "Tally-Signature", CRYPTO_SHA256, ENC_BASE64, "", "{body}", NULL,
                  TS_SECONDS, false, false, false},
    [VS_HUBSPOT_V3] = {"hubspot_v3", "X-HubSpot-Signature-v3", CRYPTO_SHA256, ENC_BASE64, "",
                       "{method}{url}{body}{timestamp}", "X-HubSpot-Request-Timestamp",
                       TS_MILLISECONDS, false, false, true},
    [VS_STANDARD_WEBHOOKS] = {"standard_webhooks", "Webhook-Signature", CRYPTO_SHA256, ENC_BASE64,
                              "", "{header:Webhook-Id}.{timestamp}.{body}", "Webhook-Timestamp",
                              TS_SECONDS, true, true, false},
    [VS_HMAC] = {"hmac", NULL, CRYPTO_SHA256, ENC_HEX, "", "{body}", NULL, TS_SECONDS, false,
                 false, false},
    [VS_HEADER] = {"header", NULL, CRYPTO_SHA256, ENC_HEX, "", NULL, NULL, TS_SECONDS, false,
                   false, false},
    [VS_BEARER] = {"bearer", NULL, CRYPTO_SHA256, ENC_HEX, "", NULL, NULL, TS_SECONDS, false,
                   false, false},
    [VS_BASIC] = {"basic", NULL, CRYPTO_SHA256, ENC_HEX, "", NULL, NULL, TS_SECONDS, false, false,
                  false},
};

static const char *const encoding_names[ENC__MAX] = {"hex", "base64"};
static const char *const unit_names[TS__MAX] = {"s", "ms"};

enum part_kind { PART_TEXT = 0, PART_BODY, PART_TIMESTAMP, PART_METHOD, PART_URL, PART_HEADER };

struct part {
    enum part_kind kind;
    char *text; /* PART_TEXT: the literal; PART_HEADER: the header's display name */
    char *var;  /* PART_HEADER: its CGI variable (HTTP_WEBHOOK_ID) */
};

struct secret {
    uint8_t *key;
    size_t len;
};

struct verify {
    enum verify_scheme scheme;
    char *header;     /* display name of the signature / secret header */
    char *header_var; /* its CGI variable */
    enum crypto_alg alg;
    enum sig_encoding encoding;
    char *prefix;
    struct part parts[VERIFY_MAX_PARTS];
    size_t n_parts;
    char *ts_header;
    char *ts_var;
    enum ts_unit unit;
    long long tolerance_ms;
    bool versioned_list;
    bool decode_url;
    char *url;      /* the public URL a signature covers; NULL: from the request */
    char *username; /* basic */
    struct secret secrets[VERIFY_MAX_SECRETS];
    size_t n_secrets;
};

static const char *const verify_keys[] = {
    "scheme", "secret", "tolerance", "header", "algorithm", "encoding", "prefix", "signed",
    "timestamp_header", "timestamp_unit", "url", "username", NULL,
};

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* Parses the "signed" template into v->parts. Returns false with a reason in d. */
static bool compile_template(struct verify *v, const char *tpl, const char *path, struct diag *d)
{
    const char *p = tpl;
    bool body = false;

    while (*p != '\0') {
        struct part *pt;
        const char *end;

        if (v->n_parts == VERIFY_MAX_PARTS) {
            diag_add(d, path, "has more than %d parts", VERIFY_MAX_PARTS);
            return false;
        }
        pt = &v->parts[v->n_parts];
        memset(pt, 0, sizeof(*pt));
        if (*p != '{') {
            end = strchr(p, '{');
            if (end == NULL)
                end = p + strlen(p);
            pt->kind = PART_TEXT;
            pt->text = strndup(p, (size_t)(end - p));
            v->n_parts++;
            p = end;
            continue;
        }
        end = strchr(p, '}');
        if (end == NULL) {
            diag_add(d, path, "has a '{' without '}'");
            return false;
        }
        if ((size_t)(end - p) == 5 && strncmp(p, "{body}", 6) == 0) {
            pt->kind = PART_BODY;
            body = true;
        } else if ((size_t)(end - p) == 10 && strncmp(p, "{timestamp}", 11) == 0) {
            pt->kind = PART_TIMESTAMP;
        } else if ((size_t)(end - p) == 7 && strncmp(p, "{method}", 8) == 0) {
            pt->kind = PART_METHOD;
        } else if ((size_t)(end - p) == 4 && strncmp(p, "{url}", 5) == 0) {
            pt->kind = PART_URL;
        } else if (strncmp(p, "{header:", 8) == 0) {
            pt->kind = PART_HEADER;
            pt->text = strndup(p + 8, (size_t)(end - p - 8));
            pt->var = pt->text != NULL ? request_header_var(pt->text) : NULL;
            if (pt->var == NULL) {
                free(pt->text);
                pt->text = NULL;
                diag_add(d, path, "has a {header:Name} without a valid header name");
                return false;
            }
        } else {
            diag_add(d, path,
                     "has an unknown placeholder (use {body}, {timestamp}, {method}, {url}, "
                     "{header:Name})");
            return false;
        }
        v->n_parts++;
        p = end + 1;
    }
    if (!body) {
        diag_add(d, path, "must contain {body}: a signature that does not cover the body proves "
                          "nothing about it");
        return false;
    }
    return true;
}

/* Adds one configured secret; "whsec_" + base64 is decoded where the scheme uses it. */
static void add_secret(struct verify *v, const char *s, bool whsec, const char *path,
                       struct diag *d)
{
    size_t len = strlen(s);
    struct secret *sec;

    if (len == 0)
        return; /* an unset "${OLD_SECRET:-}" during no rotation */
    if (v->n_secrets == VERIFY_MAX_SECRETS) {
        diag_add(d, path, "takes at most %d secrets (the new one and the old one)",
                 VERIFY_MAX_SECRETS);
        return;
    }
    sec = &v->secrets[v->n_secrets];
    sec->key = malloc(VERIFY_KEY_MAX);
    if (sec->key == NULL)
        return;
    if (whsec && strncmp(s, "whsec_", 6) == 0) {
        long n = base64_decode(s + 6, len - 6, sec->key, VERIFY_KEY_MAX);

        if (n < 16) {
            diag_add(d, path, "a \"whsec_\" secret must be followed by base64 of 16 to %d bytes",
                     VERIFY_KEY_MAX);
            free(sec->key);
            sec->key = NULL;
            return;
        }
        sec->len = (size_t)n;
    } else {
        if (len < 16 || len > VERIFY_KEY_MAX) {
            diag_add(d, path, "must be 16 to %d characters", VERIFY_KEY_MAX);
            free(sec->key);
            sec->key = NULL;
            return;
        }
        memcpy(sec->key, s, len);
        sec->len = len;
    }
    v->n_secrets++;
}

static void compile_secrets(struct verify *v, const json_t *obj, const char *path, bool whsec,
                            struct diag *d)
{
    json_t *s = json_object_get(obj, "secret");
    char p[VERIFY_PATH_SIZE], ip[VERIFY_PATH_SIZE];
    size_t i;
    json_t *item;

    conf_path(p, sizeof(p), path, "secret");
    if (json_is_string(s)) {
        add_secret(v, json_string_value(s), whsec, p, d);
    } else if (json_is_array(s) && json_array_size(s) > 0) {
        json_array_foreach(s, i, item) {
            conf_path_index(ip, sizeof(ip), p, i);
            if (!json_is_string(item))
                diag_add(d, ip, "must be a string");
            else
                add_secret(v, json_string_value(item), whsec, ip, d);
        }
    } else if (s != NULL) {
        diag_add(d, p, "must be a string or an array of one or two strings");
        return;
    }
    if (v->n_secrets == 0)
        diag_add(d, s == NULL ? path : p, "needs a \"secret\" (one, or two while rotating)");
}

/* Looks a name up in a table of n names; returns its index or -1. */
static int name_index(const char *const *names, int n, const char *s)
{
    for (int i = 0; s != NULL && i < n; i++)
        if (strcasecmp(names[i], s) == 0)
            return i;
    return -1;
}

struct verify *verify_compile(const json_t *obj, const char *path, struct diag *d)
{
    struct verify *v;
    const struct scheme_info *info;
    const char *s, *hdr, *tpl, *ts;
    char p[VERIFY_PATH_SIZE];
    int idx;
    size_t before = d->count;
    static const char *const scheme_names[VS__MAX] = {
        "typeform", "webflow", "tally", "hubspot_v3", "standard_webhooks", "hmac", "header",
        "bearer", "basic"};

    if (obj == NULL)
        return NULL;
    if (!json_is_object(obj)) {
        diag_add(d, path, "must be an object such as {\"scheme\": \"typeform\", \"secret\": ...}");
        return NULL;
    }
    conf_check_keys(obj, path, verify_keys, d);
    v = calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    s = conf_string(obj, "scheme", path, NULL, true, d);
    idx = name_index(scheme_names, VS__MAX, s);
    if (idx < 0) {
        if (s != NULL) {
            conf_path(p, sizeof(p), path, "scheme");
            diag_add(d, p, "must be one of typeform, webflow, tally, hubspot_v3, "
                           "standard_webhooks, hmac, header, bearer, basic");
        }
        verify_free(v);
        return NULL;
    }
    v->scheme = (enum verify_scheme)idx;
    info = &scheme_table[idx];
    v->alg = info->alg;
    v->encoding = info->encoding;
    v->unit = info->unit;
    v->versioned_list = info->versioned_list;
    v->decode_url = info->decode_url;

    /* Only the generic schemes take the details; a builder's are fixed by the builder. */
    if (v->scheme != VS_HMAC) {
        static const char *const fixed[] = {"algorithm", "encoding", "prefix", "signed",
                                            "timestamp_header", "timestamp_unit"};

        for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
            if (json_object_get(obj, fixed[i]) != NULL) {
                conf_path(p, sizeof(p), path, fixed[i]);
                diag_add(d, p, "is fixed by scheme \"%s\" (use \"hmac\" to choose it)",
                         info->name);
            }
    }
    if (v->scheme != VS_HMAC && v->scheme != VS_HEADER && json_object_get(obj, "header") != NULL) {
        conf_path(p, sizeof(p), path, "header");
        diag_add(d, p, "is fixed by scheme \"%s\"", info->name);
    }
    if (v->scheme != VS_BASIC && json_object_get(obj, "username") != NULL) {
        conf_path(p, sizeof(p), path, "username");
        diag_add(d, p, "is only for scheme \"basic\"");
    }

    hdr = info->header;
    if (v->scheme == VS_HMAC || v->scheme == VS_HEADER)
        hdr = conf_string(obj, "header", path, NULL, true, d);
    if (v->scheme == VS_BEARER || v->scheme == VS_BASIC)
        hdr = "Authorization";
    if (hdr != NULL) {
        v->header = strdup(hdr);
        v->header_var = request_header_var(hdr);
        if (v->header_var == NULL) {
            conf_path(p, sizeof(p), path, "header");
            diag_add(d, p, "must be a header name (letters, digits, '-')");
        }
    }
    tpl = info->signed_tpl;
    ts = info->ts_header;
    v->prefix = dup_or_null(info->prefix);
    if (v->scheme == VS_HMAC) {
        s = conf_string(obj, "algorithm", path, "sha256", false, d);
        if (s != NULL && crypto_alg_from_name(s, &v->alg) != 0) {
            conf_path(p, sizeof(p), path, "algorithm");
            diag_add(d, p, "must be sha1, sha256 or sha512");
        }
        idx = name_index(encoding_names, ENC__MAX, conf_string(obj, "encoding", path, "hex",
                                                               false, d));
        if (idx < 0) {
            conf_path(p, sizeof(p), path, "encoding");
            diag_add(d, p, "must be hex or base64");
        } else {
            v->encoding = (enum sig_encoding)idx;
        }
        free(v->prefix);
        v->prefix = dup_or_null(conf_string(obj, "prefix", path, "", false, d));
        tpl = conf_string(obj, "signed", path, "{body}", false, d);
        ts = conf_string(obj, "timestamp_header", path, NULL, false, d);
        idx = name_index(unit_names, TS__MAX, conf_string(obj, "timestamp_unit", path, "s",
                                                          false, d));
        if (idx < 0) {
            conf_path(p, sizeof(p), path, "timestamp_unit");
            diag_add(d, p, "must be s or ms");
        } else {
            v->unit = (enum ts_unit)idx;
        }
    }
    if (tpl != NULL) {
        conf_path(p, sizeof(p), path, "signed");
        compile_template(v, tpl, p, d);
    }
    if (ts != NULL) {
        v->ts_header = strdup(ts);
        v->ts_var = request_header_var(ts);
        if (v->ts_var == NULL) {
            conf_path(p, sizeof(p), path, "timestamp_header");
            diag_add(d, p, "must be a header name (letters, digits, '-')");
        }
    }
    for (size_t i = 0; i < v->n_parts; i++)
        if (v->parts[i].kind == PART_TIMESTAMP && v->ts_var == NULL) {
            conf_path(p, sizeof(p), path, "signed");
            diag_add(d, p, "uses {timestamp} but no \"timestamp_header\" is set");
        }
    v->tolerance_ms = 1000 * conf_integer(obj, "tolerance", path, VERIFY_DEFAULT_TOLERANCE, 1,
                                          86400, d);
    if (json_object_get(obj, "tolerance") != NULL && v->ts_var == NULL) {
        conf_path(p, sizeof(p), path, "tolerance");
        diag_add(d, p, "has no effect: scheme \"%s\" sends no timestamp", info->name);
    }
    s = conf_string(obj, "url", path, NULL, false, d);
    if (s != NULL) {
        bool uses_url = false;

        for (size_t i = 0; i < v->n_parts; i++)
            uses_url |= v->parts[i].kind == PART_URL;
        conf_path(p, sizeof(p), path, "url");
        if (!uses_url)
            diag_add(d, p, "has no effect: what scheme \"%s\" signs has no {url}", info->name);
        else if (strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0)
            diag_add(d, p, "must be the absolute URL the builder posts to");
        v->url = strdup(s);
    }
    if (v->scheme == VS_BASIC)
        v->username = dup_or_null(conf_string(obj, "username", path, NULL, true, d));
    if (v->username != NULL && strchr(v->username, ':') != NULL) {
        conf_path(p, sizeof(p), path, "username");
        diag_add(d, p, "must not contain ':'");
    }
    compile_secrets(v, obj, path, info->whsec, d);
    if (d->count > before) {
        verify_free(v);
        return NULL;
    }
    return v;
}

void verify_free(struct verify *v)
{
    size_t i;

    if (v == NULL)
        return;
    for (i = 0; i < v->n_parts; i++) {
        free(v->parts[i].text);
        free(v->parts[i].var);
    }
    for (i = 0; i < v->n_secrets; i++) {
        crypto_wipe(v->secrets[i].key, v->secrets[i].len);
        free(v->secrets[i].key);
    }
    free(v->header);
    free(v->header_var);
    free(v->prefix);
    free(v->ts_header);
    free(v->ts_var);
    free(v->url);
    free(v->username);
    free(v);
}

const char *verify_scheme_name(const struct verify *v)
{
    return v != NULL ? scheme_table[v->scheme].name : "none";
}

/* ---- checking ---- */

static enum lb_err fail(char *why, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum lb_err fail(char *why, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (why != NULL && size > 0)
        vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return LB_ERR_UNAUTHORIZED;
}

/* A header's value, or NULL when absent or empty. Borrowed from env. */
static const char *header_value(env_get_fn env, void *ctx, const char *var)
{
    const char *s = var != NULL ? env(ctx, var) : NULL;

    if (s == NULL || *s == '\0' || strnlen(s, REQUEST_MAX_HEADER + 1) > REQUEST_MAX_HEADER)
        return NULL;
    return s;
}

/* Constant-time equality of two byte strings of any lengths (compares their SHA-256). */
static bool same_secret(const void *a, size_t alen, const void *b, size_t blen)
{
    uint8_t da[SHA256_DIGEST_SIZE], db[SHA256_DIGEST_SIZE];
    bool same;

    sha256(a, alen, da);
    sha256(b, blen, db);
    same = crypto_equal(da, db, sizeof(da));
    return same && alen == blen;
}

/*
 * The URL HubSpot signs: %XX of : / ? @ ! $ ' ( ) * , ; decoded, everything else kept as sent.
 * Other schemes sign the URL as it is.
 */
static void url_for_signing(const struct verify *v, const struct request *r, env_get_fn env,
                            void *ctx, struct buf *out)
{
    const char *uri = env(ctx, "REQUEST_URI");
    struct buf raw;
    size_t i;

    buf_init(&raw, VERIFY_URL_MAX);
    if (v->url != NULL) {
        buf_puts(&raw, v->url);
    } else {
        buf_printf(&raw, "%s://%s", r->https ? "https" : "http",
                   r->http_host != NULL ? r->http_host : "");
        buf_puts(&raw, uri != NULL ? uri : r->path);
    }
    for (i = 0; raw.data != NULL && i < raw.len; i++) {
        char c = raw.data[i];

        uint8_t dec;

        if (v->decode_url && c == '%' && i + 2 < raw.len &&
            hex_decode(raw.data + i + 1, 2, &dec, 1) == 1) {
            if (dec != 0 && strchr(":/?@!$'()*,;", (char)dec) != NULL) {
                buf_putc(out, (char)dec);
                i += 2;
                continue;
            }
        }
        buf_putc(out, c);
    }
    buf_free(&raw);
}

/* Parses a whole-number timestamp; false when it is not one. */
static bool parse_timestamp(const char *s, long long *out)
{
    long long n = 0;
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if (s[i] < '0' || s[i] > '9' || i >= 15) /* t * 1000 fits a long long */
            return false;
        n = n * 10 + (s[i] - '0');
    }
    if (i == 0)
        return false;
    *out = n;
    return true;
}

/* Decodes one presented signature; returns its length or -1. */
static long decode_signature(const struct verify *v, const char *s, size_t len, uint8_t *out)
{
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    if (v->encoding == ENC_HEX)
        return hex_decode(s, len, out, CRYPTO_MAX_DIGEST);
    return base64_decode(s, len, out, CRYPTO_MAX_DIGEST);
}

/* Splits the signature header into decoded candidates. Returns how many. */
static size_t signature_candidates(const struct verify *v, const char *hdr,
                                   uint8_t cand[][CRYPTO_MAX_DIGEST], long *cand_len)
{
    size_t n = 0, plen = v->prefix != NULL ? strlen(v->prefix) : 0;

    if (!v->versioned_list) {
        if (plen > 0 && strncasecmp(hdr, v->prefix, plen) != 0)
            return 0;
        cand_len[0] = decode_signature(v, hdr + plen, strlen(hdr + plen), cand[0]);
        return cand_len[0] > 0 ? 1 : 0;
    }
    /* "v1,<base64> v1,<base64>": any listed v1 signature may match (the sender rotates). */
    while (*hdr != '\0' && n < VERIFY_MAX_CANDIDATES) {
        const char *end;

        while (*hdr == ' ')
            hdr++;
        end = strchr(hdr, ' ');
        if (end == NULL)
            end = hdr + strlen(hdr);
        if (end - hdr > 3 && strncmp(hdr, "v1,", 3) == 0) {
            cand_len[n] = decode_signature(v, hdr + 3, (size_t)(end - hdr - 3), cand[n]);
            if (cand_len[n] > 0)
                n++;
        }
        hdr = end;
    }
    return n;
}

static enum lb_err verify_signature(const struct verify *v, const struct request *r,
                                    env_get_fn env, void *ctx, const char *body, size_t len,
                                    long long now_ms, char *why, size_t why_size)
{
    const char *sig = header_value(env, ctx, v->header_var), *ts = NULL;
    struct crypto_part parts[VERIFY_MAX_PARTS];
    uint8_t cand[VERIFY_MAX_CANDIDATES][CRYPTO_MAX_DIGEST], mac[CRYPTO_MAX_DIGEST];
    long cand_len[VERIFY_MAX_CANDIDATES];
    size_t n_cand, i, k, want = crypto_digest_size(v->alg);
    struct buf url;
    enum lb_err e;
    bool match = false;

    if (sig == NULL)
        return fail(why, why_size, "no %s header", v->header);
    if (v->ts_var != NULL) {
        long long t, t_ms, age;

        ts = header_value(env, ctx, v->ts_var);
        if (ts == NULL)
            return fail(why, why_size, "no %s header", v->ts_header);
        if (!parse_timestamp(ts, &t))
            return fail(why, why_size, "%s is not a whole number", v->ts_header);
        t_ms = v->unit == TS_MILLISECONDS ? t : t * 1000;
        age = now_ms - t_ms;
        if (age > v->tolerance_ms || age < -v->tolerance_ms)
            return fail(why, why_size, "timestamp outside the %lld s window",
                        v->tolerance_ms / 1000);
    }
    n_cand = signature_candidates(v, sig, cand, cand_len);
    if (n_cand == 0)
        return fail(why, why_size, "%s is malformed", v->header);

    buf_init(&url, VERIFY_URL_MAX);
    for (i = 0; i < v->n_parts; i++) {
        const struct part *pt = &v->parts[i];
        const char *s = NULL;

        switch (pt->kind) {
        case PART_TEXT: s = pt->text; break;
        case PART_TIMESTAMP: s = ts; break;
        case PART_METHOD: s = r->method_name; break;
        case PART_HEADER:
            s = header_value(env, ctx, pt->var);
            if (s == NULL) {
                e = fail(why, why_size, "no %s header", pt->text);
                goto out;
            }
            break;
        case PART_URL:
            if (url.len == 0)
                url_for_signing(v, r, env, ctx, &url);
            break;
        case PART_BODY: break;
        }
        if (pt->kind == PART_BODY) {
            parts[i].data = body != NULL ? body : "";
            parts[i].len = len;
        } else if (pt->kind == PART_URL) {
            parts[i].data = url.data != NULL ? url.data : "";
            parts[i].len = url.len;
        } else {
            parts[i].data = s != NULL ? s : "";
            parts[i].len = s != NULL ? strlen(s) : 0;
        }
    }
    /* Every secret against every candidate: no early exit that would tell which one. */
    for (k = 0; k < v->n_secrets; k++) {
        if (crypto_hmac_parts(v->alg, v->secrets[k].key, v->secrets[k].len, parts, v->n_parts,
                              mac) != want) {
            e = fail(why, why_size, "the signature could not be computed");
            goto out;
        }
        for (i = 0; i < n_cand; i++)
            match |= (size_t)cand_len[i] == want && crypto_equal(mac, cand[i], want);
    }
    crypto_wipe(mac, sizeof(mac));
    e = match ? LB_OK : fail(why, why_size, "%s does not match", v->header);
out:
    buf_free(&url);
    return e;
}

static enum lb_err verify_credentials(const struct verify *v, const struct request *r,
                                      env_get_fn env, void *ctx, char *why, size_t why_size)
{
    const char *got = v->scheme == VS_HEADER ? header_value(env, ctx, v->header_var)
                                             : r->authorization;
    char decoded[1024], expect[VERIFY_KEY_MAX + 256];
    size_t glen;
    bool match = false;

    if (got == NULL || *got == '\0')
        return fail(why, why_size, "no %s header", v->header);
    if (v->scheme == VS_BEARER || v->scheme == VS_BASIC) {
        const char *word = v->scheme == VS_BEARER ? "Bearer " : "Basic ";
        size_t wl = strlen(word);

        if (strncasecmp(got, word, wl) != 0)
            return fail(why, why_size, "Authorization is not %.*s credentials", (int)wl - 1, word);
        got += wl;
        while (*got == ' ')
            got++;
    }
    glen = strlen(got);
    if (v->scheme == VS_BASIC) {
        long n = base64_decode(got, glen, decoded, sizeof(decoded));

        if (n < 0)
            return fail(why, why_size, "Authorization Basic credentials are malformed");
        got = decoded;
        glen = (size_t)n;
    }
    for (size_t k = 0; k < v->n_secrets; k++) {
        const void *want = v->secrets[k].key;
        size_t wlen = v->secrets[k].len;

        if (v->scheme == VS_BASIC) {
            int w = snprintf(expect, sizeof(expect), "%s:%.*s", v->username, (int)wlen,
                             (const char *)v->secrets[k].key);

            if (w < 0 || (size_t)w >= sizeof(expect))
                continue;
            want = expect;
            wlen = (size_t)w;
        }
        match |= same_secret(got, glen, want, wlen);
    }
    crypto_wipe(decoded, sizeof(decoded));
    crypto_wipe(expect, sizeof(expect));
    return match ? LB_OK
                 : fail(why, why_size, "%s credentials do not match",
                        v->scheme == VS_HEADER ? v->header : "Authorization");
}

enum lb_err verify_request(const struct verify *v, const struct request *r, env_get_fn env,
                           void *env_ctx, const char *body, size_t len, long long now_ms,
                           char *why, size_t why_size)
{
    if (why != NULL && why_size > 0)
        why[0] = '\0';
    if (v == NULL)
        return LB_OK;
    if (v->scheme == VS_HEADER || v->scheme == VS_BEARER || v->scheme == VS_BASIC)
        return verify_credentials(v, r, env, env_ctx, why, why_size);
    return verify_signature(v, r, env, env_ctx, body, len, now_ms, why, why_size);
}
