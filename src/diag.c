/*
 * diag.c: configuration diagnostics (see diag.h).
 *
 * Messages are formatted once, when added, into owned strings "file:line:col: path: message".
 * The line and column come from jsonpos_locate(), a small tolerant scanner that walks the file's
 * text to the value at a JSON path without building a tree: it never allocates, never recurses
 * and never reads past the end of the text, whatever the text holds.
 */
#include "diag.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest message we keep; longer ones are cut. */
#define DIAG_MAX_MESSAGE 4096

void diag_init(struct diag *d, const char *file, const char *text, size_t text_len)
{
    d->file = file;
    d->text = text;
    d->text_len = text ? text_len : 0;
    d->messages = NULL;
    d->count = 0;
}

/* --- JSON string and path decoding --------------------------------------------------------- */

/*
 * A reader of the bytes a quoted string stands for (JSON escapes decoded, \uXXXX and surrogate
 * pairs turned into UTF-8), or of a plain run of bytes when plain is set. s[pos] is the first byte
 * after the opening quote; the string ends at an unescaped '"' or, for plain runs, at end.
 */
struct strreader {
    const char *s;
    size_t end;  /* bytes of s that may be read */
    size_t pos;
    bool plain;
    unsigned char pend[4];
    int npend;
    int ipend;
};

#define STR_END (-1)
#define STR_BAD (-2)

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads 4 hex digits at s[pos..]; returns the value or -1. */
static long read_hex4(const char *s, size_t end, size_t pos)
{
    long v = 0;
    int i;

    if (pos > end || end - pos < 4)
        return -1;
    for (i = 0; i < 4; i++) {
        int h = hex_digit((unsigned char)s[pos + (size_t)i]);

        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static int utf8_encode(unsigned long cp, unsigned char out[4])
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/*
 * Decodes one escape at r->s[r->pos] (just after the backslash) into r->pend. Returns 0, or
 * STR_BAD for an unknown or truncated escape. A lone surrogate becomes U+FFFD.
 */
static int strreader_escape(struct strreader *r)
{
    unsigned char c;
    long cp, lo;

    if (r->pos >= r->end)
        return STR_BAD;
    c = (unsigned char)r->s[r->pos++];
    r->ipend = 0;
    r->npend = 1;
    switch (c) {
    case '"': case '\\': case '/':
        r->pend[0] = c;
        return 0;
    case 'b':
        r->pend[0] = '\b';
        return 0;
    case 'f':
        r->pend[0] = '\f';
        return 0;
    case 'n':
        r->pend[0] = '\n';
        return 0;
    case 'r':
        r->pend[0] = '\r';
        return 0;
    case 't':
        r->pend[0] = '\t';
        return 0;
    case 'u':
        break;
    default:
        return STR_BAD;
    }
    cp = read_hex4(r->s, r->end, r->pos);
    if (cp < 0)
        return STR_BAD;
    r->pos += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        lo = -1;
        if (r->end - r->pos >= 6 && r->s[r->pos] == '\\' && r->s[r->pos + 1] == 'u')
            lo = read_hex4(r->s, r->end, r->pos + 2);
        if (lo >= 0xDC00 && lo <= 0xDFFF) {
            r->pos += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else {
            cp = 0xFFFD;
        }
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        cp = 0xFFFD;
    }
    r->npend = utf8_encode((unsigned long)cp, r->pend);
    return 0;
}

/* Returns the next decoded byte (0..255), STR_END at the end of the string, or STR_BAD. */
static int strreader_next(struct strreader *r)
{
    unsigned char c;
    int e;

    if (r->ipend < r->npend)
        return r->pend[r->ipend++];
    if (r->pos >= r->end)
        return r->plain ? STR_END : STR_BAD;
    c = (unsigned char)r->s[r->pos];
    if (r->plain) {
        r->pos++;
        return c;
    }
    if (c == '"')
        return STR_END;
    r->pos++;
    if (c != '\\')
        return c;
    e = strreader_escape(r);
    if (e != 0)
        return e;
    return r->pend[r->ipend++];
}

enum seg_kind { SEG_KEY, SEG_QUOTED_KEY, SEG_INDEX };

/* One step of a path: a key (plain bytes or a quoted string to decode) or an array index. */
struct seg {
    enum seg_kind kind;
    const char *p; /* key bytes; for SEG_QUOTED_KEY the byte after the opening quote */
    size_t n;      /* bytes up to (not including) the closing quote */
    size_t index;
};

/*
 * Reads the path segment at path[*pos] into *seg and moves *pos past it. Returns 1 when a segment
 * was read, 0 at the end of the path, -1 when the path is malformed.
 */
static int path_next(const char *path, size_t *pos, struct seg *seg)
{
    size_t i = *pos, start;

    if (path[i] == '\0')
        return 0;
    if (path[i] == '.')
        i++;
    if (path[i] == '[') {
        i++;
        if (path[i] == '"') {
            i++;
            start = i;
            while (path[i] != '\0' && path[i] != '"') {
                if (path[i] == '\\' && path[i + 1] != '\0')
                    i++;
                i++;
            }
            if (path[i] != '"' || path[i + 1] != ']')
                return -1;
            seg->kind = SEG_QUOTED_KEY;
            seg->p = path + start;
            seg->n = i - start;
            *pos = i + 2;
            return 1;
        }
        if (path[i] < '0' || path[i] > '9')
            return -1;
        seg->index = 0;
        while (path[i] >= '0' && path[i] <= '9') {
            if (seg->index > (SIZE_MAX - 9) / 10)
                return -1;
            seg->index = seg->index * 10 + (size_t)(path[i] - '0');
            i++;
        }
        if (path[i] != ']')
            return -1;
        seg->kind = SEG_INDEX;
        *pos = i + 1;
        return 1;
    }
    start = i;
    while (path[i] != '\0' && path[i] != '.' && path[i] != '[')
        i++;
    if (i == start)
        return -1;
    seg->kind = SEG_KEY;
    seg->p = path + start;
    seg->n = i - start;
    *pos = i;
    return 1;
}

/* --- the tolerant JSON scanner --------------------------------------------------------------- */

static size_t skip_ws(const char *t, size_t len, size_t i)
{
    while (i < len && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r'))
        i++;
    return i;
}

/* t[i] is '"'; returns the index just past the closing quote (or len when unterminated). */
static size_t skip_string(const char *t, size_t len, size_t i)
{
    i++;
    while (i < len && t[i] != '"') {
        if (t[i] == '\\')
            i++;
        i++;
    }
    return i < len ? i + 1 : len;
}

/*
 * Returns the index just past the value starting at t[i]: a string, a balanced run of objects and
 * arrays (brackets counted, strings skipped), or a scalar up to the next delimiter.
 */
static size_t skip_value(const char *t, size_t len, size_t i)
{
    size_t depth = 0;

    if (i >= len)
        return len;
    if (t[i] == '"')
        return skip_string(t, len, i);
    if (t[i] != '{' && t[i] != '[') {
        while (i < len && t[i] != ',' && t[i] != '}' && t[i] != ']' && t[i] != ' ' &&
               t[i] != '\t' && t[i] != '\n' && t[i] != '\r')
            i++;
        return i;
    }
    while (i < len) {
        if (t[i] == '"') {
            i = skip_string(t, len, i);
            continue;
        }
        if (t[i] == '{' || t[i] == '[') {
            depth++;
        } else if (t[i] == '}' || t[i] == ']') {
            depth--;
            if (depth == 0)
                return i + 1;
        }
        i++;
    }
    return len;
}

/* True when the JSON string starting at t[i] (the opening quote) decodes to the key of seg. */
static bool key_matches(const char *t, size_t len, size_t i, const struct seg *seg)
{
    struct strreader a = { .s = t, .end = len, .pos = i + 1 };
    struct strreader b = { .s = seg->p, .pos = 0, .plain = seg->kind == SEG_KEY };

    /* A quoted path key ends at its closing quote, which the reader must see. */
    b.end = b.plain ? seg->n : seg->n + 1;

    for (;;) {
        int x = strreader_next(&a);
        int y = strreader_next(&b);

        if (x == STR_BAD || y == STR_BAD || x != y)
            return false;
        if (x == STR_END)
            return true;
    }
}

/*
 * Moves *i from the start of a container value to the start of the member or element that seg
 * names. Returns true when found; *i is unchanged otherwise.
 */
static bool enter(const char *t, size_t len, size_t *i, const struct seg *seg)
{
    size_t j = *i, n = 0;
    bool want_object = seg->kind != SEG_INDEX;

    if (j >= len || t[j] != (want_object ? '{' : '['))
        return false;
    j++;
    for (;;) {
        bool match = false;

        j = skip_ws(t, len, j);
        if (j >= len || t[j] == '}' || t[j] == ']')
            return false;
        if (want_object) {
            if (t[j] != '"')
                return false;
            match = key_matches(t, len, j, seg);
            j = skip_ws(t, len, skip_string(t, len, j));
            if (j >= len || t[j] != ':')
                return false;
            j = skip_ws(t, len, j + 1);
        } else {
            match = n == seg->index;
        }
        if (match) {
            if (j >= len)
                return false;
            *i = j;
            return true;
        }
        j = skip_ws(t, len, skip_value(t, len, j));
        if (j >= len || t[j] != ',')
            return false;
        j++;
        n++;
    }
}

/* Converts a byte offset to a 1-based line and column (bytes); "\r\n" ends a line as "\n" does. */
static void offset_to_linecol(const char *text, size_t off, int *line, int *column)
{
    size_t i, line_start = 0;
    long l = 1;

    for (i = 0; i < off; i++) {
        if (text[i] == '\n') {
            if (l < INT_MAX)
                l++;
            line_start = i + 1;
        }
    }
    *line = (int)l;
    *column = off - line_start < (size_t)INT_MAX ? (int)(off - line_start) + 1 : INT_MAX;
}

int jsonpos_locate(const char *text, size_t len, const char *path, int *line, int *column)
{
    size_t i, ppos = 0;
    struct seg seg = { .kind = SEG_KEY, .p = NULL, .n = 0, .index = 0 };
    int rc = 0, more;

    *line = 1;
    *column = 1;
    if (text == NULL)
        return -1;
    i = skip_ws(text, len, 0);
    if (i >= len) {
        offset_to_linecol(text, 0, line, column);
        return -1;
    }
    if (path != NULL) {
        for (;;) {
            more = path_next(path, &ppos, &seg);
            if (more == 0)
                break;
            if (more < 0 || !enter(text, len, &i, &seg)) {
                rc = -1;
                break;
            }
        }
    }
    offset_to_linecol(text, i, line, column);
    return rc;
}

/* --- messages ------------------------------------------------------------------------------ */

/* Formats into a new string (cut at DIAG_MAX_MESSAGE bytes); NULL when out of memory. */
static char *format_message(const char *fmt, va_list ap)
{
    char *s;
    int n;

    s = malloc(DIAG_MAX_MESSAGE);
    if (s == NULL)
        return NULL;
    n = vsnprintf(s, DIAG_MAX_MESSAGE, fmt, ap);
    if (n < 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* Appends msg (owned) to d; frees msg and drops it when the array cannot grow. */
static void push_message(struct diag *d, char *msg)
{
    char **grown;

    if (msg == NULL)
        return;
    if (d->count >= SIZE_MAX / sizeof(*grown) - 1) {
        free(msg);
        return;
    }
    grown = realloc(d->messages, (d->count + 1) * sizeof(*grown));
    if (grown == NULL) {
        free(msg);
        return;
    }
    d->messages = grown;
    d->messages[d->count++] = msg;
}

/* Returns a new string "head: body" (cut to DIAG_MAX_MESSAGE), or NULL when out of memory. */
static char *join(const char *head, const char *body)
{
    char *s = malloc(DIAG_MAX_MESSAGE);
    int n;

    if (s == NULL)
        return NULL;
    n = snprintf(s, DIAG_MAX_MESSAGE, "%s: %s", head, body);
    if (n < 0) {
        free(s);
        return NULL;
    }
    return s;
}

void diag_add(struct diag *d, const char *path, const char *fmt, ...)
{
    char head[DIAG_MAX_MESSAGE];
    const char *file = d->file ? d->file : "(config)";
    bool has_path = path != NULL && path[0] != '\0';
    char *body, *msg;
    va_list ap;
    int line, column, n;

    va_start(ap, fmt);
    body = format_message(fmt, ap);
    va_end(ap);
    if (body == NULL)
        return;
    if (d->text == NULL) {
        n = snprintf(head, sizeof(head), "%s%s%s", file, has_path ? ": " : "",
                     has_path ? path : "");
    } else {
        (void)jsonpos_locate(d->text, d->text_len, path, &line, &column);
        n = snprintf(head, sizeof(head), "%s:%d:%d%s%s", file, line, column,
                     has_path ? ": " : "", has_path ? path : "");
    }
    msg = n < 0 ? NULL : join(head, body);
    free(body);
    push_message(d, msg);
}

void diag_add_at(struct diag *d, int line, int column, const char *fmt, ...)
{
    char head[DIAG_MAX_MESSAGE];
    const char *file = d->file ? d->file : "(config)";
    char *body, *msg;
    va_list ap;
    int n;

    va_start(ap, fmt);
    body = format_message(fmt, ap);
    va_end(ap);
    if (body == NULL)
        return;
    n = snprintf(head, sizeof(head), "%s:%d:%d", file, line, column);
    msg = n < 0 ? NULL : join(head, body);
    free(body);
    push_message(d, msg);
}

void diag_print(const struct diag *d, FILE *out)
{
    size_t i;

    for (i = 0; i < d->count; i++)
        fprintf(out, "%s\n", d->messages[i]);
}

/* Writes key as a path step: ".key" when it is a plain identifier, else ["key"] with escapes. */
static int path_put_key(char *dst, size_t size, size_t at, const char *key)
{
    size_t i, n = strlen(key);
    bool plain = n > 0;
    int w;

    for (i = 0; i < n && plain; i++) {
        unsigned char c = (unsigned char)key[i];

        plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-';
    }
    if (plain) {
        w = snprintf(dst + at, size - at, "%s%s", at > 0 ? "." : "", key);
        return w < 0 || (size_t)w >= size - at ? -1 : 0;
    }
    w = snprintf(dst + at, size - at, "[\"");
    if (w < 0 || (size_t)w >= size - at)
        return -1;
    at += (size_t)w;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];

        if (c == '"' || c == '\\')
            w = snprintf(dst + at, size - at, "\\%c", c);
        else if (c < 0x20)
            w = snprintf(dst + at, size - at, "\\u%04x", c);
        else
            w = snprintf(dst + at, size - at, "%c", c);
        if (w < 0 || (size_t)w >= size - at)
            return -1;
        at += (size_t)w;
    }
    w = snprintf(dst + at, size - at, "\"]");
    return w < 0 || (size_t)w >= size - at ? -1 : 0;
}

int diag_path_key(char *dst, size_t size, const char *parent, const char *key)
{
    int w;

    if (size == 0)
        return -1;
    if (parent == dst) {
        w = (int)strnlen(dst, size);
    } else {
        w = snprintf(dst, size, "%s", parent ? parent : "");
        if (w < 0)
            return -1;
    }
    if ((size_t)w >= size)
        return -1;
    return path_put_key(dst, size, (size_t)w, key);
}

int diag_path_index(char *dst, size_t size, const char *parent, size_t index)
{
    int w;

    if (size == 0)
        return -1;
    if (parent == dst) {
        size_t at = strnlen(dst, size);

        if (at >= size)
            return -1;
        w = snprintf(dst + at, size - at, "[%zu]", index);
        return w < 0 || (size_t)w >= size - at ? -1 : 0;
    }
    w = snprintf(dst, size, "%s[%zu]", parent ? parent : "", index);
    return w < 0 || (size_t)w >= size ? -1 : 0;
}

void diag_free(struct diag *d)
{
    size_t i;

    if (d == NULL)
        return;
    for (i = 0; i < d->count; i++)
        free(d->messages[i]);
    free(d->messages);
    d->messages = NULL;
    d->count = 0;
}
