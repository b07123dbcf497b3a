/*
 * test_inbound.c: a form's event id (source path or header), host for server-to-server posts
 * (constant or from a page URL field; never invented) and per-form parsing limits.
 */
#include <criterion/criterion.h>

#include <string.h>

#include "inbound.h"

static const char *env_of(void *ctx, const char *name)
{
    const char *const *kv = ctx;

    for (size_t i = 0; kv[i] != NULL; i += 2)
        if (strcmp(kv[i], name) == 0)
            return kv[i + 1];
    return NULL;
}

static struct inbound *compile(const char *json, struct diag *d)
{
    json_t *obj = json_loads(json, 0, NULL);
    struct inbound *ib;

    cr_assert_not_null(obj);
    diag_init(d, "test.json", NULL, 0);
    ib = inbound_compile(obj, "forms.f", d);
    json_decref(obj);
    return ib;
}

static struct inbound *compile_ok(const char *json)
{
    struct diag d;
    struct inbound *ib = compile(json, &d);

    for (size_t i = 0; i < d.count; i++)
        cr_log_error("%s", d.messages[i]);
    cr_assert_not_null(ib);
    diag_free(&d);
    return ib;
}

static void expect_error(const char *json, const char *fragment)
{
    struct diag d;
    struct inbound *ib = compile(json, &d);
    bool found = false;

    cr_assert_null(ib);
    for (size_t i = 0; i < d.count; i++)
        found |= strstr(d.messages[i], fragment) != NULL;
    cr_assert(found, "no \"%s\" (first: %s)", fragment, d.count > 0 ? d.messages[0] : "-");
    diag_free(&d);
}

Test(inbound, event_id_from_a_source_path)
{
    struct inbound *ib = compile_ok("{\"event_id\": \"data.submissionId\"}");
    static const char *const none[] = {NULL};
    json_t *f = json_loads("{\"data\": {\"submissionId\": \"  sub_42 \"}}", 0, NULL);
    json_t *n = json_loads("{\"data\": {\"submissionId\": 12345}}", 0, NULL);
    json_t *ctl = json_loads("{\"data\": {\"submissionId\": \"a\\nb\"}}", 0, NULL);
    json_t *missing = json_loads("{\"data\": {}}", 0, NULL);
    char out[INBOUND_EVENT_ID_MAX + 1];

    cr_assert(inbound_event_id(ib, f, env_of, (void *)none, out, sizeof(out)));
    cr_assert_str_eq(out, "sub_42");
    cr_assert(inbound_event_id(ib, n, env_of, (void *)none, out, sizeof(out)));
    cr_assert_str_eq(out, "12345");
    cr_assert_not(inbound_event_id(ib, ctl, env_of, (void *)none, out, sizeof(out)));
    cr_assert_not(inbound_event_id(ib, missing, env_of, (void *)none, out, sizeof(out)));
    cr_assert_not(inbound_event_id(NULL, f, env_of, (void *)none, out, sizeof(out)));
    json_decref(f);
    json_decref(n);
    json_decref(ctl);
    json_decref(missing);
    inbound_free(ib);
}

Test(inbound, event_id_from_a_header)
{
    struct inbound *ib = compile_ok("{\"event_id_header\": \"Webhook-Id\"}");
    static const char *const kv[] = {"HTTP_WEBHOOK_ID", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", NULL};
    static const char *const none[] = {NULL};
    char out[INBOUND_EVENT_ID_MAX + 1];

    cr_assert(inbound_event_id(ib, NULL, env_of, (void *)kv, out, sizeof(out)));
    cr_assert_str_eq(out, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
    cr_assert_not(inbound_event_id(ib, NULL, env_of, (void *)none, out, sizeof(out)));
    inbound_free(ib);
}

Test(inbound, host_constant_or_from_a_field)
{
    struct inbound *c = compile_ok("{\"host\": \"https://www.example.com\"}");
    struct inbound *p = compile_ok("{\"host_from\": \"payload.pageUrl\"}");
    json_t *fields = json_loads("{\"payload\": {\"pageUrl\": \"HTTPS://Shop.Example:8443/contact?x=1\"}}",
                                0, NULL);
    json_t *bad = json_loads("{\"payload\": {\"pageUrl\": \"javascript:alert(1)\"}}", 0, NULL);
    json_t *a = json_object(), *with = json_pack("{s:s}", "host", "https://from.origin");

    cr_assert_eq(inbound_set_host(c, fields, a), LB_OK);
    cr_assert_str_eq(json_string_value(json_object_get(a, "host")), "https://www.example.com");
    json_object_clear(a);
    cr_assert_eq(inbound_set_host(p, fields, a), LB_OK);
    cr_assert_str_eq(json_string_value(json_object_get(a, "host")), "https://shop.example:8443");
    json_object_clear(a);
    cr_assert_eq(inbound_set_host(p, bad, a), LB_OK);
    cr_assert_null(json_object_get(a, "host"), "not a URL: no host at all");
    /* Origin / Referer win over the config. */
    cr_assert_eq(inbound_set_host(c, fields, with), LB_OK);
    cr_assert_str_eq(json_string_value(json_object_get(with, "host")), "https://from.origin");
    json_decref(fields);
    json_decref(bad);
    json_decref(a);
    json_decref(with);
    inbound_free(c);
    inbound_free(p);
}

Test(inbound, limits)
{
    struct inbound *d = compile_ok("{}");
    struct inbound *ib = compile_ok("{\"max_fields\": 10000, \"max_depth\": 8}");

    cr_assert_eq(inbound_limits(d)->max_fields, 4096);
    cr_assert_eq(inbound_limits(d)->max_depth, 16);
    cr_assert_eq(inbound_limits(ib)->max_fields, 10000);
    cr_assert_eq(inbound_limits(ib)->max_depth, 8);
    cr_assert_eq(inbound_limits(ib)->max_value, parse_default_limits.max_value);
    cr_assert_eq(inbound_limits(NULL)->max_fields, 4096);
    inbound_free(d);
    inbound_free(ib);
}

Test(inbound, config_mistakes)
{
    expect_error("{\"event_id\": \"a[\"}", "forms.f.event_id: bad source path");
    expect_error("{\"event_id\": \"a\", \"event_id_header\": \"X-Id\"}", "not both");
    expect_error("{\"event_id_header\": \"X Id\"}", "must be a header name");
    expect_error("{\"host\": \"www.example.com\"}", "forms.f.host: must be a lower-case origin");
    expect_error("{\"host\": \"https://www.example.com/page\"}", "must be a lower-case origin");
    expect_error("{\"max_fields\": 0}", "forms.f.max_fields: must be between 1 and 1000000");
    expect_error("{\"max_depth\": 100}", "forms.f.max_depth: must be between 1 and 64");
}
