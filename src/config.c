/*
 * config.c: loads and checks the JSON configuration (see config.h and leadbridge.conf(5)).
 *
 * Loading is one pass that reports every mistake it can find, not just the first: syntax (with
 * jansson's line and column), unknown keys, wrong types, ${VAR} references to unset variables,
 * rules that do not compile, forms naming targets that do not exist, redirect pages that are not
 * absolute or not on an allowed origin. Messages carry file, line, column and JSON path (diag.h).
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "conf.h"
#include "inbound.h"
#include "guard.h"
#include "parse.h"
#include "quarantine.h"
#include "ratelimit.h"
#include "rules.h"
#include "target.h"
#include "verify.h"
#include "visitor.h"

#define CONFIG_MAX_SIZE (4 * 1024 * 1024)
#define PATH_SIZE 512

static const char *const form_action_names[FORM_ACTION__MAX] = {
    [FORM_ECHO] = "echo",
    [FORM_CREATE] = "create",
    [FORM_VALUATION] = "valuation",
    [FORM_UPDATE] = "update",
};

const char *form_action_name(enum form_action a)
{
    return (unsigned)a < FORM_ACTION__MAX ? form_action_names[a] : "?";
}

/* ---- ${VAR} expansion of the whole document ---- */

/*
 * Replaces every string in v (recursively) by its expansion; reports unset variables. A form's
 * "rules" are not expanded: their replacements use ${1} and ${name}, and secrets have no place
 * there. level says where v is: 0 the document, 1 the "forms" object, 2 a form, 3 elsewhere.
 */
static void expand_tree(json_t *v, const char *path, int level, struct diag *d)
{
    char p[PATH_SIZE];

    if (json_is_object(v)) {
        const char *key;
        json_t *child;

        json_object_foreach(v, key, child) {
            int next = 3;

            if (level == 0 && strcmp(key, "forms") == 0)
                next = 1;
            else if (level == 1)
                next = 2;
            else if (level == 2 && strcmp(key, "rules") == 0)
                continue;
            conf_path(p, sizeof(p), path, key);
            expand_tree(child, p, next, d);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;

        json_array_foreach(v, i, child) {
            conf_path_index(p, sizeof(p), path, i);
            expand_tree(child, p, 3, d);
        }
    } else if (json_is_string(v) && strstr(json_string_value(v), "${") != NULL) {
        char missing[128];
        char *x = conf_expand_env(json_string_value(v), missing, sizeof(missing));

        if (x == NULL) {
            if (missing[0] != '\0')
                diag_add(d, path, "environment variable %s is not set", missing);
            else
                diag_add(d, path, "bad ${VAR} reference (write ${NAME} or ${NAME:-default})");
            return;
        }
        json_string_set(v, x);
        free(x);
    }
}

/* ---- The document ---- */

static const char *const top_keys[] = {
    "secret", "ref_ttl", "spool", "threads", "read_timeout", "body_limit", "attribution",
    "targets", "forms", "outbox", "metrics", "health", "notify", "spam", NULL,
};
static const char *const spam_keys[] = {"retention", "shared_slots", NULL};
static const char *const attribution_keys[] = {"cookie", "trusted_proxies", "max_value", NULL};
static const char *const form_base_keys[] = {
    "path", "action", "targets", "origins", "success_page", "error_page", "body_limit",
    "webhook_secret", "verify",
};

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* Reads an array of strings at obj[key] into a new NULL-free array; reports mistakes. */
static char **string_array(const json_t *obj, const char *key, const char *path, size_t *n,
                           struct diag *d)
{
    json_t *arr = json_object_get(obj, key);
    char p[PATH_SIZE];
    char **out;
    size_t i;
    json_t *v;

    *n = 0;
    if (arr == NULL)
        return NULL;
    conf_path(p, sizeof(p), path, key);
    if (!json_is_array(arr)) {
        diag_add(d, p, "must be an array of strings");
        return NULL;
    }
    out = calloc(json_array_size(arr) + 1, sizeof(*out));
    if (out == NULL)
        return NULL;
    json_array_foreach(arr, i, v) {
        char ip[PATH_SIZE];

        if (!json_is_string(v)) {
            conf_path_index(ip, sizeof(ip), p, i);
            diag_add(d, ip, "must be a string");
            continue;
        }
        out[(*n)++] = strdup(json_string_value(v));
    }
    return out;
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The scheme://host[:port] prefix length of an absolute http(s) URL, or 0. */
static size_t url_origin_length(const char *url)
{
    const char *p;

    if (strncmp(url, "https://", 8) == 0)
        p = url + 8;
    else if (strncmp(url, "http://", 7) == 0)
        p = url + 7;
    else
        return 0;
    if (*p == '\0' || *p == '/')
        return 0;
    while (*p != '\0' && *p != '/' && *p != '?' && *p != '#')
        p++;
    return (size_t)(p - url);
}

static bool has_control(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* Checks a redirect page: absolute http(s), no control characters, origin allow-listed. */
static void check_page(const struct form *f, const char *key, const char *url, const char *path,
                       struct diag *d)
{
    char p[PATH_SIZE];
    size_t olen;
    bool allowed = false;

    conf_path(p, sizeof(p), path, key);
    olen = url_origin_length(url);
    if (olen == 0 || has_control(url)) {
        diag_add(d, p, "must be an absolute http:// or https:// URL");
        return;
    }
    if (strchr(url, '#') != NULL) {
        diag_add(d, p, "must not have a #fragment (the answer's parameters are appended)");
        return;
    }
    for (size_t i = 0; i < f->n_origins; i++)
        if (strlen(f->origins[i]) == olen && strncmp(f->origins[i], url, olen) == 0)
            allowed = true;
    if (!allowed)
        diag_add(d, p, "the page's origin is not in this form's \"origins\" (redirects go only "
                       "to allow-listed sites)");
}

static void load_form(struct config *c, struct form *f, const char *name, const json_t *obj,
                      const char *path, struct diag *d)
{
    const char *s;
    char p[PATH_SIZE];
    json_t *targets, *v;
    size_t i, n_allowed = 0;
    const char *allowed[48];

    for (i = 0; i < sizeof(form_base_keys) / sizeof(form_base_keys[0]); i++)
        allowed[n_allowed++] = form_base_keys[i];
    for (i = 0; rules_form_keys[i] != NULL && n_allowed < 47; i++)
        allowed[n_allowed++] = rules_form_keys[i];
    for (i = 0; inbound_form_keys[i] != NULL && n_allowed < 47; i++)
        allowed[n_allowed++] = inbound_form_keys[i];
    for (i = 0; visitor_form_keys[i] != NULL && n_allowed < 47; i++)
        allowed[n_allowed++] = visitor_form_keys[i];
    for (i = 0; guard_form_keys[i] != NULL && n_allowed < 47; i++)
        allowed[n_allowed++] = guard_form_keys[i];
    allowed[n_allowed] = NULL;

    f->name = strdup(name);
    if (!json_is_object(obj)) {
        diag_add(d, path, "a form must be an object");
        return;
    }
    conf_check_keys(obj, path, allowed, d);

    s = conf_string(obj, "path", path, NULL, true, d);
    if (s != NULL && s[0] != '/') {
        conf_path(p, sizeof(p), path, "path");
        diag_add(d, p, "must start with /");
    }
    f->path = dup_or_null(s);

    s = conf_string(obj, "action", path, "echo", false, d);
    f->action = FORM_ACTION__MAX;
    for (i = 0; i < FORM_ACTION__MAX; i++)
        if (s != NULL && strcmp(s, form_action_names[i]) == 0)
            f->action = (enum form_action)i;
    if (f->action == FORM_ACTION__MAX) {
        conf_path(p, sizeof(p), path, "action");
        diag_add(d, p, "must be one of echo, create, valuation, update");
        f->action = FORM_ECHO;
    }

    f->origins = string_array(obj, "origins", path, &f->n_origins, d);
    for (i = 0; i < f->n_origins; i++) {
        size_t olen = url_origin_length(f->origins[i]);

        if (olen == 0 || olen != strlen(f->origins[i])) {
            char op[PATH_SIZE];

            conf_path(p, sizeof(p), path, "origins");
            conf_path_index(op, sizeof(op), p, i);
            diag_add(d, op, "must be an origin such as \"https://www.example.com\" (no path)");
        }
    }
    f->success_page = dup_or_null(conf_string(obj, "success_page", path, NULL, false, d));
    f->error_page = dup_or_null(conf_string(obj, "error_page", path, NULL, false, d));
    if (f->success_page != NULL)
        check_page(f, "success_page", f->success_page, path, d);
    if (f->error_page != NULL)
        check_page(f, "error_page", f->error_page, path, d);
    f->body_limit = (size_t)conf_integer(obj, "body_limit", path, (long long)c->body_limit, 64,
                                         16 * 1024 * 1024, d);
    f->webhook_secret = dup_or_null(conf_string(obj, "webhook_secret", path, NULL, false, d));
    if (f->webhook_secret != NULL && strlen(f->webhook_secret) < 16) {
        conf_path(p, sizeof(p), path, "webhook_secret");
        diag_add(d, p, "must be at least 16 characters");
    }

    targets = json_object_get(obj, "targets");
    conf_path(p, sizeof(p), path, "targets");
    if (targets != NULL && !json_is_array(targets)) {
        diag_add(d, p, "must be an array of target names");
    } else if (targets != NULL) {
        f->targets = calloc(json_array_size(targets) + 1, sizeof(*f->targets));
        json_array_foreach(targets, i, v) {
            char tp[PATH_SIZE];
            const struct target *t = NULL;

            conf_path_index(tp, sizeof(tp), p, i);
            if (json_is_string(v))
                t = config_find_target(c, json_string_value(v));
            if (t == NULL)
                diag_add(d, tp, "no target named \"%s\" under \"targets\"",
                         json_is_string(v) ? json_string_value(v) : "?");
            else if (f->targets != NULL)
                f->targets[f->n_targets++] = (struct target *)t;
        }
    }
    if (f->action != FORM_ECHO && f->n_targets == 0)
        diag_add(d, path, "action \"%s\" needs at least one target in \"targets\"",
                 form_action_name(f->action));
    for (i = 0; i < f->n_targets; i++) {
        enum target_action ta = f->action == FORM_VALUATION ? TARGET_VALUATION
                                : f->action == FORM_UPDATE  ? TARGET_UPDATE
                                                            : TARGET_CREATE;

        if (f->action != FORM_ECHO && !f->targets[i]->ops->supports(ta))
            diag_add(d, p, "target \"%s\" (%s) cannot %s", f->targets[i]->name,
                     f->targets[i]->ops->type, form_action_name(f->action));
    }
    f->rules = rules_compile(obj, path, d);
    conf_path(p, sizeof(p), path, "verify");
    f->verify = verify_compile(json_object_get(obj, "verify"), p, d);
    f->inbound = inbound_compile(obj, path, d);
    f->visitor = visitor_compile(obj, path, d);
    f->guard = guard_compile(obj, name, path, c->secret, c->dir, d);
}

static void load_targets(struct config *c, const json_t *targets, struct diag *d)
{
    const char *name;
    json_t *obj;
    char p[PATH_SIZE];

    if (targets == NULL)
        return;
    if (!json_is_object(targets)) {
        diag_add(d, "targets", "must be an object of named targets");
        return;
    }
    c->targets = calloc(json_object_size(targets) + 1, sizeof(*c->targets));
    if (c->targets == NULL)
        return;
    json_object_foreach((json_t *)targets, name, obj) {
        struct target *t = &c->targets[c->n_targets];
        const char *type;

        conf_path(p, sizeof(p), "targets", name);
        if (!json_is_object(obj)) {
            diag_add(d, p, "a target must be an object");
            continue;
        }
        type = conf_string(obj, "type", p, NULL, true, d);
        if (type == NULL)
            continue;
        t->ops = target_ops_find(type);
        if (t->ops == NULL) {
            char tp[PATH_SIZE];

            conf_path(tp, sizeof(tp), p, "type");
            diag_add(d, tp, "unknown target type \"%s\" (leadpro, leadping, lofty, webhook)", type);
            continue;
        }
        t->name = strdup(name);
        t->state = t->ops->configure(obj, p, d);
        c->n_targets++;
    }
}

static void load_spam(struct config *c, const json_t *obj, struct diag *d)
{
    c->spam_retention = QUARANTINE_RETENTION_DEFAULT;
    c->shared_slots = RATELIMIT_SLOTS_DEFAULT;
    if (obj == NULL)
        return;
    if (!json_is_object(obj)) {
        diag_add(d, "spam", "must be an object");
        return;
    }
    conf_check_keys(obj, "spam", spam_keys, d);
    c->spam_retention = conf_integer(obj, "retention", "spam", QUARANTINE_RETENTION_DEFAULT, 0,
                                     10LL * 365 * 86400, d);
    c->shared_slots = (size_t)conf_integer(obj, "shared_slots", "spam", RATELIMIT_SLOTS_DEFAULT,
                                           1024, 16 * 1024 * 1024, d);
}

static void load_attribution(struct config *c, const json_t *obj, struct diag *d)
{
    const char *path = "attribution";
    size_t n = 0;

    c->attribution.max_value = 512;
    if (obj == NULL)
        return;
    if (!json_is_object(obj)) {
        diag_add(d, path, "must be an object");
        return;
    }
    conf_check_keys(obj, path, attribution_keys, d);
    c->attribution.cookie_name = dup_or_null(conf_string(obj, "cookie", path, NULL, false, d));
    c->attribution.trusted_proxies =
        (const char *const *)string_array(obj, "trusted_proxies", path, &n, d);
    c->attribution.n_trusted_proxies = n;
    for (size_t i = 0; i < n; i++) {
        unsigned char addr[sizeof(struct in6_addr)];
        char p[PATH_SIZE], ip[PATH_SIZE];

        if (inet_pton(AF_INET, c->attribution.trusted_proxies[i], addr) != 1 &&
            inet_pton(AF_INET6, c->attribution.trusted_proxies[i], addr) != 1) {
            conf_path(p, sizeof(p), path, "trusted_proxies");
            conf_path_index(ip, sizeof(ip), p, i);
            diag_add(d, ip, "must be an IPv4 or IPv6 address");
        }
    }
    c->attribution.max_value =
        (size_t)conf_integer(obj, "max_value", path, 512, 16, 4096, d);
}

/* The directory of file ("." when it has none): relative file names in the config start there. */
static char *config_dir_of(const char *file)
{
    const char *slash = strrchr(file, '/');

    if (slash == NULL)
        return strdup(".");
    if (slash == file)
        return strdup("/");
    return strndup(file, (size_t)(slash - file));
}

struct config *config_load_text(const char *file, const char *text, size_t len, struct diag *d)
{
    struct config *c;
    json_error_t jerr;
    json_t *forms;
    const char *s;
    size_t before = d->count;

    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->file = strdup(file);
    c->dir = config_dir_of(file);
    c->root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (c->root == NULL) {
        diag_add_at(d, jerr.line, jerr.column, "%s", jerr.text);
        goto fail;
    }
    if (!json_is_object(c->root)) {
        diag_add(d, "", "the configuration must be a JSON object");
        goto fail;
    }
    expand_tree(c->root, "", 0, d);
    conf_check_keys(c->root, "", top_keys, d);

    s = conf_string(c->root, "secret", "", NULL, false, d);
    if (s != NULL && strlen(s) < 16)
        diag_add(d, "secret", "must be at least 16 characters (it signs lead references)");
    c->secret = dup_or_null(s);
    c->ref_ttl = conf_integer(c->root, "ref_ttl", "", 86400, 60, 365LL * 86400, d);
    c->spool_dir = strdup(conf_string(c->root, "spool", "", LOCALSTATEDIR "/spool/leadbridge",
                                      false, d));
    outbox_conf_from_json(json_object_get(c->root, "outbox"), "outbox", d, &c->outbox);
    load_spam(c, json_object_get(c->root, "spam"), d);
    c->threads = (int)conf_integer(c->root, "threads", "", 8, 1, 1024, d);
    c->read_timeout = (int)conf_integer(c->root, "read_timeout", "", 10, 1, 600, d);
    c->body_limit = (size_t)conf_integer(c->root, "body_limit", "", 65536, 64, 16 * 1024 * 1024, d);
    load_attribution(c, json_object_get(c->root, "attribution"), d);
    monitor_conf_from_json(json_object_get(c->root, "metrics"), json_object_get(c->root, "health"),
                           d, &c->monitor);
    notify_conf_from_json(json_object_get(c->root, "notify"), "notify", d, &c->notify);
    load_targets(c, json_object_get(c->root, "targets"), d);

    forms = json_object_get(c->root, "forms");
    if (!json_is_object(forms) || json_object_size(forms) == 0) {
        diag_add(d, forms == NULL ? "" : "forms", "\"forms\" must be an object with at least one form");
    } else {
        const char *name;
        json_t *obj;
        char p[PATH_SIZE];

        c->forms = calloc(json_object_size(forms), sizeof(*c->forms));
        if (c->forms == NULL)
            goto fail;
        json_object_foreach(forms, name, obj) {
            struct form *f = &c->forms[c->n_forms++];

            conf_path(p, sizeof(p), "forms", name);
            load_form(c, f, name, obj, p, d);
            for (size_t i = 0; i + 1 < c->n_forms && f->path != NULL; i++)
                if (c->forms[i].path != NULL && strcmp(c->forms[i].path, f->path) == 0) {
                    char pp[PATH_SIZE];

                    conf_path(pp, sizeof(pp), p, "path");
                    diag_add(d, pp, "form \"%s\" already uses this path", c->forms[i].name);
                }
            if (monitor_owns_path(&c->monitor, f->path)) {
                char pp[PATH_SIZE];

                conf_path(pp, sizeof(pp), p, "path");
                diag_add(d, pp, "is the metrics or health path");
            }
            if ((f->action == FORM_UPDATE || f->action == FORM_VALUATION ||
                 f->action == FORM_CREATE) && c->secret == NULL)
                diag_add(d, p, "forms that create or update leads need the top-level \"secret\"");
        }
    }
    if (d->count > before)
        goto fail;
    return c;
fail:
    config_free(c);
    return NULL;
}

struct config *config_load(const char *path, struct diag *d)
{
    FILE *fp;
    struct buf b;
    char chunk[8192];
    size_t n;
    struct config *c = NULL;

    buf_init(&b, CONFIG_MAX_SIZE);
    d->file = path;
    fp = fopen(path, "rb");
    if (fp == NULL) {
        diag_add(d, "", "cannot open: %m");
        return NULL;
    }
    while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0) {
        if (buf_append(&b, chunk, n) != LB_OK) {
            diag_add(d, "", "file is larger than %d bytes", CONFIG_MAX_SIZE);
            goto out;
        }
    }
    if (ferror(fp)) {
        diag_add(d, "", "read error");
        goto out;
    }
    d->text = b.data != NULL ? b.data : "";
    d->text_len = b.len;
    c = config_load_text(path, d->text, b.len, d);
out:
    fclose(fp);
    /* Messages are already formatted; the text is no longer needed for locating. */
    d->text = NULL;
    d->text_len = 0;
    buf_free(&b);
    return c;
}

void config_free(struct config *c)
{
    size_t i;

    if (c == NULL)
        return;
    for (i = 0; i < c->n_forms; i++) {
        struct form *f = &c->forms[i];

        free(f->name);
        free(f->path);
        free(f->targets);
        rules_free(f->rules);
        visitor_free(f->visitor);
        free_strings(f->origins, f->n_origins);
        free(f->success_page);
        free(f->error_page);
        free(f->webhook_secret);
        verify_free(f->verify);
        inbound_free(f->inbound);
        guard_free(f->guard);
    }
    free(c->forms);
    for (i = 0; i < c->n_targets; i++) {
        if (c->targets[i].ops != NULL && c->targets[i].state != NULL)
            c->targets[i].ops->free(c->targets[i].state);
        free(c->targets[i].name);
    }
    free(c->targets);
    free((char *)c->attribution.cookie_name);
    free_strings((char **)c->attribution.trusted_proxies, c->attribution.n_trusted_proxies);
    monitor_conf_free(&c->monitor);
    notify_conf_free(&c->notify);
    free(c->secret);
    free(c->spool_dir);
    free(c->file);
    free(c->dir);
    json_decref(c->root);
    free(c);
}

const struct form *config_find_form(const struct config *c, const char *path)
{
    for (size_t i = 0; i < c->n_forms; i++)
        if (c->forms[i].path != NULL && strcmp(c->forms[i].path, path) == 0)
            return &c->forms[i];
    return NULL;
}

const struct target *config_find_target(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->n_targets; i++)
        if (c->targets[i].name != NULL && strcmp(c->targets[i].name, name) == 0)
            return &c->targets[i];
    return NULL;
}
