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
 * Decodes s[0..len) into a new NUL-terminated string (*out, caller frees). The result is never
 * longer than the input, so the buffer is capped at len. *out is NULL on failure.
 */
enum lb_err parse_percent_decode(const char *s, size_t len, bool plus_is_space, char **out)
{
    struct buf b;
    enum lb_err e = LB_OK;
    size_t i;

    *out = NULL;
    buf_init(&b, len);
    for (i = 0; i < len && e == LB_OK; i++) {
        char c = s[i];

        if (c == '%') {
            int h, l;

            if (len - i < 3) {
                e = LB_ERR_BAD_REQUEST;
                break;
            }
            h = hex_value((unsigned char)s[i + 1]);
            l = hex_value((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) {
                e = LB_ERR_BAD_REQUEST;
                break;
            }
            c = (char)(h * 16 + l);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        e = buf_putc(&b, c);
    }
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
