/*
 * test_target_webhook.c: unit tests for the generic webhook target (src/target_webhook.c) and the
 * shared delivery code in src/target.c.
 *
 * Signatures are checked against the published Standard Webhooks test vector and recomputed
 * independently over exactly the bytes the call holds. target_deliver() is driven end to end
 * against a one-shot HTTP server thread on 127.0.0.1.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "crypto.h"
#include "diag.h"
#include "target.h"

#define SID "0123456789abcdef0123456789abcdef"

/* --- helpers --- */

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);

    cr_assert_not_null(j, "bad test JSON: %s", e.text);
    return j;
}

/* Configures a webhook from text as targets.hook; returns the state (NULL on mistakes). */
static void *configure(const char *text, struct diag *d)
{
    json_t *conf = parse(text);
    void *state;

    diag_init(d, "test.json", NULL, 0);
    state = target_webhook_ops.configure(conf, "targets.hook", d);
    json_decref(conf);
    return state;
}

/* The value of header name in call, or NULL. */
static const char *header(const struct http_call *call, const char *name)
{
    size_t i, len = strlen(name);

    for (i = 0; i < call->n_headers; i++) {
        if (strncmp(call->headers[i], name, len) == 0 && call->headers[i][len] == ':')
            return call->headers[i] + len + 2;
    }
    return NULL;
}

/* Whether any message in d mentions both path and words. */
static bool diag_has(const struct diag *d, const char *path, const char *words)
{
    size_t i;

    for (i = 0; i < d->count; i++) {
        if (strstr(d->messages[i], path) != NULL && strstr(d->messages[i], words) != NULL)
            return true;
    }
    return false;
}

static void dump_diag(const struct diag *d)
{
    size_t i;

    for (i = 0; i < d->count; i++)
        cr_log_info("%s", d->messages[i]);
}

/* --- the Standard Webhooks vector --- */

Test(webhook_sign, standard_webhooks_vector)
{
    static const char body[] = "{\"test\": 2432232314}";
    uint8_t key[64];
    char sig[64];
    long n = base64_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 32, key, sizeof(key));

    cr_assert_gt(n, 0);
    cr_assert_eq(target_webhook_sign(key, (size_t)n, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                                     body, sizeof(body) - 1, sig, sizeof(sig)),
                 LB_OK);
    cr_assert_str_eq(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    cr_assert_eq(target_webhook_sign(key, (size_t)n, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                                     body, sizeof(body) - 1, sig, 20),
                 LB_ERR_INTERNAL);
}

Test(webhook_config, whsec_secret_signs_like_the_vector)
{
    struct diag d;
    void *st = configure("{\"type\":\"webhook\",\"url\":\"https://hooks.example.com/in\","
                         "\"secret\":\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"}",
                         &d);
    json_t *lead = parse("{\"first_name\":\"Ann\"}");
    struct http_call call;
    uint8_t key[64], mac[SHA256_DIGEST_SIZE];
    char want[64], *content;
    const char *ts;
    long n;
    int len;

    dump_diag(&d);
    cr_assert_not_null(st);
    memset(&call, 0, sizeof(call));
    cr_assert_eq(target_webhook_ops.build(st, TARGET_CREATE, lead, NULL, SID, &call), LB_OK);
    ts = header(&call, "webhook-timestamp");
    cr_assert_not_null(ts);
    /* Recompute independently over exactly the bytes the call will send. */
    n = base64_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 32, key, sizeof(key));
    cr_assert_eq(n, 24);
    len = asprintf(&content, "msg_%s.%s.%.*s", SID, ts, (int)call.body_len, call.body);
    cr_assert_gt(len, 0);
    hmac_sha256(key, (size_t)n, content, (size_t)len, mac);
    memcpy(want, "v1,", 3);
    cr_assert_gt(base64_encode(mac, sizeof(mac), false, want + 3, sizeof(want) - 3), 0);
    cr_assert_str_eq(header(&call, "webhook-signature"), want);
    free(content);
    http_call_free(&call);
    json_decref(lead);
    target_webhook_ops.free(st);
    diag_free(&d);
}

/* --- build --- */

Test(webhook_build, create_call)
{
    struct diag d;
    void *st = configure("{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:9/hook?k=1\","
                         "\"secret\":\"plain text key\",\"timeout\":20,\"connect_timeout\":2,"
                         "\"headers\":{\"X-Tenant\":\"acme\",\"Authorization\":\"Bearer t\"}}",
                         &d);
    json_t *lead = parse("{\"first_name\":\"Zoë\",\"email\":\"z@example.com\","
                         "\"meta\":{\"a\":\"b\"},\"lofty\":{\"tags\":[\"Hot\"]}}");
    json_t *body;
    struct http_call call;
    uint8_t mac[SHA256_DIGEST_SIZE];
    char want[64], *content;
    const char *ts;
    long long t, now = (long long)time(NULL);
    int len;

    dump_diag(&d);
    cr_assert_not_null(st);
    memset(&call, 0, sizeof(call));
    cr_assert_eq(target_webhook_ops.build(st, TARGET_CREATE, lead, NULL, SID, &call), LB_OK);
    cr_assert_str_eq(call.method, "POST");
    cr_assert_str_eq(call.url, "http://127.0.0.1:9/hook?k=1");
    cr_assert_eq(call.timeout_ms, 20000);
    cr_assert_eq(call.connect_timeout_ms, 2000);
    cr_assert_str_eq(header(&call, "webhook-id"), "msg_" SID);
    cr_assert_str_eq(header(&call, "X-Tenant"), "acme");
    cr_assert_str_eq(header(&call, "Authorization"), "Bearer t");
    ts = header(&call, "webhook-timestamp");
    cr_assert_not_null(ts);
    t = strtoll(ts, NULL, 10);
    cr_assert(t >= now && t <= now + 2);

    /* The body: compact JSON with the documented members and the lead unchanged. */
    cr_assert_eq(call.body_len, strlen(call.body));
    cr_assert_null(strchr(call.body, '\n'));
    cr_assert_null(strstr(call.body, ", "));
    body = parse(call.body);
    cr_assert_str_eq(json_string_value(json_object_get(body, "type")), "lead.created");
    cr_assert_str_eq(json_string_value(json_object_get(body, "submission_id")), SID);
    cr_assert_null(json_object_get(body, "lead_id"));
    cr_assert(json_equal(json_object_get(body, "lead"), lead));

    /* With a raw secret, the key is its bytes. */
    len = asprintf(&content, "msg_%s.%s.%s", SID, ts, call.body);
    cr_assert_gt(len, 0);
    hmac_sha256("plain text key", 14, content, (size_t)len, mac);
    memcpy(want, "v1,", 3);
    cr_assert_gt(base64_encode(mac, sizeof(mac), false, want + 3, sizeof(want) - 3), 0);
    cr_assert_str_eq(header(&call, "webhook-signature"), want);

    free(content);
    json_decref(body);
    http_call_free(&call);
    json_decref(lead);
    target_webhook_ops.free(st);
    diag_free(&d);
}

Test(webhook_build, update_call)
{
    struct diag d;
    void *st = configure("{\"type\":\"webhook\",\"url\":\"https://h.example/x\",\"secret\":\"k\"}",
                         &d);
    json_t *lead = parse("{\"phone\":\"+441234567890\"}");
    json_t *body;
    struct http_call call;
    const char *id;

    cr_assert_not_null(st);
    memset(&call, 0, sizeof(call));
    cr_assert_eq(target_webhook_ops.build(st, TARGET_UPDATE, lead, "L-9", SID, &call), LB_OK);
    id = header(&call, "webhook-id");
    cr_assert_not_null(id);
    cr_assert_str_neq(id, "msg_" SID);
    cr_assert_eq(strncmp(id, "msg_" SID, 36), 0);
    body = parse(call.body);
    cr_assert_str_eq(json_string_value(json_object_get(body, "type")), "lead.updated");
    cr_assert_str_eq(json_string_value(json_object_get(body, "lead_id")), "L-9");
    cr_assert(json_equal(json_object_get(body, "lead"), lead));
    json_decref(body);
    http_call_free(&call);

    /* An update needs the lead id; any build needs the submission id. */
    memset(&call, 0, sizeof(call));
    cr_assert_neq(target_webhook_ops.build(st, TARGET_UPDATE, lead, NULL, SID, &call), LB_OK);
    http_call_free(&call);
    memset(&call, 0, sizeof(call));
    cr_assert_neq(target_webhook_ops.build(st, TARGET_CREATE, lead, NULL, "", &call), LB_OK);
    http_call_free(&call);
    /* An id that would inject a header is refused. */
    memset(&call, 0, sizeof(call));
    cr_assert_neq(target_webhook_ops.build(st, TARGET_CREATE, lead, NULL, "a\r\nX-Evil: 1", &call),
                  LB_OK);
    http_call_free(&call);

    json_decref(lead);
    target_webhook_ops.free(st);
    diag_free(&d);
}

Test(webhook_build, supports_and_validate)
{
    json_t *lead = parse("{}"), *errors = json_object();

    cr_assert(target_webhook_ops.supports(TARGET_CREATE));
    cr_assert(target_webhook_ops.supports(TARGET_UPDATE));
    cr_assert_not(target_webhook_ops.supports(TARGET_VALUATION));
    cr_assert_eq(target_webhook_ops.validate(NULL, TARGET_CREATE, lead, errors), 0);
    cr_assert_eq(json_object_size(errors), 0);
    json_decref(errors);
    json_decref(lead);
}

/* --- configuration mistakes --- */

static void expect_config_error(const char *text, const char *path, const char *words)
{
    struct diag d;
    void *st = configure(text, &d);

    cr_assert_null(st, "accepted: %s", text);
    cr_assert(diag_has(&d, path, words), "no \"%s\" at %s for %s (got %zu: %s)", words, path,
              text, d.count, d.count > 0 ? d.messages[0] : "");
    diag_free(&d);
}

Test(webhook_config, mistakes_are_reported)
{
    expect_config_error("{\"type\":\"webhook\",\"secret\":\"k\"}", "targets.hook", "url");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"ftp://x/\",\"secret\":\"k\"}",
                        "targets.hook.url", "http");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://\",\"secret\":\"k\"}",
                        "targets.hook.url", "http");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://a b/\",\"secret\":\"k\"}",
                        "targets.hook.url", "http");
    expect_config_error("{\"type\":\"webhook\",\"url\":42,\"secret\":\"k\"}", "targets.hook.url",
                        "string");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\"}", "targets.hook",
                        "secret");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"\"}",
                        "targets.hook.secret", "empty");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"whsec_!!\"}",
                        "targets.hook.secret", "base64");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"whsec_\"}",
                        "targets.hook.secret", "base64");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"sekret\":1}",
                        "targets.hook.sekret", "unknown");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"timeout\":0}",
                        "targets.hook.timeout", "between");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"connect_timeout\":\"3\"}",
                        "targets.hook.connect_timeout", "whole number");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"headers\":[]}",
                        "targets.hook.headers", "object");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"headers\":{\"X-A\":\"b\\r\\nX-Evil: 1\"}}",
                        "targets.hook.headers.X-A", "valid HTTP header");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"headers\":{\"X-A\":\"b\\nc\"}}",
                        "targets.hook.headers.X-A", "valid HTTP header");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"headers\":{\"X A\":\"b\"}}",
                        "targets.hook.headers", "valid HTTP header");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"headers\":{\"X-A\":1}}",
                        "targets.hook.headers.X-A", "string");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"headers\":{\"Webhook-Signature\":\"forged\"}}",
                        "targets.hook.headers", "set by leadbridge");
    expect_config_error("{\"type\":\"webhook\",\"url\":\"https://h/\",\"secret\":\"k\","
                        "\"headers\":{\"A\":\"1\",\"B\":\"1\",\"C\":\"1\",\"D\":\"1\",\"E\":\"1\","
                        "\"F\":\"1\"}}",
                        "targets.hook.headers", "at most");
}

Test(webhook_config, defaults)
{
    struct diag d;
    void *st = configure("{\"type\":\"webhook\",\"url\":\"https://h.example/x\",\"secret\":\"k\"}",
                         &d);
    struct http_call call;

    cr_assert_not_null(st);
    cr_assert_eq(d.count, 0);
    memset(&call, 0, sizeof(call));
    cr_assert_eq(target_webhook_ops.build(st, TARGET_CREATE, NULL, NULL, SID, &call), LB_OK);
    cr_assert_eq(call.connect_timeout_ms, 3000);
    cr_assert_eq(call.timeout_ms, 15000);
    cr_assert_eq(call.n_headers, 3);
    http_call_free(&call);
    target_webhook_ops.free(st);
    diag_free(&d);
}

/* --- classify --- */

static void classify(long status, const char *body, struct target_result *r)
{
    struct http_reply reply;

    memset(&reply, 0, sizeof(reply));
    reply.status = status;
    reply.body = (char *)body;
    reply.body_len = body != NULL ? strlen(body) : 0;
    reply.retry_after = -1;
    reply.rate_limit_reset = -1;
    target_result_init(r);
    target_webhook_ops.classify(NULL, TARGET_CREATE, &reply, r);
}

Test(webhook_classify, success_and_ids)
{
    struct target_result r;

    classify(200, "{\"id\":\"abc-123\"}", &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_eq(r.http_status, 200);
    cr_assert_str_eq(r.lead_id, "abc-123");
    classify(201, "{\"id\":9007199254740993}", &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "9007199254740993");
    classify(204, NULL, &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
    classify(200, "{\"id\":\"bad\\nid\"}", &r);
    cr_assert_str_eq(r.lead_id, "");
    classify(200, "{\"id\":true}", &r);
    cr_assert_str_eq(r.lead_id, "");
    classify(200, "not json", &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
}

Test(webhook_classify, failures)
{
    struct target_result r;
    char body[1024];
    size_t i;

    classify(503, "down", &r);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_not_null(strstr(r.reason, "down"));
    classify(429, NULL, &r);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    classify(408, NULL, &r);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    classify(422, "{\"message\":\"email is required\"}", &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_not_null(strstr(r.reason, "422"));
    cr_assert_not_null(strstr(r.reason, "email is required"));
    cr_assert_null(strstr(r.reason, "message"));
    classify(301, NULL, &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);

    /* A long body with control characters: capped and cleaned. */
    for (i = 0; i < sizeof(body) - 1; i++)
        body[i] = i % 10 == 0 ? '\n' : (i % 10 == 5 ? '\x1b' : 'x');
    body[sizeof(body) - 1] = '\0';
    classify(400, body, &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_lt(strlen(r.reason), 260);
    for (i = 0; r.reason[i] != '\0'; i++)
        cr_assert((unsigned char)r.reason[i] >= 0x20, "control char at %zu", i);
}

/* --- shared target code --- */

Test(target, outcome_for_status)
{
    cr_assert_eq(target_outcome_for_status(200), DELIVERY_OK);
    cr_assert_eq(target_outcome_for_status(201), DELIVERY_OK);
    cr_assert_eq(target_outcome_for_status(299), DELIVERY_OK);
    cr_assert_eq(target_outcome_for_status(0), DELIVERY_TRANSIENT);
    cr_assert_eq(target_outcome_for_status(408), DELIVERY_TRANSIENT);
    cr_assert_eq(target_outcome_for_status(429), DELIVERY_TRANSIENT);
    cr_assert_eq(target_outcome_for_status(500), DELIVERY_TRANSIENT);
    cr_assert_eq(target_outcome_for_status(599), DELIVERY_TRANSIENT);
    cr_assert_eq(target_outcome_for_status(400), DELIVERY_PERMANENT);
    cr_assert_eq(target_outcome_for_status(404), DELIVERY_PERMANENT);
    cr_assert_eq(target_outcome_for_status(422), DELIVERY_PERMANENT);
    cr_assert_eq(target_outcome_for_status(100), DELIVERY_PERMANENT);
    cr_assert_eq(target_outcome_for_status(302), DELIVERY_PERMANENT);
    cr_assert_eq(target_outcome_for_status(600), DELIVERY_PERMANENT);
    cr_assert_eq(target_outcome_for_status(-1), DELIVERY_PERMANENT);
}

Test(target, names_and_lookup)
{
    cr_assert_eq(target_ops_find("webhook"), &target_webhook_ops);
    cr_assert_eq(target_ops_find("leadpro"), &target_leadpro_ops);
    cr_assert_eq(target_ops_find("leadping"), &target_leadping_ops);
    cr_assert_eq(target_ops_find("lofty"), &target_lofty_ops);
    cr_assert_null(target_ops_find("Webhook"));
    cr_assert_null(target_ops_find(""));
    cr_assert_null(target_ops_find(NULL));
    cr_assert_str_eq(target_action_name(TARGET_CREATE), "create");
    cr_assert_str_eq(target_action_name(TARGET_VALUATION), "valuation");
    cr_assert_str_eq(target_action_name(TARGET_UPDATE), "update");
    cr_assert_str_eq(delivery_outcome_name(DELIVERY_OK), "ok");
    cr_assert_str_eq(delivery_outcome_name(DELIVERY_TRANSIENT), "transient");
    cr_assert_str_eq(delivery_outcome_name(DELIVERY_PERMANENT), "permanent");
    cr_assert_str_eq(target_action_name(TARGET_ACTION__MAX), "unknown");
}

/* --- target_deliver end to end, against a one-shot server --- */

struct server {
    int fd;
    int port;
    pthread_t thread;
    const char *response;
    char req[16384];
    size_t req_len;
    int requests;
};

/* Accepts one connection, reads one request (headers and Content-Length body), answers. */
static void *server_main(void *arg)
{
    struct server *s = arg;
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    const char *end;
    size_t want = 0;
    int fd;

    if (poll(&p, 1, 5000) <= 0)
        return NULL;
    fd = accept(s->fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    for (;;) {
        ssize_t n;

        p.fd = fd;
        if (want > 0 && s->req_len >= want)
            break;
        if (poll(&p, 1, 3000) <= 0)
            goto out;
        n = read(fd, s->req + s->req_len, sizeof(s->req) - 1 - s->req_len);
        if (n <= 0)
            goto out;
        s->req_len += (size_t)n;
        s->req[s->req_len] = '\0';
        end = strstr(s->req, "\r\n\r\n");
        if (end != NULL && want == 0) {
            const char *cl = strcasestr(s->req, "\r\nContent-Length:");

            want = (size_t)(end - s->req) + 4 + (cl != NULL ? strtoul(cl + 17, NULL, 10) : 0);
        }
    }
    s->requests++;
    if (send(fd, s->response, strlen(s->response), MSG_NOSIGNAL) < 0)
        goto out;
out:
    close(fd);
    return NULL;
}

static void server_start(struct server *s, const char *response)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);

    memset(s, 0, sizeof(*s));
    s->response = response;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(s->fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(s->fd, 4), 0);
    cr_assert_eq(getsockname(s->fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    cr_assert_eq(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_join(struct server *s)
{
    cr_assert_eq(pthread_join(s->thread, NULL), 0);
    close(s->fd);
}

/* A webhook target pointed at port (the state is the caller's to free). */
static void make_target(struct target *t, int port)
{
    char text[256];
    struct diag d;

    cr_assert_gt(snprintf(text, sizeof(text),
                          "{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:%d/hook\","
                          "\"secret\":\"k\",\"timeout\":5}",
                          port),
                 0);
    t->name = "hook";
    t->ops = &target_webhook_ops;
    t->state = configure(text, &d);
    cr_assert_not_null(t->state);
    diag_free(&d);
}

static void setup(void)
{
    cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
}

static void teardown(void)
{
    curl_global_cleanup();
}

TestSuite(deliver, .init = setup, .fini = teardown);

Test(deliver, ok_with_submission_id_as_lead_id)
{
    struct server s;
    struct target t;
    struct target_result r;
    struct http_client *http = http_client_new();
    json_t *lead = parse("{\"email\":\"a@example.com\"}");

    cr_assert_not_null(http);
    server_start(&s, "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    make_target(&t, s.port);
    target_deliver(&t, http, TARGET_CREATE, lead, NULL, SID, &r);
    server_join(&s);
    cr_assert_eq(r.outcome, DELIVERY_OK, "%s", r.reason);
    cr_assert_eq(r.http_status, 202);
    cr_assert_str_eq(r.lead_id, SID);
    cr_assert_eq(s.requests, 1);
    cr_assert_not_null(strstr(s.req, "\r\nwebhook-id: msg_" SID "\r\n"));
    cr_assert_not_null(strstr(s.req, "\r\nwebhook-signature: v1,"));
    cr_assert_not_null(strstr(s.req, "\"submission_id\":\"" SID "\""));
    target_result_clear(&r);
    target_webhook_ops.free(t.state);
    json_decref(lead);
    http_client_free(http);
}

Test(deliver, rate_limited_takes_retry_after)
{
    struct server s;
    struct target t;
    struct target_result r;
    struct http_client *http = http_client_new();

    cr_assert_not_null(http);
    server_start(&s, "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 42\r\nContent-Length: 4\r\n"
                     "Connection: close\r\n\r\nslow");
    make_target(&t, s.port);
    target_deliver(&t, http, TARGET_CREATE, NULL, NULL, SID, &r);
    server_join(&s);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_eq(r.http_status, 429);
    cr_assert_eq(r.retry_after, 42);
    cr_assert_not_null(strstr(r.reason, "slow"));
    target_result_clear(&r);
    target_webhook_ops.free(t.state);
    http_client_free(http);
}

Test(deliver, rate_limit_reset_becomes_retry_after)
{
    char resp[256];
    struct server s;
    struct target t;
    struct target_result r;
    struct http_client *http = http_client_new();
    long long reset = (long long)time(NULL) + 100;

    cr_assert_not_null(http);
    cr_assert_gt(snprintf(resp, sizeof(resp),
                          "HTTP/1.1 503 Service Unavailable\r\nX-RateLimit-Reset: %lld\r\n"
                          "Content-Length: 0\r\nConnection: close\r\n\r\n",
                          reset),
                 0);
    server_start(&s, resp);
    make_target(&t, s.port);
    target_deliver(&t, http, TARGET_CREATE, NULL, NULL, SID, &r);
    server_join(&s);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert(r.retry_after >= 97 && r.retry_after <= 100, "got %lld", r.retry_after);
    target_result_clear(&r);
    target_webhook_ops.free(t.state);
    http_client_free(http);
}

Test(deliver, refused_is_permanent)
{
    struct server s;
    struct target t;
    struct target_result r;
    struct http_client *http = http_client_new();

    cr_assert_not_null(http);
    server_start(&s, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    make_target(&t, s.port);
    target_deliver(&t, http, TARGET_UPDATE, NULL, "L-1", SID, &r);
    server_join(&s);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_eq(r.http_status, 400);
    cr_assert_str_eq(r.lead_id, "");
    cr_assert_eq(r.retry_after, -1);
    cr_assert_not_null(strstr(s.req, "\"type\":\"lead.updated\""));
    target_result_clear(&r);
    target_webhook_ops.free(t.state);
    http_client_free(http);
}

Test(deliver, no_connection_is_transient)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    struct target t;
    struct target_result r;
    struct http_client *http = http_client_new();
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    cr_assert_not_null(http);
    cr_assert(fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    make_target(&t, ntohs(a.sin_port));
    target_deliver(&t, http, TARGET_CREATE, NULL, NULL, SID, &r);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_eq(r.http_status, 0);
    cr_assert_not_null(strstr(r.reason, "could not connect"), "%s", r.reason);
    target_result_clear(&r);
    target_webhook_ops.free(t.state);
    http_client_free(http);
}

/*
 * An API that accepts the connection and the request, then closes without a byte of answer, is
 * not one we "could not connect" to (issue 9): the reason says what happened.
 */
Test(deliver, empty_reply_is_not_a_connect_failure)
{
    struct server s;
    struct target t;
    struct target_result r;
    struct http_client *http = http_client_new();

    cr_assert_not_null(http);
    server_start(&s, "");
    make_target(&t, s.port);
    target_deliver(&t, http, TARGET_CREATE, NULL, NULL, SID, &r);
    server_join(&s);
    cr_assert_eq(s.requests, 1, "the request did not reach the server");
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_eq(r.http_status, 0);
    cr_assert_null(strstr(r.reason, "could not connect"), "%s", r.reason);
    cr_assert_not_null(strstr(r.reason, "closed the connection without answering"), "%s",
                       r.reason);
    target_result_clear(&r);
    target_webhook_ops.free(t.state);
    http_client_free(http);
}

Test(deliver, unsupported_action_and_build_failure_are_permanent)
{
    struct target t;
    struct target_result r;
    struct http_client *http = http_client_new();

    cr_assert_not_null(http);
    make_target(&t, 9);
    target_deliver(&t, http, TARGET_VALUATION, NULL, NULL, SID, &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_not_null(strstr(r.reason, "valuation"));
    target_deliver(&t, http, TARGET_UPDATE, NULL, NULL, SID, &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_not_null(strstr(r.reason, "build"));
    target_result_clear(&r);
    target_webhook_ops.free(t.state);
    http_client_free(http);
}
