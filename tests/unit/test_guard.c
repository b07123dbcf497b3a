/*
 * test_guard.c: each guard of one form, through guard_compile and guard_verdict: the honeypot,
 * the signed form token (too fast, too old, forged, another form's, replayed, missing), the ALTCHA
 * challenge (solved here the way the widget does, forged, wrong, expired, replayed), the content
 * checks, the rate limits and their allow-list, and the config mistakes the loader names.
 */
#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "crypto.h"
#include "guard.h"
#include "ratelimit.h"

#define SECRET "unit-test-secret-0123456789"
#define T0 1700000000000LL

static char dir[64];
static struct ratelimit *rl;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void setup(void)
{
    struct lb_error err = {LB_OK, ""};

    snprintf(dir, sizeof(dir), "/tmp/lb-guard-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    rl = ratelimit_open(dir, 4096, &err);
    cr_assert_not_null(rl, "%s", err.message);
}

static void teardown(void)
{
    ratelimit_close(rl);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(guard, .init = setup, .fini = teardown);

/* Compiles {"guard": <json>} for form name; asserts it has no mistakes. */
static struct guard *compile(const char *name, const char *json)
{
    json_error_t jerr;
    json_t *g = json_loads(json, 0, &jerr), *form;
    struct diag d;
    struct guard *out;

    cr_assert_not_null(g, "test JSON: %s", jerr.text);
    form = json_pack("{s:o}", "guard", g);
    diag_init(&d, "t.json", NULL, 0);
    out = guard_compile(form, name, "forms.f", SECRET, dir, &d);
    for (size_t i = 0; i < d.count; i++)
        cr_log_error("%s", d.messages[i]);
    cr_assert_eq(d.count, 0);
    cr_assert_not_null(out);
    diag_free(&d);
    json_decref(form);
    return out;
}

/* The number of mistakes compiling json reports, and whether one holds fragment. */
static size_t mistakes(const char *json, const char *fragment)
{
    json_t *form = json_pack("{s:o}", "guard", json_loads(json, 0, NULL));
    struct diag d;
    struct guard *g;
    size_t n;
    bool found = false;

    diag_init(&d, "t.json", NULL, 0);
    g = guard_compile(form, "f", "forms.f", SECRET, dir, &d);
    n = d.count;
    for (size_t i = 0; i < d.count; i++)
        if (strstr(d.messages[i], fragment) != NULL)
            found = true;
    cr_expect(found || n == 0, "no message holds \"%s\"", fragment);
    guard_free(g);
    diag_free(&d);
    json_decref(form);
    return n;
}

static const char *verdict(const struct guard *g, const char *token, const char *challenge,
                           bool honeypot, const json_t *fields, long long now)
{
    struct guard_controls c = {(char *)token, (char *)challenge, NULL, honeypot};
    struct guard_request r = {&c, fields, NULL, "203.0.113.9", rl, NULL, now};

    return guard_verdict(g, &r);
}

Test(guard, honeypot_and_controls_are_taken_out)
{
    struct guard *g = compile("f", "{\"honeypot\": \"hp_url\"}");
    json_t *fields = json_pack("{s:s,s:s,s:s,s:s}", "name", "Ada", "hp_url", "http://x",
                               "lb_token", "t", "altcha", "a");
    struct guard_controls c;

    guard_take_controls(g, fields, &c);
    cr_expect(c.honeypot_filled);
    cr_expect_str_eq(c.token, "t");
    cr_expect_str_eq(c.challenge, "a");
    cr_expect_eq(json_object_size(fields), 1, "only the visitor's fields are left");
    guard_controls_free(&c);
    json_object_set_new(fields, "hp_url", json_string("  "));
    guard_take_controls(g, fields, &c);
    cr_expect(!c.honeypot_filled, "blank is empty");
    guard_controls_free(&c);
    cr_expect_str_eq(verdict(g, NULL, NULL, true, fields, T0), "honeypot");
    cr_expect_null(verdict(g, NULL, NULL, false, fields, T0), "a missing token is allowed");
    json_decref(fields);
    guard_free(g);
}

Test(guard, token_time_trap_and_single_use)
{
    struct guard *g = compile("f", "{\"token\": {\"min_seconds\": 3, \"max_age\": 3600, "
                                   "\"missing\": \"spam\"}}");
    struct guard *other = compile("other", "{}");
    json_t *fields = json_object();
    char tok[200], forged[200];

    cr_assert_eq(guard_token_sign(g, T0, tok, sizeof(tok)), LB_OK);
    cr_expect_str_eq(verdict(g, tok, NULL, false, fields, T0 + 500), "token_too_fast");
    cr_expect_str_eq(verdict(g, tok, NULL, false, fields, T0 + 3601000), "token_expired");
    cr_expect_str_eq(verdict(g, NULL, NULL, false, fields, T0), "token_missing");
    cr_expect_str_eq(verdict(g, "", NULL, false, fields, T0), "token_missing");
    cr_expect_str_eq(verdict(g, "garbage", NULL, false, fields, T0), "token_forged");
    snprintf(forged, sizeof(forged), "%s", tok);
    forged[0] = forged[0] == '1' ? '2' : '1'; /* another issue time under the same MAC */
    cr_expect_str_eq(verdict(g, forged, NULL, false, fields, T0 + 4000), "token_forged");
    cr_expect_str_eq(verdict(other, tok, NULL, false, fields, T0 + 4000), "token_forged",
                     "a token is for one form");
    cr_expect_null(verdict(g, tok, NULL, false, fields, T0 + 4000));
    cr_expect_str_eq(verdict(g, tok, NULL, false, fields, T0 + 5000), "token_replayed");
    json_decref(fields);
    guard_free(g);
    guard_free(other);
}

/* Solves an ALTCHA challenge the way the widget does: SHA-256(salt + n) for n = 0, 1, ... */
static char *solve(const json_t *ch, long long number_override)
{
    const char *salt = json_string_value(json_object_get(ch, "salt"));
    const char *want = json_string_value(json_object_get(ch, "challenge"));
    long long max = json_integer_value(json_object_get(ch, "maxnumber")), n;
    char text[300], hex[65], *payload, *out;
    uint8_t d[32];
    json_t *p;
    size_t len;

    for (n = 0; n <= max; n++) {
        snprintf(text, sizeof(text), "%s%lld", salt, n);
        sha256(text, strlen(text), d);
        hex_encode(d, sizeof(d), hex);
        if (strcmp(hex, want) == 0)
            break;
    }
    cr_assert_leq(n, max, "no solution");
    p = json_pack("{s:s,s:s,s:I,s:s,s:s}", "algorithm", "SHA-256", "challenge", want, "number",
                  (json_int_t)(number_override >= 0 ? number_override : n), "salt", salt,
                  "signature", json_string_value(json_object_get(ch, "signature")));
    payload = json_dumps(p, JSON_COMPACT);
    len = strlen(payload);
    out = malloc(4 * (len / 3 + 1) + 1);
    base64_encode(payload, len, false, out, 4 * (len / 3 + 1) + 1);
    free(payload);
    json_decref(p);
    return out;
}

Test(guard, altcha_challenge)
{
    struct guard *g = compile("f", "{\"token\": {\"min_seconds\": 0}, "
                                   "\"challenge\": {\"maxnumber\": 2000, \"expires\": 600}}");
    struct guard *other = compile("other", "{\"token\": {\"min_seconds\": 0}, "
                                           "\"challenge\": {\"maxnumber\": 2000}}");
    json_t *answer = guard_token_json(g, T0), *ch = json_object_get(answer, "challenge");
    json_t *fields = json_object();
    const char *tok = json_string_value(json_object_get(answer, "token"));
    char *good, *wrong, *tampered;

    cr_assert(json_is_object(ch));
    cr_expect_str_eq(json_string_value(json_object_get(ch, "algorithm")), "SHA-256");
    cr_expect_eq(json_integer_value(json_object_get(ch, "maxnumber")), 2000);
    cr_expect_not_null(strstr(json_string_value(json_object_get(ch, "salt")), "?expires="));
    cr_expect_str_eq(json_string_value(json_object_get(answer, "honeypot")), "lb_website");
    good = solve(ch, -1);
    wrong = solve(ch, 2001);
    tampered = strdup(good);
    tampered[10] = tampered[10] == 'A' ? 'B' : 'A';
    cr_expect_str_eq(verdict(g, NULL, NULL, false, fields, T0), "challenge_missing");
    cr_expect_str_eq(verdict(g, NULL, "bm90IGpzb24=", false, fields, T0), "challenge_forged");
    cr_expect_str_eq(verdict(g, NULL, tampered, false, fields, T0), "challenge_forged");
    cr_expect_str_eq(verdict(g, NULL, wrong, false, fields, T0), "challenge_wrong");
    cr_expect_str_eq(verdict(other, NULL, good, false, fields, T0), "challenge_forged",
                     "a challenge is for one form");
    cr_expect_str_eq(verdict(g, NULL, good, false, fields, T0 + 601000), "challenge_expired");
    cr_expect_null(verdict(g, tok, good, false, fields, T0 + 1000));
    cr_expect_str_eq(verdict(g, NULL, good, false, fields, T0 + 2000), "challenge_replayed");
    free(good);
    free(wrong);
    free(tampered);
    json_decref(answer);
    json_decref(fields);
    guard_free(g);
    guard_free(other);
}

Test(guard, content_checks)
{
    FILE *fp;
    char path[128];
    struct guard *g;
    json_t *f;
    struct guard_controls c = {NULL, NULL, NULL, false};
    struct guard_request r = {&c, NULL, NULL, NULL, rl, NULL, T0};

    snprintf(path, sizeof(path), "%s/disposable.txt", dir);
    fp = fopen(path, "w");
    fputs("# throwaway mail\nmailinator.com\n  YOPMAIL.com  \n\n", fp);
    fclose(fp);
    g = compile("f", "{\"content\": {\"max_links\": 1, \"disposable_domains\": \"disposable.txt\", "
                     "\"blocked\": [\"\\\\bviagra\\\\b\", \"crypto\\\\s+invest\"], "
                     "\"scripts\": [\"latin\"]}}");
#define CHECK(expected, ...)                                                                   \
    do {                                                                                       \
        f = json_pack(__VA_ARGS__);                                                            \
        r.fields = f;                                                                          \
        if ((expected) == NULL)                                                                \
            cr_expect_null(guard_verdict(g, &r));                                              \
        else                                                                                   \
            cr_expect_str_eq(guard_verdict(g, &r), (expected));                                \
        json_decref(f);                                                                        \
    } while (0)
    CHECK(NULL, "{s:s,s:s}", "message", "See https://example.com please", "email", "a@b.com");
    CHECK("links", "{s:s}", "message", "https://a.example and www.b.example");
    CHECK("links", "{s:s,s:s}", "message", "[url=http://x]x[/url]", "other", "<a href=y>");
    CHECK("disposable_email", "{s:s}", "email", "bot@mailinator.com");
    CHECK("disposable_email", "{s:s}", "email", "bot@mx.Yopmail.COM");
    CHECK(NULL, "{s:s}", "email", "ada@notmailinator.com");
    CHECK("blocked_content", "{s:s}", "message", "Cheap VIAGRA here");
    CHECK("blocked_content", "{s:[s]}", "notes", "crypto   invest now");
    CHECK(NULL, "{s:s}", "message", "Zoë and Ćiril from Kraków, 2 beds");
    CHECK("unexpected_script", "{s:s}", "message", "Здравствуйте, купить недвижимость");
    CHECK(NULL, "{s:s}", "message", "Hello, my name is Anna (Анна) and I want to buy a house");
#undef CHECK
    guard_free(g);
}

Test(guard, rate_limits_and_allow_list)
{
    struct guard *g = compile("f", "{\"rate_limit\": {\"per_ip\": {\"burst\": 3, "
                                   "\"per_minute\": 60}, \"daily_cap\": 5, "
                                   "\"allow\": [\"10.0.0.0/8\", \"2001:db8::/32\"]}}");
    long long wait;
    const char *why;
    int ok = 0;

    for (int i = 0; i < 5; i++)
        ok += guard_rate_ok(g, rl, "203.0.113.9", T0, &wait, &why);
    cr_expect_eq(ok, 3);
    cr_expect_str_eq(why, "rate_limit_ip");
    cr_expect_eq(wait, 1);
    cr_expect(guard_rate_ok(g, rl, "203.0.113.10", T0, &wait, &why), "another address");
    cr_expect(guard_rate_ok(g, rl, "203.0.113.11", T0, &wait, &why));
    cr_expect(!guard_rate_ok(g, rl, "203.0.113.12", T0, &wait, &why));
    cr_expect_str_eq(why, "daily_cap");
    cr_expect_geq(wait, 1);
    for (int i = 0; i < 20; i++)
        cr_expect(guard_rate_ok(g, rl, "10.1.2.3", T0, &wait, &why), "allow-listed");
    cr_expect(guard_rate_ok(g, rl, "2001:db8::1", T0, &wait, &why));
    cr_expect(guard_rate_ok(g, NULL, "203.0.113.9", T0, &wait, &why), "no table: not checked");
    guard_free(g);
}

Test(guard, token_html_and_json)
{
    struct guard *g = compile("f", "{\"honeypot\": \"hp_1\"}");
    char *html = guard_token_html(g, T0);
    json_t *j = guard_token_json(g, T0);

    cr_assert_not_null(html);
    cr_expect_not_null(strstr(html, "name=\"lb_token\""));
    cr_expect_not_null(strstr(html, "name=\"hp_1\""));
    cr_expect_not_null(strstr(html, "aria-hidden=\"true\""));
    cr_expect_not_null(strstr(html, "tabindex=\"-1\""));
    cr_expect_not_null(strstr(html, "autocomplete=\"off\""));
    cr_expect_not_null(strstr(html, "left:-10000px"));
    cr_expect(json_is_null(json_object_get(j, "challenge")));
    cr_expect_str_eq(json_string_value(json_object_get(j, "honeypot")), "hp_1");
    free(html);
    json_decref(j);
    guard_free(g);
}

Test(guard, config_mistakes)
{
    cr_expect_gt(mistakes("{\"honeypot\": \"bad name\"}", "field name"), 0);
    cr_expect_gt(mistakes("{\"token\": {\"missing\": \"maybe\"}}", "allow"), 0);
    cr_expect_gt(mistakes("{\"captcha\": {\"provider\": \"turnstile\"}}", "secret"), 0);
    cr_expect_gt(mistakes("{\"captcha\": {\"provider\": \"nope\", \"secret\": \"s\"}}",
                          "turnstile"), 0);
    cr_expect_gt(mistakes("{\"content\": {\"blocked\": [\"(\"]}}", "regular expression"), 0);
    cr_expect_gt(mistakes("{\"content\": {\"scripts\": [\"klingon\"]}}", "unknown script"), 0);
    cr_expect_gt(mistakes("{\"content\": {\"disposable_domains\": \"/nonexistent\"}}",
                          "cannot open"), 0);
    cr_expect_gt(mistakes("{\"rate_limit\": {\"allow\": [\"10.0.0.0/33\"]}}", "network"), 0);
    cr_expect_gt(mistakes("{\"bogus\": 1}", "unknown key"), 0);
    cr_expect_gt(mistakes("{\"answer\": \"lie\"}", "queued"), 0);
    cr_expect_eq(mistakes("{}", ""), 0);
}
