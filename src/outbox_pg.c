/*
 * outbox_pg.c: the PostgreSQL store of the outbox (see outbox_store.h), for several web hosts
 * sharing one queue, one set of duplicate keys and one set of dead letters.
 *
 * Tables (made by `leadbridge db migrate`, see db.c): leadbridge_outbox_jobs holds each job's
 * JSON (jsonb, authoritative) with its state, created, next_attempt (queued) or finished
 * (records) copied out for the indexes; leadbridge_outbox_keys maps the SHA-256 of each
 * Idempotency-Key and content fingerprint to its job, under the primary key's unique index.
 *
 * - put() is one INSERT: its own transaction, committed (synchronous_commit as the server is
 *   configured) before it returns. A write with durable false commits with synchronous_commit off
 *   for that transaction only: a crash of the database may lose it (the job is then found as it
 *   was), never tear it. flush() forces the WAL of every earlier commit to disk.
 * - A claim is a session-level advisory lock (pg_try_advisory_lock on the id's first 64 bits) on a
 *   pooled connection that the hold keeps until released: it never waits, holds across the
 *   several commits of one delivery, and is dropped by the server when the holder's connection
 *   goes (the process died, even by SIGKILL, or its host vanished: TCP keepalives). A row lock
 *   could not be the claim: it ends at the first commit, and a delivery commits several times.
 *   The job row is read after the lock is taken (so the holder sees the last holder's writes)
 *   with SELECT ... FOR UPDATE SKIP LOCKED, so a claimer never waits on a row being changed.
 * - Work due now is announced with NOTIFY leadbridge_outbox (in the same transaction as the
 *   write); a retry worker waiting in pg_wait() LISTENs on its own connection and wakes at once.
 * - The targets' outbound rate limits are shared by the hosts (throttle_share, throttle.h): one
 *   row per target in leadbridge_target_rate, a token bucket kept as its "theoretical arrival
 *   time" (GCRA: tat, ms on the database's clock) and a "not before" time set by a 429. Taking a
 *   slot is one INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING: the row lock makes it
 *   atomic across hosts, and a host that finds no slot changes nothing. Those statements commit
 *   asynchronously: a crash of the database may forget the last few slots taken (a burst a
 *   little over the rate once after such a crash), never a job.
 * - Every statement has its values as parameters (db_exec); nothing is spliced into SQL text.
 */
#include "outbox_pg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "db.h"
#include "log.h"
#include "throttle.h"

#define PG_KEY_GRACE 60   /* seconds a key may point to a job not yet put (as the spool) */
#define PG_KEY_TRIES 4
#define PG_CHANNEL "leadbridge_outbox"
#define PG_RATE_CONNECTIONS 2 /* for the targets' rate limits, besides the job pool */

struct outbox_store {
    struct db_pool *pool;
    char *dsn;
    PGconn *listen;         /* the waiting thread's LISTEN connection, or NULL */
    pthread_mutex_t wait_lock; /* one waiter at a time */
    int wake[2];            /* pipe: pg_wake() writes, pg_wait() polls */
    struct throttle_shared rates; /* the targets' buckets in the database (throttle.h) */
    struct db_pool *rate_pool; /* their own connections: a delivery holding its claim's
                                  connection never waits on the job pool for a slot */
};

struct outbox_hold {
    PGconn *conn;           /* pooled; holds the advisory lock */
    char id[OUTBOX_ID_SIZE];
    char lock_key[24];      /* the advisory lock's bigint, as text */
};

/* The states a row can be in (OUTBOX_ASIDE is the spool's alone). */
static const char *const pg_state_names[OUTBOX_STATE__MAX] = {
    [OUTBOX_QUEUED] = "queued",
    [OUTBOX_DONE] = "done",
    [OUTBOX_DEAD] = "dead",
};

static enum outbox_state pg_state_from(const char *s)
{
    static const enum outbox_state stored[] = {OUTBOX_QUEUED, OUTBOX_DONE, OUTBOX_DEAD};

    for (size_t i = 0; i < sizeof(stored) / sizeof(stored[0]); i++)
        if (s != NULL && strcmp(s, pg_state_names[stored[i]]) == 0)
            return stored[i];
    return OUTBOX_UNKNOWN;
}

/* The advisory lock key for id: its first 16 hex digits as a signed 64-bit number. */
static void pg_lock_key(const char *id, char out[24])
{
    uint64_t v = 0;

    for (int i = 0; i < 16 && id[i] != '\0'; i++) {
        char ch = id[i];

        v = (v << 4) | (uint64_t)(ch <= '9' ? ch - '0' : ch - 'a' + 10);
    }
    snprintf(out, 24, "%" PRId64, (int64_t)v);
}

static void pg_int(char out[24], long long v)
{
    snprintf(out, 24, "%lld", v);
}

static long long pg_job_int(const json_t *job, const char *key, long long dflt)
{
    json_t *v = json_object_get(job, key);

    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

/* The job as compact JSON (a new string, caller frees), or NULL: no memory or too large. */
static char *pg_dump(const json_t *job, enum lb_err *e)
{
    char *text = json_dumps(job, JSON_COMPACT);

    *e = LB_OK;
    if (text == NULL) {
        *e = LB_ERR_NOMEM;
    } else if (strlen(text) > OUTBOX_FILE_MAX) {
        free(text);
        text = NULL;
        *e = LB_ERR_TOO_LARGE;
    }
    return text;
}

static json_t *pg_parse(const char *text)
{
    json_error_t jerr;

    return json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
}

/* ---- open and close ---- */

static void pg_close(struct outbox_store *st)
{
    if (st == NULL)
        return;
    throttle_unshare(st);
    PQfinish(st->listen);
    db_pool_close(st->pool);
    db_pool_close(st->rate_pool);
    if (st->wake[0] >= 0)
        close(st->wake[0]);
    if (st->wake[1] >= 0)
        close(st->wake[1]);
    pthread_mutex_destroy(&st->wait_lock);
    free(st->dsn);
    free(st);
}

/* ---- jobs ---- */

/* put() on connection c (err not NULL). */
static enum lb_err pg_insert(PGconn *c, const char *id, const json_t *job, long long due,
                             struct lb_error *err)
{
    char created[24], next[24], attempts[24], now[24];
    const char *form = json_string_value(json_object_get(job, "form"));
    const char *params[7];
    enum lb_err e;
    char *text = pg_dump(job, &e);

    if (text == NULL)
        return lb_fail(err, e, "job %s: %s", id, lb_strerror(e));
    pg_int(created, pg_job_int(job, "created", due));
    pg_int(next, due);
    pg_int(attempts, pg_job_int(job, "attempts", 0));
    pg_int(now, (long long)time(NULL));
    params[0] = id;
    params[1] = form != NULL ? form : "";
    params[2] = created;
    params[3] = next;
    params[4] = attempts;
    params[5] = text;
    params[6] = now;
    /* One statement, one transaction: the row and, when it is due already, the wake-up. */
    e = db_command(c,
                   "WITH ins AS (INSERT INTO leadbridge_outbox_jobs"
                   "  (id, form, state, created, next_attempt, attempts, job)"
                   "  VALUES ($1, $2, 'queued', $3::bigint, $4::bigint, $5::integer, $6::jsonb)"
                   "  RETURNING next_attempt)"
                   " SELECT pg_notify('" PG_CHANNEL "', '') FROM ins"
                   " WHERE next_attempt <= $7::bigint",
                   7, params, err);
    if (e == LB_ERR_CONFLICT)
        lb_fail(err, e, "job %s exists already", id);
    free(text);
    return e;
}

static enum lb_err pg_put(struct outbox_store *st, const char *id, const json_t *job,
                          long long due, struct lb_error *err)
{
    struct lb_error local;
    PGconn *c;
    enum lb_err e;

    if (err == NULL)
        err = &local;
    c = db_acquire(st->pool, err);
    if (c == NULL)
        return LB_ERR_UNAVAILABLE;
    e = pg_insert(c, id, job, due, err);
    db_release(st->pool, c);
    return e;
}

static void pg_hold_free(struct outbox_store *st, struct outbox_hold *h, bool unlock)
{
    if (h == NULL)
        return;
    if (unlock) {
        const char *params[1] = {h->lock_key};
        PGresult *r = db_exec(h->conn, "SELECT pg_advisory_unlock($1::bigint)", 1, params, NULL);
        bool unlocked = r != NULL && strcmp(PQgetvalue(r, 0, 0), "t") == 0;

        PQclear(r);
        if (!unlocked) {
            /* A session that may still hold the lock never goes back to the pool: a later
             * claim there would take it again (advisory locks are re-entrant). */
            db_discard(st->pool, h->conn);
            free(h);
            return;
        }
    }
    db_release(st->pool, h->conn);
    free(h);
}

/*
 * A hold on id: a pooled connection that has taken id's advisory lock, without waiting.
 * LB_ERR_CONFLICT when someone else holds it; LB_ERR_UNAVAILABLE, LB_ERR_NOMEM.
 */
static enum lb_err pg_hold_lock(struct outbox_store *st, const char *id,
                                struct outbox_hold **hold, struct lb_error *err)
{
    struct outbox_hold *h = calloc(1, sizeof(*h));
    const char *params[1];
    PGresult *r;
    enum lb_err e;

    *hold = NULL;
    if (h == NULL)
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    snprintf(h->id, sizeof(h->id), "%s", id);
    pg_lock_key(id, h->lock_key);
    h->conn = db_acquire(st->pool, err);
    if (h->conn == NULL) {
        free(h);
        return LB_ERR_UNAVAILABLE;
    }
    params[0] = h->lock_key;
    r = db_exec(h->conn, "SELECT pg_try_advisory_lock($1::bigint)", 1, params, err);
    if (r == NULL || strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        e = r == NULL ? err->code : lb_fail(err, LB_ERR_CONFLICT, "job %s is held", id);
        PQclear(r);
        pg_hold_free(st, h, false);
        return e;
    }
    PQclear(r);
    *hold = h;
    return LB_OK;
}

/*
 * put() and the claim at once: the advisory lock is taken on the connection that then inserts
 * the row, so from the moment the row (and its NOTIFY) is visible to another host's retry thread
 * it is held, and that thread skips it.
 */
static enum lb_err pg_put_claim(struct outbox_store *st, const char *id, const json_t *job,
                                long long due, struct outbox_hold **hold, struct lb_error *err)
{
    struct lb_error local;
    struct outbox_hold *h;
    enum lb_err e;

    if (err == NULL)
        err = &local;
    e = pg_hold_lock(st, id, &h, err);
    if (e == LB_OK)
        e = pg_insert(h->conn, id, job, due, err);
    if (e != LB_OK) {
        pg_hold_free(st, h, true);
        return e;
    }
    *hold = h;
    return LB_OK;
}

/* Files an unreadable job as a dead letter with the reason (the hold's lock is held). */
static void pg_set_aside(struct outbox_hold *h, const char *why)
{
    char now[24];
    const char *params[3];

    pg_int(now, (long long)time(NULL));
    params[0] = h->id;
    params[1] = why;
    params[2] = now;
    (void)db_command(h->conn,
                     "UPDATE leadbridge_outbox_jobs SET state = 'dead', finished = $3::bigint,"
                     " job = jsonb_build_object('id', id, 'form', form, 'created', created,"
                     "   'attempts', attempts, 'targets', '{}'::jsonb, 'dead_reason', $2::text,"
                     "   'unreadable', job)"
                     " WHERE id = $1",
                     3, params, NULL);
}

static enum lb_err pg_claim(struct outbox_store *st, const char *id, unsigned mask,
                            struct outbox_hold **hold, json_t **job, enum outbox_state *state,
                            struct lb_error *err)
{
    struct outbox_hold *h;
    const char *params[1];
    PGresult *r;
    enum outbox_state where;
    enum lb_err e = LB_OK;
    char why[160];
    json_t *j;
    struct lb_error local;

    if (err == NULL)
        err = &local;
    *hold = NULL;
    *job = NULL;
    e = pg_hold_lock(st, id, &h, err);
    if (e != LB_OK)
        return e;
    /*
     * A new statement, so a new snapshot: it sees whatever the last holder committed. SKIP
     * LOCKED: a row another transaction is changing right now (an operator's purge, retention)
     * is "busy", never waited for. The row lock ends with this statement (committed
     * asynchronously: it changed nothing); the advisory lock is the claim.
     */
    params[0] = id;
    r = db_exec(h->conn,
                "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true))"
                " SELECT j.state, j.job::text FROM leadbridge_outbox_jobs j, cfg"
                " WHERE j.id = $1 FOR UPDATE OF j SKIP LOCKED",
                1, params, err);
    if (r != NULL && PQntuples(r) == 0) {
        PQclear(r);
        r = db_exec(h->conn, "SELECT 1 FROM leadbridge_outbox_jobs WHERE id = $1", 1, params,
                    err);
        e = r == NULL ? err->code : PQntuples(r) > 0 ? LB_ERR_CONFLICT : LB_ERR_NOT_FOUND;
        PQclear(r);
        pg_hold_free(st, h, true);
        return e;
    }
    if (r == NULL) {
        pg_hold_free(st, h, true);
        return err->code;
    }
    where = PQntuples(r) == 1 ? pg_state_from(PQgetvalue(r, 0, 0)) : OUTBOX_UNKNOWN;
    if (where == OUTBOX_UNKNOWN || (mask & OUTBOX_IN(where)) == 0) {
        PQclear(r);
        pg_hold_free(st, h, true);
        return LB_ERR_NOT_FOUND;
    }
    j = pg_parse(PQgetvalue(r, 0, 1));
    PQclear(r);
    if (j == NULL || !outbox_job_check(j, id, why, sizeof(why))) {
        if (j == NULL)
            snprintf(why, sizeof(why), "not a JSON object");
        json_decref(j);
        if (where == OUTBOX_QUEUED)
            pg_set_aside(h, why);
        pg_hold_free(st, h, true);
        return lb_fail(err, LB_ERR_GONE, "job %s is unreadable (%s): set aside as dead", id,
                       why);
    }
    *hold = h;
    *job = j;
    if (state != NULL)
        *state = where;
    return LB_OK;
}

static enum lb_err pg_write(struct outbox_store *st, struct outbox_hold *h, const json_t *job,
                            enum outbox_state where, long long due, bool durable)
{
    char due_s[24], attempts[24], now[24];
    const char *params[7];
    struct lb_error err = {LB_OK, ""};
    enum lb_err e;
    char *text;
    PGresult *r;

    if (h == NULL || (where != OUTBOX_QUEUED && where != OUTBOX_DONE && where != OUTBOX_DEAD))
        return LB_ERR_INTERNAL;
    text = pg_dump(job, &e);
    if (text == NULL)
        return e;
    pg_int(due_s, due);
    pg_int(attempts, pg_job_int(job, "attempts", 0));
    pg_int(now, (long long)time(NULL));
    params[0] = h->id;
    params[1] = pg_state_names[where];
    params[2] = text;
    params[3] = attempts;
    params[4] = due_s;
    params[5] = durable ? "on" : "off";
    params[6] = now;
    /* set_config(..., true) lasts for this statement's own transaction only. */
    r = db_exec(h->conn,
                "WITH cfg AS (SELECT set_config('synchronous_commit', $6, true)),"
                " upd AS (UPDATE leadbridge_outbox_jobs SET state = $2, job = $3::jsonb,"
                "   attempts = $4::integer,"
                "   next_attempt = CASE WHEN $2 = 'queued' THEN $5::bigint ELSE next_attempt END,"
                "   finished = CASE WHEN $2 = 'queued' THEN NULL ELSE $5::bigint END"
                "   WHERE id = $1 AND EXISTS (SELECT 1 FROM cfg)"
                "   RETURNING state, next_attempt)"
                " SELECT (SELECT count(*) FROM upd),"
                "  (SELECT count(*) FROM (SELECT pg_notify('" PG_CHANNEL "', '') FROM upd"
                "   WHERE state = 'queued' AND next_attempt <= $7::bigint) AS woken)",
                7, params, &err);
    free(text);
    if (r == NULL) {
        log_msg(LOG_ERROR, "outbox: job %s: %s", h->id, err.message);
        return err.code;
    }
    e = strcmp(PQgetvalue(r, 0, 0), "1") == 0 ? LB_OK : LB_ERR_NOT_FOUND;
    PQclear(r);
    return e;
}

static void pg_release(struct outbox_store *st, struct outbox_hold *h)
{
    pg_hold_free(st, h, true);
}

static enum lb_err pg_due(struct outbox_store *st, long long now, size_t limit,
                          struct outbox_due **list, size_t *n, long long *next_due)
{
    char now_s[24], limit_s[24];
    const char *params[2];
    struct lb_error err = {LB_OK, ""};
    PGresult *r = NULL;
    PGconn *c;
    enum lb_err e = LB_OK;
    int rows;

    *list = NULL;
    *n = 0;
    *next_due = -1;
    pg_int(now_s, now);
    pg_int(limit_s, (long long)limit);
    params[0] = now_s;
    params[1] = limit > 0 ? limit_s : NULL; /* LIMIT NULL: all */
    c = db_acquire(st->pool, &err);
    if (c == NULL)
        return err.code;
    r = db_exec(c,
                "SELECT id, created FROM leadbridge_outbox_jobs"
                " WHERE state = 'queued' AND next_attempt <= $1::bigint"
                " ORDER BY created, id LIMIT $2::bigint",
                2, params, &err);
    if (r == NULL) {
        e = err.code;
        goto out;
    }
    rows = PQntuples(r);
    if (rows > 0) {
        *list = calloc((size_t)rows, sizeof(**list));
        if (*list == NULL) {
            e = LB_ERR_NOMEM;
            goto out;
        }
    }
    for (int i = 0; i < rows; i++) {
        snprintf((*list)[i].id, sizeof((*list)[i].id), "%s", PQgetvalue(r, i, 0));
        (*list)[i].created = strtoll(PQgetvalue(r, i, 1), NULL, 10);
    }
    *n = (size_t)rows;
    PQclear(r);
    r = db_exec(c,
                "SELECT min(next_attempt) FROM leadbridge_outbox_jobs"
                " WHERE state = 'queued' AND next_attempt > $1::bigint",
                1, params, &err);
    if (r == NULL) {
        e = err.code;
        goto out;
    }
    if (!PQgetisnull(r, 0, 0))
        *next_due = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
out:
    if (e != LB_OK) {
        free(*list);
        *list = NULL;
        *n = 0;
    }
    PQclear(r);
    db_release(st->pool, c);
    return e;
}

static json_t *pg_load(struct outbox_store *st, const char *id, enum outbox_state *state)
{
    const char *params[1] = {id};
    struct lb_error err = {LB_OK, ""};
    PGconn *c = db_acquire(st->pool, &err);
    PGresult *r;
    json_t *j = NULL;

    if (state != NULL)
        *state = OUTBOX_UNKNOWN;
    if (c == NULL)
        return NULL;
    r = db_exec(c, "SELECT state, job::text FROM leadbridge_outbox_jobs WHERE id = $1", 1,
                params, &err);
    if (r != NULL && PQntuples(r) == 1) {
        if (state != NULL)
            *state = pg_state_from(PQgetvalue(r, 0, 0));
        j = pg_parse(PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    db_release(st->pool, c);
    return j;
}

static enum lb_err pg_each(struct outbox_store *st, enum outbox_state state, outbox_each_fn fn,
                           void *arg)
{
    const char *params[1];
    struct lb_error err = {LB_OK, ""};
    PGconn *c;
    PGresult *r;
    enum lb_err e = LB_OK;

    if (state != OUTBOX_QUEUED && state != OUTBOX_DONE && state != OUTBOX_DEAD)
        return LB_OK; /* nothing is ever set aside here */
    params[0] = pg_state_names[state];
    c = db_acquire(st->pool, &err);
    if (c == NULL)
        return err.code;
    r = db_exec(c,
                "SELECT id, job::text FROM leadbridge_outbox_jobs WHERE state = $1"
                " ORDER BY created, id",
                1, params, &err);
    /* The rows are in memory: give the connection back before calling out. */
    db_release(st->pool, c);
    if (r == NULL)
        return err.code;
    for (int i = 0; i < PQntuples(r) && e == LB_OK; i++) {
        json_t *j = pg_parse(PQgetvalue(r, i, 1));

        e = fn(arg, PQgetvalue(r, i, 0), state, j);
        json_decref(j);
    }
    PQclear(r);
    return e;
}

static enum lb_err pg_remove_older(struct outbox_store *st, enum outbox_state state,
                                   long long cutoff, size_t *count)
{
    char cutoff_s[24];
    const char *params[2];
    struct lb_error err = {LB_OK, ""};
    PGconn *c;
    PGresult *r;

    if (state != OUTBOX_DONE && state != OUTBOX_DEAD)
        return LB_ERR_INTERNAL;
    pg_int(cutoff_s, cutoff);
    params[0] = pg_state_names[state];
    params[1] = cutoff_s;
    c = db_acquire(st->pool, &err);
    if (c == NULL)
        return err.code;
    r = db_exec(c,
                "DELETE FROM leadbridge_outbox_jobs WHERE state = $1 AND finished <= $2::bigint",
                2, params, &err);
    db_release(st->pool, c);
    if (r == NULL)
        return err.code;
    if (count != NULL)
        *count += (size_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return LB_OK;
}

/* Counts by state and the oldest queued job, each from its partial index (an index-only scan
 * where the visibility map allows): no job is read, however many records retention keeps. */
static enum lb_err pg_stats(struct outbox_store *st, struct outbox_stats *out)
{
    struct lb_error err = {LB_OK, ""};
    PGresult *r = db_pool_exec(st->pool,
                               "SELECT (SELECT count(*) FROM leadbridge_outbox_jobs"
                               "   WHERE state = 'queued'),"
                               " (SELECT count(*) FROM leadbridge_outbox_jobs WHERE state = 'done'),"
                               " (SELECT count(*) FROM leadbridge_outbox_jobs WHERE state = 'dead'),"
                               " (SELECT min(created) FROM leadbridge_outbox_jobs"
                               "   WHERE state = 'queued')",
                               0, NULL, &err);

    if (r == NULL)
        return err.code;
    out->queued = (size_t)strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    out->done = (size_t)strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    out->dead = (size_t)strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    if (!PQgetisnull(r, 0, 3))
        out->oldest_created = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
    PQclear(r);
    return LB_OK;
}

/* ---- duplicate keys ---- */

static void pg_key_hash(const char *key, char out[2 * SHA256_DIGEST_SIZE + 1])
{
    uint8_t h[SHA256_DIGEST_SIZE];

    sha256(key, strlen(key), h);
    hex_encode(h, sizeof(h), out);
}

static enum lb_err pg_reserve_key(struct outbox_store *st, const char *key, const char *body_hash,
                                  const char *job_id, long long now, long long expires,
                                  bool *duplicate, char existing_id[OUTBOX_ID_SIZE])
{
    char hash[2 * SHA256_DIGEST_SIZE + 1], now_s[24], exp_s[24], grace[24];
    const char *params[6];
    struct lb_error err = {LB_OK, ""};
    PGconn *c;
    PGresult *r = NULL;
    enum lb_err e = LB_ERR_IO;

    *duplicate = false;
    existing_id[0] = '\0';
    if (!outbox_id_valid(job_id))
        return LB_ERR_BAD_REQUEST;
    pg_key_hash(key, hash);
    pg_int(now_s, now);
    pg_int(exp_s, expires);
    pg_int(grace, now - PG_KEY_GRACE);
    params[0] = hash;
    params[1] = job_id;
    params[2] = body_hash;
    params[3] = now_s;
    params[4] = exp_s;
    params[5] = grace;
    c = db_acquire(st->pool, &err);
    if (c == NULL)
        return err.code;
    for (int i = 0; i < PG_KEY_TRIES; i++) {
        /* New, expired, or left by a job that was never put: ours. The unique index decides
         * between two hosts inserting the same key at once. Committed asynchronously: the
         * job's put() commits synchronously after it, which flushes the WAL up to there, key
         * included; a key lost with a job never put is harmless. One disk flush saved. */
        r = db_exec(c,
                    "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true))"
                    " INSERT INTO leadbridge_outbox_keys AS k"
                    " (key_hash, job_id, body_hash, created, expires)"
                    " SELECT $1, $2, $3, $4::bigint, $5::bigint FROM cfg"
                    " ON CONFLICT (key_hash) DO UPDATE SET job_id = EXCLUDED.job_id,"
                    "  body_hash = EXCLUDED.body_hash, created = EXCLUDED.created,"
                    "  expires = EXCLUDED.expires"
                    " WHERE k.expires <= EXCLUDED.created OR (k.created < $6::bigint AND NOT"
                    "  EXISTS (SELECT 1 FROM leadbridge_outbox_jobs j WHERE j.id = k.job_id))"
                    " RETURNING job_id",
                    6, params, &err);
        if (r == NULL) {
            e = err.code;
            break;
        }
        if (PQntuples(r) == 1) {
            e = LB_OK;
            break;
        }
        PQclear(r);
        r = db_exec(c,
                    "SELECT job_id, body_hash FROM leadbridge_outbox_keys WHERE key_hash = $1",
                    1, params, &err);
        if (r == NULL) {
            e = err.code;
            break;
        }
        if (PQntuples(r) == 1) {
            snprintf(existing_id, OUTBOX_ID_SIZE, "%s", PQgetvalue(r, 0, 0));
            if (body_hash == NULL || PQgetisnull(r, 0, 1) ||
                strcmp(PQgetvalue(r, 0, 1), body_hash) == 0) {
                *duplicate = true;
                e = LB_OK;
            } else {
                e = LB_ERR_CONFLICT;
            }
            break;
        }
        PQclear(r); /* expired and removed in between: try again */
        r = NULL;
    }
    PQclear(r);
    db_release(st->pool, c);
    return e;
}

static enum lb_err pg_release_key(struct outbox_store *st, const char *key, const char *job_id)
{
    char hash[2 * SHA256_DIGEST_SIZE + 1];
    const char *params[2] = {hash, job_id};
    struct lb_error err = {LB_OK, ""};
    PGconn *c;
    enum lb_err e;

    pg_key_hash(key, hash);
    c = db_acquire(st->pool, &err);
    if (c == NULL)
        return err.code;
    e = db_command(c, "DELETE FROM leadbridge_outbox_keys WHERE key_hash = $1 AND job_id = $2",
                   2, params, &err);
    db_release(st->pool, c);
    return e;
}

static enum lb_err pg_expire(struct outbox_store *st, long long now)
{
    char now_s[24];
    const char *params[1] = {now_s};
    struct lb_error err = {LB_OK, ""};
    PGconn *c;
    enum lb_err e;

    pg_int(now_s, now);
    c = db_acquire(st->pool, &err);
    if (c == NULL)
        return err.code;
    e = db_command(c, "DELETE FROM leadbridge_outbox_keys WHERE expires <= $1::bigint", 1,
                   params, &err);
    db_release(st->pool, c);
    return e;
}

static enum lb_err pg_flush(struct outbox_store *st)
{
    struct lb_error err = {LB_OK, ""};
    PGconn *c = db_acquire(st->pool, &err);
    enum lb_err e;

    if (c == NULL)
        return err.code;
    /* A transaction with an id commits synchronously, which flushes the WAL up to its commit
     * record: every asynchronous commit before it is then on disk too. */
    e = db_command(c, "SELECT txid_current()", 0, NULL, &err);
    db_release(st->pool, c);
    return e;
}

/* ---- the targets' rate limits, shared by the hosts ---- */

static void pg_float(char out[40], double v)
{
    snprintf(out, 40, "%.3f", v);
}

/*
 * GCRA: a slot costs interval = 1000 / per_second ms; a target may take one at now when
 * max(tat, now) + interval - now <= burst * interval (a full bucket of burst) and now is past
 * not_before; taking it moves tat to max(tat, now) + interval. A target's first slot makes its
 * row. The wait when there is none is read from the row as it was when the statement began.
 */
static int pg_rate_take(void *arg, const char *target, double burst, double per_second,
                        long long *wait_ms)
{
    struct outbox_store *st = arg;
    char interval[40], span[40];
    const char *params[3];
    struct lb_error err = {LB_OK, ""};
    PGconn *c;
    PGresult *r;
    int took = -1;

    *wait_ms = 1000;
    pg_float(interval, 1000.0 / per_second);
    pg_float(span, burst * 1000.0 / per_second);
    params[0] = target;
    params[1] = interval;
    params[2] = span;
    c = db_acquire(st->rate_pool, &err);
    if (c == NULL)
        return -1;
    r = db_exec(c,
                "WITH clock AS (SELECT extract(epoch FROM clock_timestamp()) * 1000 AS now,"
                "   set_config('synchronous_commit', 'off', true) AS sc),"
                " took AS (INSERT INTO leadbridge_target_rate AS r (target, tat, not_before)"
                "   SELECT $1, clock.now + $2::float8, 0 FROM clock WHERE clock.sc IS NOT NULL"
                "   ON CONFLICT (target) DO UPDATE"
                "   SET tat = GREATEST(r.tat, EXCLUDED.tat - $2::float8) + $2::float8"
                "   WHERE r.not_before <= EXCLUDED.tat - $2::float8"
                "   AND GREATEST(r.tat, EXCLUDED.tat - $2::float8) + $2::float8"
                "     <= EXCLUDED.tat - $2::float8 + $3::float8"
                "   RETURNING 1)"
                " SELECT (SELECT count(*) FROM took),"
                "  (SELECT ceil(GREATEST(r.not_before - clock.now,"
                "     r.tat + $2::float8 - $3::float8 - clock.now))::bigint"
                "   FROM leadbridge_target_rate r WHERE r.target = $1)"
                " FROM clock",
                3, params, &err);
    if (r != NULL && PQntuples(r) == 1) {
        took = strcmp(PQgetvalue(r, 0, 0), "1") == 0;
        if (!took && !PQgetisnull(r, 0, 1))
            *wait_ms = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    } else if (r == NULL) {
        log_msg(LOG_WARN, "outbox: rate limit of %s: %s", target, err.message);
    }
    PQclear(r);
    db_release(st->rate_pool, c);
    return took;
}

/* A 429: no slot for hold_ms, and the bucket empty at the end of it (as the host's own). */
static void pg_rate_hold(void *arg, const char *target, double burst, double per_second,
                         long long hold_ms)
{
    struct outbox_store *st = arg;
    char hold[40], span[40];
    const char *params[3];
    struct lb_error err = {LB_OK, ""};
    PGconn *c;

    pg_float(hold, (double)hold_ms);
    pg_float(span, burst * 1000.0 / per_second);
    params[0] = target;
    params[1] = hold;
    params[2] = span;
    c = db_acquire(st->rate_pool, &err);
    if (c == NULL)
        return;
    if (db_command(c,
                   "WITH clock AS (SELECT extract(epoch FROM clock_timestamp()) * 1000 AS now,"
                   "   set_config('synchronous_commit', 'off', true) AS sc)"
                   " INSERT INTO leadbridge_target_rate AS r (target, tat, not_before)"
                   " SELECT $1, clock.now + $2::float8 + $3::float8, clock.now + $2::float8"
                   " FROM clock WHERE clock.sc IS NOT NULL"
                   " ON CONFLICT (target) DO UPDATE"
                   " SET not_before = GREATEST(r.not_before, EXCLUDED.not_before),"
                   "  tat = GREATEST(r.tat, EXCLUDED.tat)",
                   3, params, &err) != LB_OK)
        log_msg(LOG_WARN, "outbox: rate limit of %s: %s", target, err.message);
    db_release(st->rate_pool, c);
}

/* ---- waiting for work ---- */

/* Connects the LISTEN connection when there is none; false when the database is down. */
static bool pg_listen_ready(struct outbox_store *st)
{
    struct lb_error err = {LB_OK, ""};

    if (st->listen != NULL && PQstatus(st->listen) == CONNECTION_OK)
        return true;
    PQfinish(st->listen);
    st->listen = db_connect(st->dsn);
    if (st->listen == NULL || PQstatus(st->listen) != CONNECTION_OK ||
        db_command(st->listen, "LISTEN " PG_CHANNEL, 0, NULL, &err) != LB_OK) {
        PQfinish(st->listen);
        st->listen = NULL;
        return false;
    }
    return true;
}

static void pg_wait(struct outbox_store *st, long long ms)
{
    struct pollfd fds[2];
    nfds_t n = 1;
    char drain[64];
    PGnotify *note;

    if (ms < 0)
        ms = 0;
    pthread_mutex_lock(&st->wait_lock);
    fds[0].fd = st->wake[0];
    fds[0].events = POLLIN;
    if (pg_listen_ready(st)) {
        fds[1].fd = PQsocket(st->listen);
        fds[1].events = POLLIN;
        n = 2;
    }
    if (poll(fds, n, ms > 60000 ? 60000 : (int)ms) > 0) {
        if (fds[0].revents != 0)
            while (read(st->wake[0], drain, sizeof(drain)) > 0)
                ;
        if (n == 2 && fds[1].revents != 0) {
            if (PQconsumeInput(st->listen) == 0) {
                PQfinish(st->listen); /* the server went away: connect again next time */
                st->listen = NULL;
            } else {
                while ((note = PQnotifies(st->listen)) != NULL)
                    PQfreemem(note);
            }
        }
    }
    pthread_mutex_unlock(&st->wait_lock);
}

static void pg_wake(struct outbox_store *st)
{
    ssize_t w = write(st->wake[1], "x", 1);

    (void)w; /* a full pipe already wakes the waiter */
}

static const struct outbox_store_ops pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .put = pg_put,
    .claim = pg_claim,
    .write = pg_write,
    .release = pg_release,
    .due = pg_due,
    .load = pg_load,
    .each = pg_each,
    .remove_older = pg_remove_older,
    .reserve_key = pg_reserve_key,
    .release_key = pg_release_key,
    .expire = pg_expire,
    .flush = pg_flush,
    .stats = pg_stats,
    .wait = pg_wait,
    .wake = pg_wake,
    .put_claim = pg_put_claim,
};

struct outbox_store *outbox_pg_open(const char *dsn, size_t connections,
                                    const struct outbox_store_ops **ops, struct lb_error *err)
{
    struct outbox_store *st = calloc(1, sizeof(*st));
    PGconn *c;

    if (st == NULL) {
        lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    st->wake[0] = st->wake[1] = -1;
    pthread_mutex_init(&st->wait_lock, NULL);
    st->dsn = strdup(dsn != NULL ? dsn : "");
    if (st->dsn == NULL || pipe2(st->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        lb_fail(err, LB_ERR_IO, "cannot make the wake-up pipe: %s", strerror(errno));
        pg_close(st);
        return NULL;
    }
    st->pool = db_pool_open(dsn, connections, err);
    if (st->pool != NULL)
        st->rate_pool = db_pool_open(dsn, PG_RATE_CONNECTIONS, err);
    if (st->pool == NULL || st->rate_pool == NULL) {
        pg_close(st);
        return NULL;
    }
    /* A wrong schema stops the start; an unreachable database does not (answers are 503 until
     * it is back, and the hosts need not be started in order). */
    c = db_acquire(st->pool, err);
    if (c == NULL && strstr(err->message, "schema") != NULL) {
        pg_close(st);
        return NULL;
    }
    if (c == NULL)
        log_msg(LOG_WARN, "outbox: %s (answering 503 until it is reachable)", err->message);
    db_release(st->pool, c);
    st->rates.take = pg_rate_take;
    st->rates.hold = pg_rate_hold;
    st->rates.arg = st;
    throttle_share(&st->rates);
    *ops = &pg_ops;
    return st;
}
