/*
 * recall.c: short-lived records of rejected plain-HTML posts (see recall.h).
 *
 * Records are files under <spool>/recall/, named by a 32-hex random token, created 0600 through
 * a temporary name and rename(2), so a reader sees a whole record or none. They hold personal
 * data only for RECALL_TTL seconds: every write sweeps out expired records first, and a read of
 * an expired one removes it.
 */
#include "recall.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"

#define RECALL_PATH_SIZE 4096
#define RECALL_SWEEP_MAX 2000       /* directory entries looked at per write */
#define RECALL_VALUE_MAX 4096       /* longest value kept, bytes */

/* Submitted names never kept: spam-guard answers and one-time tokens. */
static const char *const recall_skip[] = {"lb_token", "altcha", "lb_website", NULL};

static bool token_valid(const char *t)
{
    size_t i;

    if (t == NULL || strlen(t) != RECALL_TOKEN_SIZE - 1)
        return false;
    for (i = 0; t[i] != '\0'; i++)
        if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f')))
            return false;
    return true;
}

static bool recall_path(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, RECALL_PATH_SIZE, "%s/recall%s%s", dir, name != NULL ? "/" : "",
                     name != NULL ? name : "");

    return n > 0 && n < RECALL_PATH_SIZE;
}

/* Removes records older than RECALL_TTL (by mtime), looking at RECALL_SWEEP_MAX at most. */
static void recall_sweep(const char *dir, long long now)
{
    char path[RECALL_PATH_SIZE];
    DIR *d;
    struct dirent *de;
    struct stat st;
    int seen = 0;

    if (!recall_path(path, dir, NULL) || (d = opendir(path)) == NULL)
        return;
    while ((de = readdir(d)) != NULL && seen++ < RECALL_SWEEP_MAX) {
        if (de->d_name[0] == '.')
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            (long long)st.st_mtime + RECALL_TTL < now)
            (void)unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

/* The values worth showing again: top-level strings (arrays as their last string), capped. */
static json_t *recall_values(const json_t *fields)
{
    json_t *out = json_object(), *v;
    const char *name;

    if (out == NULL)
        return NULL;
    json_object_foreach((json_t *)fields, name, v) {
        bool skip = false;

        for (size_t i = 0; recall_skip[i] != NULL; i++)
            if (strcmp(name, recall_skip[i]) == 0)
                skip = true;
        if (json_is_array(v) && json_array_size(v) > 0)
            v = json_array_get(v, json_array_size(v) - 1);
        if (skip || !json_is_string(v) || json_string_length(v) > RECALL_VALUE_MAX)
            continue;
        if (json_object_set(out, name, v) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

enum lb_err recall_put(const char *spool_dir, const char *form, const json_t *fields,
                       const json_t *errors, long long now, char token[RECALL_TOKEN_SIZE])
{
    char path[RECALL_PATH_SIZE], tmp[RECALL_PATH_SIZE], name[64];
    uint8_t raw[(RECALL_TOKEN_SIZE - 1) / 2];
    json_t *rec = NULL;
    char *text = NULL;
    enum lb_err e = LB_ERR_IO;
    size_t len;
    int fd = -1;

    if (spool_dir == NULL)
        return LB_ERR_IO;
    if (crypto_random(raw, sizeof(raw)) != 0)
        return LB_ERR_INTERNAL;
    hex_encode(raw, sizeof(raw), token);
    recall_sweep(spool_dir, now);
    if (!recall_path(path, spool_dir, NULL) || (mkdir(path, 0700) != 0 && errno != EEXIST))
        goto out;
    rec = json_pack("{s:s,s:I,s:o,s:O}", "form", form, "created", (json_int_t)now, "values",
                    recall_values(fields), "errors", errors);
    text = rec != NULL ? json_dumps(rec, JSON_COMPACT) : NULL;
    if (text == NULL) {
        e = LB_ERR_NOMEM;
        goto out;
    }
    snprintf(name, sizeof(name), ".%s.tmp", token);
    if (!recall_path(tmp, spool_dir, name))
        goto out;
    snprintf(name, sizeof(name), "%s.json", token);
    if (!recall_path(path, spool_dir, name))
        goto out;
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        goto out;
    len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len || close(fd) != 0) {
        fd = -1;
        (void)unlink(tmp);
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        (void)unlink(tmp);
        goto out;
    }
    e = LB_OK;
out:
    if (fd >= 0)
        close(fd);
    free(text);
    json_decref(rec);
    return e;
}

json_t *recall_get(const char *spool_dir, const char *form, const char *token, long long now)
{
    char path[RECALL_PATH_SIZE], name[64];
    json_t *rec;
    const char *f;

    if (spool_dir == NULL || !token_valid(token))
        return NULL;
    snprintf(name, sizeof(name), "%s.json", token);
    if (!recall_path(path, spool_dir, name))
        return NULL;
    rec = json_load_file(path, 0, NULL);
    if (rec == NULL)
        return NULL;
    f = json_string_value(json_object_get(rec, "form"));
    if (json_integer_value(json_object_get(rec, "created")) + RECALL_TTL < now) {
        (void)unlink(path);
        json_decref(rec);
        return NULL;
    }
    if (f == NULL || form == NULL || strcmp(f, form) != 0) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}
