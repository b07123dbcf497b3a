/*
 * test_attribution.c: unit tests for attribution_extract (src/attribution.c).
 *
 * Data-driven: each directory under tests/data/attribution/ holds request.json (the struct request
 * fields used, plus "conf": cookie_name, trusted_proxies, max_value) and expected.json (the exact
 * object attribution_extract must return). A string field may be given as {"hex": "..."} to carry
 * bytes JSON cannot (invalid UTF-8).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution.h"

#define CASE_DIR TEST_DATA_DIR "/attribution"

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A new copy of request.json's key: a string, or {"hex": "..."} decoded; NULL when absent. */
static char *string_of(const json_t *req, const char *key)
{
    json_t *v = json_object_get(req, key);
    const char *hex;
    size_t i, n;
    char *s;

    if (v == NULL)
        return NULL;
    if (json_is_string(v)) {
        s = strdup(json_string_value(v));
        cr_assert_not_null(s);
        return s;
    }
    hex = json_string_value(json_object_get(v, "hex"));
    cr_assert_not_null(hex, "%s: a string or {\"hex\": ...}", key);
    n = strlen(hex);
    cr_assert_eq(n % 2, 0);
    s = malloc(n / 2 + 1);
    cr_assert_not_null(s);
    for (i = 0; i < n / 2; i++) {
        int h = hex_nibble(hex[2 * i]), l = hex_nibble(hex[2 * i + 1]);

        cr_assert(h >= 0 && l >= 0, "%s: bad hex", key);
        s[i] = (char)(h * 16 + l);
    }
    s[n / 2] = '\0';
    return s;
}

static void free_request(struct request *r)
{
    free(r->query);
    free(r->origin);
    free(r->referer);
    free(r->cookie);
    free(r->user_agent);
    free(r->http_host);
    free(r->remote_addr);
    free(r->x_forwarded_for);
    json_decref(r->fields);
}

/* Runs one case directory; returns 1 when the result matched, 0 otherwise (with a message). */
static int run_case(const char *name)
{
    char path[1024];
    json_error_t jerr;
    json_t *req, *expected, *got, *conf_j, *proxies;
    struct request r;
    struct attribution_conf conf = { 0 };
    const char **proxy_list = NULL;
    size_t i;
    int ok;

    cr_assert(snprintf(path, sizeof(path), "%s/%s/request.json", CASE_DIR, name) <
              (int)sizeof(path));
    req = json_load_file(path, 0, &jerr);
    cr_assert_not_null(req, "%s: %s", path, jerr.text);
    cr_assert(snprintf(path, sizeof(path), "%s/%s/expected.json", CASE_DIR, name) <
              (int)sizeof(path));
    expected = json_load_file(path, 0, &jerr);
    cr_assert_not_null(expected, "%s: %s", path, jerr.text);

    memset(&r, 0, sizeof(r));
    r.query = string_of(req, "query");
    if (r.query == NULL)
        r.query = strdup("");
    cr_assert_not_null(r.query);
    r.origin = string_of(req, "origin");
    r.referer = string_of(req, "referer");
    r.cookie = string_of(req, "cookie");
    r.user_agent = string_of(req, "user_agent");
    r.http_host = string_of(req, "http_host");
    r.remote_addr = string_of(req, "remote_addr");
    r.x_forwarded_for = string_of(req, "x_forwarded_for");
    r.https = json_is_true(json_object_get(req, "https"));
    r.fields = json_incref(json_object_get(req, "fields"));

    conf_j = json_object_get(req, "conf");
    conf.cookie_name = json_string_value(json_object_get(conf_j, "cookie_name"));
    conf.max_value = (size_t)json_integer_value(json_object_get(conf_j, "max_value"));
    proxies = json_object_get(conf_j, "trusted_proxies");
    if (json_array_size(proxies) > 0) {
        proxy_list = calloc(json_array_size(proxies), sizeof(*proxy_list));
        cr_assert_not_null(proxy_list);
        for (i = 0; i < json_array_size(proxies); i++)
            proxy_list[i] = json_string_value(json_array_get(proxies, i));
        conf.trusted_proxies = proxy_list;
        conf.n_trusted_proxies = json_array_size(proxies);
    }

    got = attribution_extract(&r, &conf);
    cr_assert_not_null(got, "%s: NULL", name);
    ok = json_equal(got, expected);
    if (!ok) {
        char *g = json_dumps(got, JSON_SORT_KEYS | JSON_ENSURE_ASCII);
        char *w = json_dumps(expected, JSON_SORT_KEYS | JSON_ENSURE_ASCII);

        cr_log_error("%s:\n   got %s\n  want %s", name, g ? g : "?", w ? w : "?");
        free(g);
        free(w);
    }
    json_decref(got);
    free(proxy_list);
    free_request(&r);
    json_decref(req);
    json_decref(expected);
    return ok;
}

Test(attribution, data_cases)
{
    DIR *dir = opendir(CASE_DIR);
    struct dirent *de;
    int ran = 0, failed = 0;

    cr_assert_not_null(dir, "%s", CASE_DIR);
    for (de = readdir(dir); de != NULL; de = readdir(dir)) {
        if (de->d_name[0] == '.')
            continue;
        ran++;
        if (!run_case(de->d_name))
            failed++;
    }
    closedir(dir);
    cr_assert_geq(ran, 25, "only %d cases found", ran);
    cr_assert_eq(failed, 0, "%d of %d cases failed", failed, ran);
}

Test(attribution, param_keys_in_order)
{
    static const char *const want[] = {
        "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "utm_id",
        "gclid",      "gbraid",     "wbraid",       "dclid",    "fbclid",      "msclkid",
        "ttclid",     "li_fat_id",  "twclid",
    };
    size_t i;

    cr_assert_eq(attribution_param_count, sizeof(want) / sizeof(want[0]));
    for (i = 0; i < attribution_param_count; i++)
        cr_assert_str_eq(attribution_param_keys[i], want[i]);
}

/* A request with every pointer NULL (not even a query string) must not crash and gives {}. */
Test(attribution, all_null_request)
{
    struct request r;
    struct attribution_conf conf = { 0 };
    json_t *got;

    memset(&r, 0, sizeof(r));
    got = attribution_extract(&r, &conf);
    cr_assert_not_null(got);
    cr_assert_eq(json_object_size(got), 0);
    json_decref(got);
}

/* Every parameter key is read from every source (not just the first few). */
Test(attribution, every_key_from_every_source)
{
    static const char *const sources[] = { "field", "query", "referer", "cookie" };
    struct attribution_conf conf = { .cookie_name = "lb" };
    char query[64], referer[128], cookie[128];
    size_t i, s;

    for (i = 0; i < attribution_param_count; i++) {
        const char *key = attribution_param_keys[i];

        for (s = 0; s < 4; s++) {
            struct request r;
            json_t *got;

            memset(&r, 0, sizeof(r));
            cr_assert(snprintf(query, sizeof(query), "%s=v", key) > 0);
            cr_assert(snprintf(referer, sizeof(referer), "https://x.example/?%s=v", key) > 0);
            cr_assert(snprintf(cookie, sizeof(cookie), "lb=%s%%3Dv", key) > 0);
            r.query = s == 1 ? query : "";
            r.referer = s == 2 ? referer : NULL;
            r.cookie = s == 3 ? cookie : NULL;
            r.fields = json_object();
            cr_assert_not_null(r.fields);
            if (s == 0)
                cr_assert_eq(json_object_set_new(r.fields, key, json_string("v")), 0);
            got = attribution_extract(&r, &conf);
            cr_assert_not_null(got);
            cr_assert_str_eq(json_string_value(json_object_get(got, key)), "v", "%s from %s",
                             key, sources[s]);
            json_decref(got);
            json_decref(r.fields);
        }
    }
}

/* Fills s with n pseudo-random bytes (never NUL) biased toward URL and header syntax. */
static void random_bytes(char *s, size_t n, unsigned long *seed)
{
    static const char alphabet[] = "utm_source=%3D%26&;,: /?#[]\"\\.:1290abcf"
                                   "\r\n\t\x7f\xc2\x85\xff";
    size_t i;

    for (i = 0; i < n; i++) {
        *seed = *seed * 6364136223846793005UL + 1442695040888963407UL;
        if ((*seed >> 58) == 0)
            s[i] = (char)(1 + (*seed >> 33) % 255);
        else
            s[i] = alphabet[(*seed >> 33) % (sizeof(alphabet) - 1)];
    }
    s[n] = '\0';
}

/* Hostile headers: never NULL, and every value is UTF-8 without control characters, capped. */
Test(attribution, random_headers_give_clean_values)
{
    static const char *const proxies[] = { "1.2.3.4", "::1" };
    struct attribution_conf conf = { .cookie_name = "utm_source", .trusted_proxies = proxies,
                                     .n_trusted_proxies = 2, .max_value = 40 };
    char h[7][97];
    unsigned long seed = 42;
    size_t produced = 0;
    int round;

    for (round = 0; round < 3000; round++) {
        struct request r;
        json_t *got, *v;
        const char *k;
        int j;

        for (j = 0; j < 7; j++)
            random_bytes(h[j], (size_t)(round * 7 + j) % 96, &seed);
        memset(&r, 0, sizeof(r));
        r.query = h[0];
        r.origin = h[1];
        r.referer = h[2];
        r.cookie = h[3];
        r.user_agent = h[4];
        r.http_host = h[5];
        r.remote_addr = round % 2 ? "1.2.3.4" : "::1";
        r.x_forwarded_for = h[6];
        got = attribution_extract(&r, &conf);
        cr_assert_not_null(got);
        json_object_foreach(got, k, v) {
            const unsigned char *s = (const unsigned char *)json_string_value(v);
            size_t i, n = json_string_length(v);

            cr_assert(n > 0 && n <= 40, "%s: length %zu", k, n);
            for (i = 0; i < n; i++) {
                cr_assert(s[i] >= 0x20 && s[i] != 0x7f, "%s: control byte", k);
                cr_assert(!(s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f));
            }
            cr_assert(s[0] != ' ' && s[n - 1] != ' ', "%s: untrimmed", k);
            if (strcmp(k, "ip") != 0)
                produced++;
        }
        json_decref(got);
    }
    cr_assert_gt(produced, 300, "the input should yield values (%zu)", produced);
}
