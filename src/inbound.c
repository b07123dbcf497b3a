/*
 * inbound.c: event ids, host and parsing limits for form builders' posts (see inbound.h).
 *
 * Source paths are compiled by the rules module (rules_source_compile), so "event_id" takes the
 * same syntax as a rule's "from": "event_id", "data.submissionId", "form_response.token".
 */
#include "inbound.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution.h"
#include "conf.h"
#include "rules.h"

#define INBOUND_PATH_SIZE 512
#define INBOUND_HOST_MAX 300

const char *const inbound_form_keys[] = {"event_id", "event_id_header", "host", "host_from",
                                         "max_fields", "max_depth", NULL};

struct inbound {
    struct rules_source *event_id;
    char *event_id_var; /* CGI variable of "event_id_header" */
    char *host;         /* a constant origin */
    struct rules_source *host_from;
    struct parse_limits limits;
};

struct inbound *inbound_compile(const json_t *form, const char *path, struct diag *d)
{
    struct inbound *ib = calloc(1, sizeof(*ib));
    const char *s;
    char p[INBOUND_PATH_SIZE], origin[INBOUND_HOST_MAX];
    size_t before = d->count;

    if (ib == NULL)
        return NULL;
    ib->limits = parse_default_limits;
    ib->limits.max_fields = (size_t)conf_integer(form, "max_fields", path,
                                                 (long long)parse_default_limits.max_fields, 1,
                                                 1000000, d);
    ib->limits.max_depth = (size_t)conf_integer(form, "max_depth", path,
                                                (long long)parse_default_limits.max_depth, 1, 64,
                                                d);
    s = conf_string(form, "event_id", path, NULL, false, d);
    if (s != NULL) {
        conf_path(p, sizeof(p), path, "event_id");
        ib->event_id = rules_source_compile(s, p, d);
    }
    s = conf_string(form, "event_id_header", path, NULL, false, d);
    if (s != NULL) {
        conf_path(p, sizeof(p), path, "event_id_header");
        ib->event_id_var = request_header_var(s);
        if (ib->event_id_var == NULL)
            diag_add(d, p, "must be a header name (letters, digits, '-')");
        if (ib->event_id != NULL)
            diag_add(d, p, "give \"event_id\" or \"event_id_header\", not both");
    }
    s = conf_string(form, "host", path, NULL, false, d);
    if (s != NULL) {
        conf_path(p, sizeof(p), path, "host");
        if (!attribution_url_origin(s, origin, sizeof(origin)) || strcmp(origin, s) != 0)
            diag_add(d, p, "must be a lower-case origin such as \"https://www.example.com\"");
        ib->host = strdup(s);
    }
    s = conf_string(form, "host_from", path, NULL, false, d);
    if (s != NULL) {
        conf_path(p, sizeof(p), path, "host_from");
        ib->host_from = rules_source_compile(s, p, d);
        if (ib->host != NULL)
            diag_add(d, p, "give \"host\" or \"host_from\", not both");
    }
    if (d->count > before) {
        inbound_free(ib);
        return NULL;
    }
    return ib;
}

void inbound_free(struct inbound *ib)
{
    if (ib == NULL)
        return;
    rules_source_free(ib->event_id);
    rules_source_free(ib->host_from);
    free(ib->event_id_var);
    free(ib->host);
    free(ib);
}

const struct parse_limits *inbound_limits(const struct inbound *ib)
{
    return ib != NULL ? &ib->limits : &parse_default_limits;
}

/* Copies s (trimmed) into out when it is a usable key: no control characters, not too long. */
static bool copy_id(const char *s, size_t len, char *out, size_t size)
{
    size_t i;

    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0 || len > INBOUND_EVENT_ID_MAX || len >= size || !parse_utf8_valid(s, len))
        return false;
    for (i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    memcpy(out, s, len);
    out[len] = '\0';
    return true;
}

bool inbound_event_id(const struct inbound *ib, const json_t *fields, env_get_fn env,
                      void *env_ctx, char *out, size_t size)
{
    const json_t *v;
    char num[32];

    if (ib == NULL || size == 0)
        return false;
    out[0] = '\0';
    if (ib->event_id_var != NULL) {
        const char *h = env(env_ctx, ib->event_id_var);

        return h != NULL && copy_id(h, strnlen(h, INBOUND_EVENT_ID_MAX + 1), out, size);
    }
    v = rules_source_get(ib->event_id, fields);
    if (json_is_string(v))
        return copy_id(json_string_value(v), json_string_length(v), out, size);
    if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return copy_id(num, strlen(num), out, size);
    }
    return false;
}

enum lb_err inbound_set_host(const struct inbound *ib, const json_t *fields, json_t *attribution)
{
    char origin[INBOUND_HOST_MAX];
    const json_t *v;

    if (ib == NULL || attribution == NULL || json_object_get(attribution, "host") != NULL)
        return LB_OK;
    if (ib->host != NULL)
        return json_object_set_new(attribution, "host", json_string(ib->host)) == 0
                   ? LB_OK
                   : LB_ERR_NOMEM;
    v = rules_source_get(ib->host_from, fields);
    if (!json_is_string(v) || !attribution_url_origin(json_string_value(v), origin, sizeof(origin)))
        return LB_OK;
    return json_object_set_new(attribution, "host", json_string(origin)) == 0 ? LB_OK
                                                                               : LB_ERR_NOMEM;
}
