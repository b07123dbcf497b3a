/*
 * quarantine_pg.c: the spam quarantine in the PostgreSQL outbox's database (quarantine_store.h),
 * so that every host quarantines into, lists, releases and purges one shared quarantine.
 *
 * Table leadbridge_spam (schema version 3, db.c): the entry's JSON (jsonb, the job with its
 * "spam" record, as the spool's file) with id, form, reason and the time it was quarantined
 * copied out for the list and the retention.
 * - put() is one INSERT, committed synchronously before the post is answered; the primary key
 *   keeps an id once.
 * - A release holds the row (SELECT ... FOR UPDATE in a transaction of its own) while the front
 *   puts the job into the outbox, then deletes it in that transaction: a second host releasing
 *   the same entry at once waits for the first (at most QPG_LOCK_WAIT) and then finds it gone,
 *   instead of putting it twice (the outbox's primary key would keep one anyway).
 * - The list is built by the server (json_agg): the lead data never leaves the database for it.
 * - Every statement has its values as parameters (db_exec).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "log.h"
#include "outbox.h"
#include "quarantine_store.h"

#define QPG_LOCK_WAIT "5s" /* longest wait for an entry another release holds */

struct quarantine_store {
    struct db_pool *pool;
};

struct quarantine_hold {
    PGconn *conn; /* inside the transaction that holds the row */
    char id[OUTBOX_ID_SIZE];
};

static void qpg_close(struct quarantine_store *st)
{
    if (st == NULL)
        return;
    db_pool_close(st->pool);
    free(st);
}

static enum lb_err qpg_put(struct quarantine_store *st, const char *id, const json_t *entry,
                           struct lb_error *err)
{
    json_t *spam = json_object_get(entry, "spam");
    const char *form = json_string_value(json_object_get(entry, "form"));
    const char *reason = json_string_value(json_object_get(spam, "reason"));
    char when[24], *text = json_dumps(entry, JSON_COMPACT);
    const char *params[5];
    PGresult *r;
    enum lb_err e;

    if (text == NULL)
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    snprintf(when, sizeof(when), "%lld",
             (long long)json_integer_value(json_object_get(spam, "quarantined")));
    params[0] = id;
    params[1] = form != NULL ? form : "";
    params[2] = reason != NULL ? reason : "";
    params[3] = when;
    params[4] = text;
    r = db_pool_exec(st->pool,
                     "INSERT INTO leadbridge_spam (id, form, reason, quarantined, job)"
                     " VALUES ($1, $2, $3, $4::bigint, $5::jsonb)",
                     5, params, err);
    e = r != NULL ? LB_OK : err->code;
    if (e == LB_ERR_CONFLICT)
        lb_fail(err, e, "quarantine: %s exists", id);
    PQclear(r);
    free(text);
    return e;
}

/* One text value of a one-row, one-column query, parsed as JSON; NULL on error or no row. */
static json_t *qpg_json(struct quarantine_store *st, const char *sql, int n,
                        const char *const *params)
{
    struct lb_error err = {LB_OK, ""};
    PGresult *r = db_pool_exec(st->pool, sql, n, params, &err);
    json_t *j = NULL;

    if (r != NULL && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        j = json_loads(PQgetvalue(r, 0, 0), JSON_REJECT_DUPLICATES, NULL);
    else if (r == NULL)
        log_msg(LOG_WARN, "quarantine: %s", err.message);
    PQclear(r);
    return j;
}

static json_t *qpg_list(struct quarantine_store *st)
{
    return qpg_json(st,
                    "SELECT COALESCE(json_agg(json_build_object('id', id, 'form', form,"
                    "  'reason', reason, 'quarantined', quarantined, 'created', job->'created',"
                    "  'targets', CASE WHEN jsonb_typeof(job->'targets') = 'object' THEN"
                    "    COALESCE((SELECT json_agg(k) FROM jsonb_object_keys(job->'targets') k),"
                    "    '[]'::json) ELSE '[]'::json END)"
                    "  ORDER BY quarantined, id), '[]'::json)::text"
                    " FROM leadbridge_spam",
                    0, NULL);
}

static json_t *qpg_show(struct quarantine_store *st, const char *id)
{
    const char *params[1] = {id};

    return qpg_json(st, "SELECT job::text FROM leadbridge_spam WHERE id = $1", 1, params);
}

static enum lb_err qpg_each(struct quarantine_store *st,
                            enum lb_err (*fn)(void *arg, const char *id), void *arg)
{
    struct lb_error err = {LB_OK, ""};
    /* The connection is given back before fn runs: fn takes connections of its own. */
    PGresult *r = db_pool_exec(st->pool, "SELECT id FROM leadbridge_spam ORDER BY quarantined, id",
                               0, NULL, &err);
    enum lb_err e = LB_OK;

    if (r == NULL)
        return err.code;
    for (int i = 0; i < PQntuples(r) && e == LB_OK; i++)
        e = fn(arg, PQgetvalue(r, i, 0));
    PQclear(r);
    return e;
}

static enum lb_err qpg_take(struct quarantine_store *st, const char *id, json_t **entry,
                            struct quarantine_hold **hold)
{
    struct lb_error err = {LB_OK, ""};
    const char *params[1] = {id};
    struct quarantine_hold *h;
    PGresult *r = NULL;
    enum lb_err e;

    *entry = NULL;
    *hold = NULL;
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return LB_ERR_NOMEM;
    snprintf(h->id, sizeof(h->id), "%s", id);
    h->conn = db_acquire(st->pool, &err);
    if (h->conn == NULL) {
        free(h);
        return err.code;
    }
    e = db_command(h->conn, "BEGIN", 0, NULL, &err);
    if (e == LB_OK)
        e = db_command(h->conn, "SET LOCAL lock_timeout = '" QPG_LOCK_WAIT "'", 0, NULL, &err);
    /* Still held after the wait: LB_ERR_CONFLICT (lock_not_available, db_exec). */
    if (e == LB_OK)
        r = db_exec(h->conn, "SELECT job::text FROM leadbridge_spam WHERE id = $1 FOR UPDATE",
                    1, params, &err);
    if (r == NULL) {
        e = err.code;
    } else if (PQntuples(r) == 0) {
        e = LB_ERR_NOT_FOUND;
    } else {
        *entry = json_loads(PQgetvalue(r, 0, 0), JSON_REJECT_DUPLICATES, NULL);
        e = json_is_object(*entry) ? LB_OK : LB_ERR_IO;
    }
    PQclear(r);
    if (e != LB_OK) {
        json_decref(*entry);
        *entry = NULL;
        db_release(st->pool, h->conn); /* rolls the transaction back */
        free(h);
        return e;
    }
    *hold = h;
    return LB_OK;
}

static enum lb_err qpg_done(struct quarantine_store *st, struct quarantine_hold *h, bool remove)
{
    struct lb_error err = {LB_OK, ""};
    const char *params[1] = {h->id};
    enum lb_err e = LB_OK;

    if (remove) {
        e = db_command(h->conn, "DELETE FROM leadbridge_spam WHERE id = $1", 1, params, &err);
        if (e == LB_OK)
            e = db_command(h->conn, "COMMIT", 0, NULL, &err);
        if (e != LB_OK)
            log_msg(LOG_WARN, "quarantine: %s stays after its release: %s", h->id, err.message);
    }
    db_release(st->pool, h->conn); /* not removed: rolled back, the row as it was */
    free(h);
    return e;
}

/* A DELETE; *count (may be NULL) gets the rows it removed. */
static enum lb_err qpg_delete(struct quarantine_store *st, const char *sql, const char *param,
                              size_t *count)
{
    struct lb_error err = {LB_OK, ""};
    const char *params[1] = {param};
    PGresult *r = db_pool_exec(st->pool, sql, 1, params, &err);

    if (r == NULL)
        return err.code;
    if (count != NULL)
        *count = (size_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return LB_OK;
}

static enum lb_err qpg_remove(struct quarantine_store *st, const char *id)
{
    size_t n = 0;
    enum lb_err e = qpg_delete(st, "DELETE FROM leadbridge_spam WHERE id = $1", id, &n);

    return e == LB_OK && n == 0 ? LB_ERR_NOT_FOUND : e;
}

static enum lb_err qpg_remove_older(struct quarantine_store *st, long long cutoff,
                                    long long now, size_t *count)
{
    char cut[24];
    size_t n = 0;
    enum lb_err e;

    (void)now;
    snprintf(cut, sizeof(cut), "%lld", cutoff);
    e = qpg_delete(st, "DELETE FROM leadbridge_spam WHERE quarantined <= $1::bigint", cut, &n);
    *count += n;
    return e;
}

static const struct quarantine_store_ops qpg_ops = {
    .close = qpg_close,
    .put = qpg_put,
    .list = qpg_list,
    .show = qpg_show,
    .each = qpg_each,
    .take = qpg_take,
    .done = qpg_done,
    .remove = qpg_remove,
    .remove_older = qpg_remove_older,
};

struct quarantine_store *quarantine_pg_open(const char *dsn, size_t connections,
                                            const struct quarantine_store_ops **ops,
                                            struct lb_error *err)
{
    struct quarantine_store *st = calloc(1, sizeof(*st));

    if (st == NULL) {
        lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    st->pool = db_pool_open(dsn, connections, err); /* connects when first used */
    if (st->pool == NULL) {
        free(st);
        return NULL;
    }
    *ops = &qpg_ops;
    return st;
}
