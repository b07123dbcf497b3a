/*
 * parse.c: request-body parsers (see parse.h).
 *
 * Bytes in, one JSON object of fields out. Nothing here does I/O. Every loop is bounded by the
 * input length and every nesting by limits->max_depth; every string that reaches the object is
 * valid UTF-8 without NUL.
 */
#include "parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "buf.h"

const struct parse_limits parse_default_limits = {
    .max_fields = 4096,
    .max_depth = 16,
    .max_key = 256,
    .max_value = 16384,
};

/* Value of one hex digit, or -1. */
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

/*
 * Checks s[0..len) against the well-formed UTF-8 table of Unicode (Table 3-7): no overlong forms,
 * no surrogates (U+D800..U+DFFF), nothing above U+10FFFF, and no NUL byte.
 */
bool parse_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        unsigned char c = p[i];
        unsigned char lo = 0x80, hi = 0xBF;
        size_t n, k;

        if (c == 0x00)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (len - i - 1 < n)
            return false;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (k = 2; k <= n; k++) {
            if (p[i + k] < 0x80 || p[i + k] > 0xBF)
                return false;
        }
        i += n + 1;
    }
    return true;
}


/*
 * Appends the percent-decoding of s[0..len) to out ('+' read as a space when plus_is_space).
 * Returns LB_ERR_BAD_REQUEST on a bad or truncated escape. The bytes are not checked here.
 */
static enum lb_err percent_unescape(const char *s, size_t len, bool plus_is_space, struct buf *out)
{
    enum lb_err e = LB_OK;
    size_t i;

    for (i = 0; i < len && e == LB_OK; i++) {
        char c = s[i];

        if (c == '%') {
            int h, l;

            if (len - i < 3)
                return LB_ERR_BAD_REQUEST;
            h = hex_value((unsigned char)s[i + 1]);
            l = hex_value((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return LB_ERR_BAD_REQUEST;
            c = (char)(h * 16 + l);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        e = buf_putc(out, c);
    }
    return e;
}

/*
 * Decodes s[0..len) into a new NUL-terminated string (*out, caller frees). The result is never
 * longer than the input, so the buffer is capped at len. *out is NULL on failure.
 */
enum lb_err parse_percent_decode(const char *s, size_t len, bool plus_is_space, char **out)
{
    struct buf b;
    enum lb_err e;

    *out = NULL;
    buf_init(&b, len);
    e = percent_unescape(s, len, plus_is_space, &b);
    if (e != LB_OK)
        goto out;
    if (!parse_utf8_valid(b.data, b.len)) {
        e = LB_ERR_BAD_REQUEST;
        goto out;
    }
    *out = buf_steal(&b);
    if (*out == NULL)
        e = LB_ERR_NOMEM;
out:
    buf_free(&b);
    return e;
}

/* ---- Field text checks and messages */

enum text_problem { TEXT_OK, TEXT_NUL, TEXT_CONTROL, TEXT_UTF8 };

/*
 * Classifies s[0..len): a NUL byte, a control character (C0 or DEL; TAB, CR and LF are allowed when
 * multiline), or invalid UTF-8, in that order of precedence.
 */
static enum text_problem text_check(const char *s, size_t len, bool multiline)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == 0)
            return TEXT_NUL;
        if (c < 0x20 || c == 0x7f) {
            if (!(multiline && (c == '\t' || c == '\r' || c == '\n')))
                return TEXT_CONTROL;
        }
    }
    return parse_utf8_valid(s, len) ? TEXT_OK : TEXT_UTF8;
}

/*
 * Writes a short, printable form of a field name (already checked: valid UTF-8, no controls) into
 * out for an error message: at most 48 bytes, cut on a character boundary, "..." when cut.
 */
static const char *name_shown(const char *name, size_t len, char *out, size_t size)
{
    size_t n = len < 48 ? len : 48;

    while (n > 0 && n < len && ((unsigned char)name[n] & 0xC0) == 0x80)
        n--;
    if (snprintf(out, size, "%.*s%s", (int)n, name, n < len ? "..." : "") < 0)
        out[0] = '\0';
    return out;
}

/*
 * Writes a printable form of untrusted text (a media type, a charset, a jansson message) into out:
 * at most max bytes, anything outside printable ASCII (and the quote) replaced by '?', "..." when
 * cut (and when out is too small).
 */
static const char *text_shown(const char *s, size_t len, size_t max, char *out, size_t size)
{
    size_t n = len < max ? len : max;
    size_t i, o = 0;

    for (i = 0; i < n && o + 4 < size; i++) {
        unsigned char c = (unsigned char)s[i];

        out[o++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (o < len && o + 4 <= size) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* ---- Adding a field by its bracketed name (shared by urlencoded and multipart) */

/* Where fields go, and how many leaves were added so far. */
struct field_sink {
    json_t *obj;
    const struct parse_limits *limits;
    size_t leaves;
    struct lb_error *err;
};

/* Checks a decoded field name against max_key and for NUL, control characters and bad UTF-8. */
static enum lb_err name_check(struct field_sink *sink, const char *name, size_t len)
{
    if (len > sink->limits->max_key)
        return lb_fail(sink->err, LB_ERR_TOO_LARGE, "a field name is longer than %zu bytes",
                       sink->limits->max_key);
    switch (text_check(name, len, false)) {
    case TEXT_OK:
        return LB_OK;
    case TEXT_NUL:
        return lb_fail(sink->err, LB_ERR_BAD_REQUEST, "NUL byte in a field name");
    case TEXT_CONTROL:
        return lb_fail(sink->err, LB_ERR_BAD_REQUEST, "control character in a field name");
    case TEXT_UTF8:
        break;
    }
    return lb_fail(sink->err, LB_ERR_BAD_REQUEST, "invalid UTF-8 in a field name");
}

/* Checks a value against max_value and for NUL, controls other than TAB CR LF, and bad UTF-8. */
static enum lb_err value_check(struct field_sink *sink, const char *name, size_t name_len,
                               const char *value, size_t len)
{
    char shown[64];

    if (len > sink->limits->max_value)
        return lb_fail(sink->err, LB_ERR_TOO_LARGE,
                       "value of field \"%s\" is longer than %zu bytes",
                       name_shown(name, name_len, shown, sizeof(shown)), sink->limits->max_value);
    switch (text_check(value, len, true)) {
    case TEXT_OK:
        return LB_OK;
    case TEXT_NUL:
        return lb_fail(sink->err, LB_ERR_BAD_REQUEST, "NUL byte in field \"%s\"",
                       name_shown(name, name_len, shown, sizeof(shown)));
    case TEXT_CONTROL:
        return lb_fail(sink->err, LB_ERR_BAD_REQUEST, "control character in field \"%s\"",
                       name_shown(name, name_len, shown, sizeof(shown)));
    case TEXT_UTF8:
        break;
    }
    return lb_fail(sink->err, LB_ERR_BAD_REQUEST, "invalid UTF-8 in field \"%s\"",
                   name_shown(name, name_len, shown, sizeof(shown)));
}

/*
 * True when name has the shape base[seg]...[seg]: a non-empty base without brackets, then one or
 * more segments without '[' or ']', where an empty segment ("[]", append) may only come last.
 * *segs gets the number of segments. Any other name (a[b, a], [a], a[b]c, a[][b]) is not
 * bracketed and is kept literally as one key.
 */
static bool brackets_parse(const char *name, size_t len, size_t *segs)
{
    const char *open = memchr(name, '[', len);
    size_t i, n = 0;

    *segs = 0;
    if (open == NULL || open == name || memchr(name, ']', (size_t)(open - name)) != NULL)
        return false;
    i = (size_t)(open - name);
    while (i < len) {
        size_t j = i + 1;

        if (name[i] != '[')
            return false;
        while (j < len && name[j] != ']' && name[j] != '[')
            j++;
        if (j == len || name[j] != ']')
            return false;
        if (j == i + 1 && j + 1 != len)
            return false;
        n++;
        i = j + 1;
    }
    *segs = n;
    return true;
}

/* Message for a key used both as a plain value and as a group (or as a list and a group). */
static enum lb_err conflict(struct field_sink *sink, const char *name, size_t len)
{
    char shown[64];

    return lb_fail(sink->err, LB_ERR_BAD_REQUEST,
                   "field \"%s\" is used both as a value and as a group",
                   name_shown(name, len, shown, sizeof(shown)));
}

/*
 * Stores value (a new reference, always consumed) under parent[key]: set when absent, turned into
 * an array on a repeat, appended when already an array; an object there is a conflict.
 */
static enum lb_err leaf_store(struct field_sink *sink, json_t *parent, const char *key,
                              size_t key_len, json_t *value, const char *name, size_t name_len)
{
    json_t *old = json_object_getn(parent, key, key_len);
    json_t *arr;

    if (old == NULL) {
        if (json_object_setn_new(parent, key, key_len, value) != 0)
            return LB_ERR_NOMEM;
        return LB_OK;
    }
    if (json_is_array(old)) {
        if (json_array_append_new(old, value) != 0)
            return LB_ERR_NOMEM;
        return LB_OK;
    }
    if (json_is_object(old)) {
        json_decref(value);
        return conflict(sink, name, name_len);
    }
    arr = json_array();
    if (arr == NULL || json_array_append(arr, old) != 0 || json_array_append_new(arr, value) != 0 ||
        json_object_setn_new(parent, key, key_len, arr) != 0) {
        json_decref(arr);
        json_decref(value);
        return LB_ERR_NOMEM;
    }
    return LB_OK;
}

/*
 * Adds one decoded field to sink->obj following its bracketed name (see brackets_parse): a[b][c]
 * nests objects, a[] appends to an array, a repeated key becomes an array. name and value are
 * borrowed and checked here (limits, UTF-8, controls). The object depth (top level counts 1) may
 * not pass max_depth. Returns LB_ERR_TOO_LARGE past a limit, LB_ERR_BAD_REQUEST on bad text or a
 * value/group conflict.
 */
static enum lb_err field_add(struct field_sink *sink, const char *name, size_t name_len,
                             const char *value, size_t value_len)
{
    json_t *parent = sink->obj;
    json_t *str = NULL;
    const char *key = name;
    size_t key_len = name_len;
    size_t segs, i;
    enum lb_err e;

    e = name_check(sink, name, name_len);
    if (e != LB_OK)
        return e;
    e = value_check(sink, name, name_len, value, value_len);
    if (e != LB_OK)
        return e;
    if (sink->leaves >= sink->limits->max_fields)
        return lb_fail(sink->err, LB_ERR_TOO_MANY_FIELDS, "more than %zu fields",
                       sink->limits->max_fields);
    if (brackets_parse(name, name_len, &segs)) {
        if (segs + 1 > sink->limits->max_depth)
            return lb_fail(sink->err, LB_ERR_TOO_DEEP, "field names nested deeper than %zu levels",
                           sink->limits->max_depth);
        key_len = (size_t)((const char *)memchr(name, '[', name_len) - name);
    }
    str = json_stringn(value, value_len);
    if (str == NULL)
        return LB_ERR_NOMEM;
    i = key_len;
    while (i < name_len) {
        const char *seg = name + i + 1;
        size_t seg_len = (size_t)((const char *)memchr(seg, ']', name_len - i - 1) - seg);
        json_t *child = json_object_getn(parent, key, key_len);

        if (seg_len == 0) {
            if (child == NULL) {
                child = json_array();
                if (child == NULL || json_object_setn_new(parent, key, key_len, child) != 0) {
                    e = LB_ERR_NOMEM;
                    goto out;
                }
            } else if (!json_is_array(child)) {
                e = conflict(sink, name, (size_t)(key + key_len - name));
                goto out;
            }
            e = json_array_append_new(child, str) == 0 ? LB_OK : LB_ERR_NOMEM;
            str = NULL;
            goto done;
        }
        if (child == NULL) {
            child = json_object();
            if (child == NULL || json_object_setn_new(parent, key, key_len, child) != 0) {
                e = LB_ERR_NOMEM;
                goto out;
            }
        } else if (!json_is_object(child)) {
            e = conflict(sink, name, (size_t)(key + key_len - name));
            goto out;
        }
        parent = child;
        key = seg;
        key_len = seg_len;
        i += seg_len + 2;
    }
    e = leaf_store(sink, parent, key, key_len, str, name, (size_t)(key + key_len - name));
    str = NULL;
done:
    if (e == LB_OK)
        sink->leaves++;
out:
    json_decref(str);
    return e;
}

/* ---- application/x-www-form-urlencoded */

/*
 * Decodes one key=value pair (raw, still percent-encoded; value NULL when there was no '=') and
 * adds it through field_add. The raw lengths are checked first so that a huge pair costs nothing.
 */
static enum lb_err pair_add(struct field_sink *sink, const char *raw_key, size_t raw_key_len,
                            const char *raw_value, size_t raw_value_len)
{
    const struct parse_limits *lim = sink->limits;
    struct buf key, value;
    char shown[64];
    enum lb_err e;

    buf_init(&key, raw_key_len);
    buf_init(&value, raw_value_len);
    if (raw_key_len / 3 > lim->max_key) {
        e = lb_fail(sink->err, LB_ERR_TOO_LARGE, "a field name is longer than %zu bytes",
                    lim->max_key);
        goto out;
    }
    e = percent_unescape(raw_key, raw_key_len, true, &key);
    if (e == LB_ERR_BAD_REQUEST)
        e = lb_fail(sink->err, e, "bad percent-escape in a field name");
    if (e != LB_OK)
        goto out;
    e = name_check(sink, key.data, key.len);
    if (e != LB_OK)
        goto out;
    if (raw_value_len / 3 > lim->max_value) {
        e = lb_fail(sink->err, LB_ERR_TOO_LARGE, "value of field \"%s\" is longer than %zu bytes",
                    name_shown(key.data, key.len, shown, sizeof(shown)), lim->max_value);
        goto out;
    }
    if (raw_value != NULL) {
        e = percent_unescape(raw_value, raw_value_len, true, &value);
        if (e == LB_ERR_BAD_REQUEST)
            e = lb_fail(sink->err, e, "bad percent-escape in field \"%s\"",
                        name_shown(key.data, key.len, shown, sizeof(shown)));
        if (e != LB_OK)
            goto out;
    }
    e = field_add(sink, key.data, key.len, value.data != NULL ? value.data : "", value.len);
out:
    buf_free(&key);
    buf_free(&value);
    return e;
}

/*
 * Splits s[0..len) on '&' (only '&'), skips pairs with an empty name ("=x", "&&"), and adds each
 * pair to obj. limits may be NULL for the defaults. On failure obj may hold the fields added
 * before the bad one.
 */
enum lb_err parse_urlencoded(const char *s, size_t len, const struct parse_limits *limits,
                             json_t *obj, struct lb_error *err)
{
    struct field_sink sink = {obj, limits != NULL ? limits : &parse_default_limits, 0, err};
    size_t i = 0;

    if (s == NULL && len > 0)
        return lb_fail(err, LB_ERR_INTERNAL, "no body");
    while (i < len) {
        const char *pair = s + i;
        const char *amp = memchr(pair, '&', len - i);
        size_t pair_len = amp != NULL ? (size_t)(amp - pair) : len - i;
        const char *eq = memchr(pair, '=', pair_len);
        size_t key_len = eq != NULL ? (size_t)(eq - pair) : pair_len;

        if (key_len > 0) {
            enum lb_err e = pair_add(&sink, pair, key_len, eq != NULL ? eq + 1 : NULL,
                                     eq != NULL ? pair_len - key_len - 1 : 0);

            if (e != LB_OK)
                return e;
        }
        i += pair_len + 1;
    }
    return LB_OK;
}

/* ---- Header parameters (Content-Type, Content-Disposition) */

/* The most bytes one parameter value may hold; longer values are refused. */
#define PARAM_VALUE_MAX 4096

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* True when s[0..len) equals the lower-case literal lit, ignoring ASCII case. */
static bool span_ieq(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

/* Number of tchars at the start of s[0..len). */
static size_t token_len(const char *s, size_t len)
{
    size_t n = 0;

    while (n < len && is_tchar((unsigned char)s[n]))
        n++;
    return n;
}

/* Skips spaces and tabs from *p up to end. */
static void skip_ows(const char **p, const char *end)
{
    while (*p < end && (**p == ' ' || **p == '\t'))
        (*p)++;
}

/* A cursor over the "; name=value" list that follows a media type or disposition type. */
struct param_iter {
    const char *p;
    const char *end;
};

/*
 * Reads the next parameter: *name and *name_len point into the input (NULL at the end of the list),
 * value receives the value with quoted-string escapes undone. Empty parameters (";;") are skipped.
 * Returns LB_ERR_BAD_REQUEST on a syntax error, LB_ERR_TOO_LARGE past PARAM_VALUE_MAX.
 */
static enum lb_err param_next(struct param_iter *it, const char **name, size_t *name_len,
                              struct buf *value)
{
    enum lb_err e = LB_OK;

    *name = NULL;
    *name_len = 0;
    buf_reset(value);
    for (;;) {
        skip_ows(&it->p, it->end);
        if (it->p == it->end)
            return LB_OK;
        if (*it->p != ';')
            return LB_ERR_BAD_REQUEST;
        it->p++;
        skip_ows(&it->p, it->end);
        if (it->p < it->end && *it->p != ';')
            break;
    }
    if (it->p == it->end)
        return LB_OK;
    *name_len = token_len(it->p, (size_t)(it->end - it->p));
    *name = it->p;
    it->p += *name_len;
    if (*name_len == 0 || it->p == it->end || *it->p != '=')
        return LB_ERR_BAD_REQUEST;
    it->p++;
    if (it->p < it->end && *it->p == '"') {
        it->p++;
        while (e == LB_OK) {
            unsigned char c;

            if (it->p == it->end)
                return LB_ERR_BAD_REQUEST;
            c = (unsigned char)*it->p++;
            if (c == '"')
                break;
            if (c == '\\') {
                if (it->p == it->end)
                    return LB_ERR_BAD_REQUEST;
                c = (unsigned char)*it->p++;
            }
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return LB_ERR_BAD_REQUEST;
            e = buf_putc(value, (char)c);
        }
    } else {
        size_t n = token_len(it->p, (size_t)(it->end - it->p));

        if (n == 0)
            return LB_ERR_BAD_REQUEST;
        e = buf_append(value, it->p, n);
        it->p += n;
    }
    if (e == LB_OK && value->data == NULL)
        e = buf_append(value, "", 0);
    return e;
}

/* ---- multipart/form-data */

/* The most bytes of headers one part may carry. */
#define PART_HEADERS_MAX 8192

/* RFC 2046 bchars: the boundary is 1..70 of these and does not end in a space. */
static bool boundary_valid(const char *b, size_t len)
{
    size_t i;

    if (len < 1 || len > 70 || b[len - 1] == ' ')
        return false;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)b[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c != '\0' && strchr("'()+_,-./:=? ", c) != NULL)))
            return false;
    }
    return true;
}

/* What the headers of one part said. */
struct part_info {
    bool has_disposition;
    bool has_name;
    bool skip;       /* a file, or content that is not text */
    struct buf name; /* the name parameter of Content-Disposition */
    struct buf tmp;  /* scratch for other parameter values */
};

/* Reads the Content-Disposition value v[0..len) into pi: form-data, name, and filename (skip). */
static enum lb_err disposition_parse(const char *v, size_t len, struct part_info *pi,
                                     struct lb_error *err)
{
    struct param_iter it;
    size_t type_len = token_len(v, len);
    enum lb_err e;

    if (pi->has_disposition)
        return lb_fail(err, LB_ERR_BAD_REQUEST, "multipart part with two Content-Disposition");
    pi->has_disposition = true;
    if (!span_ieq(v, type_len, "form-data"))
        return lb_fail(err, LB_ERR_BAD_REQUEST, "multipart part is not form-data");
    it.p = v + type_len;
    it.end = v + len;
    for (;;) {
        const char *name;
        size_t name_len;
        bool is_name;

        e = param_next(&it, &name, &name_len, &pi->tmp);
        if (e != LB_OK)
            return lb_fail(err, LB_ERR_BAD_REQUEST, "malformed multipart Content-Disposition");
        if (name == NULL)
            return LB_OK;
        is_name = span_ieq(name, name_len, "name");
        if (is_name && pi->has_name)
            return lb_fail(err, LB_ERR_BAD_REQUEST, "multipart part with two names");
        if (is_name) {
            pi->has_name = true;
            buf_reset(&pi->name);
            e = buf_append(&pi->name, pi->tmp.data, pi->tmp.len);
            if (e != LB_OK)
                return e;
        } else if (span_ieq(name, name_len, "filename") || span_ieq(name, name_len, "filename*")) {
            pi->skip = true;
        }
    }
}

/*
 * Reads a part's header lines h[0..len) (each ending in CRLF) into pi. Only Content-Disposition
 * and Content-Type matter; a Content-Type other than text (any subtype) marks the part skipped.
 */
static enum lb_err part_headers_parse(const char *h, size_t len, struct part_info *pi,
                                      struct lb_error *err)
{
    const char *p = h, *end = h + len;

    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        const char *v, *vend, *q;
        size_t name_len;
        enum lb_err e = LB_OK;

        if (eol == NULL)
            return lb_fail(err, LB_ERR_BAD_REQUEST, "malformed multipart part header");
        for (q = p; q < eol; q++) {
            unsigned char c = (unsigned char)*q;

            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return lb_fail(err, LB_ERR_BAD_REQUEST, "malformed multipart part header");
        }
        name_len = token_len(p, (size_t)(eol - p));
        if (name_len == 0 || p + name_len == eol || p[name_len] != ':')
            return lb_fail(err, LB_ERR_BAD_REQUEST, "malformed multipart part header");
        v = p + name_len + 1;
        vend = eol;
        skip_ows(&v, vend);
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        if (span_ieq(p, name_len, "content-disposition")) {
            e = disposition_parse(v, (size_t)(vend - v), pi, err);
        } else if (span_ieq(p, name_len, "content-type")) {
            size_t type_len = token_len(v, (size_t)(vend - v));

            if (!span_ieq(v, type_len, "text"))
                pi->skip = true;
        }
        if (e != LB_OK)
            return e;
        p = eol + 2;
    }
    return LB_OK;
}

/*
 * Parses a multipart/form-data body (RFC 7578, strict CRLF) with the given boundary, adding each
 * text part through field_add. File parts and non-text parts are skipped unread. The preamble
 * and epilogue are ignored. Every search is memmem over bytes not searched before, so the work is
 * linear in len whatever the input.
 */
static enum lb_err multipart_parse(const char *body, size_t len, const char *boundary,
                                   size_t boundary_len, struct field_sink *sink)
{
    char delim[4 + 70];
    size_t delim_len = 4 + boundary_len;
    struct part_info pi;
    const char *q;
    size_t p;
    enum lb_err e = LB_OK;

    buf_init(&pi.name, PARAM_VALUE_MAX);
    buf_init(&pi.tmp, PARAM_VALUE_MAX);
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, boundary, boundary_len);
    if (len >= delim_len - 2 && memcmp(body, delim + 2, delim_len - 2) == 0) {
        p = delim_len - 2;
    } else {
        q = len > 0 ? memmem(body, len, delim, delim_len) : NULL;
        if (q == NULL)
            goto truncated;
        p = (size_t)(q - body) + delim_len;
    }
    for (;;) {
        size_t content, header_end;

        if (len - p >= 2 && body[p] == '-' && body[p + 1] == '-')
            break;
        while (p < len && (body[p] == ' ' || body[p] == '\t'))
            p++;
        if (len - p < 2)
            goto truncated;
        if (body[p] != '\r' || body[p + 1] != '\n') {
            e = lb_fail(sink->err, LB_ERR_BAD_REQUEST, "malformed multipart boundary line");
            goto out;
        }
        p += 2;
        if (len - p >= 2 && body[p] == '\r' && body[p + 1] == '\n') {
            header_end = p;
            content = p + 2;
        } else {
            size_t window = len - p < PART_HEADERS_MAX ? len - p : PART_HEADERS_MAX;

            q = memmem(body + p, window, "\r\n\r\n", 4);
            if (q == NULL && window == PART_HEADERS_MAX) {
                e = lb_fail(sink->err, LB_ERR_TOO_LARGE,
                            "multipart part headers longer than %d bytes", PART_HEADERS_MAX);
                goto out;
            }
            if (q == NULL)
                goto truncated;
            header_end = (size_t)(q - body) + 2;
            content = header_end + 2;
        }
        pi.has_disposition = false;
        pi.has_name = false;
        pi.skip = false;
        buf_reset(&pi.name);
        e = part_headers_parse(body + p, header_end - p, &pi, sink->err);
        if (e != LB_OK)
            goto out;
        q = memmem(body + content, len - content, delim, delim_len);
        if (q == NULL)
            goto truncated;
        if (!pi.has_name) {
            e = lb_fail(sink->err, LB_ERR_BAD_REQUEST, "multipart part without a name");
            goto out;
        }
        if (!pi.skip && pi.name.len > 0) {
            e = field_add(sink, pi.name.data, pi.name.len, body + content,
                          (size_t)(q - body) - content);
            if (e != LB_OK)
                goto out;
        }
        p = (size_t)(q - body) + delim_len;
    }
    goto out;
truncated:
    e = lb_fail(sink->err, LB_ERR_BAD_REQUEST, "truncated multipart body");
out:
    buf_free(&pi.name);
    buf_free(&pi.tmp);
    return e;
}

/* ---- application/json */

/* True when the JSON text s[0..len) nests arrays/objects deeper than max (strings skipped). */
static bool json_too_deep(const char *s, size_t len, size_t max)
{
    bool in_string = false, escaped = false;
    size_t depth = 0, i;

    for (i = 0; i < len; i++) {
        char c = s[i];

        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                return true;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return false;
}

/*
 * Walks a parsed JSON value counting leaves against max_fields, checking keys (max_key, no
 * controls) and strings (max_value). key is the nearest object key, for messages. Recursion is
 * bounded by depth <= max_depth (json_too_deep ran first).
 */
static enum lb_err json_check(struct field_sink *sink, const json_t *v, const char *key,
                              size_t key_len, size_t depth)
{
    const struct parse_limits *lim = sink->limits;
    char shown[64];
    enum lb_err e = LB_OK;

    if ((json_is_object(v) || json_is_array(v)) && depth > lim->max_depth)
        return lb_fail(sink->err, LB_ERR_TOO_DEEP, "JSON nested deeper than %zu levels",
                       lim->max_depth);
    if (json_is_object(v)) {
        const char *k;
        size_t k_len;
        json_t *child;

        json_object_keylen_foreach((json_t *)v, k, k_len, child) {
            e = name_check(sink, k, k_len);
            if (e == LB_OK)
                e = json_check(sink, child, k, k_len, depth + 1);
            if (e != LB_OK)
                return e;
        }
        return LB_OK;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *child;

        json_array_foreach(v, i, child) {
            e = json_check(sink, child, key, key_len, depth + 1);
            if (e != LB_OK)
                return e;
        }
        return LB_OK;
    }
    if (++sink->leaves > lim->max_fields)
        return lb_fail(sink->err, LB_ERR_TOO_MANY_FIELDS, "more than %zu fields", lim->max_fields);
    if (json_is_string(v) && json_string_length(v) > lim->max_value)
        return lb_fail(sink->err, LB_ERR_TOO_LARGE,
                       "value of field \"%s\" is longer than %zu bytes",
                       name_shown(key, key_len, shown, sizeof(shown)), lim->max_value);
    return LB_OK;
}

/*
 * Parses a JSON body that must be one object into *out (new reference). Depth is checked on the
 * text before jansson (which recurses) sees it; duplicate keys and \u0000 are refused. jansson's
 * message is reported with line and column but without the "near '...'" echo of the input.
 */
static enum lb_err json_parse(const char *body, size_t len, struct field_sink *sink, json_t **out,
                              bool any)
{
    json_error_t jerr;
    json_t *root = NULL;
    char *near;
    enum lb_err e;

    *out = NULL;
    if (json_too_deep(body, len, sink->limits->max_depth))
        return lb_fail(sink->err, LB_ERR_TOO_DEEP, "JSON nested deeper than %zu levels",
                       sink->limits->max_depth);
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        char shown[104];

        near = strstr(jerr.text, " near ");
        if (near != NULL)
            *near = '\0';
        return lb_fail(sink->err, LB_ERR_BAD_REQUEST, "invalid JSON at line %d, column %d: %s",
                       jerr.line, jerr.column, text_shown(jerr.text, strlen(jerr.text), 96, shown,
                                                          sizeof(shown)));
    }
    if (!any && !json_is_object(root)) {
        e = lb_fail(sink->err, LB_ERR_BAD_REQUEST, "JSON body must be an object");
        goto out;
    }
    e = json_check(sink, root, "", 0, 1);
    if (e == LB_OK) {
        *out = root;
        root = NULL;
    }
out:
    json_decref(root);
    return e;
}

/* ---- Content-Type and the entry point */

enum media { MEDIA_URLENCODED, MEDIA_MULTIPART, MEDIA_JSON };

/*
 * Reads content_type into *media and, for multipart, the boundary (into boundary, capped).
 * Returns LB_ERR_MEDIA_TYPE for a type or charset we do not take, LB_ERR_BAD_REQUEST for broken
 * parameters or a missing/bad multipart boundary.
 */
static enum lb_err content_type_parse(const char *ct, enum media *media, struct buf *boundary,
                                      struct lb_error *err)
{
    const char *p = ct, *end = ct + strlen(ct);
    const char *type = p, *sub;
    size_t type_len, sub_len;
    struct param_iter it;
    struct buf value;
    bool has_boundary = false;
    char shown[64];
    enum lb_err e = LB_OK;

    buf_init(&value, PARAM_VALUE_MAX);
    skip_ows(&p, end);
    type = p;
    type_len = token_len(p, (size_t)(end - p));
    sub = p + type_len + 1;
    sub_len = type_len > 0 && sub <= end && sub[-1] == '/' ? token_len(sub, (size_t)(end - sub))
                                                           : 0;
    if (sub_len > 0 && span_ieq(type, type_len, "application") &&
        span_ieq(sub, sub_len, "x-www-form-urlencoded")) {
        *media = MEDIA_URLENCODED;
    } else if (sub_len > 0 && span_ieq(type, type_len, "multipart") &&
               span_ieq(sub, sub_len, "form-data")) {
        *media = MEDIA_MULTIPART;
    } else if (sub_len > 0 && span_ieq(type, type_len, "application") &&
               (span_ieq(sub, sub_len, "json") ||
                (sub_len > 5 && span_ieq(sub + sub_len - 5, 5, "+json")))) {
        *media = MEDIA_JSON;
    } else {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *stop = semi != NULL ? semi : end;

        while (stop > p && (stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        e = lb_fail(err, LB_ERR_MEDIA_TYPE, "unsupported content type \"%s\"",
                    text_shown(p, (size_t)(stop - p), 40, shown, sizeof(shown)));
        goto out;
    }
    it.p = sub + sub_len;
    it.end = end;
    for (;;) {
        const char *name;
        size_t name_len;

        e = param_next(&it, &name, &name_len, &value);
        if (e != LB_OK) {
            e = lb_fail(err, LB_ERR_BAD_REQUEST, "malformed Content-Type parameters");
            goto out;
        }
        if (name == NULL)
            break;
        if (span_ieq(name, name_len, "charset") && !span_ieq(value.data, value.len, "utf-8") &&
            !span_ieq(value.data, value.len, "us-ascii")) {
            e = lb_fail(err, LB_ERR_MEDIA_TYPE, "unsupported charset \"%s\"",
                        text_shown(value.data, value.len, 40, shown, sizeof(shown)));
            goto out;
        }
        if (span_ieq(name, name_len, "boundary") && *media == MEDIA_MULTIPART) {
            if (has_boundary || !boundary_valid(value.data, value.len)) {
                e = lb_fail(err, LB_ERR_BAD_REQUEST, "bad multipart boundary");
                goto out;
            }
            has_boundary = true;
            e = buf_append(boundary, value.data, value.len);
            if (e != LB_OK)
                goto out;
        }
    }
    if (*media == MEDIA_MULTIPART && !has_boundary)
        e = lb_fail(err, LB_ERR_BAD_REQUEST, "bad multipart boundary: none given");
out:
    buf_free(&value);
    return e;
}

/*
 * See parse.h. limits may be NULL for parse_default_limits. A supported type with an empty body
 * gives an empty object (the multipart boundary is still checked).
 */
enum lb_err parse_body(const char *content_type, const char *body, size_t len,
                       const struct parse_limits *limits, json_t **out, struct lb_error *err)
{
    struct field_sink sink = {NULL, limits != NULL ? limits : &parse_default_limits, 0, err};
    struct buf boundary;
    enum media media = MEDIA_URLENCODED;
    const char *p = content_type;
    enum lb_err e;

    *out = NULL;
    buf_init(&boundary, 70);
    if (body == NULL && len > 0) {
        e = lb_fail(err, LB_ERR_INTERNAL, "no body");
        goto out;
    }
    if (p != NULL)
        skip_ows(&p, p + strlen(p));
    if (p == NULL || *p == '\0') {
        if (len > 0) {
            e = lb_fail(err, LB_ERR_MEDIA_TYPE, "a body without a content type");
            goto out;
        }
        *out = json_object();
        e = *out != NULL ? LB_OK : LB_ERR_NOMEM;
        goto out;
    }
    e = content_type_parse(content_type, &media, &boundary, err);
    if (e != LB_OK)
        goto out;
    if (len == 0) {
        *out = json_object();
        e = *out != NULL ? LB_OK : LB_ERR_NOMEM;
        goto out;
    }
    if (media == MEDIA_JSON) {
        e = json_parse(body, len, &sink, out, false);
        goto out;
    }
    sink.obj = json_object();
    if (sink.obj == NULL) {
        e = LB_ERR_NOMEM;
        goto out;
    }
    if (media == MEDIA_URLENCODED)
        e = parse_urlencoded(body, len, sink.limits, sink.obj, err);
    else
        e = multipart_parse(body, len, boundary.data, boundary.len, &sink);
    if (e == LB_OK) {
        *out = sink.obj;
        sink.obj = NULL;
    }
out:
    json_decref(sink.obj);
    buf_free(&boundary);
    if (e != LB_OK && e != LB_ERR_NOMEM && err != NULL && err->code != e)
        lb_fail(err, e, "%s", lb_strerror(e));
    if (e == LB_ERR_NOMEM)
        lb_fail(err, e, "%s", lb_strerror(e));
    return e;
}

enum lb_err parse_json_value(const char *s, size_t len, const struct parse_limits *limits,
                             json_t **out, struct lb_error *err)
{
    struct field_sink sink = {NULL, limits != NULL ? limits : &parse_default_limits, 0, err};

    *out = NULL;
    if (s == NULL)
        return lb_fail(err, LB_ERR_BAD_REQUEST, "no JSON text");
    return json_parse(s, len, &sink, out, true);
}
