/*
 * live.c: the reference-counted configuration in use (see live.h).
 *
 * Each configuration ever swapped in is a generation with a count of holders; the current one
 * holds one reference of its own. A mutex guards the list: acquiring and releasing are a lock,
 * an increment and an unlock, nothing next to a request's own work.
 */
#include "live.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "diag.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"

struct generation {
    struct config *cfg;
    long refs;
    struct generation *next;
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct generation *current; /* also the head of the list */
static char *live_path;

void live_init(struct config *cfg, const char *path)
{
    struct generation *g = calloc(1, sizeof(*g));

    if (g == NULL)
        return;
    g->cfg = cfg;
    g->refs = 1;
    pthread_mutex_lock(&live_lock);
    g->next = current;
    current = g;
    free(live_path);
    live_path = strdup(path);
    pthread_mutex_unlock(&live_lock);
}

const struct config *live_acquire(void)
{
    const struct config *cfg = NULL;

    pthread_mutex_lock(&live_lock);
    if (current != NULL) {
        current->refs++;
        cfg = current->cfg;
    }
    pthread_mutex_unlock(&live_lock);
    return cfg;
}

/* Drops one reference of g (under the lock); frees it when none is left. */
static void unref(struct generation **link)
{
    struct generation *g = *link;

    if (--g->refs > 0)
        return;
    *link = g->next;
    config_free(g->cfg);
    free(g);
}

void live_release(const struct config *cfg)
{
    if (cfg == NULL)
        return;
    pthread_mutex_lock(&live_lock);
    for (struct generation **link = &current; *link != NULL; link = &(*link)->next)
        if ((*link)->cfg == cfg) {
            unref(link);
            break;
        }
    pthread_mutex_unlock(&live_lock);
}

static bool outbox_changed(const struct outbox_conf *a, const struct outbox_conf *b)
{
    if (a->store != b->store || a->n_schedule != b->n_schedule || a->max_age != b->max_age ||
        a->jitter != b->jitter || a->done_retention != b->done_retention ||
        a->dead_retention != b->dead_retention || a->duplicate_window != b->duplicate_window)
        return true;
    if ((a->dsn == NULL) != (b->dsn == NULL) || (a->dsn != NULL && strcmp(a->dsn, b->dsn) != 0))
        return true;
    return memcmp(a->schedule, b->schedule, a->n_schedule * sizeof(a->schedule[0])) != 0;
}

/* Keeps what a restart alone can change, so the running outbox and threads stay consistent. */
static void keep_restart_settings(struct config *fresh, const struct config *old)
{
    if (strcmp(fresh->spool_dir, old->spool_dir) != 0)
        log_msg(LOG_WARN, "reload: a new \"spool\" takes effect at the next start");
    if (fresh->threads != old->threads)
        log_msg(LOG_WARN, "reload: a new \"threads\" takes effect at the next start");
    if (fresh->read_timeout != old->read_timeout)
        log_msg(LOG_WARN, "reload: a new \"read_timeout\" takes effect at the next start");
    if (fresh->spam_retention != old->spam_retention || fresh->shared_slots != old->shared_slots)
        log_msg(LOG_WARN, "reload: a new \"spam\" takes effect at the next start");
    if (outbox_changed(&fresh->outbox, &old->outbox))
        log_msg(LOG_WARN, "reload: a new \"outbox\" takes effect at the next start");
    free(fresh->spool_dir);
    fresh->spool_dir = strdup(old->spool_dir);
    fresh->threads = old->threads;
    fresh->read_timeout = old->read_timeout;
}

bool live_reload(void)
{
    struct diag d;
    struct config *fresh;
    struct generation *g;
    const struct config *old;
    char *path;

    pthread_mutex_lock(&live_lock);
    path = live_path != NULL ? strdup(live_path) : NULL;
    pthread_mutex_unlock(&live_lock);
    if (path == NULL)
        return false;
    diag_init(&d, path, NULL, 0);
    fresh = config_load(path, &d);
    if (fresh == NULL) {
        for (size_t i = 0; i < d.count; i++)
            log_msg(LOG_ERROR, "reload: %s", d.messages[i]);
        log_msg(LOG_ERROR, "reload: %s has %zu problem%s; the running configuration stays", path,
                d.count, d.count == 1 ? "" : "s");
        metrics_reload(false);
        diag_free(&d);
        free(path);
        return false;
    }
    diag_free(&d);
    g = calloc(1, sizeof(*g));
    old = live_acquire();
    if (g == NULL || old == NULL) {
        live_release(old);
        config_free(fresh);
        free(g);
        free(path);
        metrics_reload(false);
        return false;
    }
    keep_restart_settings(fresh, old);
    live_release(old);
    notify_configure(&fresh->notify);
    g->cfg = fresh;
    g->refs = 1;
    pthread_mutex_lock(&live_lock);
    g->next = current;
    current = g;
    if (g->next != NULL)
        unref(&g->next); /* the old one's own reference: freed when its last request ends */
    pthread_mutex_unlock(&live_lock);
    log_msg(LOG_INFO, "reload: %s: %zu forms, %zu targets, %zu file%s", path, fresh->n_forms,
            fresh->n_targets, fresh->n_files, fresh->n_files == 1 ? "" : "s");
    metrics_reload(true);
    free(path);
    return true;
}

void live_shutdown(void)
{
    pthread_mutex_lock(&live_lock);
    while (current != NULL) {
        struct generation *g = current;

        current = g->next;
        if (g->refs > 1)
            log_msg(LOG_WARN, "live: a configuration still held at exit");
        config_free(g->cfg);
        free(g);
    }
    free(live_path);
    live_path = NULL;
    pthread_mutex_unlock(&live_lock);
}
