/*
 * http.h: one outgoing HTTP call to a lead API, through libcurl.
 *
 * A struct http_client wraps one CURL easy handle, owned by one thread and reused for every call
 * (keep-alive). Targets describe a call as data (struct http_call); http_perform() runs it with
 * CURLOPT_NOSIGNAL, the call's timeouts, and a capped response body.
 */
#ifndef LB_HTTP_H
#define LB_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"

#define HTTP_MAX_HEADERS 8
#define HTTP_MAX_RESPONSE (256 * 1024)

struct http_call {
    const char *method;                 /* "POST", "PATCH", "PUT", "GET" (static) */
    char url[2048];
    char *headers[HTTP_MAX_HEADERS];    /* owned "Name: value" lines, no CR/LF */
    size_t n_headers;
    char *body;                         /* owned; NULL for none */
    size_t body_len;
    long connect_timeout_ms;
    long timeout_ms;
};

struct http_reply {
    long status;              /* 0 when no HTTP answer came */
    char *body;               /* owned, NUL-terminated; NULL when none */
    size_t body_len;
    long long retry_after;    /* seconds from Retry-After, or -1 */
    long long rate_limit_reset; /* epoch seconds from X-RateLimit-Reset, or -1 */
    enum lb_err transport;    /* LB_OK, LB_ERR_TIMEOUT or LB_ERR_UPSTREAM (connect, TLS, ...) */
    /* For a person: a plain reason ("timed out", "could not connect", "connected, but ..."),
     * then ": " and libcurl's words. */
    char transport_message[256];
};

struct http_client;

/* Returns a new client (one per thread), or NULL. curl_global_init must have run. */
struct http_client *http_client_new(void);
void http_client_free(struct http_client *c);

/*
 * Adds "name: value" to call. Returns LB_ERR_BAD_REQUEST if either holds CR, LF or NUL (nothing
 * from a request may inject a header) and LB_ERR_INTERNAL when the header slots are full.
 */
enum lb_err http_call_add_header(struct http_call *call, const char *name, const char *value);
void http_call_free(struct http_call *call);
/*
 * Sets call's body to json (borrowed) serialised with flags (JSON_COMPACT and the like).
 * LB_ERR_NOMEM, or LB_ERR_TOO_LARGE when it is longer than max bytes (then no body is set).
 */
enum lb_err http_call_set_json(struct http_call *call, const json_t *json, size_t flags,
                               size_t max);
/* Whether http_call_add_header would take name and value (to check configured headers early). */
bool http_header_valid(const char *name, const char *value);

/* Performs call. Fills *reply (free with http_reply_free) and returns reply->transport. */
enum lb_err http_perform(struct http_client *c, const struct http_call *call,
                         struct http_reply *reply);
void http_reply_free(struct http_reply *reply);

/*
 * The event loop: one thread running a libcurl multi handle, so that a request waiting on a lead
 * API waits there, not on a worker thread. Connections are kept and shared by every call of the
 * loop, and multiplexed where the API speaks HTTP/2.
 */
struct http_loop;
/*
 * Called once per submitted call with its reply (borrowed: valid during the call only), on the
 * loop's thread, or at once on the submitting thread when the call could not even be started.
 */
typedef void (*http_done_fn)(void *ctx, const struct http_reply *reply);
/* Starts the loop's thread (curl_global_init must have run). NULL on failure. */
struct http_loop *http_loop_start(void);
/* Lets every call in flight finish (each within its own timeout), then stops; NULL: no-op. */
void http_loop_stop(struct http_loop *l);
/* Hands call (its contents are taken over; *call is left empty) to the loop; done is called
 * exactly once. Returns LB_ERR_NOMEM (done is then not called). */
enum lb_err http_loop_submit(struct http_loop *l, struct http_call *call, http_done_fn done,
                             void *ctx);

#endif
