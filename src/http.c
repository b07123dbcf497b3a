/*
 * http.c: outgoing HTTP calls to lead APIs through one reused libcurl easy handle per thread.
 *
 * A call is plain data (struct http_call) built by a target; http_perform() resets the handle's
 * options (curl_easy_reset keeps live connections, so keep-alive survives), applies the call's
 * timeouts, limits protocols to http and https, follows no redirects, caps the response body at
 * HTTP_MAX_RESPONSE and reads Retry-After / X-RateLimit-Reset from the final response's headers.
 * A transport failure's message starts with a plain reason ("could not connect", "connected, but
 * the API closed the connection without answering", ...), then libcurl's text, but never the
 * URL's query or a header value.
 */
#include "http.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "buf.h"

#define HTTP_DEFAULT_CONNECT_MS 3000L
#define HTTP_DEFAULT_TIMEOUT_MS 15000L
#define HTTP_MAX_HEADER_LINE 8192
/* A delay beyond this is treated as this (one day). */
#define HTTP_MAX_DELAY 86400LL

struct http_client {
    CURL *curl;
    char errbuf[CURL_ERROR_SIZE];
};

/* What the callbacks fill while a transfer runs. */
struct http_transfer {
    struct buf body;
    bool too_large;
    long long retry_after;
    long long rate_limit_reset;
};

struct http_client *http_client_new(void)
{
    struct http_client *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->curl = curl_easy_init();
    if (c->curl == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

void http_client_free(struct http_client *c)
{
    if (c == NULL)
        return;
    curl_easy_cleanup(c->curl);
    free(c);
}

/* Whether name is an HTTP token (RFC 9110 tchar), which rules out ':', spaces, CR, LF. */
static bool http_is_token(const char *name)
{
    const unsigned char *p = (const unsigned char *)name;

    if (*p == '\0')
        return false;
    for (; *p != '\0'; p++) {
        if (isalnum(*p))
            continue;
        if (strchr("!#$%&'*+-.^_`|~", *p) == NULL)
            return false;
    }
    return true;
}

/* Whether value holds only visible characters, spaces and tabs (no CR, LF or other controls). */
static bool http_is_field_value(const char *value)
{
    const unsigned char *p;

    for (p = (const unsigned char *)value; *p != '\0'; p++) {
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    }
    return true;
}

bool http_header_valid(const char *name, const char *value)
{
    return name != NULL && value != NULL && http_is_token(name) && http_is_field_value(value) &&
           strlen(name) + strlen(value) <= HTTP_MAX_HEADER_LINE;
}

enum lb_err http_call_add_header(struct http_call *call, const char *name, const char *value)
{
    size_t len;
    char *line;
    int n;

    if (call == NULL || name == NULL || value == NULL)
        return LB_ERR_INTERNAL;
    if (!http_header_valid(name, value))
        return LB_ERR_BAD_REQUEST;
    if (call->n_headers >= HTTP_MAX_HEADERS)
        return LB_ERR_INTERNAL;
    len = strlen(name) + strlen(value) + 3;
    line = malloc(len);
    if (line == NULL)
        return LB_ERR_NOMEM;
    n = snprintf(line, len, "%s: %s", name, value);
    if (n < 0 || (size_t)n >= len) {
        free(line);
        return LB_ERR_INTERNAL;
    }
    call->headers[call->n_headers++] = line;
    return LB_OK;
}

void http_call_free(struct http_call *call)
{
    size_t i;

    if (call == NULL)
        return;
    for (i = 0; i < call->n_headers && i < HTTP_MAX_HEADERS; i++) {
        free(call->headers[i]);
        call->headers[i] = NULL;
    }
    call->n_headers = 0;
    free(call->body);
    call->body = NULL;
    call->body_len = 0;
}

void http_reply_free(struct http_reply *reply)
{
    if (reply == NULL)
        return;
    free(reply->body);
    reply->body = NULL;
    reply->body_len = 0;
}

static size_t http_on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct http_transfer *t = userdata;
    size_t n = size * nmemb;

    if (buf_append(&t->body, data, n) != LB_OK) {
        t->too_large = true;
        return 0;
    }
    return n;
}

/* Parses a run of decimal digits (at most 18) into *out. Returns false for anything else. */
static bool http_parse_digits(const char *s, long long *out)
{
    long long v = 0;
    size_t n = 0;

    for (; *s >= '0' && *s <= '9'; s++, n++) {
        if (n >= 18)
            return false;
        v = v * 10 + (*s - '0');
    }
    if (n == 0 || *s != '\0')
        return false;
    *out = v;
    return true;
}

/*
 * Retry-After value → seconds from now, or -1. Accepts delta-seconds and the IMF-fixdate form
 * ("Wed, 21 Oct 2015 07:28:00 GMT"); a date in the past gives 0. Capped at HTTP_MAX_DELAY.
 */
static long long http_parse_retry_after(const char *v, time_t now)
{
    long long secs;
    struct tm tm;
    const char *end;
    time_t when;

    if (http_parse_digits(v, &secs))
        return secs > HTTP_MAX_DELAY ? HTTP_MAX_DELAY : secs;
    memset(&tm, 0, sizeof(tm));
    end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return -1;
    when = timegm(&tm);
    if (when == (time_t)-1)
        return -1;
    secs = (long long)when - (long long)now;
    if (secs < 0)
        return 0;
    return secs > HTTP_MAX_DELAY ? HTTP_MAX_DELAY : secs;
}

/*
 * X-RateLimit-Reset → epoch seconds, or -1. The documented form is epoch seconds; some APIs send
 * seconds-until-reset instead, which no real epoch value can be confused with (< 10^9), so small
 * values are taken as a delay from now.
 */
static long long http_parse_rate_limit_reset(const char *v, time_t now)
{
    long long n;

    if (!http_parse_digits(v, &n))
        return -1;
    if (n < 1000000000LL)
        return (long long)now + (n > HTTP_MAX_DELAY ? HTTP_MAX_DELAY : n);
    return n;
}

/*
 * Called by libcurl once per header line of every response (interim and final). A status line
 * starts a new response, so only the final one's rate-limit headers count.
 */
static size_t http_on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct http_transfer *t = userdata;
    size_t n = size * nmemb, name_len, vlen;
    char value[128];
    const char *colon, *v, *end;

    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        t->retry_after = -1;
        t->rate_limit_reset = -1;
        return n;
    }
    colon = memchr(data, ':', n);
    if (colon == NULL)
        return n;
    name_len = (size_t)(colon - data);
    v = colon + 1;
    end = data + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    vlen = (size_t)(end - v);
    if (vlen >= sizeof(value) || memchr(v, '\0', vlen) != NULL)
        return n;
    memcpy(value, v, vlen);
    value[vlen] = '\0';
    if (name_len == 11 && strncasecmp(data, "Retry-After", 11) == 0)
        t->retry_after = http_parse_retry_after(value, time(NULL));
    else if (name_len == 17 && strncasecmp(data, "X-RateLimit-Reset", 17) == 0)
        t->rate_limit_reset = http_parse_rate_limit_reset(value, time(NULL));
    return n;
}

/* Whether any of the call's header lines already names header (case-insensitive). */
static bool http_call_has_header(const struct http_call *call, const char *header)
{
    size_t i, len = strlen(header);

    for (i = 0; i < call->n_headers && i < HTTP_MAX_HEADERS; i++) {
        if (call->headers[i] != NULL && strncasecmp(call->headers[i], header, len) == 0 &&
            call->headers[i][len] == ':')
            return true;
    }
    return false;
}

/* Builds the request's header list. Returns NULL on allocation failure. */
static struct curl_slist *http_header_list(const struct http_call *call)
{
    struct curl_slist *list = NULL, *next;
    size_t i;

    for (i = 0; i < call->n_headers && i < HTTP_MAX_HEADERS; i++) {
        if (call->headers[i] == NULL)
            continue;
        next = curl_slist_append(list, call->headers[i]);
        if (next == NULL)
            goto fail;
        list = next;
    }
    if (call->body != NULL && !http_call_has_header(call, "Content-Type")) {
        next = curl_slist_append(list, "Content-Type: application/json");
        if (next == NULL)
            goto fail;
        list = next;
    }
    next = curl_slist_append(list, "Expect:");
    if (next == NULL)
        goto fail;
    return next;

fail:
    curl_slist_free_all(list);
    return NULL;
}

/*
 * Copies libcurl's error text into out with control characters replaced, unless it holds the
 * URL's query or one of the header values (these may carry keys): then out stays empty.
 */
static void http_safe_error(const struct http_call *call, const char *err, char *out, size_t size)
{
    const char *query;
    size_t i;

    out[0] = '\0';
    if (call == NULL || err == NULL || err[0] == '\0')
        return;
    query = strchr(call->url, '?');
    if (query != NULL && query[1] != '\0' && strstr(err, query + 1) != NULL)
        return;
    for (i = 0; i < call->n_headers && i < HTTP_MAX_HEADERS; i++) {
        const char *colon = call->headers[i] != NULL ? strchr(call->headers[i], ':') : NULL;

        if (colon == NULL)
            continue;
        colon++;
        while (*colon == ' ')
            colon++;
        if (strlen(colon) >= 4 && strstr(err, colon) != NULL)
            return;
    }
    for (i = 0; err[i] != '\0' && i + 1 < size; i++)
        out[i] = (unsigned char)err[i] < 0x20 ? ' ' : err[i];
    out[i] = '\0';
}

/* Records a transport failure in reply: code, curl's short text and its detailed message. */
static void http_fail(struct http_reply *reply, const struct http_call *call, enum lb_err code,
                      const char *what, const char *detail)
{
    char safe[CURL_ERROR_SIZE];
    int n;

    reply->transport = code;
    http_safe_error(call, detail, safe, sizeof(safe));
    if (safe[0] != '\0')
        n = snprintf(reply->transport_message, sizeof(reply->transport_message), "%s: %s", what,
                     safe);
    else
        n = snprintf(reply->transport_message, sizeof(reply->transport_message), "%s", what);
    if (n < 0)
        reply->transport_message[0] = '\0';
}

/*
 * Plain reasons for libcurl's transport failures, for a person reading a dead letter: what
 * happened on the wire, in the order it can happen (name, connection, request, answer).
 */
static const struct http_reason {
    CURLcode code;
    enum lb_err err;
    const char *reason;
} http_reasons[] = {
    {CURLE_URL_MALFORMAT, LB_ERR_UPSTREAM, "the API's URL is malformed"},
    {CURLE_COULDNT_RESOLVE_PROXY, LB_ERR_UPSTREAM, "could not resolve the proxy's host name"},
    {CURLE_COULDNT_RESOLVE_HOST, LB_ERR_UPSTREAM, "could not resolve the API's host name"},
    {CURLE_COULDNT_CONNECT, LB_ERR_UPSTREAM, "could not connect"},
    {CURLE_OPERATION_TIMEDOUT, LB_ERR_TIMEOUT, "timed out"},
    {CURLE_SSL_CONNECT_ERROR, LB_ERR_UPSTREAM, "connected, but the TLS handshake failed"},
    {CURLE_PEER_FAILED_VERIFICATION, LB_ERR_UPSTREAM,
     "connected, but the API's TLS certificate could not be verified"},
    {CURLE_SSL_CACERT_BADFILE, LB_ERR_UPSTREAM, "the CA certificates could not be read"},
    {CURLE_SEND_ERROR, LB_ERR_UPSTREAM,
     "connected, but the connection failed while sending the request"},
    {CURLE_GOT_NOTHING, LB_ERR_UPSTREAM,
     "connected, but the API closed the connection without answering"},
    {CURLE_RECV_ERROR, LB_ERR_UPSTREAM,
     "connected, but the connection failed while reading the answer"},
    {CURLE_PARTIAL_FILE, LB_ERR_UPSTREAM, "the API's answer was cut short"},
    {CURLE_WEIRD_SERVER_REPLY, LB_ERR_UPSTREAM, "the API's answer was not HTTP"},
    /* An answer without a status line is HTTP/0.9, which libcurl refuses with this code. */
    {CURLE_UNSUPPORTED_PROTOCOL, LB_ERR_UPSTREAM, "the API's answer was not HTTP"},
    {CURLE_HTTP2, LB_ERR_UPSTREAM, "the API's HTTP/2 framing was broken"},
    {CURLE_HTTP2_STREAM, LB_ERR_UPSTREAM, "the API reset its HTTP/2 stream"},
    {CURLE_BAD_CONTENT_ENCODING, LB_ERR_UPSTREAM, "the API's answer had a broken encoding"},
    {CURLE_OUT_OF_MEMORY, LB_ERR_UPSTREAM, "out of memory"},
};

/* Records transport failure rc in reply: its plain reason, then libcurl's words. */
static void http_fail_curl(struct http_reply *reply, const struct http_call *call, CURLcode rc,
                           const char *errbuf)
{
    const char *reason = "the call failed";
    enum lb_err err = LB_ERR_UPSTREAM;
    size_t i;

    for (i = 0; i < sizeof(http_reasons) / sizeof(http_reasons[0]); i++) {
        if (http_reasons[i].code == rc) {
            reason = http_reasons[i].reason;
            err = http_reasons[i].err;
            break;
        }
    }
    http_fail(reply, call, err, reason,
              errbuf != NULL && errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc));
}

/* Sets the method and body. Returns CURLE_OK or the first failing option's code. */
static CURLcode http_set_method(CURL *curl, const struct http_call *call)
{
    CURLcode rc = CURLE_OK;
    const char *m = call->method != NULL ? call->method : "GET";
    bool has_body = call->body != NULL;

    if (strcmp(m, "GET") == 0 && !has_body)
        return curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    if (strcmp(m, "POST") != 0) {
        rc = curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, m);
        if (rc != CURLE_OK || !has_body)
            return rc;
    }
    rc = curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                          (curl_off_t)(has_body ? call->body_len : 0));
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_POSTFIELDS, has_body ? call->body : "");
    return rc;
}

/* Applies every option of one call to the reset handle. Returns the first failure. */
static CURLcode http_setup(CURL *curl, char *errbuf, const struct http_call *call,
                           struct curl_slist *headers, struct http_transfer *t)
{
    long connect_ms = call->connect_timeout_ms > 0 ? call->connect_timeout_ms
                                                   : HTTP_DEFAULT_CONNECT_MS;
    long total_ms = call->timeout_ms > 0 ? call->timeout_ms : HTTP_DEFAULT_TIMEOUT_MS;
    CURLcode rc;

    rc = curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_URL, call->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS,
                              (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, total_ms);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_USERAGENT, PACKAGE_NAME "/" PACKAGE_VERSION);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    if (rc == CURLE_OK)
        rc = http_set_method(curl, call);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, http_on_body);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_WRITEDATA, t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, http_on_header);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_HEADERDATA, t);
    return rc;
}

/*
 * Runs call on c's handle and fills *reply (which the caller frees with http_reply_free; it is
 * reset here first). Returns reply->transport: LB_OK when any HTTP answer came, whatever its
 * status; LB_ERR_TIMEOUT; or LB_ERR_UPSTREAM for every other failure (connect, TLS, a response
 * over HTTP_MAX_RESPONSE, set-up). The handle's connections are kept for the next call.
 */
/* Empties *reply and *t before a transfer. */
static void http_begin(struct http_reply *reply, struct http_transfer *t)
{
    memset(reply, 0, sizeof(*reply));
    reply->retry_after = -1;
    reply->rate_limit_reset = -1;
    reply->transport = LB_OK;
    buf_init(&t->body, HTTP_MAX_RESPONSE);
    t->too_large = false;
    t->retry_after = -1;
    t->rate_limit_reset = -1;
}

/*
 * Checks call and prepares curl for it (reset first): the header list goes to *headers (caller
 * frees). Returns false with reply failed when the call cannot be made.
 */
static bool http_prepare(CURL *curl, char *errbuf, const struct http_call *call,
                         struct curl_slist **headers, struct http_transfer *t,
                         struct http_reply *reply)
{
    CURLcode rc;

    *headers = NULL;
    if (curl == NULL || call == NULL) {
        http_fail(reply, call, LB_ERR_UPSTREAM, "no HTTP client or call", NULL);
        return false;
    }
    if (strncmp(call->url, "http://", 7) != 0 && strncmp(call->url, "https://", 8) != 0) {
        http_fail(reply, call, LB_ERR_UPSTREAM, "only http and https URLs are allowed", NULL);
        return false;
    }
    curl_easy_reset(curl);
    errbuf[0] = '\0';
    *headers = http_header_list(call);
    if (*headers == NULL) {
        http_fail(reply, call, LB_ERR_UPSTREAM, "out of memory", NULL);
        return false;
    }
    rc = http_setup(curl, errbuf, call, *headers, t);
    if (rc != CURLE_OK) {
        http_fail(reply, call, LB_ERR_UPSTREAM, "request set-up failed", curl_easy_strerror(rc));
        return false;
    }
    return true;
}

/* Fills *reply from a finished transfer (rc is its result). */
static void http_conclude(CURL *curl, const char *errbuf, const struct http_call *call,
                          CURLcode rc, struct http_transfer *t, struct http_reply *reply)
{
    long status = 0;

    if (curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
        status = 0;
    reply->status = status;
    if (t->too_large)
        http_fail(reply, call, LB_ERR_UPSTREAM, "response too large", NULL);
    else if (rc != CURLE_OK)
        http_fail_curl(reply, call, rc, errbuf);
    if (reply->transport != LB_OK)
        return;
    reply->retry_after = t->retry_after;
    reply->rate_limit_reset = t->rate_limit_reset;
    if (t->body.len > 0) {
        reply->body_len = t->body.len;
        reply->body = buf_steal(&t->body);
        if (reply->body == NULL) {
            reply->body_len = 0;
            http_fail(reply, call, LB_ERR_UPSTREAM, "out of memory", NULL);
        }
    }
}

enum lb_err http_perform(struct http_client *c, const struct http_call *call,
                         struct http_reply *reply)
{
    struct http_transfer t;
    struct curl_slist *headers = NULL;

    http_begin(reply, &t);
    if (c != NULL && http_prepare(c->curl, c->errbuf, call, &headers, &t, reply))
        http_conclude(c->curl, c->errbuf, call, curl_easy_perform(c->curl), &t, reply);
    else if (c == NULL)
        http_fail(reply, call, LB_ERR_UPSTREAM, "no HTTP client or call", NULL);
    buf_free(&t.body);
    curl_slist_free_all(headers);
    return reply->transport;
}

/* ---- the event loop: calls whose callers do not wait on a thread ---- */

/* One call in the loop. */
struct http_async {
    CURL *curl;
    struct http_call call;       /* owned */
    struct curl_slist *headers;
    struct http_transfer t;
    struct http_reply reply;
    char errbuf[CURL_ERROR_SIZE];
    http_done_fn done;
    void *ctx;
    struct http_async *next;     /* in the submission queue */
};

struct http_loop {
    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t mu;          /* guards incoming, stopping */
    struct http_async *incoming; /* submitted, not yet added to multi (LIFO is fine) */
    bool stopping;
    size_t active;               /* transfers in multi (loop thread only) */
};

/* Ends one call: fills its reply, calls back, frees everything. Loop thread only. */
static void http_async_end(struct http_loop *l, struct http_async *a, CURLcode rc, bool added)
{
    if (added) {
        (void)curl_multi_remove_handle(l->multi, a->curl);
        http_conclude(a->curl, a->errbuf, &a->call, rc, &a->t, &a->reply);
    }
    a->done(a->ctx, &a->reply);
    http_reply_free(&a->reply);
    buf_free(&a->t.body);
    curl_slist_free_all(a->headers);
    curl_easy_cleanup(a->curl);
    http_call_free(&a->call);
    free(a);
}

/* Moves submitted calls into the multi handle. Loop thread only. */
static void http_loop_take(struct http_loop *l)
{
    struct http_async *a, *next;

    pthread_mutex_lock(&l->mu);
    a = l->incoming;
    l->incoming = NULL;
    pthread_mutex_unlock(&l->mu);
    for (; a != NULL; a = next) {
        next = a->next;
        if (curl_multi_add_handle(l->multi, a->curl) != CURLM_OK) {
            http_fail(&a->reply, &a->call, LB_ERR_UPSTREAM, "could not start the call", NULL);
            http_async_end(l, a, CURLE_OK, false);
            continue;
        }
        (void)curl_easy_setopt(a->curl, CURLOPT_PRIVATE, a);
        l->active++;
    }
}

static void *http_loop_main(void *arg)
{
    struct http_loop *l = arg;

    for (;;) {
        int running = 0, left = 0;
        bool stop;
        CURLMsg *m;

        http_loop_take(l);
        (void)curl_multi_perform(l->multi, &running);
        while ((m = curl_multi_info_read(l->multi, &left)) != NULL) {
            struct http_async *a = NULL;

            if (m->msg != CURLMSG_DONE)
                continue;
            (void)curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&a);
            if (a == NULL)
                continue;
            l->active--;
            http_async_end(l, a, m->data.result, true);
        }
        pthread_mutex_lock(&l->mu);
        stop = l->stopping && l->incoming == NULL && l->active == 0;
        pthread_mutex_unlock(&l->mu);
        if (stop)
            break;
        (void)curl_multi_poll(l->multi, NULL, 0, 1000, NULL);
    }
    return NULL;
}

struct http_loop *http_loop_start(void)
{
    struct http_loop *l = calloc(1, sizeof(*l));

    if (l == NULL)
        return NULL;
    l->multi = curl_multi_init();
    if (l->multi == NULL) {
        free(l);
        return NULL;
    }
    /* HTTP/2 where the API speaks it: one connection carries many calls. */
    (void)curl_multi_setopt(l->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    (void)curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, 4096L);
    pthread_mutex_init(&l->mu, NULL);
    if (pthread_create(&l->thread, NULL, http_loop_main, l) != 0) {
        pthread_mutex_destroy(&l->mu);
        curl_multi_cleanup(l->multi);
        free(l);
        return NULL;
    }
    return l;
}

void http_loop_stop(struct http_loop *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = true;
    pthread_mutex_unlock(&l->mu);
    (void)curl_multi_wakeup(l->multi);
    pthread_join(l->thread, NULL);
    curl_multi_cleanup(l->multi);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

enum lb_err http_loop_submit(struct http_loop *l, struct http_call *call, http_done_fn done,
                             void *ctx)
{
    struct http_async *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        http_call_free(call);
        return LB_ERR_NOMEM;
    }
    a->call = *call;
    memset(call, 0, sizeof(*call));
    a->done = done;
    a->ctx = ctx;
    a->curl = curl_easy_init();
    http_begin(&a->reply, &a->t);
    if (a->curl == NULL ||
        !http_prepare(a->curl, a->errbuf, &a->call, &a->headers, &a->t, &a->reply)) {
        if (a->curl == NULL)
            http_fail(&a->reply, &a->call, LB_ERR_UPSTREAM, "out of memory", NULL);
        /* Answered at once, on this thread: the caller must expect that. */
        a->done(a->ctx, &a->reply);
        http_reply_free(&a->reply);
        buf_free(&a->t.body);
        curl_slist_free_all(a->headers);
        if (a->curl != NULL)
            curl_easy_cleanup(a->curl);
        http_call_free(&a->call);
        free(a);
        return LB_OK;
    }
    /* Over TLS, ALPN tells at the handshake whether a connection speaks HTTP/2: then prefer a
     * stream on it to another connection. (Over plain http:// that is known only from an
     * answer, and waiting for one would queue calls behind a slow API.) */
    if (strncmp(a->call.url, "https://", 8) == 0)
        (void)curl_easy_setopt(a->curl, CURLOPT_PIPEWAIT, 1L);
    pthread_mutex_lock(&l->mu);
    a->next = l->incoming;
    l->incoming = a;
    pthread_mutex_unlock(&l->mu);
    (void)curl_multi_wakeup(l->multi);
    return LB_OK;
}

enum lb_err http_call_set_json(struct http_call *call, const json_t *json, size_t flags,
                               size_t max)
{
    char *text = json_dumps(json, flags);
    size_t len;

    if (text == NULL)
        return LB_ERR_NOMEM;
    len = strlen(text);
    if (len > max) {
        free(text);
        return LB_ERR_TOO_LARGE;
    }
    free(call->body);
    call->body = text;
    call->body_len = len;
    return LB_OK;
}
