/*
 * test_parse.c: unit tests for the request-body parsers (src/parse.c).
 *
 * Direct tests for percent-decoding and UTF-8 validation; data-driven cases for parse_body, one
 * directory per case under tests/data/parse/ (content_type, body, and expected.json or error).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"

#define UTF8_OK(lit) cr_assert(parse_utf8_valid(lit, sizeof(lit) - 1), "should be valid: %s", #lit)
#define UTF8_BAD(lit) cr_assert(!parse_utf8_valid(lit, sizeof(lit) - 1), "should be bad: %s", #lit)

Test(utf8, accepts_well_formed)
{
    UTF8_OK("");
    UTF8_OK("plain ascii\r\n\t");
    UTF8_OK("\x7f");
    UTF8_OK("\xc2\x80");         /* U+0080, smallest 2-byte */
    UTF8_OK("\xdf\xbf");         /* U+07FF */
    UTF8_OK("\xe0\xa0\x80");     /* U+0800, smallest 3-byte */
    UTF8_OK("\xed\x9f\xbf");     /* U+D7FF, just below surrogates */
    UTF8_OK("\xee\x80\x80");     /* U+E000, just above surrogates */
    UTF8_OK("\xef\xbf\xbf");     /* U+FFFF */
    UTF8_OK("\xf0\x90\x80\x80"); /* U+10000, smallest 4-byte */
    UTF8_OK("\xf4\x8f\xbf\xbf"); /* U+10FFFF, the largest code point */
    UTF8_OK("Zo\xc3\xab \xe2\x82\xac \xf0\x9f\x8f\xa0");
}

Test(utf8, rejects_ill_formed)
{
    UTF8_BAD("\x00");
    UTF8_BAD("a\x00z");
    UTF8_BAD("\x80");             /* lone continuation */
    UTF8_BAD("\xbf");
    UTF8_BAD("\xc0\x80");         /* overlong NUL */
    UTF8_BAD("\xc1\xbf");         /* overlong 2-byte */
    UTF8_BAD("\xe0\x80\x80");     /* overlong 3-byte */
    UTF8_BAD("\xe0\x9f\xbf");
    UTF8_BAD("\xf0\x80\x80\x80"); /* overlong 4-byte */
    UTF8_BAD("\xf0\x8f\xbf\xbf");
    UTF8_BAD("\xed\xa0\x80");     /* U+D800 surrogate */
    UTF8_BAD("\xed\xbf\xbf");     /* U+DFFF surrogate */
    UTF8_BAD("\xf4\x90\x80\x80"); /* U+110000 */
    UTF8_BAD("\xf5\x80\x80\x80");
    UTF8_BAD("\xff");
    UTF8_BAD("\xfe");
    UTF8_BAD("\xc3");             /* truncated */
    UTF8_BAD("\xe2\x82");
    UTF8_BAD("\xf0\x9f\x8f");
    UTF8_BAD("\xc3\x28");         /* bad continuation */
    UTF8_BAD("\xe2\x28\xa1");
}

Test(utf8, honours_length)
{
    /* The bytes after len are not looked at, and a sequence cut by len is refused. */
    cr_assert(parse_utf8_valid("ab\xff", 2));
    cr_assert(!parse_utf8_valid("\xc3\xab", 1));
}

static void decode_ok(const char *in, bool plus, const char *want, size_t want_len)
{
    char *out = NULL;
    enum lb_err e = parse_percent_decode(in, strlen(in), plus, &out);

    cr_assert_eq(e, LB_OK, "decoding %s failed: %d", in, (int)e);
    cr_assert_not_null(out);
    cr_assert_eq(strlen(out), want_len, "length of %s", in);
    cr_assert_eq(memcmp(out, want, want_len), 0, "decoding %s gave %s", in, out);
    free(out);
}

static void decode_bad(const char *in, size_t len)
{
    char *out = (char *)1;
    enum lb_err e = parse_percent_decode(in, len, true, &out);

    cr_assert_eq(e, LB_ERR_BAD_REQUEST, "decoding %s should fail", in);
    cr_assert_null(out);
}

Test(percent_decode, decodes)
{
    decode_ok("", true, "", 0);
    decode_ok("abc", true, "abc", 3);
    decode_ok("a+b", true, "a b", 3);
    decode_ok("a+b", false, "a+b", 3);
    decode_ok("a%2Bb", true, "a+b", 3);
    decode_ok("%41%62%7e%7E", true, "Ab~~", 4);
    decode_ok("%20%25", false, " %", 2);
    decode_ok("Zo%C3%AB", true, "Zo\xc3\xab", 4);
    decode_ok("%F4%8F%BF%BF", true, "\xf4\x8f\xbf\xbf", 4);
    decode_ok("line%0D%0Anext", true, "line\r\nnext", 10);
}

Test(percent_decode, rejects_bad_escapes)
{
    decode_bad("%G1", 3);
    decode_bad("%1G", 3);
    decode_bad("ab%4", 4);
    decode_bad("ab%", 3);
    decode_bad("%%41", 4);
    decode_bad("%00", 3);
    decode_bad("a\0b", 3);
    /* The escape is complete only within len, not within the C string. */
    decode_bad("%41", 2);
}

Test(percent_decode, rejects_invalid_utf8)
{
    decode_bad("%FF", 3);
    decode_bad("%C0%80", 6);
    decode_bad("%ED%A0%80", 9);
    decode_bad("%F4%90%80%80", 12);
    decode_bad("%C3", 3);
    decode_bad("\xc3", 1);
}

/* Parses s as urlencoded with limits and compares to the JSON text want. */
static void urlencoded_ok(const char *s, const char *want)
{
    json_t *obj = json_object();
    json_t *expect = json_loads(want, 0, NULL);
    struct lb_error err = {0};
    enum lb_err e = parse_urlencoded(s, strlen(s), NULL, obj, &err);
    char *got;

    cr_assert_eq(e, LB_OK, "%s: %s", s, err.message);
    cr_assert_not_null(expect);
    got = json_dumps(obj, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(json_equal(obj, expect), "%s gave %s, want %s", s, got, want);
    free(got);
    json_decref(obj);
    json_decref(expect);
}

Test(urlencoded, direct)
{
    urlencoded_ok("", "{}");
    urlencoded_ok("a=1&b=", "{\"a\":\"1\",\"b\":\"\"}");
    urlencoded_ok("flag", "{\"flag\":\"\"}");
    urlencoded_ok("=x&&a=1&", "{\"a\":\"1\"}");
    urlencoded_ok("x=1&x=2&x=3", "{\"x\":[\"1\",\"2\",\"3\"]}");
    urlencoded_ok("a%5Bb%5D=1", "{\"a\":{\"b\":\"1\"}}");
    urlencoded_ok("a[b]=1&a[b]=2", "{\"a\":{\"b\":[\"1\",\"2\"]}}");
    urlencoded_ok("a[]=1&a=2", "{\"a\":[\"1\",\"2\"]}");
    urlencoded_ok("a[b=1&c]=2&[d]=3&e[f]g=4&h[][i]=5",
                  "{\"a[b\":\"1\",\"c]\":\"2\",\"[d]\":\"3\",\"e[f]g\":\"4\",\"h[][i]\":\"5\"}");
    urlencoded_ok("a=1;b=2", "{\"a\":\"1;b=2\"}");
}

/* ---- Data-driven cases: tests/data/parse/<case>/ */

#define CASE_FILE_MAX (4 * 1024 * 1024)

/* Reads dir/name whole into a new NUL-terminated buffer (*len bytes); NULL when absent. */
static char *case_file(const char *dir, const char *name, size_t *len)
{
    char path[1024];
    char *data;
    FILE *f;
    size_t n;

    *len = 0;
    cr_assert(snprintf(path, sizeof(path), "%s/%s", dir, name) < (int)sizeof(path));
    f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    data = malloc(CASE_FILE_MAX + 1);
    cr_assert_not_null(data);
    n = fread(data, 1, CASE_FILE_MAX + 1, f);
    cr_assert(n <= CASE_FILE_MAX && !ferror(f), "%s: unreadable or too big", path);
    fclose(f);
    data[n] = '\0';
    *len = n;
    return data;
}

/* Cuts text at its first newline, returning what follows it (or "" when none). */
static char *line_cut(char *text)
{
    char *nl = strchr(text, '\n');

    if (nl == NULL)
        return text + strlen(text);
    *nl = '\0';
    if (nl > text && nl[-1] == '\r')
        nl[-1] = '\0';
    return nl + 1;
}

/*
 * Runs one case directory: optional content_type (first line; absent means none), body (absent
 * means empty), optional limits ("fields depth key value"), and expected.json or error. Returns
 * true when the case behaved; failures are reported with the case name.
 */
static bool case_run(const char *name)
{
    char dir[1024];
    struct parse_limits limits = parse_default_limits;
    struct lb_error err = {0};
    json_t *got = NULL, *want = NULL;
    size_t ct_len, body_len, limits_len, exp_len, error_len;
    char *ct, *body, *lim, *exp, *error;
    enum lb_err e;
    bool ok = false;

    cr_assert(snprintf(dir, sizeof(dir), "%s/parse/%s", TEST_DATA_DIR, name) < (int)sizeof(dir));
    ct = case_file(dir, "content_type", &ct_len);
    body = case_file(dir, "body", &body_len);
    lim = case_file(dir, "limits", &limits_len);
    exp = case_file(dir, "expected.json", &exp_len);
    error = case_file(dir, "error", &error_len);
    if (ct != NULL)
        line_cut(ct);
    if (lim != NULL)
        cr_assert_eq(sscanf(lim, "%zu %zu %zu %zu", &limits.max_fields, &limits.max_depth,
                            &limits.max_key, &limits.max_value), 4, "%s: bad limits file", name);
    cr_expect((exp != NULL) != (error != NULL), "%s: needs expected.json or error", name);
    e = parse_body(ct, body != NULL ? body : "", body_len, &limits, &got, &err);
    if (exp != NULL) {
        json_error_t jerr;
        char *dump = NULL;

        want = json_loadb(exp, exp_len, 0, &jerr);
        cr_expect_not_null(want, "%s: expected.json: %s", name, jerr.text);
        cr_expect_eq(e, LB_OK, "%s: failed with %s: %s", name, lb_err_name(e), err.message);
        if (got != NULL)
            dump = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT);
        ok = e == LB_OK && want != NULL && json_equal(got, want);
        cr_expect(ok || e != LB_OK, "%s: got %s", name, dump != NULL ? dump : "(null)");
        free(dump);
    } else if (error != NULL) {
        char *substring = line_cut(error);

        line_cut(substring);
        cr_expect_str_eq(lb_err_name(e), error, "%s: code %s, want %s (%s)", name,
                         lb_err_name(e), error, err.message);
        cr_expect_null(got, "%s: out set on failure", name);
        cr_expect(strstr(err.message, substring) != NULL, "%s: message \"%s\" lacks \"%s\"",
                  name, err.message, substring);
        ok = strcmp(lb_err_name(e), error) == 0 && got == NULL &&
             strstr(err.message, substring) != NULL;
    }
    json_decref(got);
    json_decref(want);
    free(ct);
    free(body);
    free(lim);
    free(exp);
    free(error);
    return ok;
}

Test(parse_body, data_cases)
{
    DIR *d = opendir(TEST_DATA_DIR "/parse");
    struct dirent *ent;
    size_t cases = 0, failed = 0;

    cr_assert_not_null(d, "cannot open %s", TEST_DATA_DIR "/parse");
    for (ent = readdir(d); ent != NULL; ent = readdir(d)) {
        if (ent->d_name[0] == '.')
            continue;
        cases++;
        if (!case_run(ent->d_name))
            failed++;
    }
    closedir(d);
    cr_expect(cases >= 40, "only %zu cases found", cases);
    cr_expect_eq(failed, 0, "%zu of %zu cases failed", failed, cases);
}

Test(parse_body, null_limits_and_err)
{
    json_t *out = (json_t *)1;
    const char *body = "a=1";

    cr_assert_eq(parse_body("application/x-www-form-urlencoded", body, 3, NULL, &out, NULL), LB_OK);
    cr_assert_str_eq(json_string_value(json_object_get(out, "a")), "1");
    json_decref(out);
    out = (json_t *)1;
    cr_assert_eq(parse_body("text/csv", body, 3, NULL, &out, NULL), LB_ERR_MEDIA_TYPE);
    cr_assert_null(out);
}

Test(parse_body, default_limits)
{
    cr_assert_eq(parse_default_limits.max_fields, 4096);
    cr_assert_eq(parse_default_limits.max_depth, 16);
    cr_assert_eq(parse_default_limits.max_key, 256);
    cr_assert_eq(parse_default_limits.max_value, 16384);
}
