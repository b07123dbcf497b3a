/*
 * metrics.c: shared counters in a mapped file, rendered for Prometheus (see metrics.h).
 *
 * Layout of metrics.shm: a header (magic, dropped-series counter) then METRICS_SLOTS slots. A
 * slot is free (state 0), being claimed (1) or live (2). A writer claims a free slot with a
 * compare-and-swap, writes its family and labels, then publishes it (state 2, release); the
 * labels never change after that. A series is found by hashing family and labels and probing
 * linearly. A slot left half-claimed by a killed process is skipped after a short wait. When
 * every slot is taken, new series are counted in "dropped" and otherwise ignored.
 *
 * Histogram slots hold one count per bucket (not cumulative; summed when rendered), one for
 * larger values and the sum in microseconds.
 */
#include "metrics.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "shmfile.h"

#define METRICS_MAGIC 0x6c626d6574726931ULL /* "lbmetri1" */
#define METRICS_VALUES 16
#define METRICS_CLAIM_SPINS 10000

enum metrics_family {
    MF_NONE = 0,
    MF_REQUESTS,
    MF_DURATION,
    MF_DELIVERIES,
    MF_DEAD,
    MF_SPAM,
    MF_NOTICES,
    MF_RELOADS,
    MF__MAX
};

static const struct {
    const char *name;
    const char *type;
    const char *help;
    const char *labels[2]; /* NULL: no second label */
    const char *json;      /* key in metrics_json() */
} families[MF__MAX] = {
    [MF_REQUESTS] = {"leadbridge_requests_total", "counter",
                     "Requests answered, by form (\"\" when no form matched) and HTTP status.",
                     {"form", "status"}, "requests"},
    [MF_DURATION] = {"leadbridge_request_duration_seconds", "histogram",
                     "Time from the request's start to its answer, by form.", {"form", NULL},
                     "request_seconds"},
    [MF_DELIVERIES] = {"leadbridge_deliveries_total", "counter",
                       "Delivery attempts to the lead APIs, by target and outcome (ok, "
                       "transient, permanent).",
                       {"target", "outcome"}, "deliveries"},
    [MF_DEAD] = {"leadbridge_dead_letters_total", "counter",
                 "Jobs moved to the dead letters, by form and target (\"\": the whole job).",
                 {"form", "target"}, "dead_letters"},
    [MF_SPAM] = {"leadbridge_spam_total", "counter", "Submissions held as spam, by form and reason.",
                 {"form", "reason"}, "spam"},
    [MF_NOTICES] = {"leadbridge_notices_total", "counter",
                    "Notices to a person about dead letters and a stuck queue, by channel and "
                    "result (sent, failed, suppressed by the rate limit).",
                    {"channel", "result"}, "notices"},
    [MF_RELOADS] = {"leadbridge_config_reloads_total", "counter",
                    "Configuration reloads (SIGHUP), by result (ok, failed: the old one kept).",
                    {"result", NULL}, "reloads"},
};

static const double duration_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                         0.5,   1,    2.5,   5,    10,  30};
#define N_BOUNDS (sizeof(duration_bounds) / sizeof(duration_bounds[0]))
#define V_OVER N_BOUNDS        /* values above the last bound */
#define V_SUM_US (N_BOUNDS + 1) /* sum of durations in microseconds */

struct slot {
    _Atomic uint32_t state;
    uint32_t family;
    uint32_t hash;
    uint32_t pad;
    char labels[2][METRICS_LABEL_MAX];
    _Atomic uint64_t v[METRICS_VALUES];
};

struct shm {
    _Atomic uint64_t magic;
    _Atomic uint64_t dropped;
    uint64_t reserved[6];
    struct slot slots[METRICS_SLOTS];
};

static struct shm *shm;

enum lb_err metrics_open(const char *dir, struct lb_error *err)
{
    struct shm *m = shmfile_open_tagged(dir, "metrics.shm", sizeof(struct shm), METRICS_MAGIC, err);

    if (m == NULL)
        return LB_ERR_IO;
    metrics_close();
    shm = m;
    return LB_OK;
}

void metrics_close(void)
{
    shmfile_close(shm, sizeof(struct shm));
    shm = NULL;
}

static uint32_t series_hash(uint32_t family, const char *a, const char *b)
{
    uint32_t h = 2166136261u ^ family;

    for (const char *s = a; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    h = (h ^ 0xff) * 16777619u;
    for (const char *s = b; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Copies s into a label (cut at a UTF-8 boundary). */
static void label_copy(char out[METRICS_LABEL_MAX], const char *s)
{
    size_t n = strlen(s);

    if (n >= METRICS_LABEL_MAX) {
        n = METRICS_LABEL_MAX - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

/* The live slot of a series, claimed now when new; NULL when off or the table is full. */
static struct slot *series(uint32_t family, const char *a, const char *b)
{
    char la[METRICS_LABEL_MAX], lb[METRICS_LABEL_MAX];
    uint32_t h;

    if (shm == NULL)
        return NULL;
    label_copy(la, a != NULL ? a : "");
    label_copy(lb, b != NULL ? b : "");
    h = series_hash(family, la, lb);
    for (uint32_t i = 0; i < METRICS_SLOTS; i++) {
        struct slot *s = &shm->slots[(h + i) % METRICS_SLOTS];
        uint32_t state = atomic_load_explicit(&s->state, memory_order_acquire);

        if (state == 0) {
            uint32_t expect = 0;

            if (atomic_compare_exchange_strong(&s->state, &expect, 1)) {
                s->family = family;
                s->hash = h;
                memcpy(s->labels[0], la, sizeof(la));
                memcpy(s->labels[1], lb, sizeof(lb));
                atomic_store_explicit(&s->state, 2, memory_order_release);
                return s;
            }
            state = expect;
        }
        for (int spin = 0; state == 1 && spin < METRICS_CLAIM_SPINS; spin++) {
            sched_yield();
            state = atomic_load_explicit(&s->state, memory_order_acquire);
        }
        if (state == 2 && s->hash == h && s->family == family && strcmp(s->labels[0], la) == 0 &&
            strcmp(s->labels[1], lb) == 0)
            return s;
    }
    atomic_fetch_add_explicit(&shm->dropped, 1, memory_order_relaxed);
    return NULL;
}

static void count(uint32_t family, const char *a, const char *b)
{
    struct slot *s = series(family, a, b);

    if (s != NULL)
        atomic_fetch_add_explicit(&s->v[0], 1, memory_order_relaxed);
}

void metrics_request(const char *form, int status, double seconds)
{
    char st[16];
    struct slot *s;
    size_t i;

    snprintf(st, sizeof(st), "%d", status);
    count(MF_REQUESTS, form, st);
    s = series(MF_DURATION, form, NULL);
    if (s == NULL)
        return;
    if (seconds < 0)
        seconds = 0;
    for (i = 0; i < N_BOUNDS && seconds > duration_bounds[i]; i++)
        ;
    atomic_fetch_add_explicit(&s->v[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->v[V_SUM_US], (uint64_t)(seconds * 1e6 + 0.5),
                              memory_order_relaxed);
}

void metrics_delivery(const char *target, const char *outcome)
{
    count(MF_DELIVERIES, target, outcome);
}

void metrics_dead(const char *form, const char *target)
{
    count(MF_DEAD, form, target);
}

void metrics_spam(const char *form, const char *reason)
{
    count(MF_SPAM, form, reason);
}

void metrics_notice(const char *channel, const char *result)
{
    count(MF_NOTICES, channel, result);
}

void metrics_reload(bool ok)
{
    count(MF_RELOADS, ok ? "ok" : "failed", NULL);
}

/* ---- Rendering ---- */

/* Appends a label value with Prometheus escapes (backslash, quote, newline). */
static enum lb_err put_label_value(struct buf *out, const char *s)
{
    enum lb_err e = LB_OK;

    for (; e == LB_OK && *s != '\0'; s++) {
        if (*s == '\\')
            e = buf_puts(out, "\\\\");
        else if (*s == '"')
            e = buf_puts(out, "\\\"");
        else if (*s == '\n')
            e = buf_puts(out, "\\n");
        else
            e = buf_putc(out, *s);
    }
    return e;
}

/* Appends {a="..",b=".."} (extra: one more label already formatted, or NULL). */
static enum lb_err put_labels(struct buf *out, uint32_t f, const struct slot *s, const char *extra)
{
    enum lb_err e = buf_putc(out, '{');

    for (int i = 0; e == LB_OK && i < 2 && families[f].labels[i] != NULL; i++) {
        e = buf_printf(out, "%s%s=\"", i > 0 ? "," : "", families[f].labels[i]);
        if (e == LB_OK)
            e = put_label_value(out, s->labels[i]);
        if (e == LB_OK)
            e = buf_putc(out, '"');
    }
    if (e == LB_OK && extra != NULL)
        e = buf_printf(out, ",%s", extra);
    if (e == LB_OK)
        e = buf_putc(out, '}');
    return e;
}

static enum lb_err render_histogram(struct buf *out, const struct slot *s)
{
    uint64_t cum = 0;
    char le[48];
    enum lb_err e = LB_OK;

    for (size_t i = 0; e == LB_OK && i <= N_BOUNDS; i++) {
        cum += atomic_load_explicit(&((struct slot *)s)->v[i], memory_order_relaxed);
        if (i < N_BOUNDS)
            snprintf(le, sizeof(le), "le=\"%g\"", duration_bounds[i]);
        else
            snprintf(le, sizeof(le), "le=\"+Inf\"");
        e = buf_printf(out, "%s_bucket", families[MF_DURATION].name);
        if (e == LB_OK)
            e = put_labels(out, MF_DURATION, s, le);
        if (e == LB_OK)
            e = buf_printf(out, " %llu\n", (unsigned long long)cum);
    }
    if (e == LB_OK)
        e = buf_printf(out, "%s_sum", families[MF_DURATION].name);
    if (e == LB_OK)
        e = put_labels(out, MF_DURATION, s, NULL);
    if (e == LB_OK)
        e = buf_printf(out, " %.6f\n",
                       (double)atomic_load_explicit(&((struct slot *)s)->v[V_SUM_US],
                                                    memory_order_relaxed) / 1e6);
    if (e == LB_OK)
        e = buf_printf(out, "%s_count", families[MF_DURATION].name);
    if (e == LB_OK)
        e = put_labels(out, MF_DURATION, s, NULL);
    if (e == LB_OK)
        e = buf_printf(out, " %llu\n", (unsigned long long)cum);
    return e;
}

static enum lb_err render_gauge(struct buf *out, const char *name, const char *help,
                                long long value)
{
    return buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name,
                      value);
}

enum lb_err metrics_render(const struct metrics_queue *q, struct buf *out)
{
    enum lb_err e;

    e = buf_printf(out, "# HELP leadbridge_build_info The running version.\n"
                        "# TYPE leadbridge_build_info gauge\n"
                        "leadbridge_build_info{version=\"%s\"} 1\n",
                   PACKAGE_VERSION);
    for (uint32_t f = 1; e == LB_OK && f < MF__MAX; f++) {
        e = buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help,
                       families[f].name, families[f].type);
        for (size_t i = 0; e == LB_OK && shm != NULL && i < METRICS_SLOTS; i++) {
            struct slot *s = &shm->slots[i];

            if (atomic_load_explicit(&s->state, memory_order_acquire) != 2 || s->family != f)
                continue;
            if (f == MF_DURATION) {
                e = render_histogram(out, s);
                continue;
            }
            e = buf_puts(out, families[f].name);
            if (e == LB_OK)
                e = put_labels(out, f, s, NULL);
            if (e == LB_OK)
                e = buf_printf(out, " %llu\n", (unsigned long long)atomic_load_explicit(
                                                   &s->v[0], memory_order_relaxed));
        }
    }
    if (e == LB_OK)
        e = buf_printf(out,
                       "# HELP leadbridge_metrics_series_dropped_total Updates lost because "
                       "the series table (%d) is full.\n"
                       "# TYPE leadbridge_metrics_series_dropped_total counter\n"
                       "leadbridge_metrics_series_dropped_total %llu\n",
                       METRICS_SLOTS,
                       shm != NULL ? (unsigned long long)atomic_load(&shm->dropped) : 0ULL);
    if (e == LB_OK && q != NULL && q->known) {
        e = render_gauge(out, "leadbridge_queue_depth", "Jobs waiting for delivery.", q->queued);
        if (e == LB_OK)
            e = render_gauge(out, "leadbridge_queue_oldest_age_seconds",
                             "Age of the oldest queued job (0 when the queue is empty).",
                             q->oldest_age);
        if (e == LB_OK)
            e = render_gauge(out, "leadbridge_dead_letters",
                             "Dead letters in the spool now (see leadbridge queue list).", q->dead);
        if (e == LB_OK)
            e = render_gauge(out, "leadbridge_done_records",
                             "Records of delivered jobs kept in the spool now.", q->done);
    }
    return e;
}

/* obj[a][b] = n (b NULL: obj[a] = n). */
static void json_put(json_t *obj, const char *a, const char *b, json_t *n)
{
    json_t *inner;

    if (b == NULL) {
        json_object_set_new(obj, a, n);
        return;
    }
    inner = json_object_get(obj, a);
    if (inner == NULL) {
        inner = json_object();
        json_object_set_new(obj, a, inner);
    }
    json_object_set_new(inner, b, n);
}

json_t *metrics_json(const struct metrics_queue *q)
{
    json_t *root = json_object();

    if (root == NULL)
        return NULL;
    if (q != NULL && q->known)
        json_object_set_new(root, "queue",
                            json_pack("{s:I,s:I,s:I,s:I}", "queued", (json_int_t)q->queued,
                                      "dead", (json_int_t)q->dead, "done", (json_int_t)q->done,
                                      "oldest_age", (json_int_t)q->oldest_age));
    for (uint32_t f = 1; f < MF__MAX; f++)
        json_object_set_new(root, families[f].json, json_object());
    for (size_t i = 0; shm != NULL && i < METRICS_SLOTS; i++) {
        struct slot *s = &shm->slots[i];
        json_t *group;

        if (atomic_load_explicit(&s->state, memory_order_acquire) != 2 || s->family == MF_NONE ||
            s->family >= MF__MAX)
            continue;
        group = json_object_get(root, families[s->family].json);
        if (s->family == MF_DURATION) {
            uint64_t n = 0;

            for (size_t b = 0; b <= N_BOUNDS; b++)
                n += atomic_load_explicit(&s->v[b], memory_order_relaxed);
            json_put(group, s->labels[0], NULL,
                     json_pack("{s:I,s:f}", "count", (json_int_t)n, "sum",
                               (double)atomic_load(&s->v[V_SUM_US]) / 1e6));
            continue;
        }
        json_put(group, s->labels[0], families[s->family].labels[1] != NULL ? s->labels[1] : NULL,
                 json_integer((json_int_t)atomic_load_explicit(&s->v[0], memory_order_relaxed)));
    }
    return root;
}
