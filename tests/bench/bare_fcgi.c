/*
 * bare_fcgi.c: the baseline for scripts/bench, a FastCGI responder that does as little as a
 * responder can: it reads and discards the request body and answers a fixed small JSON object.
 * It uses the same libfcgi threading as leadbridge (N threads, one FCGX_Request each, accept
 * under a mutex), so the difference in the benchmark is the bridge's own work per request.
 *
 *   bare_fcgi [-s HOST:PORT | -s unix:/path] [-t THREADS]
 *
 * Without -s it serves the socket inherited on fd 0 (spawn-fcgi). SIGTERM/SIGINT stop it: the
 * threads blocked in accept are woken by shutting the listening socket down, and it exits 0.
 * Built by scripts/bench (cc ... -lfcgi -lpthread), not by automake; not installed.
 */
#include <fcgiapp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BARE_MAX_THREADS 1024

static const char bare_answer[] = "Status: 200 OK\r\n"
                                  "Content-Type: application/json\r\n"
                                  "\r\n"
                                  "{\"ok\":true,\"status\":\"bare\"}\n";

struct bare_server {
    int listen_fd;
    pthread_mutex_t accept_lock;
    volatile sig_atomic_t stopping;
};

/* Reads the request body to its end (at most what the client sends) and drops it. */
static void bare_drain(FCGX_Stream *in)
{
    char chunk[8192];

    while (FCGX_GetStr(chunk, (int)sizeof(chunk), in) > 0)
        ;
}

/* One worker thread: accepts requests under the shared lock until accept fails or we stop. */
static void *bare_worker(void *arg)
{
    struct bare_server *s = arg;
    FCGX_Request req;

    if (FCGX_InitRequest(&req, s->listen_fd, FCGI_FAIL_ACCEPT_ON_INTR) != 0)
        return NULL;
    for (;;) {
        int rc;

        pthread_mutex_lock(&s->accept_lock);
        rc = s->stopping ? -1 : FCGX_Accept_r(&req);
        pthread_mutex_unlock(&s->accept_lock);
        if (rc < 0)
            break;
        bare_drain(req.in);
        if (FCGX_PutStr(bare_answer, (int)sizeof(bare_answer) - 1, req.out) < 0)
            fprintf(stderr, "bare_fcgi: write failed\n");
        FCGX_Finish_r(&req);
    }
    FCGX_Free(&req, 0);
    return NULL;
}

/* Waits for SIGTERM/SIGINT (or SIGUSR1, our own wake-up), then stops the accept loops. */
static void *bare_signals(void *arg)
{
    struct bare_server *s = arg;
    sigset_t set;
    int sig = 0;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    if (sigwait(&set, &sig) == 0 && sig != SIGUSR1) {
        s->stopping = 1;
        FCGX_ShutdownPending();
        shutdown(s->listen_fd, SHUT_RDWR);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    struct bare_server s;
    pthread_t tids[BARE_MAX_THREADS], sig_tid;
    const char *spec = NULL;
    sigset_t set;
    int threads = 8, started = 0, opt, rc = 1;

    while ((opt = getopt(argc, argv, "s:t:")) != -1) {
        switch (opt) {
        case 's': spec = optarg; break;
        case 't': threads = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: bare_fcgi [-s HOST:PORT | -s unix:/path] [-t THREADS]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > BARE_MAX_THREADS) {
        fprintf(stderr, "bare_fcgi: -t takes a number from 1 to %d\n", BARE_MAX_THREADS);
        return 2;
    }
    memset(&s, 0, sizeof(s));
    if (FCGX_Init() != 0) {
        fprintf(stderr, "bare_fcgi: FCGX_Init failed\n");
        return 1;
    }
    if (spec != NULL) {
        s.listen_fd = FCGX_OpenSocket(strncmp(spec, "unix:", 5) == 0 ? spec + 5 : spec, 128);
        if (s.listen_fd < 0) {
            fprintf(stderr, "bare_fcgi: cannot listen on %s\n", spec);
            return 1;
        }
    }
    if (pthread_mutex_init(&s.accept_lock, NULL) != 0)
        return 1;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        goto out;
    if (pthread_create(&sig_tid, NULL, bare_signals, &s) != 0)
        goto out;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&tids[i], NULL, bare_worker, &s) != 0)
            break;
        started++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    if (!s.stopping)
        pthread_kill(sig_tid, SIGUSR1);
    pthread_join(sig_tid, NULL);
    rc = started == threads ? 0 : 1;
out:
    pthread_mutex_destroy(&s.accept_lock);
    return rc;
}
