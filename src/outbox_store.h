/*
 * outbox_store.h: what a store must provide to the outbox (internal to outbox*.c).
 *
 * The outbox is split in two. outbox.c is the store-neutral front: the public API of outbox.h,
 * job building, recording outcomes, the retry schedule, where a finished job goes, the delivery
 * pass and the operator commands. A store keeps jobs, their state (queued, done, dead), claims
 * and duplicate keys. outbox_spool.c stores them as files in a spool directory on one host;
 * another store (PostgreSQL, for several hosts) implements the same table.
 *
 * Every store keeps these promises; the front relies on nothing else:
 * - put() returns LB_OK only when the job survives a crash or power loss (a store may share one
 *   commit between concurrent puts: group commit). A job id exists in at most one state.
 * - A claim is exclusive across threads, processes (and hosts, where the store is shared) and is
 *   dropped when its holder dies. Only the holder writes the job.
 * - write() with durable false may be lost by a crash (the job is then found as it was before);
 *   it is never torn, and a job is never in two states at once.
 * - reserve_key() is race-free: exactly one caller wins a new key.
 * Jobs are JSON objects (see outbox.h); a store may index fields but the JSON is authoritative.
 */
#ifndef LB_OUTBOX_STORE_H
#define LB_OUTBOX_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"
#include "outbox.h"

struct outbox_store; /* one store instance, opaque to the front; shared by threads */
struct outbox_hold;  /* one claimed job in a store, owned by one thread */

/* A due job for the delivery pass. */
struct outbox_due {
    char id[OUTBOX_ID_SIZE];
    long long created;
};

/* Bit for each state, for claim(). */
#define OUTBOX_IN(s) (1u << (s))

/* Called by each(): job is a borrowed reference, or NULL when the stored job is unreadable. */
typedef enum lb_err (*outbox_each_fn)(void *arg, const char *id, enum outbox_state state,
                                      const json_t *job);

struct outbox_store_ops {
    const char *name; /* "spool", "postgresql" */
    void (*close)(struct outbox_store *st);

    /*
     * Stores job (borrowed) as queued, due at due (seconds, the outbox's clock), durably.
     * LB_ERR_CONFLICT when the id exists in any state; LB_ERR_TOO_LARGE, LB_ERR_IO,
     * LB_ERR_UNAVAILABLE (store unreachable: nothing was stored). err gets a message for the log.
     */
    enum lb_err (*put)(struct outbox_store *st, const char *id, const json_t *job, long long due,
                       struct lb_error *err);
    /*
     * Claims job id if it is in one of the states in mask (OUTBOX_IN bits), without waiting.
     * LB_OK: *hold, *job (a new reference; the front owns and may change it) and *state are set.
     * LB_ERR_CONFLICT: held by someone else. LB_ERR_NOT_FOUND: in none of those states.
     * LB_ERR_GONE: unreadable; the store moved it to dead letters with the reason in err.
     */
    enum lb_err (*claim)(struct outbox_store *st, const char *id, unsigned mask,
                         struct outbox_hold **hold, json_t **job, enum outbox_state *state,
                         struct lb_error *err);
    /*
     * Writes job (borrowed) for the held id in state where (queued, done, dead), with due: the
     * next attempt for a queued job, the finish time for a record. The hold stays valid and
     * moves with the job. durable: returns only once the write survives a crash.
     */
    enum lb_err (*write)(struct outbox_store *st, struct outbox_hold *hold, const json_t *job,
                         enum outbox_state where, long long due, bool durable);
    /* Ends a claim; NULL is a no-op. */
    void (*release)(struct outbox_store *st, struct outbox_hold *hold);

    /*
     * Queued jobs due at now (due <= now), oldest "created" first, at most limit (0: all), as a
     * new array (*n entries; the caller frees it). *next_due: the earliest due time > now of
     * the rest, or -1.
     */
    enum lb_err (*due)(struct outbox_store *st, long long now, size_t limit,
                       struct outbox_due **list, size_t *n, long long *next_due);
    /* Job id as stored, a new reference or NULL; *state is where it is (OUTBOX_UNKNOWN). */
    json_t *(*load)(struct outbox_store *st, const char *id, enum outbox_state *state);
    /* Calls fn for every job in state (any order); stops at fn's first error. */
    enum lb_err (*each)(struct outbox_store *st, enum outbox_state state, outbox_each_fn fn,
                        void *arg);
    /*
     * Removes records in state (done or dead) that finished at or before cutoff, adding how many
     * to *count (may be NULL).
     */
    enum lb_err (*remove_older)(struct outbox_store *st, enum outbox_state state,
                                long long cutoff, size_t *count);
    /* As outbox_reserve_key() / outbox_release_key(); expire() drops keys past their expiry
     * and the store's own garbage (temporary files). */
    enum lb_err (*reserve_key)(struct outbox_store *st, const char *key, const char *body_hash,
                               const char *job_id, long long now, long long expires,
                               bool *duplicate, char existing_id[OUTBOX_ID_SIZE]);
    enum lb_err (*release_key)(struct outbox_store *st, const char *key, const char *job_id);
    enum lb_err (*expire)(struct outbox_store *st, long long now);
    /* Makes every write so far durable (writes done with durable false). */
    enum lb_err (*flush)(struct outbox_store *st);
    /*
     * Optional (NULL: the front counts with each()): fills *out (zeroed, oldest_created -1) by
     * counting where the jobs are kept, without reading them.
     */
    enum lb_err (*stats)(struct outbox_store *st, struct outbox_stats *out);
    /*
     * Optional (NULL: the store cannot announce work; the caller polls). wait() blocks at most
     * ms until another process or host announced work due now, or wake() was called; one
     * thread waits at a time. wake() is async-signal-safe.
     */
    void (*wait)(struct outbox_store *st, long long ms);
    void (*wake)(struct outbox_store *st);
    /*
     * Optional (NULL: put, then claim): as put(), and on LB_OK the new job is also claimed by
     * the caller (*hold), with no window in which anyone else could claim it first.
     */
    enum lb_err (*put_claim)(struct outbox_store *st, const char *id, const json_t *job,
                             long long due, struct outbox_hold **hold, struct lb_error *err);
};

/*
 * The spool store (outbox_spool.c). Opens dir, creating it and its folders when missing.
 * tmp_max_age: wall-clock seconds after which a temporary file is crash garbage. Returns the
 * store (its ops in *ops) or NULL with err set.
 */
struct outbox_store *outbox_spool_open(const char *dir, long long tmp_max_age,
                                       const struct outbox_store_ops **ops,
                                       struct lb_error *err);

/* Shared by the stores: whether job has the shape every job must have (why says what not). */
bool outbox_job_check(const json_t *job, const char *id, char *why, size_t why_size);

#endif
