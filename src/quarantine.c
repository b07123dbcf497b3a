/*
 * quarantine.c: the spam quarantine in the spool (see quarantine.h).
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

#define QUARANTINE_PATH_MAX 4096
#define QUARANTINE_TMP_MAX_AGE 3600

struct quarantine {
    char dir[QUARANTINE_PATH_MAX];
    long long retention;
};

struct quarantine *quarantine_open(const char *spool_dir, long long retention,
                                   struct lb_error *err)
{
    struct quarantine *q = calloc(1, sizeof(*q));
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
    q->retention = retention;
    return q;
}

void quarantine_close(struct quarantine *q)
{
    free(q);
}

static enum lb_err quarantine_sync_dir(const struct quarantine *q)
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
static bool quarantine_file(const struct quarantine *q, const char *id, char *out, size_t size)
{
    int n = snprintf(out, size, "%s/%s.json", q->dir, id);

    return n > 0 && (size_t)n < size;
}

enum lb_err quarantine_put(struct quarantine *q, const json_t *job, const char *reason,
                           long long now, struct lb_error *err)
{
    const char *id = json_string_value(json_object_get(job, "id"));
    char tmp[QUARANTINE_PATH_MAX], dest[QUARANTINE_PATH_MAX], rhex[17];
    uint8_t rnd[8];
    json_t *copy = NULL;
    char *text = NULL;
    size_t len, off = 0;
    enum lb_err e = LB_OK;
    int fd = -1;

    if (id == NULL || !outbox_id_valid(id))
        return lb_fail(err, LB_ERR_BAD_REQUEST, "quarantine: the job has no valid id");
    if (crypto_random(rnd, sizeof(rnd)) != 0)
        return lb_fail(err, LB_ERR_INTERNAL, "quarantine: no randomness");
    hex_encode(rnd, sizeof(rnd), rhex);
    if (snprintf(tmp, sizeof(tmp), "%s/.tmp.%s.%ld.%s", q->dir, id, (long)getpid(), rhex) >=
            (int)sizeof(tmp) ||
        !quarantine_file(q, id, dest, sizeof(dest)))
        return lb_fail(err, LB_ERR_INTERNAL, "quarantine: path too long");
    copy = json_deep_copy(job);
    if (copy != NULL)
        json_object_set_new(copy, "spam", json_pack("{s:s,s:I}", "reason", reason,
                                                     "quarantined", (json_int_t)now));
    text = copy != NULL ? json_dumps(copy, JSON_COMPACT) : NULL;
    json_decref(copy);
    if (text == NULL)
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    len = strlen(text);
    if (len > OUTBOX_FILE_MAX) {
        e = lb_fail(err, LB_ERR_TOO_LARGE, "quarantine: the job is too large");
        goto out;
    }
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

static json_t *quarantine_load(const struct quarantine *q, const char *id)
{
    char path[QUARANTINE_PATH_MAX];

    if (!outbox_id_valid(id))
        return NULL;
    if (!quarantine_file(q, id, path, sizeof(path)))
        return NULL;
    return json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
}

json_t *quarantine_show(struct quarantine *q, const char *id)
{
    return quarantine_load(q, id);
}

/* Calls fn for every entry id; stale tmp files are removed on the way when now >= 0. */
static enum lb_err quarantine_each(struct quarantine *q, long long now,
                                   enum lb_err (*fn)(struct quarantine *, const char *, void *),
                                   void *arg)
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
            e = fn(q, id, arg);
    }
    closedir(d);
    return e;
}

static enum lb_err quarantine_list_one(struct quarantine *q, const char *id, void *arg)
{
    json_t *job = quarantine_load(q, id), *spam, *names = json_array(), *t;
    const char *name;

    spam = json_object_get(job, "spam");
    json_object_foreach(json_object_get(job, "targets"), name, t)
        json_array_append_new(names, json_string(name));
    json_array_append_new(
        arg, json_pack("{s:s,s:O?,s:O?,s:O?,s:O?,s:o}", "id", id, "form",
                       json_object_get(job, "form"), "reason", json_object_get(spam, "reason"),
                       "quarantined", json_object_get(spam, "quarantined"), "created",
                       json_object_get(job, "created"), "targets", names));
    json_decref(job);
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

json_t *quarantine_list(struct quarantine *q)
{
    json_t *all = json_array(), *sorted = json_array(), **items = NULL;
    size_t n, i;

    if (all == NULL || sorted == NULL || quarantine_each(q, -1, quarantine_list_one, all) != LB_OK)
        goto fail;
    n = json_array_size(all);
    items = calloc(n + 1, sizeof(*items));
    if (items == NULL)
        goto fail;
    for (i = 0; i < n; i++)
        items[i] = json_array_get(all, i);
    qsort(items, n, sizeof(*items), quarantine_cmp);
    for (i = 0; i < n; i++)
        json_array_append(sorted, items[i]);
    free(items);
    json_decref(all);
    return sorted;
fail:
    json_decref(all);
    json_decref(sorted);
    return NULL;
}

static enum lb_err quarantine_remove(struct quarantine *q, const char *id)
{
    char path[QUARANTINE_PATH_MAX];

    if (!quarantine_file(q, id, path, sizeof(path)))
        return LB_ERR_NOT_FOUND;
    if (unlink(path) != 0)
        return errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
    return quarantine_sync_dir(q);
}

enum lb_err quarantine_release(struct quarantine *q, struct outbox *ob, const char *id,
                               long long now)
{
    json_t *job = quarantine_load(q, id);
    struct lb_error err = {LB_OK, ""};
    enum lb_err e;

    if (job == NULL)
        return LB_ERR_NOT_FOUND;
    json_object_del(job, "spam");
    json_object_set_new(job, "next_attempt", json_integer(now));
    e = outbox_put(ob, job, &err);
    json_decref(job);
    if (e != LB_OK && e != LB_ERR_CONFLICT)
        return e;
    return quarantine_remove(q, id);
}

struct quarantine_release_ctx {
    struct outbox *ob;
    long long now;
    size_t count;
};

static enum lb_err quarantine_release_one(struct quarantine *q, const char *id, void *arg)
{
    struct quarantine_release_ctx *c = arg;
    enum lb_err e = quarantine_release(q, c->ob, id, c->now);

    if (e == LB_OK)
        c->count++;
    return e == LB_ERR_NOT_FOUND ? LB_OK : e;
}

enum lb_err quarantine_release_all(struct quarantine *q, struct outbox *ob, long long now,
                                   size_t *count)
{
    struct quarantine_release_ctx c = {ob, now, 0};
    enum lb_err e = quarantine_each(q, -1, quarantine_release_one, &c);

    if (count != NULL)
        *count = c.count;
    return e;
}

struct quarantine_purge_ctx {
    long long cutoff;
    size_t count;
};

static enum lb_err quarantine_purge_one(struct quarantine *q, const char *id, void *arg)
{
    struct quarantine_purge_ctx *c = arg;
    json_t *job = quarantine_load(q, id);
    json_t *at = json_object_get(json_object_get(job, "spam"), "quarantined");
    /* An unreadable entry is kept until it is as old as the retention by its file time. */
    long long when = json_is_integer(at) ? (long long)json_integer_value(at) : -1;

    json_decref(job);
    if (when < 0) {
        struct stat st;
        char path[QUARANTINE_PATH_MAX];

        if (!quarantine_file(q, id, path, sizeof(path)) || stat(path, &st) != 0)
            return LB_OK;
        when = (long long)st.st_mtime;
    }
    if (when <= c->cutoff && quarantine_remove(q, id) == LB_OK)
        c->count++;
    return LB_OK;
}

enum lb_err quarantine_purge(struct quarantine *q, const char *id, long long older_than,
                             long long now, size_t *count)
{
    struct quarantine_purge_ctx c = {now - older_than, 0};
    enum lb_err e;

    if (id != NULL) {
        e = outbox_id_valid(id) ? quarantine_remove(q, id) : LB_ERR_NOT_FOUND;
        if (count != NULL)
            *count = e == LB_OK;
        return e;
    }
    if (older_than <= 0)
        c.cutoff = now + 1;
    e = quarantine_each(q, now, quarantine_purge_one, &c);
    if (count != NULL)
        *count = c.count;
    return e;
}

enum lb_err quarantine_expire(struct quarantine *q, long long now)
{
    if (q == NULL || q->retention <= 0)
        return LB_OK;
    return quarantine_purge(q, NULL, q->retention, now, NULL);
}
