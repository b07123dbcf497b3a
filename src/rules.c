/*
 * rules.c: the configurable field rules that turn a form's submitted fields into the canonical
 * lead (see rules.h; the language is described in docs-rules.md / leadbridge.conf(5)).
 *
 * rules_compile() checks a form's "rules", "unused_fields" and "attribution" keys, parses every
 * source path and compiles every regular expression once (PCRE2, UTF + UCP, JIT where available).
 * The compiled ruleset is read-only afterwards and shared by all threads.
 *
 * rules_apply() runs each rule in order over the submitted fields:
 *
 *   when? -> first non-empty "from" (or "value") -> text -> trim / collapse_spaces -> replace
 *         -> match (one value, or several fields through captures) -> case -> map -> type
 *         -> format / lengths / pattern / min / max -> write (or "default", or "required" error)
 *
 * then gathers unread fields into lead.meta and copies the attribution. It is pure: no I/O and no
 * state except this thread's PCRE2 match data. Every regex runs under a match context with match,
 * depth and heap limits, and never over a value longer than 16 KiB.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "rules.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pcre2.h>

#include "buf.h"
#include "conf.h"
#include "parse.h"

enum {
    RULES_PATH_SIZE = 512,
    RULES_VALUE_MAX = 65536,          /* a working value, in bytes */
    RULES_REGEX_SUBJECT_MAX = 16384,  /* longer values are never given to a regex */
    RULES_META_MAX = 1024,            /* LeadPro's cap on the JSON size of meta */
    RULES_MAX_CAPTURES = 32,          /* fields one "match" may write */
    RULES_MAX_INDEX = 100000,
    RULES_MATCH_LIMIT = 1000000,
    RULES_DEPTH_LIMIT = 10000,
    RULES_HEAP_LIMIT_KIB = 16384,
    RULES_MESSAGE_SIZE = 128,
};

const char *const rules_form_keys[] = {"rules", "unused_fields", "attribution", NULL};

static const char *const rule_keys[] = {
    "field",   "from",       "value",      "default", "trim",    "collapse_spaces",
    "replace", "match",      "captures",   "case",    "map",     "map_default",
    "type",    "split",      "join",       "required", "min_length", "max_length",
    "min",     "max",        "format",     "pattern", "message", "when",
    NULL,
};
static const char *const parse_json_keys[] = {"parse_json", "field", "required", "message", "when",
                                              NULL};
static const char *const replace_keys[] = {"pattern", "with", NULL};
static const char *const when_keys[] = {"field", "match", "equals", "present", NULL};

/* Attribution keys copied into the lead when no rule set them. */
static const char *const attribution_lead_keys[] = {
    "utm_source", "utm_medium",  "utm_campaign", "utm_term",  "utm_content", "utm_id",
    "gclid",      "gbraid",      "wbraid",       "dclid",     "fbclid",      "msclkid",
    "ttclid",     "li_fat_id",   "twclid",       "host",      "landing_page", "referrer",
    "first_touch", "ip",         "user_agent",   NULL,
};
/* Submitted names never gathered into meta (besides utm_*, _* and lb_*). */
static const char *const meta_skip_names[] = {
    "gclid",  "gbraid", "wbraid",   "dclid",  "fbclid",       "msclkid",  "ttclid",
    "li_fat_id", "twclid", "landing_page", "referrer", "first_touch", NULL,
};

/* ---- compiled form ---- */

enum source_root { ROOT_FIELDS = 0, ROOT_ATTRIBUTION, ROOT_LEAD };
enum step_kind { STEP_KEY = 0, STEP_INDEX, STEP_FILTER };

struct step {
    enum step_kind kind;
    char *key;    /* STEP_KEY */
    size_t index; /* STEP_INDEX */
    char **lhs;   /* STEP_FILTER: the dotted path looked up inside each element */
    size_t n_lhs;
    char *value;  /* STEP_FILTER: what it must equal */
};

struct source {
    enum source_root root;
    struct step *steps;
    size_t n_steps;
};

enum rule_type { TYPE_STRING = 0, TYPE_INTEGER, TYPE_NUMBER, TYPE_BOOLEAN, TYPE_ARRAY, TYPE_PAIRS,
                 TYPE__MAX };
static const char *const type_names[TYPE__MAX] = {"string",  "integer", "number",
                                                  "boolean", "array",   "pairs"};

enum rule_case { CASE_NONE = 0, CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE__MAX };
static const char *const case_names[CASE__MAX] = {"none", "upper", "lower", "title"};

enum cond_kind { COND_MATCH = 0, COND_EQUALS, COND_PRESENT };

struct cond {
    struct source src;
    enum cond_kind kind;
    pcre2_code *re;
    char *equals;
    bool present;
};

struct replace {
    pcre2_code *re;
    char *with;
};

struct capture {
    uint32_t group;
    char *field;
};

struct map_entry {
    char *key;
    json_t *value;
};

struct rule {
    char *field; /* the field written; NULL when captures write the fields */
    struct source *from;
    size_t n_from;
    json_t *value;
    json_t *dflt;
    bool trim;
    bool collapse;
    struct replace *replace;
    size_t n_replace;
    pcre2_code *match;
    struct capture *captures; /* non-empty: the match writes these fields */
    size_t n_captures;
    enum rule_case text_case;
    struct map_entry *map;
    size_t n_map;
    json_t *map_default;
    enum rule_type type;
    char *split;
    char *join;
    bool required;
    long long min_length; /* -1: none */
    long long max_length;
    bool has_min;
    bool has_max;
    double min;
    double max;
    size_t format; /* index into formats[]; 0: none */
    pcre2_code *pattern;
    char *message;
    struct cond *when;
    bool parse_json; /* a step: from[0] holds JSON text; later rules read inside it */
};

struct ruleset {
    struct rule *rules;
    size_t n_rules;
    bool has_parse_json; /* rules_apply works on a copy of the fields */
    bool unused_to_meta;
    bool attribution;
    pcre2_match_context *mctx;
};

/* This thread's match data, grown to the largest capture count seen. */
static _Thread_local pcre2_match_data *tl_match;
static _Thread_local uint32_t tl_pairs;

/* ---- small text helpers ---- */

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static char ascii_upper(char c)
{
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

static bool ascii_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool ascii_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool ascii_eq_nocase(const char *a, size_t alen, const char *b)
{
    size_t i;

    for (i = 0; i < alen; i++)
        if (b[i] == '\0' || ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    return b[alen] == '\0';
}

/* Width of the whitespace at s[i] (ASCII space, tab, CR, LF, VT, FF or U+00A0), or 0. */
static size_t space_at(const char *s, size_t len, size_t i)
{
    unsigned char c = (unsigned char)s[i];

    if (c == ' ' || (c >= '\t' && c <= '\r'))
        return 1;
    if (c == 0xc2 && i + 1 < len && (unsigned char)s[i + 1] == 0xa0)
        return 2;
    return 0;
}

static bool all_space(const char *s, size_t len)
{
    size_t i = 0, w;

    while (i < len) {
        w = space_at(s, len, i);
        if (w == 0)
            return false;
        i += w;
    }
    return true;
}

static void text_trim(struct buf *b)
{
    size_t start = 0, end, w, i;

    if (b->data == NULL)
        return;
    while (start < b->len) {
        w = space_at(b->data, b->len, start);
        if (w == 0)
            break;
        start += w;
    }
    end = start;
    for (i = start; i < b->len;) {
        w = space_at(b->data, b->len, i);
        if (w == 0) {
            i++;
            end = i;
        } else {
            i += w;
        }
    }
    memmove(b->data, b->data + start, end - start);
    b->len = end - start;
    b->data[b->len] = '\0';
}

/* Replaces every run of whitespace (newlines included) with one space. */
static void text_collapse(struct buf *b)
{
    size_t i = 0, o = 0, w;
    bool in_space = false;

    if (b->data == NULL)
        return;
    while (i < b->len) {
        w = space_at(b->data, b->len, i);
        if (w > 0) {
            if (!in_space)
                b->data[o++] = ' ';
            in_space = true;
            i += w;
        } else {
            b->data[o++] = b->data[i++];
            in_space = false;
        }
    }
    b->len = o;
    b->data[o] = '\0';
}

/*
 * ASCII case conversion in place; bytes of multi-byte UTF-8 characters are never touched. Title
 * case upper-cases the first letter of each word and lower-cases the rest; words start after
 * whitespace, '-' and an apostrophe that follows a single letter (O'Neil, D'Arcy).
 */
static void text_case(struct buf *b, enum rule_case how)
{
    size_t i, word_len = 0;
    bool start = true;

    if (b->data == NULL)
        return;
    for (i = 0; i < b->len; i++) {
        char c = b->data[i];

        if (how == CASE_UPPER) {
            b->data[i] = ascii_upper(c);
        } else if (how == CASE_LOWER) {
            b->data[i] = ascii_lower(c);
        } else if (how == CASE_TITLE) {
            if (space_at(b->data, b->len, i) == 1 || c == '-' || (c == '\'' && word_len == 1)) {
                start = true;
                word_len = 0;
                continue;
            }
            if (ascii_alpha(c))
                b->data[i] = start ? ascii_upper(c) : ascii_lower(c);
            if (((unsigned char)c & 0xc0) != 0x80)
                word_len++;
            start = false;
        }
    }
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t i, n = 0;

    for (i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            n++;
    return n;
}

static bool value_is_empty(const json_t *v)
{
    size_t i;
    const json_t *e;

    if (v == NULL || json_is_null(v))
        return true;
    if (json_is_string(v))
        return all_space(json_string_value(v), json_string_length(v));
    if (json_is_object(v))
        return json_object_size(v) == 0;
    if (json_is_array(v)) {
        json_array_foreach(v, i, e)
            if (!value_is_empty(e))
                return false;
        return true;
    }
    return false;
}

/*
 * Appends the text of v to b: strings as they are, numbers and booleans as JSON text, arrays as
 * their non-empty elements joined with join, objects as compact JSON. LB_ERR_TOO_LARGE past b's cap.
 */
static enum lb_err text_append(struct buf *b, const json_t *v, const char *join)
{
    enum lb_err e = LB_OK;
    size_t i;
    const json_t *el;
    bool first = true;
    char *s;

    switch (json_typeof(v)) {
    case JSON_STRING:
        return buf_append(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL:
        return buf_printf(b, "%.15g", json_real_value(v));
    case JSON_TRUE:
        return buf_puts(b, "true");
    case JSON_FALSE:
        return buf_puts(b, "false");
    case JSON_NULL:
        return LB_OK;
    case JSON_ARRAY:
        json_array_foreach(v, i, el) {
            if (value_is_empty(el))
                continue;
            if (!first)
                e = buf_puts(b, join);
            if (e == LB_OK)
                e = text_append(b, el, join);
            if (e != LB_OK)
                return e;
            first = false;
        }
        return LB_OK;
    case JSON_OBJECT:
        s = json_dumps(v, JSON_COMPACT);
        if (s == NULL)
            return LB_ERR_NOMEM;
        e = buf_puts(b, s);
        free(s);
        return e;
    }
    return LB_OK;
}

/* A new JSON string of b's text; NULL (with *bad set) when it is not valid UTF-8, or on ENOMEM. */
static json_t *text_to_json(const struct buf *b, bool *bad)
{
    *bad = false;
    if (b->len == 0)
        return json_string("");
    if (!parse_utf8_valid(b->data, b->len)) {
        *bad = true;
        return NULL;
    }
    return json_stringn(b->data, b->len);
}

/* ---- regular expressions ---- */

/* Match data for re on this thread, grown when re has more groups than any before. */
static pcre2_match_data *match_data_for(const pcre2_code *re)
{
    uint32_t ncap = 0, pairs;
    pcre2_match_data *md;

    if (pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ncap) != 0)
        return NULL;
    if (tl_match != NULL && tl_pairs > ncap)
        return tl_match;
    pairs = ncap + 1 < 16 ? 16 : ncap + 1;
    md = pcre2_match_data_create(pairs, NULL);
    if (md == NULL)
        return NULL;
    pcre2_match_data_free(tl_match);
    tl_match = md;
    tl_pairs = pairs;
    return md;
}

/* Runs re over s. Returns 1 and *mdp on a match, 0 on none, -1 when it could not finish. */
static int regex_match(const struct ruleset *rs, const pcre2_code *re, const char *s, size_t len,
                       pcre2_match_data **mdp)
{
    pcre2_match_data *md;
    int rc;

    if (len > RULES_REGEX_SUBJECT_MAX)
        return -1;
    md = match_data_for(re);
    if (md == NULL)
        return -1;
    rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, md, rs->mctx);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc <= 0)
        return -1;
    *mdp = md;
    return 1;
}

/*
 * Replaces every match of rp->re in b with rp->with ($1, ${name}, ${1:+yes:no}). Returns LB_OK,
 * LB_ERR_TOO_LARGE when the input or the result is too long, LB_ERR_INVALID_FIELDS when the match
 * could not finish, LB_ERR_NOMEM.
 */
static enum lb_err regex_replace(const struct ruleset *rs, const struct replace *rp, struct buf *b)
{
    const uint32_t opts = PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_EXTENDED |
                          PCRE2_SUBSTITUTE_UNSET_EMPTY | PCRE2_SUBSTITUTE_UNKNOWN_UNSET |
                          PCRE2_SUBSTITUTE_OVERFLOW_LENGTH;
    pcre2_match_data *md;
    PCRE2_UCHAR *out = NULL;
    PCRE2_SIZE size, outlen;
    enum lb_err e = LB_ERR_INVALID_FIELDS;
    int rc;

    if (b->len > RULES_REGEX_SUBJECT_MAX)
        return LB_ERR_TOO_LARGE;
    md = match_data_for(rp->re);
    if (md == NULL)
        return LB_ERR_NOMEM;
    size = b->len * 2 + 64;
    for (;;) {
        PCRE2_UCHAR *p = realloc(out, size);

        if (p == NULL) {
            e = LB_ERR_NOMEM;
            goto out;
        }
        out = p;
        outlen = size;
        rc = pcre2_substitute(rp->re, (PCRE2_SPTR)(b->data != NULL ? b->data : ""), b->len, 0,
                              opts, md, rs->mctx, (PCRE2_SPTR)rp->with, PCRE2_ZERO_TERMINATED,
                              out, &outlen);
        if (rc != PCRE2_ERROR_NOMEMORY)
            break;
        if (outlen > RULES_VALUE_MAX || outlen <= size) {
            e = LB_ERR_TOO_LARGE;
            goto out;
        }
        size = outlen;
    }
    if (rc < 0)
        goto out;
    buf_reset(b);
    e = buf_append(b, out, outlen);
out:
    free(out);
    return e;
}

/*
 * Compiles pattern (UTF, UCP; JIT when it can). Reports a bad pattern at path with PCRE2's message
 * and the offset. Returns a new code or NULL.
 */
static pcre2_code *regex_compile(const char *pattern, const char *path, struct diag *d)
{
    int errcode;
    PCRE2_SIZE offset;
    PCRE2_UCHAR msg[256];
    pcre2_code *re;

    re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &errcode,
                       &offset, NULL);
    if (re == NULL) {
        if (pcre2_get_error_message(errcode, msg, sizeof(msg)) < 0)
            snprintf((char *)msg, sizeof(msg), "error %d", errcode);
        diag_add(d, path, "bad regular expression at offset %zu: %s", (size_t)offset,
                 (const char *)msg);
        return NULL;
    }
    /* JIT is an optimisation only: without it the interpreter runs the same pattern. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

/* ---- source paths ---- */

static void source_clear(struct source *s)
{
    size_t i, j;

    for (i = 0; i < s->n_steps; i++) {
        free(s->steps[i].key);
        for (j = 0; j < s->steps[i].n_lhs; j++)
            free(s->steps[i].lhs[j]);
        free(s->steps[i].lhs);
        free(s->steps[i].value);
    }
    free(s->steps);
    s->steps = NULL;
    s->n_steps = 0;
}

/* Appends st to s (taking its strings). Returns false when out of memory (st is then freed). */
static bool source_push(struct source *s, struct step *st)
{
    struct step *p = realloc(s->steps, (s->n_steps + 1) * sizeof(*p));
    size_t j;

    if (p == NULL) {
        free(st->key);
        for (j = 0; j < st->n_lhs; j++)
            free(st->lhs[j]);
        free(st->lhs);
        free(st->value);
        return false;
    }
    s->steps = p;
    s->steps[s->n_steps++] = *st;
    return true;
}

/* Decodes a quoted string starting at *pp (at the quote); advances past the closing quote. */
static char *parse_quoted(const char **pp, const char **why)
{
    const char *p = *pp;
    char q = *p++;
    struct buf b;

    buf_init(&b, 4096);
    while (*p != '\0' && *p != q) {
        if (*p == '\\' && p[1] != '\0')
            p++;
        if (buf_putc(&b, *p++) != LB_OK) {
            *why = "is too long";
            buf_free(&b);
            return NULL;
        }
    }
    if (*p != q) {
        *why = "has an unterminated quote";
        buf_free(&b);
        return NULL;
    }
    *pp = p + 1;
    return buf_steal(&b);
}

/* Splits "a.b.c" into new strings; false when a part is empty or on ENOMEM. */
static bool split_dotted(const char *s, size_t len, char ***out, size_t *n)
{
    size_t i, start = 0;
    char **parts = NULL, **p;

    *out = NULL;
    *n = 0;
    for (i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        if (i == start)
            goto fail;
        p = realloc(parts, (*n + 1) * sizeof(*p));
        if (p == NULL)
            goto fail;
        parts = p;
        parts[*n] = strndup(s + start, i - start);
        if (parts[*n] == NULL)
            goto fail;
        (*n)++;
        start = i + 1;
    }
    *out = parts;
    return true;
fail:
    for (i = 0; i < *n; i++)
        free(parts[i]);
    free(parts);
    *n = 0;
    return false;
}

/* Parses the inside of [...] at *pp (just past '['); advances past ']'. */
static bool parse_bracket(const char **pp, struct step *st, const char **why)
{
    const char *p = *pp, *start = p, *eq = NULL;
    char quote = 0;
    size_t len, i;
    bool digits = true;

    memset(st, 0, sizeof(*st));
    if (*p == '"' || *p == '\'') {
        st->kind = STEP_KEY;
        st->key = parse_quoted(&p, why);
        if (st->key == NULL)
            return false;
        if (*p != ']') {
            *why = "expects ']' after a quoted key";
            return false;
        }
        *pp = p + 1;
        return true;
    }
    for (; *p != '\0' && (quote != 0 || *p != ']'); p++) {
        if (quote != 0 && *p == '\\' && p[1] != '\0')
            p++;
        else if (quote != 0 && *p == quote)
            quote = 0;
        else if (quote == 0 && eq != NULL && (*p == '"' || *p == '\''))
            quote = *p;
        else if (quote == 0 && eq == NULL && *p == '=')
            eq = p;
        else if (quote == 0 && *p == '[') {
            *why = "has '[' inside []";
            return false;
        }
    }
    if (*p != ']') {
        *why = "is missing ']'";
        return false;
    }
    len = (size_t)(p - start);
    *pp = p + 1;
    if (len == 0) {
        *why = "has an empty []";
        return false;
    }
    for (i = 0; i < len; i++)
        if (!ascii_digit(start[i]))
            digits = false;
    if (digits) {
        if (len > 6 || strtoul(start, NULL, 10) > RULES_MAX_INDEX) {
            *why = "has an index that is too large";
            return false;
        }
        st->kind = STEP_INDEX;
        st->index = strtoul(start, NULL, 10);
        return true;
    }
    if (eq == NULL) {
        st->kind = STEP_KEY;
        st->key = strndup(start, len);
        if (st->key == NULL)
            *why = "out of memory";
        return st->key != NULL;
    }
    st->kind = STEP_FILTER;
    if (!split_dotted(start, (size_t)(eq - start), &st->lhs, &st->n_lhs)) {
        *why = "needs a name before '=' in [name=value]";
        return false;
    }
    eq++;
    if (*eq == '"' || *eq == '\'') {
        st->value = parse_quoted(&eq, why);
        if (st->value != NULL && eq != p) {
            *why = "has text after the quoted value in [name=\"value\"]";
            return false;
        }
    } else {
        st->value = strndup(eq, (size_t)(p - eq));
        if (st->value == NULL)
            *why = "out of memory";
    }
    return st->value != NULL;
}

/*
 * Parses a source path: name, a.b, a[2], a["quoted key"], a[b.c=value], and the prefixes
 * "attribution." and "lead.". Fills *src; on failure sets *why and leaves src empty.
 */
static bool source_parse(const char *text, struct source *src, const char **why)
{
    const char *p = text;
    bool first = true, first_bare = false;
    struct step st;

    memset(src, 0, sizeof(*src));
    *why = NULL;
    if (*p == '\0') {
        *why = "is empty";
        return false;
    }
    while (*p != '\0') {
        if (*p == '[') {
            p++;
            if (!parse_bracket(&p, &st, why)) {
                source_push(src, &st);
                goto fail;
            }
        } else {
            const char *start;

            if (*p == '.') {
                if (first) {
                    *why = "starts with '.'";
                    goto fail;
                }
                p++;
            } else if (!first) {
                *why = "expects '.' or '[' after ']'";
                goto fail;
            }
            start = p;
            while (*p != '\0' && *p != '.' && *p != '[' && *p != ']')
                p++;
            if (*p == ']') {
                *why = "has a ']' without '['";
                goto fail;
            }
            if (p == start) {
                *why = "has an empty name";
                goto fail;
            }
            memset(&st, 0, sizeof(st));
            st.kind = STEP_KEY;
            st.key = strndup(start, (size_t)(p - start));
            if (st.key == NULL) {
                *why = "out of memory";
                goto fail;
            }
            if (first)
                first_bare = true;
        }
        if (!source_push(src, &st)) {
            *why = "out of memory";
            goto fail;
        }
        first = false;
    }
    if (first_bare && (strcmp(src->steps[0].key, "attribution") == 0 ||
                       strcmp(src->steps[0].key, "lead") == 0)) {
        src->root = strcmp(src->steps[0].key, "lead") == 0 ? ROOT_LEAD : ROOT_ATTRIBUTION;
        if (src->n_steps == 1) {
            *why = src->root == ROOT_LEAD ? "needs a field after \"lead.\""
                                          : "needs a key after \"attribution.\"";
            goto fail;
        }
        free(src->steps[0].key);
        memmove(src->steps, src->steps + 1, (src->n_steps - 1) * sizeof(src->steps[0]));
        src->n_steps--;
    }
    return true;
fail:
    if (*why == NULL)
        *why = "out of memory";
    source_clear(src);
    return false;
}

static bool key_is_index(const char *key, size_t *index)
{
    size_t i;

    for (i = 0; key[i] != '\0'; i++)
        if (!ascii_digit(key[i]) || i >= 6)
            return false;
    if (i == 0)
        return false;
    *index = strtoul(key, NULL, 10);
    return true;
}

/* v[key] for objects, v[index] for arrays when key is a number. Borrowed or NULL. */
static const json_t *get_key(const json_t *v, const char *key)
{
    size_t index;

    if (json_is_object(v))
        return json_object_get(v, key);
    if (json_is_array(v) && key_is_index(key, &index))
        return json_array_get(v, index);
    return NULL;
}

static bool filter_holds(const json_t *el, const struct step *st)
{
    size_t i;
    char num[32];

    for (i = 0; i < st->n_lhs && el != NULL; i++)
        el = get_key(el, st->lhs[i]);
    if (json_is_string(el))
        return strcmp(json_string_value(el), st->value) == 0;
    if (json_is_integer(el)) {
        if (snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(el)) < 0)
            return false;
        return strcmp(num, st->value) == 0;
    }
    return false;
}

static const json_t *step_get(const json_t *v, const struct step *st)
{
    char key[32];
    size_t i;
    const char *k;
    const json_t *el;

    switch (st->kind) {
    case STEP_KEY:
        return get_key(v, st->key);
    case STEP_INDEX:
        if (json_is_array(v))
            return json_array_get(v, st->index);
        if (snprintf(key, sizeof(key), "%zu", st->index) < 0)
            return NULL;
        return json_is_object(v) ? json_object_get(v, key) : NULL;
    case STEP_FILTER:
        if (json_is_array(v)) {
            json_array_foreach(v, i, el)
                if (filter_holds(el, st))
                    return el;
        } else if (json_is_object(v)) {
            json_object_foreach((json_t *)v, k, el)
                if (filter_holds(el, st))
                    return el;
        }
        return NULL;
    }
    return NULL;
}

struct inputs {
    const json_t *fields;
    const json_t *attribution;
    const json_t *lead;
};

static const json_t *source_resolve(const struct source *s, const struct inputs *in)
{
    const json_t *v = s->root == ROOT_LEAD          ? in->lead
                      : s->root == ROOT_ATTRIBUTION ? in->attribution
                                                    : in->fields;
    size_t i;

    for (i = 0; i < s->n_steps && v != NULL; i++)
        v = step_get(v, &s->steps[i]);
    return v;
}

struct rules_source {
    struct source src;
};

struct rules_source *rules_source_compile(const char *text, const char *path, struct diag *d)
{
    struct rules_source *s = calloc(1, sizeof(*s));
    const char *why = NULL;

    if (s == NULL)
        return NULL;
    if (!source_parse(text, &s->src, &why)) {
        diag_add(d, path, "bad source path \"%s\": it %s", text, why);
        free(s);
        return NULL;
    }
    return s;
}

const json_t *rules_source_get(const struct rules_source *s, const json_t *fields)
{
    struct inputs in = {fields, NULL, NULL};

    return s != NULL ? source_resolve(&s->src, &in) : NULL;
}

void rules_source_free(struct rules_source *s)
{
    if (s == NULL)
        return;
    source_clear(&s->src);
    free(s);
}

/* ---- formats ---- */

/* An address with one '@', a plausible local part and a dotted domain; lower-cases the domain. */
static bool format_email(struct buf *b)
{
    const char *at = b->data != NULL ? memchr(b->data, '@', b->len) : NULL;
    size_t i, local, label = 0;
    bool dot = false;

    if (at == NULL || b->len > 254)
        return false;
    local = (size_t)(at - b->data);
    if (local == 0 || local > 64 || local + 1 >= b->len)
        return false;
    for (i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];

        if (c <= ' ' || c == 0x7f || c == '"' || c == '(' || c == ')' || c == ',' || c == ':' ||
            c == ';' || c == '<' || c == '>' || c == '[' || c == ']' || c == '\\')
            return false;
        if (i <= local)
            continue;
        if (c == '@' || (c == '.' && (label == 0 || i + 1 == b->len)))
            return false;
        if (c == '.') {
            dot = true;
            label = 0;
            continue;
        }
        if (c < 0x80 && !ascii_alpha((char)c) && !ascii_digit((char)c) && c != '-')
            return false;
        b->data[i] = ascii_lower((char)c);
        label++;
    }
    return dot;
}

/* A UK postcode in any spacing and case; normalised to "AA9A 9AA" form. */
static bool format_uk_postcode(struct buf *b)
{
    char pc[8];
    size_t i, n = 0, out;

    for (i = 0; i < b->len; i++) {
        if (b->data[i] == ' ')
            continue;
        if (n == 7)
            return false;
        pc[n++] = ascii_upper(b->data[i]);
    }
    if (n < 5)
        return false;
    pc[n] = '\0';
    out = n - 3;
    if (strcmp(pc, "GIR0AA") != 0) {
        /* inward: digit letter letter; outward: A9, A99, AA9, AA99, A9A, AA9A */
        if (!ascii_digit(pc[out]) || !ascii_alpha(pc[out + 1]) || !ascii_alpha(pc[out + 2]))
            return false;
        i = 0;
        if (!ascii_alpha(pc[i++]))
            return false;
        if (ascii_alpha(pc[i]))
            i++;
        if (i >= out || !ascii_digit(pc[i++]))
            return false;
        if (i < out && (ascii_alpha(pc[i]) || ascii_digit(pc[i])))
            i++;
        if (i != out)
            return false;
    }
    buf_reset(b);
    return buf_append(b, pc, out) == LB_OK && buf_putc(b, ' ') == LB_OK &&
           buf_append(b, pc + out, 3) == LB_OK;
}

/* Digits with spaces, '+' (first only), '(', ')', '-', '.'; 7 to 20 digits. Kept as typed. */
static bool format_phone(struct buf *b)
{
    size_t i, digits = 0;

    for (i = 0; i < b->len; i++) {
        char c = b->data[i];

        if (ascii_digit(c))
            digits++;
        else if (c == '+' && digits == 0 && i == 0)
            continue;
        else if (c != ' ' && c != '(' && c != ')' && c != '-' && c != '.')
            return false;
    }
    return digits >= 7 && digits <= 20;
}

/* An absolute http or https URL with a host and no whitespace or control characters. */
static bool format_url(struct buf *b)
{
    size_t i, start;

    if (b->len > 8 && ascii_eq_nocase(b->data, 8, "https://"))
        start = 8;
    else if (b->len > 7 && ascii_eq_nocase(b->data, 7, "http://"))
        start = 7;
    else
        return false;
    if (b->data[start] == '/' || b->data[start] == '?' || b->data[start] == '#')
        return false;
    for (i = 0; i < b->len; i++)
        if ((unsigned char)b->data[i] <= ' ' || b->data[i] == 0x7f)
            return false;
    return true;
}

static const struct {
    const char *name;
    bool (*check)(struct buf *b);
    const char *message;
} formats[] = {
    {"none", NULL, NULL},
    {"email", format_email, "not a valid email address"},
    {"uk_postcode", format_uk_postcode, "not a valid UK postcode"},
    {"phone", format_phone, "not a valid phone number"},
    {"url", format_url, "not a valid web address"},
};
enum { FORMAT__MAX = sizeof(formats) / sizeof(formats[0]) };
static const char *const format_names[] = {"none", "email", "uk_postcode", "phone", "url"};
_Static_assert(sizeof(format_names) / sizeof(format_names[0]) == FORMAT__MAX,
               "format_names matches formats");

/* ---- compiling ---- */

static void rule_clear(struct rule *r)
{
    size_t i;

    free(r->field);
    for (i = 0; i < r->n_from; i++)
        source_clear(&r->from[i]);
    free(r->from);
    json_decref(r->value);
    json_decref(r->dflt);
    for (i = 0; i < r->n_replace; i++) {
        pcre2_code_free(r->replace[i].re);
        free(r->replace[i].with);
    }
    free(r->replace);
    pcre2_code_free(r->match);
    for (i = 0; i < r->n_captures; i++)
        free(r->captures[i].field);
    free(r->captures);
    for (i = 0; i < r->n_map; i++) {
        free(r->map[i].key);
        json_decref(r->map[i].value);
    }
    free(r->map);
    json_decref(r->map_default);
    free(r->split);
    free(r->join);
    pcre2_code_free(r->pattern);
    free(r->message);
    if (r->when != NULL) {
        source_clear(&r->when->src);
        pcre2_code_free(r->when->re);
        free(r->when->equals);
        free(r->when);
    }
}

struct compiler {
    struct diag *d;
    bool nomem;
    pcre2_code *empty; /* matches "", to check replacement syntax */
};

static char *dup_or_flag(struct compiler *c, const char *s)
{
    char *p = strdup(s);

    if (p == NULL)
        c->nomem = true;
    return p;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

/* A lead field name: non-empty dotted parts ("email", "meta.Property Type", "lofty.tags"). */
static bool field_name_ok(const char *s)
{
    size_t i, len = strlen(s);

    if (len == 0 || len > 256 || s[0] == '.' || s[len - 1] == '.')
        return false;
    for (i = 0; i + 1 < len; i++)
        if (s[i] == '.' && s[i + 1] == '.')
            return false;
    return true;
}

/* The string at obj[key], NULL when absent; reports a wrong type. */
static const char *opt_string(struct compiler *c, const json_t *obj, const char *key,
                              const char *path, bool nonempty)
{
    const json_t *v = json_object_get(obj, key);
    char p[RULES_PATH_SIZE];

    if (v == NULL)
        return NULL;
    conf_path(p, sizeof(p), path, key);
    if (!json_is_string(v)) {
        diag_add(c->d, p, "must be a string, not %s", json_kind(v));
        return NULL;
    }
    if (nonempty && json_string_length(v) == 0) {
        diag_add(c->d, p, "must not be empty");
        return NULL;
    }
    return json_string_value(v);
}

/* Index of obj[key] in names[0..n), or dflt when absent; reports an unknown name. */
static size_t opt_enum(struct compiler *c, const json_t *obj, const char *key, const char *path,
                       const char *const *names, size_t n, size_t first, size_t dflt)
{
    const char *s = opt_string(c, obj, key, path, true);
    char p[RULES_PATH_SIZE], list[256];
    size_t i, used = 0;

    if (s == NULL)
        return dflt;
    for (i = first; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    list[0] = '\0';
    for (i = first; i < n; i++) {
        int w = snprintf(list + used, sizeof(list) - used, "%s\"%s\"", i > first ? ", " : "",
                         names[i]);

        if (w < 0 || (size_t)w >= sizeof(list) - used)
            break;
        used += (size_t)w;
    }
    conf_path(p, sizeof(p), path, key);
    diag_add(c->d, p, "unknown %s \"%s\" (expected one of %s)", key, s, list);
    return dflt;
}

/* A copy of a literal (string, number, boolean, array or object; not null). */
static json_t *opt_literal(struct compiler *c, const json_t *obj, const char *key,
                           const char *path)
{
    const json_t *v = json_object_get(obj, key);
    char p[RULES_PATH_SIZE];
    json_t *copy;

    if (v == NULL)
        return NULL;
    if (json_is_null(v)) {
        conf_path(p, sizeof(p), path, key);
        diag_add(c->d, p, "must not be null (leave the key out instead)");
        return NULL;
    }
    copy = json_deep_copy(v);
    if (copy == NULL)
        c->nomem = true;
    return copy;
}

static long long opt_length(struct compiler *c, const json_t *obj, const char *key,
                            const char *path)
{
    return conf_integer(obj, key, path, -1, 0, RULES_VALUE_MAX, c->d);
}

static void compile_from(struct compiler *c, const json_t *obj, const char *path, struct rule *r)
{
    const json_t *v = json_object_get(obj, "from"), *el;
    char p[RULES_PATH_SIZE], pi[RULES_PATH_SIZE];
    const char *why;
    size_t i, n;

    conf_path(p, sizeof(p), path, "from");
    if (json_is_string(v))
        n = 1;
    else if (json_is_array(v) && json_array_size(v) > 0)
        n = json_array_size(v);
    else {
        diag_add(c->d, p, "must be a source path or a non-empty array of them, not %s",
                 json_kind(v));
        return;
    }
    r->from = calloc(n, sizeof(*r->from));
    if (r->from == NULL) {
        c->nomem = true;
        return;
    }
    for (i = 0; i < n; i++) {
        el = json_is_string(v) ? v : json_array_get(v, i);
        if (json_is_array(v))
            conf_path_index(pi, sizeof(pi), p, i);
        else
            snprintf(pi, sizeof(pi), "%s", p);
        if (!json_is_string(el)) {
            diag_add(c->d, pi, "must be a source path (a string), not %s", json_kind(el));
            continue;
        }
        if (!source_parse(json_string_value(el), &r->from[r->n_from], &why)) {
            diag_add(c->d, pi, "bad source path \"%s\": it %s", json_string_value(el), why);
            continue;
        }
        r->n_from++;
    }
}

static void compile_replace(struct compiler *c, const json_t *obj, const char *path,
                            struct rule *r)
{
    const json_t *v = json_object_get(obj, "replace"), *el;
    char p[RULES_PATH_SIZE], pi[RULES_PATH_SIZE], pp[RULES_PATH_SIZE];
    PCRE2_UCHAR out[64];
    PCRE2_SIZE outlen;
    size_t i;
    int rc;

    conf_path(p, sizeof(p), path, "replace");
    if (!json_is_array(v)) {
        diag_add(c->d, p, "must be an array of {\"pattern\": ..., \"with\": ...}, not %s",
                 json_kind(v));
        return;
    }
    r->replace = calloc(json_array_size(v) + 1, sizeof(*r->replace));
    if (r->replace == NULL) {
        c->nomem = true;
        return;
    }
    json_array_foreach(v, i, el) {
        const char *pattern, *with;
        struct replace *rp = &r->replace[r->n_replace];

        conf_path_index(pi, sizeof(pi), p, i);
        if (!json_is_object(el)) {
            diag_add(c->d, pi, "must be an object {\"pattern\": ..., \"with\": ...}, not %s",
                     json_kind(el));
            continue;
        }
        conf_check_keys(el, pi, replace_keys, c->d);
        pattern = opt_string(c, el, "pattern", pi, true);
        with = opt_string(c, el, "with", pi, false);
        if (pattern == NULL) {
            if (json_object_get(el, "pattern") == NULL)
                diag_add(c->d, pi, "missing required key \"pattern\"");
            continue;
        }
        conf_path(pp, sizeof(pp), pi, "pattern");
        rp->re = regex_compile(pattern, pp, c->d);
        rp->with = dup_or_flag(c, with != NULL ? with : "");
        r->n_replace++;
        if (rp->with == NULL || c->empty == NULL)
            continue;
        /* The replacement's own syntax ($, ${...}) is only read on a match: try it on "". */
        outlen = sizeof(out) / sizeof(out[0]);
        rc = pcre2_substitute(c->empty, (PCRE2_SPTR) "", 0, 0,
                              PCRE2_SUBSTITUTE_EXTENDED | PCRE2_SUBSTITUTE_UNSET_EMPTY |
                                  PCRE2_SUBSTITUTE_UNKNOWN_UNSET | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH,
                              NULL, NULL, (PCRE2_SPTR)rp->with, PCRE2_ZERO_TERMINATED, out,
                              &outlen);
        if (rc < 0 && rc != PCRE2_ERROR_NOMEMORY) {
            PCRE2_UCHAR msg[256];

            if (pcre2_get_error_message(rc, msg, sizeof(msg)) < 0)
                snprintf((char *)msg, sizeof(msg), "error %d", rc);
            conf_path(pp, sizeof(pp), pi, "with");
            diag_add(c->d, pp, "bad replacement: %s", (const char *)msg);
        }
    }
}

static int capture_order(const void *a, const void *b)
{
    const struct capture *x = a, *y = b;

    return x->group < y->group ? -1 : x->group > y->group;
}

/* Fills r->captures from "captures", or else from the named groups of r->match. */
static void compile_captures(struct compiler *c, const json_t *obj, const char *path,
                             struct rule *r)
{
    const json_t *v = json_object_get(obj, "captures"), *el;
    char p[RULES_PATH_SIZE], pk[RULES_PATH_SIZE];
    uint32_t ncap = 0, names = 0, entry = 0, i;
    PCRE2_SPTR table = NULL;
    const char *key;
    size_t n, index;

    conf_path(p, sizeof(p), path, "captures");
    if (v != NULL && !json_is_object(v)) {
        diag_add(c->d, p, "must be an object {\"1\": \"field\", ...}, not %s", json_kind(v));
        return;
    }
    if (v != NULL && r->match == NULL) {
        if (json_object_get(obj, "match") == NULL)
            diag_add(c->d, p, "needs a \"match\" regular expression");
        return;
    }
    if (v != NULL && json_object_get(obj, "field") != NULL) {
        diag_add(c->d, p, "give either \"field\" or \"captures\", not both");
        return;
    }
    if (r->match == NULL || (v == NULL && json_object_get(obj, "field") != NULL))
        return;
    if (pcre2_pattern_info(r->match, PCRE2_INFO_CAPTURECOUNT, &ncap) != 0 ||
        pcre2_pattern_info(r->match, PCRE2_INFO_NAMECOUNT, &names) != 0 ||
        pcre2_pattern_info(r->match, PCRE2_INFO_NAMEENTRYSIZE, &entry) != 0 ||
        pcre2_pattern_info(r->match, PCRE2_INFO_NAMETABLE, &table) != 0) {
        c->nomem = true;
        return;
    }
    n = v != NULL ? json_object_size(v) : names;
    if (n == 0)
        return;
    if (n > RULES_MAX_CAPTURES) {
        diag_add(c->d, v != NULL ? p : path, "at most %d captures may write fields",
                 RULES_MAX_CAPTURES);
        return;
    }
    r->captures = calloc(n, sizeof(*r->captures));
    if (r->captures == NULL) {
        c->nomem = true;
        return;
    }
    if (v == NULL) {
        for (i = 0; i < names; i++) {
            PCRE2_SPTR e = table + (size_t)i * entry;

            r->captures[i].group = (uint32_t)((e[0] << 8) | e[1]);
            r->captures[i].field = dup_or_flag(c, (const char *)(e + 2));
            r->n_captures++;
        }
    } else {
        json_object_foreach((json_t *)v, key, el) {
            conf_path(pk, sizeof(pk), p, key);
            if (!key_is_index(key, &index) || index == 0 || index > ncap) {
                diag_add(c->d, pk, "must name a capture group of \"match\" (1 to %u)", ncap);
                continue;
            }
            if (!json_is_string(el) || !field_name_ok(json_string_value(el))) {
                diag_add(c->d, pk, "must be the name of the lead field to write");
                continue;
            }
            r->captures[r->n_captures].group = (uint32_t)index;
            r->captures[r->n_captures].field = dup_or_flag(c, json_string_value(el));
            r->n_captures++;
        }
    }
    qsort(r->captures, r->n_captures, sizeof(*r->captures), capture_order);
}

static void compile_map(struct compiler *c, const json_t *obj, const char *path, struct rule *r)
{
    const json_t *v = json_object_get(obj, "map"), *el;
    char p[RULES_PATH_SIZE], pk[RULES_PATH_SIZE];
    const char *key;
    struct buf b;

    conf_path(p, sizeof(p), path, "map");
    if (v == NULL) {
        if (json_object_get(obj, "map_default") != NULL) {
            conf_path(p, sizeof(p), path, "map_default");
            diag_add(c->d, p, "needs a \"map\"");
        }
        return;
    }
    if (!json_is_object(v)) {
        diag_add(c->d, p, "must be an object {\"submitted value\": \"lead value\"}, not %s",
                 json_kind(v));
        return;
    }
    r->map = calloc(json_object_size(v) + 1, sizeof(*r->map));
    if (r->map == NULL) {
        c->nomem = true;
        return;
    }
    json_object_foreach((json_t *)v, key, el) {
        conf_path(pk, sizeof(pk), p, key);
        if (!json_is_string(el) && !json_is_number(el) && !json_is_boolean(el)) {
            diag_add(c->d, pk, "must be a string, number or boolean, not %s", json_kind(el));
            continue;
        }
        buf_init(&b, RULES_VALUE_MAX);
        if (buf_puts(&b, key) != LB_OK) {
            c->nomem = true;
            buf_free(&b);
            continue;
        }
        text_trim(&b);
        r->map[r->n_map].key = buf_steal(&b);
        r->map[r->n_map].value = json_deep_copy(el);
        if (r->map[r->n_map].key == NULL || r->map[r->n_map].value == NULL)
            c->nomem = true;
        r->n_map++;
    }
    el = json_object_get(obj, "map_default");
    if (el != NULL) {
        conf_path(p, sizeof(p), path, "map_default");
        if (!json_is_string(el) && !json_is_number(el) && !json_is_boolean(el))
            diag_add(c->d, p, "must be a string, number or boolean, not %s", json_kind(el));
        else
            r->map_default = opt_literal(c, obj, "map_default", path);
    }
}

static void compile_when(struct compiler *c, const json_t *obj, const char *path, struct rule *r)
{
    const json_t *v = json_object_get(obj, "when");
    char p[RULES_PATH_SIZE], pk[RULES_PATH_SIZE];
    const char *src, *why, *s;
    int kinds;

    conf_path(p, sizeof(p), path, "when");
    if (!json_is_object(v)) {
        diag_add(c->d, p, "must be an object {\"field\": ..., \"match\"|\"equals\"|\"present\": "
                          "...}, not %s", json_kind(v));
        return;
    }
    conf_check_keys(v, p, when_keys, c->d);
    r->when = calloc(1, sizeof(*r->when));
    if (r->when == NULL) {
        c->nomem = true;
        return;
    }
    src = conf_string(v, "field", p, NULL, true, c->d);
    conf_path(pk, sizeof(pk), p, "field");
    if (src != NULL && *src != '\0' && !source_parse(src, &r->when->src, &why))
        diag_add(c->d, pk, "bad source path \"%s\": it %s", src, why);
    kinds = (json_object_get(v, "match") != NULL) + (json_object_get(v, "equals") != NULL) +
            (json_object_get(v, "present") != NULL);
    if (kinds != 1) {
        diag_add(c->d, p, "needs exactly one of \"match\", \"equals\" or \"present\"");
        return;
    }
    if (json_object_get(v, "match") != NULL) {
        r->when->kind = COND_MATCH;
        s = opt_string(c, v, "match", p, true);
        conf_path(pk, sizeof(pk), p, "match");
        if (s != NULL)
            r->when->re = regex_compile(s, pk, c->d);
    } else if (json_object_get(v, "equals") != NULL) {
        r->when->kind = COND_EQUALS;
        s = opt_string(c, v, "equals", p, false);
        if (s != NULL)
            r->when->equals = dup_or_flag(c, s);
    } else {
        r->when->kind = COND_PRESENT;
        r->when->present = conf_bool(v, "present", p, true, c->d);
    }
}

/* Compiles one rule object at path into *r (which must be zeroed). Mistakes go to c->d. */
/*
 * {"parse_json": "rawRequest"}: a step that parses the JSON text at that source path in place,
 * so later rules read inside it ("rawRequest.q32_email"). Errors go under "field" (default: the
 * path as written).
 */
static void compile_parse_json(struct compiler *c, const json_t *obj, const char *path,
                               struct rule *r)
{
    char p[RULES_PATH_SIZE];
    const char *s, *why, *name;
    const struct source *src;

    r->parse_json = true;
    conf_check_keys(obj, path, parse_json_keys, c->d);
    conf_path(p, sizeof(p), path, "parse_json");
    s = opt_string(c, obj, "parse_json", path, true);
    if (s == NULL)
        return;
    r->from = calloc(1, sizeof(*r->from));
    if (r->from == NULL) {
        c->nomem = true;
        return;
    }
    if (!source_parse(s, &r->from[0], &why)) {
        diag_add(c->d, p, "bad source path \"%s\": it %s", s, why);
        return;
    }
    r->n_from = 1;
    src = &r->from[0];
    if (src->root != ROOT_FIELDS)
        diag_add(c->d, p, "must name a submitted field (not attribution. or lead.)");
    else if (src->steps[src->n_steps - 1].kind == STEP_FILTER)
        diag_add(c->d, p, "must end in a name or an index, not a [name=value] filter");
    name = opt_string(c, obj, "field", path, true);
    r->field = dup_or_flag(c, name != NULL ? name : s);
    r->required = conf_bool(obj, "required", path, false, c->d);
    s = opt_string(c, obj, "message", path, true);
    if (s != NULL)
        r->message = dup_or_flag(c, s);
    if (json_object_get(obj, "when") != NULL)
        compile_when(c, obj, path, r);
}

static void compile_rule(struct compiler *c, const json_t *obj, const char *path, struct rule *r)
{
    char p[RULES_PATH_SIZE];
    const char *s;
    bool strings, numbers;

    r->trim = true;
    r->min_length = -1;
    r->max_length = -1;
    if (!json_is_object(obj)) {
        diag_add(c->d, path, "a rule must be an object, not %s", json_kind(obj));
        return;
    }
    if (json_object_get(obj, "parse_json") != NULL) {
        compile_parse_json(c, obj, path, r);
        return;
    }
    conf_check_keys(obj, path, rule_keys, c->d);

    s = opt_string(c, obj, "field", path, true);
    if (s != NULL) {
        if (!field_name_ok(s)) {
            conf_path(p, sizeof(p), path, "field");
            diag_add(c->d, p, "\"%s\" is not a field name (dotted parts must not be empty)", s);
        } else {
            r->field = dup_or_flag(c, s);
        }
    }
    if (json_object_get(obj, "from") != NULL)
        compile_from(c, obj, path, r);
    r->value = opt_literal(c, obj, "value", path);
    r->dflt = opt_literal(c, obj, "default", path);
    r->trim = conf_bool(obj, "trim", path, true, c->d);
    r->collapse = conf_bool(obj, "collapse_spaces", path, false, c->d);
    if (json_object_get(obj, "replace") != NULL)
        compile_replace(c, obj, path, r);
    s = opt_string(c, obj, "match", path, true);
    if (s != NULL) {
        conf_path(p, sizeof(p), path, "match");
        r->match = regex_compile(s, p, c->d);
    }
    compile_captures(c, obj, path, r);
    r->text_case = (enum rule_case)opt_enum(c, obj, "case", path, case_names, CASE__MAX, 1,
                                            CASE_NONE);
    compile_map(c, obj, path, r);
    r->type = (enum rule_type)opt_enum(c, obj, "type", path, type_names, TYPE__MAX, 0,
                                       TYPE_STRING);
    s = opt_string(c, obj, "split", path, true);
    if (s != NULL)
        r->split = dup_or_flag(c, s);
    s = opt_string(c, obj, "join", path, false);
    r->join = dup_or_flag(c, s != NULL ? s : ", ");
    r->required = conf_bool(obj, "required", path, false, c->d);
    r->min_length = opt_length(c, obj, "min_length", path);
    r->max_length = opt_length(c, obj, "max_length", path);
    r->has_min = json_object_get(obj, "min") != NULL;
    r->has_max = json_object_get(obj, "max") != NULL;
    r->min = conf_number(obj, "min", path, 0, -INFINITY, INFINITY, c->d);
    r->max = conf_number(obj, "max", path, 0, -INFINITY, INFINITY, c->d);
    r->format = opt_enum(c, obj, "format", path, format_names, FORMAT__MAX, 1, 0);
    s = opt_string(c, obj, "pattern", path, true);
    if (s != NULL) {
        conf_path(p, sizeof(p), path, "pattern");
        r->pattern = regex_compile(s, p, c->d);
    }
    s = opt_string(c, obj, "message", path, true);
    if (s != NULL)
        r->message = dup_or_flag(c, s);
    if (json_object_get(obj, "when") != NULL)
        compile_when(c, obj, path, r);

    /* How the keys fit together. */
    strings = r->type == TYPE_STRING || r->type == TYPE_ARRAY;
    numbers = r->type == TYPE_INTEGER || r->type == TYPE_NUMBER;
    if (r->field == NULL && r->n_captures == 0 && json_object_get(obj, "field") == NULL &&
        json_object_get(obj, "captures") == NULL && (r->match != NULL ||
                                                     json_object_get(obj, "match") == NULL))
        diag_add(c->d, path, "this rule writes nothing: give \"field\", or a \"match\" with "
                             "named groups (?<field>...) or \"captures\"");
    if (r->n_captures > 0 && (r->type == TYPE_ARRAY || r->type == TYPE_PAIRS)) {
        conf_path(p, sizeof(p), path, "type");
        diag_add(c->d, p, "\"%s\" cannot be used with a match that writes several fields",
                 type_names[r->type]);
    }
    if (json_object_get(obj, "from") == NULL && r->value == NULL && r->dflt == NULL) {
        if (r->field == NULL && json_object_get(obj, "field") == NULL)
            diag_add(c->d, path, "needs \"from\" (the submitted field to read) or \"value\"");
        else if (r->field != NULL) {
            /* {"field": "email"} reads the submitted field of the same name. */
            const char *why;

            r->from = calloc(1, sizeof(*r->from));
            if (r->from == NULL)
                c->nomem = true;
            else if (!source_parse(r->field, &r->from[0], &why))
                diag_add(c->d, path, "needs \"from\": the field name \"%s\" is not a source "
                                     "path (it %s)", r->field, why);
            else
                r->n_from = 1;
        }
    }
    if (r->split != NULL && r->type != TYPE_ARRAY) {
        conf_path(p, sizeof(p), path, "split");
        diag_add(c->d, p, "only applies to \"type\": \"array\"");
    }
    if ((r->has_min || r->has_max) && !numbers)
        diag_add(c->d, path, "\"min\" and \"max\" need \"type\": \"integer\" or \"number\"; "
                             "use \"min_length\"/\"max_length\" for text");
    if ((r->min_length >= 0 || r->max_length >= 0 || r->format != 0 || r->pattern != NULL) &&
        !strings)
        diag_add(c->d, path, "\"min_length\", \"max_length\", \"format\" and \"pattern\" "
                             "apply to \"type\": \"string\" or \"array\" only");
    if (r->min_length >= 0 && r->max_length >= 0 && r->min_length > r->max_length)
        diag_add(c->d, path, "\"min_length\" is larger than \"max_length\"");
    if (r->has_min && r->has_max && r->min > r->max)
        diag_add(c->d, path, "\"min\" is larger than \"max\"");
}

struct ruleset *rules_compile(const json_t *form, const char *path, struct diag *d)
{
    struct compiler c = {d, false, NULL};
    struct ruleset *rs = calloc(1, sizeof(*rs));
    const json_t *rules, *el;
    char p[RULES_PATH_SIZE], pi[RULES_PATH_SIZE];
    const char *s;
    size_t before = d->count, i;
    int errcode;
    PCRE2_SIZE offset;

    if (rs == NULL) {
        diag_add(d, path, "out of memory");
        return NULL;
    }
    rs->unused_to_meta = true;
    rs->attribution = true;
    if (!json_is_object(form)) {
        diag_add(d, path, "a form must be an object");
        goto out;
    }
    rs->mctx = pcre2_match_context_create(NULL);
    c.empty = pcre2_compile((PCRE2_SPTR) "", 0, PCRE2_UTF, &errcode, &offset, NULL);
    if (rs->mctx == NULL || c.empty == NULL) {
        c.nomem = true;
        goto out;
    }
    if (pcre2_set_match_limit(rs->mctx, RULES_MATCH_LIMIT) != 0 ||
        pcre2_set_depth_limit(rs->mctx, RULES_DEPTH_LIMIT) != 0 ||
        pcre2_set_heap_limit(rs->mctx, RULES_HEAP_LIMIT_KIB) != 0) {
        c.nomem = true;
        goto out;
    }
    rules = json_object_get(form, "rules");
    conf_path(p, sizeof(p), path, "rules");
    if (rules != NULL && !json_is_array(rules)) {
        diag_add(d, p, "must be an array of rules, not %s", json_kind(rules));
    } else if (rules != NULL && json_array_size(rules) > 0) {
        rs->rules = calloc(json_array_size(rules), sizeof(*rs->rules));
        if (rs->rules == NULL) {
            c.nomem = true;
            goto out;
        }
        json_array_foreach(rules, i, el) {
            conf_path_index(pi, sizeof(pi), p, i);
            rs->n_rules++;
            compile_rule(&c, el, pi, &rs->rules[i]);
            rs->has_parse_json |= rs->rules[i].parse_json;
        }
    }
    s = opt_string(&c, form, "unused_fields", path, true);
    if (s != NULL && strcmp(s, "drop") == 0) {
        rs->unused_to_meta = false;
    } else if (s != NULL && strcmp(s, "meta") != 0) {
        conf_path(p, sizeof(p), path, "unused_fields");
        diag_add(d, p, "must be \"meta\" or \"drop\"");
    }
    rs->attribution = conf_bool(form, "attribution", path, true, d);
out:
    if (c.nomem)
        diag_add(d, path, "out of memory while compiling rules");
    pcre2_code_free(c.empty);
    if (d->count > before || c.nomem) {
        rules_free(rs);
        return NULL;
    }
    return rs;
}

void rules_free(struct ruleset *rs)
{
    size_t i;

    if (rs == NULL)
        return;
    for (i = 0; i < rs->n_rules; i++)
        rule_clear(&rs->rules[i]);
    free(rs->rules);
    pcre2_match_context_free(rs->mctx);
    free(rs);
}

void rules_thread_cleanup(void)
{
    pcre2_match_data_free(tl_match);
    tl_match = NULL;
    tl_pairs = 0;
}

/* ---- applying ---- */

/* Records message for field unless the field already has an error. */
static enum lb_err add_error(json_t *errors, const char *field, const char *message)
{
    json_t *s;

    if (json_object_get(errors, field) != NULL)
        return LB_OK;
    s = json_string(message);
    if (s == NULL || json_object_set_new(errors, field, s) != 0)
        return LB_ERR_NOMEM;
    return LB_OK;
}

/* Sets lead[field] (dotted: nested objects are made as needed). Steals value. */
static enum lb_err write_field(json_t *lead, const char *field, json_t *value)
{
    const char *dot;
    char key[257];
    json_t *obj = lead, *next;
    size_t len;

    while ((dot = strchr(field, '.')) != NULL) {
        len = (size_t)(dot - field);
        if (len >= sizeof(key))
            len = sizeof(key) - 1;
        memcpy(key, field, len);
        key[len] = '\0';
        next = json_object_get(obj, key);
        if (!json_is_object(next)) {
            next = json_object();
            if (next == NULL || json_object_set_new(obj, key, next) != 0) {
                json_decref(value);
                return LB_ERR_NOMEM;
            }
        }
        obj = next;
        field = dot + 1;
    }
    return json_object_set_new(obj, field, value) == 0 ? LB_OK : LB_ERR_NOMEM;
}

/* The first non-empty source of r, else r->value. Borrowed; NULL when there is nothing. */
static const json_t *rule_input(const struct rule *r, const struct inputs *in)
{
    size_t i;
    const json_t *v;

    for (i = 0; i < r->n_from; i++) {
        v = source_resolve(&r->from[i], in);
        if (!value_is_empty(v))
            return v;
    }
    return r->value;
}

static enum lb_err cond_holds(const struct ruleset *rs, const struct cond *cd,
                              const struct inputs *in, bool *holds)
{
    const json_t *v = source_resolve(&cd->src, in);
    struct buf b;
    pcre2_match_data *md;
    enum lb_err e;

    *holds = false;
    buf_init(&b, RULES_VALUE_MAX);
    e = v != NULL ? text_append(&b, v, ", ") : LB_OK;
    if (e == LB_ERR_TOO_LARGE)
        e = LB_OK;
    if (e != LB_OK)
        goto out;
    text_trim(&b);
    switch (cd->kind) {
    case COND_PRESENT:
        *holds = (b.len > 0) == cd->present;
        break;
    case COND_EQUALS:
        *holds = ascii_eq_nocase(b.len > 0 ? b.data : "", b.len, cd->equals);
        break;
    case COND_MATCH:
        *holds = regex_match(rs, cd->re, b.len > 0 ? b.data : "", b.len, &md) == 1;
        break;
    }
out:
    buf_free(&b);
    return e;
}

static const json_t *map_lookup(const struct rule *r, const struct buf *b)
{
    size_t i, start = 0, end = b->len;
    const char *s = b->len > 0 ? b->data : "";

    while (start < end && space_at(s, end, start) == 1)
        start++;
    while (end > start && space_at(s, end, end - 1) == 1)
        end--;
    for (i = 0; i < r->n_map; i++)
        if (ascii_eq_nocase(s + start, end - start, r->map[i].key))
            return r->map[i].value;
    return r->map_default;
}

/*
 * The message for a failed check: the rule's "message" when it has one, else the default.
 * Writes into msg (RULES_MESSAGE_SIZE bytes) and returns LB_ERR_INVALID_FIELDS.
 */
static enum lb_err field_fail(const struct rule *r, char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum lb_err field_fail(const struct rule *r, char *msg, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (r->message != NULL) {
        n = snprintf(msg, RULES_MESSAGE_SIZE, "%s", r->message);
    } else {
        va_start(ap, fmt);
        n = vsnprintf(msg, RULES_MESSAGE_SIZE, fmt, ap);
        va_end(ap);
    }
    if (n < 0)
        msg[0] = '\0';
    return LB_ERR_INVALID_FIELDS;
}

/* Checks (and normalises) one text value: format, lengths, pattern. */
static enum lb_err check_text(const struct ruleset *rs, const struct rule *r, struct buf *b,
                              char *msg)
{
    pcre2_match_data *md;
    size_t chars;
    int rc;

    if (r->format != 0 && !formats[r->format].check(b))
        return field_fail(r, msg, "%s", formats[r->format].message);
    chars = utf8_chars(b->data, b->len);
    if (r->min_length >= 0 && chars < (size_t)r->min_length)
        return field_fail(r, msg, "must be at least %lld characters", r->min_length);
    if (r->max_length >= 0 && chars > (size_t)r->max_length)
        return field_fail(r, msg, "must be at most %lld characters", r->max_length);
    if (r->pattern != NULL) {
        if (b->len > RULES_REGEX_SUBJECT_MAX)
            return field_fail(r, msg, "is too long");
        rc = regex_match(rs, r->pattern, b->len > 0 ? b->data : "", b->len, &md);
        if (rc < 0)
            return field_fail(r, msg, "could not be checked");
        if (rc == 0)
            return field_fail(r, msg, "not in the expected format");
    }
    return LB_OK;
}

static bool parse_integer(const char *s, json_int_t *out)
{
    char *end;
    long long n;

    if (!(ascii_digit(s[0]) || ((s[0] == '-' || s[0] == '+') && ascii_digit(s[1]))))
        return false;
    errno = 0;
    n = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = (json_int_t)n;
    return true;
}

static bool parse_number(const char *s, double *out)
{
    char *end;
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!ascii_digit(s[i]) && strchr("+-.eE", s[i]) == NULL)
            return false;
    if (i == 0)
        return false;
    errno = 0;
    *out = strtod(s, &end);
    return errno == 0 && *end == '\0' && isfinite(*out);
}

static enum lb_err check_range(const struct rule *r, double n, char *msg)
{
    if (r->has_min && n < r->min)
        return field_fail(r, msg, "must be at least %g", r->min);
    if (r->has_max && n > r->max)
        return field_fail(r, msg, "must be at most %g", r->max);
    return LB_OK;
}

/*
 * Turns v (borrowed: a string, or a mapped literal) into the rule's type and checks it.
 * On LB_OK *out is a new value; LB_ERR_INVALID_FIELDS with msg set; LB_ERR_NOMEM.
 */
static enum lb_err finish_scalar(const struct ruleset *rs, const struct rule *r, const json_t *v,
                                 json_t **out, char *msg)
{
    static const char *const yes[] = {"on", "yes", "true", "1", "y", "checked", NULL};
    static const char *const no[] = {"off", "no", "false", "0", "", "n", NULL};
    struct buf b;
    json_int_t i = 0;
    double n;
    bool bad;
    size_t k;
    enum lb_err e;

    *out = NULL;
    buf_init(&b, RULES_VALUE_MAX);
    e = text_append(&b, v, ", ");
    if (e == LB_ERR_TOO_LARGE)
        e = field_fail(r, msg, "is too long");
    if (e != LB_OK)
        goto out;
    switch (r->type) {
    case TYPE_STRING:
    case TYPE_ARRAY:
        e = check_text(rs, r, &b, msg);
        if (e == LB_OK) {
            *out = text_to_json(&b, &bad);
            if (*out == NULL)
                e = bad ? field_fail(r, msg, "is not valid text") : LB_ERR_NOMEM;
        }
        break;
    case TYPE_INTEGER:
        if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
            fabs(json_real_value(v)) < 9e15)
            i = (json_int_t)json_real_value(v);
        else if (!parse_integer(b.len > 0 ? b.data : "", &i))
            e = field_fail(r, msg, "must be a whole number");
        if (e == LB_OK)
            e = check_range(r, (double)i, msg);
        if (e == LB_OK && (*out = json_integer(i)) == NULL)
            e = LB_ERR_NOMEM;
        break;
    case TYPE_NUMBER:
        if (parse_integer(b.len > 0 ? b.data : "", &i)) {
            e = check_range(r, (double)i, msg);
            if (e == LB_OK && (*out = json_integer(i)) == NULL)
                e = LB_ERR_NOMEM;
        } else if (parse_number(b.len > 0 ? b.data : "", &n)) {
            e = check_range(r, n, msg);
            if (e == LB_OK && (*out = json_real(n)) == NULL)
                e = LB_ERR_NOMEM;
        } else {
            e = field_fail(r, msg, "must be a number");
        }
        break;
    case TYPE_BOOLEAN:
        for (k = 0; yes[k] != NULL; k++)
            if (ascii_eq_nocase(b.len > 0 ? b.data : "", b.len, yes[k]))
                *out = json_true();
        for (k = 0; no[k] != NULL; k++)
            if (ascii_eq_nocase(b.len > 0 ? b.data : "", b.len, no[k]))
                *out = json_false();
        if (*out == NULL)
            e = field_fail(r, msg, "must be yes or no");
        break;
    case TYPE_PAIRS:
    case TYPE__MAX:
        e = LB_ERR_INTERNAL;
        break;
    }
out:
    buf_free(&b);
    return e;
}

/*
 * Case, map and type for one piece of text in b. *out is a new value, or NULL when the piece came
 * out empty (nothing to write).
 */
static enum lb_err finish_text(const struct ruleset *rs, const struct rule *r, struct buf *b,
                               json_t **out, char *msg)
{
    const json_t *mapped;
    json_t *s;
    enum lb_err e;
    bool bad;

    *out = NULL;
    if (r->trim)
        text_trim(b);
    text_case(b, r->text_case);
    if (b->len == 0 || all_space(b->data, b->len))
        return LB_OK;
    mapped = r->n_map > 0 ? map_lookup(r, b) : NULL;
    if (mapped != NULL)
        return finish_scalar(rs, r, mapped, out, msg);
    s = text_to_json(b, &bad);
    if (s == NULL)
        return bad ? field_fail(r, msg, "is not valid text") : LB_ERR_NOMEM;
    e = finish_scalar(rs, r, s, out, msg);
    json_decref(s);
    return e;
}

/* Trim, collapse_spaces and replace over b. */
static enum lb_err transform_text(const struct ruleset *rs, const struct rule *r, struct buf *b,
                                  char *msg)
{
    size_t i;
    enum lb_err e;

    if (r->trim)
        text_trim(b);
    if (r->collapse)
        text_collapse(b);
    for (i = 0; i < r->n_replace; i++) {
        e = regex_replace(rs, &r->replace[i], b);
        if (e == LB_ERR_TOO_LARGE)
            return field_fail(r, msg, "is too long");
        if (e == LB_ERR_INVALID_FIELDS)
            return field_fail(r, msg, "could not be checked");
        if (e != LB_OK)
            return e;
    }
    return LB_OK;
}

/*
 * Narrows b to the value "match" picks (group 1 when the pattern has groups and it took part,
 * else the whole match). *matched is false when the pattern did not match.
 */
static enum lb_err match_single(const struct ruleset *rs, const struct rule *r, struct buf *b,
                                bool *matched, char *msg)
{
    pcre2_match_data *md;
    PCRE2_SIZE *ov;
    size_t start, end;
    int rc;

    *matched = true;
    if (r->match == NULL)
        return LB_OK;
    if (b->len > RULES_REGEX_SUBJECT_MAX)
        return field_fail(r, msg, "is too long");
    rc = regex_match(rs, r->match, b->len > 0 ? b->data : "", b->len, &md);
    if (rc < 0)
        return field_fail(r, msg, "could not be checked");
    if (rc == 0) {
        *matched = false;
        return LB_OK;
    }
    ov = pcre2_get_ovector_pointer(md);
    start = ov[0];
    end = ov[1];
    if (pcre2_get_ovector_count(md) > 1 && ov[2] != PCRE2_UNSET) {
        start = ov[2];
        end = ov[3];
    }
    if (end < start)
        end = start;
    if (b->data != NULL) {
        memmove(b->data, b->data + start, end - start);
        b->len = end - start;
        b->data[b->len] = '\0';
    }
    return LB_OK;
}

/* Builds the array value of a "type": "array" rule from in. *out is NULL when it came out empty. */
static enum lb_err build_array(const struct ruleset *rs, const struct rule *r, const json_t *in,
                               json_t **out, char *msg)
{
    const char *sep = r->split != NULL ? r->split : ",";
    json_t *arr = json_array(), *piece = NULL;
    struct buf whole, b;
    const char *s, *next;
    size_t i = 0, n;
    bool matched;
    enum lb_err e = LB_ERR_NOMEM;

    *out = NULL;
    buf_init(&whole, RULES_VALUE_MAX);
    buf_init(&b, RULES_VALUE_MAX);
    if (arr == NULL)
        goto out;
    if (json_is_array(in)) {
        n = json_array_size(in);
    } else {
        e = text_append(&whole, in, ", ");
        if (e != LB_OK)
            goto out;
        n = SIZE_MAX;
    }
    s = whole.len > 0 ? whole.data : "";
    for (i = 0; i < n; i++) {
        buf_reset(&b);
        if (n != SIZE_MAX) {
            e = text_append(&b, json_array_get(in, i), ", ");
        } else {
            next = strstr(s, sep);
            e = buf_append(&b, s, next != NULL ? (size_t)(next - s) : strlen(s));
            s = next != NULL ? next + strlen(sep) : NULL;
        }
        if (e == LB_OK)
            e = transform_text(rs, r, &b, msg);
        if (e == LB_OK)
            e = match_single(rs, r, &b, &matched, msg);
        if (e == LB_OK && matched)
            e = finish_text(rs, r, &b, &piece, msg);
        if (e == LB_OK && piece != NULL && json_array_append_new(arr, piece) != 0)
            e = LB_ERR_NOMEM;
        piece = NULL;
        if (e != LB_OK)
            goto out;
        if (n == SIZE_MAX && s == NULL)
            break;
    }
    if (json_array_size(arr) > 0) {
        *out = arr;
        arr = NULL;
    }
    e = LB_OK;
out:
    if (e == LB_ERR_TOO_LARGE)
        e = field_fail(r, msg, "is too long");
    json_decref(arr);
    buf_free(&whole);
    buf_free(&b);
    return e;
}

static enum lb_err pair_append(json_t *pairs, const json_t *q, const json_t *a)
{
    struct buf bq, ba;
    json_t *pair = NULL, *sq = NULL, *sa = NULL;
    enum lb_err e;
    bool bad;

    buf_init(&bq, RULES_VALUE_MAX);
    buf_init(&ba, RULES_VALUE_MAX);
    e = text_append(&bq, q, ", ");
    if (e == LB_OK)
        e = text_append(&ba, a, ", ");
    if (e != LB_OK)
        goto out;
    text_trim(&bq);
    text_trim(&ba);
    if (bq.len == 0 || ba.len == 0)
        goto out;
    e = LB_ERR_NOMEM;
    sq = text_to_json(&bq, &bad);
    sa = text_to_json(&ba, &bad);
    pair = json_array();
    if (sq == NULL || sa == NULL || pair == NULL)
        goto out;
    if (json_array_append(pair, sq) != 0 || json_array_append(pair, sa) != 0 ||
        json_array_append(pairs, pair) != 0)
        goto out;
    e = LB_OK;
out:
    json_decref(sq);
    json_decref(sa);
    json_decref(pair);
    buf_free(&bq);
    buf_free(&ba);
    return e;
}

/*
 * Builds [[question, answer], ...] from an object {"q": "a"} or an array of [q, a] pairs. Pairs
 * with an empty side are left out. *out is NULL when none remain.
 */
static enum lb_err build_pairs(const struct rule *r, const json_t *in, json_t **out, char *msg)
{
    json_t *pairs = json_array();
    const json_t *el;
    const char *k;
    enum lb_err e = LB_ERR_NOMEM;
    json_t *q;
    size_t i;

    *out = NULL;
    if (pairs == NULL)
        return e;
    if (json_is_object(in)) {
        json_object_foreach((json_t *)in, k, el) {
            q = json_string(k);
            e = q != NULL ? pair_append(pairs, q, el) : LB_ERR_NOMEM;
            json_decref(q);
            if (e != LB_OK)
                goto out;
        }
    } else if (json_is_array(in)) {
        json_array_foreach(in, i, el) {
            if (!json_is_array(el) || json_array_size(el) != 2) {
                e = field_fail(r, msg, "not a list of questions and answers");
                goto out;
            }
            e = pair_append(pairs, json_array_get(el, 0), json_array_get(el, 1));
            if (e != LB_OK)
                goto out;
        }
    } else {
        e = field_fail(r, msg, "not a list of questions and answers");
        goto out;
    }
    if (json_array_size(pairs) > 0) {
        *out = pairs;
        pairs = NULL;
    }
    e = LB_OK;
out:
    if (e == LB_ERR_TOO_LARGE)
        e = field_fail(r, msg, "is too long");
    json_decref(pairs);
    return e;
}

/*
 * Runs a string-like rule over in: text, transforms, then either one value for r->field or one
 * per capture. Writes values into lead and errors into errors; *wrote tells whether anything
 * (a value or an error) came out.
 */
static enum lb_err apply_text(const struct ruleset *rs, const struct rule *r, const json_t *in,
                              json_t *lead, json_t *errors, bool *wrote)
{
    char msg[RULES_MESSAGE_SIZE];
    struct buf b, piece;
    pcre2_match_data *md;
    PCRE2_SIZE *ov;
    json_t *v = NULL;
    bool matched;
    size_t i;
    int rc;
    enum lb_err e;

    *wrote = false;
    buf_init(&b, RULES_VALUE_MAX);
    buf_init(&piece, RULES_VALUE_MAX);
    e = text_append(&b, in, r->join);
    if (e == LB_ERR_TOO_LARGE)
        e = field_fail(r, msg, "is too long");
    if (e == LB_OK)
        e = transform_text(rs, r, &b, msg);
    if (e == LB_OK && r->n_captures == 0) {
        e = match_single(rs, r, &b, &matched, msg);
        if (e == LB_OK && matched)
            e = finish_text(rs, r, &b, &v, msg);
        if (e == LB_OK && v != NULL) {
            *wrote = true;
            e = write_field(lead, r->field, v);
        }
    } else if (e == LB_OK) {
        rc = b.len > RULES_REGEX_SUBJECT_MAX
                 ? -2
                 : regex_match(rs, r->match, b.len > 0 ? b.data : "", b.len, &md);
        if (rc == -2)
            e = field_fail(r, msg, "is too long");
        else if (rc < 0)
            e = field_fail(r, msg, "could not be checked");
        for (i = 0; rc == 1 && i < r->n_captures && e == LB_OK; i++) {
            ov = pcre2_get_ovector_pointer(md);
            if (r->captures[i].group >= pcre2_get_ovector_count(md) ||
                ov[2 * r->captures[i].group] == PCRE2_UNSET)
                continue;
            buf_reset(&piece);
            e = buf_append(&piece, b.data + ov[2 * r->captures[i].group],
                           ov[2 * r->captures[i].group + 1] - ov[2 * r->captures[i].group]);
            if (e == LB_OK)
                e = finish_text(rs, r, &piece, &v, msg);
            if (e == LB_ERR_INVALID_FIELDS) {
                *wrote = true;
                e = add_error(errors, r->captures[i].field, msg);
            } else if (e == LB_OK && v != NULL) {
                *wrote = true;
                e = write_field(lead, r->captures[i].field, v);
            }
            v = NULL;
        }
    }
    if (e == LB_ERR_INVALID_FIELDS) {
        *wrote = true;
        e = add_error(errors, r->field != NULL ? r->field : r->captures[0].field, msg);
    }
    buf_free(&b);
    buf_free(&piece);
    return e;
}

/*
 * Runs a parse_json step: the string at r->from[0] in the working copy of the fields is replaced
 * by the JSON it holds. Malformed or oversized JSON is a field error under r->field; a value that
 * is already an object or array is left as it is.
 */
static enum lb_err apply_parse_json(const struct ruleset *rs, const struct rule *r,
                                    const struct inputs *in, json_t *errors)
{
    const struct source *src = &r->from[0];
    const struct step *last = &src->steps[src->n_steps - 1];
    const json_t *v, *parent;
    json_t *parsed = NULL, *container;
    struct lb_error err = {LB_OK, ""};
    bool holds = true;
    enum lb_err e;
    size_t i;
    int rc = -1;

    if (r->when != NULL) {
        e = cond_holds(rs, r->when, in, &holds);
        if (e != LB_OK || !holds)
            return e;
    }
    v = source_resolve(src, in);
    if (value_is_empty(v))
        return r->required ? add_error(errors, r->field,
                                       r->message != NULL ? r->message : "is required")
                           : LB_OK;
    if (!json_is_string(v))
        return LB_OK;
    e = parse_json_value(json_string_value(v), json_string_length(v), NULL, &parsed, &err);
    if (e == LB_ERR_NOMEM)
        return e;
    if (e != LB_OK)
        return add_error(errors, r->field,
                         r->message != NULL               ? r->message
                         : e == LB_ERR_BAD_REQUEST        ? "is not valid JSON"
                         : e == LB_ERR_TOO_DEEP           ? "holds JSON nested too deeply"
                                                          : "holds too much JSON");
    parent = in->fields;
    for (i = 0; i + 1 < src->n_steps && parent != NULL; i++)
        parent = step_get(parent, &src->steps[i]);
    container = (json_t *)parent; /* in->fields is this call's own copy */
    if (last->kind == STEP_INDEX && json_is_array(container))
        rc = json_array_set_new(container, last->index, parsed);
    else if (last->kind == STEP_INDEX && json_is_object(container)) {
        char key[32];

        snprintf(key, sizeof(key), "%zu", last->index);
        rc = json_object_set_new(container, key, parsed);
    } else if (json_is_object(container)) {
        rc = json_object_set_new(container, last->key, parsed);
    } else if (json_is_array(container) && key_is_index(last->key, &i)) {
        rc = json_array_set_new(container, i, parsed);
    } else {
        json_decref(parsed);
        rc = 0;
    }
    return rc == 0 ? LB_OK : LB_ERR_NOMEM;
}

static enum lb_err apply_rule(const struct ruleset *rs, const struct rule *r,
                              const struct inputs *in, json_t *lead, json_t *errors)
{
    char msg[RULES_MESSAGE_SIZE];
    const char *err_field = r->field != NULL ? r->field : r->captures[0].field;
    const json_t *input;
    json_t *v = NULL;
    bool holds = true, wrote = false;
    enum lb_err e = LB_OK;

    if (r->parse_json)
        return apply_parse_json(rs, r, in, errors);
    if (r->when != NULL) {
        e = cond_holds(rs, r->when, in, &holds);
        if (e != LB_OK || !holds)
            return e;
    }
    input = rule_input(r, in);
    if (input != NULL && !value_is_empty(input)) {
        if (r->type == TYPE_ARRAY)
            e = build_array(rs, r, input, &v, msg);
        else if (r->type == TYPE_PAIRS)
            e = build_pairs(r, input, &v, msg);
        else
            e = apply_text(rs, r, input, lead, errors, &wrote);
        if (e == LB_ERR_INVALID_FIELDS) {
            wrote = true;
            e = add_error(errors, err_field, msg);
        } else if (e == LB_OK && v != NULL) {
            wrote = true;
            e = write_field(lead, r->field, v);
        }
        if (e != LB_OK)
            return e;
    }
    if (wrote)
        return LB_OK;
    if (r->dflt != NULL) {
        v = json_deep_copy(r->dflt);
        return v != NULL ? write_field(lead, err_field, v) : LB_ERR_NOMEM;
    }
    if (r->required)
        return add_error(errors, err_field, r->message != NULL ? r->message : "is required");
    return LB_OK;
}

/* True when a rule reads the submitted top-level field name through "from". */
static bool field_was_read(const struct ruleset *rs, const char *name)
{
    size_t i, j, index;
    const struct source *s;

    for (i = 0; i < rs->n_rules; i++) {
        for (j = 0; j < rs->rules[i].n_from; j++) {
            s = &rs->rules[i].from[j];
            if (s->root != ROOT_FIELDS || s->n_steps == 0)
                continue;
            if (s->steps[0].kind == STEP_KEY && strcmp(s->steps[0].key, name) == 0)
                return true;
            if (s->steps[0].kind == STEP_INDEX && key_is_index(name, &index) &&
                index == s->steps[0].index)
                return true;
        }
    }
    return false;
}

static bool meta_skips(const char *name)
{
    size_t i;

    if (name[0] == '\0' || name[0] == '_' || strncmp(name, "lb_", 3) == 0 ||
        strncmp(name, "utm_", 4) == 0)
        return true;
    for (i = 0; meta_skip_names[i] != NULL; i++)
        if (strcmp(name, meta_skip_names[i]) == 0)
            return true;
    return false;
}

/*
 * Adds each submitted field no rule read to lead.meta as a string, in submission order, keeping
 * meta's compact JSON within RULES_META_MAX bytes; keys a rule set are never overwritten.
 */
static enum lb_err gather_unused(const struct ruleset *rs, const json_t *fields, json_t *lead)
{
    json_t *meta = json_object_get(lead, "meta"), *s;
    const json_t *v;
    const char *name;
    struct buf b;
    bool created = false, bad;
    enum lb_err e = LB_OK;

    if (meta != NULL && !json_is_object(meta))
        return LB_OK;
    if (meta == NULL) {
        meta = json_object();
        if (meta == NULL)
            return LB_ERR_NOMEM;
        created = true;
    }
    buf_init(&b, RULES_META_MAX);
    json_object_foreach((json_t *)fields, name, v) {
        if (meta_skips(name) || field_was_read(rs, name) || json_object_get(meta, name) != NULL)
            continue;
        buf_reset(&b);
        e = text_append(&b, v, ", ");
        if (e == LB_ERR_TOO_LARGE) {
            e = LB_OK;
            continue;
        }
        if (e != LB_OK)
            goto out;
        text_trim(&b);
        if (b.len == 0)
            continue;
        s = text_to_json(&b, &bad);
        if (s == NULL && bad)
            continue;
        if (s == NULL || json_object_set_new(meta, name, s) != 0) {
            e = LB_ERR_NOMEM;
            goto out;
        }
        if (json_dumpb(meta, NULL, 0, JSON_COMPACT) > RULES_META_MAX)
            json_object_del(meta, name);
    }
    if (created && json_object_size(meta) > 0) {
        e = json_object_set(lead, "meta", meta) == 0 ? LB_OK : LB_ERR_NOMEM;
    }
out:
    if (created)
        json_decref(meta);
    buf_free(&b);
    return e;
}

static enum lb_err copy_attribution(const json_t *attribution, json_t *lead)
{
    size_t i;
    const json_t *v;
    json_t *s;

    for (i = 0; attribution_lead_keys[i] != NULL; i++) {
        v = json_object_get(attribution, attribution_lead_keys[i]);
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_object_get(lead, attribution_lead_keys[i]) != NULL)
            continue;
        s = json_stringn(json_string_value(v), json_string_length(v));
        if (s == NULL || json_object_set_new(lead, attribution_lead_keys[i], s) != 0)
            return LB_ERR_NOMEM;
    }
    return LB_OK;
}

enum lb_err rules_apply(const struct ruleset *rs, const json_t *fields, const json_t *attribution,
                        json_t **lead, json_t **errors)
{
    json_t *l = json_object(), *errs = json_object(), *work = NULL;
    struct inputs in;
    enum lb_err e = LB_ERR_NOMEM;
    size_t i;

    *lead = NULL;
    *errors = NULL;
    if (l == NULL || errs == NULL)
        goto out;
    in.fields = json_is_object(fields) ? fields : NULL;
    if (rs->has_parse_json && in.fields != NULL) {
        /* parse_json steps replace strings in place: on a copy, the caller's stays as sent */
        work = json_deep_copy(fields);
        if (work == NULL)
            goto out;
        in.fields = work;
    }
    in.attribution = json_is_object(attribution) ? attribution : NULL;
    in.lead = l;
    for (i = 0; i < rs->n_rules; i++) {
        e = apply_rule(rs, &rs->rules[i], &in, l, errs);
        if (e != LB_OK)
            goto out;
    }
    if (rs->unused_to_meta && in.fields != NULL) {
        e = gather_unused(rs, in.fields, l);
        if (e != LB_OK)
            goto out;
    }
    if (rs->attribution && in.attribution != NULL) {
        e = copy_attribution(in.attribution, l);
        if (e != LB_OK)
            goto out;
    }
    *lead = l;
    l = NULL;
    if (json_object_size(errs) > 0) {
        *errors = errs;
        errs = NULL;
    }
    e = LB_OK;
out:
    json_decref(l);
    json_decref(errs);
    json_decref(work);
    return e;
}

/* True when rule r writes the lead field named field (its "field", or one of its captures). */
static bool rule_writes(const struct rule *r, const char *field)
{
    size_t i;

    if (r->field != NULL)
        return strcmp(r->field, field) == 0;
    for (i = 0; i < r->n_captures; i++)
        if (strcmp(r->captures[i].field, field) == 0)
            return true;
    return false;
}

/*
 * The submitted top-level name the lead field's value comes from: the first rule writing field,
 * its first "from" that was submitted (a "lead.x" source is followed to the rule writing x, at
 * most depth levels), else its first plain source. Borrowed from rs, or NULL.
 */
static const char *input_of(const struct ruleset *rs, const json_t *fields, const char *field,
                            int depth)
{
    const char *first = NULL, *name;
    const struct source *s;
    size_t i, k;

    for (i = 0; i < rs->n_rules; i++) {
        if (!rule_writes(&rs->rules[i], field))
            continue;
        for (k = 0; k < rs->rules[i].n_from; k++) {
            s = &rs->rules[i].from[k];
            if (s->n_steps == 0 || s->steps[0].kind != STEP_KEY)
                continue;
            if (s->root == ROOT_FIELDS) {
                if (json_object_get(fields, s->steps[0].key) != NULL)
                    return s->steps[0].key;
                if (first == NULL)
                    first = s->steps[0].key;
            } else if (s->root == ROOT_LEAD && s->n_steps == 1 && depth > 0) {
                name = input_of(rs, fields, s->steps[0].key, depth - 1);
                if (name != NULL)
                    return name;
            }
        }
        if (first != NULL)
            return first;
    }
    return first;
}

json_t *rules_error_inputs(const struct ruleset *rs, const json_t *fields, const json_t *errors)
{
    json_t *out = json_object();
    const char *key, *name;
    json_t *msg;

    if (out == NULL)
        return NULL;
    json_object_foreach((json_t *)errors, key, msg) {
        name = input_of(rs, json_is_object(fields) ? fields : NULL, key, 8);
        if (name == NULL)
            name = key;
        if (json_object_get(out, name) == NULL && json_object_set(out, name, msg) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}
