/*
 * quarantine_store.h: what a quarantine store provides (internal to quarantine*.c).
 *
 * quarantine.c is the store-neutral front (quarantine.h): it builds the entry (the job plus its
 * "spam" record), turns a released entry back into an outbox job and puts it in the outbox. A
 * store keeps entries: the spool's spam/ folder (quarantine.c) or a table in the PostgreSQL
 * outbox's database (quarantine_pg.c), which every host shares.
 *
 * A release is take (the entry, held so that no other release takes it meanwhile), outbox_put,
 * then done(remove true); a failed put gives it back (done, remove false). A crash between the
 * put and the removal leaves both; the next release finds the job in the outbox already and only
 * removes the entry, so a released lead is delivered at least once, with its submission id.
 */
#ifndef LB_QUARANTINE_STORE_H
#define LB_QUARANTINE_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"

struct quarantine_store; /* one store, opaque to the front; shared by threads */
struct quarantine_hold;  /* one entry taken for a release */

struct quarantine_store_ops {
    void (*close)(struct quarantine_store *st);
    /* Stores entry (borrowed: the job with its "spam" record) as id, durably; LB_ERR_CONFLICT
     * when id is there already. */
    enum lb_err (*put)(struct quarantine_store *st, const char *id, const json_t *entry,
                       struct lb_error *err);
    /* The operator's list (quarantine_list's shape), oldest first; NULL on error. */
    json_t *(*list)(struct quarantine_store *st);
    /* Entry id, a new reference, or NULL. */
    json_t *(*show)(struct quarantine_store *st, const char *id);
    /* Calls fn for every id (any order); stops at fn's first error. */
    enum lb_err (*each)(struct quarantine_store *st,
                        enum lb_err (*fn)(void *arg, const char *id), void *arg);
    /* Takes entry id for a release: *entry a new reference, *hold for done(). LB_ERR_NOT_FOUND;
     * LB_ERR_CONFLICT: another release still holds it after a wait. */
    enum lb_err (*take)(struct quarantine_store *st, const char *id, json_t **entry,
                        struct quarantine_hold **hold);
    /* Ends a take: removes the entry (remove) or leaves it as it was. */
    enum lb_err (*done)(struct quarantine_store *st, struct quarantine_hold *hold, bool remove);
    /* Removes entry id; LB_ERR_NOT_FOUND. */
    enum lb_err (*remove)(struct quarantine_store *st, const char *id);
    /* Removes every entry quarantined at or before cutoff (now: the clock, for the store's own
     * garbage), adding how many to *count. */
    enum lb_err (*remove_older)(struct quarantine_store *st, long long cutoff, long long now,
                                size_t *count);
};

/* The PostgreSQL store (quarantine_pg.c): entries in leadbridge_spam, through a pool of at most
 * connections to dsn (copied). NULL with err set. */
struct quarantine_store *quarantine_pg_open(const char *dsn, size_t connections,
                                            const struct quarantine_store_ops **ops,
                                            struct lb_error *err);

/* An entry of the operator's list, from a whole entry (for a store that reads whole entries). */
json_t *quarantine_summary(const char *id, const json_t *entry);

#endif
