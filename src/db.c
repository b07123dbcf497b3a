/*
 * db.c: the libpq connection pool, statements with separate parameters, and the schema's
 * migrations (see db.h).
 *
 * The pool is a stack of idle connections under one mutex; a thread that finds none idle and the
 * pool full waits on a condition variable (bounded). Connecting and checking happen outside the
 * lock. After a failed connect the pool answers "unavailable" at once for DB_COOL_OFF_MS instead
 * of making every request wait for its own connect attempt while the database is down.
 *
 * Migrations are a table: migration i brings the schema from version i to i + 1. They run only
 * from `leadbridge db migrate`, all in one transaction with an advisory lock held.
 */
#include "db.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DB_COOL_OFF_MS 500
#define DB_MIGRATE_LOCK "7809282374836225"   /* pg_advisory_xact_lock key for migrations */

struct db_pool {
    char *dsn;
    size_t max;
    size_t n_open;          /* connections in use, idle or being connected */
    PGconn **idle;          /* stack of max */
    size_t n_idle;
    long long failed_at_ms; /* monotonic time of the last failed connect, or 0 */
    char failure[160];      /* why it failed (libpq's words; no password appears there) */
    pthread_mutex_t lock;
    pthread_cond_t freed;
};

/*
 * Migration i: from version i to i + 1. Times are seconds since the epoch (bigint) on the
 * bridge's clock, as in the spool. Claims are session-level advisory locks (pg_try_advisory_lock
 * on the job id's first 64 bits) that need no table, so a worker that dies, even by SIGKILL,
 * drops its claims with its connection (see outbox_pg.c).
 */
static const char *const db_migration_1[] = {
    "CREATE TABLE leadbridge_outbox_jobs ("
    "  id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),"
    "  form text NOT NULL,"
    "  state text NOT NULL CHECK (state IN ('queued', 'done', 'dead')),"
    "  created bigint NOT NULL,"
    "  next_attempt bigint NOT NULL,"
    "  attempts integer NOT NULL DEFAULT 0,"
    "  finished bigint,"
    "  job jsonb NOT NULL)",
    "CREATE INDEX leadbridge_outbox_jobs_due ON leadbridge_outbox_jobs (next_attempt, created)"
    "  WHERE state = 'queued'",
    "CREATE INDEX leadbridge_outbox_jobs_filed ON leadbridge_outbox_jobs (state, finished)"
    "  WHERE state <> 'queued'",
    "CREATE INDEX leadbridge_outbox_jobs_created ON leadbridge_outbox_jobs (created, id)",
    "CREATE TABLE leadbridge_outbox_keys ("
    "  key_hash text PRIMARY KEY CHECK (key_hash ~ '^[0-9a-f]{64}$'),"
    "  job_id text NOT NULL,"
    "  body_hash text,"
    "  created bigint NOT NULL,"
    "  expires bigint NOT NULL)",
    "CREATE INDEX leadbridge_outbox_keys_expires ON leadbridge_outbox_keys (expires)",
    "CREATE INDEX leadbridge_outbox_keys_job ON leadbridge_outbox_keys (job_id)",
    "CREATE TABLE leadbridge_target_rate ("
    "  target text NOT NULL,"
    "  window_start bigint NOT NULL,"
    "  sent integer NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (target, window_start))",
    NULL,
};

/*
 * Version 2: the targets' outbound rate limits shared by the hosts (outbox_pg.c). Version 1's
 * leadbridge_target_rate (counts per fixed window) was never used; a token bucket per target
 * replaces it: tat, the bucket's "theoretical arrival time", and not_before, the end of a 429's
 * hold, both milliseconds since the epoch on the database's clock.
 */
static const char *const db_migration_2[] = {
    "DROP TABLE leadbridge_target_rate",
    "CREATE TABLE leadbridge_target_rate ("
    "  target text PRIMARY KEY,"
    "  tat double precision NOT NULL,"
    "  not_before double precision NOT NULL DEFAULT 0)",
    NULL,
};

/*
 * Version 3: the spam quarantine shared by the hosts (quarantine_pg.c): each entry's JSON (the
 * job with its "spam" record), and what the list and the retention read, copied out.
 */
static const char *const db_migration_3[] = {
    "CREATE TABLE leadbridge_spam ("
    "  id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),"
    "  form text NOT NULL,"
    "  reason text NOT NULL,"
    "  quarantined bigint NOT NULL,"
    "  job jsonb NOT NULL)",
    "CREATE INDEX leadbridge_spam_quarantined ON leadbridge_spam (quarantined, id)",
    NULL,
};

/* db_migrations[i]: the statements from version i to i + 1. */
static const char *const *const db_migrations[] = {db_migration_1, db_migration_2,
                                                   db_migration_3};

#define DB_N_MIGRATIONS (sizeof(db_migrations) / sizeof(db_migrations[0]))

_Static_assert(DB_N_MIGRATIONS == DB_SCHEMA_VERSION, "one migration per schema version");

static long long db_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* libpq's error text on one line, capped. */
static void db_conn_message(PGconn *c, char *out, size_t size)
{
    const char *m = c != NULL ? PQerrorMessage(c) : "out of memory";
    size_t i, j = 0;

    for (i = 0; m[i] != '\0' && j + 1 < size; i++)
        out[j++] = m[i] == '\n' || m[i] == '\r' || m[i] == '\t' ? ' ' : m[i];
    while (j > 0 && out[j - 1] == ' ')
        j--;
    out[j] = '\0';
}

/* Server notices ("relation already exists, skipping") are not for the log. */
static void db_quiet(void *arg, const char *message)
{
}

PGconn *db_connect(const char *dsn)
{
    static const char *const keys[] = {
        "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "application_name", "dbname", NULL,
    };
    const char *values[] = {"5", "1", "30", "10", "3", "30000", "leadbridge", dsn, NULL};
    PGconn *c = PQconnectdbParams(keys, values, 1);

    if (c != NULL)
        PQsetNoticeProcessor(c, db_quiet, NULL);
    return c;
}

struct db_pool *db_pool_open(const char *dsn, size_t max, struct lb_error *err)
{
    struct db_pool *p;

    if (dsn == NULL || *dsn == '\0' || max < 1 || max > DB_POOL_MAX) {
        lb_fail(err, LB_ERR_CONFIG, "a database connection string and 1..%d connections",
                DB_POOL_MAX);
        return NULL;
    }
    p = calloc(1, sizeof(*p));
    if (p != NULL) {
        p->dsn = strdup(dsn);
        p->idle = calloc(max, sizeof(*p->idle));
    }
    if (p == NULL || p->dsn == NULL || p->idle == NULL || pthread_mutex_init(&p->lock, NULL) != 0) {
        if (p != NULL) {
            free(p->idle);
            free(p->dsn);
        }
        free(p);
        lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    pthread_cond_init(&p->freed, NULL);
    p->max = max;
    return p;
}

void db_pool_close(struct db_pool *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n_idle; i++)
        PQfinish(p->idle[i]);
    pthread_cond_destroy(&p->freed);
    pthread_mutex_destroy(&p->lock);
    free(p->idle);
    free(p->dsn);
    free(p);
}

/* Gives up one slot (a connection closed or never made) and wakes a waiter. */
static void db_drop_slot(struct db_pool *p, bool failed, const char *why)
{
    pthread_mutex_lock(&p->lock);
    p->n_open--;
    if (failed) {
        p->failed_at_ms = db_now_ms();
        snprintf(p->failure, sizeof(p->failure), "%s", why);
    }
    pthread_cond_signal(&p->freed);
    pthread_mutex_unlock(&p->lock);
}

/* Whether an idle connection still works, without a round trip: reads what the server sent
 * (an admin shutdown notice, EOF) and looks at the state. */
static bool db_idle_ok(PGconn *c)
{
    PGnotify *n;

    if (PQstatus(c) != CONNECTION_OK || PQconsumeInput(c) == 0 || PQstatus(c) != CONNECTION_OK)
        return false;
    while ((n = PQnotifies(c)) != NULL)
        PQfreemem(n);
    return PQtransactionStatus(c) == PQTRANS_IDLE;
}

/* Opens and checks a new connection; NULL with err on failure. */
static PGconn *db_open_checked(struct db_pool *p, struct lb_error *err)
{
    PGconn *c = db_connect(p->dsn);
    char why[160];
    int version = -1;

    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        db_conn_message(c, why, sizeof(why));
        PQfinish(c);
        lb_fail(err, LB_ERR_UNAVAILABLE, "the database is unreachable: %s", why);
        db_drop_slot(p, true, err->message);
        return NULL;
    }
    if (db_schema_version(c, &version, err) != LB_OK) {
        err->code = LB_ERR_UNAVAILABLE;
    } else if (version != DB_SCHEMA_VERSION) {
        lb_fail(err, LB_ERR_UNAVAILABLE,
                "the database schema is at version %d, this leadbridge needs %d: run "
                "`leadbridge db migrate`", version, DB_SCHEMA_VERSION);
    } else {
        return c;
    }
    PQfinish(c);
    db_drop_slot(p, true, err->message);
    return NULL;
}

PGconn *db_acquire(struct db_pool *p, struct lb_error *err)
{
    long long deadline = db_now_ms() + DB_ACQUIRE_WAIT_MS;
    PGconn *c = NULL;
    struct timespec until;
    struct lb_error local;

    if (err == NULL)
        err = &local;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += DB_ACQUIRE_WAIT_MS / 1000;
    until.tv_nsec += (DB_ACQUIRE_WAIT_MS % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (p->n_idle > 0) {
            c = p->idle[--p->n_idle];
            break;
        }
        if (p->failed_at_ms != 0 && db_now_ms() - p->failed_at_ms < DB_COOL_OFF_MS) {
            lb_fail(err, LB_ERR_UNAVAILABLE, "%s", p->failure);
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        if (p->n_open < p->max) {
            p->n_open++;
            break; /* c stays NULL: connect below, outside the lock */
        }
        if (db_now_ms() >= deadline ||
            pthread_cond_timedwait(&p->freed, &p->lock, &until) == ETIMEDOUT) {
            if (p->n_idle > 0)
                continue;
            lb_fail(err, LB_ERR_UNAVAILABLE, "no database connection came free within %d ms",
                    DB_ACQUIRE_WAIT_MS);
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
    }
    pthread_mutex_unlock(&p->lock);
    if (c != NULL && db_idle_ok(c))
        return c;
    PQfinish(c); /* closed by the server (restart, failover): connect again */
    c = db_open_checked(p, err);
    if (c != NULL) {
        pthread_mutex_lock(&p->lock);
        p->failed_at_ms = 0;
        pthread_mutex_unlock(&p->lock);
    }
    return c;
}

void db_release(struct db_pool *p, PGconn *c)
{
    if (c == NULL)
        return;
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
        PGresult *r = PQexec(c, "ROLLBACK");

        PQclear(r);
    }
    if (PQstatus(c) != CONNECTION_OK || PQtransactionStatus(c) != PQTRANS_IDLE) {
        PQfinish(c);
        db_drop_slot(p, false, NULL);
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->idle[p->n_idle++] = c;
    pthread_cond_signal(&p->freed);
    pthread_mutex_unlock(&p->lock);
}

void db_discard(struct db_pool *p, PGconn *c)
{
    if (c == NULL)
        return;
    PQfinish(c);
    db_drop_slot(p, false, NULL);
}

/* Maps a failed statement's SQLSTATE (and the connection's state) to our vocabulary. */
static enum lb_err db_classify(PGconn *c, const PGresult *r)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    if (PQstatus(c) != CONNECTION_OK || state == NULL)
        return PQstatus(c) != CONNECTION_OK ? LB_ERR_UNAVAILABLE : LB_ERR_IO;
    if (strcmp(state, "23505") == 0 || strcmp(state, "40001") == 0 ||
        strcmp(state, "40P01") == 0 || strcmp(state, "55P03") == 0)
        return LB_ERR_CONFLICT;
    /* 08: connection exception; 53: insufficient resources; 57P0x: shutting down or
     * starting; 25006: read-only transaction (a standby after a failover). */
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 ||
        strncmp(state, "57P", 3) == 0 || strcmp(state, "25006") == 0)
        return LB_ERR_UNAVAILABLE;
    return LB_ERR_IO;
}

PGresult *db_exec(PGconn *c, const char *sql, int n, const char *const *values,
                  struct lb_error *err)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, values, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    const char *msg;
    char why[160];
    enum lb_err code;

    if (r != NULL && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK))
        return r;
    code = db_classify(c, r);
    /* Only the server's primary message: its DETAIL may quote a value. */
    msg = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (msg == NULL) {
        db_conn_message(c, why, sizeof(why));
        msg = why;
    }
    lb_fail(err, code, "database: %.200s", msg);
    PQclear(r);
    return NULL;
}

PGresult *db_pool_exec(struct db_pool *p, const char *sql, int n, const char *const *values,
                       struct lb_error *err)
{
    PGconn *c = db_acquire(p, err);
    PGresult *r;

    if (c == NULL)
        return NULL;
    r = db_exec(c, sql, n, values, err);
    db_release(p, c);
    return r;
}

enum lb_err db_command(PGconn *c, const char *sql, int n, const char *const *values,
                       struct lb_error *err)
{
    PGresult *r = db_exec(c, sql, n, values, err);

    if (r == NULL)
        return err != NULL ? err->code : LB_ERR_IO;
    PQclear(r);
    return LB_OK;
}

enum lb_err db_schema_version(PGconn *c, int *version, struct lb_error *err)
{
    PGresult *r = db_exec(c, "SELECT to_regclass('leadbridge_schema') IS NOT NULL", 0, NULL,
                          err);
    enum lb_err e = LB_OK;

    *version = -1;
    if (r == NULL)
        return err->code;
    if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        PQclear(r);
        *version = 0;
        return LB_OK;
    }
    PQclear(r);
    r = db_exec(c, "SELECT max(version) FROM leadbridge_schema", 0, NULL, err);
    if (r == NULL)
        return err->code;
    if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        *version = atoi(PQgetvalue(r, 0, 0));
    else
        *version = 0;
    PQclear(r);
    return e;
}

/* A single connection for a command (*out; PQfinish it even on failure). */
static enum lb_err db_connect_once(const char *dsn, PGconn **out, struct lb_error *err)
{
    char why[160];

    *out = db_connect(dsn);
    if (*out != NULL && PQstatus(*out) == CONNECTION_OK)
        return LB_OK;
    db_conn_message(*out, why, sizeof(why));
    return lb_fail(err, LB_ERR_UNAVAILABLE, "the database is unreachable: %s", why);
}

enum lb_err db_migrate(const char *dsn, FILE *out, struct lb_error *err)
{
    PGconn *c = NULL;
    char vtext[16];
    const char *param[1];
    int version = 0;
    enum lb_err e = db_connect_once(dsn, &c, err);

    if (e != LB_OK)
        goto out;
    e = db_command(c, "BEGIN", 0, NULL, err);
    if (e == LB_OK)
        e = db_command(c, "SELECT pg_advisory_xact_lock(" DB_MIGRATE_LOCK ")", 0, NULL, err);
    if (e == LB_OK)
        e = db_command(c,
                       "CREATE TABLE IF NOT EXISTS leadbridge_schema ("
                       "  version integer PRIMARY KEY,"
                       "  migrated_at timestamptz NOT NULL DEFAULT now())",
                       0, NULL, err);
    if (e == LB_OK)
        e = db_schema_version(c, &version, err);
    if (e != LB_OK)
        goto out;
    if (version > DB_SCHEMA_VERSION) {
        e = lb_fail(err, LB_ERR_CONFLICT,
                    "the database schema is at version %d, newer than this leadbridge (%d): "
                    "upgrade leadbridge", version, DB_SCHEMA_VERSION);
        goto out;
    }
    for (int v = version; v < DB_SCHEMA_VERSION; v++) {
        snprintf(vtext, sizeof(vtext), "%d", v + 1);
        param[0] = vtext;
        e = LB_OK;
        for (size_t i = 0; e == LB_OK && db_migrations[v][i] != NULL; i++)
            e = db_command(c, db_migrations[v][i], 0, NULL, err);
        if (e == LB_OK)
            e = db_command(c, "INSERT INTO leadbridge_schema (version) VALUES ($1::integer)", 1,
                           param, err);
        if (e != LB_OK)
            goto out;
    }
    e = db_command(c, "COMMIT", 0, NULL, err);
    if (e != LB_OK)
        goto out;
    if (version == DB_SCHEMA_VERSION)
        fprintf(out, "schema is at version %d: nothing to do\n", version);
    else
        fprintf(out, "schema migrated from version %d to %d\n", version, DB_SCHEMA_VERSION);
out:
    PQfinish(c);
    return e;
}

enum lb_err db_status(const char *dsn, FILE *out, struct lb_error *err)
{
    PGconn *c = NULL;
    int version = 0;
    enum lb_err e = db_connect_once(dsn, &c, err);

    if (e == LB_OK)
        e = db_schema_version(c, &version, err);
    if (e != LB_OK)
        goto out;
    fprintf(out, "schema version %d (this leadbridge needs %d)\n", version, DB_SCHEMA_VERSION);
    if (version < DB_SCHEMA_VERSION)
        e = lb_fail(err, LB_ERR_CONFLICT, "run `leadbridge db migrate`");
    else if (version > DB_SCHEMA_VERSION)
        e = lb_fail(err, LB_ERR_CONFLICT, "the database is newer than this leadbridge");
out:
    PQfinish(c);
    return e;
}
