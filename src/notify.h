/*
 * notify.h: a person is told when a lead dies or the queue is stuck.
 *
 * Events: a job went to the dead letters (a permanent refusal, max_age, an unreadable file), or
 * the oldest queued job is older than "queue_age". Channels: a webhook signed like the webhook
 * target (Standard Webhooks) and/or a mail through the local sendmail interface (the configured
 * program is run with -t -oi, no shell, the message on its stdin). A notice carries no personal
 * data: the event, form, target, the reason (with anything that looks like an email address or a
 * phone number masked), the job id for `leadbridge queue show`, and the host name.
 *
 * Rate limits are per host (a small file in the spool, mapped shared, so every process counts
 * together): one notice per event, form and target every "min_interval" seconds (the next one
 * says how many were held back), and at most "max_per_hour" in all.
 *
 * Config ("notify", optional; see leadbridge.conf(5)):
 *   {"webhook": {"url": "https://...", "secret": "whsec_...", "timeout": 10},
 *    "mail": {"sendmail": "/usr/sbin/sendmail", "to": ["ops@example.com"],
 *             "from": "leadbridge@example.com"},
 *    "queue_age": 3600, "min_interval": 900, "max_per_hour": 20}
 *
 * The module is process-wide: notify_open() once, notify_configure() at start and at each reload,
 * then notify_dead() from any thread (it only queues: sending happens in notify's own thread,
 * started by notify_start(), or in notify_drain() for one-shot processes).
 */
#ifndef LB_NOTIFY_H
#define LB_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "diag.h"
#include "err.h"

#define NOTIFY_MAX_TO 16
#define NOTIFY_KEY_MAX 1024

struct outbox;

struct notify_conf {
    bool on;                  /* at least one channel */
    char *webhook_url;        /* NULL: no webhook */
    uint8_t *webhook_key;     /* NOTIFY_KEY_MAX bytes, webhook_key_len used */
    size_t webhook_key_len;
    long webhook_timeout_ms;
    char *sendmail;           /* NULL: no mail */
    char *mail_to[NOTIFY_MAX_TO];
    size_t n_mail_to;
    char *mail_from;          /* NULL: sendmail's default */
    long long queue_age;      /* seconds; 0: no stuck-queue notice */
    long long min_interval;
    long long max_per_hour;
};

/* Reads obj (borrowed; NULL: notices off) found at path into *out; mistakes go to d. */
void notify_conf_from_json(const json_t *obj, const char *path, struct diag *d,
                           struct notify_conf *out);
void notify_conf_free(struct notify_conf *c);

/*
 * Maps dir/notify.shm for the rate limits. LB_ERR_IO with err set: notices are then sent without
 * the shared limit (each process keeps its own).
 */
enum lb_err notify_open(const char *dir, struct lb_error *err);
/* Uses a copy of c from now on (c may be freed afterwards). */
void notify_configure(const struct notify_conf *c);
/*
 * Starts the sending thread, which also checks ob's oldest queued job every 30 s (ob may be
 * NULL). Signals are blocked in it.
 */
enum lb_err notify_start(struct outbox *ob);
/* Stops the thread after sending what is queued (at most about 30 s). */
void notify_stop(void);
/* For one-shot processes (CGI, queue run): checks ob's queue age, then sends what is queued. */
void notify_drain(struct outbox *ob);
/* Frees everything (after notify_stop). */
void notify_close(void);

/* The outbox's dead-letter hook (outbox_dead_fn): counts it in the metrics and queues a notice. */
void notify_dead(void *ctx, const char *id, const char *form, const char *target,
                 const char *reason);

/*
 * Copies a reason for a notice into out: control characters become spaces, a word holding '@'
 * becomes "[email]", a run of 6 or more digits (spaces, +, -, ., ( and ) between them allowed)
 * becomes "[number]". At most size - 1 bytes, cut on a UTF-8 boundary.
 */
void notify_clean_reason(const char *in, char *out, size_t size);

#endif
