/*
 * live.h: the configuration in use, swapped on SIGHUP without a restart.
 *
 * Every request takes the current configuration with live_acquire() and gives it back with
 * live_release() when its answer is written: a request in flight finishes on the configuration it
 * started with, however many reloads happen meanwhile. live_reload() loads and checks the whole
 * configuration again; only when it has no mistake does it become current (the old one is freed
 * when its last request ends); otherwise every mistake is logged and the old one stays.
 */
#ifndef LB_LIVE_H
#define LB_LIVE_H

#include <stdbool.h>

#include "config.h"

/* Makes cfg (owned from now on) the configuration in use; path is where reloads read. */
void live_init(struct config *cfg, const char *path);
/* The configuration in use, held until live_release(). NULL before live_init(). */
const struct config *live_acquire(void);
/* Gives back a configuration from live_acquire(); NULL is a no-op. */
void live_release(const struct config *cfg);
/*
 * Loads the path again. On success swaps it in (notices use its "notify" at once) and returns
 * true; on a mistake logs each one and returns false, keeping the old one. Settings that only a
 * restart changes (spool, threads, outbox) are kept as they were, with a warning.
 */
bool live_reload(void);
/* Frees the configuration in use (at exit, after every request released it). */
void live_shutdown(void);

#endif
