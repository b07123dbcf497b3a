/*
 * quarantine.h: spam kept, never delivered and never destroyed before its time.
 *
 * A post the guards call spam is written, like an accepted lead, as a whole outbox job (its
 * targets and lead, outbox.h) plus {"spam": {"reason": "...", "quarantined": <epoch s>}} into
 * <spool>/spam/<id>.json: tmp file, fsync, rename, fsync of the directory. Nothing reaches a
 * target from here. A person lists and reads it (`leadbridge queue spam list|show`), releases a
 * false positive into the outbox, where it is delivered like any lead (due at once, same
 * submission id), or purges it. Entries older than the retention are removed by
 * quarantine_expire (the outbox's background worker calls it), so personal data is not kept for
 * ever. Safe with several processes: every change is one rename or unlink.
 *
 * With the outbox in PostgreSQL ("outbox": {"store": "postgresql"}) the quarantine is a table in
 * the same database instead (quarantine_pg.c), so every host's `queue spam` sees and acts on all
 * of it; the operations and their promises are the same.
 */
#ifndef LB_QUARANTINE_H
#define LB_QUARANTINE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"
#include "outbox.h"

#define QUARANTINE_RETENTION_DEFAULT (30LL * 86400)

struct quarantine; /* opaque; read-only after quarantine_open, shared by threads */

/*
 * Opens the quarantine of the outbox store (NULL or a spool store: <spool_dir>/spam, created
 * mode 0700; PostgreSQL: its database, at most 2 connections of its own, made when first
 * needed). retention is in seconds. Returns a new quarantine (free with quarantine_close) or
 * NULL with err set.
 */
struct quarantine *quarantine_open(const char *spool_dir, long long retention,
                                   const struct outbox_conf *store, struct lb_error *err);
void quarantine_close(struct quarantine *q);

/*
 * Writes job (borrowed; an outbox job with a valid "id") with the reason (a short word of ours)
 * durably. LB_ERR_CONFLICT when the id is in quarantine already, LB_ERR_IO, LB_ERR_TOO_LARGE.
 */
enum lb_err quarantine_put(struct quarantine *q, const json_t *job, const char *reason,
                           long long now, struct lb_error *err);
/*
 * Operator view: a new array, oldest first, of {"id", "form", "reason", "quarantined",
 * "targets": [names]}: no lead data. NULL on error.
 */
json_t *quarantine_list(struct quarantine *q);
/* The whole quarantined job (lead included, for a person to judge): a new reference or NULL. */
json_t *quarantine_show(struct quarantine *q, const char *id);
/*
 * Moves job id into the outbox (due now, the "spam" record dropped), where it is delivered like
 * any lead, then removes it from quarantine. LB_ERR_NOT_FOUND, LB_ERR_IO; LB_ERR_CONFLICT when
 * another host's release of it does not end within seconds (PostgreSQL); a job the outbox already holds (a release interrupted
 * by a crash) is just removed here.
 */
enum lb_err quarantine_release(struct quarantine *q, struct outbox *ob, const char *id,
                               long long now);
/* quarantine_release for every entry; *count gets how many moved. */
enum lb_err quarantine_release_all(struct quarantine *q, struct outbox *ob, long long now,
                                   size_t *count);
/*
 * Removes entry id (id non-NULL), or every entry quarantined more than older_than seconds before
 * now (id NULL; older_than 0 removes all). *count (may be NULL) gets how many went.
 */
enum lb_err quarantine_purge(struct quarantine *q, const char *id, long long older_than,
                             long long now, size_t *count);
/* Applies the retention: quarantine_purge(NULL, retention). */
enum lb_err quarantine_expire(struct quarantine *q, long long now);

#endif
