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
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buf.h"
#include "conf.h"
#include "inbound.h"
#include "guard.h"
#include "parse.h"
#include "quarantine.h"
#include "ratelimit.h"
#include "throttle.h"
#include "rules.h"
#include "target.h"
#include "verify.h"
#include "visitor.h"

#define CONFIG_MAX_SIZE (4 * 1024 * 1024)
#define CONFIG_MAX_FILES 1000
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

/* One file of the configuration while it is loaded: its targets, secret and defaults. */
struct site {
    const char *file;
    size_t first_target; /* its targets are c->targets[first_target .. + n_targets) */
    size_t n_targets;
    const char *secret;  /* borrowed from struct config */
    size_t body_limit;
};

/* The target named name among the site's own (a form reaches only its own file's targets). */
static const struct target *site_target(const struct config *c, const struct site *st,
                                        const char *name)
{
    for (size_t i = st->first_target; i < st->first_target + st->n_targets; i++)
        if (c->targets[i].name != NULL && strcmp(c->targets[i].name, name) == 0)
            return &c->targets[i];
    return NULL;
}

static void load_form(struct config *c, const struct site *st, struct form *f, const char *name,
                      const json_t *obj, const char *path, struct diag *d)
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
    f->secret = st->secret;
    f->body_limit = (size_t)conf_integer(obj, "body_limit", path, (long long)st->body_limit, 64,
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
                t = site_target(c, st, json_string_value(v));
            if (t == NULL)
                diag_add(d, tp, "no target named \"%s\" under \"targets\" in this file",
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
    f->guard = guard_compile(obj, name, path, st->secret, c->dir, d);
}

/*
 * Appends the targets of one file to c->targets (allocated for all files); names are unique
 * across files (target_file[i] names the file of target i, for the message).
 */
static void load_targets(struct config *c, struct site *st, const json_t *targets,
                         const char **target_file, struct diag *d)
{
    const char *name;
    json_t *obj;
    char p[PATH_SIZE];

    st->first_target = c->n_targets;
    if (targets == NULL)
        return;
    if (!json_is_object(targets)) {
        diag_add(d, "targets", "must be an object of named targets");
        return;
    }
    json_object_foreach((json_t *)targets, name, obj) {
        struct target *t = &c->targets[c->n_targets];
        const struct target *other = config_find_target(c, name);
        const char *type;

        conf_path(p, sizeof(p), "targets", name);
        if (other != NULL) {
            diag_add(d, p, "target \"%s\" is also defined in %s (names are unique across files)",
                     name, target_file[other - c->targets]);
            continue;
        }
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
        throttle_conf_read(obj, type, p, t, d);
        /* "rate_limit" is ours, not the target type's: its own keys are checked without it. */
        {
            json_t *own = json_copy(obj);

            json_object_del(own, "rate_limit");
            t->state = t->ops->configure(own != NULL ? own : obj, p, d);
            json_decref(own);
        }
        target_file[c->n_targets] = st->file;
        c->n_targets++;
    }
    st->n_targets = c->n_targets - st->first_target;
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

/* One file of the configuration: its name and text (for messages) and its parsed document. */
struct doc {
    char *file;
    char *text;
    size_t len;
    json_t *root;
};

/* Keys that set up the whole server: in a directory, only one file may set any of them. */
static const char *const server_keys[] = {
    "ref_ttl", "spool", "threads", "read_timeout", "attribution", "outbox", "spam", "metrics",
    "health", "notify", NULL,
};

/* Points d at doc's file and text, so messages carry its name, line and column. */
static void diag_on(struct diag *d, const struct doc *doc)
{
    d->file = doc->file;
    d->text = doc->text;
    d->text_len = doc->len;
}

/* Parses doc->text into doc->root, expands ${VAR} and checks the top-level keys. */
static void doc_parse(struct doc *doc, struct diag *d)
{
    json_error_t jerr;

    doc->root = json_loadb(doc->text, doc->len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc->root == NULL) {
        diag_add_at(d, jerr.line, jerr.column, "%s", jerr.text);
        return;
    }
    if (!json_is_object(doc->root)) {
        diag_add(d, "", "the configuration must be a JSON object");
        json_decref(doc->root);
        doc->root = NULL;
        return;
    }
    expand_tree(doc->root, "", 0, d);
    conf_check_keys(doc->root, "", top_keys, d);
}

static bool has_server_keys(const json_t *root)
{
    for (size_t i = 0; server_keys[i] != NULL; i++)
        if (json_object_get(root, server_keys[i]) != NULL)
            return true;
    return false;
}

/* Reads the server-wide keys from root (the one file that may hold them; NULL: defaults). */
static void load_server(struct config *c, const json_t *root, struct diag *d)
{
    c->ref_ttl = conf_integer(root, "ref_ttl", "", 86400, 60, 365LL * 86400, d);
    c->spool_dir = strdup(conf_string(root, "spool", "", LOCALSTATEDIR "/lib/leadbridge",
                                      false, d));
    outbox_conf_from_json(json_object_get(root, "outbox"), "outbox", d, &c->outbox);
    load_spam(c, json_object_get(root, "spam"), d);
    c->threads = (int)conf_integer(root, "threads", "", 8, 1, 1024, d);
    c->read_timeout = (int)conf_integer(root, "read_timeout", "", 10, 1, 600, d);
    load_attribution(c, json_object_get(root, "attribution"), d);
    monitor_conf_from_json(json_object_get(root, "metrics"), json_object_get(root, "health"),
                           d, &c->monitor);
    notify_conf_from_json(json_object_get(root, "notify"), "notify", d, &c->notify);
}

/* Reads one file's forms (after its targets); names and paths are unique across files. */
static void load_forms(struct config *c, const struct site *st, const json_t *forms,
                       const char **form_file, bool required, struct diag *d)
{
    const char *name;
    json_t *obj;
    char p[PATH_SIZE], pp[PATH_SIZE];

    if (forms == NULL && !required)
        return;
    if (!json_is_object(forms) || (required && json_object_size(forms) == 0)) {
        diag_add(d, forms == NULL ? "" : "forms", "\"forms\" must be an object with at least one form");
        return;
    }
    json_object_foreach((json_t *)forms, name, obj) {
        struct form *f = &c->forms[c->n_forms];

        conf_path(p, sizeof(p), "forms", name);
        for (size_t i = 0; i < c->n_forms; i++)
            if (strcmp(c->forms[i].name, name) == 0)
                diag_add(d, p, "form \"%s\" is also defined in %s (names are unique across files)",
                         name, form_file[i]);
        form_file[c->n_forms++] = st->file;
        load_form(c, st, f, name, obj, p, d);
        conf_path(pp, sizeof(pp), p, "path");
        for (size_t i = 0; i + 1 < c->n_forms && f->path != NULL; i++)
            if (c->forms[i].path != NULL && strcmp(c->forms[i].path, f->path) == 0) {
                if (form_file[i] == st->file)
                    diag_add(d, pp, "form \"%s\" already uses this path", c->forms[i].name);
                else
                    diag_add(d, pp, "form \"%s\" in %s already uses this path",
                             c->forms[i].name, form_file[i]);
            }
        if (monitor_owns_path(&c->monitor, f->path))
            diag_add(d, pp, "is the metrics or health path");
        if ((f->action == FORM_UPDATE || f->action == FORM_VALUATION ||
             f->action == FORM_CREATE) && f->secret == NULL)
            diag_add(d, p, "forms that create or update leads need the top-level \"secret\"");
    }
}

/*
 * Builds the configuration from n parsed documents (one file, or each file of a directory).
 * The server-wide keys come from the one document that has any; each document brings its own
 * "secret" (else the server file's), "body_limit", targets and forms. Steals the roots.
 */
static struct config *config_build(struct doc *docs, size_t n, bool dir, const char *base,
                                   size_t before, struct diag *d)
{
    struct config *c = calloc(1, sizeof(*c));
    const char **target_file = NULL, **form_file = NULL;
    size_t n_targets = 0, n_forms = 0, server = n;
    const char *server_secret = NULL;

    if (c == NULL)
        return NULL;
    c->dir = strdup(base); /* relative file names (spam lists) start here */
    c->roots = calloc(n, sizeof(*c->roots));
    c->secrets = calloc(n, sizeof(*c->secrets));
    if (c->roots == NULL || c->secrets == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        c->roots[c->n_roots++] = docs[i].root;
        docs[i].root = NULL;
        n_targets += json_object_size(json_object_get(c->roots[i], "targets"));
        n_forms += json_object_size(json_object_get(c->roots[i], "forms"));
        if (!has_server_keys(c->roots[i]))
            continue;
        if (server == n) {
            server = i;
            continue;
        }
        diag_on(d, &docs[i]);
        for (size_t k = 0; server_keys[k] != NULL; k++)
            if (json_object_get(c->roots[i], server_keys[k]) != NULL)
                diag_add(d, server_keys[k], "server-wide keys belong in one file, and %s has "
                                            "them already", docs[server].file);
    }
    c->root = n > 0 ? c->roots[0] : NULL;
    if (server < n)
        diag_on(d, &docs[server]);
    load_server(c, server < n ? c->roots[server] : NULL, d);
    c->targets = calloc(n_targets + 1, sizeof(*c->targets));
    c->forms = calloc(n_forms + 1, sizeof(*c->forms));
    target_file = calloc(n_targets + 1, sizeof(*target_file));
    form_file = calloc(n_forms + 1, sizeof(*form_file));
    if (c->targets == NULL || c->forms == NULL || target_file == NULL || form_file == NULL)
        goto fail;
    if (server < n) {
        const char *s = json_string_value(json_object_get(c->roots[server], "secret"));

        server_secret = s;
    }
    for (size_t i = 0; i < n; i++) {
        struct site st = {docs[i].file, 0, 0, NULL, 65536};
        const json_t *root = c->roots[i];
        const char *s;

        diag_on(d, &docs[i]);
        s = conf_string(root, "secret", "", NULL, false, d);
        if (s != NULL && strlen(s) < 16)
            diag_add(d, "secret", "must be at least 16 characters (it signs lead references)");
        if (s == NULL)
            s = server_secret;
        c->secrets[i] = dup_or_null(s);
        st.secret = c->secrets[i];
        st.body_limit = (size_t)conf_integer(root, "body_limit", "", 65536, 64,
                                             16 * 1024 * 1024, d);
        load_targets(c, &st, json_object_get(root, "targets"), target_file, d);
        load_forms(c, &st, json_object_get(root, "forms"), form_file, !dir, d);
        if (i == (server < n ? server : 0)) {
            c->secret = dup_or_null(st.secret);
            c->body_limit = st.body_limit;
        }
    }
    if (dir && c->n_forms == 0)
        diag_add(d, "", "no file of the directory has a form");
    free(target_file);
    free(form_file);
    if (d->count > before)
        goto fail_freed;
    return c;
fail:
    free(target_file);
    free(form_file);
fail_freed:
    config_free(c);
    return NULL;
}

struct config *config_load_text(const char *file, const char *text, size_t len, struct diag *d)
{
    struct doc doc = {(char *)file, (char *)text, len, NULL};
    struct config *c = NULL;
    size_t before = d->count;
    const char *old_file = d->file, *old_text = d->text;
    size_t old_len = d->text_len;

    diag_on(d, &doc);
    doc_parse(&doc, d);
    if (doc.root != NULL) {
        char *base = config_dir_of(file);

        c = config_build(&doc, 1, false, base != NULL ? base : ".", before, d);
        free(base);
    }
    json_decref(doc.root);
    if (c != NULL)
        c->file = strdup(file);
    d->file = old_file;
    d->text = old_text;
    d->text_len = old_len;
    return c;
}

/* Reads path whole into *out (capped). Reports to d (whose file is path). */
static bool read_whole(const char *path, struct buf *out, struct diag *d)
{
    FILE *fp = fopen(path, "rb");
    char chunk[8192];
    size_t n;
    bool ok = true;

    if (fp == NULL) {
        diag_add(d, "", "cannot open: %m");
        return false;
    }
    while (ok && (n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
        if (buf_append(out, chunk, n) != LB_OK) {
            diag_add(d, "", "file is larger than %d bytes", CONFIG_MAX_SIZE);
            ok = false;
        }
    if (ok && ferror(fp)) {
        diag_add(d, "", "read error");
        ok = false;
    }
    fclose(fp);
    return ok;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.json files of dir (not hidden), sorted by name: a new array of new strings, or NULL. */
static char **list_json_files(const char *dir, size_t *n, struct diag *d)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t cap = 0;

    *n = 0;
    if (dp == NULL) {
        diag_add(d, "", "cannot open the directory: %m");
        return NULL;
    }
    while ((e = readdir(dp)) != NULL) {
        size_t len = strlen(e->d_name);
        char *full;
        struct stat st;

        if (e->d_name[0] == '.' || len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        if (*n >= CONFIG_MAX_FILES) {
            diag_add(d, "", "more than %d .json files", CONFIG_MAX_FILES);
            break;
        }
        full = malloc(strlen(dir) + len + 2);
        if (full == NULL)
            break;
        snprintf(full, strlen(dir) + len + 2, "%s/%s", dir, e->d_name);
        if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(full);
            continue;
        }
        if (*n == cap) {
            char **bigger = realloc(names, (cap * 2 + 8) * sizeof(*names));

            if (bigger == NULL) {
                free(full);
                break;
            }
            names = bigger;
            cap = cap * 2 + 8;
        }
        names[(*n)++] = full;
    }
    closedir(dp);
    if (*n > 0)
        qsort(names, *n, sizeof(*names), compare_names);
    else
        diag_add(d, "", "the directory holds no .json file");
    return names;
}

/* A directory: each *.json file is one site (see config.h). */
static struct config *config_load_dir(const char *path, struct diag *d)
{
    size_t n = 0, before = d->count;
    char **names = list_json_files(path, &n, d);
    struct doc *docs = n > 0 ? calloc(n, sizeof(*docs)) : NULL;
    struct config *c = NULL;
    bool parsed = docs != NULL;

    for (size_t i = 0; docs != NULL && i < n; i++) {
        struct buf b;

        buf_init(&b, CONFIG_MAX_SIZE);
        docs[i].file = names[i];
        d->file = names[i];
        d->text = NULL;
        if (read_whole(names[i], &b, d)) {
            docs[i].len = b.len;
            docs[i].text = buf_steal(&b);
            diag_on(d, &docs[i]);
            if (docs[i].text != NULL)
                doc_parse(&docs[i], d);
        }
        buf_free(&b);
        parsed = parsed && docs[i].root != NULL;
    }
    if (parsed) /* every file is JSON: check all of it, to report every mistake at once */
        c = config_build(docs, n, true, path, before, d);
    for (size_t i = 0; docs != NULL && i < n; i++) {
        json_decref(docs[i].root);
        free(docs[i].text);
    }
    free(docs);
    d->file = path; /* the names go with docs; messages are formatted already */
    d->text = NULL;
    d->text_len = 0;
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (c != NULL) {
        c->file = strdup(path);
        c->n_files = n;
    }
    return c;
}

struct config *config_load(const char *path, struct diag *d)
{
    struct buf b;
    struct config *c = NULL;
    struct stat st;

    d->file = path;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return config_load_dir(path, d);
    buf_init(&b, CONFIG_MAX_SIZE);
    if (read_whole(path, &b, d))
        c = config_load_text(path, b.data != NULL ? b.data : "", b.len, d);
    if (c != NULL)
        c->n_files = 1;
    d->file = path;
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
    for (i = 0; c->secrets != NULL && i < c->n_roots; i++)
        free(c->secrets[i]);
    free(c->secrets);
    free(c->spool_dir);
    free(c->file);
    free(c->dir);
    for (i = 0; i < c->n_roots; i++)
        json_decref(c->roots[i]);
    free(c->roots);
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
