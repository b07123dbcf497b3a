/*
 * main.c: the leadbridge program: command line, start-up checks, and the three ways to serve.
 *
 * - FastCGI on its own socket (-s unix:/path or -s HOST:PORT), on an inherited socket on fd 0
 *   (spawn-fcgi, mod_fcgid, systemd with StandardInput=socket) or on systemd's LISTEN_FDS (fd 3):
 *   N worker threads, each with one FCGX_Request and one curl handle; SIGTERM stops accepting,
 *   lets requests in flight finish, then exits 0.
 * - Plain CGI, when a web server runs the program for one request (environment + stdin).
 * - --check (validate the config) and --dry-run (one CGI-style request, nothing sent).
 */
#include <errno.h>
#include <fcgiapp.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "config.h"
#include "db.h"
#include "handler.h"
#include "http.h"
#include "live.h"
#include "log.h"
#include "metrics.h"
#include "monitor.h"
#include "notify.h"
#include "outbox.h"
#include "quarantine.h"
#include "ratelimit.h"
#include "rules.h"
#include "throttle.h"
#include "target.h"

#define DEFAULT_CONFIG SYSCONFDIR "/leadbridge/leadbridge.json"
#define MAX_LOOPS 8
#define LOOP_WORKERS 4

/* What the spool holds besides the outbox: spam in quarantine, the shared rate-limit table. */
struct spool_extras {
    struct quarantine *quarantine;
    struct ratelimit *limits;
};

struct server {
    const struct config *cfg;
    struct outbox *outbox;
    const struct spool_extras *extras;
    int listen_fd;
    int read_timeout;         /* seconds a connection may take to send its request */
    /* The event loops where requests wait on the lead APIs: one per LOOP_WORKERS workers, so
     * that answering pages and filing jobs (file work) is not one thread's queue. */
    struct http_loop *loops[MAX_LOOPS];
    int n_loops;
    atomic_int next_loop;     /* the loop the next worker to start uses */
    bool own_socket;          /* opened with -s: shutdown() may wake accept(); else it is shared */
    pthread_t accepter;       /* the worker inside FCGX_Accept_r, when in_accept */
    atomic_int in_accept;
    atomic_int running;       /* workers not yet finished */
    pthread_mutex_t accept_lock;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond; /* broadcast when stopping: wakes the retry thread */
    volatile sig_atomic_t stopping;
};

/* ---- Retries: the outbox's delivery callback ---- */

struct retry_ctx {
    const struct config *cfg;
    struct http_client *http;
    long long now; /* the pass's clock */
    struct ratelimit *limits; /* the targets' outbound rate limits (throttle.h); NULL: none */
};

static enum target_action action_from_name(const char *name)
{
    for (int a = 0; a < TARGET_ACTION__MAX; a++)
        if (name != NULL && strcmp(name, target_action_name((enum target_action)a)) == 0)
            return (enum target_action)a;
    return TARGET_ACTION__MAX;
}

/* Delivers one target of a queued job again, exactly as the request path did. */
static void retry_deliver(void *arg, const json_t *job, const char *target, const json_t *entry,
                          struct target_result *result)
{
    struct retry_ctx *ctx = arg;
    const struct target *t = config_find_target(ctx->cfg, target);
    enum target_action action = action_from_name(
        json_string_value(json_object_get(entry, "action")));
    bool unknown;

    if (t == NULL || action == TARGET_ACTION__MAX) {
        result->outcome = DELIVERY_PERMANENT;
        snprintf(result->reason, sizeof(result->reason),
                 "target \"%s\" is no longer configured for this action", target);
        return;
    }
    unknown = outbox_attempt_unknown(entry);
    if (unknown && t->ops->build_lookup != NULL) {
        /* An interrupted attempt may have made the lead, and may even still be in flight; an
         * API that persists asynchronously shows it in a search only after a while: ask once
         * that has passed, on the wall clock (a real request is being waited for). */
        long long since = json_integer_value(json_object_get(entry, "unknown_since"));
        long long wait = since + t->ops->lookup_settle(t->state) - (long long)time(NULL);

        if (wait > 0) {
            result->outcome = DELIVERY_TRANSIENT;
            result->retry_after = wait;
            result->still_unknown = true;
            snprintf(result->reason, sizeof(result->reason),
                     "an interrupted attempt may have made the lead; checking in %lld s", wait);
            return;
        }
    }
    if (throttle_defer(ctx->limits, t, true, entry, json_string_value(json_object_get(job, "id")),
                       throttle_now_ms(), result))
        return;
    target_deliver_checked(t, ctx->http, action, json_object_get(entry, "lead"),
                           json_string_value(json_object_get(entry, "lead_id")),
                           json_string_value(json_object_get(job, "id")), unknown, result);
    throttle_after(ctx->limits, t, entry, result, throttle_now_ms());
}

static void log_run_stats(const struct outbox_run_stats *st)
{
    if (st->delivered + st->retried + st->dead + st->done > 0)
        log_msg(LOG_INFO, "outbox: %zu delivered, %zu done, %zu retried later, %zu dead",
                st->delivered, st->done, st->retried, st->dead);
}

/* Background thread: one outbox pass whenever something is due, until stopping. */
static void *retry_main(void *arg)
{
    struct server *s = arg;
    struct retry_ctx ctx = {NULL, http_client_new(), 0, s->extras->limits};

    if (ctx.http == NULL) {
        log_msg(LOG_ERROR, "retry worker could not start");
        return NULL;
    }
    while (!s->stopping) {
        struct outbox_run_stats st;
        long long now = (long long)time(NULL), wait = 5;
        struct timespec until;

        memset(&st, 0, sizeof(st));
        ctx.now = now;
        if (s->extras->quarantine != NULL &&
            quarantine_expire(s->extras->quarantine, now) != LB_OK)
            log_msg(LOG_WARN, "quarantine: the retention pass could not read the spool");
        ctx.cfg = live_acquire(); /* one pass on one configuration (reloads swap it) */
        if (outbox_run(s->outbox, now, retry_deliver, &ctx, 64, &st) == LB_OK) {
            log_run_stats(&st);
            if (st.next_due >= 0 && st.next_due - now < wait)
                wait = st.next_due - now;
        }
        live_release(ctx.cfg);
        if (st.delivered + st.retried + st.dead > 0 && wait > 0)
            wait = 0; /* more may be due: go again at once */
        if (outbox_can_wait(s->outbox)) {
            /* Woken early by another host's work (NOTIFY) or by SIGTERM (outbox_wake). */
            if (!s->stopping)
                outbox_wait(s->outbox, (wait < 1 ? 1 : wait) * 1000);
            continue;
        }
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += wait < 1 ? 1 : wait;
        pthread_mutex_lock(&s->stop_lock);
        if (!s->stopping)
            pthread_cond_timedwait(&s->stop_cond, &s->stop_lock, &until);
        pthread_mutex_unlock(&s->stop_lock);
    }
    http_client_free(ctx.http);
    return NULL;
}

/* ---- FastCGI streams behind the handler's function types ---- */

static const char *fcgi_env(void *ctx, const char *name)
{
    return FCGX_GetParam(name, ((FCGX_Request *)ctx)->envp);
}

static ssize_t fcgi_read(void *ctx, char *buf, size_t n)
{
    int got = FCGX_GetStr(buf, n > 65536 ? 65536 : (int)n, ((FCGX_Request *)ctx)->in);
    int err = FCGX_GetError(((FCGX_Request *)ctx)->in);

    if (got < 0 || err != 0) {
        errno = err > 0 ? err : EIO; /* positive: the OS error, EAGAIN on our read timeout */
        return -1;
    }
    return got;
}

static const char *cgi_env(void *ctx, const char *name)
{
    (void)ctx;
    return getenv(name);
}

static ssize_t cgi_read(void *ctx, char *buf, size_t n)
{
    size_t got = fread(buf, 1, n, (FILE *)ctx);

    if (got == 0 && ferror((FILE *)ctx))
        return -1;
    return (ssize_t)got;
}

/* Serialises res and writes it to the FastCGI stream or stdio; fills rec->status on failure. */
static void write_answer(const struct response *res, bool head, FCGX_Stream *fout, FILE *sout,
                         int *status)
{
    struct buf out;

    buf_init(&out, 4 * 1024 * 1024);
    if (response_serialize(res, head, &out) != LB_OK) {
        buf_reset(&out);
        buf_puts(&out, "Status: 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n"
                       "{\"error\":{\"code\":\"internal_error\",\"message\":\"internal error\"}}\n");
        *status = 500;
    }
    if (fout != NULL)
        FCGX_PutStr(out.data, (int)out.len, fout);
    else
        fwrite(out.data, 1, out.len, sout);
    buf_free(&out);
}

/*
 * Handles one request and writes the answer with put (FastCGI or stdio). Returns false when the
 * request was handed to the event loop (w->deferred): the loop answers it and ends conn.
 */
static bool serve_one(const struct config *cfg, struct worker *w, env_get_fn env, void *env_ctx,
                      body_read_fn rd, void *rd_ctx, FCGX_Stream *fout, FILE *sout)
{
    struct response res;
    struct log_record rec;
    const char *method = env(env_ctx, "REQUEST_METHOD");

    response_init(&res);
    handler_run(cfg, w, env, env_ctx, rd, rd_ctx, &res, &rec);
    if (w->deferred) {
        response_free(&res);
        return false;
    }
    write_answer(&res, method != NULL && strcmp(method, "HEAD") == 0, fout, sout, &rec.status);
    log_request(&rec);
    response_free(&res);
    return true;
}

/* One FastCGI connection and the configuration its request runs on (req first: a cast works). */
struct conn {
    FCGX_Request req;
    const struct config *cfg;
};

/*
 * handler_finish_fn for FastCGI: answers a request the event loop delivered, ends its
 * connection (not kept for another request: nginx opens a new one) and frees it.
 */
static void fcgi_finish(void *conn, const struct response *out, const struct log_record *rec)
{
    struct conn *c = conn;
    FCGX_Request *req = &c->req;
    const char *method = FCGX_GetParam("REQUEST_METHOD", req->envp);
    struct log_record r = *rec;

    write_answer(out, method != NULL && strcmp(method, "HEAD") == 0, req->out, NULL, &r.status);
    log_request(&r);
    req->keepConnection = 0;
    FCGX_Finish_r(req);
    live_release(c->cfg);
    free(c);
}

/* A fresh request for the next connection (libfcgi never accepts by itself: socket -1). */
static FCGX_Request *new_request(void)
{
    struct conn *c = calloc(1, sizeof(*c));

    if (c != NULL && FCGX_InitRequest(&c->req, -1, FCGI_FAIL_ACCEPT_ON_INTR) != 0) {
        free(c);
        c = NULL;
    }
    return c != NULL ? &c->req : NULL;
}

/*
 * Accepts the next FastCGI connection on the listening socket ourselves, so that it has a read
 * and write timeout before libfcgi reads a byte from it: a client that connects and sends
 * nothing, or stalls its body, then costs a worker at most read_timeout seconds. Returns the fd,
 * or -1 when stopping.
 */
static int accept_connection(struct server *s)
{
    struct timeval tv = {s->read_timeout, 0};
    int fd = -1;

    while (fd < 0) {
        pthread_mutex_lock(&s->accept_lock);
        s->accepter = pthread_self();
        atomic_store(&s->in_accept, 1);
        fd = s->stopping ? -1 : accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        atomic_store(&s->in_accept, 0);
        pthread_mutex_unlock(&s->accept_lock);
        if (s->stopping) {
            if (fd >= 0)
                (void)close(fd);
            return -1;
        }
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED && errno != EPROTO &&
                errno != EAGAIN) {
                /* EMFILE, ENOBUFS...: back off a little instead of spinning. */
                struct timespec pause = {0, 50 * 1000 * 1000};

                log_msg(LOG_ERROR, "accept: %s", strerror(errno));
                nanosleep(&pause, NULL);
            }
            continue;
        }
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
            (void)close(fd);
            fd = -1;
        }
    }
    return fd;
}

static void *worker_main(void *arg)
{
    struct server *s = arg;
    struct worker w;
    FCGX_Request *req;

    memset(&w, 0, sizeof(w));
    w.http = http_client_new();
    w.outbox = s->outbox;
    w.quarantine = s->extras->quarantine;
    w.limits = s->extras->limits;
    w.loop = s->n_loops > 0 ? s->loops[atomic_fetch_add(&s->next_loop, 1) % s->n_loops] : NULL;
    w.finish = fcgi_finish;
    req = new_request();
    if (w.http == NULL || req == NULL) {
        log_msg(LOG_ERROR, "worker could not start");
        http_client_free(w.http);
        free(req);
        atomic_fetch_sub(&s->running, 1);
        return NULL;
    }
    while (!s->stopping) {
        /* A connection the web server keeps open (fastcgi_keep_conn) is read again as it is. */
        if (req->ipcFd < 0) {
            req->ipcFd = accept_connection(s);
            if (req->ipcFd < 0)
                break;
        }
        req->keepConnection = 1; /* so FCGX_Accept_r's own Finish keeps the fd we gave it */
        if (FCGX_Accept_r(req) < 0) {
            /* The connection sent no whole request in time (or garbage): libfcgi closed it
             * and failed to accept on -1. Take the next one. */
            req->ipcFd = -1;
            continue;
        }
        {
            /* The request finishes on the configuration it started with, whatever SIGHUP does:
             * a request handed to the event loop keeps it until fcgi_finish. */
            struct conn *c = (struct conn *)req;
            bool answered;

            c->cfg = live_acquire();
            w.conn = c;
            answered = serve_one(c->cfg, &w, fcgi_env, req, fcgi_read, req, req->out, NULL);
            if (answered) {
                live_release(c->cfg);
                c->cfg = NULL;
                FCGX_Finish_r(req);
                continue;
            }
        }
        /* Handed to the event loop, which answers and frees it: take a new one. */
        req = new_request();
        if (req == NULL) {
            log_msg(LOG_ERROR, "worker: out of memory");
            break;
        }
    }
    if (req != NULL) {
        FCGX_Free(req, 1);
        free(req);
    }
    http_client_free(w.http);
    rules_thread_cleanup();
    atomic_fetch_sub(&s->running, 1);
    return NULL;
}

/* SIGUSR2 only interrupts accept() (installed without SA_RESTART); there is nothing to do. */
static void wake_handler(int sig)
{
    (void)sig;
}

/* Reloads the configuration on SIGHUP; on SIGTERM/SIGINT wakes every thread blocked in accept(). */
static void *signal_main(void *arg)
{
    struct server *s = arg;
    sigset_t set;
    int sig = 0;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    while (sigwait(&set, &sig) == 0) {
        if (sig == SIGUSR1) /* our own wake-up at normal exit */
            break;
        if (sig == SIGHUP) {
            live_reload(); /* logs what it did, or every mistake (the old one stays) */
            continue;
        }
        log_msg(LOG_INFO, "signal %d: finishing requests in flight, then stopping", sig);
        pthread_mutex_lock(&s->stop_lock);
        s->stopping = 1;
        pthread_cond_broadcast(&s->stop_cond);
        pthread_mutex_unlock(&s->stop_lock);
        outbox_wake(s->outbox);
        FCGX_ShutdownPending();
        if (s->own_socket) {
            shutdown(s->listen_fd, SHUT_RDWR);
        } else {
            /* A shared socket (spawn-fcgi -F, systemd) must keep listening for the other
             * processes and the next start: interrupt our accept() instead, until every worker
             * has seen that we are stopping. */
            struct timespec pause = {0, 20 * 1000 * 1000};

            while (atomic_load(&s->running) > 0) {
                if (atomic_load(&s->in_accept))
                    pthread_kill(s->accepter, SIGUSR2);
                nanosleep(&pause, NULL);
            }
        }
        break;
    }
    return NULL;
}

/* Opens "unix:/path" or "HOST:PORT" for FastCGI. Returns the fd or -1. */
static int open_listen_socket(const char *spec)
{
    int fd;

    if (strncmp(spec, "unix:", 5) == 0) {
        const char *path = spec + 5;

        if (unlink(path) != 0 && errno != ENOENT) {
            fprintf(stderr, "leadbridge: cannot remove old socket %s: %s\n", path,
                    strerror(errno));
            return -1;
        }
        fd = FCGX_OpenSocket(path, 1024);
        /* The web server (another user) must be able to connect; access is local only. */
        if (fd >= 0 && chmod(path, 0666) != 0)
            fprintf(stderr, "leadbridge: chmod %s: %s\n", path, strerror(errno));
    } else {
        fd = FCGX_OpenSocket(spec, 1024);
    }
    if (fd < 0)
        fprintf(stderr, "leadbridge: cannot listen on %s\n", spec);
    return fd;
}

static int serve_fastcgi(const struct config *cfg, struct outbox *ob,
                         const struct spool_extras *extras, int listen_fd, bool own_socket,
                         int threads)
{
    struct sigaction wake;
    struct server s;
    pthread_t *tids, sig_tid, retry_tid;
    sigset_t set;
    int started = 0;

    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.outbox = ob;
    s.extras = extras;
    s.listen_fd = listen_fd;
    s.read_timeout = cfg->read_timeout;
    s.own_socket = own_socket;
    atomic_init(&s.in_accept, 0);
    atomic_init(&s.running, threads);
    memset(&wake, 0, sizeof(wake));
    wake.sa_handler = wake_handler;
    sigemptyset(&wake.sa_mask);
    sigaction(SIGUSR2, &wake, NULL); /* no SA_RESTART: accept() returns EINTR */
    pthread_mutex_init(&s.accept_lock, NULL);
    pthread_mutex_init(&s.stop_lock, NULL);
    pthread_cond_init(&s.stop_cond, NULL);

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pthread_create(&sig_tid, NULL, signal_main, &s) != 0)
        return 1;

    if (ob != NULL && pthread_create(&retry_tid, NULL, retry_main, &s) != 0)
        return 1;
    for (int i = 0; i < MAX_LOOPS && i < (threads + LOOP_WORKERS - 1) / LOOP_WORKERS; i++) {
        s.loops[s.n_loops] = http_loop_start();
        if (s.loops[s.n_loops] == NULL)
            break;
        s.n_loops++;
    }
    if (s.n_loops == 0)
        log_msg(LOG_WARN, "no event loop: requests wait on the lead APIs on worker threads");
    tids = calloc((size_t)threads, sizeof(*tids));
    for (int i = 0; tids != NULL && i < threads; i++) {
        if (pthread_create(&tids[i], NULL, worker_main, &s) != 0)
            break;
        started++;
    }
    atomic_fetch_sub(&s.running, threads - started);
    {
        const struct config *now = live_acquire(); /* a SIGHUP may have swapped cfg already */

        log_msg(LOG_INFO, "leadbridge %s serving FastCGI with %d threads, %zu forms",
                PACKAGE_VERSION, started, now != NULL ? now->n_forms : cfg->n_forms);
        live_release(now);
    }
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    /* Requests waiting on the APIs finish (each within its target's timeout) and are answered. */
    for (int i = 0; i < s.n_loops; i++)
        http_loop_stop(s.loops[i]);
    if (!s.stopping) {
        pthread_kill(sig_tid, SIGUSR1);
        pthread_mutex_lock(&s.stop_lock);
        s.stopping = 1;
        pthread_cond_broadcast(&s.stop_cond);
        pthread_mutex_unlock(&s.stop_lock);
        outbox_wake(s.outbox);
    }
    pthread_join(sig_tid, NULL);
    if (ob != NULL)
        pthread_join(retry_tid, NULL);
    free(tids);
    pthread_mutex_destroy(&s.accept_lock);
    pthread_mutex_destroy(&s.stop_lock);
    pthread_cond_destroy(&s.stop_cond);
    log_msg(LOG_INFO, "stopped");
    return started == threads ? 0 : 1;
}

/* Plain CGI (and --dry-run): one request from the environment and stdin. */
static int serve_cgi(const struct config *cfg, struct outbox *ob,
                     const struct spool_extras *extras, bool dry_run)
{
    struct worker w;

    memset(&w, 0, sizeof(w));
    w.dry_run = dry_run;
    w.outbox = ob;
    w.quarantine = extras->quarantine;
    w.limits = extras->limits;
    if (!dry_run) {
        w.http = http_client_new();
        if (w.http == NULL)
            return 1;
    }
    serve_one(cfg, &w, cgi_env, NULL, cgi_read, stdin, NULL, stdout);
    fflush(stdout);
    http_client_free(w.http);
    rules_thread_cleanup();
    return 0;
}

/* ---- leadbridge queue ... ---- */

struct queue_opts {
    bool json;
    bool all;
    bool dead;
    bool done;
    long long older_than_days; /* -1: not given */
    long long now;             /* the clock (tests may set it with --now) */
};

static void print_summary(const json_t *j)
{
    const char *key;
    json_t *t;
    char when[32] = "-";
    json_int_t next = json_integer_value(json_object_get(j, "next_attempt"));
    const char *state = json_string_value(json_object_get(j, "state"));

    if (state != NULL && strcmp(state, "queued") == 0 && next > 0) {
        time_t tt = (time_t)next;
        struct tm tm;

        gmtime_r(&tt, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    printf("%s  %-6s  %-16s  attempts %-3lld next %-20s", json_string_value(json_object_get(j, "id")),
           state != NULL ? state : "?", json_string_value(json_object_get(j, "form")),
           (long long)json_integer_value(json_object_get(j, "attempts")), when);
    json_object_foreach(json_object_get(j, "targets"), key, t) {
        const char *err = json_string_value(json_object_get(t, "last_error"));

        printf("  %s=%s", key, json_string_value(json_object_get(t, "status")));
        if (err != NULL && *err != '\0')
            printf(" (%s)", err);
    }
    putchar('\n');
}

/* leadbridge queue spam list|show ID|release ID|--all|purge ID|--all|--older-than DAYS */
static int spam_command(struct outbox *ob, struct quarantine *q, int argc, char **argv,
                        const struct queue_opts *o)
{
    const char *cmd = argc > 0 ? argv[0] : "list";
    const char *id = argc > 1 ? argv[1] : NULL;
    json_t *j, *item;
    size_t count = 0, i;
    enum lb_err e;

    if (id != NULL && !outbox_id_valid(id)) {
        fprintf(stderr, "leadbridge: queue spam %s: \"%s\" is not a job id (32 hex digits)\n",
                cmd, id);
        return 2;
    }
    if (strcmp(cmd, "list") == 0 || strcmp(cmd, "show") == 0) {
        if (strcmp(cmd, "show") == 0 && id == NULL) {
            fprintf(stderr, "leadbridge: queue spam show takes a job id\n");
            return 2;
        }
        j = id != NULL ? quarantine_show(q, id) : quarantine_list(q);
        if (j == NULL) {
            fprintf(stderr, "leadbridge: %s\n", id != NULL ? "no such job in quarantine"
                                                           : "cannot read the quarantine");
            return 1;
        }
        if (o->json || id != NULL) {
            json_dumpf(j, stdout, JSON_INDENT(2));
            putchar('\n');
        } else {
            json_array_foreach(j, i, item)
                printf("%s  %-16s  %-20s  quarantined %lld\n",
                       json_string_value(json_object_get(item, "id")),
                       json_string_value(json_object_get(item, "form")),
                       json_string_value(json_object_get(item, "reason")),
                       (long long)json_integer_value(json_object_get(item, "quarantined")));
            if (json_array_size(j) == 0)
                printf("the quarantine is empty\n");
        }
        json_decref(j);
        return 0;
    }
    if (strcmp(cmd, "release") == 0 && (id != NULL || o->all)) {
        if (id != NULL) {
            e = quarantine_release(q, ob, id, o->now);
            count = e == LB_OK;
        } else {
            e = quarantine_release_all(q, ob, o->now, &count);
        }
        if (e != LB_OK) {
            fprintf(stderr, "leadbridge: queue spam release: %s\n",
                    e == LB_ERR_NOT_FOUND ? "no such job in quarantine" : lb_strerror(e));
            return 1;
        }
        printf(o->json ? "{\"released\": %zu}\n" : "%zu job(s) released into the outbox\n",
               count);
        return 0;
    }
    if (strcmp(cmd, "purge") == 0 && (id != NULL || o->all || o->older_than_days >= 0)) {
        e = quarantine_purge(q, id, o->all ? 0 : o->older_than_days * 86400, o->now, &count);
        if (e != LB_OK) {
            fprintf(stderr, "leadbridge: queue spam purge: %s\n",
                    e == LB_ERR_NOT_FOUND ? "no such job in quarantine" : lb_strerror(e));
            return 1;
        }
        printf(o->json ? "{\"purged\": %zu}\n" : "%zu job(s) removed from quarantine\n", count);
        return 0;
    }
    fprintf(stderr, "leadbridge: queue spam takes list, show ID, release ID|--all, "
                    "purge ID|--all|--older-than DAYS\n");
    return 2;
}

/* Runs one queue command; returns the exit status. */
static int queue_command(const struct config *cfg, struct outbox *ob,
                         const struct spool_extras *extras, int argc, char **argv,
                         const struct queue_opts *o)
{
    const char *cmd = argc > 0 ? argv[0] : "list";
    json_t *j = NULL;
    size_t count = 0;
    enum lb_err e;

    if (strcmp(cmd, "spam") == 0)
        return spam_command(ob, extras->quarantine, argc - 1, argv + 1, o);
    if (strcmp(cmd, "list") == 0) {
        size_t i;
        json_t *item;

        j = outbox_list(ob);
        if (j == NULL)
            return 1;
        if (o->json) {
            json_dumpf(j, stdout, JSON_INDENT(2));
            putchar('\n');
        } else {
            json_array_foreach(j, i, item)
                print_summary(item);
            if (json_array_size(j) == 0)
                printf("the outbox is empty\n");
        }
        json_decref(j);
        return 0;
    }
    if (strcmp(cmd, "show") == 0) {
        if (argc < 2 || !outbox_id_valid(argv[1])) {
            fprintf(stderr, "leadbridge: queue show takes a job id (32 hex digits)\n");
            return 2;
        }
        j = outbox_show(ob, argv[1]);
        if (j == NULL) {
            fprintf(stderr, "leadbridge: no job %s\n", argv[1]);
            return 1;
        }
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
        return 0;
    }
    if (strcmp(cmd, "retry") == 0) {
        if (o->all) {
            e = outbox_retry_all(ob, o->now, &count);
        } else if (argc >= 2 && outbox_id_valid(argv[1])) {
            e = outbox_retry(ob, argv[1], o->now);
            count = e == LB_OK;
        } else {
            fprintf(stderr, "leadbridge: queue retry takes a job id or --all\n");
            return 2;
        }
        if (e != LB_OK) {
            fprintf(stderr, "leadbridge: retry: %s\n", lb_strerror(e));
            return 1;
        }
        printf(o->json ? "{\"retried\": %zu}\n" : "%zu job(s) due now\n", count);
        return 0;
    }
    if (strcmp(cmd, "purge") == 0) {
        if ((!o->dead && !o->done) || o->older_than_days < 0) {
            fprintf(stderr, "leadbridge: queue purge takes --dead and/or --done, and "
                            "--older-than DAYS\n");
            return 2;
        }
        e = outbox_purge(ob, o->dead, o->done, o->older_than_days * 86400, o->now, &count);
        if (e != LB_OK) {
            fprintf(stderr, "leadbridge: purge: %s\n", lb_strerror(e));
            return 1;
        }
        printf(o->json ? "{\"purged\": %zu}\n" : "%zu record(s) removed\n", count);
        return 0;
    }
    if (strcmp(cmd, "stats") == 0)
        return monitor_print_stats(ob, o->json, o->now, stdout);
    if (strcmp(cmd, "run") == 0) {
        struct retry_ctx ctx = {cfg, http_client_new(), o->now, extras->limits};
        struct outbox_run_stats st;

        memset(&st, 0, sizeof(st));
        if (ctx.http == NULL)
            return 1;
        e = outbox_run(ob, o->now, retry_deliver, &ctx, 0, &st);
        http_client_free(ctx.http);
        notify_drain(ob);
        if (e != LB_OK) {
            fprintf(stderr, "leadbridge: queue run: %s\n", lb_strerror(e));
            return 1;
        }
        if (o->json)
            printf("{\"delivered\": %zu, \"done\": %zu, \"retried\": %zu, \"dead\": %zu, "
                   "\"busy\": %zu, \"next_due\": %lld}\n",
                   st.delivered, st.done, st.retried, st.dead, st.busy, st.next_due);
        else
            printf("%zu delivered, %zu done, %zu to retry later, %zu dead, %zu busy\n",
                   st.delivered, st.done, st.retried, st.dead, st.busy);
        return 0;
    }
    fprintf(stderr, "leadbridge: unknown queue command \"%s\" (list, show, stats, retry, purge, "
                    "run, spam)\n",
            cmd);
    return 2;
}

/* `leadbridge db migrate|status`: the PostgreSQL outbox's schema. Returns the exit status. */
static int db_subcommand(const struct config *cfg, int argc, char **argv)
{
    const char *cmd = argc > 0 ? argv[0] : "";
    struct lb_error err = {LB_OK, ""};
    enum lb_err e;

    if (strcmp(cmd, "migrate") != 0 && strcmp(cmd, "status") != 0) {
        fprintf(stderr, "leadbridge: db takes migrate or status\n");
        return 2;
    }
    if (cfg->outbox.store != OUTBOX_STORE_POSTGRESQL) {
        fprintf(stderr, "leadbridge: db: this config keeps the outbox in a spool directory, not "
                        "in PostgreSQL (\"outbox\": {\"store\": \"postgresql\", \"dsn\": ...})\n");
        return 2;
    }
    e = strcmp(cmd, "migrate") == 0 ? db_migrate(cfg->outbox.dsn, stdout, &err)
                                    : db_status(cfg->outbox.dsn, stdout, &err);
    if (e != LB_OK) {
        fprintf(stderr, "leadbridge: db %s: %s\n", cmd, err.message);
        return 1;
    }
    return 0;
}

/* Whether any form delivers leads, or monitoring is on (echo forms alone need no spool). */
static bool needs_outbox(const struct config *cfg)
{
    if (cfg->monitor.metrics_path != NULL || cfg->monitor.health_path != NULL)
        return true;
    for (size_t i = 0; i < cfg->n_forms; i++)
        if (cfg->forms[i].action != FORM_ECHO)
            return true;
    return false;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: leadbridge [-c FILE] [-s unix:/PATH | -s HOST:PORT] [-t THREADS]\n"
            "       leadbridge --check [-c FILE]\n"
            "       leadbridge --dry-run [-c FILE] < body   (CGI environment)\n"
            "       leadbridge queue list|show ID|stats|retry ID|retry --all|run [--json] [-c FILE]\n"
            "       leadbridge queue purge --dead|--done --older-than DAYS [-c FILE]\n"
            "       leadbridge db migrate|status [-c FILE]   (the PostgreSQL outbox's schema)\n"
            "       leadbridge queue spam list|show ID|release ID|--all|purge ID|--all|\n"
            "                             --older-than DAYS [--json] [-c FILE]\n"
            "\n"
            "Turns website form posts into leads in lead-management APIs. Runs as a FastCGI\n"
            "responder (own socket with -s, inherited socket on fd 0, or systemd's LISTEN_FDS)\n"
            "or, started by a web server as a CGI script, for one request.\n"
            "\n"
            "  -c, --config FILE   configuration (default $LEADBRIDGE_CONFIG, else %s)\n"
            "  -s, --socket ADDR   listen on unix:/path or HOST:PORT\n"
            "  -t, --threads N     worker threads (default: \"threads\" in the config, else 8)\n"
            "      --check         check the configuration and exit\n"
            "      --dry-run       read one request as CGI does, print the lead and the payload\n"
            "                      each target would receive; send nothing\n"
            "      --json          queue commands: answer in JSON\n"
            "      --all, --dead, --done, --older-than DAYS   see leadbridge(8)\n"
            "  -v, --verbose       log debug messages\n"
            "  -V, --version       print the version\n"
            "  -h, --help          this text\n"
            "\nSee leadbridge(8) and leadbridge.conf(5).\n",
            DEFAULT_CONFIG);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"socket", required_argument, NULL, 's'},
        {"threads", required_argument, NULL, 't'}, {"check", no_argument, NULL, 'C'},
        {"dry-run", no_argument, NULL, 'D'},       {"verbose", no_argument, NULL, 'v'},
        {"version", no_argument, NULL, 'V'},       {"help", no_argument, NULL, 'h'},
        {"json", no_argument, NULL, 'J'},          {"all", no_argument, NULL, 'A'},
        {"dead", no_argument, NULL, 'X'},          {"done", no_argument, NULL, 'Y'},
        {"older-than", required_argument, NULL, 'O'}, {"now", required_argument, NULL, 'N'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = getenv("LEADBRIDGE_CONFIG");
    const char *socket_spec = NULL;
    bool check = false, dry_run = false;
    int threads = 0, opt, rc = 1, listen_fd = 0;
    struct config *cfg = NULL;
    struct outbox *ob = NULL;
    struct spool_extras extras = {NULL, NULL};
    struct queue_opts qo = {false, false, false, false, -1, (long long)time(NULL)};
    bool queue = false, db = false;
    struct diag d;
    const char *listen_pid;

    while ((opt = getopt_long(argc, argv, "c:s:t:vVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': config_path = optarg; break;
        case 's': socket_spec = optarg; break;
        case 't': {
            char *end;
            long n = strtol(optarg, &end, 10);

            if (*end != '\0' || n < 1 || n > 1024) {
                fprintf(stderr, "leadbridge: -t takes a number from 1 to 1024\n");
                return 2;
            }
            threads = (int)n;
            break;
        }
        case 'C': check = true; break;
        case 'D': dry_run = true; break;
        case 'v': log_set_level(LOG_DEBUG); break;
        case 'J': qo.json = true; break;
        case 'A': qo.all = true; break;
        case 'X': qo.dead = true; break;
        case 'Y': qo.done = true; break;
        case 'O':
        case 'N': {
            char *end;
            long long n = strtoll(optarg, &end, 10);

            if (*end != '\0' || n < 0) {
                fprintf(stderr, "leadbridge: --%s takes a whole number\n",
                        opt == 'O' ? "older-than" : "now");
                return 2;
            }
            if (opt == 'O')
                qo.older_than_days = n;
            else
                qo.now = n;
            break;
        }
        case 'V': printf("leadbridge %s\n", PACKAGE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc && strcmp(argv[optind], "queue") == 0) {
        queue = true;
        optind++;
    } else if (optind < argc && strcmp(argv[optind], "db") == 0) {
        db = true;
        optind++;
    } else if (optind < argc) {
        fprintf(stderr, "leadbridge: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (config_path == NULL || *config_path == '\0')
        config_path = DEFAULT_CONFIG;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "leadbridge: libcurl could not start\n");
        return 1;
    }
    diag_init(&d, config_path, NULL, 0);
    cfg = config_load(config_path, &d);
    if (cfg == NULL) {
        diag_print(&d, stderr);
        fprintf(stderr, "leadbridge: %s: configuration has %zu problem%s\n", config_path, d.count,
                d.count == 1 ? "" : "s");
        goto out;
    }
    if (check) {
        printf("%s: ok (%zu forms, %zu targets", config_path, cfg->n_forms, cfg->n_targets);
        printf(cfg->n_files > 1 ? ", %zu files)\n" : ")\n", cfg->n_files);
        rc = 0;
        goto out;
    }
    if (db) {
        rc = db_subcommand(cfg, argc - optind, argv + optind);
        goto out;
    }
    if (queue || (!dry_run && needs_outbox(cfg))) {
        struct lb_error err = {LB_OK, ""};
        struct outbox_conf oc = cfg->outbox;

        if (oc.connections == 0) /* each worker thread, the retry thread and some slack */
            oc.connections = (size_t)(threads > 0 ? threads : cfg->threads) + 4;
        ob = outbox_open(cfg->spool_dir, &oc, &err);
        if (ob != NULL)
            extras.quarantine = quarantine_open(cfg->spool_dir, cfg->spam_retention, &oc, &err);
        if (extras.quarantine != NULL)
            extras.limits = ratelimit_open(cfg->spool_dir, cfg->shared_slots, &err);
        if (ob == NULL || extras.quarantine == NULL || extras.limits == NULL) {
            if (ob == NULL && oc.store == OUTBOX_STORE_POSTGRESQL)
                fprintf(stderr, "leadbridge: outbox (postgresql): %s\n", err.message);
            else
                fprintf(stderr, "leadbridge: spool %s: %s\n", cfg->spool_dir, err.message);
            goto out;
        }
        if (metrics_open(outbox_dir(ob), &err) != LB_OK)
            fprintf(stderr, "leadbridge: metrics are off: %s\n", err.message);
        if (notify_open(outbox_dir(ob), &err) != LB_OK)
            fprintf(stderr, "leadbridge: notices are limited per process: %s\n", err.message);
        notify_configure(&cfg->notify);
        outbox_set_dead_hook(ob, notify_dead, NULL);
    }
    if (queue) {
        rc = queue_command(cfg, ob, &extras, argc - optind, argv + optind, &qo);
        goto out;
    }
    if (FCGX_Init() != 0) {
        fprintf(stderr, "leadbridge: FastCGI library could not start\n");
        goto out;
    }
    if (dry_run) {
        rc = serve_cgi(cfg, NULL, &extras, true);
        goto out;
    }
    if (threads == 0)
        threads = cfg->threads;

    listen_pid = getenv("LISTEN_PID");
    if (socket_spec != NULL) {
        /* The stop signals are for the signal thread alone, from the moment anyone can connect
         * (a supervisor may send SIGTERM as soon as we accept): every thread inherits this. */
        sigset_t stop;

        sigemptyset(&stop);
        sigaddset(&stop, SIGTERM);
        sigaddset(&stop, SIGINT);
        sigaddset(&stop, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &stop, NULL);
        listen_fd = open_listen_socket(socket_spec);
        if (listen_fd < 0)
            goto out;
    } else if (listen_pid != NULL && atol(listen_pid) == (long)getpid() &&
               getenv("LISTEN_FDS") != NULL && atoi(getenv("LISTEN_FDS")) >= 1) {
        listen_fd = 3; /* systemd socket activation: SD_LISTEN_FDS_START */
    } else if (FCGX_IsCGI()) {
        if (getenv("GATEWAY_INTERFACE") == NULL && getenv("REQUEST_METHOD") == NULL) {
            fprintf(stderr, "leadbridge: not started by a web server: give -s ADDR to serve "
                            "FastCGI, or see --help\n");
            goto out;
        }
        rc = serve_cgi(cfg, ob, &extras, false);
        notify_drain(ob);
        goto out;
    }
    if (notify_start(ob) != LB_OK)
        log_msg(LOG_WARN, "notify: the sending thread did not start");
    live_init(cfg, config_path); /* from here on live.c owns cfg (SIGHUP swaps it) */
    rc = serve_fastcgi(cfg, ob, &extras, listen_fd, socket_spec != NULL, threads);
    cfg = NULL;
    live_shutdown();
    notify_stop();
out:
    notify_close();
    metrics_close();
    quarantine_close(extras.quarantine);
    ratelimit_close(extras.limits);
    outbox_close(ob);
    diag_free(&d);
    config_free(cfg);
    curl_global_cleanup();
    return rc;
}
