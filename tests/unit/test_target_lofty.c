/*
 * test_target_lofty.c: unit tests for the Lofty target (src/target_lofty.c).
 *
 * configure is driven with each auth mode and with broken configs; build is checked against
 * golden payloads, one directory per case under tests/data/lofty/<case>/ (lead.json, payload.json,
 * optionally conf.json, and lead_id for an update; compared with json_equal), and for method, URL
 * and headers; validate on both sides of every length limit; classify with hand-made replies,
 * including lead ids that a double cannot hold.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"
#include "target.h"

#define SUBMISSION "0123456789abcdef0123456789abcdef"
#define DEFAULT_CONF "{\"type\": \"lofty\", \"api_key\": \"key-1\"}"
#define NOTE_CONF "{\"type\": \"lofty\", \"api_key\": \"key-1\", \"long_names\": \"note\"}"

static const struct target_ops *ops = &target_lofty_ops;

/* Configures from JSON text; returns state or NULL. *d is left for the caller to inspect/free. */
static void *configure_text(const char *text, struct diag *d)
{
    json_error_t jerr;
    json_t *conf = json_loads(text, 0, &jerr);
    void *state;

    cr_assert_not_null(conf, "bad test config: %s", jerr.text);
    diag_init(d, "test.json", text, strlen(text));
    state = ops->configure(conf, "targets.crm", d);
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

/* Builds lead (JSON text) for action; asserts success and returns the parsed body. */
static json_t *build_body(const void *state, enum target_action action, const char *lead_text,
                          const char *lead_id, struct http_call *call)
{
    json_t *lead = load(lead_text), *body;
    enum lb_err e = ops->build(state, action, lead, lead_id, SUBMISSION, call);

    cr_assert_eq(e, LB_OK, "build: %s for %s", lb_err_name(e), lead_text);
    cr_assert_not_null(call->body);
    cr_assert_eq(call->body_len, strlen(call->body));
    body = json_loads(call->body, 0, NULL);
    cr_assert_not_null(body, "body is not JSON: %s", call->body);
    json_decref(lead);
    return body;
}

/* The lb_err of building lead_text (the call is freed). */
static enum lb_err build_result(const char *conf, enum target_action action, const char *lead_text,
                                const char *lead_id)
{
    void *st = configure_ok(conf);
    json_t *lead = load(lead_text);
    struct http_call call;
    enum lb_err e = ops->build(st, action, lead, lead_id, SUBMISSION, &call);

    if (e != LB_OK) {
        cr_assert_null(call.body);
        cr_assert_eq(call.n_headers, 0);
    }
    http_call_free(&call);
    json_decref(lead);
    ops->free(st);
    return e;
}

/* --- configure -------------------------------------------------------------------------------- */

Test(configure, token_auth_url_headers_and_timeouts)
{
    void *st = configure_ok(DEFAULT_CONF);
    struct http_call call;
    json_t *body = build_body(st, TARGET_CREATE, "{\"first_name\": \"Ann\"}", NULL, &call);

    cr_assert_str_eq(call.method, "POST");
    cr_assert_str_eq(call.url, "https://api.lofty.com/v1.0/leads");
    cr_assert_str_eq(header(&call, "Authorization"), "token key-1");
    cr_assert_str_eq(header(&call, "Content-Type"), "application/json");
    cr_assert_eq(call.connect_timeout_ms, 3000);
    cr_assert_eq(call.timeout_ms, 15000);
    json_decref(body);
    http_call_free(&call);
    ops->free(st);
}

Test(configure, bearer_auth_and_base_url)
{
    void *st = configure_ok("{\"type\": \"lofty\", \"auth\": \"bearer\", \"token\": \"oauth-1\", "
                            "\"base_url\": \"http://127.0.0.1:9/lofty/\", \"timeout\": 20, "
                            "\"connect_timeout\": 5}");
    struct http_call call;
    json_t *body = build_body(st, TARGET_CREATE, "{\"first_name\": \"Ann\"}", NULL, &call);

    cr_assert_str_eq(call.url, "http://127.0.0.1:9/lofty/v1.0/leads");
    cr_assert_str_eq(header(&call, "Authorization"), "Bearer oauth-1");
    cr_assert_eq(call.connect_timeout_ms, 5000);
    cr_assert_eq(call.timeout_ms, 20000);
    json_decref(body);
    http_call_free(&call);
    ops->free(st);
}

Test(configure, auth_inferred_from_keys)
{
    void *st = configure_ok("{\"type\": \"lofty\", \"token\": \"oauth-2\"}");
    struct http_call call;
    json_t *body = build_body(st, TARGET_CREATE, "{\"first_name\": \"Ann\"}", NULL, &call);

    cr_assert_str_eq(header(&call, "Authorization"), "Bearer oauth-2");
    json_decref(body);
    http_call_free(&call);
    ops->free(st);
}

Test(configure, refuses_mistakes)
{
    configure_fails("{\"type\": \"lofty\", \"auth\": \"token\"}", "api_key");
    configure_fails("{\"type\": \"lofty\", \"auth\": \"bearer\", \"api_key\": \"k\"}", "token");
    configure_fails("{\"type\": \"lofty\", \"auth\": \"bearer\", \"token\": \"t\", "
                    "\"api_key\": \"k\"}", "not used");
    configure_fails("{\"type\": \"lofty\"}", "auth");
    configure_fails("{\"type\": \"lofty\", \"auth\": \"basic\", \"api_key\": \"k\"}", "must be");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"apikey\": \"k\"}", "unknown key");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"long_names\": \"cut\"}",
                    "\"refuse\" or \"note\"");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"attribution\": \"utm\"}",
                    "\"tags\" or \"custom_attributes\"");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"tags\": \"Hot\"}", "array");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"tags\": [\"ok\", 3]}", "tags[1]");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"tags\": [\"" /* 65 */
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]}",
                    "64 characters");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\\nX: y\"}", "control");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"connect_timeout\": 301}",
                    "between 1 and 300");
    configure_fails("{\"type\": \"lofty\", \"api_key\": \"k\", \"base_url\": \"api.lofty.com\"}",
                    "https://");
}

Test(configure, tag_of_64_characters_is_fine)
{
    void *st = configure_ok("{\"type\": \"lofty\", \"api_key\": \"k\", \"tags\": [\""
                            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]}");

    ops->free(st);
}

Test(supports, create_and_update)
{
    cr_assert(ops->supports(TARGET_CREATE));
    cr_assert(ops->supports(TARGET_UPDATE));
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
    const char *dir = TEST_DATA_DIR "/lofty";
    DIR *dp = opendir(dir);
    struct dirent *de;
    int cases = 0;

    cr_assert_not_null(dp);
    while ((de = readdir(dp)) != NULL) {
        char path[1024], url[256];
        char *conf_text, *lead_text, *want_text, *lead_id;
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
        snprintf(path, sizeof(path), "%s/%s/lead_id", dir, de->d_name);
        lead_id = read_file(path);
        if (lead_id != NULL)
            lead_id[strcspn(lead_id, "\n")] = '\0';
        cr_assert_not_null(lead_text, "%s: no lead.json", de->d_name);
        cr_assert_not_null(want_text, "%s: no payload.json", de->d_name);
        st = configure_ok(conf_text != NULL ? conf_text : DEFAULT_CONF);
        got = build_body(st, lead_id != NULL ? TARGET_UPDATE : TARGET_CREATE, lead_text, lead_id,
                         &call);
        want = load(want_text);
        cr_expect(json_equal(got, want), "%s: got %s", de->d_name, call.body);
        if (lead_id != NULL) {
            snprintf(url, sizeof(url), "https://api.lofty.com/v1.0/leads/%s", lead_id);
            cr_expect_str_eq(call.method, "PUT", "%s", de->d_name);
            cr_expect_str_eq(call.url, url, "%s", de->d_name);
        } else {
            cr_expect_str_eq(call.method, "POST", "%s", de->d_name);
        }
        json_decref(got);
        json_decref(want);
        http_call_free(&call);
        ops->free(st);
        free(conf_text);
        free(lead_text);
        free(want_text);
        free(lead_id);
        cases++;
    }
    closedir(dp);
    cr_assert_geq(cases, 11);
}

Test(build, lead_types)
{
    static const struct {
        const char *lead;
        json_int_t want;
    } cases[] = {
        {"{\"first_name\": \"A\", \"type\": \"sale\"}", 2},
        {"{\"first_name\": \"A\", \"type\": \"let\"}", 5},
        {"{\"first_name\": \"A\", \"type\": \"vendor\"}", 1},
        {"{\"first_name\": \"A\", \"type\": \"landlord\"}", 9},
        {"{\"first_name\": \"A\", \"type\": \"mortgage_request\"}", -1},
        {"{\"first_name\": \"A\", \"type\": \"Sale\"}", -1},
        {"{\"first_name\": \"A\"}", -1},
    };
    void *st = configure_ok(DEFAULT_CONF);
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http_call call;
        json_t *body = build_body(st, TARGET_CREATE, cases[i].lead, NULL, &call);
        json_t *types = json_object_get(body, "leadTypes");

        cr_expect_eq(json_array_size(types), 1, "%s", cases[i].lead);
        cr_expect_eq(json_integer_value(json_array_get(types, 0)), cases[i].want, "%s",
                     cases[i].lead);
        json_decref(body);
        http_call_free(&call);
    }
    ops->free(st);
}

Test(build, update_needs_a_numeric_int64_id)
{
    const char *lead = "{\"phone\": \"+15555550100\"}";

    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, "651095960136641"), LB_OK);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, "9223372036854775807"), LB_OK);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, "9223372036854775808"),
                 LB_ERR_BAD_REQUEST);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, "12345678901234567890"),
                 LB_ERR_BAD_REQUEST);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, "12a"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, "../1"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, "-1"), LB_ERR_BAD_REQUEST);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, ""), LB_ERR_BAD_REQUEST);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_UPDATE, lead, NULL), LB_ERR_BAD_REQUEST);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_VALUATION, lead, NULL), LB_ERR_BAD_REQUEST);
}

Test(build, never_cuts_silently)
{
    /* 31 characters */
    const char *long_first = "{\"first_name\": \"Abcdefghijklmnopqrstuvwxyzabcde\"}";

    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_CREATE, long_first, NULL),
                 LB_ERR_INVALID_FIELDS);
    cr_assert_eq(build_result(NOTE_CONF, TARGET_CREATE, long_first, NULL), LB_OK);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_CREATE,
                              "{\"first_name\": \"A\", \"phone\": \"+44 (0) 7700 900 12345\"}",
                              NULL),
                 LB_ERR_INVALID_FIELDS);
    cr_assert_eq(build_result(DEFAULT_CONF, TARGET_CREATE, "{\"last_name\": \"Lee\"}", NULL),
                 LB_ERR_INVALID_FIELDS);
}

/* --- validate --------------------------------------------------------------------------------- */

/* A JSON string of n copies of unit (a UTF-8 character), quoted, in out. */
static const char *repeat(char *out, size_t size, const char *unit, size_t n)
{
    size_t o = 0, len = strlen(unit), i;

    out[o++] = '"';
    for (i = 0; i < n; i++) {
        cr_assert_lt(o + len + 2, size);
        memcpy(out + o, unit, len);
        o += len;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

/*
 * Validates the lead made of fmt with its one "%s" replaced by arg, under conf for action. Returns
 * the error count; *has is set when field has an error.
 */
static int check(const char *conf, enum target_action action, const char *fmt, const char *arg,
                 const char *field, bool *has)
{
    void *st = configure_ok(conf);
    char text[4096];
    const char *hole;
    json_t *lead, *errors = json_object();
    int n;

    hole = strstr(fmt, "%s");
    cr_assert_not_null(hole);
    cr_assert_lt(strlen(fmt) + strlen(arg), sizeof(text));
    memcpy(text, fmt, (size_t)(hole - fmt));
    memcpy(text + (hole - fmt), arg, strlen(arg));
    memcpy(text + (hole - fmt) + strlen(arg), hole + 2, strlen(hole + 2) + 1);
    lead = load(text);
    n = ops->validate(st, action, lead, errors);
    cr_assert_eq((size_t)n, json_object_size(errors));
    *has = json_is_string(json_object_get(errors, field));
    json_decref(lead);
    json_decref(errors);
    ops->free(st);
    return n;
}

#define OK(conf, action, fmt, arg)                                                          \
    do {                                                                                    \
        bool has_;                                                                          \
        cr_assert_eq(check(conf, action, fmt, arg, "", &has_), 0, "%s in %s", arg, fmt);    \
    } while (0)
#define BAD(conf, action, fmt, arg, field)                                                  \
    do {                                                                                    \
        bool has_;                                                                          \
        cr_assert_gt(check(conf, action, fmt, arg, field, &has_), 0, "%s in %s", arg, fmt); \
        cr_assert(has_, "no error for %s", field);                                          \
    } while (0)

Test(validate, names_30_and_31_in_refuse_and_note_modes)
{
    char s30[256], s31[256], u30[256], u31[256];

    repeat(s30, sizeof(s30), "a", 30);
    repeat(s31, sizeof(s31), "a", 31);
    repeat(u30, sizeof(u30), "\xc3\xa9", 30); /* 60 bytes, 30 characters */
    repeat(u31, sizeof(u31), "\xc3\xa9", 31);
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": %s}", s30);
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": %s}", u30);
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": %s}", s31, "first_name");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": %s}", u31, "first_name");
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"last_name\": %s}", s30);
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"last_name\": %s}", s31,
        "last_name");
    BAD(DEFAULT_CONF, TARGET_UPDATE, "{\"last_name\": %s}", u31, "last_name");
    OK(NOTE_CONF, TARGET_CREATE, "{\"first_name\": %s}", s31);
    OK(NOTE_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"last_name\": %s}", u31);
}

Test(validate, first_name_required_to_create_only)
{
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"email\": %s}", "\"a@example.org\"", "first_name");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": %s}", "\"\"", "first_name");
    OK(DEFAULT_CONF, TARGET_UPDATE, "{\"email\": %s}", "\"a@example.org\"");
}

Test(validate, phones_20_and_21)
{
    char p20[64], p21[64];

    repeat(p20, sizeof(p20), "1", 20);
    repeat(p21, sizeof(p21), "1", 21);
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"phone\": %s}", p20);
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"phone\": %s}", p21, "phone");
    BAD(DEFAULT_CONF, TARGET_UPDATE, "{\"phone\": %s}", p21, "phone");
}

Test(validate, tags_64_and_65_segments_30_and_31)
{
    char t64[256], t65[256], g30[256], g31[256], u64[512], u65[512];

    repeat(t64, sizeof(t64), "t", 64);
    repeat(t65, sizeof(t65), "t", 65);
    repeat(u64, sizeof(u64), "\xe2\x82\xac", 64);
    repeat(u65, sizeof(u65), "\xe2\x82\xac", 65);
    repeat(g30, sizeof(g30), "g", 30);
    repeat(g31, sizeof(g31), "g", 31);
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"tags\": [\"x\", %s]}}",
       t64);
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"tags\": [%s]}}", u64);
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"tags\": [\"x\", %s]}}",
        t65, "lofty.tags");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"tags\": [%s]}}", u65,
        "lofty.tags");
    BAD(NOTE_CONF, TARGET_UPDATE, "{\"lofty\": {\"tags\": [%s]}}", t65, "lofty.tags");
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"segments\": [%s]}}",
       g30);
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"segments\": [%s]}}",
        g31, "lofty.segments");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"tags\": %s}}",
        "\"Hot\"", "lofty.tags");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": {\"tags\": [%s]}}", "1",
        "lofty.tags");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"lofty\": %s}", "[]", "lofty");
}

Test(validate, types_and_bedrooms)
{
    OK(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"property_bedrooms\": %s}", "3");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"property_bedrooms\": %s}",
        "\"three\"", "property_bedrooms");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"property_bedrooms\": %s}", "2.5",
        "property_bedrooms");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"property_bedrooms\": %s}", "-1",
        "property_bedrooms");
    BAD(DEFAULT_CONF, TARGET_CREATE, "{\"first_name\": \"A\", \"email\": %s}", "[\"a@b.c\"]",
        "email");
    BAD(DEFAULT_CONF, TARGET_VALUATION, "{\"first_name\": %s}", "\"A\"", "action");
}

/* --- classify --------------------------------------------------------------------------------- */

/* Classifies a hand-made reply with status and body (NULL for none). */
static struct target_result classify(enum target_action action, long status, const char *body)
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
        reply.transport = LB_ERR_UPSTREAM;
        snprintf(reply.transport_message, sizeof(reply.transport_message), "connection refused");
    }
    memset(&r, 0, sizeof(r));
    r.retry_after = -1;
    ops->classify(NULL, action, &reply, &r);
    cr_assert_null(r.valuation);
    return r;
}

Test(classify, lead_ids_kept_exactly)
{
    static const char *const ids[] = {"651095960136641", "9007199254740993",
                                      "9223372036854775807"};
    char body[128];
    size_t i;

    for (i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        struct target_result r;

        snprintf(body, sizeof(body), "{\"leadId\": %s}", ids[i]);
        r = classify(TARGET_CREATE, 200, body);
        cr_expect_eq(r.outcome, DELIVERY_OK);
        cr_expect_str_eq(r.lead_id, ids[i]);
        snprintf(body, sizeof(body), "{\"leadId\": \"%s\"}", ids[i]);
        r = classify(TARGET_CREATE, 200, body);
        cr_expect_str_eq(r.lead_id, ids[i]);
    }
}

Test(classify, unusable_lead_ids_are_not_invented)
{
    struct target_result r = classify(TARGET_CREATE, 200, "{\"leadId\": 9007199254740993.0}");

    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
    cr_assert(strstr(r.reason, "leadId") != NULL, "%s", r.reason);
    r = classify(TARGET_CREATE, 200, "{\"leadId\": 9223372036854775808}");
    cr_assert_str_eq(r.lead_id, "");
    r = classify(TARGET_CREATE, 200, "{\"leadId\": -5}");
    cr_assert_str_eq(r.lead_id, "");
    r = classify(TARGET_CREATE, 200, "{\"leadId\": \"12ab\"}");
    cr_assert_str_eq(r.lead_id, "");
    r = classify(TARGET_UPDATE, 200, "");
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
    cr_assert_str_eq(r.reason, "");
}

Test(classify, error_shapes)
{
    struct target_result r = classify(TARGET_CREATE, 401, "{\"code\": \"BAD_CREDENTIALS\", "
                                                           "\"message\": \"invalid api key\"}");

    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_eq(r.http_status, 401);
    cr_assert_str_eq(r.reason, "BAD_CREDENTIALS: invalid api key");
    r = classify(TARGET_UPDATE, 404, "{\"code\": \"LEAD_NOT_EXIST\", \"message\": \"lead does not "
                                     "exist\"}");
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "LEAD_NOT_EXIST: lead does not exist");
    r = classify(TARGET_CREATE, 400, "{\"code\": \"PARAMETER_TOO_LONG\", \"message\": "
                                     "\"firstName exceeds 30 characters\"}");
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "PARAMETER_TOO_LONG: firstName exceeds 30 characters");
    r = classify(TARGET_CREATE, 400, "{\"code\": 1003, \"message\": \"bad\"}");
    cr_assert_str_eq(r.reason, "1003: bad");
    r = classify(TARGET_CREATE, 400, "{\"message\": \"only a message\"}");
    cr_assert_str_eq(r.reason, "only a message");
    r = classify(TARGET_CREATE, 429, "{\"code\": \"TOO_MANY_REQUESTS\", \"message\": \"slow\"}");
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    r = classify(TARGET_CREATE, 502, "<html>bad gateway</html>");
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_str_eq(r.reason, "Lofty answered HTTP 502");
    r = classify(TARGET_CREATE, 0, NULL);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert(strstr(r.reason, "connection refused") != NULL, "%s", r.reason);
}

Test(classify, reason_is_stripped_and_capped)
{
    char body[4096];
    struct target_result r;
    size_t i, o;

    r = classify(TARGET_CREATE, 400, "{\"code\": \"X\\n\", \"message\": \"a\\r\\nb\\u0007c\"}");
    cr_assert_str_eq(r.reason, "X: a b c");
    o = (size_t)snprintf(body, sizeof(body), "{\"code\": \"PARAMETER_INVALID\", \"message\": \"");
    for (i = 0; i < 500; i++) {
        memcpy(body + o, "\xc3\xa9", 2);
        o += 2;
    }
    memcpy(body + o, "\"}", 3);
    r = classify(TARGET_CREATE, 400, body);
    cr_assert_leq(strlen(r.reason), 300);
    cr_assert_geq(strlen(r.reason), 299);
    cr_assert(strncmp(r.reason, "PARAMETER_INVALID: ", 19) == 0);
    cr_assert(parse_utf8_valid(r.reason, strlen(r.reason)), "cut inside a character");
}
