/*
 * throttle.c: outbound rate limits per target (see throttle.h). Keys in the shared table:
 * "out:<target>" the bucket, "backlog:<target>" the mark that makes later leads wait their turn.
 * With a store shared by the hosts (throttle_share), the bucket and the 429 hold are the store's
 * instead; the marks stay in the host's table.
 */
#include "throttle.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "conf.h"

static const char *const throttle_keys[] = {"per_minute", "burst", NULL};

/* Documented rates: Leadping allows 300 requests a minute, Lofty 100 (its lowest plan). */
static const struct {
    const char *type;
    double per_minute, burst;
} throttle_defaults[] = {
    {"leadping", 300, 10},
    {"lofty", 100, 5},
};

void throttle_conf_read(const json_t *obj, const char *type, const char *path, struct target *t,
                        struct diag *d)
{
    json_t *v = json_object_get(obj, "rate_limit");
    char p[512];

    t->rate_per_minute = 0;
    t->rate_burst = 0;
    for (size_t i = 0; i < sizeof(throttle_defaults) / sizeof(throttle_defaults[0]); i++)
        if (type != NULL && strcmp(type, throttle_defaults[i].type) == 0) {
            t->rate_per_minute = throttle_defaults[i].per_minute;
            t->rate_burst = throttle_defaults[i].burst;
        }
    if (v == NULL)
        return;
    conf_path(p, sizeof(p), path, "rate_limit");
    if (json_is_false(v)) {
        t->rate_per_minute = 0;
        return;
    }
    if (!json_is_object(v)) {
        diag_add(d, p, "must be {\"per_minute\": N, \"burst\": B} or false");
        return;
    }
    conf_check_keys(v, p, throttle_keys, d);
    t->rate_per_minute = conf_number(v, "per_minute", p, t->rate_per_minute > 0
                                     ? t->rate_per_minute : 60, 1, 1000000, d);
    t->rate_burst = (double)conf_integer(v, "burst", p, t->rate_burst > 0
                                         ? (long long)t->rate_burst : 1, 1, 100000, d);
    if (t->rate_burst >= t->rate_per_minute) {
        diag_add(d, p, "burst must be less than per_minute");
        t->rate_burst = 1;
    }
}

long long throttle_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The buckets every host shares (NULL: the host's own table). */
static _Atomic(const struct throttle_shared *) throttle_shared_store;

void throttle_share(const struct throttle_shared *s)
{
    atomic_store(&throttle_shared_store, s);
}

void throttle_unshare(const void *arg)
{
    const struct throttle_shared *s = atomic_load(&throttle_shared_store);

    if (s != NULL && s->arg == arg)
        atomic_compare_exchange_strong(&throttle_shared_store, &s, NULL);
}

/* Takes a slot of t's bucket, shared by the hosts or the host's own; *wait_ms when none. */
static bool throttle_take(struct ratelimit *rl, const struct target *t, const char *bucket,
                          long long now_ms, long long *wait_ms)
{
    const struct throttle_shared *s = atomic_load(&throttle_shared_store);
    double per_second = (t->rate_per_minute - t->rate_burst) / 60.0;

    if (s == NULL)
        return ratelimit_take(rl, bucket, t->rate_burst, per_second, now_ms, wait_ms);
    *wait_ms = 0;
    /* A store that failed takes nothing: rather late than over the API's rate. */
    if (s->take(s->arg, t->name, t->rate_burst, per_second, wait_ms) == 1)
        return true;
    if (*wait_ms < 1)
        *wait_ms = 1000;
    return false;
}

/* How long the backlog count lives without a change: a count left by a lead that was purged or
 * died in a crash goes away by itself. */
#define THROTTLE_BACKLOG_TTL_MS 120000

bool throttle_defer(struct ratelimit *rl, const struct target *t, bool queued,
                    const json_t *entry, const char *id, long long now_ms,
                    struct target_result *result)
{
    char bucket[300], mark[300], count[300], once[400];
    long long wait_ms = 0, wait_s, behind;

    if (rl == NULL || t->rate_per_minute <= 0)
        return false;
    snprintf(bucket, sizeof(bucket), "out:%s", t->name);
    snprintf(mark, sizeof(mark), "deferring:%s", t->name);
    snprintf(count, sizeof(count), "backlog:%s", t->name);
    behind = ratelimit_marked(rl, mark, now_ms);
    if (behind == 0 && !queued && ratelimit_add(rl, count, 0, now_ms + THROTTLE_BACKLOG_TTL_MS,
                                                now_ms) > 0)
        behind = now_ms + 1000;
    if (behind == 0 && throttle_take(rl, t, bucket, now_ms, &wait_ms))
        return false;
    /* Due again on the whole second the bucket allows; leads after it wait behind it. */
    wait_s = behind ? (behind - now_ms + 999) / 1000 : (wait_ms + 999) / 1000;
    if (wait_s < 1)
        wait_s = 1;
    if (behind == 0)
        ratelimit_mark(rl, mark, (now_ms / 1000 + wait_s) * 1000, now_ms);
    snprintf(once, sizeof(once), "counted:%s:%s", t->name, id != NULL ? id : "");
    if (!json_is_true(json_object_get(entry, "throttled")) &&
        ratelimit_first_use(rl, once, now_ms + THROTTLE_BACKLOG_TTL_MS, now_ms))
        ratelimit_add(rl, count, 1, now_ms + THROTTLE_BACKLOG_TTL_MS, now_ms);
    result->outcome = DELIVERY_DEFERRED;
    result->retry_after = wait_s;
    snprintf(result->reason, sizeof(result->reason),
             "held back by the target's rate limit (%.0f a minute)", t->rate_per_minute);
    return true;
}

void throttle_after(struct ratelimit *rl, const struct target *t, const json_t *entry,
                    const struct target_result *r, long long now_ms)
{
    char bucket[300], count[300];
    const struct throttle_shared *s;
    long long hold;

    if (rl == NULL || t->rate_per_minute <= 0)
        return;
    if (json_is_true(json_object_get(entry, "throttled"))) {
        snprintf(count, sizeof(count), "backlog:%s", t->name);
        ratelimit_add(rl, count, -1, now_ms + THROTTLE_BACKLOG_TTL_MS, now_ms);
    }
    if (r->http_status != 429)
        return;
    hold = r->retry_after > 0 ? r->retry_after : THROTTLE_HOLD_DEFAULT;
    s = atomic_load(&throttle_shared_store);
    if (s != NULL) {
        s->hold(s->arg, t->name, t->rate_burst, (t->rate_per_minute - t->rate_burst) / 60.0,
                hold * 1000);
        return;
    }
    snprintf(bucket, sizeof(bucket), "out:%s", t->name);
    ratelimit_hold(rl, bucket, now_ms + hold * 1000, now_ms);
}
