/*
 * quarantine.c: the spam quarantine (see quarantine.h): the store-neutral front, and the spool's
 * store (files in <spool>/spam). The PostgreSQL store is quarantine_pg.c (quarantine_store.h).
 *
 * Files: spam/<id>.json, the job as JSON; spam/.tmp.<id>.<pid>.<random> while one is written
 * (a crash leaves such a file; entries are read only from <id>.json names, and stale tmp files
 * go with the retention pass).
 */
#include "quarantine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "crypto.h"
#include "quarantine_store.h"

#define QUARANTINE_PATH_MAX 4096
#define QUARANTINE_TMP_MAX_AGE 3600
#define QUARANTINE_PG_CONNECTIONS 2 /* spam is rare: a small pool of its own */

struct quarantine {
    const struct quarantine_store_ops *ops;
    struct quarantine_store *st;
    long long retention;
};

/* ---- the spool's store ---- */

struct quarantine_store {
    char dir[QUARANTINE_PATH_MAX];
};

static const struct quarantine_store_ops spool_ops;

static struct quarantine_store *spool_open(const char *spool_dir, struct lb_error *err)
{
    struct quarantine_store *q = calloc(1, sizeof(*q));
    int n;

    if (q == NULL) {
        lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    n = snprintf(q->dir, sizeof(q->dir), "%s/spam", spool_dir);
    if (n < 0 || (size_t)n >= sizeof(q->dir) - 64) {
        lb_fail(err, LB_ERR_INTERNAL, "the spool path is too long");
        free(q);
        return NULL;
    }
    if (mkdir(q->dir, 0700) != 0 && errno != EEXIST) {
        lb_fail(err, LB_ERR_IO, "cannot create %s: %s", q->dir, strerror(errno));
        free(q);
        return NULL;
    }
    return q;
}

static void spool_close(struct quarantine_store *q)
{
    free(q);
}

static enum lb_err quarantine_sync_dir(const struct quarantine_store *q)
{
    int fd = open(q->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    enum lb_err e = LB_OK;

    if (fd < 0)
        return LB_ERR_IO;
    if (fsync(fd) != 0 && errno != EINVAL)
        e = LB_ERR_IO;
    close(fd);
    return e;
}

/* dir/<id>.json into out; false when it does not fit (ids are checked: it always fits). */
static bool quarantine_file(const struct quarantine_store *q, const char *id, char *out, size_t size)
{
    int n = snprintf(out, size, "%s/%s.json", q->dir, id);

    return n > 0 && (size_t)n < size;
}

static enum lb_err spool_put(struct quarantine_store *q, const char *id, const json_t *entry,
                             struct lb_error *err)
{
    char tmp[QUARANTINE_PATH_MAX], dest[QUARANTINE_PATH_MAX], rhex[17];
    uint8_t rnd[8];
    char *text = NULL;
    size_t len, off = 0;
    enum lb_err e = LB_OK;
    int fd = -1;

    if (crypto_random(rnd, sizeof(rnd)) != 0)
        return lb_fail(err, LB_ERR_INTERNAL, "quarantine: no randomness");
    hex_encode(rnd, sizeof(rnd), rhex);
    if (snprintf(tmp, sizeof(tmp), "%s/.tmp.%s.%ld.%s", q->dir, id, (long)getpid(), rhex) >=
            (int)sizeof(tmp) ||
        !quarantine_file(q, id, dest, sizeof(dest)))
        return lb_fail(err, LB_ERR_INTERNAL, "quarantine: path too long");
    text = json_dumps(entry, JSON_COMPACT);
    if (text == NULL)
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    len = strlen(text);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        e = lb_fail(err, LB_ERR_IO, "quarantine: cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            e = lb_fail(err, LB_ERR_IO, "quarantine: write: %s", strerror(errno));
            goto out;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0) {
        e = lb_fail(err, LB_ERR_IO, "quarantine: fsync: %s", strerror(errno));
        goto out;
    }
    /* link, not rename: an id already in quarantine is never replaced */
    if (link(tmp, dest) != 0) {
        e = errno == EEXIST ? lb_fail(err, LB_ERR_CONFLICT, "quarantine: %s exists", id)
                            : lb_fail(err, LB_ERR_IO, "quarantine: link: %s", strerror(errno));
        goto out;
    }
    if (quarantine_sync_dir(q) != LB_OK)
        e = lb_fail(err, LB_ERR_IO, "quarantine: fsync of %s failed", q->dir);
out:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(text);
    return e;
}

static json_t *quarantine_load(const struct quarantine_store *q, const char *id)
{
    char path[QUARANTINE_PATH_MAX];

    if (!outbox_id_valid(id))
        return NULL;
    if (!quarantine_file(q, id, path, sizeof(path)))
        return NULL;
    return json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
}

static json_t *spool_show(struct quarantine_store *q, const char *id)
{
    return quarantine_load(q, id);
}

/* Calls fn for every entry id; stale tmp files are removed on the way when now >= 0. */
static enum lb_err spool_scan(struct quarantine_store *q, long long now,
                              enum lb_err (*fn)(void *arg, const char *id), void *arg)
{
    DIR *d = opendir(q->dir);
    struct dirent *de;
    enum lb_err e = LB_OK;

    if (d == NULL)
        return LB_ERR_IO;
    while (e == LB_OK && (de = readdir(d)) != NULL) {
        char id[OUTBOX_ID_SIZE];

        if (strncmp(de->d_name, ".tmp.", 5) == 0 && now >= 0) {
            struct stat st;
            char path[QUARANTINE_PATH_MAX];

            if (snprintf(path, sizeof(path), "%s/%s", q->dir, de->d_name) < (int)sizeof(path) &&
                stat(path, &st) == 0 && (long long)st.st_mtime + QUARANTINE_TMP_MAX_AGE < now)
                unlink(path);
            continue;
        }
        if (strlen(de->d_name) != OUTBOX_ID_LEN + 5 ||
            strcmp(de->d_name + OUTBOX_ID_LEN, ".json") != 0)
            continue;
        memcpy(id, de->d_name, OUTBOX_ID_LEN);
        id[OUTBOX_ID_LEN] = '\0';
        if (outbox_id_valid(id))
            e = fn(arg, id);
    }
    closedir(d);
    return e;
}

json_t *quarantine_summary(const char *id, const json_t *entry)
{
    json_t *spam = json_object_get(entry, "spam"), *names = json_array(), *t;
    const char *name;

    json_object_foreach(json_object_get(entry, "targets"), name, t)
        json_array_append_new(names, json_string(name));
    return json_pack("{s:s,s:O?,s:O?,s:O?,s:O?,s:o}", "id", id, "form",
                     json_object_get(entry, "form"), "reason", json_object_get(spam, "reason"),
                     "quarantined", json_object_get(spam, "quarantined"), "created",
                     json_object_get(entry, "created"), "targets", names);
}

struct spool_list_ctx {
    struct quarantine_store *q;
    json_t *all;
};

static enum lb_err spool_list_one(void *arg, const char *id)
{
    struct spool_list_ctx *c = arg;
    json_t *entry = quarantine_load(c->q, id);

    json_array_append_new(c->all, quarantine_summary(id, entry));
    json_decref(entry);
    return LB_OK;
}

static int quarantine_cmp(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "quarantined"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "quarantined"));

    if (x != y)
        return x < y ? -1 : 1;
    return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "id")),
                  json_string_value(json_object_get(*(json_t *const *)b, "id")));
}

static json_t *spool_list(struct quarantine_store *q)
{
    struct spool_list_ctx c = {q, json_array()};
    json_t *sorted = json_array(), **items = NULL;
    size_t n, i;

    if (c.all == NULL || sorted == NULL || spool_scan(q, -1, spool_list_one, &c) != LB_OK)
        goto fail;
    n = json_array_size(c.all);
    items = calloc(n + 1, sizeof(*items));
    if (items == NULL)
        goto fail;
    for (i = 0; i < n; i++)
        items[i] = json_array_get(c.all, i);
    qsort(items, n, sizeof(*items), quarantine_cmp);
    for (i = 0; i < n; i++)
        json_array_append(sorted, items[i]);
    free(items);
    json_decref(c.all);
    return sorted;
fail:
    json_decref(c.all);
    json_decref(sorted);
    return NULL;
}

static enum lb_err spool_each(struct quarantine_store *q,
                              enum lb_err (*fn)(void *arg, const char *id), void *arg)
{
    return spool_scan(q, -1, fn, arg);
}

static enum lb_err spool_remove(struct quarantine_store *q, const char *id)
{
    char path[QUARANTINE_PATH_MAX];

    if (!quarantine_file(q, id, path, sizeof(path)))
        return LB_ERR_NOT_FOUND;
    if (unlink(path) != 0)
        return errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
    return quarantine_sync_dir(q);
}

/* A spool entry is not locked: two releases at once both put it, and the outbox keeps one. */
struct quarantine_hold {
    char id[OUTBOX_ID_SIZE];
};

static enum lb_err spool_take(struct quarantine_store *q, const char *id, json_t **entry,
                              struct quarantine_hold **hold)
{
    *hold = NULL;
    *entry = quarantine_load(q, id);
    if (*entry == NULL)
        return LB_ERR_NOT_FOUND;
    *hold = calloc(1, sizeof(**hold));
    if (*hold == NULL) {
        json_decref(*entry);
        *entry = NULL;
        return LB_ERR_NOMEM;
    }
    snprintf((*hold)->id, sizeof((*hold)->id), "%s", id);
    return LB_OK;
}

static enum lb_err spool_done(struct quarantine_store *q, struct quarantine_hold *hold,
                              bool remove)
{
    enum lb_err e = remove ? spool_remove(q, hold->id) : LB_OK;

    free(hold);
    return e;
}

struct spool_purge_ctx {
    struct quarantine_store *q;
    long long cutoff;
    size_t count;
};

static enum lb_err spool_purge_one(void *arg, const char *id)
{
    struct spool_purge_ctx *c = arg;
    json_t *entry = quarantine_load(c->q, id);
    json_t *at = json_object_get(json_object_get(entry, "spam"), "quarantined");
    /* An unreadable entry is kept until it is as old as the retention by its file time. */
    long long when = json_is_integer(at) ? (long long)json_integer_value(at) : -1;

    json_decref(entry);
    if (when < 0) {
        struct stat st;
        char path[QUARANTINE_PATH_MAX];

        if (!quarantine_file(c->q, id, path, sizeof(path)) || stat(path, &st) != 0)
            return LB_OK;
        when = (long long)st.st_mtime;
    }
    if (when <= c->cutoff && spool_remove(c->q, id) == LB_OK)
        c->count++;
    return LB_OK;
}

static enum lb_err spool_remove_older(struct quarantine_store *q, long long cutoff,
                                      long long now, size_t *count)
{
    struct spool_purge_ctx c = {q, cutoff, 0};
    enum lb_err e = spool_scan(q, now, spool_purge_one, &c);

    *count += c.count;
    return e;
}

static const struct quarantine_store_ops spool_ops = {
    .close = spool_close,
    .put = spool_put,
    .list = spool_list,
    .show = spool_show,
    .each = spool_each,
    .take = spool_take,
    .done = spool_done,
    .remove = spool_remove,
    .remove_older = spool_remove_older,
};

/* ---- the front ---- */

struct quarantine *quarantine_open(const char *spool_dir, long long retention,
                                   const struct outbox_conf *store, struct lb_error *err)
{
    struct quarantine *q = calloc(1, sizeof(*q));

    if (q == NULL) {
        lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    q->retention = retention;
    if (store != NULL && store->store == OUTBOX_STORE_POSTGRESQL) {
        q->st = quarantine_pg_open(store->dsn, QUARANTINE_PG_CONNECTIONS, &q->ops, err);
    } else {
        q->ops = &spool_ops;
        q->st = spool_open(spool_dir, err);
    }
    if (q->st == NULL) {
        free(q);
        return NULL;
    }
    return q;
}

void quarantine_close(struct quarantine *q)
{
    if (q == NULL)
        return;
    q->ops->close(q->st);
    free(q);
}

enum lb_err quarantine_put(struct quarantine *q, const json_t *job, const char *reason,
                           long long now, struct lb_error *err)
{
    const char *id = json_string_value(json_object_get(job, "id"));
    struct lb_error local;
    json_t *entry;
    char *text;
    enum lb_err e;

    if (err == NULL)
        err = &local;
    if (id == NULL || !outbox_id_valid(id))
        return lb_fail(err, LB_ERR_BAD_REQUEST, "quarantine: the job has no valid id");
    entry = json_deep_copy(job);
    if (entry == NULL || json_object_set_new(entry, "spam", json_pack("{s:s,s:I}", "reason",
                                                                      reason, "quarantined",
                                                                      (json_int_t)now)) != 0) {
        json_decref(entry);
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    }
    text = json_dumps(entry, JSON_COMPACT);
    e = text == NULL ? lb_fail(err, LB_ERR_NOMEM, "out of memory")
        : strlen(text) > OUTBOX_FILE_MAX
            ? lb_fail(err, LB_ERR_TOO_LARGE, "quarantine: the job is too large")
            : q->ops->put(q->st, id, entry, err);
    free(text);
    json_decref(entry);
    return e;
}

json_t *quarantine_list(struct quarantine *q)
{
    return q->ops->list(q->st);
}

json_t *quarantine_show(struct quarantine *q, const char *id)
{
    return outbox_id_valid(id) ? q->ops->show(q->st, id) : NULL;
}

enum lb_err quarantine_release(struct quarantine *q, struct outbox *ob, const char *id,
                               long long now)
{
    struct quarantine_hold *hold;
    struct lb_error err = {LB_OK, ""};
    json_t *job;
    enum lb_err e;

    if (!outbox_id_valid(id))
        return LB_ERR_NOT_FOUND;
    e = q->ops->take(q->st, id, &job, &hold);
    if (e != LB_OK)
        return e;
    json_object_del(job, "spam");
    json_object_set_new(job, "next_attempt", json_integer(now));
    e = outbox_put(ob, job, &err);
    json_decref(job);
    /* In the outbox already: a release that was interrupted before it removed the entry. */
    if (e != LB_OK && e != LB_ERR_CONFLICT) {
        q->ops->done(q->st, hold, false);
        return e;
    }
    return q->ops->done(q->st, hold, true);
}

struct quarantine_release_ctx {
    struct quarantine *q;
    struct outbox *ob;
    long long now;
    size_t count;
};

static enum lb_err quarantine_release_one(void *arg, const char *id)
{
    struct quarantine_release_ctx *c = arg;
    enum lb_err e = quarantine_release(c->q, c->ob, id, c->now);

    if (e == LB_OK)
        c->count++;
    /* gone meanwhile, or being released by someone else right now */
    return e == LB_ERR_NOT_FOUND || e == LB_ERR_CONFLICT ? LB_OK : e;
}

enum lb_err quarantine_release_all(struct quarantine *q, struct outbox *ob, long long now,
                                   size_t *count)
{
    struct quarantine_release_ctx c = {q, ob, now, 0};
    enum lb_err e = q->ops->each(q->st, quarantine_release_one, &c);

    if (count != NULL)
        *count = c.count;
    return e;
}

enum lb_err quarantine_purge(struct quarantine *q, const char *id, long long older_than,
                             long long now, size_t *count)
{
    size_t n = 0;
    enum lb_err e;

    if (id != NULL) {
        e = outbox_id_valid(id) ? q->ops->remove(q->st, id) : LB_ERR_NOT_FOUND;
        if (count != NULL)
            *count = e == LB_OK;
        return e;
    }
    e = q->ops->remove_older(q->st, older_than <= 0 ? now + 1 : now - older_than, now, &n);
    if (count != NULL)
        *count = n;
    return e;
}

enum lb_err quarantine_expire(struct quarantine *q, long long now)
{
    if (q == NULL || q->retention <= 0)
        return LB_OK;
    return quarantine_purge(q, NULL, q->retention, now, NULL);
}
