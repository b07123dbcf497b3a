/*
 * test_http.c: unit tests for src/http.c against a tiny HTTP server run inside the test.
 *
 * The server is one thread on a 127.0.0.1 ephemeral port: it accepts, reads each request (headers
 * and a Content-Length body), records the bytes, and answers a canned response chosen by the test
 * (or stalls, for the timeout case). Connections stay open until the client closes them or the
 * test's request budget is spent, so keep-alive reuse can be observed.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "http.h"

#define REQ_MAX (2 * 1024 * 1024)

struct server {
    int fd;
    int port;
    pthread_t thread;
    atomic_int stop;
    const char *response; /* canned answer, sent as is */
    size_t response_len;
    int stall_ms;         /* >0: read the request, then wait this long without answering */
    int max_requests;     /* the thread ends after serving this many */
    char *req;            /* every request's bytes, back to back (REQ_MAX) */
    size_t req_len;
    int connections;
    int requests;
};

/* Waits up to ms for fd to be readable. Returns >0 readable, 0 timeout, <0 error. */
static int wait_readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc;

    do {
        rc = poll(&p, 1, ms);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

/* Reads one request into s->req. Returns 1 when one was read, 0 when the peer closed first. */
static int server_read_request(struct server *s, int fd)
{
    size_t start = s->req_len, body = 0, want = 0;
    const char *end, *cl;

    for (;;) {
        ssize_t n;

        if (want > 0 && s->req_len >= want)
            return 1;
        if (wait_readable(fd, 3000) <= 0 || s->req_len >= REQ_MAX - 1)
            return 0;
        n = read(fd, s->req + s->req_len, REQ_MAX - 1 - s->req_len);
        if (n <= 0)
            return 0;
        s->req_len += (size_t)n;
        s->req[s->req_len] = '\0';
        if (want > 0)
            continue;
        end = strstr(s->req + start, "\r\n\r\n");
        if (end == NULL)
            continue;
        body = (size_t)(end - s->req) + 4;
        cl = strcasestr(s->req + start, "\r\nContent-Length:");
        want = body;
        if (cl != NULL && cl < end)
            want += strtoul(cl + 17, NULL, 10);
    }
}

static void *server_main(void *arg)
{
    struct server *s = arg;

    while (!atomic_load(&s->stop) && s->requests < s->max_requests) {
        int fd;

        if (wait_readable(s->fd, 50) <= 0)
            continue;
        fd = accept(s->fd, NULL, NULL);
        if (fd < 0)
            continue;
        s->connections++;
        while (s->requests < s->max_requests && server_read_request(s, fd)) {
            s->requests++;
            if (s->stall_ms > 0) {
                /* Returns early when the client gives up and closes. */
                (void)wait_readable(fd, s->stall_ms);
                break;
            }
            if (send(fd, s->response, s->response_len, MSG_NOSIGNAL) < 0)
                break;
        }
        close(fd);
    }
    return NULL;
}

/*
 * Binds the server's socket (s->port is known after this) to answer response (may be NULL when
 * stalling) for up to max_requests. The thread starts with server_run.
 */
static void server_listen(struct server *s, const char *response, int max_requests)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);

    memset(s, 0, sizeof(*s));
    atomic_init(&s->stop, 0);
    s->response = response;
    s->response_len = response != NULL ? strlen(response) : 0;
    s->max_requests = max_requests;
    s->req = calloc(1, REQ_MAX);
    cr_assert_not_null(s->req);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(s->fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    cr_assert_eq(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(s->fd, 8), 0);
    cr_assert_eq(getsockname(s->fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
}

static void server_run(struct server *s)
{
    cr_assert_eq(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_start(struct server *s, const char *response, int max_requests)
{
    server_listen(s, response, max_requests);
    server_run(s);
}

static void server_join(struct server *s)
{
    atomic_store(&s->stop, 1);
    cr_assert_eq(pthread_join(s->thread, NULL), 0);
    close(s->fd);
}

static void server_free(struct server *s)
{
    free(s->req);
    s->req = NULL;
}

static void set_url(struct http_call *call, const struct server *s, const char *path)
{
    int n = snprintf(call->url, sizeof(call->url), "http://127.0.0.1:%d%s", s->port, path);

    cr_assert(n > 0 && (size_t)n < sizeof(call->url));
}

static char *dup_string(const char *s)
{
    char *p = strdup(s);

    cr_assert_not_null(p);
    return p;
}

static void setup(void)
{
    cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
}

static void teardown(void)
{
    curl_global_cleanup();
}

TestSuite(http, .init = setup, .fini = teardown);

Test(http, post_sends_method_headers_and_body)
{
    static const char resp[] = "HTTP/1.1 201 Created\r\nContent-Length: 11\r\n"
                               "Connection: close\r\n\r\n{\"id\":\"42\"}";
    static const char body[] = "{\"first_name\":\"Ann\"}";
    struct server s;
    struct http_call call = {.method = "POST"};
    struct http_reply reply;
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    server_start(&s, resp, 1);
    set_url(&call, &s, "/v1/leads?x=1");
    cr_assert_eq(http_call_add_header(&call, "Authorization", "Bearer k-123"), LB_OK);
    call.body = dup_string(body);
    call.body_len = strlen(body);
    cr_assert_eq(http_perform(c, &call, &reply), LB_OK);
    server_join(&s);

    cr_assert_eq(reply.status, 201);
    cr_assert_eq(reply.transport, LB_OK);
    cr_assert_eq(reply.body_len, 11);
    cr_assert_str_eq(reply.body, "{\"id\":\"42\"}");
    cr_assert_eq(reply.retry_after, -1);
    cr_assert_eq(reply.rate_limit_reset, -1);

    cr_assert_eq(strncmp(s.req, "POST /v1/leads?x=1 HTTP/1.1\r\n", 29), 0, "%s", s.req);
    cr_assert_not_null(strstr(s.req, "\r\nAuthorization: Bearer k-123\r\n"));
    cr_assert_not_null(strstr(s.req, "\r\nContent-Type: application/json\r\n"));
    cr_assert_not_null(strstr(s.req, "\r\nUser-Agent: leadbridge/"));
    cr_assert_not_null(strstr(s.req, "\r\nContent-Length: 20\r\n"));
    cr_assert_null(strcasestr(s.req, "\r\nExpect:"));
    cr_assert_str_eq(strstr(s.req, "\r\n\r\n") + 4, body);

    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

Test(http, patch_and_put_use_their_method)
{
    static const char resp[] = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
    static const char *const methods[] = {"PATCH", "PUT"};
    size_t i;
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    for (i = 0; i < 2; i++) {
        struct server s;
        struct http_call call = {.method = methods[i]};
        struct http_reply reply;
        char want[64];

        server_start(&s, resp, 1);
        set_url(&call, &s, "/lead/7");
        call.body = dup_string("{}");
        call.body_len = 2;
        cr_assert_eq(http_perform(c, &call, &reply), LB_OK);
        server_join(&s);
        cr_assert_eq(reply.status, 204);
        cr_assert_null(reply.body);
        cr_assert(snprintf(want, sizeof(want), "%s /lead/7 HTTP/1.1\r\n", methods[i]) > 0);
        cr_assert_eq(strncmp(s.req, want, strlen(want)), 0, "%s", s.req);
        cr_assert_str_eq(strstr(s.req, "\r\n\r\n") + 4, "{}");
        http_reply_free(&reply);
        http_call_free(&call);
        server_free(&s);
    }
    http_client_free(c);
}

Test(http, get_without_body_has_no_content_type)
{
    static const char resp[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    struct server s;
    struct http_call call = {.method = "GET"};
    struct http_reply reply;
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    server_start(&s, resp, 1);
    set_url(&call, &s, "/ping");
    cr_assert_eq(http_perform(c, &call, &reply), LB_OK);
    server_join(&s);
    cr_assert_eq(reply.status, 200);
    cr_assert_str_eq(reply.body, "ok");
    cr_assert_eq(strncmp(s.req, "GET /ping HTTP/1.1\r\n", 20), 0);
    cr_assert_null(strcasestr(s.req, "Content-Type"));
    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

Test(http, caller_content_type_is_kept)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    struct server s;
    struct http_call call = {.method = "POST"};
    struct http_reply reply;
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    server_start(&s, resp, 1);
    set_url(&call, &s, "/");
    cr_assert_eq(http_call_add_header(&call, "Content-Type", "application/x-www-form-urlencoded"),
                 LB_OK);
    call.body = dup_string("a=1");
    call.body_len = 3;
    cr_assert_eq(http_perform(c, &call, &reply), LB_OK);
    server_join(&s);
    cr_assert_not_null(strstr(s.req, "Content-Type: application/x-www-form-urlencoded\r\n"));
    cr_assert_null(strstr(s.req, "application/json"));
    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

/* Performs one GET against a server answering resp, filling *reply. */
static void get_once(const char *resp, struct http_reply *reply)
{
    struct server s;
    struct http_call call = {.method = "GET"};
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    server_start(&s, resp, 1);
    set_url(&call, &s, "/");
    (void)http_perform(c, &call, reply);
    server_join(&s);
    server_free(&s);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

Test(http, retry_after_delta)
{
    struct http_reply reply;

    get_once("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n"
             "Connection: close\r\n\r\n",
             &reply);
    cr_assert_eq(reply.transport, LB_OK);
    cr_assert_eq(reply.status, 429);
    cr_assert_eq(reply.retry_after, 7);
    http_reply_free(&reply);
}

Test(http, retry_after_http_date)
{
    char resp[256], date[64];
    time_t when = time(NULL) + 120;
    struct tm tm;
    struct http_reply reply;

    cr_assert_not_null(gmtime_r(&when, &tm));
    cr_assert_gt(strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm), 0);
    cr_assert(snprintf(resp, sizeof(resp),
                       "HTTP/1.1 503 Service Unavailable\r\nretry-after: %s\r\n"
                       "Content-Length: 0\r\nConnection: close\r\n\r\n",
                       date) > 0);
    get_once(resp, &reply);
    cr_assert_eq(reply.status, 503);
    cr_assert(reply.retry_after >= 115 && reply.retry_after <= 120, "got %lld",
              reply.retry_after);
    http_reply_free(&reply);

    /* A date in the past means now. */
    get_once("HTTP/1.1 503 Service Unavailable\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n",
             &reply);
    cr_assert_eq(reply.retry_after, 0);
    http_reply_free(&reply);

    /* Garbage is ignored. */
    get_once("HTTP/1.1 503 Service Unavailable\r\nRetry-After: soon\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n",
             &reply);
    cr_assert_eq(reply.retry_after, -1);
    http_reply_free(&reply);
}

Test(http, rate_limit_reset)
{
    struct http_reply reply;
    long long now;

    get_once("HTTP/1.1 429 Too Many Requests\r\nX-RateLimit-Reset: 1900000000\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n",
             &reply);
    cr_assert_eq(reply.rate_limit_reset, 1900000000LL);
    cr_assert_eq(reply.retry_after, -1);
    http_reply_free(&reply);

    /* Seconds-until-reset, as some APIs send it, becomes an epoch time. */
    now = (long long)time(NULL);
    get_once("HTTP/1.1 429 Too Many Requests\r\nx-ratelimit-reset: 30\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n",
             &reply);
    cr_assert(reply.rate_limit_reset >= now + 30 && reply.rate_limit_reset <= now + 32,
              "got %lld", reply.rate_limit_reset);
    http_reply_free(&reply);
}

Test(http, body_over_cap_refused)
{
    size_t n = HTTP_MAX_RESPONSE + 1024, head;
    char *resp = malloc(n + 128);
    struct http_reply reply;
    int h;

    cr_assert_not_null(resp);
    h = snprintf(resp, 128, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                 n);
    cr_assert(h > 0);
    head = (size_t)h;
    memset(resp + head, 'x', n);
    resp[head + n] = '\0';
    get_once(resp, &reply);
    cr_assert_eq(reply.transport, LB_ERR_UPSTREAM);
    cr_assert_not_null(strstr(reply.transport_message, "response too large"));
    cr_assert_null(reply.body);
    http_reply_free(&reply);
    free(resp);
}

Test(http, body_at_cap_accepted)
{
    size_t n = HTTP_MAX_RESPONSE, head;
    char *resp = malloc(n + 128);
    struct http_reply reply;
    int h;

    cr_assert_not_null(resp);
    h = snprintf(resp, 128, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                 n);
    cr_assert(h > 0);
    head = (size_t)h;
    memset(resp + head, 'y', n);
    resp[head + n] = '\0';
    get_once(resp, &reply);
    cr_assert_eq(reply.transport, LB_OK);
    cr_assert_eq(reply.body_len, n);
    http_reply_free(&reply);
    free(resp);
}

Test(http, timeout_maps_to_lb_err_timeout)
{
    struct server s;
    struct http_call call = {.method = "POST", .timeout_ms = 300};
    struct http_reply reply;
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    server_listen(&s, NULL, 1);
    s.stall_ms = 5000;
    server_run(&s);
    set_url(&call, &s, "/slow");
    call.body = dup_string("{}");
    call.body_len = 2;
    cr_assert_eq(http_perform(c, &call, &reply), LB_ERR_TIMEOUT);
    server_join(&s);
    cr_assert_eq(reply.transport, LB_ERR_TIMEOUT);
    cr_assert_eq(reply.status, 0);
    cr_assert_neq(reply.transport_message[0], '\0');
    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

Test(http, connection_refused_is_upstream_without_secrets)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    struct http_call call = {.method = "POST"};
    struct http_reply reply;
    struct http_client *c = http_client_new();
    int fd = socket(AF_INET, SOCK_STREAM, 0), n;

    cr_assert_not_null(c);
    /* A port that was just free and has no listener. */
    cr_assert(fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    n = snprintf(call.url, sizeof(call.url), "http://127.0.0.1:%d/x?api_key=SECRETKEY",
                 ntohs(a.sin_port));
    cr_assert(n > 0);
    cr_assert_eq(http_call_add_header(&call, "X-Api-Key", "HEADERSECRET"), LB_OK);
    cr_assert_eq(http_perform(c, &call, &reply), LB_ERR_UPSTREAM);
    cr_assert_eq(reply.status, 0);
    cr_assert_eq(strncmp(reply.transport_message, "could not connect", 17), 0, "%s",
                 reply.transport_message);
    cr_assert_null(strstr(reply.transport_message, "SECRETKEY"), "%s", reply.transport_message);
    cr_assert_null(strstr(reply.transport_message, "HEADERSECRET"));
    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
}

/* Transport failures after the connection was made, each with its own plain reason (issue 9). */
static void expect_transport_reason(const char *resp, long status, const char *reason)
{
    struct server s;
    struct http_call call = {.method = "POST", .timeout_ms = 3000};
    struct http_reply reply;
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    server_start(&s, resp, 1);
    set_url(&call, &s, "/x");
    call.body = dup_string("{}");
    call.body_len = 2;
    cr_assert_eq(http_perform(c, &call, &reply), LB_ERR_UPSTREAM, "answer %s", resp);
    server_join(&s);
    cr_assert_eq(s.requests, 1);
    cr_assert_eq(reply.status, status);
    cr_assert_eq(strncmp(reply.transport_message, reason, strlen(reason)), 0, "%s",
                 reply.transport_message);
    cr_assert_null(strstr(reply.transport_message, "could not connect"), "%s",
                   reply.transport_message);
    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

Test(http, empty_reply_says_the_api_closed_without_answering)
{
    expect_transport_reason("", 0,
                            "connected, but the API closed the connection without answering");
}

Test(http, cut_short_answer_says_so)
{
    expect_transport_reason("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"id\"", 200,
                            "the API's answer was cut short");
}

Test(http, answer_that_is_not_http_says_so)
{
    expect_transport_reason("hello, this is not HTTP\r\n\r\n", 0,
                            "the API's answer was not HTTP");
}

Test(http, other_schemes_refused)
{
    static const char *const urls[] = {"file:///etc/passwd", "ftp://127.0.0.1/", "gopher://x/",
                                       "/relative", ""};
    struct http_client *c = http_client_new();
    size_t i;

    cr_assert_not_null(c);
    for (i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        struct http_call call = {.method = "GET"};
        struct http_reply reply;

        cr_assert(snprintf(call.url, sizeof(call.url), "%s", urls[i]) >= 0);
        cr_assert_eq(http_perform(c, &call, &reply), LB_ERR_UPSTREAM, "%s", urls[i]);
        cr_assert_null(reply.body);
        http_reply_free(&reply);
    }
    http_client_free(c);
}

Test(http, redirects_not_followed)
{
    char resp[256];
    struct server s;
    struct http_call call = {.method = "GET"};
    struct http_reply reply;
    struct http_client *c = http_client_new();

    cr_assert_not_null(c);
    server_listen(&s, NULL, 2);
    cr_assert(snprintf(resp, sizeof(resp),
                       "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/next\r\n"
                       "Content-Length: 0\r\n\r\n",
                       s.port) > 0);
    s.response = resp;
    s.response_len = strlen(resp);
    server_run(&s);
    set_url(&call, &s, "/first");
    cr_assert_eq(http_perform(c, &call, &reply), LB_OK);
    server_join(&s);
    cr_assert_eq(reply.status, 302);
    cr_assert_eq(s.requests, 1);
    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

Test(http, header_injection_refused)
{
    struct http_call call = {.method = "POST"};
    size_t i;

    cr_assert_eq(http_call_add_header(&call, "X-A", "b\r\nX-Evil: 1"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(http_call_add_header(&call, "X-A", "b\nc"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(http_call_add_header(&call, "X-A", "b\rc"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(http_call_add_header(&call, "X-A\r\nX-B", "c"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(http_call_add_header(&call, "X A", "c"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(http_call_add_header(&call, "X:A", "c"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(http_call_add_header(&call, "", "c"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(call.n_headers, 0);
    cr_assert_eq(http_call_add_header(&call, "X-Ok", "tab\tand spaces"), LB_OK);
    cr_assert_str_eq(call.headers[0], "X-Ok: tab\tand spaces");
    for (i = 1; i < HTTP_MAX_HEADERS; i++)
        cr_assert_eq(http_call_add_header(&call, "X-More", "v"), LB_OK);
    cr_assert_eq(http_call_add_header(&call, "X-Full", "v"), LB_ERR_INTERNAL);
    cr_assert_eq(call.n_headers, HTTP_MAX_HEADERS);
    http_call_free(&call);
    cr_assert_eq(call.n_headers, 0);
}

Test(http, large_body_sent_without_expect_continue)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    size_t n = 1536 * 1024;
    struct server s;
    struct http_call call = {.method = "POST"};
    struct http_reply reply;
    struct http_client *c = http_client_new();
    const char *body;

    cr_assert_not_null(c);
    server_start(&s, resp, 1);
    set_url(&call, &s, "/big");
    call.body = malloc(n + 1);
    cr_assert_not_null(call.body);
    memset(call.body, 'b', n);
    call.body[n] = '\0';
    call.body_len = n;
    cr_assert_eq(http_perform(c, &call, &reply), LB_OK);
    server_join(&s);
    cr_assert_eq(reply.status, 200);
    cr_assert_null(strcasestr(s.req, "Expect:"));
    body = strstr(s.req, "\r\n\r\n");
    cr_assert_not_null(body);
    cr_assert_eq(strlen(body + 4), n);
    http_reply_free(&reply);
    http_call_free(&call);
    http_client_free(c);
    server_free(&s);
}

Test(http, keep_alive_reuses_connection)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    struct server s;
    struct http_client *c = http_client_new();
    int i;

    cr_assert_not_null(c);
    server_start(&s, resp, 2);
    for (i = 0; i < 2; i++) {
        struct http_call call = {.method = "POST"};
        struct http_reply reply;

        set_url(&call, &s, "/k");
        call.body = dup_string("{}");
        call.body_len = 2;
        cr_assert_eq(http_perform(c, &call, &reply), LB_OK);
        cr_assert_eq(reply.status, 200);
        cr_assert_str_eq(reply.body, "ok");
        http_reply_free(&reply);
        http_call_free(&call);
    }
    http_client_free(c);
    server_join(&s);
    cr_assert_eq(s.requests, 2);
    cr_assert_eq(s.connections, 1);
    server_free(&s);
}

Test(http, set_json_body_is_capped)
{
    struct http_call call;
    json_t *j = json_pack("{s:s}", "name", "Marla");

    memset(&call, 0, sizeof(call));
    cr_assert_eq(http_call_set_json(&call, j, JSON_COMPACT, 10), LB_ERR_TOO_LARGE);
    cr_assert_null(call.body, "an oversized body is not set");
    cr_assert_eq(http_call_set_json(&call, j, JSON_COMPACT, 1024), LB_OK);
    cr_assert_str_eq(call.body, "{\"name\":\"Marla\"}");
    cr_assert_eq(call.body_len, strlen("{\"name\":\"Marla\"}"));
    http_call_free(&call);
    json_decref(j);
}
