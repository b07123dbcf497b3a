/*
 * db.h: PostgreSQL through libpq, for the shared outbox (several web hosts, one database).
 *
 * A struct db_pool holds at most max connections to one database (a libpq connection string,
 * "postgresql://..." or "host=... dbname=..."), opened lazily and reused; threads share the pool
 * (a mutex and a condition variable). db_acquire() hands out an idle connection, checking it
 * first: one the server closed (restart, failover, idle timeout) is reset, and a newly
 * (re)established one must show the schema version this program was built for before it is
 * used. When the database cannot be reached, or no connection frees up within the wait,
 * db_acquire() fails with LB_ERR_UNAVAILABLE: the caller answers 503 and accepts nothing.
 *
 * Every statement goes through db_exec(): parameters are always separate from the SQL text
 * (PQexecParams), never spliced into it. The schema is created and migrated only by db_migrate()
 * (`leadbridge db migrate`), never at request time.
 */
#ifndef LB_DB_H
#define LB_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <libpq-fe.h>

#include "err.h"

#define DB_SCHEMA_VERSION 3     /* the schema this build reads and writes */
#define DB_POOL_MAX 1024
#define DB_ACQUIRE_WAIT_MS 5000 /* longest wait for a free connection */

struct db_pool; /* opaque; shared between threads */

/*
 * A pool of at most max (1..DB_POOL_MAX) connections to dsn (copied). Connects nothing yet.
 * Connections get TCP keepalives (a host that vanishes is noticed in about a minute),
 * connect_timeout 5 and application_name "leadbridge" unless dsn says otherwise. Returns a
 * new pool (free with db_pool_close) or NULL with err set.
 */
struct db_pool *db_pool_open(const char *dsn, size_t max, struct lb_error *err);
/* Closes every connection and frees p; NULL is a no-op. No connection may be out. */
void db_pool_close(struct db_pool *p);

/*
 * A new connection of its own (not from a pool; PQfinish it), with the defaults above under
 * whatever dsn says, and server notices silenced. Check PQstatus: it may have failed.
 */
PGconn *db_connect(const char *dsn);

/*
 * A connection for one unit of work, waiting at most DB_ACQUIRE_WAIT_MS for a free one.
 * Returns it (give it back with db_release) or NULL with err: LB_ERR_UNAVAILABLE when the
 * database is unreachable, no connection freed up, or its schema is not DB_SCHEMA_VERSION.
 */
PGconn *db_acquire(struct db_pool *p, struct lb_error *err);
/*
 * Gives c back. A connection left inside a transaction is rolled back; a broken one is closed
 * (the next db_acquire connects again). NULL is a no-op.
 */
void db_release(struct db_pool *p, PGconn *c);
/* Closes c instead of giving it back (its session holds state that must not be reused). */
void db_discard(struct db_pool *p, PGconn *c);

/*
 * Runs sql with n text parameters (values[i] may be NULL: SQL NULL). Returns the result (caller
 * PQclear's) when the statement succeeded, else NULL with err: LB_ERR_UNAVAILABLE when the
 * connection is broken or the server is shutting down, LB_ERR_CONFLICT on a unique-key or
 * serialisation conflict, LB_ERR_IO for anything else (the server's message, never the
 * parameters).
 */
PGresult *db_exec(PGconn *c, const char *sql, int n, const char *const *values,
                  struct lb_error *err);
/*
 * db_exec on a connection of p's, taken and given back around it (for a statement that is a
 * unit of work by itself). NULL with err as db_acquire or db_exec.
 */
PGresult *db_pool_exec(struct db_pool *p, const char *sql, int n, const char *const *values,
                       struct lb_error *err);
/* db_exec for a statement whose rows are not needed. */
enum lb_err db_command(PGconn *c, const char *sql, int n, const char *const *values,
                       struct lb_error *err);

/*
 * The schema version recorded in the database (0: no leadbridge schema yet). LB_OK with *version
 * set, or LB_ERR_UNAVAILABLE / LB_ERR_IO.
 */
enum lb_err db_schema_version(PGconn *c, int *version, struct lb_error *err);

/*
 * `leadbridge db migrate`: connects to dsn and brings the schema to DB_SCHEMA_VERSION in one
 * transaction, under an advisory lock so two hosts migrating at once do not collide. Says what
 * it did on out. LB_ERR_CONFLICT when the database is newer than this program; LB_ERR_UNAVAILABLE
 * when it cannot connect; LB_ERR_IO when a statement fails (nothing is changed then).
 */
enum lb_err db_migrate(const char *dsn, FILE *out, struct lb_error *err);

/*
 * `leadbridge db status`: prints the database's schema version and the one this build needs.
 * LB_OK when they match; LB_ERR_CONFLICT (with a message saying what to run) when not;
 * LB_ERR_UNAVAILABLE when it cannot connect.
 */
enum lb_err db_status(const char *dsn, FILE *out, struct lb_error *err);

#endif
