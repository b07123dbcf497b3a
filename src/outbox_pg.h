/*
 * outbox_pg.h: the PostgreSQL store of the outbox (outbox_pg.c), behind outbox_store.h.
 */
#ifndef LB_OUTBOX_PG_H
#define LB_OUTBOX_PG_H

#include <stddef.h>

#include "err.h"
#include "outbox_store.h"

/*
 * Opens the store on the database dsn (a libpq connection string, copied) with a pool of at
 * most connections. Checks the schema when the database answers: a wrong version fails with
 * err ("run leadbridge db migrate"); an unreachable database does not fail (a warning is
 * logged and every operation answers LB_ERR_UNAVAILABLE until it is back). Returns the store
 * (its ops in *ops) or NULL with err set.
 */
struct outbox_store *outbox_pg_open(const char *dsn, size_t connections,
                                    const struct outbox_store_ops **ops, struct lb_error *err);

#endif
