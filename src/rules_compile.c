/*
 * rules_compile.c: checks a form's "rules", "unused_fields" and "attribution" keys and compiles
 * them into a struct ruleset (see rules.h; the language is described in leadbridge.conf(5)).
 *
 * Every source path is parsed and every regular expression compiled once (PCRE2, UTF + UCP, JIT
 * where available); each mistake is reported at its JSON path. The compiled ruleset is read-only
 * afterwards and shared by all threads (rules_apply.c runs it).
 */
#include "rules_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"

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

static const char *const type_names[TYPE__MAX] = {"string",  "integer", "number",
                                                  "boolean", "array",   "pairs"};
static const char *const case_names[CASE__MAX] = {"none", "upper", "lower", "title"};
static const char *const format_names[FORMAT__MAX] = {
    [FORMAT_NONE] = "none",
    [FORMAT_EMAIL] = "email",
    [FORMAT_UK_POSTCODE] = "uk_postcode",
    [FORMAT_PHONE] = "phone",
    [FORMAT_URL] = "url",
};

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
        if (start[i] < '0' || start[i] > '9')
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

void rules_source_free(struct rules_source *s)
{
    if (s == NULL)
        return;
    source_clear(&s->src);
    free(s);
}


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
        diag_add(c->d, p, "must be a string, not %s", conf_json_kind(v));
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
                 conf_json_kind(v));
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
            diag_add(c->d, pi, "must be a source path (a string), not %s", conf_json_kind(el));
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
                 conf_json_kind(v));
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
                     conf_json_kind(el));
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
        diag_add(c->d, p, "must be an object {\"1\": \"field\", ...}, not %s", conf_json_kind(v));
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
            if (!rules_key_is_index(key, &index) || index == 0 || index > ncap) {
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
                 conf_json_kind(v));
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
            diag_add(c->d, pk, "must be a string, number or boolean, not %s", conf_json_kind(el));
            continue;
        }
        buf_init(&b, RULES_VALUE_MAX);
        if (buf_puts(&b, key) != LB_OK) {
            c->nomem = true;
            buf_free(&b);
            continue;
        }
        rules_text_trim(&b);
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
            diag_add(c->d, p, "must be a string, number or boolean, not %s", conf_json_kind(el));
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
                          "...}, not %s", conf_json_kind(v));
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
        diag_add(c->d, path, "a rule must be an object, not %s", conf_json_kind(obj));
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
    r->format = (enum rule_format)opt_enum(c, obj, "format", path, format_names, FORMAT__MAX,
                                           1, 0);
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
        diag_add(d, p, "must be an array of rules, not %s", conf_json_kind(rules));
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

