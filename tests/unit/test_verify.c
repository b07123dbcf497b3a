/*
 * test_verify.c: inbound verification (src/verify.c) for each scheme, with signatures computed
 * independently (Python's hmac module) and the published Standard Webhooks vector: a correct
 * request passes; a forged signature, a wrong secret, a stale timestamp, a body changed by one
 * byte and a missing header fail with the check named; two secrets work during rotation; and
 * config mistakes are reported at their JSON path.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "verify.h"

#define BODY "{\"event_id\":\"01HX\",\"form_response\":{\"answers\":[]}}"
#define NOW_MS 1700000000123LL

/* A CGI environment: NULL-terminated name, value pairs. */
static const char *env_of(void *ctx, const char *name)
{
    const char *const *kv = ctx;

    for (size_t i = 0; kv[i] != NULL; i += 2)
        if (strcmp(kv[i], name) == 0)
            return kv[i + 1];
    return NULL;
}

static struct verify *compile(const char *json, struct diag *d)
{
    json_error_t jerr;
    json_t *obj = json_loads(json, 0, &jerr);
    struct verify *v;

    cr_assert_not_null(obj, "bad test JSON: %s", jerr.text);
    diag_init(d, "test.json", NULL, 0);
    v = verify_compile(obj, "forms.f.verify", d);
    json_decref(obj);
    return v;
}

static struct verify *compile_ok(const char *json)
{
    struct diag d;
    struct verify *v = compile(json, &d);

    for (size_t i = 0; i < d.count; i++)
        cr_log_error("%s", d.messages[i]);
    cr_assert_not_null(v);
    diag_free(&d);
    return v;
}

static void expect_config_error(const char *json, const char *fragment)
{
    struct diag d;
    struct verify *v = compile(json, &d);
    bool found = false;

    cr_assert_null(v, "%s should not compile", json);
    for (size_t i = 0; i < d.count; i++)
        found |= strstr(d.messages[i], fragment) != NULL;
    cr_assert(found, "no message with \"%s\" (first: %s)", fragment,
              d.count > 0 ? d.messages[0] : "none");
    diag_free(&d);
}

static struct request post(void)
{
    struct request r;

    memset(&r, 0, sizeof(r));
    r.method = METHOD_POST;
    r.method_name = "POST";
    r.path = "/lead/hook";
    return r;
}

/* Runs v over body with env kv; returns the result and the reason in why. */
static enum lb_err run(const struct verify *v, const char *const *kv, const char *body,
                       long long now_ms, char *why)
{
    struct request r = post();

    return verify_request(v, &r, env_of, (void *)kv, body, strlen(body), now_ms, why,
                          VERIFY_WHY_SIZE);
}

static void expect_ok(const struct verify *v, const char *const *kv, const char *body,
                      long long now_ms)
{
    char why[VERIFY_WHY_SIZE];

    cr_assert_eq(run(v, kv, body, now_ms, why), LB_OK, "refused: %s", why);
}

static void expect_refused(const struct verify *v, const char *const *kv, const char *body,
                           long long now_ms, const char *reason)
{
    char why[VERIFY_WHY_SIZE];

    cr_assert_eq(run(v, kv, body, now_ms, why), LB_ERR_UNAUTHORIZED, "accepted (%s)", reason);
    cr_assert(strstr(why, reason) != NULL, "reason \"%s\", want \"%s\"", why, reason);
    cr_assert(strstr(why, "secret-0123") == NULL, "the reason shows the secret");
}

Test(verify, none_passes)
{
    char why[VERIFY_WHY_SIZE];
    static const char *const kv[] = {NULL};

    cr_assert_eq(run(NULL, kv, BODY, NOW_MS, why), LB_OK);
}

Test(verify, typeform)
{
    struct verify *v = compile_ok("{\"scheme\": \"typeform\", \"secret\": "
                                  "\"typeform-secret-0123456789\"}");
    static const char *const good[] = {
        "HTTP_TYPEFORM_SIGNATURE", "sha256=7UOsw/5HEyeK3wiwfL7aZPqR7sAugznoLqteVlqjMec=", NULL};
    static const char *const forged[] = {
        "HTTP_TYPEFORM_SIGNATURE", "sha256=7UOsw/5HEyeK3wiwfL7aZPqR7sAugznoLqteVlqjMeA=", NULL};
    static const char *const no_prefix[] = {
        "HTTP_TYPEFORM_SIGNATURE", "7UOsw/5HEyeK3wiwfL7aZPqR7sAugznoLqteVlqjMec=", NULL};
    static const char *const none[] = {NULL};
    char changed[] = BODY;

    cr_assert_str_eq(verify_scheme_name(v), "typeform");
    expect_ok(v, good, BODY, NOW_MS);
    expect_refused(v, forged, BODY, NOW_MS, "Typeform-Signature does not match");
    expect_refused(v, no_prefix, BODY, NOW_MS, "Typeform-Signature is malformed");
    expect_refused(v, none, BODY, NOW_MS, "no Typeform-Signature header");
    changed[10] = 'Y'; /* one byte of the body */
    expect_refused(v, good, changed, NOW_MS, "does not match");
    verify_free(v);

    v = compile_ok("{\"scheme\": \"typeform\", \"secret\": \"another-secret-0123456789\"}");
    expect_refused(v, good, BODY, NOW_MS, "does not match");
    verify_free(v);
}

Test(verify, webflow_timestamp_window)
{
    struct verify *v = compile_ok("{\"scheme\": \"webflow\", \"secret\": "
                                  "\"webflow-client-secret-abcdef0123456789\"}");
    static const char *const good[] = {
        "HTTP_X_WEBFLOW_SIGNATURE",
        "b8f0ea83303dcb884f4113e865a1c6eea9cca1f6f6c76557e4114b2ce7f0652e",
        "HTTP_X_WEBFLOW_TIMESTAMP", "1700000000123", NULL};
    static const char *const upper[] = {
        "HTTP_X_WEBFLOW_SIGNATURE",
        "B8F0EA83303DCB884F4113E865A1C6EEA9CCA1F6F6C76557E4114B2CE7F0652E",
        "HTTP_X_WEBFLOW_TIMESTAMP", "1700000000123", NULL};
    static const char *const other_ts[] = {
        "HTTP_X_WEBFLOW_SIGNATURE",
        "b8f0ea83303dcb884f4113e865a1c6eea9cca1f6f6c76557e4114b2ce7f0652e",
        "HTTP_X_WEBFLOW_TIMESTAMP", "1700000000124", NULL};
    static const char *const no_ts[] = {
        "HTTP_X_WEBFLOW_SIGNATURE",
        "b8f0ea83303dcb884f4113e865a1c6eea9cca1f6f6c76557e4114b2ce7f0652e", NULL};
    static const char *const bad_ts[] = {
        "HTTP_X_WEBFLOW_SIGNATURE",
        "b8f0ea83303dcb884f4113e865a1c6eea9cca1f6f6c76557e4114b2ce7f0652e",
        "HTTP_X_WEBFLOW_TIMESTAMP", "17e11", NULL};
    static const char *const huge_ts[] = {
        "HTTP_X_WEBFLOW_SIGNATURE",
        "b8f0ea83303dcb884f4113e865a1c6eea9cca1f6f6c76557e4114b2ce7f0652e",
        "HTTP_X_WEBFLOW_TIMESTAMP", "9999999999999999999", NULL};

    expect_ok(v, good, BODY, NOW_MS);
    expect_ok(v, upper, BODY, NOW_MS);
    expect_ok(v, good, BODY, NOW_MS + 300 * 1000);   /* the edge of the window */
    expect_refused(v, good, BODY, NOW_MS + 300 * 1000 + 1, "timestamp outside the 300 s window");
    expect_refused(v, good, BODY, NOW_MS - 301 * 1000, "timestamp outside");
    expect_refused(v, other_ts, BODY, NOW_MS, "does not match"); /* the timestamp is signed */
    expect_refused(v, no_ts, BODY, NOW_MS, "no X-Webflow-Timestamp header");
    expect_refused(v, bad_ts, BODY, NOW_MS, "X-Webflow-Timestamp is not a whole number");
    expect_refused(v, huge_ts, BODY, NOW_MS, "X-Webflow-Timestamp is not a whole number");
    verify_free(v);

    v = compile_ok("{\"scheme\": \"webflow\", \"tolerance\": 60, \"secret\": "
                   "\"webflow-client-secret-abcdef0123456789\"}");
    expect_refused(v, good, BODY, NOW_MS + 61 * 1000, "outside the 60 s window");
    verify_free(v);
}

Test(verify, tally)
{
    struct verify *v = compile_ok("{\"scheme\": \"tally\", \"secret\": "
                                  "\"tally-signing-secret-0123\"}");
    static const char *const good[] = {
        "HTTP_TALLY_SIGNATURE", "bw1tvcetdF2A2UkF4ES8kmT0Hq6vjpqctZ3PdYN6q10=", NULL};

    expect_ok(v, good, BODY, NOW_MS);
    expect_refused(v, good, BODY " ", NOW_MS, "Tally-Signature does not match");
    verify_free(v);
}

Test(verify, hubspot_v3_configured_url)
{
    struct verify *v = compile_ok(
        "{\"scheme\": \"hubspot_v3\", \"secret\": \"hubspot-client-secret-0123456789\", "
        "\"url\": \"https://hooks.example.com/lead/hubspot?portal=1:2\"}");
    static const char *const good[] = {
        "HTTP_X_HUBSPOT_SIGNATURE_V3", "g6yFT7nNlmyQtNJ5okvNAEw4UBoFE3sf6o111+aq4Yc=",
        "HTTP_X_HUBSPOT_REQUEST_TIMESTAMP", "1700000000123", NULL};

    expect_ok(v, good, BODY, NOW_MS);
    expect_refused(v, good, BODY, NOW_MS + 10 * 60 * 1000, "timestamp outside");
    verify_free(v);
}

Test(verify, hubspot_v3_url_from_request)
{
    struct verify *v = compile_ok("{\"scheme\": \"hubspot_v3\", \"secret\": "
                                  "\"hubspot-client-secret-0123456789\"}");
    static const char *const good[] = {
        "HTTP_X_HUBSPOT_SIGNATURE_V3", "g6yFT7nNlmyQtNJ5okvNAEw4UBoFE3sf6o111+aq4Yc=",
        "HTTP_X_HUBSPOT_REQUEST_TIMESTAMP", "1700000000123",
        "REQUEST_URI", "/lead/hubspot?portal=1%3A2", NULL};
    struct request r = post();
    char why[VERIFY_WHY_SIZE];

    r.https = true;
    r.http_host = "hooks.example.com";
    cr_assert_eq(verify_request(v, &r, env_of, (void *)good, BODY, strlen(BODY), NOW_MS, why,
                                sizeof(why)),
                 LB_OK, "%s", why);
    r.https = false; /* http:// is a different URL, so a different signature */
    cr_assert_eq(verify_request(v, &r, env_of, (void *)good, BODY, strlen(BODY), NOW_MS, why,
                                sizeof(why)),
                 LB_ERR_UNAUTHORIZED);
    verify_free(v);
}

Test(verify, standard_webhooks_vector)
{
    /* The published Standard Webhooks test vector. */
    static const char body[] = "{\"test\": 2432232314}";
    struct verify *v = compile_ok("{\"scheme\": \"standard_webhooks\", \"secret\": "
                                  "\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"}");
    static const char *const good[] = {
        "HTTP_WEBHOOK_ID", "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "HTTP_WEBHOOK_TIMESTAMP", "1614265330",
        "HTTP_WEBHOOK_SIGNATURE", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", NULL};
    static const char *const listed[] = {
        "HTTP_WEBHOOK_ID", "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "HTTP_WEBHOOK_TIMESTAMP", "1614265330",
        "HTTP_WEBHOOK_SIGNATURE",
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= "
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", NULL};
    static const char *const other_id[] = {
        "HTTP_WEBHOOK_ID", "msg_other",
        "HTTP_WEBHOOK_TIMESTAMP", "1614265330",
        "HTTP_WEBHOOK_SIGNATURE", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", NULL};
    static const char *const no_id[] = {
        "HTTP_WEBHOOK_TIMESTAMP", "1614265330",
        "HTTP_WEBHOOK_SIGNATURE", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", NULL};
    static const char *const v2[] = {
        "HTTP_WEBHOOK_ID", "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "HTTP_WEBHOOK_TIMESTAMP", "1614265330",
        "HTTP_WEBHOOK_SIGNATURE", "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", NULL};
    long long at = 1614265330LL * 1000;

    expect_ok(v, good, body, at);
    expect_ok(v, listed, body, at);
    expect_refused(v, other_id, body, at, "Webhook-Signature does not match");
    expect_refused(v, no_id, body, at, "no Webhook-Id header");
    expect_refused(v, v2, body, at, "Webhook-Signature is malformed");
    expect_refused(v, good, body, at + 400 * 1000, "timestamp outside");
    verify_free(v);
}

Test(verify, generic_hmac_sha1_hex_prefix)
{
    struct verify *v = compile_ok(
        "{\"scheme\": \"hmac\", \"header\": \"X-Hub-Signature\", \"algorithm\": \"sha1\", "
        "\"encoding\": \"hex\", \"prefix\": \"sha1=\", \"secret\": \"generic-secret-0123456789\"}");
    static const char *const good[] = {
        "HTTP_X_HUB_SIGNATURE", "sha1=cc12032b1d4b2c57e2a5f18bd0a7cad966457c19", NULL};
    static const char *const short_sig[] = {
        "HTTP_X_HUB_SIGNATURE", "sha1=cc12032b1d4b2c57e2a5f18bd0a7cad966457c", NULL};

    expect_ok(v, good, BODY, NOW_MS);
    expect_refused(v, short_sig, BODY, NOW_MS, "X-Hub-Signature does not match");
    verify_free(v);
}

Test(verify, generic_hmac_sha512_base64_timestamp_template)
{
    struct verify *v = compile_ok(
        "{\"scheme\": \"hmac\", \"header\": \"X-Signature\", \"algorithm\": \"sha512\", "
        "\"encoding\": \"base64\", \"signed\": \"{timestamp}.{body}\", "
        "\"timestamp_header\": \"X-Timestamp\", \"secret\": \"generic-secret-0123456789\"}");
    static const char *const good[] = {
        "HTTP_X_SIGNATURE",
        "8lL6pfUJiby29tPhrczPu7x0DtDSasEvfCqb6Q8RYkiFzLSpjQbx1Us7uB324Gc5Oz5GVXwEeZveORAAqaTJrg==",
        "HTTP_X_TIMESTAMP", "1700000000", NULL};

    expect_ok(v, good, BODY, 1700000000LL * 1000 + 5);
    expect_refused(v, good, BODY, 1700000000LL * 1000 + 301 * 1000, "outside");
    verify_free(v);
}

Test(verify, two_secrets_during_rotation)
{
    struct verify *v = compile_ok("{\"scheme\": \"tally\", \"secret\": "
                                  "[\"the-new-secret-0123456\", \"tally-signing-secret-0123\"]}");
    static const char *const good[] = {
        "HTTP_TALLY_SIGNATURE", "bw1tvcetdF2A2UkF4ES8kmT0Hq6vjpqctZ3PdYN6q10=", NULL};

    expect_ok(v, good, BODY, NOW_MS); /* signed with the old one */
    verify_free(v);
    /* An empty second entry (an unset ${OLD:-}) is no secret at all. */
    v = compile_ok("{\"scheme\": \"tally\", \"secret\": [\"the-new-secret-0123456\", \"\"]}");
    expect_refused(v, good, BODY, NOW_MS, "does not match");
    verify_free(v);
}

Test(verify, shared_secret_header_bearer_basic)
{
    struct verify *h = compile_ok("{\"scheme\": \"header\", \"header\": \"X-Webhook-Secret\", "
                                  "\"secret\": \"shared-secret-0123456789\"}");
    struct verify *b = compile_ok("{\"scheme\": \"bearer\", \"secret\": "
                                  "\"bearer-token-0123456789\"}");
    struct verify *ba = compile_ok("{\"scheme\": \"basic\", \"username\": \"leadbridge\", "
                                   "\"secret\": \"basic-password-0123456\"}");
    static const char *const h_good[] = {"HTTP_X_WEBHOOK_SECRET", "shared-secret-0123456789",
                                         NULL};
    static const char *const h_bad[] = {"HTTP_X_WEBHOOK_SECRET", "shared-secret-012345678",
                                        NULL};
    static const char *const none[] = {NULL};
    struct request r = post();
    char why[VERIFY_WHY_SIZE];

    expect_ok(h, h_good, BODY, NOW_MS);
    expect_refused(h, h_bad, BODY, NOW_MS, "X-Webhook-Secret credentials do not match");
    expect_refused(h, none, BODY, NOW_MS, "no X-Webhook-Secret header");

    r.authorization = "Bearer bearer-token-0123456789";
    cr_assert_eq(verify_request(b, &r, env_of, (void *)none, "", 0, NOW_MS, why, sizeof(why)),
                 LB_OK, "%s", why);
    r.authorization = "Bearer bearer-token-0123456780";
    cr_assert_eq(verify_request(b, &r, env_of, (void *)none, "", 0, NOW_MS, why, sizeof(why)),
                 LB_ERR_UNAUTHORIZED);
    r.authorization = "Basic bGVhZGJyaWRnZTpiYXNpYy1wYXNzd29yZC0wMTIzNDU2";
    cr_assert_eq(verify_request(b, &r, env_of, (void *)none, "", 0, NOW_MS, why, sizeof(why)),
                 LB_ERR_UNAUTHORIZED);
    cr_assert_str_eq(why, "Authorization is not Bearer credentials");
    cr_assert_eq(verify_request(ba, &r, env_of, (void *)none, "", 0, NOW_MS, why, sizeof(why)),
                 LB_OK, "%s", why);
    r.authorization = "Basic !!!";
    cr_assert_eq(verify_request(ba, &r, env_of, (void *)none, "", 0, NOW_MS, why, sizeof(why)),
                 LB_ERR_UNAUTHORIZED);
    r.authorization = NULL;
    cr_assert_eq(verify_request(ba, &r, env_of, (void *)none, "", 0, NOW_MS, why, sizeof(why)),
                 LB_ERR_UNAUTHORIZED);
    cr_assert_str_eq(why, "no Authorization header");
    verify_free(h);
    verify_free(b);
    verify_free(ba);
}

Test(verify, config_mistakes)
{
    expect_config_error("{\"scheme\": \"stripe\", \"secret\": \"0123456789abcdef\"}",
                        "forms.f.verify.scheme: must be one of");
    expect_config_error("{\"scheme\": \"typeform\"}", "needs a \"secret\"");
    expect_config_error("{\"scheme\": \"typeform\", \"secret\": \"short\"}",
                        "forms.f.verify.secret: must be 16 to 256 characters");
    expect_config_error("{\"scheme\": \"typeform\", \"secret\": [\"0123456789abcdef\", "
                        "\"0123456789abcdeg\", \"0123456789abcdeh\"]}",
                        "at most 2 secrets");
    expect_config_error("{\"scheme\": \"typeform\", \"algorithm\": \"sha1\", "
                        "\"secret\": \"0123456789abcdef\"}",
                        "forms.f.verify.algorithm: is fixed by scheme \"typeform\"");
    expect_config_error("{\"scheme\": \"hmac\", \"secret\": \"0123456789abcdef\"}",
                        "missing required key \"header\"");
    expect_config_error("{\"scheme\": \"hmac\", \"header\": \"X-Sig\", \"signed\": "
                        "\"{timestamp}\", \"timestamp_header\": \"X-T\", "
                        "\"secret\": \"0123456789abcdef\"}",
                        "must contain {body}");
    expect_config_error("{\"scheme\": \"hmac\", \"header\": \"X-Sig\", \"signed\": "
                        "\"{timestamp}.{body}\", \"secret\": \"0123456789abcdef\"}",
                        "no \"timestamp_header\"");
    expect_config_error("{\"scheme\": \"hmac\", \"header\": \"X-Sig\", \"signed\": \"{nonce}{body}\", "
                        "\"secret\": \"0123456789abcdef\"}",
                        "unknown placeholder");
    expect_config_error("{\"scheme\": \"hmac\", \"header\": \"X Sig\", "
                        "\"secret\": \"0123456789abcdef\"}",
                        "must be a header name");
    expect_config_error("{\"scheme\": \"hmac\", \"header\": \"X-Sig\", \"algorithm\": \"md5\", "
                        "\"secret\": \"0123456789abcdef\"}",
                        "must be sha1, sha256 or sha512");
    expect_config_error("{\"scheme\": \"tally\", \"tolerance\": 60, "
                        "\"secret\": \"0123456789abcdef\"}",
                        "sends no timestamp");
    expect_config_error("{\"scheme\": \"basic\", \"secret\": \"0123456789abcdef\"}",
                        "missing required key \"username\"");
    expect_config_error("{\"scheme\": \"standard_webhooks\", \"secret\": \"whsec_!!\"}",
                        "\"whsec_\" secret must be followed by base64");
    expect_config_error("{\"scheme\": \"typeform\", \"secret\": \"0123456789abcdef\", "
                        "\"colour\": 1}",
                        "unknown key \"colour\"");
}
