/*
 * rules_apply.c: runs a compiled ruleset over a form's submitted fields (see rules.h).
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
#include "rules_int.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"

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

void rules_text_trim(struct buf *b)
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

bool rules_key_is_index(const char *key, size_t *index)
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
    if (json_is_array(v) && rules_key_is_index(key, &index))
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

const json_t *rules_source_get(const struct rules_source *s, const json_t *fields)
{
    struct inputs in = {fields, NULL, NULL};

    return s != NULL ? source_resolve(&s->src, &in) : NULL;
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

/* Each format's check (which may normalise the value) and the message when it fails. */
static const struct {
    bool (*check)(struct buf *b);
    const char *message;
} formats[FORMAT__MAX] = {
    [FORMAT_NONE] = {NULL, NULL},
    [FORMAT_EMAIL] = {format_email, "not a valid email address"},
    [FORMAT_UK_POSTCODE] = {format_uk_postcode, "not a valid UK postcode"},
    [FORMAT_PHONE] = {format_phone, "not a valid phone number"},
    [FORMAT_URL] = {format_url, "not a valid web address"},
};

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
    rules_text_trim(&b);
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
        rules_text_trim(b);
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
        rules_text_trim(b);
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
    rules_text_trim(&bq);
    rules_text_trim(&ba);
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
    } else if (json_is_array(container) && rules_key_is_index(last->key, &i)) {
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
            if (s->steps[0].kind == STEP_INDEX && rules_key_is_index(name, &index) &&
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
        rules_text_trim(&b);
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
