/*
 * throttle.h: outbound rate limits per target, so that no API is sent more than its documented
 * rate (Leadping 300 requests a minute, Lofty 100), shared by every thread and process of the
 * host through the shared table (ratelimit.h).
 *
 * A target's "rate_limit": {"per_minute": N, "burst": B} is a token bucket of B that refills at
 * (N - B) / 60 a second, so that no 60 seconds ever see more than N requests. A delivery that
 * finds the bucket empty is not sent: it is DELIVERY_DEFERRED (the outbox makes the job due again
 * when the bucket allows, with no attempt counted), and the target gets a backlog mark until then,
 * so later leads queue behind it instead of overtaking it (the outbox delivers oldest first).
 * A 429 from the API holds the whole target's bucket for its Retry-After (or 60 s).
 *
 * Several hosts: the buckets above are per host. When the outbox is in PostgreSQL, its store
 * shares them instead (throttle_share): every host takes its slots from one row per target in
 * the database, so a target's rate and a 429's hold are the whole cluster's. The backlog marks
 * (who waits behind whom) stay per host.
 */
#ifndef LB_THROTTLE_H
#define LB_THROTTLE_H

#include <stdbool.h>

#include <jansson.h>

#include "diag.h"
#include "ratelimit.h"
#include "target.h"

#define THROTTLE_HOLD_DEFAULT 60 /* seconds a 429 without Retry-After holds a target */

/*
 * Reads obj's "rate_limit" (borrowed; may be absent) for a target of type at path into *t:
 * rate_per_minute and rate_burst. Defaults by type: leadping 300 a minute (burst 10), lofty 100
 * (burst 5), others none. "rate_limit": false turns a default off.
 */
void throttle_conf_read(const json_t *obj, const char *type, const char *path, struct target *t,
                        struct diag *d);

/*
 * Before a delivery to t at now_ms: true when it must wait (then *result is filled as
 * DELIVERY_DEFERRED with retry_after in whole seconds); false when it may go now (a token is
 * taken). A NULL rl or a target without a rate never waits.
 * queued: the outbox's worker delivering a queued job (oldest first), which waits only for the
 * bucket and for a lead deferred before it in the same moment; the request path (queued false)
 * also waits while any deferred lead of the target is still queued, so it never overtakes one.
 * entry: the job's entry for t (borrowed; "throttled" there says this lead was counted as
 * deferred already), or NULL; id: the submission id (a lead is counted once however often it is
 * looked at).
 */
bool throttle_defer(struct ratelimit *rl, const struct target *t, bool queued,
                    const json_t *entry, const char *id, long long now_ms,
                    struct target_result *result);
/* Wall-clock milliseconds, the clock of throttle_defer and throttle_after in every process. */
long long throttle_now_ms(void);
/*
 * After a delivery (one that was sent): a 429 answer holds the whole target (see above); a lead
 * that had been deferred (entry's "throttled") leaves the target's backlog.
 */
void throttle_after(struct ratelimit *rl, const struct target *t, const json_t *entry,
                    const struct target_result *r, long long now_ms);

/*
 * The buckets of a store shared by every host (outbox_pg.c). burst and per_second are the
 * target's bucket as above; times are the store's own clock, so the hosts' clocks need not agree.
 */
struct throttle_shared {
    /* Takes one slot of target's bucket: 1 taken; 0 none free, *wait_ms until one is; -1 the
     * store failed (nothing taken; *wait_ms a pause). Never waits on another host. */
    int (*take)(void *arg, const char *target, double burst, double per_second,
                long long *wait_ms);
    /* Nothing is sent to target for hold_ms from now, and its bucket is empty then. */
    void (*hold)(void *arg, const char *target, double burst, double per_second,
                 long long hold_ms);
    void *arg;
};
/*
 * From now on every throttle_defer and throttle_after of this process uses s (borrowed; it must
 * outlive its use) for the buckets and holds, instead of the host's table. Set while no
 * delivery runs (when the outbox opens); throttle_unshare(arg) ends it if s->arg is arg.
 */
void throttle_share(const struct throttle_shared *s);
void throttle_unshare(const void *arg);

#endif
