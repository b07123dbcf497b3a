/*
 * outbox.h: the durable outbox. No accepted lead is ever lost.
 *
 * The outbox keeps one JSON "job" per submission in a store (outbox_store.h): the spool directory
 * of one host (outbox_spool.c, below) or a database shared by several hosts. This header is the
 * only interface the handler, the retry worker and `leadbridge queue` use; every guarantee here
 * holds for every store.
 *
 * The spool directory (config "spool"):
 *
 *   tmp/    files being written (name <id>.<pid>.<random>); garbage after a crash, removed when
 *           older than an hour (by ctime: their mtime is set, see below)
 *   queue/  <id>.json: jobs waiting for delivery (or being delivered right now)
 *   done/   <id>.json: small records of delivered jobs (no lead, no personal data)
 *   dead/   <id>.json: dead letters (the whole job plus "dead_reason"), <id>.corrupt: unreadable
 *           job files kept as they were for a person to look at
 *   keys/   <sha256 hex of key>.json: Idempotency-Key values and content fingerprints → job id
 *   aside/  anything found in the folders above that is not a regular file (a FIFO, socket,
 *           device, symlink or directory), moved here unopened and listed by `queue list`
 *   journal/ <pid>.<random>.wal: each process's write-ahead journal of new jobs, their keys and
 *           in-place rewrites (locked by its process while it lives)
 *
 * Every file is written whole in tmp/ and renamed (or hard-linked, when it must not replace
 * anything) into place, after Postfix and maildir. Durability is a group commit on a journal:
 * a new job (and the keys reserved for it, and each delivery attempt about to start) is also
 * appended as a checksummed record to the process's journal, and outbox_put() waits for one
 * commit: one leader fdatasyncs the journal once for every record appended so far, so concurrent
 * requests share one small sequential write. The job's own file is left to the kernel's
 * writeback. Measured (strace -c, the bench's valuation form): 8 fsyncs per lead before group
 * commit; then 2 fdatasyncs and 2 folder fsyncs per commit, which did not batch because every
 * new file costs its own journal commit of the file system; now one fdatasync per commit.
 * When a process dies its journal stays; the next process to open the spool, and every retry
 * pass, replays the journals nobody holds (a job missing from queue/, done/ and dead/ comes back,
 * still marked started, so its next attempt asks the API first; a missing unexpired key comes
 * back), makes the spool durable with syncfs(2) and removes them. A journal that reaches 16 MiB
 * is checkpointed the same way (syncfs, then a new generation voids its records). Moves between
 * folders (to dead/) still sync the file and both folders. Bookkeeping that need not precede the
 * answer (the stored answer, done records, unlinks) is not waited for. When outbox_put() returns
 * LB_OK the job survives a crash or power loss. The spool must be on a local POSIX file system
 * that supports hard links and flock(2).
 *
 * A job file:
 *   {"id": "<32 hex>", "form": "<form name>", "created": <epoch s>, "attempts": <n>,
 *    "next_attempt": <epoch s>,
 *    "targets": {"<target name>": {"action": "create|valuation|update", "lead": {...},
 *                                  "lead_id": "<optional, for updates>",
 *                                  "after": "<id of a queued create this update waits for>",
 *                                  "status": "pending|delivered|dead", "attempts": <n>,
 *                                  "started": <n: attempts begun; > attempts while one runs>,
 *                                  "started_at": <epoch s, wall clock: when the last began>,
 *                                  "last_attempt": <epoch s>,
 *                                  "last_error": "...", "last_status": <http status>,
 *                                  "retry_after": <s, optional>,
 *                                  "result": {"lead_id": "...", "valuation": {...}}}},
 *    "response": <optional: the first answer given to the page, replayed to duplicates>,
 *    "dead_reason": "...", "finished": <epoch s>      (dead and done records only)}
 * Anything else the caller adds at the top level or in a target (for example "fingerprint" or
 * "idempotency_key_hash") is kept in queued and dead jobs and dropped from done records.
 * outbox_job_new() and outbox_job_add_target() build the skeleton.
 *
 * Delivery is at least once, and a crash never makes a second lead: a job is claimed (a lock the
 * store drops when the holder dies, even by SIGKILL) so one worker at a time delivers it, across
 * threads and processes. Each attempt is marked "started" durably before the API is called; a
 * target found with started > attempts had an attempt whose outcome is unknown (the worker died
 * during it), and outbox_attempt_unknown() tells the deliver function to ask the API whether it
 * has the lead (by our submission id) before creating it again.
 *
 * The struct outbox is read-only after outbox_open(): threads may share it. A claim belongs to
 * one thread at a time. Nothing sleeps but the group commit, and nothing here starts a thread:
 * the caller runs outbox_run() in its own background thread or from `leadbridge queue run`. The
 * clock is always a parameter (`now`, seconds since the epoch).
 */
#ifndef LB_OUTBOX_H
#define LB_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "diag.h"
#include "err.h"
#include "target.h"

#define OUTBOX_ID_LEN 32                 /* submission ids are 32 lowercase hex digits */
#define OUTBOX_ID_SIZE (OUTBOX_ID_LEN + 1)
#define OUTBOX_SCHEDULE_MAX 32
#define OUTBOX_FILE_MAX (1024 * 1024)    /* no spool file is read or written past this size */

enum outbox_store_kind {
    OUTBOX_STORE_SPOOL = 0,  /* the spool directory on this host (config "spool") */
    OUTBOX_STORE_POSTGRESQL, /* one PostgreSQL database shared by several hosts */
    OUTBOX_STORE__MAX
};

struct outbox_conf {
    enum outbox_store_kind store; /* "store": "spool" (default) or "postgresql" */
    const char *dsn;            /* "dsn": libpq connection string (postgresql; borrowed from
                                   the config document, NULL otherwise) */
    size_t connections;         /* "connections": most database connections per process
                                   (postgresql; 0: the caller picks, threads + 4) */
    long long schedule[OUTBOX_SCHEDULE_MAX]; /* seconds before retry n+1; the last one repeats */
    size_t n_schedule;                       /* >= 1 */
    long long max_age;          /* seconds from "created" after which a job goes to dead/ */
    double jitter;              /* each delay is multiplied by 1 ± up to this fraction */
    long long done_retention;   /* seconds done records (and idempotency keys) are kept */
    long long dead_retention;   /* seconds dead letters are kept */
    long long duplicate_window; /* seconds a content fingerprint ("fp:" key) stays valid */
    long long tmp_max_age;      /* wall-clock seconds before a tmp/ file is crash garbage (not
                                   in the config file; tests lower it) */
};

/*
 * Defaults: schedule 5, 60, 300, 1800, 7200, 18000, 36000 (then every 36000), max_age 5 days,
 * jitter 0.1, done_retention 7 days, dead_retention 30 days, duplicate_window 300,
 * tmp_max_age 3600.
 */
void outbox_conf_default(struct outbox_conf *c);
/*
 * Reads the config object "outbox" (borrowed; NULL gives the defaults) found at path into *out:
 * keys "retry_schedule" (array of seconds, 1..32 entries, each 1..2592000), "max_age",
 * "jitter" (0..1), "done_retention", "dead_retention" (seconds, 0..10 years) and
 * "duplicate_window" (0..1 day), "store" ("spool" or "postgresql"), "dsn" (required with,
 * and only with, "postgresql"; borrowed from obj) and "connections" (1..1024, postgresql).
 * Mistakes go to d and leave the default.
 */
void outbox_conf_from_json(const json_t *obj, const char *path, struct diag *d,
                           struct outbox_conf *out);

struct outbox;       /* opaque; shared read-only between threads */
struct outbox_claim; /* opaque; one job held by one worker */

enum outbox_state {
    OUTBOX_QUEUED = 0,
    OUTBOX_DONE,
    OUTBOX_DEAD,
    OUTBOX_ASIDE, /* not a job: an entry that is not a regular file, set aside (spool only) */
    OUTBOX_UNKNOWN,
    OUTBOX_STATE__MAX
};

/* "queued", "done", "dead", "aside", "unknown". */
const char *outbox_state_name(enum outbox_state s);

/*
 * Opens the store conf chooses: the spool at dir, creating it and its subdirectories (mode
 * 0700) when missing, and removing tmp/ files older than an hour; or the PostgreSQL database
 * conf->dsn (its schema must be migrated; an unreachable database is not an error here).
 * conf is copied (NULL: defaults, the spool). Returns a new outbox (free with outbox_close) or
 * NULL with err set.
 */
struct outbox *outbox_open(const char *dir, const struct outbox_conf *conf, struct lb_error *err);
/*
 * Whether the store announces new work (PostgreSQL: LISTEN/NOTIFY). If so, the retry thread
 * sleeps in outbox_wait(): at most ms, less when another process or host made a job due now,
 * or when outbox_wake() (async-signal-safe) was called. Without, outbox_wait returns at once.
 */
bool outbox_can_wait(const struct outbox *ob);
void outbox_wait(struct outbox *ob, long long ms);
void outbox_wake(struct outbox *ob);
/* Frees ob (making every write durable first); NULL is a no-op. Claims must be ended first. */
void outbox_close(struct outbox *ob);
/*
 * The spool directory (borrowed): for the spool store, the directory; for a store without one
 * (a database), NULL. Host-local state (metrics, rate limits) lives there.
 */
const char *outbox_dir(const struct outbox *ob);
/* The store's name: "spool" or "postgresql" (borrowed, static). */
const char *outbox_store_name(const struct outbox *ob);
struct outbox_store;
struct outbox_store_ops;
/*
 * An outbox over an opened store (see outbox_store.h; takes ownership of st, closing it on
 * failure). conf is copied (NULL: defaults). Returns NULL with err set.
 */
struct outbox *outbox_from_store(const struct outbox_store_ops *ops, struct outbox_store *st,
                                 const struct outbox_conf *conf, struct lb_error *err);
/* Makes every write so far durable (the retry worker calls it after each pass). */
enum lb_err outbox_flush(struct outbox *ob);

/* Whether id is exactly 32 lowercase hex digits. Every id is checked before it touches a path. */
bool outbox_id_valid(const char *id);
/* Writes a new random id (32 hex + NUL) into out. Returns LB_OK or LB_ERR_INTERNAL. */
enum lb_err outbox_new_id(char out[OUTBOX_ID_SIZE]);

/*
 * Job skeleton {"id", "form", "created": now, "attempts": 0, "next_attempt": now,
 * "targets": {}}. Returns a new reference (caller json_decref's) or NULL on a bad id or no memory.
 */
json_t *outbox_job_new(const char *id, const char *form, long long now);
/*
 * Adds target name to job with action ("create", "valuation", "update"), a deep copy of lead
 * (borrowed) and lead_id (may be NULL), status "pending", attempts 0.
 */
enum lb_err outbox_job_add_target(json_t *job, const char *name, const char *action,
                                  const json_t *lead, const char *lead_id);

/*
 * Marks each pending target of job (not yet put) as started: for a job the request path delivers
 * at once, so that a crash during that delivery is known to have left an unknown outcome.
 */
enum lb_err outbox_job_mark_started(json_t *job);
/*
 * Makes target of job (not yet put) wait behind job create_id: the entry gets "after" and no
 * "lead_id". The delivery pass leaves it pending, without counting attempts, while create_id is
 * queued; once create_id is done, the lead id it got for the same target becomes this entry's
 * "lead_id" and it is delivered; if create_id went dead (or is gone), so does this target.
 */
enum lb_err outbox_job_wait_for(json_t *job, const char *target, const char *create_id);
/*
 * Inside a deliver call: whether the target's previous attempt has an unknown outcome (it was
 * started, and never recorded, because its worker died), so the API must be asked first whether
 * it already has the lead. entry is the one deliver got (borrowed). Its "unknown_since" then
 * holds when that interrupted attempt began.
 */
bool outbox_attempt_unknown(const json_t *entry);

/*
 * Writes job (borrowed) durably into the queue (spool: queue/<id>.json, group commit).
 * Missing "attempts", "next_attempt" (= created), target "status" ("pending") and "attempts" are
 * filled in. Only after LB_OK may the page be told "accepted". Returns LB_ERR_CONFLICT when a job
 * with that id exists already (queued, done or dead), LB_ERR_BAD_REQUEST when job lacks a valid
 * id, an integer "created" or a non-empty "targets" object, LB_ERR_TOO_LARGE past
 * OUTBOX_FILE_MAX, LB_ERR_IO on disk errors.
 */
enum lb_err outbox_put(struct outbox *ob, const json_t *job, struct lb_error *err);
/*
 * outbox_put(), and on LB_OK the caller also holds the claim of the new job in *claim (the
 * request path delivers it at once): taken before anyone else could, and without reading the
 * job back. *claim is NULL when the claim could not be made (the outbox delivers the job).
 */
enum lb_err outbox_put_claim(struct outbox *ob, const json_t *job, struct outbox_claim **claim,
                             struct lb_error *err);

/*
 * Claims queued job id for delivery without waiting. LB_OK: *out is a new claim (end it with
 * outbox_finish or outbox_release). LB_ERR_CONFLICT: another worker holds it. LB_ERR_NOT_FOUND:
 * not queued (delivered, dead or unknown). LB_ERR_GONE: the file was unreadable or malformed; it
 * was moved to dead/ with the reason. LB_ERR_IO otherwise.
 */
enum lb_err outbox_claim(struct outbox *ob, const char *id, struct outbox_claim **out);
/* The claimed job (borrowed, valid until the claim ends; read it, do not change it). */
const json_t *outbox_claim_job(const struct outbox_claim *c);
/* The claimed job's id (borrowed). */
const char *outbox_claim_id(const struct outbox_claim *c);
/*
 * Records the outcome of one delivery of target in the claim (in memory until outbox_save or
 * outbox_finish): DELIVERY_OK → "delivered" with result.lead_id / result.valuation (copied);
 * DELIVERY_TRANSIENT → stays "pending", its attempts, last_error, last_status, retry_after set;
 * DELIVERY_PERMANENT → "dead" with last_error and last_status; DELIVERY_DEFERRED (not sent: the
 * target's rate limit) → stays "pending" ("throttled": true) with no attempt counted and the
 * started mark undone, and
 * outbox_finish makes the job due again after result.retry_after seconds (at least 1), with no
 * step on the retry schedule. Returns LB_ERR_NOT_FOUND for an unknown target, LB_ERR_NOMEM.
 */
enum lb_err outbox_record(struct outbox_claim *c, const char *target,
                          const struct target_result *result, long long now);
/* Stores response (borrowed; copied) in the claimed job unless it already has one. */
enum lb_err outbox_claim_set_response(struct outbox_claim *c, const json_t *response);
/*
 * Writes the claimed job as it is now, keeping the claim (the lock moves to the new file before
 * it is renamed into place). Not waited for: after a crash the job may be found as it was, with
 * its attempts marked started (see outbox_attempt_unknown).
 */
enum lb_err outbox_save(struct outbox_claim *c);
/*
 * Marks target's next attempt started (dated by the wall clock, since it dates a real request)
 * and writes the job durably (waits for the commit). Call right before calling the API;
 * outbox_record() then closes the attempt.
 */
enum lb_err outbox_begin_attempt(struct outbox_claim *c, const char *target, long long now);
/*
 * Ends the claim (always; c is freed, even on error) and files the job:
 * - no target pending, none dead → done/ (small record: id, form, created, finished, attempts,
 *   response, targets' action, status, attempts, last_status, lead_id), queue file removed;
 * - no target pending, some dead → dead/ with "dead_reason" (the first dead target's error);
 * - targets pending and a transient failure recorded: attempts + 1; when the job is older than
 *   max_age → dead/ ("gave up after N attempts"); else next_attempt = now + schedule[attempts-1]
 *   ± jitter, capped at created + max_age, never earlier than now + the largest retry_after;
 * - targets pending, nothing recorded: written back as recorded so far.
 * *state (may be NULL) tells where the job went. LB_ERR_IO: the job stays as it was on disk.
 */
enum lb_err outbox_finish(struct outbox_claim *c, long long now, enum outbox_state *state);
/* Ends the claim without writing anything; NULL is a no-op. */
void outbox_release(struct outbox_claim *c);

/*
 * Delivers one target of job (borrowed, read-only): reads the target's "action", "lead" and
 * "lead_id" from entry (borrowed) and uses the job's "id" as the submission id. Fills *result
 * (initialised by the caller with target_result_init; cleared by the caller afterwards).
 */
typedef void (*outbox_deliver_fn)(void *ctx, const json_t *job, const char *target,
                                  const json_t *entry, struct target_result *result);

struct outbox_run_stats {
    size_t delivered;  /* targets delivered */
    size_t retried;    /* jobs rescheduled after a transient failure */
    size_t dead;       /* jobs moved to dead/ (permanent failure, too old, corrupt) */
    size_t done;       /* jobs moved to done/ */
    size_t busy;       /* due jobs skipped because another worker held them */
    long long next_due; /* earliest next_attempt still queued after the pass, or -1 if none */
};

/*
 * One pass: applies retention (outbox_expire), then delivers up to limit (0: no limit) due jobs
 * (next_attempt <= now), oldest submission first, skipping those it cannot claim; for each pending
 * target marks the attempt started (outbox_begin_attempt), calls deliver (which sees, in the
 * entry, whether the previous attempt's outcome is unknown), records the outcome (saving after a
 * success when others remain) and finishes the job; then flushes. Fills *stats (may be NULL). Returns LB_ERR_IO only when the queue cannot be
 * read at all.
 */
enum lb_err outbox_run(struct outbox *ob, long long now, outbox_deliver_fn deliver, void *ctx,
                       size_t limit, struct outbox_run_stats *stats);

/*
 * Reserves key (any text; stored only as its SHA-256) for job_id. body_hash (may be NULL: no
 * comparison) tells whether a repeat carries the same content. Keys starting with "fp:" are
 * content fingerprints and expire after duplicate_window; others after done_retention.
 * Race-free across processes: exactly one caller wins a new key. A key older than 60 s whose job
 * is in none of queue/, done/, dead/ (never put after a crash, or purged) counts as free.
 * - LB_OK, *duplicate false: the key is new and now maps to job_id.
 * - LB_OK, *duplicate true: the key is taken with the same body; existing_id holds its job.
 * - LB_ERR_CONFLICT: the key is taken with a different body hash; existing_id holds its job.
 * - LB_ERR_BAD_REQUEST (bad job_id), LB_ERR_IO.
 */
enum lb_err outbox_reserve_key(struct outbox *ob, const char *key, const char *body_hash,
                               const char *job_id, long long now, bool *duplicate,
                               char existing_id[OUTBOX_ID_SIZE]);
/* Removes key if it maps to job_id (a reservation whose job was never accepted). */
enum lb_err outbox_release_key(struct outbox *ob, const char *key, const char *job_id);

/*
 * Stores response (borrowed) as job id's first answer unless one is stored: in the queued job
 * (LB_ERR_CONFLICT when another worker holds it), or in its done or dead record.
 */
enum lb_err outbox_store_response(struct outbox *ob, const char *id, const json_t *response);
/*
 * The stored first answer of job id: a new reference or NULL (none yet, or unknown job).
 * *state (may be NULL) is where the job is now.
 */
json_t *outbox_load_response(struct outbox *ob, const char *id, enum outbox_state *state);

/*
 * Operator view: a new JSON array of summaries, oldest first, of every queued, dead and done job:
 * {"id", "form", "state", "attempts", "next_attempt", "created", "finished", "dead_reason",
 *  "targets": {name: {"status", "attempts", "last_status", "last_error", "lead_id"}}} — no lead
 * data. NULL on error.
 */
json_t *outbox_list(struct outbox *ob);
/* The job or record id with "state" added: a new reference, or NULL (unknown or unreadable). */
json_t *outbox_show(struct outbox *ob, const char *id);
/*
 * Puts job id back to work now: a dead letter returns to the queue with attempts reset and its
 * dead targets pending again; a queued job becomes due at now. LB_ERR_NOT_FOUND (also for done
 * jobs), LB_ERR_CONFLICT (a worker holds it), LB_ERR_GONE (corrupt dead letter), LB_ERR_IO.
 */
enum lb_err outbox_retry(struct outbox *ob, const char *id, long long now);
/* outbox_retry for every dead and queued job; *count (may be NULL) gets how many moved. */
enum lb_err outbox_retry_all(struct outbox *ob, long long now, size_t *count);
/*
 * Deletes dead letters (dead true) and/or done records (done true) that finished more than
 * older_than seconds before now. *count (may be NULL) gets how many were removed.
 */
enum lb_err outbox_purge(struct outbox *ob, bool dead, bool done, long long older_than,
                         long long now, size_t *count);
/*
 * Applies retention: done records past done_retention, dead letters past dead_retention, expired
 * keys and tmp/ files older than an hour are removed. Called by outbox_run.
 */
enum lb_err outbox_expire(struct outbox *ob, long long now);

/* What monitoring needs, from one look at the store. */
struct outbox_stats {
    size_t queued;               /* jobs waiting for delivery (or being delivered) */
    size_t done;                 /* done records kept */
    size_t dead;                 /* dead letters kept */
    size_t aside;                /* entries set aside (not regular files) */
    long long oldest_created;    /* "created" of the oldest queued job, or -1 when none */
};

/* Fills *out. LB_ERR_IO when the store cannot be read. */
enum lb_err outbox_stats(struct outbox *ob, long long now, struct outbox_stats *out);

/*
 * Called once for each job that goes dead (a permanent refusal, max_age, or a corrupt file):
 * the job id, its form (may be NULL for a corrupt file), the first dead target (may be NULL) and
 * the reason (all borrowed, valid during the call only; no personal data). Called from whatever
 * thread files the job, outside any outbox lock.
 */
typedef void (*outbox_dead_fn)(void *ctx, const char *id, const char *form, const char *target,
                               const char *reason);
/* Sets the dead-letter hook (fn NULL: none). Call before threads share ob. */
void outbox_set_dead_hook(struct outbox *ob, outbox_dead_fn fn, void *ctx);

#endif
