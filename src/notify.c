/*
 * notify.c: notices to a person about dead letters and a stuck queue (see notify.h).
 *
 * notify_dead() (the outbox's hook, any thread) decides at once whether the rate limits let a
 * notice through, then queues it in a small ring; the sending thread (or notify_drain) takes
 * it, builds the webhook call and/or the mail and sends them, outside every lock but its own.
 * Nothing here blocks the request that filed the job for longer than a mutex.
 */
#include "notify.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "conf.h"
#include "crypto.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "monitor.h"
#include "outbox.h"
#include "shmfile.h"
#include "target.h"

#define NOTIFY_RING 64
#define NOTIFY_SLOTS 256
#define NOTIFY_MAGIC 0x6c626e6f74696631ULL /* "lbnotif1" */
#define NOTIFY_CHECK_EVERY 30              /* seconds between queue-age checks */
#define NOTIFY_MAIL_TIMEOUT_MS 30000
#define NOTIFY_PATH_SIZE 512

enum notify_kind { NOTICE_DEAD = 0, NOTICE_QUEUE };

struct notice {
    enum notify_kind kind;
    char id[OUTBOX_ID_SIZE];
    char form[128];
    char target[128];
    char reason[400];
    long long queued;
    long long oldest_age;
    unsigned long long held_back; /* notices of this kind held back since the last one */
    long long time;
};

struct limit_slot {
    _Atomic uint32_t state; /* 0 free, 1 being claimed, 2 live */
    uint32_t hash;
    char key[260];
    _Atomic int64_t last;   /* when the last notice for this key went out */
    _Atomic uint64_t held;  /* held back since */
};

struct limits {
    _Atomic uint64_t magic;
    _Atomic int64_t hour_start;
    _Atomic uint64_t hour_count;
    struct limit_slot slots[NOTIFY_SLOTS];
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct notify_conf conf; /* our own copy */
    struct notice ring[NOTIFY_RING];
    size_t head, count;
    bool thread_running, stopping;
    pthread_t thread;
    struct outbox *ob;
    struct limits *limits;
    bool limits_mapped;
} N = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static const char *const notify_keys[] = {"webhook", "mail", "queue_age", "min_interval",
                                          "max_per_hour", NULL};
static const char *const webhook_keys[] = {"url", "secret", "timeout", NULL};
static const char *const mail_keys[] = {"sendmail", "to", "from", NULL};

/* ---- Config ---- */

static bool header_text_ok(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f || *s == ',' || *s == ';')
            return false;
    return true;
}

static bool address_ok(const char *s)
{
    const char *at = strchr(s, '@');

    return at != NULL && at != s && at[1] != '\0' && strchr(s, ' ') == NULL && header_text_ok(s) &&
           strlen(s) < 256;
}

static void read_webhook(const json_t *obj, const char *path, struct diag *d,
                         struct notify_conf *out)
{
    const char *url, *secret;
    char p[NOTIFY_PATH_SIZE];
    long n;

    conf_check_keys(obj, path, webhook_keys, d);
    url = conf_string(obj, "url", path, NULL, true, d);
    secret = conf_string(obj, "secret", path, NULL, true, d);
    out->webhook_timeout_ms = (long)conf_integer(obj, "timeout", path, 10, 1, 120, d) * 1000;
    if (url != NULL && *url != '\0') {
        bool ok = (strncmp(url, "https://", 8) == 0 && url[8] != '\0') ||
                  (strncmp(url, "http://", 7) == 0 && url[7] != '\0');

        for (const char *c = url; ok && *c != '\0'; c++)
            ok = (unsigned char)*c > 0x20 && *c != 0x7f;
        conf_path(p, sizeof(p), path, "url");
        if (!ok || strlen(url) >= sizeof(((struct http_call *)0)->url))
            diag_add(d, p, "must be an absolute http:// or https:// URL without spaces");
        else
            out->webhook_url = strdup(url);
    }
    if (secret == NULL || *secret == '\0')
        return;
    conf_path(p, sizeof(p), path, "secret");
    out->webhook_key = calloc(1, NOTIFY_KEY_MAX);
    if (out->webhook_key == NULL)
        return;
    n = target_webhook_secret_key(secret, out->webhook_key, NOTIFY_KEY_MAX);
    if (n == -1)
        diag_add(d, p, "a \"whsec_\" secret must be followed by base64");
    else if (n < 0)
        diag_add(d, p, "is longer than %d bytes", NOTIFY_KEY_MAX);
    else if (n < 16)
        diag_add(d, p, "must be at least 16 bytes");
    else
        out->webhook_key_len = (size_t)n;
}

static void read_mail(const json_t *obj, const char *path, struct diag *d, struct notify_conf *out)
{
    const char *prog, *from;
    const json_t *to;
    char p[NOTIFY_PATH_SIZE], ip[NOTIFY_PATH_SIZE];
    size_t i;
    json_t *v;

    conf_check_keys(obj, path, mail_keys, d);
    prog = conf_string(obj, "sendmail", path, "/usr/sbin/sendmail", false, d);
    conf_path(p, sizeof(p), path, "sendmail");
    if (prog != NULL && prog[0] != '/')
        diag_add(d, p, "must be an absolute path (it is run without a shell)");
    else if (prog != NULL)
        out->sendmail = strdup(prog);
    from = conf_string(obj, "from", path, NULL, false, d);
    conf_path(p, sizeof(p), path, "from");
    if (from != NULL && !address_ok(from))
        diag_add(d, p, "must be one email address");
    else if (from != NULL)
        out->mail_from = strdup(from);
    to = json_object_get(obj, "to");
    conf_path(p, sizeof(p), path, "to");
    if (!json_is_array(to) || json_array_size(to) == 0 || json_array_size(to) > NOTIFY_MAX_TO) {
        diag_add(d, to == NULL ? path : p, "\"to\" must be an array of 1 to %d email addresses",
                 NOTIFY_MAX_TO);
        return;
    }
    json_array_foreach(to, i, v) {
        conf_path_index(ip, sizeof(ip), p, i);
        if (!json_is_string(v) || !address_ok(json_string_value(v)))
            diag_add(d, ip, "must be one email address");
        else
            out->mail_to[out->n_mail_to++] = strdup(json_string_value(v));
    }
}

void notify_conf_from_json(const json_t *obj, const char *path, struct diag *d,
                           struct notify_conf *out)
{
    const json_t *v;
    char p[NOTIFY_PATH_SIZE];

    memset(out, 0, sizeof(*out));
    out->queue_age = 3600;
    out->min_interval = 900;
    out->max_per_hour = 20;
    if (obj == NULL)
        return;
    if (!json_is_object(obj)) {
        diag_add(d, path, "must be an object");
        return;
    }
    conf_check_keys(obj, path, notify_keys, d);
    v = json_object_get(obj, "webhook");
    conf_path(p, sizeof(p), path, "webhook");
    if (v != NULL && !json_is_object(v))
        diag_add(d, p, "must be an object");
    else if (v != NULL)
        read_webhook(v, p, d, out);
    v = json_object_get(obj, "mail");
    conf_path(p, sizeof(p), path, "mail");
    if (v != NULL && !json_is_object(v))
        diag_add(d, p, "must be an object");
    else if (v != NULL)
        read_mail(v, p, d, out);
    out->queue_age = conf_integer(obj, "queue_age", path, 3600, 0, 365LL * 86400, d);
    out->min_interval = conf_integer(obj, "min_interval", path, 900, 0, 7LL * 86400, d);
    out->max_per_hour = conf_integer(obj, "max_per_hour", path, 20, 1, 10000, d);
    if (json_object_get(obj, "webhook") == NULL && json_object_get(obj, "mail") == NULL)
        diag_add(d, path, "needs a \"webhook\" or a \"mail\" channel");
    out->on = (out->webhook_url != NULL && out->webhook_key_len > 0) ||
              (out->sendmail != NULL && out->n_mail_to > 0);
}

void notify_conf_free(struct notify_conf *c)
{
    if (c == NULL)
        return;
    free(c->webhook_url);
    if (c->webhook_key != NULL)
        crypto_wipe(c->webhook_key, NOTIFY_KEY_MAX);
    free(c->webhook_key);
    free(c->sendmail);
    for (size_t i = 0; i < c->n_mail_to; i++)
        free(c->mail_to[i]);
    free(c->mail_from);
    memset(c, 0, sizeof(*c));
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* Deep copy of src into dst (dst is overwritten). */
static void conf_copy(struct notify_conf *dst, const struct notify_conf *src)
{
    *dst = *src;
    dst->webhook_url = dup_or_null(src->webhook_url);
    dst->webhook_key = NULL;
    if (src->webhook_key != NULL) {
        dst->webhook_key = malloc(NOTIFY_KEY_MAX);
        if (dst->webhook_key != NULL)
            memcpy(dst->webhook_key, src->webhook_key, NOTIFY_KEY_MAX);
        else
            dst->webhook_key_len = 0;
    }
    dst->sendmail = dup_or_null(src->sendmail);
    for (size_t i = 0; i < src->n_mail_to; i++)
        dst->mail_to[i] = dup_or_null(src->mail_to[i]);
    dst->mail_from = dup_or_null(src->mail_from);
}

/* ---- Rate limits ---- */

enum lb_err notify_open(const char *dir, struct lb_error *err)
{
    struct limits *m = shmfile_open_tagged(dir, "notify.shm", sizeof(struct limits), NOTIFY_MAGIC,
                                           err);

    if (m == NULL)
        return LB_ERR_IO;
    pthread_mutex_lock(&N.lock);
    if (N.limits != NULL && !N.limits_mapped)
        free(N.limits);
    else if (N.limits != NULL)
        shmfile_close(N.limits, sizeof(struct limits));
    N.limits = m;
    N.limits_mapped = true;
    pthread_mutex_unlock(&N.lock);
    return LB_OK;
}

static struct limit_slot *limit_slot(struct limits *l, const char *key)
{
    uint32_t h = 2166136261u;
    char k[sizeof(((struct limit_slot *)0)->key)];

    snprintf(k, sizeof(k), "%s", key);
    for (const char *s = k; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    for (uint32_t i = 0; i < NOTIFY_SLOTS; i++) {
        struct limit_slot *s = &l->slots[(h + i) % NOTIFY_SLOTS];
        uint32_t state = atomic_load(&s->state), expect = 0;

        if (state == 0 && atomic_compare_exchange_strong(&s->state, &expect, 1)) {
            s->hash = h;
            memcpy(s->key, k, sizeof(k));
            atomic_store(&s->state, 2);
            return s;
        }
        for (int spin = 0; atomic_load(&s->state) == 1 && spin < 10000; spin++)
            sched_yield();
        if (atomic_load(&s->state) == 2 && s->hash == h && strcmp(s->key, k) == 0)
            return s;
    }
    return NULL;
}

/* Whether a notice for key may go out now; *held_back gets how many were held back before it. */
static bool limit_allows(struct limits *l, const char *key, long long now, long long interval,
                         long long per_hour, unsigned long long *held_back)
{
    struct limit_slot *s = limit_slot(l, key);
    int64_t last, start;

    *held_back = 0;
    if (s == NULL)
        return false;
    last = atomic_load(&s->last);
    if ((last != 0 && now - last < interval) ||
        !atomic_compare_exchange_strong(&s->last, &last, (int64_t)now)) {
        atomic_fetch_add(&s->held, 1);
        return false;
    }
    start = atomic_load(&l->hour_start);
    if (now - start >= 3600 && atomic_compare_exchange_strong(&l->hour_start, &start, now))
        atomic_store(&l->hour_count, 0);
    if (atomic_fetch_add(&l->hour_count, 1) >= (uint64_t)per_hour) {
        atomic_fetch_add(&s->held, 1);
        return false;
    }
    *held_back = atomic_exchange(&s->held, 0);
    return true;
}

/* ---- Queueing ---- */

/* Copies text into out, bytes below 0x20 and 0x7f turned into spaces, cut on a UTF-8 boundary. */
static void copy_text(char *out, size_t size, const char *s)
{
    size_t n = 0;

    for (; s != NULL && *s != '\0' && n + 1 < size; s++)
        out[n++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? ' ' : *s;
    if (s != NULL && ((unsigned char)*s & 0xc0) == 0x80) {
        /* The cut fell inside a UTF-8 sequence: drop its first bytes too. */
        while (n > 0 && ((unsigned char)out[n - 1] & 0xc0) == 0x80)
            n--;
        if (n > 0)
            n--;
    }
    out[n] = '\0';
}

static bool is_number_char(char c)
{
    return (c >= '0' && c <= '9') || c == ' ' || c == '+' || c == '-' || c == '.' || c == '(' ||
           c == ')';
}

void notify_clean_reason(const char *in, char *out, size_t size)
{
    struct buf b;
    const char *p = in != NULL ? in : "";
    char *s;

    if (size == 0)
        return;
    /* Room for every word masked ("@" becomes "[email]"); copy_text() cuts to size after. */
    buf_init(&b, strnlen(p, 4096) * 8 + 16);
    while (*p != '\0' && b.len < 4096) {
        const char *word_end = p;
        size_t digits = 0, len = 0;

        /* A word with '@' in it: an email address. */
        while (*word_end != '\0' && *word_end != ' ' && *word_end != '\t' && *word_end != ',' &&
               *word_end != ';' && *word_end != '"' && *word_end != '\'')
            word_end++;
        if (word_end > p && memchr(p, '@', (size_t)(word_end - p)) != NULL) {
            buf_puts(&b, "[email]");
            p = word_end;
            continue;
        }
        /* A run of digits with phone punctuation: 6 or more digits is a number to hide. */
        if ((*p >= '0' && *p <= '9') ||
            ((*p == '+' || *p == '(') && p[1] >= '0' && p[1] <= '9')) {
            while (p[len] != '\0' && is_number_char(p[len])) {
                if (p[len] >= '0' && p[len] <= '9')
                    digits++;
                len++;
            }
            while (len > 0 && !(p[len - 1] >= '0' && p[len - 1] <= '9'))
                len--; /* keep trailing punctuation and spaces */
            if (digits >= 6) {
                buf_puts(&b, "[number]");
                p += len;
                continue;
            }
            buf_append(&b, p, len);
            p += len;
            continue;
        }
        buf_putc(&b, ((unsigned char)*p < 0x20 || *p == 0x7f) ? ' ' : *p);
        p++;
    }
    s = b.data != NULL ? b.data : "";
    copy_text(out, size, s);
    buf_free(&b);
}

static void enqueue(const struct notice *n)
{
    pthread_mutex_lock(&N.lock);
    if (N.count < NOTIFY_RING) {
        N.ring[(N.head + N.count) % NOTIFY_RING] = *n;
        N.count++;
        pthread_cond_signal(&N.wake);
    } else {
        log_msg(LOG_WARN, "notify: %d notices waiting; one dropped", NOTIFY_RING);
    }
    pthread_mutex_unlock(&N.lock);
}

/* Applies the limits to a notice for key; queues it or counts it as held back. */
static void offer(struct notice *n, const char *key)
{
    bool on, ok;
    long long interval, per_hour;
    struct limits *l;

    pthread_mutex_lock(&N.lock);
    on = N.conf.on;
    interval = N.conf.min_interval;
    per_hour = N.conf.max_per_hour;
    if (on && N.limits == NULL) {
        N.limits = calloc(1, sizeof(struct limits)); /* no spool: this process's own limits */
        N.limits_mapped = false;
    }
    l = N.limits;
    pthread_mutex_unlock(&N.lock);
    if (!on || l == NULL)
        return;
    ok = limit_allows(l, key, n->time, interval, per_hour, &n->held_back);
    if (!ok) {
        pthread_mutex_lock(&N.lock);
        if (N.conf.webhook_url != NULL)
            metrics_notice("webhook", "suppressed");
        if (N.conf.sendmail != NULL)
            metrics_notice("mail", "suppressed");
        pthread_mutex_unlock(&N.lock);
        return;
    }
    enqueue(n);
}

void notify_dead(void *ctx, const char *id, const char *form, const char *target,
                 const char *reason)
{
    struct notice n;
    char key[300];

    (void)ctx;
    metrics_dead(form, target);
    memset(&n, 0, sizeof(n));
    n.kind = NOTICE_DEAD;
    n.time = (long long)time(NULL);
    snprintf(n.id, sizeof(n.id), "%s", id != NULL && outbox_id_valid(id) ? id : "");
    copy_text(n.form, sizeof(n.form), form != NULL ? form : "");
    copy_text(n.target, sizeof(n.target), target != NULL ? target : "");
    notify_clean_reason(reason, n.reason, sizeof(n.reason));
    snprintf(key, sizeof(key), "dead\n%s\n%s", n.form, n.target);
    offer(&n, key);
}

/* Offers a stuck-queue notice when the oldest queued job is older than queue_age. */
static void check_queue(struct outbox *ob)
{
    struct metrics_queue q;
    struct notice n;
    long long limit;

    pthread_mutex_lock(&N.lock);
    limit = N.conf.on ? N.conf.queue_age : 0;
    pthread_mutex_unlock(&N.lock);
    if (limit <= 0 || ob == NULL)
        return;
    memset(&n, 0, sizeof(n));
    n.time = (long long)time(NULL);
    monitor_queue(ob, n.time, &q);
    if (!q.known || q.queued == 0 || q.oldest_age <= limit)
        return;
    n.kind = NOTICE_QUEUE;
    n.queued = q.queued;
    n.oldest_age = q.oldest_age;
    snprintf(n.reason, sizeof(n.reason), "the oldest queued job is %lld s old (the limit is %lld s)",
             q.oldest_age, limit);
    offer(&n, "queue");
}

/* ---- Sending ---- */

static void host_name(char *out, size_t size)
{
    if (gethostname(out, size) != 0)
        snprintf(out, size, "unknown");
    out[size - 1] = '\0';
    copy_text(out, size, out);
}

static json_t *notice_json(const struct notice *n, const char *host)
{
    json_t *j = json_pack("{s:s,s:s,s:I,s:s}", "type",
                          n->kind == NOTICE_DEAD ? "leadbridge.dead_letter"
                                                 : "leadbridge.queue_stuck",
                          "host", host, "time", (json_int_t)n->time, "reason", n->reason);
    char cmd[80];

    if (j == NULL)
        return NULL;
    if (n->kind == NOTICE_DEAD) {
        json_object_set_new(j, "form", json_string(n->form));
        json_object_set_new(j, "target", n->target[0] != '\0' ? json_string(n->target)
                                                              : json_null());
        json_object_set_new(j, "job_id", json_string(n->id));
        snprintf(cmd, sizeof(cmd), "leadbridge queue show %s", n->id);
        json_object_set_new(j, "show", json_string(cmd));
    } else {
        json_object_set_new(j, "queued", json_integer(n->queued));
        json_object_set_new(j, "oldest_age", json_integer(n->oldest_age));
    }
    json_object_set_new(j, "held_back", json_integer((json_int_t)n->held_back));
    return j;
}

static bool send_webhook(const struct notify_conf *c, struct http_client *http, const json_t *body)
{
    struct http_call call;
    struct http_reply reply;
    unsigned char rnd[16];
    char msg_id[40], hex[33], ts[24], sig[64];
    long long now = (long long)time(NULL);
    bool ok = false;

    memset(&call, 0, sizeof(call));
    memset(&reply, 0, sizeof(reply));
    if (crypto_random(rnd, sizeof(rnd)) != 0)
        return false;
    hex_encode(rnd, sizeof(rnd), hex);
    snprintf(msg_id, sizeof(msg_id), "msg_%s", hex);
    snprintf(ts, sizeof(ts), "%lld", now);
    call.method = "POST";
    snprintf(call.url, sizeof(call.url), "%s", c->webhook_url);
    call.connect_timeout_ms = c->webhook_timeout_ms < 5000 ? c->webhook_timeout_ms : 5000;
    call.timeout_ms = c->webhook_timeout_ms;
    if (http_call_set_json(&call, body, JSON_COMPACT, 64 * 1024) != LB_OK ||
        target_webhook_sign(c->webhook_key, c->webhook_key_len, msg_id, now, call.body,
                            call.body_len, sig, sizeof(sig)) != LB_OK ||
        http_call_add_header(&call, "Content-Type", "application/json") != LB_OK ||
        http_call_add_header(&call, "webhook-id", msg_id) != LB_OK ||
        http_call_add_header(&call, "webhook-timestamp", ts) != LB_OK ||
        http_call_add_header(&call, "webhook-signature", sig) != LB_OK)
        goto out;
    if (http_perform(http, &call, &reply) == LB_OK && reply.status / 100 == 2)
        ok = true;
    else
        log_msg(LOG_WARN, "notify: the webhook answered %ld%s%s", reply.status,
                reply.transport != LB_OK ? ": " : "",
                reply.transport != LB_OK ? reply.transport_message : "");
out:
    http_call_free(&call);
    http_reply_free(&reply);
    return ok;
}

/* Printable ASCII only, for a mail header (names from the config; anything else becomes '?'). */
static void header_word(char *out, size_t size, const char *s)
{
    size_t n = 0;

    for (; *s != '\0' && n + 1 < size; s++)
        out[n++] = ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) ? '?' : *s;
    out[n] = '\0';
}

static enum lb_err mail_text(const struct notify_conf *c, const struct notice *n,
                             const char *host, struct buf *m)
{
    char form[128], target[128], hostw[128];

    header_word(form, sizeof(form), n->form);
    header_word(target, sizeof(target), n->target[0] != '\0' ? n->target : "-");
    header_word(hostw, sizeof(hostw), host);
    if (c->mail_from != NULL)
        buf_printf(m, "From: %s\n", c->mail_from);
    buf_puts(m, "To: ");
    for (size_t i = 0; i < c->n_mail_to; i++)
        buf_printf(m, "%s%s", i > 0 ? ", " : "", c->mail_to[i]);
    buf_puts(m, "\n");
    if (n->kind == NOTICE_DEAD)
        buf_printf(m, "Subject: [leadbridge] dead letter: form %s, target %s on %s\n", form,
                   target, hostw);
    else
        buf_printf(m, "Subject: [leadbridge] queue stuck on %s: oldest job %lld s old\n", hostw,
                   n->oldest_age);
    buf_puts(m, "Auto-Submitted: auto-generated\nMIME-Version: 1.0\n"
                "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n");
    if (n->kind == NOTICE_DEAD) {
        buf_printf(m, "A lead could not be delivered: it is now a dead letter.\n\n"
                      "  form:    %s\n  target:  %s\n  reason:  %s\n  job:     %s\n"
                      "  host:    %s\n\n",
                   n->form, n->target[0] != '\0' ? n->target : "-", n->reason, n->id, host);
        buf_printf(m, "Look at it:     leadbridge queue show %s\n"
                      "Send it again:  leadbridge queue retry %s\n",
                   n->id, n->id);
    } else {
        buf_printf(m, "Leads are waiting and not going out.\n\n  queued:  %lld\n"
                      "  oldest:  %lld s\n  reason:  %s\n  host:    %s\n\n"
                      "See them with: leadbridge queue list\n",
                   n->queued, n->oldest_age, n->reason, host);
    }
    if (n->held_back > 0)
        buf_printf(m, "\n%llu more notice(s) like this one were held back by the rate limit.\n",
                   n->held_back);
    return m->data != NULL ? LB_OK : LB_ERR_NOMEM;
}

/* Runs sendmail -t -oi with the message on its stdin; true when it exits 0 in time. */
static bool send_mail(const struct notify_conf *c, const struct notice *n, const char *host)
{
    char *const argv[] = {"sendmail", "-t", "-oi", NULL};
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    posix_spawn_file_actions_t fa;
    struct buf m;
    int fds[2], status = 0, waited = 0;
    pid_t pid;
    bool ok = false;
    size_t off = 0;

    buf_init(&m, 64 * 1024);
    if (mail_text(c, n, host, &m) != LB_OK || pipe2(fds, O_CLOEXEC) != 0) {
        buf_free(&m);
        return false;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (posix_spawn(&pid, c->sendmail, &fa, NULL, argv, envp) != 0) {
        log_msg(LOG_WARN, "notify: cannot run %s: %s", c->sendmail, strerror(errno));
        posix_spawn_file_actions_destroy(&fa);
        close(fds[0]);
        close(fds[1]);
        buf_free(&m);
        return false;
    }
    posix_spawn_file_actions_destroy(&fa);
    close(fds[0]);
    while (off < m.len) {
        ssize_t w = write(fds[1], m.data + off, m.len - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(fds[1]);
    buf_free(&m);
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid) {
            ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            break;
        }
        if (r < 0 && errno != EINTR)
            break;
        if (waited >= NOTIFY_MAIL_TIMEOUT_MS) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
        waited += 20;
    }
    if (!ok)
        log_msg(LOG_WARN, "notify: %s did not take the mail (status %d)", c->sendmail, status);
    return ok;
}

/* Sends one notice through every channel, with a private copy of the config. */
static void send_notice(const struct notice *n, struct http_client **http)
{
    struct notify_conf c;
    char host[128];
    json_t *body;

    pthread_mutex_lock(&N.lock);
    conf_copy(&c, &N.conf);
    pthread_mutex_unlock(&N.lock);
    host_name(host, sizeof(host));
    if (c.webhook_url != NULL && c.webhook_key_len > 0) {
        if (*http == NULL)
            *http = http_client_new();
        body = notice_json(n, host);
        metrics_notice("webhook", body != NULL && *http != NULL && send_webhook(&c, *http, body)
                                      ? "sent"
                                      : "failed");
        json_decref(body);
    }
    if (c.sendmail != NULL && c.n_mail_to > 0)
        metrics_notice("mail", send_mail(&c, n, host) ? "sent" : "failed");
    if (n->kind == NOTICE_DEAD)
        log_msg(LOG_INFO, "notify: dead letter %s (form %s) reported", n->id, n->form);
    else
        log_msg(LOG_INFO, "notify: stuck queue reported (oldest job %lld s)", n->oldest_age);
    notify_conf_free(&c);
}

/* Sends everything queued now. */
static void send_all(struct http_client **http)
{
    struct notice n;

    pthread_mutex_lock(&N.lock);
    while (N.count > 0) {
        n = N.ring[N.head];
        N.head = (N.head + 1) % NOTIFY_RING;
        N.count--;
        pthread_mutex_unlock(&N.lock);
        send_notice(&n, http);
        pthread_mutex_lock(&N.lock);
    }
    pthread_mutex_unlock(&N.lock);
}

static void *notify_main(void *arg)
{
    struct http_client *http = NULL;
    time_t last_check = 0;
    sigset_t all;

    (void)arg;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        struct timespec until;
        bool stop;

        if (time(NULL) - last_check >= NOTIFY_CHECK_EVERY) {
            check_queue(N.ob);
            last_check = time(NULL);
        }
        send_all(&http);
        pthread_mutex_lock(&N.lock);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += NOTIFY_CHECK_EVERY;
        if (!N.stopping && N.count == 0)
            pthread_cond_timedwait(&N.wake, &N.lock, &until);
        stop = N.stopping && N.count == 0;
        pthread_mutex_unlock(&N.lock);
        if (stop)
            break;
    }
    http_client_free(http);
    return NULL;
}

void notify_configure(const struct notify_conf *c)
{
    struct notify_conf copy;

    conf_copy(&copy, c);
    pthread_mutex_lock(&N.lock);
    notify_conf_free(&N.conf);
    N.conf = copy;
    pthread_mutex_unlock(&N.lock);
}

enum lb_err notify_start(struct outbox *ob)
{
    enum lb_err e = LB_OK;

    pthread_mutex_lock(&N.lock);
    N.ob = ob;
    N.stopping = false;
    if (!N.thread_running) {
        sigset_t all, old;

        /* The thread starts with every signal blocked: none may ever be delivered to it. */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        if (pthread_create(&N.thread, NULL, notify_main, NULL) == 0)
            N.thread_running = true;
        else
            e = LB_ERR_INTERNAL;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    pthread_mutex_unlock(&N.lock);
    return e;
}

void notify_stop(void)
{
    bool running;

    pthread_mutex_lock(&N.lock);
    running = N.thread_running;
    N.stopping = true;
    pthread_cond_broadcast(&N.wake);
    pthread_mutex_unlock(&N.lock);
    if (running)
        pthread_join(N.thread, NULL);
    pthread_mutex_lock(&N.lock);
    N.thread_running = false;
    pthread_mutex_unlock(&N.lock);
}

void notify_drain(struct outbox *ob)
{
    struct http_client *http = NULL;
    struct sigaction ign, old;

    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, &old); /* a sendmail that exits early must not kill us */
    check_queue(ob);
    send_all(&http);
    http_client_free(http);
    sigaction(SIGPIPE, &old, NULL);
}

void notify_close(void)
{
    pthread_mutex_lock(&N.lock);
    notify_conf_free(&N.conf);
    if (N.limits != NULL && N.limits_mapped)
        shmfile_close(N.limits, sizeof(struct limits));
    else
        free(N.limits);
    N.limits = NULL;
    N.count = 0;
    pthread_mutex_unlock(&N.lock);
}
