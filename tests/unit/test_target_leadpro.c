/*
 * test_target_leadpro.c: unit tests for the LeadPro target (src/target_leadpro.c).
 *
 * configure() on good and bad configs; validate() on both sides of every documented limit and the
 * rules by lead type; build() for exact bodies, URLs, headers and meta priority; classify() on
 * hand-made replies (ids of every shape, valuations whole and partial, API errors). Reply bodies
 * that read better as files are under tests/data/leadpro/.
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "diag.h"
#include "http.h"
#include "target.h"

#define OPS (&target_leadpro_ops)
#define SUBMISSION "0123456789abcdef0123456789abcdef"
#define KEY "secret-key-123"
#define BASIC_CONF "{\"type\": \"leadpro\", \"api_key\": \"" KEY "\"}"

#define SALE_LEAD                                                                                 \
    "{\"type\": \"sale\", \"first_name\": \"Marla\", \"last_name\": \"Singer\", "                 \
    "\"email\": \"cloud9@cloud.com\", \"phone\": \"01623000000\", \"advert_postcode\": \"DE1 1JX\"}"
#define VENDOR_LEAD                                                                               \
    "{\"type\": \"vendor\", \"first_name\": \"Marla\", \"last_name\": \"Singer\", "               \
    "\"email\": \"cloud9@cloud.com\", \"phone\": \"07986000000\", \"postcode\": \"DE1 1JX\"}"

/* ---- helpers ---- */

static json_t *json_of(const char *text)
{
    json_error_t je;
    json_t *v = json_loads(text, 0, &je);

    cr_assert_not_null(v, "bad test JSON: %s", je.text);
    return v;
}

/* Configures from text; returns the state (or NULL) and leaves the messages in *d. */
static void *configure_text(const char *text, struct diag *d)
{
    json_t *conf = json_of(text);
    void *st;

    diag_init(d, "test.json", text, strlen(text));
    st = OPS->configure(conf, "targets.lp", d);
    json_decref(conf); /* the state must not borrow from the config */
    return st;
}

static void *basic_state(void)
{
    struct diag d;
    void *st = configure_text(BASIC_CONF, &d);

    cr_assert_not_null(st);
    cr_assert_eq(d.count, 0);
    diag_free(&d);
    return st;
}

/* Whether any diag message contains needle. */
static bool diag_has(const struct diag *d, const char *needle)
{
    size_t i;

    for (i = 0; i < d->count; i++)
        if (strstr(d->messages[i], needle) != NULL)
            return true;
    return false;
}

/* n copies of unit. */
static char *repeat(const char *unit, size_t n)
{
    size_t len = strlen(unit), i;
    char *s = malloc(len * n + 1);

    cr_assert_not_null(s);
    for (i = 0; i < n; i++)
        memcpy(s + i * len, unit, len);
    s[len * n] = '\0';
    return s;
}

/* Validates lead; returns the errors object (caller frees). */
static json_t *errors_for(enum target_action action, const json_t *lead)
{
    void *st = basic_state();
    json_t *errors = json_object();
    int n = OPS->validate(st, action, lead, errors);

    cr_assert_eq((size_t)n, json_object_size(errors), "validate's count must match the errors");
    OPS->free(st);
    return errors;
}

/* Whether validating base (JSON text) with field set to value (stolen) gives field an error. */
static bool field_refused(enum target_action action, const char *base, const char *field,
                          json_t *value)
{
    json_t *lead = json_of(base);
    json_t *errors;
    bool refused;

    json_object_set_new(lead, field, value);
    errors = errors_for(action, lead);
    refused = json_object_get(errors, field) != NULL;
    json_decref(errors);
    json_decref(lead);
    return refused;
}

/* Same with a string of n copies of unit. */
static bool text_refused(enum target_action action, const char *base, const char *field,
                         const char *unit, size_t n)
{
    char *s = repeat(unit, n);
    bool refused = field_refused(action, base, field, json_string(s));

    free(s);
    return refused;
}

/* Whether the lead (text) has an error on field. */
static bool lead_refused(enum target_action action, const char *text, const char *field)
{
    json_t *lead = json_of(text);
    json_t *errors = errors_for(action, lead);
    bool refused = json_object_get(errors, field) != NULL;

    json_decref(errors);
    json_decref(lead);
    return refused;
}

static size_t error_count(enum target_action action, const char *text)
{
    json_t *lead = json_of(text);
    json_t *errors = errors_for(action, lead);
    size_t n = json_object_size(errors);

    json_decref(errors);
    json_decref(lead);
    return n;
}

static bool has_header(const struct http_call *call, const char *line)
{
    size_t i;

    for (i = 0; i < call->n_headers; i++)
        if (strcmp(call->headers[i], line) == 0)
            return true;
    return false;
}

/* Builds with the given state; asserts success; returns the parsed body (caller frees). */
static json_t *build_ok(void *st, enum target_action action, const char *lead_text,
                        const char *lead_id, struct http_call *call)
{
    json_t *lead = json_of(lead_text);
    enum lb_err e = OPS->build(st, action, lead, lead_id, SUBMISSION, call);
    json_t *body;

    cr_assert_eq(e, LB_OK, "build failed: %d", (int)e);
    cr_assert_not_null(call->body);
    cr_assert_eq(call->body_len, strlen(call->body));
    body = json_of(call->body);
    json_decref(lead);
    return body;
}

static char *read_data(const char *name, size_t *len)
{
    char path[1024];
    FILE *f;
    char *s;
    long n;

    snprintf(path, sizeof(path), "%s/leadpro/%s", TEST_DATA_DIR, name);
    f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    cr_assert_geq(n, 0);
    rewind(f);
    s = malloc((size_t)n + 1);
    cr_assert_not_null(s);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return s;
}

/* Classifies a reply with status and body (copied) for action. */
static void classify_text(enum target_action action, long status, const char *body,
                          struct target_result *r)
{
    void *st = basic_state();
    struct http_reply reply;

    memset(&reply, 0, sizeof(reply));
    reply.status = status;
    reply.retry_after = -1;
    reply.rate_limit_reset = -1;
    if (body != NULL) {
        reply.body = strdup(body);
        cr_assert_not_null(reply.body);
        reply.body_len = strlen(body);
    }
    memset(r, 0, sizeof(*r));
    r->retry_after = -1;
    OPS->classify(st, action, &reply, r);
    free(reply.body);
    OPS->free(st);
}

static void classify_file(enum target_action action, long status, const char *name,
                          struct target_result *r)
{
    size_t len;
    char *body = read_data(name, &len);

    classify_text(action, status, body, r);
    free(body);
}

static long long number_at(const json_t *v, const char *block, const char *key)
{
    const json_t *n = json_object_get(json_object_get(v, block), key);

    cr_assert(json_is_integer(n), "%s.%s is not an integer", block, key);
    return json_integer_value(n);
}

/* ---- configure ---- */

Test(configure, good_config_and_defaults)
{
    struct diag d;
    void *st = configure_text(BASIC_CONF, &d);
    struct http_call call;
    json_t *body;

    cr_assert_not_null(st);
    cr_assert_eq(d.count, 0);
    body = build_ok(st, TARGET_CREATE, SALE_LEAD, NULL, &call);
    cr_assert_str_eq(call.url, "https://api.lead.pro/api/v103/leads");
    cr_assert_eq(call.connect_timeout_ms, 3000);
    cr_assert_eq(call.timeout_ms, 15000);
    cr_assert_null(json_object_get(body, "office_id"));
    json_decref(body);
    http_call_free(&call);
    OPS->free(st);
    diag_free(&d);
}

Test(configure, every_key)
{
    struct diag d;
    void *st = configure_text("{\"type\": \"leadpro\", \"api_key\": \"k1\", "
                              "\"base_url\": \"http://127.0.0.1:8080/api/v103/\", "
                              "\"connect_timeout\": 2, \"timeout\": 9, \"source\": \"zoopla\", "
                              "\"office_id\": \"375\"}",
                              &d);
    struct http_call call;
    json_t *body;

    cr_assert_not_null(st, "%s", d.count > 0 ? d.messages[0] : "");
    body = build_ok(st, TARGET_CREATE, SALE_LEAD, NULL, &call);
    cr_assert_str_eq(call.url, "http://127.0.0.1:8080/api/v103/leads", "trailing slash tolerated");
    cr_assert_eq(call.connect_timeout_ms, 2000);
    cr_assert_eq(call.timeout_ms, 9000);
    cr_assert(has_header(&call, "X-API-KEY: k1"));
    cr_assert_str_eq(json_string_value(json_object_get(body, "source")), "zoopla");
    cr_assert_eq(json_integer_value(json_object_get(body, "office_id")), 375);
    json_decref(body);
    http_call_free(&call);
    OPS->free(st);
    diag_free(&d);
}

Test(configure, missing_api_key)
{
    struct diag d;
    void *st = configure_text("{\"type\": \"leadpro\"}", &d);

    cr_assert_null(st);
    cr_assert(diag_has(&d, "api_key"));
    diag_free(&d);
    st = configure_text("{\"type\": \"leadpro\", \"api_key\": \"\"}", &d);
    cr_assert_null(st);
    cr_assert(diag_has(&d, "api_key"));
    diag_free(&d);
}

Test(configure, unknown_key)
{
    struct diag d;
    void *st = configure_text("{\"type\": \"leadpro\", \"api_key\": \"k\", \"apikey\": \"k\"}", &d);

    cr_assert_null(st);
    cr_assert(diag_has(&d, "apikey"));
    diag_free(&d);
}

Test(configure, bad_values)
{
    static const char *const bad[] = {
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"base_url\": \"ftp://api.lead.pro\"}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"base_url\": \"api.lead.pro/api\"}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"base_url\": \"https://\"}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"base_url\": \"https://a b.com\"}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"base_url\": \"https://a.com/?x=1\"}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"base_url\": 5}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\\r\\nX: y\"}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"timeout\": 0}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"timeout\": 5, \"connect_timeout\": 10}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"office_id\": 3.5}",
        "{\"type\": \"leadpro\", \"api_key\": \"k\", \"office_id\": \"12a\"}",
        "{\"type\": \"lofty\", \"api_key\": \"k\"}",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct diag d;
        void *st = configure_text(bad[i], &d);

        cr_expect_null(st, "accepted: %s", bad[i]);
        cr_expect_gt(d.count, 0, "no message for: %s", bad[i]);
        OPS->free(st);
        diag_free(&d);
    }
}

Test(configure, supports_three_actions)
{
    cr_assert(OPS->supports(TARGET_CREATE));
    cr_assert(OPS->supports(TARGET_VALUATION));
    cr_assert(OPS->supports(TARGET_UPDATE));
    cr_assert(!OPS->supports(TARGET_ACTION__MAX));
    cr_assert_str_eq(OPS->type, "leadpro");
}

/* ---- validate ---- */

Test(validate, good_leads_pass)
{
    cr_assert_eq(error_count(TARGET_CREATE, SALE_LEAD), 0);
    cr_assert_eq(error_count(TARGET_CREATE, VENDOR_LEAD), 0);
    cr_assert_eq(error_count(TARGET_VALUATION, VENDOR_LEAD), 0);
    cr_assert_eq(error_count(TARGET_CREATE,
                             "{\"type\": \"mortgage_request\", \"first_name\": \"A\", "
                             "\"last_name\": \"B\", \"email\": \"a@b.co\", \"phone\": \"1\"}"),
                 0);
}

Test(validate, required_fields)
{
    json_t *lead = json_of("{\"first_name\": \"\", \"city\": \"Derby\"}");
    json_t *errors = errors_for(TARGET_CREATE, lead);
    static const char *const required[] = {"first_name", "last_name", "email", "phone", "type"};
    size_t i;

    for (i = 0; i < 5; i++)
        cr_assert_str_eq(json_string_value(json_object_get(errors, required[i])), "is required",
                         "%s", required[i]);
    cr_assert_null(json_object_get(errors, "city"), "fields LeadPro does not take are ignored");
    json_decref(errors);
    json_decref(lead);
}

Test(validate, name_lengths_in_characters)
{
    static const char *const fields[] = {"first_name", "last_name", "title"};
    size_t i;

    for (i = 0; i < 3; i++) {
        cr_assert(!text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "x", 50), "%s", fields[i]);
        cr_assert(text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "x", 51), "%s", fields[i]);
        cr_assert(!text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "\xc3\xa9", 50));
        cr_assert(text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "\xc3\xa9", 51));
    }
}

Test(validate, addresses_100)
{
    cr_assert(!text_refused(TARGET_CREATE, SALE_LEAD, "advert_address", "a", 100));
    cr_assert(text_refused(TARGET_CREATE, SALE_LEAD, "advert_address", "a", 101));
    cr_assert(!text_refused(TARGET_CREATE, SALE_LEAD, "address", "a", 100));
    cr_assert(text_refused(TARGET_CREATE, SALE_LEAD, "address", "a", 101));
    cr_assert(!text_refused(TARGET_VALUATION, VENDOR_LEAD, "address", "a", 100));
    cr_assert(text_refused(TARGET_VALUATION, VENDOR_LEAD, "address", "a", 101));
}

Test(validate, postcodes_2_to_10)
{
    static const char *const fields[] = {"postcode", "advert_postcode"};
    size_t i;

    for (i = 0; i < 2; i++) {
        cr_assert(text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "A", 1), "%s", fields[i]);
        cr_assert(!text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "A", 2), "%s", fields[i]);
        cr_assert(!text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "A", 10), "%s", fields[i]);
        cr_assert(text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "A", 11), "%s", fields[i]);
    }
}

Test(validate, texts_255)
{
    static const char *const fields[] = {"advert_url", "advert_image", "message", "host",
                                         "phone"};
    size_t i;

    for (i = 0; i < 5; i++) {
        cr_assert(!text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "u", 255), "%s", fields[i]);
        cr_assert(text_refused(TARGET_CREATE, SALE_LEAD, fields[i], "u", 256), "%s", fields[i]);
    }
}

Test(validate, messages_never_hold_the_value)
{
    char *name = repeat("Z", 60);
    json_t *lead = json_of(SALE_LEAD);
    json_t *errors;
    const char *msg;

    json_object_set_new(lead, "first_name", json_string(name));
    json_object_set_new(lead, "email", json_string("zzzz-secret@nowhere"));
    errors = errors_for(TARGET_CREATE, lead);
    msg = json_string_value(json_object_get(errors, "first_name"));
    cr_assert_not_null(msg);
    cr_assert_str_eq(msg, "must be at most 50 characters");
    msg = json_string_value(json_object_get(errors, "email"));
    cr_assert_not_null(msg);
    cr_assert_null(strstr(msg, "zzzz"));
    json_decref(errors);
    json_decref(lead);
    free(name);
}

Test(validate, email)
{
    static const char *const good[] = {"a@b.co", "first.last+tag@example.co.uk",
                                       "o'neil@example.com"};
    static const char *const bad[] = {"a@b", "@b.com", "a b@c.com", "a@@b.com", "a@b@c.com",
                                      "a@b.com.", "a@.com", ".a@b.com", "a.@b.com", "a..b@c.com",
                                      "a@b..com", "plainaddress", "a@b.com\n"};
    char *local;
    char addr[128];
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "email", json_string(good[i])), "%s",
                  good[i]);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "email", json_string(bad[i])), "%s",
                  bad[i]);
    local = repeat("l", 64);
    snprintf(addr, sizeof(addr), "%s@example.com", local);
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "email", json_string(addr)));
    snprintf(addr, sizeof(addr), "%sl@example.com", local);
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "email", json_string(addr)));
    free(local);
}

Test(validate, enums_and_booleans)
{
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "type", json_string("buyer")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "type", json_string("Sale")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "property_type", json_string("bungalow")));
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "property_type",
                             json_string("semi-detached")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "gdpr_checkbox", json_string("yes")));
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "gdpr_checkbox", json_false()));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "international", json_integer(1)));
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "international", json_true()));
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "office_id", json_integer(375)));
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "office_id", json_string("375")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "office_id", json_string("37a")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "office_id", json_real(3.5)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "first_name", json_integer(7)));
    cr_assert(!field_refused(TARGET_VALUATION, VENDOR_LEAD, "property_bedrooms", json_integer(4)));
    cr_assert(!field_refused(TARGET_VALUATION, VENDOR_LEAD, "property_bedrooms", json_string("4")));
    cr_assert(field_refused(TARGET_VALUATION, VENDOR_LEAD, "property_bedrooms", json_integer(-1)));
    cr_assert(field_refused(TARGET_VALUATION, VENDOR_LEAD, "property_bedrooms", json_string("x")));
}

/* meta {"k": "<n bytes>"} is 8 + n bytes of compact JSON. */
Test(validate, meta_1024_bytes)
{
    char *v = repeat("m", 1016);
    char *v2 = repeat("m", 1017);

    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "meta", json_pack("{ss}", "k", v)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "meta", json_pack("{ss}", "k", v2)));
    /* The API's PHP writes "/" as "\/": a slash counts two bytes. */
    v[0] = '/';
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "meta", json_pack("{ss}", "k", v)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "meta", json_pack("{si}", "k", 1)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "meta", json_string("text")));
    cr_assert(field_refused(TARGET_UPDATE, "{\"status\": \"Contacted\"}", "meta",
                            json_pack("{ss}", "k", v2)));
    free(v);
    free(v2);
}

Test(validate, appointment_availability)
{
    char *v = repeat("h", 1016);
    char *v2 = repeat("h", 1017);

    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "appointment_availability",
                             json_pack("{s[ss]}", "hours", "2025-01-01T08:00:00.000Z",
                                       "2025-01-01T09:00:00.000Z")));
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "appointment_availability",
                             json_pack("{ss}", "k", v)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "appointment_availability",
                            json_pack("{ss}", "k", v2)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "appointment_availability",
                            json_pack("{s[i]}", "hours", 8)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "appointment_availability",
                            json_pack("[s]", "monday")));
    free(v);
    free(v2);
}

/* [["q","<n>"]] is 10 + n bytes; {"q": "<n>"} is converted to the same. */
Test(validate, questionnaire_2048_bytes)
{
    char *v = repeat("a", 2038);
    char *v2 = repeat("a", 2039);

    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire",
                             json_pack("[[ss]]", "q", v)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire",
                            json_pack("[[ss]]", "q", v2)));
    cr_assert(!field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire",
                             json_pack("{ss}", "q", v)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire",
                            json_pack("{ss}", "q", v2)));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire", json_pack("[[s]]", "q")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire",
                            json_pack("[[sss]]", "q", "a", "b")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire", json_pack("[s]", "q")));
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "questionnaire",
                            json_pack("[[si]]", "q", 1)));
    free(v);
    free(v2);
}

Test(validate, valuation_only_for_vendor_or_landlord)
{
    json_t *lead = json_of(SALE_LEAD);
    json_t *errors;

    json_object_set_new(lead, "postcode", json_string("DE1 1JX"));
    errors = errors_for(TARGET_VALUATION, lead);
    cr_assert_str_eq(json_string_value(json_object_get(errors, "type")),
                     "instant valuations are only for vendor or landlord leads");
    json_decref(errors);
    json_decref(lead);
    cr_assert(!field_refused(TARGET_VALUATION, VENDOR_LEAD, "type", json_string("landlord")));
    cr_assert(field_refused(TARGET_VALUATION, VENDOR_LEAD, "type", json_string("let")));
    cr_assert(field_refused(TARGET_VALUATION, VENDOR_LEAD, "postcode", json_null()));
}

Test(validate, advert_or_address_by_type)
{
    /* sale and let need one of the advert address fields */
    cr_assert(field_refused(TARGET_CREATE, SALE_LEAD, "advert_postcode", json_null()));
    cr_assert(lead_refused(TARGET_CREATE,
                           "{\"type\": \"let\", \"first_name\": \"A\", \"last_name\": \"B\", "
                           "\"email\": \"a@b.co\", \"phone\": \"1\", \"postcode\": \"DE1 1JX\"}",
                           "advert_postcode"));
    cr_assert_eq(error_count(TARGET_CREATE,
                             "{\"type\": \"let\", \"first_name\": \"A\", \"last_name\": \"B\", "
                             "\"email\": \"a@b.co\", \"phone\": \"1\", "
                             "\"advert_address\": \"1 High St\"}"),
                 0);
    /* vendor and landlord need postcode and refuse advert fields */
    cr_assert(field_refused(TARGET_CREATE, VENDOR_LEAD, "postcode", json_string("")));
    cr_assert(field_refused(TARGET_CREATE, VENDOR_LEAD, "advert_address", json_string("1 St")));
    cr_assert(field_refused(TARGET_CREATE, VENDOR_LEAD, "advert_url", json_string("https://x")));
    cr_assert(field_refused(TARGET_VALUATION, VENDOR_LEAD, "advert_postcode",
                            json_string("DE1 1JX")));
    /* mortgage requests need neither */
    cr_assert_eq(error_count(TARGET_CREATE,
                             "{\"type\": \"mortgage_request\", \"first_name\": \"A\", "
                             "\"last_name\": \"B\", \"email\": \"a@b.co\", \"phone\": \"1\", "
                             "\"advert_url\": \"https://x\"}"),
                 0);
}

Test(validate, leadpro_object_wins)
{
    cr_assert_eq(error_count(TARGET_CREATE, "{\"type\": \"sale\", \"first_name\": \"Marla\", "
                                            "\"last_name\": \"Singer\", \"email\": \"a@b.co\", "
                                            "\"phone\": \"1\", \"advert_postcode\": \"X\", "
                                            "\"leadpro\": {\"advert_postcode\": \"DE1 1JX\"}}"),
                 0);
}

Test(validate, update_rules)
{
    cr_assert(lead_refused(TARGET_UPDATE, "{}", "lead"));
    cr_assert(lead_refused(TARGET_UPDATE, "{\"city\": \"Derby\", \"first_name\": \"\"}", "lead"));
    cr_assert_eq(error_count(TARGET_UPDATE, "{\"status\": \"Contacted\"}"), 0);
    cr_assert_eq(error_count(TARGET_UPDATE, "{\"gclid\": \"G1\"}"), 0);
    cr_assert_eq(error_count(TARGET_UPDATE, "{\"leadpro\": {\"status\": \"Contacted\"}}"), 0);
    cr_assert(!text_refused(TARGET_UPDATE, "{}", "first_name", "n", 50));
    cr_assert(text_refused(TARGET_UPDATE, "{}", "first_name", "n", 51));
    cr_assert(!text_refused(TARGET_UPDATE, "{}", "address", "a", 255));
    cr_assert(text_refused(TARGET_UPDATE, "{}", "address", "a", 256));
    cr_assert(!text_refused(TARGET_UPDATE, "{}", "advert_postcode", "a", 255));
    cr_assert(text_refused(TARGET_UPDATE, "{}", "postcode", "a", 256));
    cr_assert(!field_refused(TARGET_UPDATE, "{}", "next_action_date",
                             json_string("2025-07-12T10:00:00Z")));
    cr_assert(!field_refused(TARGET_UPDATE, "{}", "next_action_date",
                             json_string("2025-07-12T10:00:00.123+01:00")));
    cr_assert(!field_refused(TARGET_UPDATE, "{}", "next_action_date", json_string("2024-02-29")));
    cr_assert(field_refused(TARGET_UPDATE, "{}", "next_action_date", json_string("2025-02-29")));
    cr_assert(field_refused(TARGET_UPDATE, "{}", "next_action_date", json_string("2025-13-01")));
    cr_assert(field_refused(TARGET_UPDATE, "{}", "next_action_date", json_string("tomorrow")));
    cr_assert(field_refused(TARGET_UPDATE, "{}", "next_action_date",
                            json_string("2025-07-12T25:00:00Z")));
    cr_assert(field_refused(TARGET_UPDATE, "{}", "gdpr_checkbox", json_string("true")));
    /* create-only requirements do not apply to updates */
    cr_assert(!lead_refused(TARGET_UPDATE, "{\"status\": \"New\"}", "email"));
}

/* ---- build ---- */

Test(build, exact_create_body)
{
    void *st = basic_state();
    struct http_call call;
    json_t *lead = json_of(
        "{\"type\": \"sale\", \"phone\": \"01623000000\", \"first_name\": \"Marla\", "
        "\"last_name\": \"Singer\", \"email\": \"cloud9@cloud.com\", \"title\": \"Mrs\", "
        "\"advert_address\": \"123 Example Street, Example town\", "
        "\"advert_postcode\": \"DE1 1JX\", \"advert_url\": \"https://placeholder.com/150\", "
        "\"utm_source\": \"social_media\", \"utm_campaign\": \"newsletter_2025\", "
        "\"appointment_availability\": {\"hours\": [\"2025-01-01T08:00:00.000Z\"]}, "
        "\"message\": \"I would like a viewing\", \"meta\": {\"Property ID\": \"7362\"}, "
        "\"gdpr_checkbox\": true, \"office_id\": \"375\", "
        "\"questionnaire\": {\"Pets?\": \"Yes\"}, \"gclid\": \"G1\", "
        "\"city\": \"Derby\", \"ip\": \"192.0.2.1\", \"user_agent\": \"UA\", "
        "\"property_bedrooms\": 3, \"lofty\": {\"tags\": [\"Hot\"]}, \"price\": 250000}");
    const char *expected =
        "{\"first_name\":\"Marla\",\"last_name\":\"Singer\",\"email\":\"cloud9@cloud.com\","
        "\"phone\":\"01623000000\",\"type\":\"sale\",\"title\":\"Mrs\","
        "\"advert_address\":\"123 Example Street, Example town\",\"advert_postcode\":\"DE1 1JX\","
        "\"advert_url\":\"https://placeholder.com/150\",\"message\":\"I would like a viewing\","
        "\"appointment_availability\":{\"hours\":[\"2025-01-01T08:00:00.000Z\"]},"
        "\"meta\":{\"leadbridge_id\":\"" SUBMISSION "\",\"Property ID\":\"7362\",\"gclid\":\"G1\"},"
        "\"questionnaire\":[[\"Pets?\",\"Yes\"]],\"gdpr_checkbox\":true,\"office_id\":375,"
        "\"source\":\"homepage\",\"utm_source\":\"social_media\","
        "\"utm_campaign\":\"newsletter_2025\"}";

    cr_assert_eq(OPS->build(st, TARGET_CREATE, lead, NULL, SUBMISSION, &call), LB_OK);
    cr_assert_str_eq(call.body, expected);
    cr_assert_eq(call.body_len, strlen(expected));
    cr_assert_str_eq(call.method, "POST");
    cr_assert_str_eq(call.url, "https://api.lead.pro/api/v103/leads");
    cr_assert(has_header(&call, "X-API-KEY: " KEY));
    cr_assert(has_header(&call, "Accept: application/json"));
    cr_assert(has_header(&call, "Content-Type: application/json"));
    http_call_free(&call);
    json_decref(lead);
    OPS->free(st);
}

Test(build, valuation_defaults_to_ivt)
{
    struct diag d;
    void *st = configure_text("{\"type\": \"leadpro\", \"api_key\": \"k\", \"source\": "
                              "\"zoopla\"}", &d);
    struct http_call call;
    json_t *body;
    const char *lead = "{\"type\": \"vendor\", \"first_name\": \"Marla\", \"last_name\": \"S\", "
                       "\"email\": \"a@b.co\", \"phone\": \"07986000000\", \"postcode\": "
                       "\"De1 1JX\", \"property_bedrooms\": \"4\", \"address\": \"1 St\"}";

    cr_assert_not_null(st);
    body = build_ok(st, TARGET_VALUATION, lead, NULL, &call);
    cr_assert_str_eq(call.method, "POST");
    cr_assert_str_eq(call.url, "https://api.lead.pro/api/v103/leads/valuation");
    cr_assert_str_eq(json_string_value(json_object_get(body, "source")), "ivt");
    cr_assert(json_is_integer(json_object_get(body, "property_bedrooms")));
    cr_assert_eq(json_integer_value(json_object_get(body, "property_bedrooms")), 4);
    cr_assert_str_eq(json_string_value(json_object_get(body, "postcode")), "De1 1JX");
    json_decref(body);
    http_call_free(&call);
    /* the config's source is for create */
    body = build_ok(st, TARGET_CREATE, lead, NULL, &call);
    cr_assert_str_eq(json_string_value(json_object_get(body, "source")), "zoopla");
    cr_assert_null(json_object_get(body, "property_bedrooms"), "not a create field");
    json_decref(body);
    http_call_free(&call);
    OPS->free(st);
    diag_free(&d);
}

Test(build, update_patch)
{
    void *st = basic_state();
    struct http_call call;
    json_t *body;
    json_t *meta;

    body = build_ok(st, TARGET_UPDATE,
                    "{\"type\": \"sale\", \"email\": \"a@b.co\", \"first_name\": \"Joe\", "
                    "\"postcode\": \"EX1 2MP\", \"office_id\": 375, \"gclid\": \"GCLID1\", "
                    "\"utm_source\": \"Google\", \"fbclid\": \"F1\", \"source\": \"zoopla\", "
                    "\"leadpro\": {\"status\": \"Contacted\", "
                    "\"next_action_date\": \"2025-07-12T10:00:00Z\"}}",
                    "lp_98765", &call);
    cr_assert_str_eq(call.method, "PATCH");
    cr_assert_str_eq(call.url, "https://api.lead.pro/api/v103/leads/lp_98765");
    cr_assert(has_header(&call, "X-API-KEY: " KEY));
    cr_assert_str_eq(json_string_value(json_object_get(body, "first_name")), "Joe");
    cr_assert_str_eq(json_string_value(json_object_get(body, "status")), "Contacted");
    cr_assert_str_eq(json_string_value(json_object_get(body, "next_action_date")),
                     "2025-07-12T10:00:00Z");
    cr_assert_eq(json_integer_value(json_object_get(body, "office_id")), 375);
    cr_assert_str_eq(json_string_value(json_object_get(body, "utm_gclid")), "GCLID1");
    cr_assert_null(json_object_get(body, "type"), "not an update field");
    cr_assert_null(json_object_get(body, "email"), "not an update field");
    cr_assert_null(json_object_get(body, "source"), "not an update field");
    meta = json_object_get(body, "meta");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "leadbridge_update_id")), SUBMISSION);
    cr_assert_null(json_object_get(meta, "leadbridge_id"), "must not overwrite the create's id");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "fbclid")), "F1");
    cr_assert_null(json_object_get(meta, "gclid"), "gclid travels as utm_gclid");
    json_decref(body);
    http_call_free(&call);
    OPS->free(st);
}

Test(build, unknown_source_becomes_homepage)
{
    void *st = basic_state();
    struct http_call call;
    json_t *body;
    char line[1024] = "";
    FILE *err;

    cr_redirect_stderr();
    body = build_ok(st, TARGET_CREATE,
                    "{\"type\": \"vendor\", \"first_name\": \"M\", \"last_name\": \"S\", "
                    "\"email\": \"a@b.co\", \"phone\": \"0\", \"postcode\": \"DE1\", "
                    "\"source\": \"facebook\"}",
                    NULL, &call);
    cr_assert_str_eq(json_string_value(json_object_get(body, "source")), "homepage");
    json_decref(body);
    http_call_free(&call);
    fflush(stderr);
    fclose(stderr);
    err = cr_get_redirected_stderr();
    cr_assert_not_null(fgets(line, sizeof(line), err));
    cr_assert_not_null(strstr(line, "unknown lead source replaced by homepage"), "%s", line);
    cr_assert_null(strstr(line, "facebook"), "the log holds no lead data");

    /* a documented source in another case is sent in the documented spelling */
    body = build_ok(st, TARGET_CREATE,
                    "{\"type\": \"vendor\", \"first_name\": \"M\", \"last_name\": \"S\", "
                    "\"email\": \"a@b.co\", \"phone\": \"0\", \"postcode\": \"DE1\", "
                    "\"source\": \"Rightmove\"}",
                    NULL, &call);
    cr_assert_str_eq(json_string_value(json_object_get(body, "source")), "rightmove");
    json_decref(body);
    http_call_free(&call);
    OPS->free(st);
}

Test(build, meta_priority_and_cap)
{
    void *st = basic_state();
    struct http_call call;
    json_t *lead = json_of(SALE_LEAD);
    json_t *body, *meta;
    char *big = repeat("b", 850);
    char *page = repeat("p", 60);
    char *ref = repeat("r", 200);
    enum lb_err e;

    json_object_set_new(lead, "meta", json_pack("{ss}", "notes", big));
    json_object_set_new(lead, "gclid", json_string("G-123"));
    json_object_set_new(lead, "utm_id", json_string("U-9"));
    json_object_set_new(lead, "landing_page", json_string(page));
    json_object_set_new(lead, "referrer", json_string(ref));
    e = OPS->build(st, TARGET_CREATE, lead, NULL, SUBMISSION, &call);
    cr_assert_eq(e, LB_OK);
    body = json_of(call.body);
    meta = json_object_get(body, "meta");
    cr_assert_leq(json_dumpb(meta, NULL, 0, JSON_COMPACT), 1024);
    cr_assert_str_eq(json_string_value(json_object_get(meta, "leadbridge_id")), SUBMISSION);
    cr_assert_str_eq(json_string_value(json_object_get(meta, "notes")), big);
    cr_assert_str_eq(json_string_value(json_object_get(meta, "utm_id")), "U-9");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "gclid")), "G-123");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "landing_page")), page);
    cr_assert_null(json_object_get(meta, "referrer"), "lowest priority is dropped first");
    json_decref(body);
    http_call_free(&call);

    /* a lead meta at the limit still makes room for our id: a lead entry gives way */
    free(big);
    big = repeat("b", 1016 - 16);
    json_object_set_new(lead, "meta", json_pack("{ssss}", "a", "1234567", "k", big));
    cr_assert_eq(OPS->build(st, TARGET_CREATE, lead, NULL, SUBMISSION, &call), LB_OK);
    body = json_of(call.body);
    meta = json_object_get(body, "meta");
    cr_assert_leq(json_dumpb(meta, NULL, 0, JSON_COMPACT), 1024);
    cr_assert_str_eq(json_string_value(json_object_get(meta, "leadbridge_id")), SUBMISSION);
    cr_assert_str_eq(json_string_value(json_object_get(meta, "a")), "1234567");
    cr_assert_null(json_object_get(meta, "k"));
    json_decref(body);
    http_call_free(&call);
    json_decref(lead);
    free(big);
    free(page);
    free(ref);
    OPS->free(st);
}

Test(build, refuses_bad_lead_ids)
{
    void *st = basic_state();
    struct http_call call;
    json_t *lead = json_of("{\"status\": \"Contacted\"}");
    char *long_id = repeat("1", 65);
    char *max_id = repeat("1", 64);
    static const char *const bad[] = {"12/../x", "", "12 3", "12?x=1", "%2e", "12\r\nX: y",
                                      "\xc3\xa9"};
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(OPS->build(st, TARGET_UPDATE, lead, bad[i], SUBMISSION, &call),
                     LB_ERR_BAD_REQUEST, "accepted id %zu", i);
        cr_assert_null(call.body);
        cr_assert_eq(call.n_headers, 0);
    }
    cr_assert_eq(OPS->build(st, TARGET_UPDATE, lead, NULL, SUBMISSION, &call),
                 LB_ERR_BAD_REQUEST);
    cr_assert_eq(OPS->build(st, TARGET_UPDATE, lead, long_id, SUBMISSION, &call),
                 LB_ERR_BAD_REQUEST);
    cr_assert_eq(OPS->build(st, TARGET_UPDATE, lead, max_id, SUBMISSION, &call), LB_OK);
    http_call_free(&call);
    json_decref(lead);
    free(long_id);
    free(max_id);
    OPS->free(st);
}

Test(build, refuses_invalid_leads)
{
    void *st = basic_state();
    struct http_call call;
    json_t *lead = json_of(SALE_LEAD);

    cr_assert_eq(OPS->build(st, TARGET_VALUATION, lead, NULL, SUBMISSION, &call),
                 LB_ERR_INVALID_FIELDS);
    cr_assert_null(call.body);
    cr_assert_eq(call.n_headers, 0);
    cr_assert_eq(OPS->build(st, TARGET_UPDATE, json_object_get(lead, "nothing"), "1", SUBMISSION,
                            &call),
                 LB_ERR_BAD_REQUEST);
    json_decref(lead);
    OPS->free(st);
}

Test(build, config_office_is_a_default)
{
    struct diag d;
    void *st = configure_text("{\"type\": \"leadpro\", \"api_key\": \"k\", \"office_id\": 12}",
                              &d);
    struct http_call call;
    json_t *body;

    cr_assert_not_null(st);
    body = build_ok(st, TARGET_CREATE, SALE_LEAD, NULL, &call);
    cr_assert_eq(json_integer_value(json_object_get(body, "office_id")), 12);
    json_decref(body);
    http_call_free(&call);
    body = build_ok(st, TARGET_CREATE,
                    "{\"type\": \"let\", \"first_name\": \"A\", \"last_name\": \"B\", "
                    "\"email\": \"a@b.co\", \"phone\": \"1\", \"advert_postcode\": \"DE1\", "
                    "\"office_id\": 99}",
                    NULL, &call);
    cr_assert_eq(json_integer_value(json_object_get(body, "office_id")), 99);
    json_decref(body);
    http_call_free(&call);
    body = build_ok(st, TARGET_UPDATE, "{\"status\": \"Won\"}", "5", &call);
    cr_assert_null(json_object_get(body, "office_id"), "an update never moves the lead");
    json_decref(body);
    http_call_free(&call);
    OPS->free(st);
    diag_free(&d);
}

/* ---- classify ---- */

Test(classify, ids)
{
    static const struct {
        const char *body;
        const char *id;
    } cases[] = {
        {"{\"id\": 123}", "123"},
        {"{\"data\": {\"id\": 456, \"name\": \"x\"}}", "456"},
        {"{\"id\": \"abc-123\"}", "abc-123"},
        {"{\"data\": {\"id\": \"L_9\"}}", "L_9"},
        {"{\"id\": 1234567890123456789}", "1234567890123456789"},
        {"{\"id\": 9223372036854775807}", "9223372036854775807"},
        {"{\"id\" : 12345678901234567890}", "12345678901234567890"},
        {"{\"data\": {\"office\": {\"id\": 7}, \"id\": 98765432109876543210}}",
         "98765432109876543210"},
        {"{\"id\": \"a/b\"}", ""},
        {"{\"id\": 12.5}", ""},
        {"{\"id\": true}", ""},
    };
    struct target_result r;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        classify_text(TARGET_CREATE, 200, cases[i].body, &r);
        cr_assert_eq(r.outcome, DELIVERY_OK);
        cr_assert_eq(r.http_status, 200);
        cr_assert_str_eq(r.lead_id, cases[i].id, "body %s", cases[i].body);
        cr_assert_null(r.valuation);
    }
}

Test(classify, missing_id_is_still_ok)
{
    struct target_result r;

    classify_text(TARGET_CREATE, 201, "{\"success\": true}", &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
    cr_assert_not_null(strstr(r.reason, "no lead id"));
    classify_text(TARGET_CREATE, 200, "not json", &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "");
    classify_text(TARGET_UPDATE, 200, NULL, &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.reason, "", "an update needs no id back");
}

Test(classify, valuation_present)
{
    struct target_result r;

    classify_file(TARGET_VALUATION, 200, "valuation-success.json", &r);
    cr_assert_eq(r.outcome, DELIVERY_OK);
    cr_assert_str_eq(r.lead_id, "884213");
    cr_assert_not_null(r.valuation);
    cr_assert_str_eq(json_string_value(json_object_get(r.valuation, "status")), "Success");
    cr_assert_eq(number_at(r.valuation, "sale", "min"), 2000000);
    cr_assert_eq(number_at(r.valuation, "sale", "avg"), 2200000);
    cr_assert_eq(number_at(r.valuation, "sale", "max"), 2400000);
    cr_assert_eq(number_at(r.valuation, "rent", "min"), 5995);
    cr_assert_eq(number_at(r.valuation, "rent", "avg"), 6595);
    cr_assert_eq(number_at(r.valuation, "rent", "max"), 7194);
    json_decref(r.valuation);
}

Test(classify, valuation_partial_under_data)
{
    struct target_result r;
    const json_t *min;

    classify_file(TARGET_VALUATION, 200, "valuation-under-data.json", &r);
    cr_assert_str_eq(r.lead_id, "lp_77");
    cr_assert_str_eq(json_string_value(json_object_get(r.valuation, "status")), "Success");
    min = json_object_get(json_object_get(r.valuation, "sale"), "min");
    cr_assert(json_is_real(min));
    cr_assert_float_eq(json_real_value(min), 250000.5, 1e-9);
    cr_assert_eq(number_at(r.valuation, "sale", "max"), 280000);
    cr_assert_null(json_object_get(r.valuation, "rent"), "rent has a null number");
    json_decref(r.valuation);
}

Test(classify, valuation_with_huge_id)
{
    struct target_result r;

    classify_text(TARGET_VALUATION, 200,
                  "{\"id\": 99999999999999999999, \"valuation_status\": \"Success\", "
                  "\"minimum_rent_estimation\": 5995, \"average_rent_estimation\": 6595, "
                  "\"maximum_rent_estimation\": 7194}",
                  &r);
    cr_assert_str_eq(r.lead_id, "99999999999999999999");
    cr_assert_eq(number_at(r.valuation, "rent", "avg"), 6595);
    cr_assert_null(json_object_get(r.valuation, "sale"));
    json_decref(r.valuation);
}

Test(classify, valuation_failed)
{
    static const struct {
        const char *body;
        const char *status;
    } cases[] = {
        {"{\"id\": 1, \"valuation_status\": \"Failed\", \"minimum_sale_estimation\": 0}", "Failed"},
        {"{\"id\": 1}", "unavailable"},
        {"{\"id\": 1, \"valuation_status\": \"Success\"}", "unavailable"},
        {"{\"id\": 1, \"valuation_status\": \"Success\", \"minimum_sale_estimation\": \"1\", "
         "\"average_sale_estimation\": \"2\", \"maximum_sale_estimation\": \"3\"}",
         "unavailable"},
        {"{\"id\": 1, \"valuation_status\": \"Success\", \"minimum_rent_estimation\": 1, "
         "\"average_rent_estimation\": null, \"maximum_rent_estimation\": 3}",
         "unavailable"},
        {"{\"id\": 1, \"valuation_status\": \"No\\u0007Match\"}", "No Match"},
        {"[]", "unavailable"},
    };
    struct target_result r;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        classify_text(TARGET_VALUATION, 200, cases[i].body, &r);
        cr_assert_eq(r.outcome, DELIVERY_OK);
        cr_assert_not_null(r.valuation, "%s", cases[i].body);
        cr_assert_str_eq(json_string_value(json_object_get(r.valuation, "status")),
                         cases[i].status, "%s", cases[i].body);
        cr_assert_null(json_object_get(r.valuation, "sale"), "%s", cases[i].body);
        cr_assert_null(json_object_get(r.valuation, "rent"), "%s", cases[i].body);
        cr_assert_eq(json_object_size(r.valuation), 1);
        json_decref(r.valuation);
    }
}

Test(classify, refusal_reason)
{
    struct target_result r;

    classify_file(TARGET_CREATE, 422, "error-422.json", &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_eq(r.http_status, 422);
    cr_assert_eq(r.retry_after, -1);
    cr_assert_str_eq(r.lead_id, "");
    cr_assert_null(r.valuation);
    cr_assert_str_eq(r.reason, "LeadPro answered HTTP 422: The email field must be a valid email "
                               "address. (and 1 more error) (email: The email field must be a "
                               "valid email address.)");
    classify_text(TARGET_CREATE, 400, "{\"errors\": [\"bad type\"]}", &r);
    cr_assert_str_eq(r.reason, "LeadPro answered HTTP 400: bad type");
    classify_text(TARGET_CREATE, 401, "Unauthorized\r\n\tkey " KEY " is wrong", &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "LeadPro answered HTTP 401: Unauthorized   key [redacted] is wrong");
    classify_text(TARGET_CREATE, 403, "{\"message\": \"key " KEY " revoked\"}", &r);
    cr_assert_null(strstr(r.reason, KEY));
    classify_text(TARGET_CREATE, 404, NULL, &r);
    cr_assert_eq(r.outcome, DELIVERY_PERMANENT);
    cr_assert_str_eq(r.reason, "LeadPro answered HTTP 404 with no reason");
}

Test(classify, reason_is_capped_and_clean)
{
    struct target_result r;
    char *body = repeat("\xc3\xa9", 400);
    const char *prefix = "LeadPro answered HTTP 422: ";

    classify_text(TARGET_CREATE, 422, body, &r);
    cr_assert_eq(strncmp(r.reason, prefix, strlen(prefix)), 0);
    cr_assert_eq(strlen(r.reason), strlen(prefix) + 300, "300 bytes, no character cut");
    free(body);
    classify_text(TARGET_CREATE, 422, "bad \xff byte", &r);
    cr_assert_str_eq(r.reason, "LeadPro answered HTTP 422: bad ? byte");
}

Test(classify, transient_statuses)
{
    static const long transient[] = {500, 502, 503, 504, 429, 408};
    struct target_result r;
    size_t i;

    for (i = 0; i < sizeof(transient) / sizeof(transient[0]); i++) {
        classify_text(TARGET_CREATE, transient[i], "{\"message\": \"Server Error\"}", &r);
        cr_assert_eq(r.outcome, DELIVERY_TRANSIENT, "status %ld", transient[i]);
        cr_assert_eq(r.http_status, transient[i]);
        cr_assert_eq(r.retry_after, -1, "target_deliver reads Retry-After");
        cr_assert_str_eq(r.lead_id, "");
        cr_assert_not_null(strstr(r.reason, "Server Error"));
    }
    classify_text(TARGET_VALUATION, 503, "{\"id\": 5, \"valuation_status\": \"Success\"}", &r);
    cr_assert_eq(r.outcome, DELIVERY_TRANSIENT);
    cr_assert_null(r.valuation, "no valuation from a failed call");
    cr_assert_str_eq(r.lead_id, "");
}
