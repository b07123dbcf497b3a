/*
 * monitor.h: what monitoring asks of the bridge: the Prometheus endpoint, the health endpoint
 * for load balancers, and `leadbridge queue stats`.
 *
 * Config (both optional; see leadbridge.conf(5)):
 *   "metrics": {"path": "/lead/metrics", "allow": ["127.0.0.1", "10.0.0.0/8"],
 *               "token": "${METRICS_TOKEN}"}
 *   "health":  {"path": "/lead/health", "max_queue_age": 3600}
 * A scrape is let in when REMOTE_ADDR is in "allow" (addresses or CIDR blocks; default loopback
 * when no token is set) or it carries "Authorization: Bearer <token>" (compared in constant
 * time). Health is open to anyone: it says only whether the spool is writable and how old the
 * oldest queued job is, never a path or a job.
 */
#ifndef LB_MONITOR_H
#define LB_MONITOR_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "diag.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "respond.h"

struct outbox;

struct monitor_net {
    int family;            /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix;            /* bits that must match */
};

struct monitor_conf {
    char *metrics_path;    /* NULL: no metrics endpoint */
    struct monitor_net *allow;
    size_t n_allow;
    char *token;           /* NULL: no bearer token */
    char *health_path;     /* NULL: no health endpoint */
    long long max_queue_age; /* seconds; an older queued job makes health answer 503 */
};

/* Reads "metrics" and "health" (borrowed; either may be NULL) into *out; mistakes go to d. */
void monitor_conf_from_json(const json_t *metrics, const json_t *health, struct diag *d,
                            struct monitor_conf *out);
void monitor_conf_free(struct monitor_conf *c);
/* Whether path is one of the monitoring paths (forms must not use them). */
bool monitor_owns_path(const struct monitor_conf *c, const char *path);

/*
 * When req is for a monitoring path, answers it into *out, sets rec->outcome ("metrics",
 * "health", "forbidden") and returns true; else returns false and touches nothing. ob may be
 * NULL (no spool).
 */
bool monitor_handle(const struct monitor_conf *c, struct outbox *ob, const struct request *req,
                    struct response *out, struct log_record *rec);

/* The spool's numbers now (q->known false when ob is NULL or unreadable). */
void monitor_queue(struct outbox *ob, long long now, struct metrics_queue *q);

/* `leadbridge queue stats [--json]`: prints every number to out. Returns the exit status. */
int monitor_print_stats(struct outbox *ob, bool json, long long now, FILE *out);

#endif
