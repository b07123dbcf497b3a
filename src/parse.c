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
#include <string.h>

#include "buf.h"

const struct parse_limits parse_default_limits = {
    .max_fields = 256,
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

/* ---- Field text checks and messages ---------------------------------------------------------- */

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
 * Writes a printable form of untrusted text (a media type, a charset) into out: at most 40 bytes,
 * anything outside printable ASCII (and the quote) replaced by '?', "..." when cut.
 */
static const char *text_shown(const char *s, size_t len, char *out, size_t size)
{
    size_t n = len < 40 ? len : 40;
    size_t i, o = 0;

    for (i = 0; i < n && o + 4 < size; i++) {
        unsigned char c = (unsigned char)s[i];

        out[o++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (n < len && o + 4 <= size) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* ---- Adding a field by its bracketed name (shared by urlencoded and multipart) ---------------- */

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
        return lb_fail(sink->err, LB_ERR_TOO_LARGE, "value of field \"%s\" is longer than %zu bytes",
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
        return lb_fail(sink->err, LB_ERR_TOO_LARGE, "more than %zu fields",
                       sink->limits->max_fields);
    if (brackets_parse(name, name_len, &segs)) {
        if (segs + 1 > sink->limits->max_depth)
            return lb_fail(sink->err, LB_ERR_TOO_LARGE, "field names nested deeper than %zu levels",
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

/* ---- application/x-www-form-urlencoded -------------------------------------------------------- */

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
