/*
 * outbox.c: the durable outbox (see outbox.h for the spool layout and the job format).
 *
 * Three rules keep a lead from being lost or sent twice:
 * - A file appears in queue/, done/, dead/ or keys/ only whole: it is written in tmp/, fsynced and
 *   then renamed (replace) or hard-linked (must not replace), and the directory is fsynced.
 * - A job moves between queue/, done/ and dead/ only by one rename(2), so it is never in two
 *   places. Before a move its new content is first written over the queue file.
 * - A worker delivers a job only while it holds flock(LOCK_EX) on the job's current file. A
 *   rewrite locks the new file before renaming it into place, so the claim moves with it; a
 *   claimer that opened the old file sees the inode change and tries again.
 *
 * Each file's mtime carries a time on the outbox's clock (the `now` the caller passes): a queued
 * job's next_attempt, a done or dead record's finish time, a key's expiry. Scans then need only
 * stat(2); the JSON stays authoritative and is checked after claiming.
 */
#include "outbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "crypto.h"

#define OUTBOX_PATH_MAX 4096
#define OUTBOX_CLAIM_TRIES 8        /* inode changes tolerated while claiming */
#define OUTBOX_KEY_TRIES 8          /* expired keys replaced while reserving */
#define OUTBOX_KEY_HEX (2 * SHA256_DIGEST_SIZE)
#define OUTBOX_KEY_GRACE 60         /* seconds a key may point to a job not yet put */

struct outbox {
    char *dir;
    struct outbox_conf conf;
    outbox_dead_fn dead_hook;
    void *dead_ctx;
};

struct outbox_claim {
    struct outbox *ob;
    int fd;                 /* holds the flock on the job's current file */
    char id[OUTBOX_ID_SIZE];
    json_t *job;            /* owned */
    bool transient;         /* a transient failure was recorded */
    long long retry_after;  /* largest retry_after recorded, or -1 */
};

/* Sorting record for a pass over the queue. */
struct outbox_due {
    char id[OUTBOX_ID_SIZE];
    long long created;
};

static const char *const outbox_state_names[OUTBOX_STATE__MAX] = {
    [OUTBOX_QUEUED] = "queued",
    [OUTBOX_DONE] = "done",
    [OUTBOX_DEAD] = "dead",
    [OUTBOX_UNKNOWN] = "unknown",
};

static const char *const outbox_subdirs[] = {"tmp", "queue", "done", "dead", "keys"};

static const long long outbox_default_schedule[] = {5, 60, 300, 1800, 7200, 18000, 36000};

const char *outbox_state_name(enum outbox_state s)
{
    if ((unsigned)s >= OUTBOX_STATE__MAX)
        return "unknown";
    return outbox_state_names[s];
}

/* ---- configuration ---- */

void outbox_conf_default(struct outbox_conf *c)
{
    size_t i, n = sizeof(outbox_default_schedule) / sizeof(outbox_default_schedule[0]);

    memset(c, 0, sizeof(*c));
    for (i = 0; i < n; i++)
        c->schedule[i] = outbox_default_schedule[i];
    c->n_schedule = n;
    c->max_age = 5LL * 86400;
    c->jitter = 0.1;
    c->done_retention = 7LL * 86400;
    c->dead_retention = 30LL * 86400;
    c->duplicate_window = 300;
    c->tmp_max_age = 3600;
}

/* "store" and "dsn": which store holds the jobs. */
static void outbox_conf_store(const json_t *obj, const char *path, struct diag *d,
                              struct outbox_conf *out)
{
    const char *store = conf_string(obj, "store", path, "spool", false, d);
    char p[512];

    if (strcmp(store, "postgresql") == 0) {
        out->store = OUTBOX_STORE_POSTGRESQL;
        out->dsn = conf_string(obj, "dsn", path, NULL, true, d);
    } else if (strcmp(store, "spool") == 0) {
        if (json_object_get(obj, "dsn") != NULL) {
            conf_path(p, sizeof(p), path, "dsn");
            diag_add(d, p, "only with \"store\": \"postgresql\"");
        }
    } else {
        conf_path(p, sizeof(p), path, "store");
        diag_add(d, p, "must be \"spool\" or \"postgresql\"");
    }
}

void outbox_conf_from_json(const json_t *obj, const char *path, struct diag *d,
                           struct outbox_conf *out)
{
    static const char *const keys[] = {"retry_schedule", "max_age",          "jitter",
                                       "done_retention", "dead_retention",   "duplicate_window",
                                       "store",          "dsn",              NULL};
    const long long ten_years = 10LL * 365 * 86400;
    char p[512], ip[512];
    json_t *sched;
    size_t i;

    outbox_conf_default(out);
    if (obj == NULL)
        return;
    if (!json_is_object(obj)) {
        diag_add(d, path, "must be an object");
        return;
    }
    conf_check_keys(obj, path, keys, d);
    sched = json_object_get(obj, "retry_schedule");
    if (sched != NULL) {
        conf_path(p, sizeof(p), path, "retry_schedule");
        if (!json_is_array(sched) || json_array_size(sched) == 0 ||
            json_array_size(sched) > OUTBOX_SCHEDULE_MAX) {
            diag_add(d, p, "must be an array of 1 to %d delays in seconds", OUTBOX_SCHEDULE_MAX);
        } else {
            struct outbox_conf tmp = *out;
            bool ok = true;

            for (i = 0; i < json_array_size(sched); i++) {
                json_t *v = json_array_get(sched, i);

                conf_path_index(ip, sizeof(ip), p, i);
                if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                    json_integer_value(v) > 30LL * 86400) {
                    diag_add(d, ip, "must be a whole number of seconds between 1 and 2592000");
                    ok = false;
                    continue;
                }
                tmp.schedule[i] = json_integer_value(v);
            }
            if (ok) {
                tmp.n_schedule = json_array_size(sched);
                *out = tmp;
            }
        }
    }
    out->max_age = conf_integer(obj, "max_age", path, out->max_age, 60, ten_years, d);
    out->jitter = conf_number(obj, "jitter", path, out->jitter, 0.0, 1.0, d);
    out->done_retention =
        conf_integer(obj, "done_retention", path, out->done_retention, 0, ten_years, d);
    out->dead_retention =
        conf_integer(obj, "dead_retention", path, out->dead_retention, 0, ten_years, d);
    out->duplicate_window =
        conf_integer(obj, "duplicate_window", path, out->duplicate_window, 0, 86400, d);
    outbox_conf_store(obj, path, d, out);
}

/* ---- small helpers ---- */

bool outbox_id_valid(const char *id)
{
    size_t i;

    if (id == NULL)
        return false;
    for (i = 0; i < OUTBOX_ID_LEN; i++) {
        char c = id[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return id[OUTBOX_ID_LEN] == '\0';
}

enum lb_err outbox_new_id(char out[OUTBOX_ID_SIZE])
{
    uint8_t raw[OUTBOX_ID_LEN / 2];

    if (crypto_random(raw, sizeof(raw)) != 0)
        return LB_ERR_INTERNAL;
    hex_encode(raw, sizeof(raw), out);
    return LB_OK;
}

/*
 * Whether name is <32 hex><suffix>; copies the id into id when it is. Directory entries are
 * checked with this before anything else is done with them.
 */
static bool outbox_name_id(const char *name, const char *suffix, char id[OUTBOX_ID_SIZE])
{
    if (strlen(name) < OUTBOX_ID_LEN || strcmp(name + OUTBOX_ID_LEN, suffix) != 0)
        return false;
    memcpy(id, name, OUTBOX_ID_LEN);
    id[OUTBOX_ID_LEN] = '\0';
    return outbox_id_valid(id);
}

/* Writes dir/sub[/name[suffix]] into out. Returns LB_OK or LB_ERR_INTERNAL when it does not fit. */
static enum lb_err outbox_path(const struct outbox *ob, char *out, size_t size, const char *sub,
                               const char *name, const char *suffix)
{
    int n;

    if (name == NULL)
        n = snprintf(out, size, "%s/%s", ob->dir, sub);
    else
        n = snprintf(out, size, "%s/%s/%s%s", ob->dir, sub, name, suffix ? suffix : "");
    if (n < 0 || (size_t)n >= size)
        return LB_ERR_INTERNAL;
    return LB_OK;
}

/* fsyncs a directory so that renames and links in it are durable. */
static enum lb_err outbox_sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    enum lb_err e = LB_OK;

    if (fd < 0)
        return LB_ERR_IO;
    if (fsync(fd) != 0 && errno != EINVAL)
        e = LB_ERR_IO;
    if (close(fd) != 0)
        e = LB_ERR_IO;
    return e;
}

static enum lb_err outbox_sync_sub(const struct outbox *ob, const char *sub)
{
    char p[OUTBOX_PATH_MAX];

    if (outbox_path(ob, p, sizeof(p), sub, NULL, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    return outbox_sync_dir(p);
}

/* flock that retries on EINTR. Returns 0 or -1 with errno. */
static int outbox_flock(int fd, int op)
{
    int r;

    do {
        r = flock(fd, op);
    } while (r != 0 && errno == EINTR);
    return r;
}

/* Reads all of fd from its start into b (capped at OUTBOX_FILE_MAX). */
static enum lb_err outbox_read_fd(int fd, struct buf *b)
{
    char chunk[8192];
    enum lb_err e;

    if (lseek(fd, 0, SEEK_SET) < 0)
        return LB_ERR_IO;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return LB_ERR_IO;
        }
        if (n == 0)
            break;
        e = buf_append(b, chunk, (size_t)n);
        if (e != LB_OK)
            return e;
    }
    return LB_OK;
}

/*
 * Parses JSON from b (which may be empty). Returns a new reference or NULL with the reason in why.
 */
static json_t *outbox_parse(const struct buf *b, char *why, size_t why_size)
{
    json_error_t jerr;
    json_t *j;

    if (b->len == 0) {
        snprintf(why, why_size, "empty file");
        return NULL;
    }
    j = json_loadb(b->data, b->len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL)
        snprintf(why, why_size, "not JSON: %s at line %d column %d", jerr.text, jerr.line,
                 jerr.column);
    return j;
}

/*
 * Reads and parses path. Returns a new reference, or NULL with *e set: LB_ERR_NOT_FOUND when the
 * file does not exist, LB_ERR_GONE when it is unreadable JSON (why says how), LB_ERR_TOO_LARGE,
 * LB_ERR_IO.
 */
static json_t *outbox_load_path(const char *path, enum lb_err *e, char *why, size_t why_size)
{
    struct buf b;
    json_t *j = NULL;
    int fd;

    buf_init(&b, OUTBOX_FILE_MAX);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        *e = errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
        goto out;
    }
    *e = outbox_read_fd(fd, &b);
    if (close(fd) != 0 && *e == LB_OK)
        *e = LB_ERR_IO;
    if (*e != LB_OK)
        goto out;
    j = outbox_parse(&b, why, why_size);
    if (j == NULL)
        *e = LB_ERR_GONE;
out:
    buf_free(&b);
    return j;
}

/* Writes all of data to fd. */
static enum lb_err outbox_write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return LB_ERR_IO;
        }
        data += n;
        len -= (size_t)n;
    }
    return LB_OK;
}

enum outbox_place { OUTBOX_REPLACE, OUTBOX_NOREPLACE };

/*
 * Durably writes data as sub/name: tmp/<hint>.<pid>.<random> → write → set mtime → fsync →
 * rename (OUTBOX_REPLACE) or link (OUTBOX_NOREPLACE: LB_ERR_CONFLICT when sub/name exists) →
 * fsync sub. With locked_fd the new file is flock'ed before it becomes visible and its fd returned
 * in *locked_fd (caller closes). On any error no file is left behind in tmp/.
 */
static enum lb_err outbox_write_file(const struct outbox *ob, const char *sub, const char *name,
                                     const char *hint, const char *data, size_t len,
                                     enum outbox_place place, long long mtime, int *locked_fd)
{
    char tmp[OUTBOX_PATH_MAX], dest[OUTBOX_PATH_MAX], suffix[64];
    struct timespec times[2];
    uint8_t rnd[8];
    char rhex[2 * sizeof(rnd) + 1];
    enum lb_err e;
    int fd = -1, n;

    if (len > OUTBOX_FILE_MAX)
        return LB_ERR_TOO_LARGE;
    if (crypto_random(rnd, sizeof(rnd)) != 0)
        return LB_ERR_INTERNAL;
    hex_encode(rnd, sizeof(rnd), rhex);
    n = snprintf(suffix, sizeof(suffix), ".%ld.%s", (long)getpid(), rhex);
    if (n < 0 || (size_t)n >= sizeof(suffix))
        return LB_ERR_INTERNAL;
    e = outbox_path(ob, tmp, sizeof(tmp), "tmp", hint, suffix);
    if (e == LB_OK)
        e = outbox_path(ob, dest, sizeof(dest), sub, name, NULL);
    if (e != LB_OK)
        return e;

    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return LB_ERR_IO;
    e = outbox_write_all(fd, data, len);
    if (e != LB_OK)
        goto fail;
    times[0].tv_sec = (time_t)mtime;
    times[0].tv_nsec = 0;
    times[1] = times[0];
    if (futimens(fd, times) != 0 || fsync(fd) != 0) {
        e = LB_ERR_IO;
        goto fail;
    }
    if (locked_fd != NULL && outbox_flock(fd, LOCK_EX | LOCK_NB) != 0) {
        e = LB_ERR_IO;
        goto fail;
    }
    if (place == OUTBOX_REPLACE) {
        if (rename(tmp, dest) != 0) {
            e = LB_ERR_IO;
            goto fail;
        }
    } else {
        if (link(tmp, dest) != 0) {
            e = errno == EEXIST ? LB_ERR_CONFLICT : LB_ERR_IO;
            goto fail;
        }
        (void)unlink(tmp);
    }
    e = outbox_sync_sub(ob, sub);
    if (e != LB_OK)
        goto placed;
    if (locked_fd != NULL)
        *locked_fd = fd;
    else if (close(fd) != 0)
        return LB_ERR_IO;
    return LB_OK;

fail:
    (void)unlink(tmp);
placed:
    (void)close(fd);
    return e;
}

/* Serialises j compactly. Returns a new string (caller frees) or NULL. */
static char *outbox_dump(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

/* Dumps j and writes it with outbox_write_file. */
static enum lb_err outbox_write_json(const struct outbox *ob, const char *sub, const char *name,
                                     const char *hint, const json_t *j, enum outbox_place place,
                                     long long mtime, int *locked_fd)
{
    char *s = outbox_dump(j);
    enum lb_err e;

    if (s == NULL)
        return LB_ERR_NOMEM;
    e = outbox_write_file(ob, sub, name, hint, s, strlen(s), place, mtime, locked_fd);
    free(s);
    return e;
}

/* Integer member or dflt. */
static long long outbox_int(const json_t *obj, const char *key, long long dflt)
{
    json_t *v = json_object_get(obj, key);

    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* Sets obj[key] = integer v. */
static enum lb_err outbox_set_int(json_t *obj, const char *key, long long v)
{
    return json_object_set_new(obj, key, json_integer(v)) == 0 ? LB_OK : LB_ERR_NOMEM;
}

static enum lb_err outbox_set_str(json_t *obj, const char *key, const char *v)
{
    return json_object_set_new(obj, key, json_string(v)) == 0 ? LB_OK : LB_ERR_NOMEM;
}

/* A target's status string, or NULL. */
static const char *outbox_target_status(const json_t *entry)
{
    return json_string_value(json_object_get(entry, "status"));
}

/*
 * Checks the shape every job must have: an object whose "id" equals id (when id is not NULL), an
 * integer "created", "attempts" and "next_attempt", and a non-empty "targets" object whose members
 * are objects with a known "status". why gets the first problem.
 */
static bool outbox_job_check(const json_t *job, const char *id, char *why, size_t why_size)
{
    const char *jid, *name, *st;
    json_t *targets, *entry;

    if (!json_is_object(job)) {
        snprintf(why, why_size, "not a JSON object");
        return false;
    }
    jid = json_string_value(json_object_get(job, "id"));
    if (!outbox_id_valid(jid) || (id != NULL && strcmp(jid, id) != 0)) {
        snprintf(why, why_size, "missing or wrong \"id\"");
        return false;
    }
    if (!json_is_integer(json_object_get(job, "created")) ||
        !json_is_integer(json_object_get(job, "attempts")) ||
        !json_is_integer(json_object_get(job, "next_attempt"))) {
        snprintf(why, why_size, "\"created\", \"attempts\" or \"next_attempt\" is not a number");
        return false;
    }
    targets = json_object_get(job, "targets");
    if (!json_is_object(targets) || json_object_size(targets) == 0) {
        snprintf(why, why_size, "no \"targets\"");
        return false;
    }
    json_object_foreach(targets, name, entry) {
        st = outbox_target_status(entry);
        if (!json_is_object(entry) || st == NULL ||
            (strcmp(st, "pending") != 0 && strcmp(st, "delivered") != 0 &&
             strcmp(st, "dead") != 0)) {
            snprintf(why, why_size, "target \"%.64s\" has no valid \"status\"", name);
            return false;
        }
    }
    return true;
}

/* ---- open and close ---- */

/*
 * Removes tmp/ files older than conf.tmp_max_age on the wall clock: they are crash garbage. The
 * age is the ctime, since the mtime of a file being written is set to a time on the outbox's clock.
 */
static void outbox_clean_tmp(const struct outbox *ob)
{
    char p[OUTBOX_PATH_MAX];
    struct dirent *de;
    struct stat st;
    time_t limit = time(NULL) - (time_t)ob->conf.tmp_max_age;
    DIR *d;

    if (outbox_path(ob, p, sizeof(p), "tmp", NULL, NULL) != LB_OK)
        return;
    d = opendir(p);
    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISREG(st.st_mode) && st.st_ctime < limit)
            (void)unlinkat(dirfd(d), de->d_name, 0);
    }
    (void)closedir(d);
}

/* Creates path as a 0700 directory unless it exists as one. */
static enum lb_err outbox_mkdir(const char *path, struct lb_error *err)
{
    struct stat st;

    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return lb_fail(err, LB_ERR_IO, "cannot create spool directory %s: %s", path,
                       strerror(errno));
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return lb_fail(err, LB_ERR_IO, "spool path %s is not a directory", path);
    return LB_OK;
}

struct outbox *outbox_open(const char *dir, const struct outbox_conf *conf, struct lb_error *err)
{
    struct outbox *ob = NULL;
    char p[OUTBOX_PATH_MAX];
    size_t i;

    if (dir == NULL || dir[0] == '\0') {
        lb_fail(err, LB_ERR_CONFIG, "no spool directory configured");
        return NULL;
    }
    if (strlen(dir) > OUTBOX_PATH_MAX - 128) {
        lb_fail(err, LB_ERR_CONFIG, "spool directory path is too long");
        return NULL;
    }
    ob = calloc(1, sizeof(*ob));
    if (ob == NULL)
        goto nomem;
    ob->dir = strdup(dir);
    if (ob->dir == NULL)
        goto nomem;
    if (conf != NULL)
        ob->conf = *conf;
    else
        outbox_conf_default(&ob->conf);
    if (ob->conf.n_schedule == 0 || ob->conf.n_schedule > OUTBOX_SCHEDULE_MAX) {
        lb_fail(err, LB_ERR_CONFIG, "outbox retry schedule is empty");
        goto fail;
    }
    if (outbox_mkdir(dir, err) != LB_OK)
        goto fail;
    for (i = 0; i < sizeof(outbox_subdirs) / sizeof(outbox_subdirs[0]); i++) {
        if (outbox_path(ob, p, sizeof(p), outbox_subdirs[i], NULL, NULL) != LB_OK ||
            outbox_mkdir(p, err) != LB_OK)
            goto fail;
    }
    if (outbox_sync_dir(dir) != LB_OK) {
        lb_fail(err, LB_ERR_IO, "cannot sync spool directory %s", dir);
        goto fail;
    }
    outbox_clean_tmp(ob);
    return ob;

nomem:
    lb_fail(err, LB_ERR_NOMEM, "out of memory");
fail:
    outbox_close(ob);
    return NULL;
}

void outbox_close(struct outbox *ob)
{
    if (ob == NULL)
        return;
    free(ob->dir);
    free(ob);
}

const char *outbox_dir(const struct outbox *ob)
{
    return ob->dir;
}

/* ---- building and putting jobs ---- */

json_t *outbox_job_new(const char *id, const char *form, long long now)
{
    json_t *job;

    if (!outbox_id_valid(id) || form == NULL)
        return NULL;
    job = json_pack("{s:s, s:s, s:I, s:i, s:I, s:{}}", "id", id, "form", form, "created",
                    (json_int_t)now, "attempts", 0, "next_attempt", (json_int_t)now, "targets");
    return job;
}

enum lb_err outbox_job_add_target(json_t *job, const char *name, const char *action,
                                  const json_t *lead, const char *lead_id)
{
    json_t *targets = json_object_get(job, "targets");
    json_t *entry;

    if (!json_is_object(targets) || name == NULL || name[0] == '\0' || action == NULL)
        return LB_ERR_INTERNAL;
    entry = json_pack("{s:s, s:s, s:i}", "action", action, "status", "pending", "attempts", 0);
    if (entry == NULL)
        return LB_ERR_NOMEM;
    if (lead != NULL && json_object_set_new(entry, "lead", json_deep_copy(lead)) != 0)
        goto nomem;
    if (lead_id != NULL && outbox_set_str(entry, "lead_id", lead_id) != LB_OK)
        goto nomem;
    if (json_object_set_new(targets, name, entry) != 0)
        return LB_ERR_NOMEM;
    return LB_OK;

nomem:
    json_decref(entry);
    return LB_ERR_NOMEM;
}

/* Whether sub/<id><suffix> exists. */
static bool outbox_exists(const struct outbox *ob, const char *sub, const char *id,
                          const char *suffix)
{
    char p[OUTBOX_PATH_MAX];
    struct stat st;

    if (outbox_path(ob, p, sizeof(p), sub, id, suffix) != LB_OK)
        return false;
    return lstat(p, &st) == 0;
}

enum lb_err outbox_put(struct outbox *ob, const json_t *job, struct lb_error *err)
{
    char name[OUTBOX_ID_SIZE + 8], why[160];
    const char *id, *tname;
    json_t *copy = NULL, *targets, *entry;
    long long created;
    enum lb_err e;

    id = json_string_value(json_object_get(job, "id"));
    if (!json_is_object(job) || !outbox_id_valid(id) ||
        !json_is_integer(json_object_get(job, "created")))
        return lb_fail(err, LB_ERR_BAD_REQUEST, "job needs a valid \"id\" and \"created\"");
    copy = json_deep_copy(job);
    if (copy == NULL)
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    created = outbox_int(copy, "created", 0);
    e = LB_OK;
    if (!json_is_integer(json_object_get(copy, "attempts")))
        e = outbox_set_int(copy, "attempts", 0);
    if (e == LB_OK && !json_is_integer(json_object_get(copy, "next_attempt")))
        e = outbox_set_int(copy, "next_attempt", created);
    targets = json_object_get(copy, "targets");
    json_object_foreach(targets, tname, entry) {
        if (e != LB_OK || !json_is_object(entry))
            break;
        if (json_object_get(entry, "status") == NULL)
            e = outbox_set_str(entry, "status", "pending");
        if (e == LB_OK && !json_is_integer(json_object_get(entry, "attempts")))
            e = outbox_set_int(entry, "attempts", 0);
    }
    if (e != LB_OK) {
        lb_fail(err, e, "out of memory");
        goto out;
    }
    if (!outbox_job_check(copy, id, why, sizeof(why))) {
        e = lb_fail(err, LB_ERR_BAD_REQUEST, "bad job: %s", why);
        goto out;
    }
    if (outbox_exists(ob, "done", id, ".json") || outbox_exists(ob, "dead", id, ".json")) {
        e = lb_fail(err, LB_ERR_CONFLICT, "job %s exists already", id);
        goto out;
    }
    snprintf(name, sizeof(name), "%s.json", id);
    errno = 0;
    e = outbox_write_json(ob, "queue", name, id, copy, OUTBOX_NOREPLACE,
                          outbox_int(copy, "next_attempt", created), NULL);
    if (e == LB_ERR_CONFLICT)
        lb_fail(err, e, "job %s exists already", id);
    else if (e != LB_OK)
        lb_fail(err, e, "cannot write job %s to the spool %s: %s", id, ob->dir,
                errno != 0 ? strerror(errno) : lb_strerror(e));
out:
    json_decref(copy);
    return e;
}

/* ---- claims ---- */

/*
 * Moves an unreadable queue file (whose lock the caller holds) to dead/<id>.corrupt, after writing
 * dead/<id>.json saying why. Returns LB_ERR_GONE when done.
 */
static enum lb_err outbox_quarantine(struct outbox *ob, const char *id, const char *why)
{
    char from[OUTBOX_PATH_MAX], to[OUTBOX_PATH_MAX], name[OUTBOX_ID_SIZE + 8];
    long long now = (long long)time(NULL);
    json_t *rec;
    enum lb_err e;

    rec = json_pack("{s:s, s:s, s:b, s:I, s:I, s:i, s:I, s:{}}", "id", id, "dead_reason", why,
                    "corrupt", 1, "created", (json_int_t)now, "finished", (json_int_t)now,
                    "attempts", 0, "next_attempt", (json_int_t)now, "targets");
    if (rec == NULL)
        return LB_ERR_NOMEM;
    snprintf(name, sizeof(name), "%s.json", id);
    e = outbox_write_json(ob, "dead", name, id, rec, OUTBOX_REPLACE, now, NULL);
    json_decref(rec);
    if (e != LB_OK)
        return e;
    if (outbox_path(ob, from, sizeof(from), "queue", id, ".json") != LB_OK ||
        outbox_path(ob, to, sizeof(to), "dead", id, ".corrupt") != LB_OK)
        return LB_ERR_INTERNAL;
    if (rename(from, to) != 0)
        return LB_ERR_IO;
    if (outbox_sync_sub(ob, "dead") != LB_OK || outbox_sync_sub(ob, "queue") != LB_OK)
        return LB_ERR_IO;
    if (ob->dead_hook != NULL)
        ob->dead_hook(ob->dead_ctx, id, NULL, NULL, why);
    return LB_ERR_GONE;
}

enum lb_err outbox_claim(struct outbox *ob, const char *id, struct outbox_claim **out)
{
    char path[OUTBOX_PATH_MAX], why[200];
    struct outbox_claim *c = NULL;
    struct stat fst, pst;
    struct buf b;
    json_t *job = NULL;
    enum lb_err e = LB_ERR_CONFLICT;
    int fd = -1, tries;

    *out = NULL;
    buf_init(&b, OUTBOX_FILE_MAX);
    if (!outbox_id_valid(id))
        return LB_ERR_NOT_FOUND;
    if (outbox_path(ob, path, sizeof(path), "queue", id, ".json") != LB_OK)
        return LB_ERR_INTERNAL;
    for (tries = 0; tries < OUTBOX_CLAIM_TRIES; tries++) {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            e = errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
            goto out;
        }
        if (outbox_flock(fd, LOCK_EX | LOCK_NB) != 0) {
            e = errno == EWOULDBLOCK ? LB_ERR_CONFLICT : LB_ERR_IO;
            goto out;
        }
        /* The holder may have replaced or moved the file between our open and our lock. */
        if (fstat(fd, &fst) != 0) {
            e = LB_ERR_IO;
            goto out;
        }
        if (stat(path, &pst) != 0) {
            e = errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
            goto out;
        }
        if (fst.st_ino == pst.st_ino && fst.st_dev == pst.st_dev)
            break;
        (void)close(fd);
        fd = -1;
        e = LB_ERR_CONFLICT;
    }
    if (fd < 0)
        goto out;

    e = outbox_read_fd(fd, &b);
    if (e == LB_ERR_TOO_LARGE) {
        e = outbox_quarantine(ob, id, "job file is larger than 1 MiB");
        goto out;
    }
    if (e != LB_OK)
        goto out;
    job = outbox_parse(&b, why, sizeof(why));
    if (job == NULL || !outbox_job_check(job, id, why, sizeof(why))) {
        char reason[260];

        snprintf(reason, sizeof(reason), "corrupt job file: %s", why);
        e = outbox_quarantine(ob, id, reason);
        goto out;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        e = LB_ERR_NOMEM;
        goto out;
    }
    c->ob = ob;
    c->fd = fd;
    memcpy(c->id, id, OUTBOX_ID_SIZE);
    c->job = job;
    c->retry_after = -1;
    *out = c;
    fd = -1;
    job = NULL;
    e = LB_OK;
out:
    if (fd >= 0)
        (void)close(fd);
    json_decref(job);
    buf_free(&b);
    return e;
}

const json_t *outbox_claim_job(const struct outbox_claim *c)
{
    return c->job;
}

const char *outbox_claim_id(const struct outbox_claim *c)
{
    return c->id;
}

void outbox_release(struct outbox_claim *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        (void)close(c->fd);
    json_decref(c->job);
    free(c);
}

enum lb_err outbox_record(struct outbox_claim *c, const char *target,
                          const struct target_result *result, long long now)
{
    json_t *entry = json_object_get(json_object_get(c->job, "targets"), target);
    json_t *res;
    enum lb_err e;

    if (!json_is_object(entry))
        return LB_ERR_NOT_FOUND;
    e = outbox_set_int(entry, "attempts", outbox_int(entry, "attempts", 0) + 1);
    if (e == LB_OK)
        e = outbox_set_int(entry, "last_attempt", now);
    if (e == LB_OK)
        e = outbox_set_int(entry, "last_status", result->http_status);
    if (e != LB_OK)
        return e;
    switch (result->outcome) {
    case DELIVERY_OK:
        res = json_object();
        if (res == NULL)
            return LB_ERR_NOMEM;
        if (result->lead_id[0] != '\0' &&
            json_object_set_new(res, "lead_id", json_string(result->lead_id)) != 0)
            goto nomem;
        if (result->valuation != NULL &&
            json_object_set_new(res, "valuation", json_deep_copy(result->valuation)) != 0)
            goto nomem;
        if (json_object_set_new(entry, "result", res) != 0)
            return LB_ERR_NOMEM;
        (void)json_object_del(entry, "retry_after");
        return outbox_set_str(entry, "status", "delivered");
    nomem:
        json_decref(res);
        return LB_ERR_NOMEM;
    case DELIVERY_TRANSIENT:
        c->transient = true;
        if (result->retry_after > c->retry_after)
            c->retry_after = result->retry_after;
        if (result->retry_after >= 0)
            e = outbox_set_int(entry, "retry_after", result->retry_after);
        else
            (void)json_object_del(entry, "retry_after");
        if (e == LB_OK)
            e = outbox_set_str(entry, "last_error", result->reason);
        return e;
    case DELIVERY_PERMANENT:
    default:
        e = outbox_set_str(entry, "last_error", result->reason);
        if (e == LB_OK)
            e = outbox_set_str(entry, "status", "dead");
        return e;
    }
}

enum lb_err outbox_claim_set_response(struct outbox_claim *c, const json_t *response)
{
    if (response == NULL || json_object_get(c->job, "response") != NULL)
        return LB_OK;
    if (json_object_set_new(c->job, "response", json_deep_copy(response)) != 0)
        return LB_ERR_NOMEM;
    return LB_OK;
}

/* Rewrites the claimed job in queue/ with the given mtime; the claim moves to the new file. */
static enum lb_err outbox_save_mtime(struct outbox_claim *c, long long mtime)
{
    char name[OUTBOX_ID_SIZE + 8];
    int fd = -1;
    enum lb_err e;

    snprintf(name, sizeof(name), "%s.json", c->id);
    e = outbox_write_json(c->ob, "queue", name, c->id, c->job, OUTBOX_REPLACE, mtime, &fd);
    if (e != LB_OK)
        return e;
    (void)close(c->fd);
    c->fd = fd;
    return LB_OK;
}

enum lb_err outbox_save(struct outbox_claim *c)
{
    return outbox_save_mtime(c, outbox_int(c->job, "next_attempt", 0));
}

/* Multiplies delay by 1 ± up to jitter, at least 1 second. */
static long long outbox_jittered(long long delay, double jitter)
{
    uint32_t r;
    double u, v;

    if (jitter <= 0.0 || crypto_random(&r, sizeof(r)) != 0)
        return delay;
    u = (double)r / (double)UINT32_MAX * 2.0 - 1.0;
    v = (double)delay * (1.0 + jitter * u);
    if (v < 1.0)
        return 1;
    return (long long)(v + 0.5);
}

/*
 * The done record: what an operator or a duplicate request may still need, without the lead.
 * Returns a new reference or NULL.
 */
static json_t *outbox_done_record(const json_t *job, long long now)
{
    json_t *rec, *targets, *entry, *t;
    const char *name;
    static const char *const copy_keys[] = {"id", "form", "created", "attempts", "response"};
    static const char *const target_keys[] = {"action", "status", "attempts", "last_status"};
    size_t i;

    rec = json_object();
    targets = json_object();
    if (rec == NULL || targets == NULL || json_object_set_new(rec, "targets", targets) != 0) {
        json_decref(rec);
        return NULL;
    }
    for (i = 0; i < sizeof(copy_keys) / sizeof(copy_keys[0]); i++) {
        json_t *v = json_object_get(job, copy_keys[i]);

        if (v != NULL && json_object_set(rec, copy_keys[i], v) != 0)
            goto fail;
    }
    if (outbox_set_int(rec, "finished", now) != LB_OK ||
        outbox_set_int(rec, "next_attempt", now) != LB_OK)
        goto fail;
    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        const char *lead_id = json_string_value(json_object_get(json_object_get(entry, "result"),
                                                                "lead_id"));

        t = json_object();
        if (t == NULL || json_object_set_new(targets, name, t) != 0)
            goto fail;
        for (i = 0; i < sizeof(target_keys) / sizeof(target_keys[0]); i++) {
            json_t *v = json_object_get(entry, target_keys[i]);

            if (v != NULL && json_object_set(t, target_keys[i], v) != 0)
                goto fail;
        }
        if (lead_id != NULL && outbox_set_str(t, "lead_id", lead_id) != LB_OK)
            goto fail;
    }
    return rec;
fail:
    json_decref(rec);
    return NULL;
}

/* The first dead target's "name: last_error" (or a transient one's when none is dead) in out. */
static void outbox_reason(const json_t *job, const char *status, char *out, size_t size)
{
    const char *name, *st, *le;
    json_t *entry;

    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        st = outbox_target_status(entry);
        if (st != NULL && strcmp(st, status) == 0) {
            le = json_string_value(json_object_get(entry, "last_error"));
            snprintf(out, size, "%.64s: %s", name, le != NULL && le[0] ? le : "failed");
            return;
        }
    }
    snprintf(out, size, "failed");
}

/* Renames queue/<id>.json to sub/<id>.json and makes both directories durable. */
static enum lb_err outbox_move(struct outbox *ob, const char *id, const char *from_sub,
                               const char *to_sub)
{
    char from[OUTBOX_PATH_MAX], to[OUTBOX_PATH_MAX];

    if (outbox_path(ob, from, sizeof(from), from_sub, id, ".json") != LB_OK ||
        outbox_path(ob, to, sizeof(to), to_sub, id, ".json") != LB_OK)
        return LB_ERR_INTERNAL;
    if (rename(from, to) != 0)
        return errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
    if (outbox_sync_sub(ob, to_sub) != LB_OK || outbox_sync_sub(ob, from_sub) != LB_OK)
        return LB_ERR_IO;
    return LB_OK;
}

/* Marks every pending target of job dead. */
static enum lb_err outbox_kill_pending(json_t *job)
{
    const char *name, *st;
    json_t *entry;

    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        st = outbox_target_status(entry);
        if (st != NULL && strcmp(st, "pending") == 0 &&
            outbox_set_str(entry, "status", "dead") != LB_OK)
            return LB_ERR_NOMEM;
    }
    return LB_OK;
}

/* Tells the dead-letter hook about job (just filed in dead/). */
static void outbox_notify_dead(struct outbox *ob, const char *id, const json_t *job)
{
    const char *name, *st, *first = NULL;
    json_t *entry;

    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        st = outbox_target_status(entry);
        if (st != NULL && strcmp(st, "dead") == 0) {
            first = name;
            break;
        }
    }
    ob->dead_hook(ob->dead_ctx, id, json_string_value(json_object_get(job, "form")), first,
                  json_string_value(json_object_get(job, "dead_reason")));
}

enum lb_err outbox_finish(struct outbox_claim *c, long long now, enum outbox_state *state)
{
    const struct outbox_conf *conf = &c->ob->conf;
    size_t pending = 0, dead = 0;
    const char *name, *st;
    json_t *entry, *rec = NULL;
    enum outbox_state where = OUTBOX_QUEUED;
    enum lb_err e = LB_OK;
    char reason[700];

    json_object_foreach(json_object_get(c->job, "targets"), name, entry) {
        st = outbox_target_status(entry);
        if (st == NULL || strcmp(st, "pending") == 0)
            pending++;
        else if (strcmp(st, "dead") == 0)
            dead++;
    }
    if (pending == 0) {
        where = dead == 0 ? OUTBOX_DONE : OUTBOX_DEAD;
        if (where == OUTBOX_DEAD)
            outbox_reason(c->job, "dead", reason, sizeof(reason));
    } else if (c->transient) {
        long long attempts = outbox_int(c->job, "attempts", 0) + 1;
        long long created = outbox_int(c->job, "created", now);
        long long deadline = created + conf->max_age;

        e = outbox_set_int(c->job, "attempts", attempts);
        if (e != LB_OK)
            goto out;
        if (now >= deadline) {
            char last[512];

            outbox_reason(c->job, "pending", last, sizeof(last));
            snprintf(reason, sizeof(reason), "gave up after %lld attempts over %lld s; last: %s",
                     attempts, now - created, last);
            e = outbox_kill_pending(c->job);
            if (e != LB_OK)
                goto out;
            where = OUTBOX_DEAD;
        } else {
            size_t k = (size_t)(attempts - 1);
            long long next;

            if (k >= conf->n_schedule)
                k = conf->n_schedule - 1;
            next = now + outbox_jittered(conf->schedule[k], conf->jitter);
            if (next > deadline)
                next = deadline;
            if (c->retry_after >= 0 && next < now + c->retry_after)
                next = now + c->retry_after;
            e = outbox_set_int(c->job, "next_attempt", next);
            if (e != LB_OK)
                goto out;
        }
    }

    if (where == OUTBOX_QUEUED) {
        e = outbox_save(c);
        goto out;
    }
    if (where == OUTBOX_DEAD) {
        if (json_object_get(c->job, "dead_reason") == NULL)
            e = outbox_set_str(c->job, "dead_reason", reason);
        if (e == LB_OK)
            e = outbox_set_int(c->job, "finished", now);
        if (e == LB_OK)
            e = outbox_save_mtime(c, now);
    } else {
        rec = outbox_done_record(c->job, now);
        if (rec == NULL) {
            e = LB_ERR_NOMEM;
            goto out;
        }
        json_decref(c->job);
        c->job = rec;
        e = outbox_save_mtime(c, now);
    }
    if (e == LB_OK)
        e = outbox_move(c->ob, c->id, "queue", where == OUTBOX_DONE ? "done" : "dead");
    if (e == LB_OK && where == OUTBOX_DEAD && c->ob->dead_hook != NULL)
        outbox_notify_dead(c->ob, c->id, c->job);
out:
    if (state != NULL)
        *state = e == LB_OK ? where : OUTBOX_QUEUED;
    outbox_release(c);
    return e;
}

/* ---- the background pass ---- */

/* Whether any target other than skip is still pending. */
static bool outbox_other_pending(const json_t *job, const char *skip)
{
    const char *name, *st;
    json_t *entry;

    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        st = outbox_target_status(entry);
        if (strcmp(name, skip) != 0 && st != NULL && strcmp(st, "pending") == 0)
            return true;
    }
    return false;
}

/* Delivers every pending target of a claimed job and finishes it; counts into *s. */
static void outbox_deliver_job(struct outbox_claim *c, long long now, outbox_deliver_fn deliver,
                               void *ctx, struct outbox_run_stats *s)
{
    json_t *targets = json_object_get(c->job, "targets");
    const char **names = NULL;
    const char *name;
    json_t *entry;
    size_t n = 0, i;
    enum outbox_state where;
    bool transient;

    /* Target names are copied so recording (which replaces members) cannot upset iteration. */
    names = calloc(json_object_size(targets) + 1, sizeof(*names));
    if (names == NULL) {
        outbox_release(c);
        return;
    }
    json_object_foreach(targets, name, entry) {
        names[n] = strdup(name);
        if (names[n] == NULL)
            goto out;
        n++;
    }
    for (i = 0; i < n; i++) {
        struct target_result r;
        const char *st;

        entry = json_object_get(targets, names[i]);
        st = outbox_target_status(entry);
        if (st == NULL || strcmp(st, "pending") != 0)
            continue;
        target_result_init(&r);
        deliver(ctx, c->job, names[i], entry, &r);
        if (outbox_record(c, names[i], &r, now) == LB_OK && r.outcome == DELIVERY_OK) {
            s->delivered++;
            if (outbox_other_pending(c->job, names[i]))
                (void)outbox_save(c);
        }
        target_result_clear(&r);
    }
    transient = c->transient;
    if (outbox_finish(c, now, &where) == LB_OK) {
        if (where == OUTBOX_DONE)
            s->done++;
        else if (where == OUTBOX_DEAD)
            s->dead++;
        else if (transient)
            s->retried++;
    }
    c = NULL;
out:
    outbox_release(c);
    for (i = 0; i < n; i++)
        free((void *)names[i]);
    free(names);
}

static int outbox_due_cmp(const void *a, const void *b)
{
    const struct outbox_due *x = a, *y = b;

    if (x->created != y->created)
        return x->created < y->created ? -1 : 1;
    return strcmp(x->id, y->id);
}

/*
 * Lists queued jobs. With due non-NULL, collects those whose file mtime (next_attempt) is <= now
 * into a new array *due (*n_due entries; caller frees), reading each one's "created" for the
 * order (0 when unreadable, so broken files are dealt with first). *next_due gets the earliest
 * mtime > now, or -1.
 */
static enum lb_err outbox_scan_queue(struct outbox *ob, long long now, struct outbox_due **due,
                                     size_t *n_due, long long *next_due)
{
    char p[OUTBOX_PATH_MAX], id[OUTBOX_ID_SIZE], why[200];
    struct outbox_due *list = NULL, *grown;
    size_t n = 0, cap = 0;
    struct dirent *de;
    struct stat st;
    enum lb_err e = LB_OK;
    DIR *d;

    *next_due = -1;
    if (due != NULL) {
        *due = NULL;
        *n_due = 0;
    }
    if (outbox_path(ob, p, sizeof(p), "queue", NULL, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    d = opendir(p);
    if (d == NULL)
        return LB_ERR_IO;
    while ((de = readdir(d)) != NULL) {
        if (!outbox_name_id(de->d_name, ".json", id))
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if ((long long)st.st_mtime > now || due == NULL) {
            if (*next_due < 0 || (long long)st.st_mtime < *next_due)
                *next_due = (long long)st.st_mtime;
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            grown = realloc(list, cap * sizeof(*list));
            if (grown == NULL) {
                e = LB_ERR_NOMEM;
                break;
            }
            list = grown;
        }
        memcpy(list[n].id, id, OUTBOX_ID_SIZE);
        list[n].created = 0;
        {
            char path[OUTBOX_PATH_MAX];
            enum lb_err le;
            json_t *j = NULL;

            if (outbox_path(ob, path, sizeof(path), "queue", id, ".json") == LB_OK)
                j = outbox_load_path(path, &le, why, sizeof(why));
            list[n].created = outbox_int(j, "created", 0);
            json_decref(j);
        }
        n++;
    }
    (void)closedir(d);
    if (e != LB_OK) {
        free(list);
        return e;
    }
    if (due != NULL) {
        if (n > 1)
            qsort(list, n, sizeof(*list), outbox_due_cmp);
        *due = list;
        *n_due = n;
    } else {
        free(list);
    }
    return LB_OK;
}

enum lb_err outbox_run(struct outbox *ob, long long now, outbox_deliver_fn deliver, void *ctx,
                       size_t limit, struct outbox_run_stats *stats)
{
    struct outbox_run_stats s;
    struct outbox_due *due = NULL;
    size_t n_due = 0, i, handled = 0;
    long long next_due;
    enum lb_err e;

    memset(&s, 0, sizeof(s));
    s.next_due = -1;
    (void)outbox_expire(ob, now);
    e = outbox_scan_queue(ob, now, &due, &n_due, &next_due);
    if (e != LB_OK)
        goto out;
    for (i = 0; i < n_due && (limit == 0 || handled < limit); i++) {
        struct outbox_claim *c = NULL;
        enum lb_err ce = outbox_claim(ob, due[i].id, &c);

        if (ce == LB_ERR_CONFLICT) {
            s.busy++;
            continue;
        }
        if (ce == LB_ERR_GONE) {
            s.dead++;
            continue;
        }
        if (ce != LB_OK)
            continue;
        if (outbox_int(c->job, "next_attempt", 0) > now) {
            /* Rescheduled by someone else since the scan. */
            outbox_release(c);
            continue;
        }
        handled++;
        outbox_deliver_job(c, now, deliver, ctx, &s);
    }
    e = outbox_scan_queue(ob, now, NULL, NULL, &next_due);
    s.next_due = next_due;
out:
    free(due);
    if (stats != NULL)
        *stats = s;
    return e;
}

/* ---- duplicate keys ---- */

static json_t *outbox_find(struct outbox *ob, const char *id, enum outbox_state *state);

/* The key's file name: sha256 hex of key + ".json". */
static void outbox_key_name(const char *key, char name[OUTBOX_KEY_HEX + 8])
{
    uint8_t h[SHA256_DIGEST_SIZE];

    sha256(key, strlen(key), h);
    hex_encode(h, sizeof(h), name);
    memcpy(name + OUTBOX_KEY_HEX, ".json", 6);
}

/* Takes the keys/ lock (held only while expired or released keys are removed). Returns its fd. */
static int outbox_keys_lock(struct outbox *ob)
{
    char p[OUTBOX_PATH_MAX];
    int fd;

    if (outbox_path(ob, p, sizeof(p), "keys", ".lock", NULL) != LB_OK)
        return -1;
    fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    if (outbox_flock(fd, LOCK_EX) != 0) {
        (void)close(fd);
        return -1;
    }
    return fd;
}

/*
 * Removes keys/<name> if it is expired at now (or unreadable), or, with job_id, if it maps to
 * job_id. Runs under the keys/ lock so that a fresh key is never removed by mistake: a key is only
 * ever created where none exists, and only removed under the lock after this check.
 */
static enum lb_err outbox_key_remove(struct outbox *ob, const char *name, long long now,
                                     const char *job_id)
{
    char p[OUTBOX_PATH_MAX], why[200];
    enum lb_err e = LB_OK, le;
    json_t *k;
    bool remove;
    int lock;

    if (outbox_path(ob, p, sizeof(p), "keys", name, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    lock = outbox_keys_lock(ob);
    if (lock < 0)
        return LB_ERR_IO;
    k = outbox_load_path(p, &le, why, sizeof(why));
    if (le == LB_ERR_NOT_FOUND)
        goto out;
    if (job_id != NULL) {
        const char *jid = json_string_value(json_object_get(k, "job"));

        remove = jid != NULL && strcmp(jid, job_id) == 0;
    } else
        remove = k == NULL || !json_is_integer(json_object_get(k, "expires")) ||
                 outbox_int(k, "expires", 0) <= now;
    if (remove) {
        if (unlink(p) != 0 && errno != ENOENT)
            e = LB_ERR_IO;
        else
            e = outbox_sync_sub(ob, "keys");
    }
out:
    json_decref(k);
    (void)close(lock);
    return e;
}

enum lb_err outbox_reserve_key(struct outbox *ob, const char *key, const char *body_hash,
                               const char *job_id, long long now, bool *duplicate,
                               char existing_id[OUTBOX_ID_SIZE])
{
    char name[OUTBOX_KEY_HEX + 8], p[OUTBOX_PATH_MAX], why[200];
    bool fp;
    json_t *rec = NULL, *k = NULL;
    enum lb_err e = LB_ERR_IO;
    int tries;

    *duplicate = false;
    existing_id[0] = '\0';
    if (key == NULL || !outbox_id_valid(job_id))
        return LB_ERR_BAD_REQUEST;
    fp = strncmp(key, "fp:", 3) == 0;
    outbox_key_name(key, name);
    if (outbox_path(ob, p, sizeof(p), "keys", name, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    rec = json_pack("{s:s, s:s?, s:I, s:I}", "job", job_id, "body", body_hash, "created",
                    (json_int_t)now, "expires",
                    (json_int_t)(now + (fp ? ob->conf.duplicate_window
                                           : ob->conf.done_retention)));
    if (rec == NULL)
        return LB_ERR_NOMEM;
    for (tries = 0; tries < OUTBOX_KEY_TRIES; tries++) {
        const char *jid, *body;

        e = outbox_write_json(ob, "keys", name, job_id, rec, OUTBOX_NOREPLACE,
                              outbox_int(rec, "expires", now), NULL);
        if (e != LB_ERR_CONFLICT)
            goto out;
        /* Taken: a key file is complete the moment it exists (it was linked in whole). */
        json_decref(k);
        k = outbox_load_path(p, &e, why, sizeof(why));
        if (e == LB_ERR_NOT_FOUND)
            continue;
        if (e != LB_OK && e != LB_ERR_GONE)
            goto out;
        jid = json_string_value(json_object_get(k, "job"));
        if (k == NULL || !outbox_id_valid(jid) || outbox_int(k, "expires", 0) <= now) {
            e = outbox_key_remove(ob, name, now, NULL);
            if (e != LB_OK)
                goto out;
            continue;
        }
        if (now - outbox_int(k, "created", now) >= OUTBOX_KEY_GRACE) {
            enum outbox_state where;
            json_t *job = outbox_find(ob, jid, &where);

            json_decref(job);
            if (where == OUTBOX_UNKNOWN) {
                /* Its job was never accepted (a crash between reserve and put) or was purged. */
                e = outbox_key_remove(ob, name, now, jid);
                if (e != LB_OK)
                    goto out;
                continue;
            }
        }
        memcpy(existing_id, jid, OUTBOX_ID_SIZE);
        body = json_string_value(json_object_get(k, "body"));
        if (body_hash != NULL && body != NULL && strcmp(body, body_hash) != 0) {
            e = LB_ERR_CONFLICT;
            goto out;
        }
        *duplicate = true;
        e = LB_OK;
        goto out;
    }
    e = LB_ERR_UNAVAILABLE;
out:
    json_decref(k);
    json_decref(rec);
    return e;
}

enum lb_err outbox_release_key(struct outbox *ob, const char *key, const char *job_id)
{
    char name[OUTBOX_KEY_HEX + 8];

    if (key == NULL || !outbox_id_valid(job_id))
        return LB_ERR_BAD_REQUEST;
    outbox_key_name(key, name);
    return outbox_key_remove(ob, name, 0, job_id);
}

/* ---- responses, operator functions ---- */

/*
 * Loads job id from queue/, done/ or dead/ (looking at queue/ again last, in case it moved).
 * Returns a new reference or NULL; *state tells where it was found.
 */
static json_t *outbox_find(struct outbox *ob, const char *id, enum outbox_state *state)
{
    static const struct {
        const char *sub;
        enum outbox_state state;
    } places[] = {
        {"queue", OUTBOX_QUEUED},
        {"done", OUTBOX_DONE},
        {"dead", OUTBOX_DEAD},
        {"queue", OUTBOX_QUEUED},
    };
    char p[OUTBOX_PATH_MAX], why[200];
    enum lb_err e;
    size_t i;
    json_t *j;

    *state = OUTBOX_UNKNOWN;
    if (!outbox_id_valid(id))
        return NULL;
    for (i = 0; i < sizeof(places) / sizeof(places[0]); i++) {
        if (outbox_path(ob, p, sizeof(p), places[i].sub, id, ".json") != LB_OK)
            return NULL;
        j = outbox_load_path(p, &e, why, sizeof(why));
        if (e != LB_ERR_NOT_FOUND) {
            *state = places[i].state;
            return j;
        }
    }
    return NULL;
}

json_t *outbox_load_response(struct outbox *ob, const char *id, enum outbox_state *state)
{
    enum outbox_state where;
    json_t *job = outbox_find(ob, id, &where);
    json_t *r = json_object_get(job, "response");

    if (state != NULL)
        *state = where;
    if (r != NULL)
        json_incref(r);
    json_decref(job);
    return r;
}

enum lb_err outbox_store_response(struct outbox *ob, const char *id, const json_t *response)
{
    char p[OUTBOX_PATH_MAX], name[OUTBOX_ID_SIZE + 8], why[200];
    const char *subs[] = {"done", "dead"};
    struct outbox_claim *c = NULL;
    struct stat st;
    enum lb_err e;
    size_t i;
    json_t *j;

    if (!outbox_id_valid(id) || response == NULL)
        return LB_ERR_BAD_REQUEST;
    e = outbox_claim(ob, id, &c);
    if (e == LB_OK) {
        e = outbox_claim_set_response(c, response);
        if (e == LB_OK)
            e = outbox_save(c);
        outbox_release(c);
        return e;
    }
    if (e != LB_ERR_NOT_FOUND)
        return e;
    snprintf(name, sizeof(name), "%s.json", id);
    for (i = 0; i < 2; i++) {
        if (outbox_path(ob, p, sizeof(p), subs[i], id, ".json") != LB_OK)
            return LB_ERR_INTERNAL;
        j = outbox_load_path(p, &e, why, sizeof(why));
        if (e == LB_ERR_NOT_FOUND)
            continue;
        if (j == NULL)
            return e;
        if (json_object_get(j, "response") == NULL) {
            if (json_object_set_new(j, "response", json_deep_copy(response)) != 0 ||
                stat(p, &st) != 0)
                e = LB_ERR_IO;
            else
                e = outbox_write_json(ob, subs[i], name, id, j, OUTBOX_REPLACE,
                                      (long long)st.st_mtime, NULL);
        }
        json_decref(j);
        return e;
    }
    return LB_ERR_NOT_FOUND;
}

/* A summary of a job or record for listings: no lead data. Returns a new reference or NULL. */
static json_t *outbox_summary(const json_t *job, const char *id, enum outbox_state state)
{
    static const char *const keys[] = {"form", "attempts", "next_attempt", "created", "finished",
                                       "dead_reason"};
    static const char *const tkeys[] = {"status", "attempts", "last_status", "last_error",
                                        "lead_id"};
    json_t *s, *targets, *entry, *t;
    const char *name;
    size_t i;

    s = json_pack("{s:s, s:s, s:{}}", "id", id, "state", outbox_state_name(state), "targets");
    if (s == NULL)
        return NULL;
    if (job == NULL) {
        if (outbox_set_str(s, "error", "unreadable job file") != LB_OK)
            goto fail;
        return s;
    }
    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_t *v = json_object_get(job, keys[i]);

        if (v != NULL && json_object_set(s, keys[i], v) != 0)
            goto fail;
    }
    targets = json_object_get(s, "targets");
    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        json_t *lid = json_object_get(json_object_get(entry, "result"), "lead_id");

        t = json_object();
        if (t == NULL || json_object_set_new(targets, name, t) != 0)
            goto fail;
        for (i = 0; i < sizeof(tkeys) / sizeof(tkeys[0]); i++) {
            json_t *v = json_object_get(entry, tkeys[i]);

            if (v != NULL && json_object_set(t, tkeys[i], v) != 0)
                goto fail;
        }
        if (lid != NULL && json_object_get(t, "lead_id") == NULL &&
            json_object_set(t, "lead_id", lid) != 0)
            goto fail;
    }
    return s;
fail:
    json_decref(s);
    return NULL;
}

/*
 * Calls fn for each <id>.json in sub (in directory order). Stops at the first error fn returns.
 */
static enum lb_err outbox_each(struct outbox *ob, const char *sub,
                               enum lb_err (*fn)(struct outbox *ob, const char *sub,
                                                 const char *id, void *arg),
                               void *arg)
{
    char p[OUTBOX_PATH_MAX], id[OUTBOX_ID_SIZE];
    char (*ids)[OUTBOX_ID_SIZE] = NULL, (*grown)[OUTBOX_ID_SIZE];
    size_t n = 0, cap = 0, i;
    struct dirent *de;
    enum lb_err e = LB_OK;
    DIR *d;

    if (outbox_path(ob, p, sizeof(p), sub, NULL, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    d = opendir(p);
    if (d == NULL)
        return LB_ERR_IO;
    /* Names first, then work: fn may rename or remove files in sub. */
    while ((de = readdir(d)) != NULL) {
        if (!outbox_name_id(de->d_name, ".json", id))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            grown = realloc(ids, cap * sizeof(*ids));
            if (grown == NULL) {
                e = LB_ERR_NOMEM;
                break;
            }
            ids = grown;
        }
        memcpy(ids[n++], id, OUTBOX_ID_SIZE);
    }
    (void)closedir(d);
    for (i = 0; e == LB_OK && i < n; i++)
        e = fn(ob, sub, ids[i], arg);
    free(ids);
    return e;
}

static enum lb_err outbox_list_one(struct outbox *ob, const char *sub, const char *id, void *arg)
{
    char p[OUTBOX_PATH_MAX], why[200];
    enum outbox_state state = strcmp(sub, "queue") == 0  ? OUTBOX_QUEUED
                              : strcmp(sub, "done") == 0 ? OUTBOX_DONE
                                                         : OUTBOX_DEAD;
    enum lb_err e;
    json_t *j, *s;

    if (outbox_path(ob, p, sizeof(p), sub, id, ".json") != LB_OK)
        return LB_ERR_INTERNAL;
    j = outbox_load_path(p, &e, why, sizeof(why));
    if (e == LB_ERR_NOT_FOUND)
        return LB_OK;
    s = outbox_summary(j, id, state);
    json_decref(j);
    if (s == NULL || json_array_append_new(arg, s) != 0)
        return LB_ERR_NOMEM;
    return LB_OK;
}

static int outbox_created_cmp(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    long long cx = outbox_int(x, "created", 0), cy = outbox_int(y, "created", 0);

    if (cx != cy)
        return cx < cy ? -1 : 1;
    return strcmp(json_string_value(json_object_get(x, "id")),
                  json_string_value(json_object_get(y, "id")));
}

json_t *outbox_list(struct outbox *ob)
{
    json_t *arr = json_array(), *sorted = NULL, **items = NULL;
    const char *subs[] = {"queue", "dead", "done"};
    size_t i, n;

    if (arr == NULL)
        return NULL;
    for (i = 0; i < 3; i++)
        if (outbox_each(ob, subs[i], outbox_list_one, arr) != LB_OK)
            goto out;
    n = json_array_size(arr);
    items = calloc(n + 1, sizeof(*items));
    sorted = json_array();
    if (items == NULL || sorted == NULL)
        goto fail;
    for (i = 0; i < n; i++)
        items[i] = json_array_get(arr, i);
    if (n > 1)
        qsort(items, n, sizeof(*items), outbox_created_cmp);
    for (i = 0; i < n; i++)
        if (json_array_append(sorted, items[i]) != 0)
            goto fail;
    goto out;
fail:
    json_decref(sorted);
    sorted = NULL;
out:
    free(items);
    json_decref(arr);
    return sorted;
}

json_t *outbox_show(struct outbox *ob, const char *id)
{
    enum outbox_state where;
    json_t *j = outbox_find(ob, id, &where);

    if (j != NULL && (!json_is_object(j) ||
                      outbox_set_str(j, "state", outbox_state_name(where)) != LB_OK)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Resets a dead letter for another round: attempts 0, due at now, dead targets pending. */
static enum lb_err outbox_revive(json_t *job, long long now)
{
    const char *name, *st;
    json_t *entry;

    (void)json_object_del(job, "dead_reason");
    (void)json_object_del(job, "finished");
    if (outbox_set_int(job, "attempts", 0) != LB_OK ||
        outbox_set_int(job, "next_attempt", now) != LB_OK)
        return LB_ERR_NOMEM;
    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        st = outbox_target_status(entry);
        if (st != NULL && strcmp(st, "dead") == 0 &&
            (outbox_set_str(entry, "status", "pending") != LB_OK ||
             outbox_set_int(entry, "attempts", 0) != LB_OK))
            return LB_ERR_NOMEM;
    }
    return LB_OK;
}

enum lb_err outbox_retry(struct outbox *ob, const char *id, long long now)
{
    char p[OUTBOX_PATH_MAX], name[OUTBOX_ID_SIZE + 8], why[200];
    struct outbox_claim *c = NULL;
    json_t *j;
    enum lb_err e;

    if (!outbox_id_valid(id))
        return LB_ERR_NOT_FOUND;
    e = outbox_claim(ob, id, &c);
    if (e == LB_OK) {
        e = outbox_set_int(c->job, "next_attempt", now);
        if (e == LB_OK)
            e = outbox_save(c);
        outbox_release(c);
        return e;
    }
    if (e != LB_ERR_NOT_FOUND)
        return e;
    if (outbox_path(ob, p, sizeof(p), "dead", id, ".json") != LB_OK)
        return LB_ERR_INTERNAL;
    j = outbox_load_path(p, &e, why, sizeof(why));
    if (j == NULL)
        return e == LB_ERR_GONE ? LB_ERR_GONE : e;
    if (json_is_true(json_object_get(j, "corrupt")) || !outbox_job_check(j, id, why, sizeof(why))) {
        e = LB_ERR_GONE;
        goto out;
    }
    e = outbox_revive(j, now);
    if (e != LB_OK)
        goto out;
    /* Rewritten in place first, then one rename: the job is never in two places. */
    snprintf(name, sizeof(name), "%s.json", id);
    e = outbox_write_json(ob, "dead", name, id, j, OUTBOX_REPLACE, now, NULL);
    if (e == LB_OK)
        e = outbox_move(ob, id, "dead", "queue");
out:
    json_decref(j);
    return e;
}

struct outbox_retry_ctx {
    long long now;
    size_t count;
};

static enum lb_err outbox_retry_one(struct outbox *ob, const char *sub, const char *id, void *arg)
{
    struct outbox_retry_ctx *rc = arg;

    (void)sub;
    if (outbox_retry(ob, id, rc->now) == LB_OK)
        rc->count++;
    return LB_OK;
}

enum lb_err outbox_retry_all(struct outbox *ob, long long now, size_t *count)
{
    struct outbox_retry_ctx rc = {now, 0};
    enum lb_err e;

    /* Queue first: dead letters revived below must not be counted twice. */
    e = outbox_each(ob, "queue", outbox_retry_one, &rc);
    if (e == LB_OK)
        e = outbox_each(ob, "dead", outbox_retry_one, &rc);
    if (count != NULL)
        *count = rc.count;
    return e;
}

/*
 * Removes files in sub whose mtime (their finish time, or a key's expiry) is <= cutoff. Keys go
 * through outbox_key_remove; in dead/ the .corrupt companions go too. Counts .json files removed.
 */
static enum lb_err outbox_remove_older(struct outbox *ob, const char *sub, long long cutoff,
                                       long long now, size_t *count)
{
    char p[OUTBOX_PATH_MAX], id[OUTBOX_ID_SIZE];
    bool keys = strcmp(sub, "keys") == 0;
    struct dirent *de;
    struct stat st;
    enum lb_err e = LB_OK;
    DIR *d;

    if (outbox_path(ob, p, sizeof(p), sub, NULL, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    d = opendir(p);
    if (d == NULL)
        return LB_ERR_IO;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        bool json;

        if (keys) {
            if (len != OUTBOX_KEY_HEX + 5 || strcmp(de->d_name + OUTBOX_KEY_HEX, ".json") != 0)
                continue;
        } else if (!outbox_name_id(de->d_name, ".json", id) &&
                   !outbox_name_id(de->d_name, ".corrupt", id)) {
            continue;
        }
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            (long long)st.st_mtime > cutoff)
            continue;
        json = len > 5 && strcmp(de->d_name + len - 5, ".json") == 0;
        if (keys) {
            if (outbox_key_remove(ob, de->d_name, now, NULL) != LB_OK)
                e = LB_ERR_IO;
            continue;
        }
        if (unlinkat(dirfd(d), de->d_name, 0) != 0) {
            e = LB_ERR_IO;
            continue;
        }
        if (json && count != NULL)
            (*count)++;
    }
    (void)closedir(d);
    if (e == LB_OK && !keys)
        e = outbox_sync_sub(ob, sub);
    return e;
}

enum lb_err outbox_purge(struct outbox *ob, bool dead, bool done, long long older_than,
                         long long now, size_t *count)
{
    enum lb_err e = LB_OK, e2;
    size_t n = 0;

    if (older_than < 0)
        older_than = 0;
    if (dead)
        e = outbox_remove_older(ob, "dead", now - older_than, now, &n);
    if (done) {
        e2 = outbox_remove_older(ob, "done", now - older_than, now, &n);
        if (e == LB_OK)
            e = e2;
    }
    if (count != NULL)
        *count = n;
    return e;
}

enum lb_err outbox_expire(struct outbox *ob, long long now)
{
    enum lb_err e, e2;

    e = outbox_remove_older(ob, "done", now - ob->conf.done_retention, now, NULL);
    e2 = outbox_remove_older(ob, "dead", now - ob->conf.dead_retention, now, NULL);
    if (e == LB_OK)
        e = e2;
    e2 = outbox_remove_older(ob, "keys", now, now, NULL);
    if (e == LB_OK)
        e = e2;
    outbox_clean_tmp(ob);
    return e;
}

void outbox_set_dead_hook(struct outbox *ob, outbox_dead_fn fn, void *ctx)
{
    ob->dead_hook = fn;
    ob->dead_ctx = ctx;
}

struct outbox_stats_ctx {
    struct outbox_stats *st;
    enum outbox_state state;
};

static enum lb_err outbox_stats_one(struct outbox *ob, const char *sub, const char *id, void *arg)
{
    struct outbox_stats_ctx *sc = arg;
    char p[OUTBOX_PATH_MAX], why[200];
    enum lb_err e;
    json_t *j;

    if (sc->state == OUTBOX_DONE) {
        sc->st->done++;
        return LB_OK;
    }
    if (sc->state == OUTBOX_DEAD) {
        sc->st->dead++;
        return LB_OK;
    }
    if (outbox_path(ob, p, sizeof(p), sub, id, ".json") != LB_OK)
        return LB_ERR_INTERNAL;
    j = outbox_load_path(p, &e, why, sizeof(why));
    if (e == LB_ERR_NOT_FOUND)
        return LB_OK;
    sc->st->queued++;
    if (j != NULL) {
        long long created = outbox_int(j, "created", -1);

        if (created >= 0 && (sc->st->oldest_created < 0 || created < sc->st->oldest_created))
            sc->st->oldest_created = created;
        json_decref(j);
    }
    return LB_OK;
}

enum lb_err outbox_stats(struct outbox *ob, long long now, struct outbox_stats *out)
{
    static const struct {
        const char *sub;
        enum outbox_state state;
    } places[] = {{"queue", OUTBOX_QUEUED}, {"done", OUTBOX_DONE}, {"dead", OUTBOX_DEAD}};
    struct outbox_stats_ctx sc = {out, OUTBOX_QUEUED};
    enum lb_err e = LB_OK;
    size_t i;

    (void)now;
    memset(out, 0, sizeof(*out));
    out->oldest_created = -1;
    for (i = 0; e == LB_OK && i < sizeof(places) / sizeof(places[0]); i++) {
        sc.state = places[i].state;
        e = outbox_each(ob, places[i].sub, outbox_stats_one, &sc);
    }
    return e;
}
