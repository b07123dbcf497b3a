/*
 * metrics.h: counters shared by every thread and process of one host, and their Prometheus text.
 *
 * The counters live in one file in the spool (metrics.shm, METRICS_FILE_SIZE bytes) mapped
 * MAP_SHARED (shmfile.h) and updated with C11 atomics, so spawn-fcgi -F N, mod_fcgid and `queue
 * stats` all see the same numbers; they survive restarts (Prometheus handles counter resets
 * anyway). Each series is a slot found by its family and label values; slots are claimed
 * lock-free and never freed. Label values are our own words only (form and target names from the
 * config, HTTP statuses, outcome and reason words): nothing a visitor typed.
 *
 * The module is process-wide, like the log: metrics_open() once at start-up, then the
 * metrics_<event>() calls from any thread. Before metrics_open() (or after it failed) they do
 * nothing, so tests and --dry-run need no spool.
 */
#ifndef LB_METRICS_H
#define LB_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "buf.h"
#include "err.h"

#define METRICS_SLOTS 1024
#define METRICS_LABEL_MAX 64 /* bytes of one label value, NUL included; longer ones are cut */

/*
 * Maps dir/metrics.shm (created when missing). Returns LB_OK, or LB_ERR_IO with err set (the
 * counters are then off; nothing else changes). Calling it again replaces the mapping.
 */
enum lb_err metrics_open(const char *dir, struct lb_error *err);
void metrics_close(void);

/* One answered request: form (NULL: no form matched), HTTP status, duration in seconds. */
void metrics_request(const char *form, int status, double seconds);
/* One delivery attempt to target: outcome "ok", "transient" or "permanent". */
void metrics_delivery(const char *target, const char *outcome);
/* A job went to the dead letters (target NULL: the whole job, e.g. unreadable or too old). */
void metrics_dead(const char *form, const char *target);
/* A submission held as spam, by form and reason ("honeypot", "too_fast", "rate_limit", ...). */
void metrics_spam(const char *form, const char *reason);
/* A notice to a person: channel "webhook" or "mail", result "sent", "failed" or "suppressed". */
void metrics_notice(const char *channel, const char *result);
/* A configuration reload: ok true (swapped in) or false (refused, the old one kept). */
void metrics_reload(bool ok);

/* The spool's state at one moment; known false when there is no spool. */
struct metrics_queue {
    bool known;
    long long queued;
    long long dead;
    long long done;
    long long oldest_age; /* seconds since the oldest queued job was created; 0 when none */
};

/* Appends the Prometheus text exposition (format 0.0.4) of every series and q to out. */
enum lb_err metrics_render(const struct metrics_queue *q, struct buf *out);
/*
 * The same numbers as JSON: {"queue": {...}, "requests": {form: {status: n}}, "deliveries":
 * {target: {outcome: n}}, "dead_letters": {form: {target: n}}, "spam": {form: {reason: n}},
 * "notices": {channel: {result: n}}, "reloads": {result: n}, "request_seconds": {form: {"count",
 * "sum"}}}. A new reference, or NULL.
 */
json_t *metrics_json(const struct metrics_queue *q);

#endif
