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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "config.h"
#include "handler.h"
#include "http.h"
#include "log.h"
#include "rules.h"

#define DEFAULT_CONFIG SYSCONFDIR "/leadbridge/leadbridge.json"

struct server {
    const struct config *cfg;
    int listen_fd;
    pthread_mutex_t accept_lock;
    volatile sig_atomic_t stopping;
};

/* ---- FastCGI streams behind the handler's function types ---- */

static const char *fcgi_env(void *ctx, const char *name)
{
    return FCGX_GetParam(name, ((FCGX_Request *)ctx)->envp);
}

static ssize_t fcgi_read(void *ctx, char *buf, size_t n)
{
    int got = FCGX_GetStr(buf, n > 65536 ? 65536 : (int)n, ((FCGX_Request *)ctx)->in);

    if (got < 0 || FCGX_GetError(((FCGX_Request *)ctx)->in) != 0)
        return -1;
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

/* Handles one request and writes the answer with put (FastCGI or stdio). */
static void serve_one(const struct config *cfg, struct worker *w, env_get_fn env, void *env_ctx,
                      body_read_fn rd, void *rd_ctx, FCGX_Stream *fout, FILE *sout)
{
    struct response res;
    struct log_record rec;
    struct buf out;
    const char *method = env(env_ctx, "REQUEST_METHOD");

    response_init(&res);
    handler_run(cfg, w, env, env_ctx, rd, rd_ctx, &res, &rec);
    buf_init(&out, 4 * 1024 * 1024);
    if (response_serialize(&res, method != NULL && strcmp(method, "HEAD") == 0, &out) != LB_OK) {
        buf_reset(&out);
        buf_puts(&out, "Status: 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n"
                       "{\"error\":{\"code\":\"internal_error\",\"message\":\"internal error\"}}\n");
        rec.status = 500;
    }
    if (fout != NULL)
        FCGX_PutStr(out.data, (int)out.len, fout);
    else
        fwrite(out.data, 1, out.len, sout);
    buf_free(&out);
    log_request(&rec);
    response_free(&res);
}

static void *worker_main(void *arg)
{
    struct server *s = arg;
    struct worker w;
    FCGX_Request req;

    memset(&w, 0, sizeof(w));
    w.http = http_client_new();
    if (w.http == NULL || FCGX_InitRequest(&req, s->listen_fd, FCGI_FAIL_ACCEPT_ON_INTR) != 0) {
        log_msg(LOG_ERROR, "worker could not start");
        http_client_free(w.http);
        return NULL;
    }
    for (;;) {
        int rc;

        pthread_mutex_lock(&s->accept_lock);
        rc = s->stopping ? -1 : FCGX_Accept_r(&req);
        pthread_mutex_unlock(&s->accept_lock);
        if (rc < 0)
            break;
        serve_one(s->cfg, &w, fcgi_env, &req, fcgi_read, &req, req.out, NULL);
        FCGX_Finish_r(&req);
    }
    FCGX_Free(&req, 0);
    http_client_free(w.http);
    rules_thread_cleanup();
    return NULL;
}

/* Waits for SIGTERM/SIGINT/SIGHUP, then wakes every thread blocked in accept(). */
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
        log_msg(LOG_INFO, "signal %d: finishing requests in flight, then stopping", sig);
        s->stopping = 1;
        FCGX_ShutdownPending();
        shutdown(s->listen_fd, SHUT_RDWR);
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
        fd = FCGX_OpenSocket(path, 128);
        /* The web server (another user) must be able to connect; access is local only. */
        if (fd >= 0 && chmod(path, 0666) != 0)
            fprintf(stderr, "leadbridge: chmod %s: %s\n", path, strerror(errno));
    } else {
        fd = FCGX_OpenSocket(spec, 128);
    }
    if (fd < 0)
        fprintf(stderr, "leadbridge: cannot listen on %s\n", spec);
    return fd;
}

static int serve_fastcgi(const struct config *cfg, int listen_fd, int threads)
{
    struct server s;
    pthread_t *tids, sig_tid;
    sigset_t set;
    int started = 0;

    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.listen_fd = listen_fd;
    pthread_mutex_init(&s.accept_lock, NULL);

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pthread_create(&sig_tid, NULL, signal_main, &s) != 0)
        return 1;

    tids = calloc((size_t)threads, sizeof(*tids));
    for (int i = 0; tids != NULL && i < threads; i++) {
        if (pthread_create(&tids[i], NULL, worker_main, &s) != 0)
            break;
        started++;
    }
    log_msg(LOG_INFO, "leadbridge %s serving FastCGI with %d threads, %zu forms", PACKAGE_VERSION,
            started, cfg->n_forms);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    if (!s.stopping)
        pthread_kill(sig_tid, SIGUSR1);
    pthread_join(sig_tid, NULL);
    free(tids);
    pthread_mutex_destroy(&s.accept_lock);
    log_msg(LOG_INFO, "stopped");
    return started == threads ? 0 : 1;
}

/* Plain CGI (and --dry-run): one request from the environment and stdin. */
static int serve_cgi(const struct config *cfg, bool dry_run)
{
    struct worker w;

    memset(&w, 0, sizeof(w));
    w.dry_run = dry_run;
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

static void usage(FILE *out)
{
    fprintf(out,
            "usage: leadbridge [-c FILE] [-s unix:/PATH | -s HOST:PORT] [-t THREADS]\n"
            "       leadbridge --check [-c FILE]\n"
            "       leadbridge --dry-run [-c FILE] < body   (CGI environment)\n"
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
        {NULL, 0, NULL, 0},
    };
    const char *config_path = getenv("LEADBRIDGE_CONFIG");
    const char *socket_spec = NULL;
    bool check = false, dry_run = false;
    int threads = 0, opt, rc = 1, listen_fd = 0;
    struct config *cfg = NULL;
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
        case 'V': printf("leadbridge %s\n", PACKAGE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
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
        printf("%s: ok (%zu forms, %zu targets)\n", config_path, cfg->n_forms, cfg->n_targets);
        rc = 0;
        goto out;
    }
    if (FCGX_Init() != 0) {
        fprintf(stderr, "leadbridge: FastCGI library could not start\n");
        goto out;
    }
    if (dry_run) {
        rc = serve_cgi(cfg, true);
        goto out;
    }
    if (threads == 0)
        threads = cfg->threads;

    listen_pid = getenv("LISTEN_PID");
    if (socket_spec != NULL) {
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
        rc = serve_cgi(cfg, false);
        goto out;
    }
    rc = serve_fastcgi(cfg, listen_fd, threads);
out:
    diag_free(&d);
    config_free(cfg);
    curl_global_cleanup();
    return rc;
}
