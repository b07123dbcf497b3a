/*
 * test_target_leadping.c: unit tests for the Leadping target (src/target_leadping.c).
 *
 * configure is driven with each auth mode and with broken configs; build is checked against
 * golden payloads, one directory per case under tests/data/leadping/<case>/ (lead.json,
 * payload.json and optionally conf.json; compared with json_equal), and for its URL, method,
 * headers and timeouts; validate on both sides of each rule; classify with hand-made replies.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"
#include "target.h"

#define SUBMISSION "0123456789abcdef0123456789abcdef"
#define DEFAULT_CONF "{\"type\": \"leadping\", \"source_id\": \"src-1\", \"source_key\": \"key-1\"}"

static const struct target_ops *ops = &target_leadping_ops;

/* Configures from JSON text; returns state or NULL. *d is left for the caller to inspect/free. */
static void *configure_text(const char *text, struct diag *d)
{
    json_error_t jerr;
    json_t *conf = json_loads(text, 0, &jerr);
    void *state;

    cr_assert_not_null(conf, "bad test config: %s", jerr.text);
    diag_init(d, "test.json", text, strlen(text));
    state = ops->configure(conf, "targets.lp", d);
    json_decref(conf);
    return state;
}

static void *configure_ok(const char *text)
{
    struct diag d;
    void *state = configure_text(text, &d);

    cr_assert_not_null(state, "configure failed: %s", d.count > 0 ? d.messages[0] : "(no message)");
    cr_assert_eq(d.count, 0);
    diag_free(&d);
    return state;
}

/* Asserts configure refuses text with a message containing want. */
static void configure_fails(const char *text, const char *want)
{
    struct diag d;
    void *state = configure_text(text, &d);
    bool found = false;
    size_t i;

    cr_assert_null(state, "configure should fail: %s", text);
    cr_assert_gt(d.count, 0);
    for (i = 0; i < d.count; i++)
        if (strstr(d.messages[i], want) != NULL)
            found = true;
    cr_assert(found, "no message containing \"%s\" (first: %s)", want, d.messages[0]);
    diag_free(&d);
}

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);

    cr_assert_not_null(v, "bad test JSON: %s", jerr.text);
    return v;
}

/* The value of header name in call, or NULL. */
static const char *header(const struct http_call *call, const char *name)
{
    size_t i, n = strlen(name);

    for (i = 0; i < call->n_headers; i++)
        if (strncmp(call->headers[i], name, n) == 0 && call->headers[i][n] == ':')
            return call->headers[i] + n + 2;
    return NULL;
}

/* Builds lead (JSON text) with state; asserts success and returns the parsed body. */
static json_t *build_body(const void *state, const char *lead_text, struct http_call *call)
{
    json_t *lead = load(lead_text), *body;
    enum lb_err e = ops->build(state, TARGET_CREATE, lead, NULL, SUBMISSION, call);

    cr_assert_eq(e, LB_OK, "build: %s", lb_err_name(e));
    cr_assert_not_null(call->body);
    cr_assert_eq(call->body_len, strlen(call->body));
    body = json_loads(call->body, 0, NULL);
    cr_assert_not_null(body, "body is not JSON: %s", call->body);
    json_decref(lead);
    return body;
}

/* --- configure -------------------------------------------------------------------------------- */

Test(configure, source_key_headers_url_and_timeouts)
{
    void *st = configure_ok(DEFAULT_CONF);
    struct http_call call;
    json_t *body = build_body(st, "{\"email\": \"a@example.org\"}", &call);

    cr_assert_str_eq(call.method, "POST");
    cr_assert_str_eq(call.url, "https://api.leadping.ai/leads/intake");
    cr_assert_str_eq(header(&call, "X-Leadping-Source-Id"), "src-1");
    cr_assert_str_eq(header(&call, "X-Leadping-Source-Key"), "key-1");
    cr_assert_str_eq(header(&call, "Content-Type"), "application/json");
    cr_assert_null(header(&call, "Authorization"));
    cr_assert_eq(call.connect_timeout_ms, 3000);
    cr_assert_eq(call.timeout_ms, 15000);
    json_decref(body);
    http_call_free(&call);
    ops->free(st);
}

Test(configure, bearer_base_url_and_timeouts)
{
    void *st = configure_ok("{\"type\": \"leadping\", \"auth\": \"bearer\","
                            " \"token\": \"lp_src_xyz\","
                            " \"base_url\": \"http://127.0.0.1:8081/\", \"connect_timeout\": 2,"
                            " \"timeout\": 9}");
    struct http_call call;
    json_t *body = build_body(st, "{\"phone\": \"+15555550100\"}", &call);

    cr_assert_str_eq(call.url, "http://127.0.0.1:8081/leads/intake");
    cr_assert_str_eq(header(&call, "Authorization"), "Bearer lp_src_xyz");
    cr_assert_null(header(&call, "X-Leadping-Source-Key"));
    cr_assert_eq(call.connect_timeout_ms, 2000);
    cr_assert_eq(call.timeout_ms, 9000);
    json_decref(body);
    http_call_free(&call);
    ops->free(st);
}

Test(configure, auth_inferred_from_keys)
{
    void *st = configure_ok("{\"type\": \"leadping\", \"token\": \"lp_src_1\"}");
    struct http_call call;
    json_t *body = build_body(st, "{\"phone\": \"1\"}", &call);

    cr_assert_str_eq(header(&call, "Authorization"), "Bearer lp_src_1");
    json_decref(body);
    http_call_free(&call);
    ops->free(st);
}

Test(configure, refuses_mistakes)
{
    configure_fails("{\"type\": \"leadping\", \"source_id\": \"s\"}", "source_key");
    configure_fails("{\"type\": \"leadping\", \"auth\": \"source_key\", \"source_key\": \"k\"}",
                    "source_id");
    configure_fails("{\"type\": \"leadping\", \"auth\": \"bearer\"}", "token");
    configure_fails("{\"type\": \"leadping\"}", "auth");
    configure_fails("{\"type\": \"leadping\", \"token\": \"t\", \"source_id\": \"s\", "
                    "\"source_key\": \"k\"}", "auth");
    configure_fails("{\"type\": \"leadping\", \"auth\": \"bearer\", \"token\": \"t\", "
                    "\"source_key\": \"k\"}", "not used");
    configure_fails("{\"type\": \"leadping\", \"auth\": \"oauth\", \"token\": \"t\"}", "must be");
    configure_fails("{\"type\": \"leadping\", \"token\": \"t\", \"colour\": \"red\"}",
                    "unknown key");
    configure_fails("{\"type\": \"leadping\", \"token\": \"t\", \"base_url\": \"ftp://x\"}",
                    "https://");
    configure_fails("{\"type\": \"leadping\", \"token\": \"t\", \"timeout\": 0}", "between");
    configure_fails("{\"type\": \"leadping\", \"token\": \"a\\r\\nX-Evil: 1\"}", "control");
    configure_fails("{\"type\": \"leadping\", \"token\": \"a b\"}", "without spaces");
    configure_fails("{\"type\": \"leadping\", \"token\": \"t\", \"connect_timeout\": 20, "
                    "\"timeout\": 10}", "not be longer than timeout");
    configure_fails("{\"type\": \"leadping\", \"token\": \"t\", \"base_url\": \"https:///x\"}",
                    "with a host");
    configure_fails("{\"type\": \"leadping\", \"token\": \"t\", \"price_format\": \"cents\"}",
                    "must be");
    configure_fails("[]", "object");
}

Test(supports, create_only)
{
    cr_assert(ops->supports(TARGET_CREATE));
    cr_assert_not(ops->supports(TARGET_UPDATE));
    cr_assert_not(ops->supports(TARGET_VALUATION));
}

/* --- build: golden payloads ------------------------------------------------------------------- */

/* The whole file at path (caller frees), or NULL when it does not exist. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text;
    long n;

    if (f == NULL)
        return NULL;
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    cr_assert_geq(n, 0);
    cr_assert_eq(fseek(f, 0, SEEK_SET), 0);
    text = calloc(1, (size_t)n + 1);
    cr_assert_not_null(text);
    cr_assert_eq(fread(text, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return text;
}

Test(build, golden_payloads)
{
    const char *dir = TEST_DATA_DIR "/leadping";
    DIR *dp = opendir(dir);
    struct dirent *de;
    int cases = 0;

    cr_assert_not_null(dp);
    while ((de = readdir(dp)) != NULL) {
        char path[1024];
        char *conf_text, *lead_text, *want_text;
        json_t *want, *got;
        struct http_call call;
        void *st;

        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s/conf.json", dir, de->d_name);
        conf_text = read_file(path);
        snprintf(path, sizeof(path), "%s/%s/lead.json", dir, de->d_name);
        lead_text = read_file(path);
        snprintf(path, sizeof(path), "%s/%s/payload.json", dir, de->d_name);
        want_text = read_file(path);
        cr_assert_not_null(lead_text, "%s: no lead.json", de->d_name);
        cr_assert_not_null(want_text, "%s: no payload.json", de->d_name);
        st = configure_ok(conf_text != NULL ? conf_text : DEFAULT_CONF);
        got = build_body(st, lead_text, &call);
        want = load(want_text);
        cr_expect(json_equal(got, want), "%s: got %s", de->d_name, call.body);
        json_decref(got);
        json_decref(want);
        http_call_free(&call);
        ops->free(st);
        free(conf_text);
        free(lead_text);
        free(want_text);
        cases++;
    }
    closedir(dp);
    cr_assert_geq(cases, 7);
}

Test(build, external_id_is_the_submission_id_on_every_retry)
{
    void *st = configure_ok(DEFAULT_CONF);
    struct http_call a, b;
    json_t *ja = build_body(st, "{\"email\": \"a@example.org\"}", &a);
    json_t *jb = build_body(st, "{\"email\": \"a@example.org\"}", &b);

    cr_assert_str_eq(json_string_value(json_object_get(ja, "externalId")), SUBMISSION);
    cr_assert(json_equal(ja, jb));
    json_decref(ja);
    json_decref(jb);
    http_call_free(&a);
    http_call_free(&b);
    ops->free(st);
}

Test(build, real_price_is_written_shortest)
{
    void *st = configure_ok("{\"type\": \"leadping\", \"token\": \"t\"}");
    struct http_call call;
    json_t *body = build_body(st, "{\"phone\": \"1\", \"price\": 0.1}", &call);

    cr_assert(strstr(call.body, "\"price\":0.1") != NULL, "%s", call.body);
    json_decref(body);
    http_call_free(&call);
    ops->free(st);
}

Test(build, refuses_an_invalid_lead_and_other_actions)
{
    void *st = configure_ok(DEFAULT_CONF);
    json_t *lead = load("{\"first_name\": \"Ann\"}");
    json_t *ok = load("{\"email\": \"a@example.org\"}");
    struct http_call call;

    cr_assert_eq(ops->build(st, TARGET_CREATE, lead, NULL, SUBMISSION, &call),
                 LB_ERR_INVALID_FIELDS);
    cr_assert_null(call.body);
    cr_assert_eq(call.n_headers, 0);
    cr_assert_neq(ops->build(st, TARGET_UPDATE, ok, "1", SUBMISSION, &call), LB_OK);
    cr_assert_null(call.body);
    json_decref(lead);
    json_decref(ok);
    ops->free(st);
}

/* --- validate --------------------------------------------------------------------------------- */

/* Validates lead text; returns the error count, with the reason for field (or "") in reason. */
static int check(const char *lead_text, const char *field, char *reason, size_t size)
{
    void *st = configure_ok(DEFAULT_CONF);
    json_t *lead = load(lead_text), *errors = json_object();
    const char *r;
    int n = ops->validate(st, TARGET_CREATE, lead, errors);

    cr_assert_eq((size_t)n, json_object_size(errors));
    r = json_string_value(json_object_get(errors, field));
    snprintf(reason, size, "%s", r != NULL ? r : "");
    json_decref(lead);
    json_decref(errors);
    ops->free(st);
    return n;
}

#define VALID(lead) cr_assert_eq(check(lead, "", reason, sizeof(reason)), 0, "%s", lead)
#define INVALID(lead, field)                                                                   \
    do {                                                                                       \
        cr_assert_gt(check(lead, field, reason, sizeof(reason)), 0, "%s", lead);                \
        cr_assert_neq(reason[0], '\0', "%s: no error for %s", lead, field);                    \
    } while (0)

Test(validate, email_or_phone_required)
{
    char reason[256];

    INVALID("{\"first_name\": \"Ann\"}", "email");
    INVALID("{\"email\": \"\", \"phone\": \"\"}", "email");
    VALID("{\"email\": \"a@example.org\"}");
    VALID("{\"phone\": \"+447700900123\"}");
}

Test(validate, email_format)
{
    char reason[256];

    VALID("{\"email\": \"first.last+tag@sub.example.co.uk\"}");
    INVALID("{\"email\": \"no-at.example.org\"}", "email");
    INVALID("{\"email\": \"a@b@example.org\"}", "email");
    INVALID("{\"email\": \"a@localhost\"}", "email");
    INVALID("{\"email\": \"a b@example.org\"}", "email");
    INVALID("{\"email\": \"@example.org\"}", "email");
    INVALID("{\"email\": \"a..b@example.org\"}", "email");
    INVALID("{\"email\": \"a@example.org.\"}", "email");
    INVALID("{\"email\": 42, \"phone\": \"1\"}", "email");
}

Test(validate, date_of_birth_format)
{
    char reason[256];

    VALID("{\"phone\": \"1\", \"date_of_birth\": \"1990-02-28\"}");
    VALID("{\"phone\": \"1\", \"date_of_birth\": \"2000-02-29\"}");
    INVALID("{\"phone\": \"1\", \"date_of_birth\": \"1900-02-29\"}", "date_of_birth");
    INVALID("{\"phone\": \"1\", \"date_of_birth\": \"1990-2-28\"}", "date_of_birth");
    INVALID("{\"phone\": \"1\", \"date_of_birth\": \"28/02/1990\"}", "date_of_birth");
    INVALID("{\"phone\": \"1\", \"date_of_birth\": \"1990-13-01\"}", "date_of_birth");
    INVALID("{\"phone\": \"1\", \"date_of_birth\": \"1990-04-31\"}", "date_of_birth");
    INVALID("{\"phone\": \"1\", \"date_of_birth\": \"1990-02-28T00:00:00Z\"}", "date_of_birth");
}

Test(validate, prices_numeric)
{
    char reason[256];

    VALID("{\"phone\": \"1\", \"price\": 12}");
    VALID("{\"phone\": \"1\", \"price\": 12.75}");
    VALID("{\"phone\": \"1\", \"price\": \"-0.5\"}");
    INVALID("{\"phone\": \"1\", \"price\": \"12,50\"}", "price");
    INVALID("{\"phone\": \"1\", \"price\": \"012\"}", "price");
    INVALID("{\"phone\": \"1\", \"price\": true}", "price");
    INVALID("{\"phone\": \"1\", \"price\": \"\"}", "price");
    VALID("{\"phone\": \"1\", \"leadping\": {\"directPostPrice\": \"3.5\"}}");
    INVALID("{\"phone\": \"1\", \"leadping\": {\"directPostPrice\": \"free\"}}",
            "leadping.directPostPrice");
    INVALID("{\"phone\": \"1\", \"leadping\": {\"subId\": 7}}", "leadping.subId");
    INVALID("{\"phone\": \"1\", \"leadping\": \"x\"}", "leadping");
}

Test(validate, text_fields_must_be_text)
{
    char reason[256];

    INVALID("{\"phone\": \"1\", \"first_name\": [\"Ann\"]}", "first_name");
    INVALID("{\"phone\": \"1\", \"postcode\": 12345}", "postcode");
    VALID("{\"phone\": \"1\", \"postcode\": null}");
}

/* --- classify --------------------------------------------------------------------------------- */

/* Classifies a hand-made reply with status and body (NULL for none). */
static struct target_result classify(long status, const char *body)
{
    struct http_reply reply;
    struct target_result r;

    memset(&reply, 0, sizeof(reply));
    reply.status = status;
    reply.body = (char *)body;
    reply.body_len = body != NULL ? strlen(body) : 0;
    reply.retry_after = -1;
    reply.rate_limit_reset = -1;
    if (status == 0) {
        reply.transport = LB_ERR_TIMEOUT;
        snprintf(reply.transport_message, sizeof(reply.transport_message), "timed out");
    }
    memset(&r, 0, sizeof(r));
    r.retry_after = -1;
    ops->classify(NULL, TARGET_CREATE, &reply, &r);
    cr_assert_null(r.valuation);
    return r;
}

Test(classify, success_takes_string_or_integer_id)
{
    struct target_result r = classify(201, "{\"id\": \"lead_8f3a\", \"contact\": {}}");

    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_eq(r.http_status, 201);
    cr_assert_str_eq(r.lead_id, "lead_8f3a");
    r = classify(200, "{\"id\": 9007199254740993}");
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "9007199254740993");
}

Test(classify, success_without_id_is_taken_but_said)
{
    struct target_result r = classify(201, "{\"id\": null}");

    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
    cr_assert(strstr(r.reason, "no usable id") != NULL, "%s", r.reason);
    r = classify(204, NULL);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
}

Test(classify, problem_detail_is_the_reason)
{
    struct target_result r = classify(400, "{\"type\": \"about:blank\", \"title\": \"Bad Request\","
                                           " \"status\": 400, \"detail\": \"email is invalid\"}");

    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "email is invalid");
    r = classify(400, "{\"title\": \"Validation failed\", \"status\": 400}");
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "Validation failed");
    r = classify(422, "{\"title\": \"Unprocessable\", \"detail\": \"\"}");
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "Unprocessable");
}

Test(classify, credentials_refused)
{
    struct target_result r = classify(401, "{\"title\": \"Unauthorized\", \"detail\": "
                                           "\"Source key revoked\"}");

    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "credentials refused by Leadping: Source key revoked");
    r = classify(403, "{\"title\": \"Forbidden\"}");
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "credentials refused by Leadping: Forbidden");
    r = classify(401, "");
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert(strncmp(r.reason, "credentials refused by Leadping", 31) == 0, "%s", r.reason);
}

Test(classify, rate_limit_and_server_errors_are_transient)
{
    struct target_result r = classify(429, "{\"title\": \"Too Many Requests\"}");

    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_str_eq(r.reason, "Too Many Requests");
    r = classify(503, "<html>down</html>");
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_str_eq(r.reason, "Leadping answered HTTP 503");
    r = classify(0, NULL);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert(strstr(r.reason, "timed out") != NULL, "%s", r.reason);
}

Test(classify, reason_is_stripped_and_capped)
{
    char body[4096];
    struct target_result r;
    size_t i, o;

    r = classify(400, "{\"detail\": \"line one\\nline two\\u0007\\tend\\u0085.\"}");
    cr_assert_str_eq(r.reason, "line one line two end .");
    o = (size_t)snprintf(body, sizeof(body), "{\"detail\": \"x");
    for (i = 0; i < 400; i++) {
        memcpy(body + o, "\xe2\x82\xac", 3); /* the euro sign: 3 bytes; 1 + 3k never hits 300 */
        o += 3;
    }
    memcpy(body + o, "\"}", 3);
    r = classify(400, body);
    cr_assert_leq(strlen(r.reason), 300);
    cr_assert_geq(strlen(r.reason), 298);
    cr_assert(parse_utf8_valid(r.reason, strlen(r.reason)), "cut inside a character");
    for (i = 0; r.reason[i] != '\0'; i++)
        cr_assert_geq((unsigned char)r.reason[i], 0x20);
}
