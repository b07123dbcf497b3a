/*
 * handler.h: one request from environment and body to a struct response.
 *
 * route (path → form) → method and size checks → body → parse → attribution → rules →
 * target validation → delivery → response. The caller owns the streams: it passes a function that
 * reads the body, so the same handler serves FastCGI, plain CGI, --dry-run and the tests.
 */
#ifndef LB_HANDLER_H
#define LB_HANDLER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "config.h"
#include "log.h"
#include "request.h"
#include "respond.h"

/* Reads up to n bytes of the body into buf. Returns the count, 0 at the end, -1 on error. */
typedef ssize_t (*body_read_fn)(void *ctx, char *buf, size_t n);

/* What one worker thread owns. */
struct outbox;
struct quarantine;
struct ratelimit;
struct http_loop;

/*
 * Answers a request whose delivery was handed to the event loop (see handler_run): writes out,
 * logs rec and ends the connection conn. Called once, on the loop's thread (or on the worker's,
 * when every call failed to start); out and rec are borrowed for the call.
 */
typedef void (*handler_finish_fn)(void *conn, const struct response *out,
                                  const struct log_record *rec);

struct worker {
    struct http_client *http;
    struct http_loop *loop; /* NULL: deliver on this thread (CGI, --dry-run, queue run) */
    handler_finish_fn finish; /* with loop: how a deferred request is answered */
    void *conn;             /* the current request's connection, for finish */
    bool deferred;          /* set by handler_run: the loop answers; do not touch conn */
    double start_ms;        /* the current request's start (monotonic ms) */
    struct outbox *outbox; /* shared by every worker; NULL only for --dry-run */
    struct quarantine *quarantine; /* spam kept for a person; NULL only for --dry-run */
    struct ratelimit *limits;      /* shared buckets and single-use marks; NULL: not checked */
    bool dry_run;       /* build everything, send nothing, answer with the payloads */
    char request_id[17]; /* the current request's id (for the log record) */
    char detail[256];    /* the current request's log detail (our words only) */
};

/*
 * Handles one request. Fills *out (initialised by the caller) and *rec (for the log line; its
 * strings live until the next call on this worker or worker end). With w->loop set, a request
 * that must wait on a lead API is handed to the event loop once it is durable: w->deferred is
 * then true, *out and *rec are left empty, and w->finish(w->conn, ...) answers it later.
 */
void handler_run(const struct config *cfg, struct worker *w, env_get_fn env, void *env_ctx,
                 body_read_fn read_body, void *read_ctx, struct response *out,
                 struct log_record *rec);

#endif
