/*
 * conf.c: reading one part of the JSON configuration (see conf.h).
 *
 * JSON paths for messages, typed getters that report a wrong type or range under the key's path
 * and fall back to a default, the unknown-key check, and ${VAR} expansion. Nothing here knows the
 * document's shape: config.c, the rules, the targets and the outbox each read their own part.
 */
#include "conf.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

#define CONF_EXPAND_MAX (4 * 1024 * 1024) /* an expanded string, at most */
#define PATH_SIZE 512

static bool key_is_plain(const char *key)
{
    if (*key == '\0')
        return false;
    for (; *key != '\0'; key++)
        if (!isalnum((unsigned char)*key) && *key != '_' && *key != '-')
            return false;
    return true;
}

void conf_path(char *out, size_t size, const char *parent, const char *key)
{
    struct buf b;
    char *s;

    if (size == 0)
        return;
    buf_init(&b, size - 1);
    if (parent != NULL && *parent != '\0')
        buf_puts(&b, parent);
    if (key_is_plain(key)) {
        if (b.len > 0)
            buf_putc(&b, '.');
        buf_puts(&b, key);
    } else {
        buf_puts(&b, "[\"");
        for (; *key != '\0'; key++) {
            if (*key == '"' || *key == '\\')
                buf_putc(&b, '\\');
            buf_putc(&b, *key);
        }
        buf_puts(&b, "\"]");
    }
    s = b.data;
    snprintf(out, size, "%s", s != NULL ? s : "");
    buf_free(&b);
}

void conf_path_index(char *out, size_t size, const char *parent, size_t index)
{
    if (snprintf(out, size, "%s[%zu]", parent != NULL ? parent : "", index) < 0 && size > 0)
        out[0] = '\0';
}

void conf_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                     struct diag *d)
{
    const char *key;
    json_t *value;
    char p[PATH_SIZE];

    if (!json_is_object(obj))
        return;
    json_object_foreach((json_t *)obj, key, value) {
        size_t i;
        bool known = false;

        for (i = 0; allowed[i] != NULL; i++)
            if (strcmp(allowed[i], key) == 0)
                known = true;
        if (!known) {
            conf_path(p, sizeof(p), path, key);
            diag_add(d, p, "unknown key \"%s\"", key);
        }
    }
}

const char *conf_json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

const char *conf_string(const json_t *obj, const char *key, const char *path, const char *dflt,
                        bool required, struct diag *d)
{
    json_t *v = json_object_get(obj, key);
    char p[PATH_SIZE];

    conf_path(p, sizeof(p), path, key);
    if (v == NULL) {
        if (required)
            diag_add(d, path, "missing required key \"%s\"", key);
        return dflt;
    }
    if (!json_is_string(v)) {
        diag_add(d, p, "must be a string, not %s", conf_json_kind(v));
        return dflt;
    }
    if (required && json_string_length(v) == 0)
        diag_add(d, p, "must not be empty");
    return json_string_value(v);
}

long long conf_integer(const json_t *obj, const char *key, const char *path, long long dflt,
                       long long min, long long max, struct diag *d)
{
    json_t *v = json_object_get(obj, key);
    char p[PATH_SIZE];
    long long n;

    if (v == NULL)
        return dflt;
    conf_path(p, sizeof(p), path, key);
    if (!json_is_integer(v)) {
        diag_add(d, p, "must be a whole number, not %s", conf_json_kind(v));
        return dflt;
    }
    n = json_integer_value(v);
    if (n < min || n > max) {
        diag_add(d, p, "must be between %lld and %lld", min, max);
        return dflt;
    }
    return n;
}

double conf_number(const json_t *obj, const char *key, const char *path, double dflt, double min,
                   double max, struct diag *d)
{
    json_t *v = json_object_get(obj, key);
    char p[PATH_SIZE];
    double n;

    if (v == NULL)
        return dflt;
    conf_path(p, sizeof(p), path, key);
    if (!json_is_number(v)) {
        diag_add(d, p, "must be a number, not %s", conf_json_kind(v));
        return dflt;
    }
    n = json_number_value(v);
    if (n < min || n > max) {
        diag_add(d, p, "must be between %g and %g", min, max);
        return dflt;
    }
    return n;
}

bool conf_bool(const json_t *obj, const char *key, const char *path, bool dflt, struct diag *d)
{
    json_t *v = json_object_get(obj, key);
    char p[PATH_SIZE];

    if (v == NULL)
        return dflt;
    if (!json_is_boolean(v)) {
        conf_path(p, sizeof(p), path, key);
        diag_add(d, p, "must be true or false, not %s", conf_json_kind(v));
        return dflt;
    }
    return json_is_true(v);
}

/* ---- ${VAR} expansion ---- */

char *conf_expand_env(const char *s, char *missing, size_t missing_size)
{
    struct buf b;
    const char *p = s;

    if (missing_size > 0)
        missing[0] = '\0';
    buf_init(&b, CONF_EXPAND_MAX);
    while (*p != '\0') {
        const char *end, *colon, *value;
        char name[128];
        size_t name_len;

        if (p[0] != '$' || p[1] != '{') {
            if (buf_putc(&b, *p++) != LB_OK)
                goto fail;
            continue;
        }
        end = strchr(p + 2, '}');
        if (end == NULL)
            goto fail;
        colon = strstr(p + 2, ":-");
        if (colon != NULL && colon > end)
            colon = NULL;
        name_len = (size_t)((colon != NULL ? colon : end) - (p + 2));
        if (name_len == 0 || name_len >= sizeof(name))
            goto fail;
        memcpy(name, p + 2, name_len);
        name[name_len] = '\0';
        for (size_t i = 0; i < name_len; i++)
            if (!isalnum((unsigned char)name[i]) && name[i] != '_')
                goto fail;
        value = getenv(name);
        if (value != NULL && *value == '\0' && colon != NULL)
            value = NULL; /* ${VAR:-x} also replaces an empty value, as in the shell */
        if (value != NULL) {
            if (buf_puts(&b, value) != LB_OK)
                goto fail;
        } else if (colon != NULL) {
            if (buf_append(&b, colon + 2, (size_t)(end - (colon + 2))) != LB_OK)
                goto fail;
        } else {
            snprintf(missing, missing_size, "%s", name);
            buf_free(&b);
            return NULL;
        }
        p = end + 1;
    }
    return buf_steal(&b);
fail:
    buf_free(&b);
    return NULL;
}
