/*
 * outbox.c: the store-neutral front of the durable outbox (see outbox.h for the job format and
 * outbox_store.h for what a store provides).
 *
 * Here live the rules that do not depend on where jobs are kept: building jobs, recording each
 * delivery's outcome, the retry schedule with jitter and Retry-After, where a finished job goes
 * (done, dead or back in the queue), the delivery pass, and the operator commands. The store
 * keeps the jobs, their claims and the duplicate keys.
 *
 * No duplicate after a crash: before an attempt the job's target is marked "started" (durably);
 * recording the outcome brings "attempts" level with it. A target found with started > attempts
 * was being delivered when its worker died, so its outcome is unknown, and the deliver function
 * is told (outbox_attempt_unknown) to check whether the API has the lead before creating it.
 */
#include "outbox.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "config.h"
#include "crypto.h"
#include "log.h"
#include "outbox_pg.h"
#include "outbox_store.h"

struct outbox {
    char *dir; /* the spool directory, or NULL */
    const struct outbox_store_ops *ops;
    struct outbox_store *st;
    struct outbox_conf conf;
    outbox_dead_fn dead_hook;
    void *dead_ctx;
};

struct outbox_claim {
    struct outbox *ob;
    struct outbox_hold *hold;
    char id[OUTBOX_ID_SIZE];
    json_t *job;            /* owned */
    bool transient;         /* a transient failure was recorded */
    long long deferred;     /* largest wait of a target deferred by its rate limit, or -1 */
    long long retry_after;  /* largest retry_after recorded, or -1 */
};

static const char *const outbox_state_names[OUTBOX_STATE__MAX] = {
    [OUTBOX_QUEUED] = "queued",
    [OUTBOX_DONE] = "done",
    [OUTBOX_DEAD] = "dead",
    [OUTBOX_ASIDE] = "aside",
    [OUTBOX_UNKNOWN] = "unknown",
};

/* Seconds between looks at a create that an update waits behind. */
#define OUTBOX_AFTER_WAIT 2

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
        out->connections = (size_t)conf_integer(obj, "connections", path, 0, 1, 1024, d);
    } else if (strcmp(store, "spool") == 0) {
        for (size_t i = 0; i < 2; i++) {
            static const char *const pg_only[] = {"dsn", "connections"};

            if (json_object_get(obj, pg_only[i]) != NULL) {
                conf_path(p, sizeof(p), path, pg_only[i]);
                diag_add(d, p, "only with \"store\": \"postgresql\"");
            }
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
                                       "store",          "dsn",              "connections",
                                       NULL};
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
bool outbox_job_check(const json_t *job, const char *id, char *why, size_t why_size)
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

struct outbox *outbox_from_store(const struct outbox_store_ops *ops, struct outbox_store *st,
                                 const struct outbox_conf *conf, struct lb_error *err)
{
    struct outbox *ob;

    if (st == NULL)
        return NULL;
    ob = calloc(1, sizeof(*ob));
    if (ob == NULL) {
        ops->close(st);
        lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    ob->ops = ops;
    ob->st = st;
    if (conf != NULL)
        ob->conf = *conf;
    else
        outbox_conf_default(&ob->conf);
    if (ob->conf.n_schedule == 0 || ob->conf.n_schedule > OUTBOX_SCHEDULE_MAX) {
        lb_fail(err, LB_ERR_CONFIG, "outbox retry schedule is empty");
        outbox_close(ob);
        return NULL;
    }
    return ob;
}

struct outbox *outbox_open(const char *dir, const struct outbox_conf *conf, struct lb_error *err)
{
    const struct outbox_store_ops *ops = NULL;
    struct outbox_store *st;
    struct outbox *ob;

    if (conf != NULL && conf->store == OUTBOX_STORE_POSTGRESQL) {
        /* The spool directory then holds only this host's own files (metrics). */
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            log_msg(LOG_WARN, "outbox: cannot make %s: %s", dir, strerror(errno));
        st = outbox_pg_open(conf->dsn, conf->connections > 0 ? conf->connections : 16, &ops,
                            err);
    } else
        st = outbox_spool_open(dir, conf != NULL ? conf->tmp_max_age : 3600, &ops, err);
    ob = st != NULL ? outbox_from_store(ops, st, conf, err) : NULL;
    if (ob != NULL) {
        ob->conf.dsn = NULL; /* borrowed from a config a reload may free; the store copied it */
        ob->dir = strdup(dir);
        if (ob->dir == NULL) {
            lb_fail(err, LB_ERR_NOMEM, "out of memory");
            outbox_close(ob);
            return NULL;
        }
    }
    return ob;
}

const char *outbox_dir(const struct outbox *ob)
{
    return ob->dir;
}

bool outbox_can_wait(const struct outbox *ob)
{
    return ob != NULL && ob->ops->wait != NULL;
}

void outbox_wait(struct outbox *ob, long long ms)
{
    if (ob->ops->wait != NULL)
        ob->ops->wait(ob->st, ms);
}

void outbox_wake(struct outbox *ob)
{
    if (ob != NULL && ob->ops->wake != NULL)
        ob->ops->wake(ob->st);
}

void outbox_close(struct outbox *ob)
{
    if (ob == NULL)
        return;
    ob->ops->close(ob->st);
    free(ob->dir);
    free(ob);
}

const char *outbox_store_name(const struct outbox *ob)
{
    return ob->ops->name;
}

void outbox_set_dead_hook(struct outbox *ob, outbox_dead_fn fn, void *ctx)
{
    ob->dead_hook = fn;
    ob->dead_ctx = ctx;
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

enum lb_err outbox_job_mark_started(json_t *job)
{
    const char *name, *st;
    json_t *entry;

    json_object_foreach(json_object_get(job, "targets"), name, entry) {
        st = outbox_target_status(entry);
        if ((st == NULL || strcmp(st, "pending") == 0) &&
            (outbox_set_int(entry, "started", outbox_int(entry, "attempts", 0) + 1) != LB_OK ||
             outbox_set_int(entry, "started_at", outbox_int(job, "created", 0)) != LB_OK))
            return LB_ERR_NOMEM;
    }
    return LB_OK;
}

enum lb_err outbox_job_wait_for(json_t *job, const char *target, const char *create_id)
{
    json_t *entry = json_object_get(json_object_get(job, "targets"), target);

    if (!json_is_object(entry) || !outbox_id_valid(create_id))
        return LB_ERR_INTERNAL;
    return outbox_set_str(entry, "after", create_id);
}

/*
 * For a target that waits behind another job's create ("after"): 1 when it may go now (the
 * create is done: its lead id is now the entry's "lead_id"), 0 while the create is still
 * queued, -1 when it never will (the create is dead or gone: the entry is marked dead).
 */
static int outbox_resolve_after(struct outbox *ob, const char *name, json_t *entry)
{
    const char *after = json_string_value(json_object_get(entry, "after"));
    enum outbox_state state = OUTBOX_UNKNOWN;
    const char *lead_id;
    json_t *other;
    int r;

    if (after == NULL)
        return 1;
    other = ob->ops->load(ob->st, after, &state);
    lead_id = json_string_value(
        json_object_get(json_object_get(json_object_get(other, "targets"), name), "lead_id"));
    if (state == OUTBOX_QUEUED) {
        r = 0;
    } else if (state == OUTBOX_DONE && lead_id != NULL && lead_id[0] != '\0') {
        r = outbox_set_str(entry, "lead_id", lead_id) == LB_OK ? 1 : 0;
        if (r == 1)
            (void)json_object_del(entry, "after");
    } else {
        r = -1;
        (void)outbox_set_str(entry, "status", "dead");
        (void)outbox_set_str(entry, "last_error",
                             "the lead this update is for was never created");
    }
    json_decref(other);
    return r;
}

bool outbox_attempt_unknown(const json_t *entry)
{
    return json_is_true(json_object_get(entry, "check_existing"));
}

/* outbox_put(), and with claim (not NULL) outbox_put_claim(). */
static enum lb_err outbox_put_in(struct outbox *ob, const json_t *job,
                                 struct outbox_claim **claim, struct lb_error *err)
{
    char why[160];
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
    if (claim != NULL && ob->ops->put_claim != NULL) {
        struct outbox_hold *h = NULL;
        struct outbox_claim *c;

        e = ob->ops->put_claim(ob->st, id, copy, outbox_int(copy, "next_attempt", created), &h,
                               err);
        if (e != LB_OK)
            goto out;
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            ob->ops->release(ob->st, h); /* stored: the outbox delivers it */
            goto out;
        }
        c->ob = ob;
        c->hold = h;
        memcpy(c->id, id, OUTBOX_ID_SIZE);
        c->job = copy; /* what a claim would read back from the store */
        copy = NULL;
        c->retry_after = -1;
        c->deferred = -1;
        *claim = c;
        goto out;
    }
    e = ob->ops->put(ob->st, id, copy, outbox_int(copy, "next_attempt", created), err);
    if (e == LB_OK && claim != NULL)
        (void)outbox_claim(ob, id, claim);
out:
    json_decref(copy);
    return e;
}

enum lb_err outbox_put(struct outbox *ob, const json_t *job, struct lb_error *err)
{
    return outbox_put_in(ob, job, NULL, err);
}

enum lb_err outbox_put_claim(struct outbox *ob, const json_t *job, struct outbox_claim **claim,
                             struct lb_error *err)
{
    *claim = NULL;
    return outbox_put_in(ob, job, claim, err);
}

/* ---- claims ---- */

/* Tells the dead-letter hook about a job the store found unreadable and set aside as dead. */
static void outbox_notify_corrupt(struct outbox *ob, const char *id, const char *why)
{
    if (ob->dead_hook != NULL)
        ob->dead_hook(ob->dead_ctx, id, NULL, NULL, why);
}

/* Claims id in one of the states in mask; LB_ERR_GONE (corrupt) is told to the dead hook. */
static enum lb_err outbox_claim_in(struct outbox *ob, const char *id, unsigned mask,
                                   struct outbox_claim **out, enum outbox_state *state)
{
    struct lb_error err = {LB_OK, ""};
    struct outbox_claim *c;
    struct outbox_hold *h = NULL;
    json_t *job = NULL;
    enum lb_err e;

    *out = NULL;
    if (!outbox_id_valid(id))
        return LB_ERR_NOT_FOUND;
    e = ob->ops->claim(ob->st, id, mask, &h, &job, state, &err);
    if (e == LB_ERR_GONE)
        outbox_notify_corrupt(ob, id, err.message);
    if (e != LB_OK)
        return e;
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        ob->ops->release(ob->st, h);
        json_decref(job);
        return LB_ERR_NOMEM;
    }
    c->ob = ob;
    c->hold = h;
    memcpy(c->id, id, OUTBOX_ID_SIZE);
    c->job = job;
    c->retry_after = -1;
    c->deferred = -1;
    *out = c;
    return LB_OK;
}

enum lb_err outbox_claim(struct outbox *ob, const char *id, struct outbox_claim **out)
{
    enum outbox_state state;

    return outbox_claim_in(ob, id, OUTBOX_IN(OUTBOX_QUEUED), out, &state);
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
    c->ob->ops->release(c->ob->st, c->hold);
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
    if (result->outcome == DELIVERY_DEFERRED) {
        /* Not sent (the target's rate limit): no attempt counted and none in flight, unless an
         * earlier interrupted one is still unknown (then it stays so, dated as it was). */
        json_t *since = json_object_get(entry, "unknown_since");

        if (!json_is_true(json_object_get(entry, "check_existing")))
            e = outbox_set_int(entry, "started", outbox_int(entry, "attempts", 0));
        else
            e = json_is_integer(since)
                    ? outbox_set_int(entry, "started_at", json_integer_value(since)) : LB_OK;
        (void)json_object_del(entry, "check_existing");
        (void)json_object_del(entry, "unknown_since");
        if (e == LB_OK && json_object_set_new(entry, "throttled", json_true()) != 0)
            e = LB_ERR_NOMEM;
        if (result->retry_after > c->deferred)
            c->deferred = result->retry_after > 0 ? result->retry_after : 1;
        return e;
    }
    (void)json_object_del(entry, "throttled");
    e = outbox_set_int(entry, "attempts", outbox_int(entry, "attempts", 0) + 1);
    if (e == LB_OK && result->outcome == DELIVERY_TRANSIENT && result->still_unknown) {
        /* Still not known whether an interrupted attempt made the lead: keep it open, dated
         * from that attempt, so the next one asks the API again. */
        json_t *since = json_object_get(entry, "unknown_since");

        e = outbox_set_int(entry, "started", outbox_int(entry, "attempts", 0) + 1);
        if (e == LB_OK && json_is_integer(since))
            e = outbox_set_int(entry, "started_at", json_integer_value(since));
    }
    (void)json_object_del(entry, "check_existing");
    (void)json_object_del(entry, "unknown_since");
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

enum lb_err outbox_save(struct outbox_claim *c)
{
    return c->ob->ops->write(c->ob->st, c->hold, c->job, OUTBOX_QUEUED,
                             outbox_int(c->job, "next_attempt", 0), false);
}

enum lb_err outbox_begin_attempt(struct outbox_claim *c, const char *target, long long now)
{
    json_t *entry = json_object_get(json_object_get(c->job, "targets"), target);

    if (!json_is_object(entry))
        return LB_ERR_NOT_FOUND;
    /* The wall clock, not now: it dates a real HTTP request that may still be in flight. */
    (void)now;
    if (outbox_set_int(entry, "started", outbox_int(entry, "attempts", 0) + 1) != LB_OK ||
        outbox_set_int(entry, "started_at", (long long)time(NULL)) != LB_OK)
        return LB_ERR_NOMEM;
    return c->ob->ops->write(c->ob->st, c->hold, c->job, OUTBOX_QUEUED,
                             outbox_int(c->job, "next_attempt", 0), true);
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
        json_t *est;

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
        /* The estimate (numbers about the property, nothing about the person) answers a
         * repeat of a submission that was first answered "queued". */
        est = json_object_get(json_object_get(entry, "result"), "valuation");
        if (json_is_object(est) && json_object_set(t, "valuation", est) != 0)
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
            if (c->deferred >= 0 && next < now + c->deferred)
                next = now + c->deferred;
            e = outbox_set_int(c->job, "next_attempt", next);
            if (e != LB_OK)
                goto out;
        }
    } else if (c->deferred >= 0) {
        /* Only held back by a rate limit: due again when it allows, not a retry. */
        e = outbox_set_int(c->job, "next_attempt", now + c->deferred);
        if (e != LB_OK)
            goto out;
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
    } else {
        rec = outbox_done_record(c->job, now);
        if (rec == NULL) {
            e = LB_ERR_NOMEM;
            goto out;
        }
        json_decref(c->job);
        c->job = rec;
    }
    /* Not waited for: a crash loses at most this filing, and the job is then found as it was. */
    if (e == LB_OK)
        e = c->ob->ops->write(c->ob->st, c->hold, c->job, where, now, false);
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
    bool transient, waiting = false;

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
        {
            int go = outbox_resolve_after(c->ob, names[i], entry);

            if (go == 0) {
                waiting = true;
                continue;
            }
            if (go < 0)
                continue;
        }
        /* Marked started (durably) before the call: a crash during it leaves started >
         * attempts, and the next attempt asks the API whether it has the lead. */
        {
            bool unknown = outbox_int(entry, "started", 0) > outbox_int(entry, "attempts", 0);
            long long began = outbox_int(entry, "started_at", 0);

            if (outbox_begin_attempt(c, names[i], now) != LB_OK)
                continue;
            entry = json_object_get(targets, names[i]);
            if (unknown) {
                (void)json_object_set_new(entry, "check_existing", json_true());
                (void)json_object_set_new(entry, "unknown_since", json_integer(began));
            }
        }
        target_result_init(&r);
        deliver(ctx, c->job, names[i], entry, &r);
        if (outbox_record(c, names[i], &r, now) == LB_OK && r.outcome == DELIVERY_OK) {
            s->delivered++;
            if (outbox_other_pending(c->job, names[i]))
                (void)outbox_save(c);
        }
        target_result_clear(&r);
    }
    /* Waiting behind a create: look again soon, without counting an attempt. */
    if (waiting && !c->transient)
        (void)outbox_set_int(c->job, "next_attempt", now + OUTBOX_AFTER_WAIT);
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
    e = ob->ops->due(ob->st, now, 0, &due, &n_due, &next_due);
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
    free(due);
    due = NULL;
    (void)ob->ops->flush(ob->st);
    e = ob->ops->due(ob->st, now, 1, &due, &n_due, &next_due);
    s.next_due = n_due > 0 ? now : next_due;
out:
    free(due);
    if (stats != NULL)
        *stats = s;
    return e;
}

/* ---- duplicate keys ---- */

enum lb_err outbox_reserve_key(struct outbox *ob, const char *key, const char *body_hash,
                               const char *job_id, long long now, bool *duplicate,
                               char existing_id[OUTBOX_ID_SIZE])
{
    bool fp;

    *duplicate = false;
    existing_id[0] = '\0';
    if (key == NULL || !outbox_id_valid(job_id))
        return LB_ERR_BAD_REQUEST;
    fp = strncmp(key, "fp:", 3) == 0;
    return ob->ops->reserve_key(ob->st, key, body_hash, job_id, now,
                                now + (fp ? ob->conf.duplicate_window : ob->conf.done_retention),
                                duplicate, existing_id);
}

enum lb_err outbox_release_key(struct outbox *ob, const char *key, const char *job_id)
{
    if (key == NULL || !outbox_id_valid(job_id))
        return LB_ERR_BAD_REQUEST;
    return ob->ops->release_key(ob->st, key, job_id);
}

/* ---- responses, operator functions ---- */

json_t *outbox_load_response(struct outbox *ob, const char *id, enum outbox_state *state)
{
    enum outbox_state where;
    json_t *job = ob->ops->load(ob->st, id, &where);
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
    const unsigned any = OUTBOX_IN(OUTBOX_QUEUED) | OUTBOX_IN(OUTBOX_DONE) |
                         OUTBOX_IN(OUTBOX_DEAD);
    struct outbox_claim *c = NULL;
    enum outbox_state state;
    enum lb_err e;

    if (!outbox_id_valid(id) || response == NULL)
        return LB_ERR_BAD_REQUEST;
    e = outbox_claim_in(ob, id, any, &c, &state);
    if (e != LB_OK)
        return e;
    if (json_object_get(c->job, "response") == NULL) {
        e = outbox_claim_set_response(c, response);
        if (e == LB_OK)
            e = ob->ops->write(ob->st, c->hold, c->job, state,
                               outbox_int(c->job, state == OUTBOX_QUEUED ? "next_attempt"
                                                                         : "finished", 0),
                               false);
    }
    outbox_release(c);
    return e;
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

struct outbox_list_ctx {
    json_t *arr;
};

static enum lb_err outbox_list_one(void *arg, const char *id, enum outbox_state state,
                                   const json_t *job)
{
    json_t *s;

    if (state == OUTBOX_ASIDE) {
        s = json_pack("{s:s, s:s, s:s, s:{}}", "id", id, "state", "aside", "error",
                      "not a regular file; moved aside, never opened", "targets");
    } else {
        s = outbox_summary(job, id, state);
    }
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
    static const enum outbox_state states[] = {OUTBOX_QUEUED, OUTBOX_DEAD, OUTBOX_DONE,
                                               OUTBOX_ASIDE};
    json_t *arr = json_array(), *sorted = NULL, **items = NULL;
    size_t i, n;

    if (arr == NULL)
        return NULL;
    for (i = 0; i < sizeof(states) / sizeof(states[0]); i++)
        if (ob->ops->each(ob->st, states[i], outbox_list_one, arr) != LB_OK)
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
    json_t *j = ob->ops->load(ob->st, id, &where);

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
             outbox_set_int(entry, "attempts", 0) != LB_OK ||
             outbox_set_int(entry, "started", 0) != LB_OK))
            return LB_ERR_NOMEM;
    }
    return LB_OK;
}

enum lb_err outbox_retry(struct outbox *ob, const char *id, long long now)
{
    struct outbox_claim *c = NULL;
    enum outbox_state state;
    char why[160];
    enum lb_err e;

    e = outbox_claim_in(ob, id, OUTBOX_IN(OUTBOX_QUEUED) | OUTBOX_IN(OUTBOX_DEAD), &c, &state);
    if (e != LB_OK)
        return e;
    if (state == OUTBOX_QUEUED) {
        e = outbox_set_int(c->job, "next_attempt", now);
    } else if (json_is_true(json_object_get(c->job, "corrupt")) ||
               !outbox_job_check(c->job, id, why, sizeof(why))) {
        e = LB_ERR_GONE;
    } else {
        e = outbox_revive(c->job, now);
    }
    if (e == LB_OK)
        e = ob->ops->write(ob->st, c->hold, c->job, OUTBOX_QUEUED, now, true);
    outbox_release(c);
    return e;
}

struct outbox_retry_ctx {
    struct outbox *ob;
    long long now;
    size_t count;
};

static enum lb_err outbox_retry_one(void *arg, const char *id, enum outbox_state state,
                                    const json_t *job)
{
    struct outbox_retry_ctx *rc = arg;

    (void)state;
    (void)job;
    if (outbox_retry(rc->ob, id, rc->now) == LB_OK)
        rc->count++;
    return LB_OK;
}

enum lb_err outbox_retry_all(struct outbox *ob, long long now, size_t *count)
{
    struct outbox_retry_ctx rc = {ob, now, 0};
    enum lb_err e;

    /* Queue first: dead letters revived below must not be counted twice. */
    e = ob->ops->each(ob->st, OUTBOX_QUEUED, outbox_retry_one, &rc);
    if (e == LB_OK)
        e = ob->ops->each(ob->st, OUTBOX_DEAD, outbox_retry_one, &rc);
    if (count != NULL)
        *count = rc.count;
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
        e = ob->ops->remove_older(ob->st, OUTBOX_DEAD, now - older_than, &n);
    if (done) {
        e2 = ob->ops->remove_older(ob->st, OUTBOX_DONE, now - older_than, &n);
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

    e = ob->ops->remove_older(ob->st, OUTBOX_DONE, now - ob->conf.done_retention, NULL);
    e2 = ob->ops->remove_older(ob->st, OUTBOX_DEAD, now - ob->conf.dead_retention, NULL);
    if (e == LB_OK)
        e = e2;
    e2 = ob->ops->expire(ob->st, now);
    if (e == LB_OK)
        e = e2;
    return e;
}

enum lb_err outbox_flush(struct outbox *ob)
{
    return ob->ops->flush(ob->st);
}

/* ---- monitoring ---- */

static enum lb_err outbox_stats_one(void *arg, const char *id, enum outbox_state state,
                                    const json_t *job)
{
    struct outbox_stats *st = arg;
    long long created;

    (void)id;
    switch (state) {
    case OUTBOX_DONE: st->done++; break;
    case OUTBOX_DEAD: st->dead++; break;
    case OUTBOX_ASIDE: st->aside++; break;
    case OUTBOX_QUEUED:
        st->queued++;
        created = outbox_int(job, "created", -1);
        if (created >= 0 && (st->oldest_created < 0 || created < st->oldest_created))
            st->oldest_created = created;
        break;
    default: break;
    }
    return LB_OK;
}

enum lb_err outbox_stats(struct outbox *ob, long long now, struct outbox_stats *out)
{
    static const enum outbox_state states[] = {OUTBOX_QUEUED, OUTBOX_DONE, OUTBOX_DEAD,
                                               OUTBOX_ASIDE};
    enum lb_err e = LB_OK;
    size_t i;

    (void)now;
    memset(out, 0, sizeof(*out));
    out->oldest_created = -1;
    if (ob->ops->stats != NULL)
        return ob->ops->stats(ob->st, out);
    for (i = 0; e == LB_OK && i < sizeof(states) / sizeof(states[0]); i++)
        e = ob->ops->each(ob->st, states[i], outbox_stats_one, out);
    return e;
}
