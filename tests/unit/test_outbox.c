/*
 * test_outbox.c: the durable outbox loses nothing, delivers each job once at a time, retries on
 * schedule with a clock the tests control, keeps no personal data in done records, and decides
 * duplicates race-free across processes. Every test works in its own mkdtemp directory.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "outbox.h"

#define T0 1700000000LL
#define HOUR 3600LL
#define MAX_JOBS 64
#define MAX_LOG 4096

static char spool[64];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void setup_spool(void)
{
    snprintf(spool, sizeof(spool), "/tmp/lb-outbox-XXXXXX");
    cr_assert_not_null(mkdtemp(spool));
}

static void teardown_spool(void)
{
    if (spool[0] != '\0')
        nftw(spool, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(outbox, .init = setup_spool, .fini = teardown_spool, .timeout = 120);

/* Opens the spool with conf (NULL: defaults), asserting success. */
static struct outbox *open_spool(const struct outbox_conf *conf)
{
    struct lb_error err = {0};
    struct outbox *ob = outbox_open(spool, conf, &err);

    cr_assert_not_null(ob, "outbox_open: %s", err.message);
    return ob;
}

static size_t count_files(const char *sub, const char *suffix)
{
    char p[256];
    struct dirent *de;
    size_t n = 0;
    DIR *d;

    snprintf(p, sizeof(p), "%s/%s", spool, sub);
    d = opendir(p);
    cr_assert_not_null(d);
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);

        if (de->d_name[0] == '.')
            continue;
        if (suffix == NULL ||
            (len > strlen(suffix) && strcmp(de->d_name + len - strlen(suffix), suffix) == 0))
            n++;
    }
    closedir(d);
    return n;
}

static char *read_text(const char *sub, const char *id, const char *suffix)
{
    char p[256];
    FILE *f;
    char *text;
    long len;

    snprintf(p, sizeof(p), "%s/%s/%s%s", spool, sub, id, suffix);
    f = fopen(p, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = calloc(1, (size_t)len + 1);
    cr_assert_eq(fread(text, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    return text;
}

static json_t *load_json(const char *sub, const char *id)
{
    char *text = read_text(sub, id, ".json");
    json_t *j;

    if (text == NULL)
        return NULL;
    j = json_loads(text, 0, NULL);
    free(text);
    return j;
}

/* A job with one target per name in targets (NULL-terminated) and a lead holding personal data. */
static json_t *make_job(char id[OUTBOX_ID_SIZE], long long created, const char *const *targets)
{
    json_t *job, *lead;
    size_t i;

    cr_assert_eq(outbox_new_id(id), LB_OK);
    job = outbox_job_new(id, "contact", created);
    cr_assert_not_null(job);
    lead = json_pack("{s:s, s:s, s:s, s:s}", "first_name", "Jane", "last_name", "Doe", "email",
                     "jane.doe@example.com", "phone", "07700900123");
    for (i = 0; targets[i] != NULL; i++)
        cr_assert_eq(outbox_job_add_target(job, targets[i], "create", lead, NULL), LB_OK);
    json_decref(lead);
    return job;
}

/* Gives a hand-written spool file the outbox clock's time T0 as its mtime (next_attempt). */
static void set_mtime_t0(const char *path)
{
    struct timespec t[2] = {{(time_t)T0, 0}, {(time_t)T0, 0}};

    cr_assert_eq(utimensat(AT_FDCWD, path, t, 0), 0);
}

static const char *const one_target[] = {"leadpro", NULL};
static const char *const two_targets[] = {"leadpro", "lofty", NULL};

static void put_job(struct outbox *ob, char id[OUTBOX_ID_SIZE], long long created,
                    const char *const *targets)
{
    struct lb_error err = {0};
    json_t *job = make_job(id, created, targets);

    cr_assert_eq(outbox_put(ob, job, &err), LB_OK, "put: %s", err.message);
    json_decref(job);
}

/* ---- the fake API: a test-controlled clock and a script of answers ---- */

struct delivery {
    char id[OUTBOX_ID_SIZE];
    char target[16];
    long long at;
    enum delivery_outcome outcome;
};

struct fake_api {
    long long now;          /* the clock the test sets before each pass */
    long long up_at;        /* transient 503 before this time */
    long long retry_after;  /* sent with each transient answer, or -1 */
    const char *refuse;     /* target name answered with a permanent 400, or NULL */
    struct delivery log[MAX_LOG];
    size_t n;
};

static void fake_deliver(void *ctx, const json_t *job, const char *target, const json_t *entry,
                         struct target_result *r)
{
    struct fake_api *api = ctx;
    struct delivery *d = &api->log[api->n < MAX_LOG ? api->n++ : MAX_LOG - 1];

    cr_assert_not_null(json_object_get(entry, "lead"));
    snprintf(d->id, sizeof(d->id), "%s", json_string_value(json_object_get(job, "id")));
    snprintf(d->target, sizeof(d->target), "%s", target);
    d->at = api->now;
    if (api->refuse != NULL && strcmp(target, api->refuse) == 0) {
        r->outcome = DELIVERY_PERMANENT;
        r->http_status = 400;
        snprintf(r->reason, sizeof(r->reason), "email: not a valid address");
    } else if (api->now < api->up_at) {
        r->outcome = DELIVERY_TRANSIENT;
        r->http_status = 503;
        r->retry_after = api->retry_after;
        snprintf(r->reason, sizeof(r->reason), "HTTP 503 from the API");
    } else {
        r->outcome = DELIVERY_OK;
        r->http_status = 201;
        snprintf(r->lead_id, sizeof(r->lead_id), "L-%.8s", d->id);
        r->valuation = json_pack("{s:i}", "sale", 250000);
    }
    d->outcome = r->outcome;
}

static void api_init(struct fake_api *api, long long now, long long up_at)
{
    memset(api, 0, sizeof(*api));
    api->now = now;
    api->up_at = up_at;
    api->retry_after = -1;
}

/* Runs passes from api->now, jumping to each next due time, until end or the queue is empty. */
static void run_until(struct outbox *ob, struct fake_api *api, long long end)
{
    struct outbox_run_stats s;

    for (;;) {
        cr_assert_eq(outbox_run(ob, api->now, fake_deliver, api, 0, &s), LB_OK);
        if (s.next_due < 0 || s.next_due > end)
            break;
        api->now = s.next_due > api->now ? s.next_due : api->now + 1;
    }
}

/* ---- configuration ---- */

Test(outbox, conf_defaults_and_json)
{
    struct outbox_conf c;
    struct diag d;
    json_t *obj;

    outbox_conf_default(&c);
    cr_assert_eq(c.n_schedule, 7);
    cr_assert_eq(c.schedule[0], 5);
    cr_assert_eq(c.schedule[6], 36000);
    cr_assert_eq(c.max_age, 5 * 86400);
    cr_assert_eq(c.duplicate_window, 300);

    diag_init(&d, "t.json", NULL, 0);
    obj = json_pack("{s:[i,i,i], s:i, s:f, s:i}", "retry_schedule", 1, 2, 3, "max_age", 7200,
                    "jitter", 0.0, "duplicate_window", 60);
    outbox_conf_from_json(obj, "outbox", &d, &c);
    cr_assert_eq(d.count, 0);
    cr_assert_eq(c.n_schedule, 3);
    cr_assert_eq(c.schedule[2], 3);
    cr_assert_eq(c.max_age, 7200);
    cr_assert_eq(c.jitter, 0.0);
    cr_assert_eq(c.duplicate_window, 60);
    cr_assert_eq(c.done_retention, 7 * 86400);
    json_decref(obj);

    obj = json_pack("{s:[i,s], s:f, s:i}", "retry_schedule", 1, "x", "jitter", 2.0, "bogus", 1);
    outbox_conf_from_json(obj, "outbox", &d, &c);
    cr_assert_eq(d.count, 3, "%zu messages", d.count);
    cr_assert_eq(c.n_schedule, 7, "a bad schedule keeps the default");
    cr_assert_eq(c.jitter, 0.1);
    json_decref(obj);
    diag_free(&d);
}

/* ---- putting and claiming ---- */

Test(outbox, put_is_one_whole_file_and_no_tmp)
{
    struct outbox *ob = open_spool(NULL);
    struct lb_error err = {0};
    char id[OUTBOX_ID_SIZE];
    json_t *job, *back, *bad;

    job = make_job(id, T0, one_target);
    cr_assert_eq(outbox_put(ob, job, &err), LB_OK);
    cr_assert_eq(count_files("queue", ".json"), 1);
    cr_assert_eq(count_files("tmp", NULL), 0);
    back = load_json("queue", id);
    cr_assert_not_null(back);
    cr_assert_str_eq(json_string_value(json_object_get(back, "id")), id);
    cr_assert_eq(json_integer_value(json_object_get(back, "next_attempt")), T0);
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(back, "targets"), "leadpro"), "status")),
                     "pending");
    json_decref(back);

    cr_assert_eq(outbox_put(ob, job, &err), LB_ERR_CONFLICT, "the same id twice");
    cr_assert_eq(count_files("tmp", NULL), 0);

    bad = json_pack("{s:s, s:I, s:{}}", "id", "../../etc/passwd", "created", T0, "targets");
    cr_assert_eq(outbox_put(ob, bad, &err), LB_ERR_BAD_REQUEST);
    json_decref(bad);
    bad = json_pack("{s:s, s:I, s:{}}", "id", "0123456789abcdef0123456789abcdef", "created", T0,
                    "targets");
    cr_assert_eq(outbox_put(ob, bad, &err), LB_ERR_BAD_REQUEST, "no targets");
    json_decref(bad);
    cr_assert_eq(count_files("queue", NULL), 1);
    json_decref(job);
    outbox_close(ob);
}

Test(outbox, ids_are_checked)
{
    char id[OUTBOX_ID_SIZE];

    cr_assert_eq(outbox_new_id(id), LB_OK);
    cr_assert(outbox_id_valid(id));
    cr_assert_not(outbox_id_valid("0123456789ABCDEF0123456789abcdef"));
    cr_assert_not(outbox_id_valid("0123456789abcdef0123456789abcde"));
    cr_assert_not(outbox_id_valid("0123456789abcdef0123456789abcdef0"));
    cr_assert_not(outbox_id_valid("../123456789abcdef0123456789abcd"));
    cr_assert_not(outbox_id_valid(NULL));
}

Test(outbox, claim_excludes_a_second_open_in_the_same_process)
{
    struct outbox *ob = open_spool(NULL), *ob2 = open_spool(NULL);
    struct outbox_claim *a = NULL, *b = NULL;
    char id[OUTBOX_ID_SIZE];

    put_job(ob, id, T0, one_target);
    cr_assert_eq(outbox_claim(ob, id, &a), LB_OK);
    cr_assert_eq(outbox_claim(ob, id, &b), LB_ERR_CONFLICT);
    cr_assert_eq(outbox_claim(ob2, id, &b), LB_ERR_CONFLICT);
    cr_assert_null(b);
    /* The claim follows the job across a rewrite. */
    cr_assert_eq(outbox_save(a), LB_OK);
    cr_assert_eq(outbox_claim(ob2, id, &b), LB_ERR_CONFLICT);
    outbox_release(a);
    cr_assert_eq(outbox_claim(ob2, id, &b), LB_OK);
    cr_assert_str_eq(outbox_claim_id(b), id);
    outbox_release(b);
    cr_assert_eq(outbox_claim(ob, "ffffffffffffffffffffffffffffffff", &b), LB_ERR_NOT_FOUND);
    cr_assert_eq(outbox_claim(ob, "../queue", &b), LB_ERR_NOT_FOUND);
    outbox_close(ob);
    outbox_close(ob2);
}

struct claim_thread {
    struct outbox *ob;
    const char *id;
    enum lb_err result;
};

static void *claim_in_thread(void *arg)
{
    struct claim_thread *t = arg;
    struct outbox_claim *c = NULL;

    t->result = outbox_claim(t->ob, t->id, &c);
    outbox_release(c);
    return NULL;
}

Test(outbox, claim_excludes_another_thread)
{
    struct outbox *ob = open_spool(NULL);
    struct outbox_claim *a = NULL;
    char id[OUTBOX_ID_SIZE];
    struct claim_thread t;
    pthread_t th;

    put_job(ob, id, T0, one_target);
    cr_assert_eq(outbox_claim(ob, id, &a), LB_OK);
    t.ob = ob;
    t.id = id;
    cr_assert_eq(pthread_create(&th, NULL, claim_in_thread, &t), 0);
    pthread_join(th, NULL);
    cr_assert_eq(t.result, LB_ERR_CONFLICT);
    outbox_release(a);
    cr_assert_eq(pthread_create(&th, NULL, claim_in_thread, &t), 0);
    pthread_join(th, NULL);
    cr_assert_eq(t.result, LB_OK);
    outbox_close(ob);
}

/* Forks a child that tries to claim id; returns its exit status (0 claimed, 1 busy, 2 other). */
static int claim_in_child(struct outbox *ob, const char *id)
{
    int status;
    pid_t pid = fork();

    cr_assert_neq(pid, -1);
    if (pid == 0) {
        struct outbox_claim *c = NULL;
        enum lb_err e = outbox_claim(ob, id, &c);

        outbox_release(c);
        _exit(e == LB_OK ? 0 : e == LB_ERR_CONFLICT ? 1 : 2);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

Test(outbox, claim_excludes_another_process)
{
    struct outbox *ob = open_spool(NULL);
    struct outbox_claim *a = NULL;
    char id[OUTBOX_ID_SIZE];

    put_job(ob, id, T0, one_target);
    cr_assert_eq(outbox_claim(ob, id, &a), LB_OK);
    cr_assert_eq(claim_in_child(ob, id), 1);
    outbox_release(a);
    cr_assert_eq(claim_in_child(ob, id), 0);
    outbox_close(ob);
}

Test(outbox, claim_of_a_killed_worker_is_released)
{
    struct outbox *ob = open_spool(NULL);
    struct outbox_claim *c = NULL;
    char id[OUTBOX_ID_SIZE], ok;
    int fds[2], status;
    pid_t pid;

    put_job(ob, id, T0, one_target);
    cr_assert_eq(pipe(fds), 0);
    pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        struct outbox_claim *mine = NULL;
        char r = outbox_claim(ob, id, &mine) == LB_OK ? 'y' : 'n';

        if (write(fds[1], &r, 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    cr_assert_eq(read(fds[0], &ok, 1), 1);
    cr_assert_eq(ok, 'y');
    cr_assert_eq(outbox_claim(ob, id, &c), LB_ERR_CONFLICT, "the child holds it");
    cr_assert_eq(kill(pid, SIGKILL), 0);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status));
    cr_assert_eq(outbox_claim(ob, id, &c), LB_OK, "the kernel dropped the dead worker's lock");
    outbox_release(c);
    close(fds[0]);
    close(fds[1]);
    outbox_close(ob);
}

/* ---- delivery, retries, dead letters ---- */

Test(outbox, request_path_claim_record_finish)
{
    struct outbox *ob = open_spool(NULL);
    struct outbox_claim *c = NULL;
    struct target_result r;
    enum outbox_state where;
    char id[OUTBOX_ID_SIZE];
    json_t *rec;

    put_job(ob, id, T0, one_target);
    cr_assert_eq(outbox_claim(ob, id, &c), LB_OK);
    target_result_init(&r);
    r.outcome = DELIVERY_OK;
    r.http_status = 201;
    snprintf(r.lead_id, sizeof(r.lead_id), "12345");
    cr_assert_eq(outbox_record(c, "nope", &r, T0), LB_ERR_NOT_FOUND);
    cr_assert_eq(outbox_record(c, "leadpro", &r, T0), LB_OK);
    target_result_clear(&r);
    cr_assert_eq(outbox_finish(c, T0, &where), LB_OK);
    cr_assert_eq(where, OUTBOX_DONE);
    cr_assert_eq(count_files("queue", NULL), 0);
    rec = load_json("done", id);
    cr_assert_not_null(rec);
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(rec, "targets"), "leadpro"), "lead_id")),
                     "12345");
    json_decref(rec);
    cr_assert_eq(outbox_claim(ob, id, &c), LB_ERR_NOT_FOUND);
    outbox_close(ob);
}

Test(outbox, api_down_72_hours_nothing_lost_each_delivered_once)
{
    struct outbox *ob = open_spool(NULL);
    struct outbox_conf conf;
    static struct fake_api api;
    char ids[20][OUTBOX_ID_SIZE];
    long long up = T0 + 72 * HOUR;
    size_t i, k;

    outbox_conf_default(&conf);
    for (i = 0; i < 20; i++)
        put_job(ob, ids[i], T0 + (long long)i * 7, one_target);
    api_init(&api, T0, up);
    run_until(ob, &api, T0 + 100 * HOUR);

    cr_assert_eq(count_files("queue", NULL), 0);
    cr_assert_eq(count_files("done", ".json"), 20);
    cr_assert_eq(count_files("dead", NULL), 0);
    for (i = 0; i < 20; i++) {
        long long prev = -1;
        size_t fails = 0, oks = 0;
        json_t *rec;

        for (k = 0; k < api.n; k++) {
            const struct delivery *d = &api.log[k];

            if (strcmp(d->id, ids[i]) != 0)
                continue;
            if (prev < 0) {
                cr_assert_eq(d->at, T0 + (long long)i * 7, "first try when it was submitted");
            } else {
                size_t s = fails - 1 < conf.n_schedule ? fails - 1 : conf.n_schedule - 1;
                long long lo = (long long)(conf.schedule[s] * (1 - conf.jitter)) - 1;
                long long hi = (long long)(conf.schedule[s] * (1 + conf.jitter)) + 1;

                cr_assert(d->at - prev >= lo && d->at - prev <= hi,
                          "job %zu attempt %zu came %lld s after the previous (want %lld..%lld)",
                          i, fails + oks + 1, d->at - prev, lo, hi);
            }
            if (d->outcome == DELIVERY_OK) {
                oks++;
                cr_assert_geq(d->at, up);
            } else {
                cr_assert_lt(d->at, up);
                fails++;
            }
            prev = d->at;
        }
        cr_assert_eq(oks, 1, "job %zu delivered %zu times", i, oks);
        /* 5 s + 1 min + 5 min + 30 min + 2 h + 5 h + 10 h, then every 10 h until 72 h: 12. */
        cr_assert(fails >= 11 && fails <= 13, "job %zu failed %zu times", i, fails);
        rec = load_json("done", ids[i]);
        cr_assert_not_null(rec);
        cr_assert_eq(json_integer_value(json_object_get(rec, "attempts")), (long long)fails);
        json_decref(rec);
    }
    outbox_close(ob);
}

Test(outbox, after_an_outage_jobs_go_out_in_submission_order)
{
    struct outbox_conf conf;
    static struct fake_api api;
    struct outbox *ob;
    struct outbox_run_stats s;
    char ids[10][OUTBOX_ID_SIZE];
    size_t i, k, seen = 0;

    outbox_conf_default(&conf);
    conf.jitter = 0.0;
    ob = open_spool(&conf);
    for (i = 0; i < 10; i++)
        put_job(ob, ids[i], T0 + (long long)i, one_target);
    api_init(&api, T0 + 9, T0 + 30 * HOUR);
    /* Everything is due at once: nine jobs first ran at T0 + 9, in order of submission. */
    cr_assert_eq(outbox_run(ob, api.now, fake_deliver, &api, 3, &s), LB_OK);
    cr_assert_eq(api.n, 3, "limit 3 handles three jobs");
    cr_assert_eq(s.retried, 3);
    run_until(ob, &api, T0 + 60 * HOUR);
    cr_assert_eq(count_files("done", ".json"), 10);
    for (k = 0; k < api.n; k++) {
        if (api.log[k].outcome != DELIVERY_OK)
            continue;
        cr_assert_str_eq(api.log[k].id, ids[seen], "delivery %zu out of order", seen);
        seen++;
    }
    cr_assert_eq(seen, 10);
    outbox_close(ob);
}

Test(outbox, retry_after_is_a_lower_bound)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    struct outbox_run_stats s;
    char id[OUTBOX_ID_SIZE];
    json_t *job;

    put_job(ob, id, T0, one_target);
    api_init(&api, T0, T0 + 2);
    api.retry_after = 3600;
    cr_assert_eq(outbox_run(ob, T0, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(s.retried, 1);
    cr_assert_eq(s.next_due, T0 + 3600, "Retry-After 3600 beats the 5 s schedule");
    job = load_json("queue", id);
    cr_assert_eq(json_integer_value(json_object_get(job, "next_attempt")), T0 + 3600);
    cr_assert_eq(json_integer_value(json_object_get(job, "attempts")), 1);
    json_decref(job);
    api.now = T0 + 3599;
    cr_assert_eq(outbox_run(ob, api.now, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(api.n, 1, "not before Retry-After");
    api.now = T0 + 3600;
    cr_assert_eq(outbox_run(ob, api.now, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(s.delivered, 1);
    cr_assert_eq(s.done, 1);

    /* A short Retry-After does not pull a retry earlier than the schedule. */
    put_job(ob, id, T0, one_target);
    api_init(&api, T0, T0 + 10 * HOUR);
    api.retry_after = 1;
    cr_assert_eq(outbox_run(ob, T0, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_geq(s.next_due, T0 + 4);
    outbox_close(ob);
}

Test(outbox, permanent_failure_is_dead_at_once_with_its_reason)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    struct outbox_run_stats s;
    char id[OUTBOX_ID_SIZE];
    json_t *dead, *t;

    put_job(ob, id, T0, two_targets);
    api_init(&api, T0, T0);
    api.refuse = "lofty";
    cr_assert_eq(outbox_run(ob, T0, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(s.dead, 1);
    cr_assert_eq(s.delivered, 1);
    cr_assert_eq(count_files("queue", NULL), 0);
    dead = load_json("dead", id);
    cr_assert_not_null(dead);
    cr_assert_not_null(strstr(json_string_value(json_object_get(dead, "dead_reason")),
                              "not a valid address"));
    t = json_object_get(json_object_get(dead, "targets"), "lofty");
    cr_assert_eq(json_integer_value(json_object_get(t, "last_status")), 400);
    cr_assert_str_eq(json_string_value(json_object_get(t, "status")), "dead");
    t = json_object_get(json_object_get(dead, "targets"), "leadpro");
    cr_assert_str_eq(json_string_value(json_object_get(t, "status")), "delivered");
    cr_assert_not_null(json_object_get(json_object_get(t, "result"), "lead_id"),
                       "the delivered target's result is kept");
    json_decref(dead);

    /* Retried by an operator, only the dead target goes out again. */
    api.refuse = NULL;
    api.n = 0;
    cr_assert_eq(outbox_retry(ob, id, T0 + 100), LB_OK);
    cr_assert_eq(count_files("dead", NULL), 0);
    cr_assert_eq(outbox_run(ob, T0 + 100, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(api.n, 1);
    cr_assert_str_eq(api.log[0].target, "lofty");
    cr_assert_eq(s.done, 1);
    outbox_close(ob);
}

Test(outbox, too_old_goes_to_dead_letters)
{
    struct outbox_conf conf;
    static struct fake_api api;
    struct outbox *ob;
    char id[OUTBOX_ID_SIZE];
    json_t *dead;

    outbox_conf_default(&conf);
    conf.max_age = 2 * HOUR;
    ob = open_spool(&conf);
    put_job(ob, id, T0, one_target);
    api_init(&api, T0, T0 + 1000 * HOUR);
    run_until(ob, &api, T0 + 10 * HOUR);
    cr_assert_eq(count_files("queue", NULL), 0);
    dead = load_json("dead", id);
    cr_assert_not_null(dead);
    cr_assert_not_null(strstr(json_string_value(json_object_get(dead, "dead_reason")), "gave up"));
    cr_assert_eq(api.log[api.n - 1].at, T0 + 2 * HOUR, "one last try at the deadline");
    cr_assert_not_null(json_object_get(json_object_get(json_object_get(dead, "targets"),
                                                       "leadpro"), "lead"),
                       "a dead letter keeps the lead for a replay");
    json_decref(dead);
    outbox_close(ob);
}

Test(outbox, done_records_hold_no_personal_data)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    char id[OUTBOX_ID_SIZE];
    char *text;
    json_t *list;
    char *dump;

    put_job(ob, id, T0, two_targets);
    api_init(&api, T0, T0);
    run_until(ob, &api, T0 + HOUR);
    text = read_text("done", id, ".json");
    cr_assert_not_null(text);
    cr_assert_null(strstr(text, "Jane"));
    cr_assert_null(strstr(text, "example.com"));
    cr_assert_null(strstr(text, "07700900123"));
    cr_assert_not_null(strstr(text, "L-"), "lead ids are kept: %s", text);
    free(text);

    put_job(ob, id, T0, one_target);
    list = outbox_list(ob);
    cr_assert_eq(json_array_size(list), 2);
    dump = json_dumps(list, 0);
    cr_assert_null(strstr(dump, "example.com"), "listings show no lead data");
    cr_assert_not_null(strstr(dump, "\"queued\""));
    cr_assert_not_null(strstr(dump, "\"done\""));
    free(dump);
    json_decref(list);
    outbox_close(ob);
}

Test(outbox, a_crash_between_rewrite_and_move_is_recovered)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    struct outbox_run_stats s;
    char id[OUTBOX_ID_SIZE], p[256];
    json_t *job, *t;
    FILE *f;

    /* What finish leaves in queue/ if the process dies after rewriting, before the rename. */
    put_job(ob, id, T0, one_target);
    job = load_json("queue", id);
    t = json_object_get(json_object_get(job, "targets"), "leadpro");
    json_object_set_new(t, "status", json_string("delivered"));
    json_object_del(t, "lead");
    snprintf(p, sizeof(p), "%s/queue/%s.json", spool, id);
    f = fopen(p, "w");
    cr_assert_not_null(f);
    cr_assert_eq(json_dumpf(job, f, 0), 0);
    fclose(f);
    set_mtime_t0(p);
    json_decref(job);
    api_init(&api, T0, T0);
    cr_assert_eq(outbox_run(ob, T0, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(api.n, 0, "nothing is sent again");
    cr_assert_eq(s.done, 1);
    cr_assert_eq(count_files("done", ".json"), 1);
    outbox_close(ob);
}

Test(outbox, corrupt_job_files_become_dead_letters)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    struct outbox_run_stats s;
    const char *ids[] = {"00000000000000000000000000000001", "00000000000000000000000000000002",
                         "00000000000000000000000000000003", "00000000000000000000000000000004"};
    /* empty, truncated, not an object, and a whole job whose id is not its file name's */
    const char *bodies[] = {"", "{\"id\": \"0000", "[1,2,3]",
                            "{\"id\":\"00000000000000000000000000000009\",\"created\":1,"
                            "\"attempts\":0,\"next_attempt\":1,"
                            "\"targets\":{\"a\":{\"status\":\"pending\"}}}"};
    char p[256], good[OUTBOX_ID_SIZE];
    size_t i;
    FILE *f;
    json_t *dead;

    put_job(ob, good, T0, one_target);
    for (i = 0; i < 4; i++) {
        snprintf(p, sizeof(p), "%s/queue/%s.json", spool, ids[i]);
        f = fopen(p, "w");
        cr_assert_not_null(f);
        fputs(bodies[i], f);
        fclose(f);
        set_mtime_t0(p);
    }
    snprintf(p, sizeof(p), "%s/queue/not-a-job.json", spool);
    f = fopen(p, "w");
    fputs("x", f);
    fclose(f);
    /* Larger than 1 MiB. */
    snprintf(p, sizeof(p), "%s/queue/00000000000000000000000000000005.json", spool);
    f = fopen(p, "w");
    for (i = 0; i < 1100; i++)
        fprintf(f, "%01023d\n", 0);
    fclose(f);
    set_mtime_t0(p);

    api_init(&api, T0, T0);
    cr_assert_eq(outbox_run(ob, T0 + 5, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(s.dead, 5);
    cr_assert_eq(s.done, 1);
    cr_assert_eq(api.n, 1);
    cr_assert_eq(count_files("queue", ".json"), 1, "only the stray name is left");
    cr_assert_eq(count_files("dead", ".corrupt"), 5);
    for (i = 0; i < 4; i++) {
        dead = load_json("dead", ids[i]);
        cr_assert_not_null(dead);
        cr_assert_not_null(strstr(json_string_value(json_object_get(dead, "dead_reason")),
                                  "corrupt"));
        json_decref(dead);
        cr_assert_eq(outbox_retry(ob, ids[i], T0), LB_ERR_GONE);
    }
    outbox_close(ob);
}

/* ---- duplicates ---- */

Test(outbox, idempotency_keys_and_fingerprints)
{
    struct outbox_conf conf;
    struct outbox *ob;
    char a[OUTBOX_ID_SIZE], b[OUTBOX_ID_SIZE], c[OUTBOX_ID_SIZE], existing[OUTBOX_ID_SIZE];
    bool dup;

    outbox_conf_default(&conf);
    conf.duplicate_window = 300;
    ob = open_spool(&conf);
    put_job(ob, a, T0, one_target);
    put_job(ob, b, T0, one_target);
    outbox_new_id(c);
    cr_assert_eq(outbox_reserve_key(ob, "key-1", "h1", a, T0, &dup, existing), LB_OK);
    cr_assert_not(dup);
    cr_assert_eq(outbox_reserve_key(ob, "key-1", "h1", b, T0 + 10, &dup, existing), LB_OK);
    cr_assert(dup);
    cr_assert_str_eq(existing, a);
    cr_assert_eq(outbox_reserve_key(ob, "key-1", "h2", b, T0 + 10, &dup, existing),
                 LB_ERR_CONFLICT);
    cr_assert_str_eq(existing, a);

    cr_assert_eq(outbox_reserve_key(ob, "fp:abc", NULL, a, T0, &dup, existing), LB_OK);
    cr_assert_not(dup);
    cr_assert_eq(outbox_reserve_key(ob, "fp:abc", NULL, b, T0 + 299, &dup, existing), LB_OK);
    cr_assert(dup);
    cr_assert_eq(outbox_reserve_key(ob, "fp:abc", NULL, b, T0 + 301, &dup, existing), LB_OK);
    cr_assert_not(dup, "a fingerprint lasts only the duplicate window");
    /* An idempotency key lasts as long as done records. */
    cr_assert_eq(outbox_reserve_key(ob, "key-1", "h1", b, T0 + 6 * 86400, &dup, existing), LB_OK);
    cr_assert(dup);

    cr_assert_eq(outbox_release_key(ob, "key-1", b), LB_OK);
    cr_assert_eq(outbox_reserve_key(ob, "key-1", "h1", b, T0 + 20, &dup, existing), LB_OK);
    cr_assert(dup, "release only removes a key that maps to the given job");
    cr_assert_eq(outbox_release_key(ob, "key-1", a), LB_OK);
    cr_assert_eq(outbox_reserve_key(ob, "key-1", "h1", b, T0 + 20, &dup, existing), LB_OK);
    cr_assert_not(dup);

    /* A key whose job was never put (a crash in between) is free again after a minute. */
    cr_assert_eq(outbox_reserve_key(ob, "key-2", "h1", c, T0, &dup, existing), LB_OK);
    cr_assert_eq(outbox_reserve_key(ob, "key-2", "h1", b, T0 + 59, &dup, existing), LB_OK);
    cr_assert(dup, "still within the grace period");
    cr_assert_str_eq(existing, c);
    cr_assert_eq(outbox_reserve_key(ob, "key-2", "h1", b, T0 + 60, &dup, existing), LB_OK);
    cr_assert_not(dup, "job %s was never put", c);
    cr_assert_eq(outbox_reserve_key(ob, "key-2", "h1", a, T0 + 1000, &dup, existing), LB_OK);
    cr_assert(dup, "a key whose job exists stays taken");
    cr_assert_str_eq(existing, b);

    /* Expiry removes old keys. */
    cr_assert_eq(outbox_expire(ob, T0 + 8 * 86400), LB_OK);
    cr_assert_eq(count_files("keys", ".json"), 0);
    cr_assert_eq(count_files("tmp", NULL), 0);
    outbox_close(ob);
}

Test(outbox, fifty_processes_one_key_one_winner)
{
    struct outbox *ob = open_spool(NULL);
    int go[2], res[2], status;
    pid_t pids[50];
    char line[64], winner[OUTBOX_ID_SIZE] = "";
    size_t i, wins = 0, dups = 0;
    FILE *f;

    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(res), 0);
    for (i = 0; i < 50; i++) {
        pids[i] = fork();
        cr_assert_neq(pids[i], -1);
        if (pids[i] == 0) {
            char id[OUTBOX_ID_SIZE], existing[OUTBOX_ID_SIZE], out[64], c;
            bool dup;
            enum lb_err e;
            int n;

            close(go[1]);
            if (read(go[0], &c, 1) != 0)
                _exit(3);
            if (outbox_new_id(id) != LB_OK)
                _exit(3);
            e = outbox_reserve_key(ob, "Idempotency-Key: abc", "body", id, T0, &dup, existing);
            if (e != LB_OK)
                _exit(2);
            n = snprintf(out, sizeof(out), "%c %s\n", dup ? 'D' : 'W', dup ? existing : id);
            if (write(res[1], out, (size_t)n) != n)
                _exit(3);
            _exit(0);
        }
    }
    close(go[0]);
    close(go[1]); /* everyone starts at once */
    close(res[1]);
    for (i = 0; i < 50; i++) {
        cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    f = fdopen(res[0], "r");
    cr_assert_not_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == 'W') {
            wins++;
            snprintf(winner, sizeof(winner), "%.32s", line + 2);
        }
    }
    cr_assert_eq(wins, 1, "exactly one winner");
    rewind(f);
    fclose(f);
    /* Every loser was told the winner's id: read the key again and compare. */
    {
        char id[OUTBOX_ID_SIZE], existing[OUTBOX_ID_SIZE];
        bool dup;

        outbox_new_id(id);
        cr_assert_eq(outbox_reserve_key(ob, "Idempotency-Key: abc", "body", id, T0, &dup,
                                        existing), LB_OK);
        cr_assert(dup);
        cr_assert_str_eq(existing, winner);
        dups++;
    }
    cr_assert_eq(count_files("keys", ".json"), 1);
    cr_assert_eq(count_files("tmp", NULL), 0);
    cr_assert_eq(dups, 1);
    outbox_close(ob);
}

Test(outbox, first_answer_is_stored_and_replayed)
{
    struct outbox *ob = open_spool(NULL);
    struct outbox_claim *c = NULL;
    struct target_result r;
    enum outbox_state where;
    char id[OUTBOX_ID_SIZE], id2[OUTBOX_ID_SIZE];
    json_t *resp, *second, *back;

    put_job(ob, id, T0, one_target);
    cr_assert_null(outbox_load_response(ob, id, &where));
    cr_assert_eq(where, OUTBOX_QUEUED);
    cr_assert_eq(outbox_claim(ob, id, &c), LB_OK);
    target_result_init(&r);
    r.outcome = DELIVERY_OK;
    cr_assert_eq(outbox_record(c, "leadpro", &r, T0), LB_OK);
    resp = json_pack("{s:b, s:s}", "ok", 1, "status", "created");
    second = json_pack("{s:b, s:s}", "ok", 1, "status", "other");
    cr_assert_eq(outbox_claim_set_response(c, resp), LB_OK);
    cr_assert_eq(outbox_claim_set_response(c, second), LB_OK);
    cr_assert_eq(outbox_finish(c, T0, &where), LB_OK);
    cr_assert_eq(where, OUTBOX_DONE);
    back = outbox_load_response(ob, id, &where);
    cr_assert_eq(where, OUTBOX_DONE);
    cr_assert(json_equal(back, resp), "the first answer is kept");
    json_decref(back);

    /* Stored later, in a queued job and then in its done record. */
    put_job(ob, id2, T0, one_target);
    cr_assert_eq(outbox_store_response(ob, id2, second), LB_OK);
    back = outbox_load_response(ob, id2, &where);
    cr_assert_eq(where, OUTBOX_QUEUED);
    cr_assert(json_equal(back, second));
    json_decref(back);
    cr_assert_eq(outbox_store_response(ob, id, second), LB_OK);
    back = outbox_load_response(ob, id, NULL);
    cr_assert(json_equal(back, resp), "a stored answer is never replaced");
    json_decref(back);
    cr_assert_null(outbox_load_response(ob, "ffffffffffffffffffffffffffffffff", &where));
    cr_assert_eq(where, OUTBOX_UNKNOWN);
    json_decref(resp);
    json_decref(second);
    outbox_close(ob);
}

/* ---- operator functions and retention ---- */

Test(outbox, show_retry_all_and_purge)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    char a[OUTBOX_ID_SIZE], b[OUTBOX_ID_SIZE], q[OUTBOX_ID_SIZE];
    size_t n;
    json_t *j;

    api_init(&api, T0, T0);
    api.refuse = "leadpro";
    put_job(ob, a, T0, one_target);
    run_until(ob, &api, T0); /* a dead at T0 */
    api.now = T0 + 10 * 86400;
    put_job(ob, b, api.now, one_target);
    run_until(ob, &api, api.now); /* b dead at T0 + 10 days */
    cr_assert_eq(count_files("dead", ".json"), 2);

    j = outbox_show(ob, a);
    cr_assert_not_null(j);
    cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "dead");
    json_decref(j);
    cr_assert_null(outbox_show(ob, "not-an-id"));

    /* Purge dead letters older than 5 days: only a. */
    cr_assert_eq(outbox_purge(ob, true, false, 5 * 86400, T0 + 10 * 86400, &n), LB_OK);
    cr_assert_eq(n, 1);
    cr_assert_null(outbox_show(ob, a));
    cr_assert_not_null(j = outbox_show(ob, b));
    json_decref(j);

    /* A queued job retried becomes due now; the dead one returns to the queue. */
    put_job(ob, q, T0 + 10 * 86400 + 5000, one_target);
    cr_assert_eq(outbox_retry_all(ob, T0 + 10 * 86400 + 10, &n), LB_OK);
    cr_assert_eq(n, 2);
    j = outbox_show(ob, b);
    cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "queued");
    cr_assert_eq(json_integer_value(json_object_get(j, "attempts")), 0);
    cr_assert_null(json_object_get(j, "dead_reason"));
    json_decref(j);
    j = outbox_show(ob, q);
    cr_assert_eq(json_integer_value(json_object_get(j, "next_attempt")), T0 + 10 * 86400 + 10);
    json_decref(j);
    api.refuse = NULL;
    api.now = T0 + 10 * 86400 + 10;
    run_until(ob, &api, api.now);
    cr_assert_eq(count_files("done", ".json"), 2);
    cr_assert_eq(outbox_retry(ob, b, api.now), LB_ERR_NOT_FOUND, "done jobs are not retried");
    outbox_close(ob);
}

Test(outbox, retention_removes_old_records_and_tmp_garbage)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    struct outbox_conf conf;
    char id[OUTBOX_ID_SIZE], p[256];
    int fd;

    put_job(ob, id, T0, one_target);
    api_init(&api, T0, T0);
    run_until(ob, &api, T0);
    cr_assert_eq(count_files("done", ".json"), 1);
    cr_assert_eq(outbox_expire(ob, T0 + 6 * 86400), LB_OK);
    cr_assert_eq(count_files("done", ".json"), 1, "kept for 7 days");
    cr_assert_eq(outbox_expire(ob, T0 + 7 * 86400), LB_OK);
    cr_assert_eq(count_files("done", ".json"), 0);
    outbox_close(ob);

    /* tmp/ garbage goes by its real age (ctime), whatever its mtime says. */
    snprintf(p, sizeof(p), "%s/tmp/garbage.1.2", spool);
    fd = open(p, O_WRONLY | O_CREAT, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    sleep(2);
    snprintf(p, sizeof(p), "%s/tmp/fresh.1.2", spool);
    fd = open(p, O_WRONLY | O_CREAT, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    ob = open_spool(NULL);
    cr_assert_eq(count_files("tmp", NULL), 2, "an hour by default");
    outbox_close(ob);
    outbox_conf_default(&conf);
    conf.tmp_max_age = 1;
    ob = open_spool(&conf);
    cr_assert_eq(count_files("tmp", NULL), 1, "only the fresh tmp file survives");
    outbox_close(ob);
}

/* ---- many workers on one spool ---- */

/* Delivers by appending "id target\n" to a shared file (O_APPEND: one write per line). */
static void append_deliver(void *ctx, const json_t *job, const char *target, const json_t *entry,
                           struct target_result *r)
{
    int fd = *(int *)ctx;
    char line[128];
    int n;

    (void)entry;
    n = snprintf(line, sizeof(line), "%s %s\n", json_string_value(json_object_get(job, "id")),
                 target);
    if (write(fd, line, (size_t)n) != n)
        abort();
    r->outcome = DELIVERY_OK;
    r->http_status = 201;
}

struct run_thread {
    struct outbox *ob;
    int fd;
};

static void *run_in_thread(void *arg)
{
    struct run_thread *t = arg;

    for (int i = 0; i < 20; i++)
        outbox_run(t->ob, T0 + 10, append_deliver, &t->fd, 0, NULL);
    return NULL;
}

/* Counts lines of path; fails on any repeated line. */
static size_t count_unique_lines(const char *path)
{
    char lines[MAX_JOBS * 2][128], line[128];
    size_t n = 0, i;
    FILE *f = fopen(path, "r");

    cr_assert_not_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        for (i = 0; i < n; i++)
            cr_assert_str_neq(lines[i], line, "delivered twice: %s", line);
        cr_assert_lt(n, MAX_JOBS * 2);
        snprintf(lines[n++], sizeof(lines[0]), "%s", line);
    }
    fclose(f);
    return n;
}

Test(outbox, threads_and_processes_deliver_each_job_once)
{
    struct outbox *ob = open_spool(NULL);
    struct run_thread t[4];
    pthread_t th[4];
    pid_t pids[3];
    char id[OUTBOX_ID_SIZE], log_path[256];
    int fd, status;
    size_t i;

    for (i = 0; i < 30; i++)
        put_job(ob, id, T0 + (long long)i % 5, two_targets);
    snprintf(log_path, sizeof(log_path), "%s/deliveries.log", spool);
    fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    cr_assert_geq(fd, 0);
    for (i = 0; i < 3; i++) {
        pids[i] = fork();
        cr_assert_neq(pids[i], -1);
        if (pids[i] == 0) {
            struct lb_error err;
            struct outbox *mine = outbox_open(spool, NULL, &err);

            for (int k = 0; mine != NULL && k < 20; k++)
                outbox_run(mine, T0 + 10, append_deliver, &fd, 0, NULL);
            outbox_close(mine);
            _exit(mine != NULL ? 0 : 1);
        }
    }
    for (i = 0; i < 4; i++) {
        t[i].ob = ob;
        t[i].fd = fd;
        cr_assert_eq(pthread_create(&th[i], NULL, run_in_thread, &t[i]), 0);
    }
    for (i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < 3; i++) {
        cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    close(fd);
    cr_assert_eq(count_unique_lines(log_path), 60, "30 jobs x 2 targets, each once");
    cr_assert_eq(count_files("done", ".json"), 30);
    cr_assert_eq(count_files("queue", NULL), 0);
    cr_assert_eq(count_files("tmp", NULL), 0);
    outbox_close(ob);
}

/* ---- monitoring ---- */

struct dead_seen {
    int calls;
    char id[OUTBOX_ID_SIZE];
    char form[32];
    char target[32];
    char reason[256];
};

static void record_dead(void *ctx, const char *id, const char *form, const char *target,
                        const char *reason)
{
    struct dead_seen *d = ctx;

    d->calls++;
    snprintf(d->id, sizeof(d->id), "%s", id);
    snprintf(d->form, sizeof(d->form), "%s", form != NULL ? form : "");
    snprintf(d->target, sizeof(d->target), "%s", target != NULL ? target : "");
    snprintf(d->reason, sizeof(d->reason), "%s", reason != NULL ? reason : "");
}

Test(outbox, stats_count_each_state_and_the_dead_hook_hears_each_dead_job_once)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    struct outbox_stats st;
    struct dead_seen seen = {0};
    char a[OUTBOX_ID_SIZE], b[OUTBOX_ID_SIZE], c[OUTBOX_ID_SIZE];

    outbox_set_dead_hook(ob, record_dead, &seen);
    cr_assert_eq(outbox_stats(ob, T0, &st), LB_OK);
    cr_assert_eq(st.queued + st.done + st.dead, 0);
    cr_assert_eq(st.oldest_created, -1);

    put_job(ob, a, T0, one_target);       /* delivered → done */
    put_job(ob, b, T0 + 10, two_targets); /* lofty refused → dead */
    api_init(&api, T0 + 20, T0);
    api.refuse = "lofty";
    run_until(ob, &api, T0 + 20);
    put_job(ob, c, T0 + 30, one_target);  /* still queued */

    cr_assert_eq(outbox_stats(ob, T0 + 40, &st), LB_OK);
    cr_assert_eq(st.queued, 1);
    cr_assert_eq(st.done, 1);
    cr_assert_eq(st.dead, 1);
    cr_assert_eq(st.oldest_created, T0 + 30);

    cr_assert_eq(seen.calls, 1);
    cr_assert_str_eq(seen.id, b);
    cr_assert_str_eq(seen.form, "contact");
    cr_assert_str_eq(seen.target, "lofty");
    cr_assert_not_null(strstr(seen.reason, "not a valid address"));
    cr_assert_null(strstr(seen.reason, "jane"), "no personal data in the reason");
    outbox_close(ob);
}

/* ---- spool robustness and crashes ---- */

/* Makes a FIFO, a unix socket's stand-in (a second FIFO), a symlink and a directory in sub. */
static void plant_odd_files(const char *sub, const char *base)
{
    char p[256], q[256];

    snprintf(p, sizeof(p), "%s/%s/%sa.json", spool, sub, base);
    cr_assert_eq(mkfifo(p, 0600), 0);
    snprintf(p, sizeof(p), "%s/%s/%sb.json", spool, sub, base);
    snprintf(q, sizeof(q), "%s/outside", spool);
    cr_assert_eq(symlink(q, p), 0);
    snprintf(p, sizeof(p), "%s/%s/%sc.json", spool, sub, base);
    cr_assert_eq(mkdir(p, 0700), 0);
}

Test(outbox, fifos_symlinks_and_dirs_in_the_spool_are_set_aside_never_waited_on,
     .timeout = 20)
{
    struct outbox *ob = open_spool(NULL);
    static struct fake_api api;
    struct outbox_run_stats s;
    struct outbox_stats st;
    struct outbox_claim *c = NULL;
    char id[OUTBOX_ID_SIZE];
    const char *fifo_id = "0000000000000000000000000000000a";
    json_t *list, *item;
    size_t i, aside = 0;
    char p[256];

    put_job(ob, id, T0, one_target);
    /* A FIFO named like a job: opening it without O_NONBLOCK would block forever. */
    snprintf(p, sizeof(p), "%s/queue/%s.json", spool, fifo_id);
    cr_assert_eq(mkfifo(p, 0600), 0);
    set_mtime_t0(p);
    plant_odd_files("queue", "000000000000000000000000000000");
    plant_odd_files("dead", "100000000000000000000000000000");
    plant_odd_files("done", "200000000000000000000000000000");

    cr_assert_eq(outbox_claim(ob, fifo_id, &c), LB_ERR_NOT_FOUND, "a FIFO is not a job");
    api_init(&api, T0, T0);
    cr_assert_eq(outbox_run(ob, T0 + 5, fake_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(s.done, 1, "the real job is delivered");
    cr_assert_eq(api.n, 1);

    list = outbox_list(ob);
    cr_assert_not_null(list);
    json_array_foreach(list, i, item) {
        if (strcmp(json_string_value(json_object_get(item, "state")), "aside") == 0)
            aside++;
    }
    json_decref(list);
    cr_assert_eq(aside, 10, "queue list reports each odd entry (got %zu)", aside);
    cr_assert_eq(count_files("queue", NULL), 0, "nothing odd is left in queue/");
    cr_assert_eq(count_files("aside", NULL), 10);
    cr_assert_eq(outbox_stats(ob, T0 + 5, &st), LB_OK);
    cr_assert_eq(st.aside, 10);
    outbox_close(ob);
}

/* A deliver function that notes whether it was told the previous outcome is unknown. */
struct unknown_api {
    int calls;
    int unknown;
};

static void unknown_deliver(void *ctx, const json_t *job, const char *target, const json_t *entry,
                            struct target_result *r)
{
    struct unknown_api *api = ctx;

    (void)job;
    (void)target;
    api->calls++;
    if (outbox_attempt_unknown(entry))
        api->unknown++;
    r->outcome = DELIVERY_TRANSIENT;
    r->http_status = 503;
    snprintf(r->reason, sizeof(r->reason), "HTTP 503");
}

Test(outbox, an_attempt_cut_short_by_a_crash_is_flagged_unknown_on_the_next_one)
{
    struct outbox *ob = open_spool(NULL);
    struct unknown_api api = {0, 0};
    struct outbox_run_stats s;
    struct lb_error err = {0};
    char id[OUTBOX_ID_SIZE];
    json_t *job;
    int status;
    pid_t pid;

    /* A job the request path was delivering (started) when its worker was killed. */
    job = make_job(id, T0, one_target);
    cr_assert_eq(outbox_job_mark_started(job), LB_OK);
    cr_assert_eq(outbox_put(ob, job, &err), LB_OK);
    json_decref(job);
    pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        struct outbox_claim *mine = NULL;

        if (outbox_claim(ob, id, &mine) != LB_OK)
            _exit(2);
        raise(SIGKILL); /* dies mid-delivery: nothing recorded */
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status));

    cr_assert_eq(outbox_run(ob, T0 + 1, unknown_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(api.calls, 1);
    cr_assert_eq(api.unknown, 1, "the retry must ask the API before creating again");

    /* That attempt was recorded (a clean 503): the next one is a plain retry. */
    cr_assert_eq(outbox_retry(ob, id, T0 + 2), LB_OK);
    cr_assert_eq(outbox_run(ob, T0 + 2, unknown_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(api.calls, 2);
    cr_assert_eq(api.unknown, 1, "a recorded outcome is known");

    /* A job put without being started (queued for the worker) is not unknown either. */
    put_job(ob, id, T0, one_target);
    cr_assert_eq(outbox_run(ob, T0 + 3, unknown_deliver, &api, 0, &s), LB_OK);
    cr_assert_eq(api.unknown, 1);
    outbox_close(ob);
}

/* Many threads putting at once share commits (group commit) and every job is whole. */
struct put_arg {
    struct outbox *ob;
    int n;
    int failed;
};

static void *put_many(void *p)
{
    struct put_arg *a = p;
    char id[OUTBOX_ID_SIZE];
    struct lb_error err = {0};

    for (int i = 0; i < a->n; i++) {
        json_t *job = make_job(id, T0, one_target);

        if (outbox_put(a->ob, job, &err) != LB_OK)
            a->failed++;
        json_decref(job);
    }
    return NULL;
}

Test(outbox, concurrent_puts_all_land_whole)
{
    struct outbox *ob = open_spool(NULL);
    pthread_t th[16];
    struct put_arg args[16];
    struct outbox_stats st;
    int i;

    for (i = 0; i < 16; i++) {
        args[i] = (struct put_arg){ob, 20, 0};
        cr_assert_eq(pthread_create(&th[i], NULL, put_many, &args[i]), 0);
    }
    for (i = 0; i < 16; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(args[i].failed, 0);
    }
    cr_assert_eq(outbox_stats(ob, T0, &st), LB_OK);
    cr_assert_eq(st.queued, 320);
    cr_assert_eq(st.aside, 0);
    cr_assert_eq(count_files("tmp", NULL), 0);
    outbox_close(ob);
}

Test(outbox, deferred_by_a_rate_limit_is_no_attempt)
{
    struct outbox *ob = open_spool(NULL);
    struct outbox_claim *c = NULL;
    struct target_result r;
    enum outbox_state where;
    char id[OUTBOX_ID_SIZE];
    json_t *job, *entry;

    put_job(ob, id, T0, one_target);
    cr_assert_eq(outbox_claim(ob, id, &c), LB_OK);
    cr_assert_eq(outbox_begin_attempt(c, "leadpro", T0), LB_OK);
    target_result_init(&r);
    r.outcome = DELIVERY_DEFERRED;
    r.retry_after = 3;
    cr_assert_eq(outbox_record(c, "leadpro", &r, T0), LB_OK);
    cr_assert_eq(outbox_finish(c, T0, &where), LB_OK);
    cr_assert_eq(where, OUTBOX_QUEUED);
    job = load_json("queue", id);
    entry = json_object_get(json_object_get(job, "targets"), "leadpro");
    cr_expect_eq(json_integer_value(json_object_get(job, "attempts")), 0, "not a retry");
    cr_expect_eq(json_integer_value(json_object_get(entry, "attempts")), 0);
    cr_expect_eq(json_integer_value(json_object_get(entry, "started")), 0, "nothing in flight");
    cr_expect(json_is_true(json_object_get(entry, "throttled")));
    cr_expect_eq(json_integer_value(json_object_get(job, "next_attempt")), T0 + 3,
                 "due when the bucket allows, not on the retry schedule");
    json_decref(job);
    outbox_close(ob);
}

/* Removes every file in sub (a power loss that lost them before writeback). */
static void lose_all(const char *sub)
{
    char p[256], f[512];
    struct dirent *de;
    DIR *d;

    snprintf(p, sizeof(p), "%s/%s", spool, sub);
    d = opendir(p);
    cr_assert_not_null(d);
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(f, sizeof(f), "%s/%s", p, de->d_name);
        cr_assert_eq(unlink(f), 0);
    }
    closedir(d);
}

/*
 * A new job and its key are durable through the process's journal, not through their own files:
 * when a crash and a power loss lose those files, the next opener puts them back from the
 * journal (the job still marked started, so its next attempt asks the API first), leaves a
 * delivered job alone, ignores a torn last record and removes the journal.
 */
Test(outbox, journal_brings_back_what_a_power_loss_lost)
{
    char a[OUTBOX_ID_SIZE], c[OUTBOX_ID_SIZE], existing[OUTBOX_ID_SIZE], p[256];
    long long now = (long long)time(NULL);
    int fds[2], status;
    struct outbox *ob;
    bool dup = false;
    pid_t pid;
    json_t *back;

    cr_assert_eq(pipe(fds), 0);
    pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        struct lb_error err = {0};
        struct outbox_claim *cl = NULL;
        struct target_result r;
        struct outbox *cob = outbox_open(spool, NULL, &err);
        json_t *job = cob != NULL ? make_job(a, now, one_target) : NULL;
        json_t *job2 = cob != NULL ? make_job(c, now, one_target) : NULL;
        bool d = false;

        if (job == NULL || job2 == NULL || outbox_job_mark_started(job) != LB_OK ||
            outbox_reserve_key(cob, "fp:journal", NULL, a, now, &d, existing) != LB_OK ||
            outbox_put(cob, job, &err) != LB_OK || outbox_put(cob, job2, &err) != LB_OK ||
            outbox_claim(cob, c, &cl) != LB_OK)
            _exit(2);
        target_result_init(&r);
        r.outcome = DELIVERY_OK;
        r.http_status = 201;
        if (outbox_record(cl, "leadpro", &r, now) != LB_OK || outbox_finish(cl, now, NULL) != LB_OK)
            _exit(3);
        if (write(fds[1], a, OUTBOX_ID_LEN) != OUTBOX_ID_LEN ||
            write(fds[1], c, OUTBOX_ID_LEN) != OUTBOX_ID_LEN)
            _exit(4);
        _exit(0); /* a crash: no outbox_close */
    }
    close(fds[1]);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    cr_assert_eq(read(fds[0], a, OUTBOX_ID_LEN), OUTBOX_ID_LEN);
    cr_assert_eq(read(fds[0], c, OUTBOX_ID_LEN), OUTBOX_ID_LEN);
    a[OUTBOX_ID_LEN] = c[OUTBOX_ID_LEN] = '\0';
    close(fds[0]);
    cr_assert_eq(count_files("journal", ".wal"), 1, "the dead process's journal stays");
    cr_assert_eq(count_files("done", ".json"), 1);

    /* The power loss: the job and key files never reached the disk; a torn record at the end. */
    lose_all("queue");
    lose_all("keys");
    {
        char wal[512];
        struct dirent *de;
        DIR *d;
        FILE *f;

        snprintf(p, sizeof(p), "%s/journal", spool);
        d = opendir(p);
        cr_assert_not_null(d);
        while ((de = readdir(d)) != NULL && de->d_name[0] == '.')
            ;
        cr_assert_not_null(de);
        snprintf(wal, sizeof(wal), "%s/%s", p, de->d_name);
        closedir(d);
        f = fopen(wal, "ab");
        cr_assert_not_null(f);
        fputs("LBJ1\1\0\0\0garbage that is not a whole record", f);
        fclose(f);
    }

    ob = open_spool(NULL);
    back = load_json("queue", a);
    cr_assert_not_null(back, "the accepted job is back in queue/");
    {
        json_t *t = json_object_get(json_object_get(back, "targets"), "leadpro");

        cr_assert_gt(json_integer_value(json_object_get(t, "started")),
                     json_integer_value(json_object_get(t, "attempts")),
                     "its interrupted attempt is still unknown: the API is asked first");
    }
    json_decref(back);
    cr_assert_null(read_text("queue", c, ".json"), "a delivered job is not brought back");
    cr_assert_eq(count_files("queue", ".json"), 1);
    cr_assert_eq(outbox_reserve_key(ob, "fp:journal", NULL, c, now, &dup, existing), LB_OK);
    cr_assert(dup, "the key is back and still names the first job");
    cr_assert_str_eq(existing, a);
    cr_assert_eq(count_files("journal", ".wal"), 0, "a replayed journal is removed");
    outbox_close(ob);
}
