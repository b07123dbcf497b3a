/*
 * ratelimit.h: counters every thread and every process on one host share, in one file in the
 * spool mapped MAP_SHARED (shmfile.h): token buckets (burst + sustained rate), daily caps,
 * "first use" marks (single-use form tokens and challenge solutions) and holds (a target that
 * answered 429 is paused as a whole).
 *
 * The file is a fixed table of slots, open-addressed by a 64-bit hash of the key (a key is any
 * text: "ip:contact:203.0.113.9"). Every slot carries the time after which it means nothing any
 * more (a bucket that has refilled, a day that is over, a token past its max_age): such slots
 * are reused, so the table never needs sweeping. When the slots a key may use are all live, the
 * one that expires soonest is reused: the table stays bounded under any flood, at the price of
 * forgetting its oldest entry. Each operation holds a process mutex and flock(2) on the file for
 * a few memory accesses; the kernel drops the flock of a process that dies.
 *
 * Clocks are parameters: now_ms is milliseconds since the epoch (CLOCK_REALTIME, the same in
 * every process).
 */
#ifndef LB_RATELIMIT_H
#define LB_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

#define RATELIMIT_SLOTS_DEFAULT 65536

struct ratelimit; /* opaque; shared by every thread of a process */

/*
 * Opens (creating when missing) the table file dir/"guard-<slots>.map" with slots slots
 * (64..16777216). Returns a new table (free with ratelimit_close) or NULL with err set.
 */
struct ratelimit *ratelimit_open(const char *dir, size_t slots, struct lb_error *err);
void ratelimit_close(struct ratelimit *rl);

/*
 * Takes one token from the bucket key (burst tokens at most, refilled at per_second). Returns
 * true when the request may go; false with *retry_after_ms (may be NULL) set to when the next
 * token comes. A bucket never seen starts full. A held key (ratelimit_hold) takes nothing until
 * the hold ends.
 */
bool ratelimit_take(struct ratelimit *rl, const char *key, double burst, double per_second,
                    long long now_ms, long long *retry_after_ms);
/*
 * Counts one more event under key, whose count lasts until until_ms. Returns true while the
 * count stays within limit (the event is counted), false when limit was reached (not counted).
 */
bool ratelimit_count(struct ratelimit *rl, const char *key, long long limit, long long until_ms,
                     long long now_ms);
/*
 * Marks key used until until_ms. Returns true the first time, false while an earlier mark lives
 * (a replay).
 */
bool ratelimit_first_use(struct ratelimit *rl, const char *key, long long until_ms,
                         long long now_ms);
/* Marks key until until_ms (a later mark wins; an earlier one is ignored). */
void ratelimit_mark(struct ratelimit *rl, const char *key, long long until_ms, long long now_ms);
/* Until when a mark of key (ratelimit_mark or ratelimit_first_use) lives: ms, or 0 when none. */
long long ratelimit_marked(struct ratelimit *rl, const char *key, long long now_ms);
/*
 * Adds delta to the counter key (never below 0), which then lives until until_ms; returns the
 * new value. A counter not touched before it expires reads 0 again.
 */
long long ratelimit_add(struct ratelimit *rl, const char *key, long long delta, long long until_ms,
                        long long now_ms);
/* Pauses the bucket key until until_ms (a later hold wins; an earlier one is ignored). */
void ratelimit_hold(struct ratelimit *rl, const char *key, long long until_ms, long long now_ms);

#endif
