/*
 * config.h: the JSON configuration, loaded and checked once at start, read-only afterwards.
 *
 * config_load() reads the file, expands ${VAR} and ${VAR:-default} in every string value, checks
 * every key (unknown keys are mistakes), compiles each form's rules and configures each target.
 * Every mistake is reported through struct diag with file, line, column and JSON path.
 * Modules that read their own part of the file (rules, targets, outbox) use conf.h.
 */
#ifndef LB_CONFIG_H
#define LB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "attribution.h"
#include "conf.h"
#include "diag.h"
#include "monitor.h"
#include "notify.h"
#include "outbox.h"

struct inbound;
struct guard;
struct ruleset;
struct target;
struct verify;
struct visitor_form;

enum form_action { FORM_ECHO = 0, FORM_CREATE, FORM_VALUATION, FORM_UPDATE, FORM_ACTION__MAX };

struct form {
    char *name;
    char *path;
    enum form_action action;
    struct target **targets; /* borrowed from struct config */
    size_t n_targets;
    struct ruleset *rules;
    char **origins;          /* allowed Origin values ("https://example.com"); empty: any */
    size_t n_origins;
    char *success_page;      /* absolute URLs for plain-HTML posts; NULL: answer JSON */
    char *error_page;
    size_t body_limit;
    char *webhook_secret;    /* shared secret for server-to-server update calls; NULL: none */
    const char *secret;      /* its file's "secret" for lead references (borrowed); NULL: none */
    struct verify *verify;   /* inbound signature or secret check; NULL: none */
    struct inbound *inbound; /* event id, host and parsing limits for builders' posts */
    struct visitor_form *visitor; /* consent and display (visitor.h); never NULL once loaded */
    struct guard *guard;     /* spam guards and rate limits (guard.h); never NULL after load */
};

struct config {
    char *file;
    char *dir;               /* the file's directory: relative file names start there */
    char *secret;            /* HMAC key for lead references */
    long long ref_ttl;       /* seconds a lead reference stays valid */
    char *spool_dir;         /* the outbox (default LOCALSTATEDIR/lib/leadbridge) */
    struct outbox_conf outbox;
    long long spam_retention; /* seconds quarantined spam is kept ("spam.retention") */
    size_t shared_slots;     /* slots of the shared rate-limit table ("spam.shared_slots") */
    size_t body_limit;       /* default for forms */
    int threads;             /* default worker threads */
    int read_timeout;        /* seconds a FastCGI connection may take to send its request */
    struct attribution_conf attribution;
    struct monitor_conf monitor; /* "metrics" and "health" */
    struct notify_conf notify;   /* "notify" */
    struct target *targets;
    size_t n_targets;
    struct form *forms;
    size_t n_forms;
    json_t *root;            /* the (first) parsed document after ${VAR} expansion */
    json_t **roots;          /* every file's document (a directory has several) */
    size_t n_roots;
    char **secrets;          /* each file's secret (its own, else the server file's) */
    size_t n_files;          /* files read: 1, or the directory's *.json files */
};

/*
 * Loads and checks path: a file, or a directory whose *.json files (sorted by name; hidden files
 * skipped) are one site each, with its own "secret", "body_limit", targets and forms; a form
 * reaches only its own file's targets. Form and target names and form paths are unique across
 * files, and the server-wide keys (spool, threads, ref_ttl, outbox, attribution, metrics,
 * health, notify) may be set in one file only: a clash names both files. A file without its own
 * secret uses the server file's. Returns NULL with the reasons in d (the caller prints them).
 */
struct config *config_load(const char *path, struct diag *d);
/* Same from text in memory (tests); file names the text in messages. */
struct config *config_load_text(const char *file, const char *text, size_t len, struct diag *d);
void config_free(struct config *c);

/* The form whose path equals path, or NULL. */
const struct form *config_find_form(const struct config *c, const char *path);
/* The target named name, or NULL. */
const struct target *config_find_target(const struct config *c, const char *name);
const char *form_action_name(enum form_action a);

#endif
