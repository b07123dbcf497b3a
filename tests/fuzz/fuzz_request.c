/*
 * fuzz_request.c: one request as the handler sees it: the CGI environment (src/request.c), the
 * body (request_parse_body, hence src/parse.c) and the attribution taken from both
 * (src/attribution.c).
 *
 * Input: lines "NAME=value" (CGI variables: REQUEST_METHOD, CONTENT_TYPE, QUERY_STRING,
 * HTTP_REFERER, HTTP_COOKIE, REMOTE_ADDR, HTTP_X_FORWARDED_FOR, ...), an empty line, then the
 * body. The attribution conf trusts loopback proxies and reads the "lb_attr" cookie, values
 * capped at 64 bytes, so caps and the proxy walk are reached. Properties: request_from_env fills
 * path and query on success; attribution_extract returns an object whose every value is a string
 * of at most 64 bytes (ip and user_agent included) without control characters.
 */
#include "fuzz.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "attribution.h"
#include "err.h"
#include "request.h"

#define FUZZ_MAX_VARS 32
#define FUZZ_CAP 64

struct fuzz_env {
    char *names[FUZZ_MAX_VARS];
    char *values[FUZZ_MAX_VARS];
    size_t n;
};

static const char *fuzz_get(void *ctx, const char *name)
{
    const struct fuzz_env *e = ctx;
    size_t i;

    for (i = 0; i < e->n; i++) {
        if (strcmp(e->names[i], name) == 0)
            return e->values[i];
    }
    return NULL;
}

/* Splits the header block [s, end) into variables; NUL bytes end a value early, as C would. */
static void fuzz_env_parse(struct fuzz_env *e, const char *s, const char *end)
{
    while (s < end && e->n < FUZZ_MAX_VARS) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *line_end = nl != NULL ? nl : end;
        const char *eq = memchr(s, '=', (size_t)(line_end - s));

        if (eq != NULL && eq > s) {
            e->names[e->n] = strndup(s, (size_t)(eq - s));
            e->values[e->n] = strndup(eq + 1, (size_t)(line_end - eq - 1));
            if (e->names[e->n] == NULL || e->values[e->n] == NULL) {
                free(e->names[e->n]);
                free(e->values[e->n]);
                break;
            }
            e->n++;
        }
        s = line_end + 1;
    }
}

static void fuzz_check_attribution(const json_t *a)
{
    const char *key;
    json_t *v;

    if (!json_is_object(a))
        fuzz_fail("attribution_extract did not return an object");
    json_object_foreach((json_t *)a, key, v) {
        const char *s = json_string_value(v);
        size_t i, len;

        if (s == NULL)
            fuzz_fail("an attribution value is not a string");
        len = json_string_length(v);
        if (len > FUZZ_CAP)
            fuzz_fail("an attribution value is longer than max_value");
        for (i = 0; i < len; i++) {
            unsigned char c = (unsigned char)s[i];

            if (c < 0x20 || c == 0x7f)
                fuzz_fail("an attribution value holds a control character");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const proxies[] = {"127.0.0.1", "::1"};
    const struct attribution_conf conf = {.cookie_name = "lb_attr",
                                          .trusted_proxies = proxies,
                                          .n_trusted_proxies = 2,
                                          .max_value = FUZZ_CAP};
    const char *s = (const char *)data, *end = s + size, *body = end, *sep;
    struct fuzz_env env;
    struct request r;
    struct lb_error err;
    json_t *a;
    size_t i;

    memset(&env, 0, sizeof(env));
    memset(&r, 0, sizeof(r));
    memset(&err, 0, sizeof(err));
    sep = size > 0 && s[0] == '\n' ? s : NULL;
    if (sep == NULL) {
        const char *p;

        for (p = s; p + 1 < end; p++) {
            if (p[0] == '\n' && p[1] == '\n') {
                sep = p + 1;
                break;
            }
        }
    }
    if (sep != NULL)
        body = sep + 1;
    fuzz_env_parse(&env, s, sep != NULL ? sep : end);
    if (request_from_env(&r, fuzz_get, &env, &err) == LB_OK) {
        if (r.path == NULL || r.query == NULL)
            fuzz_fail("request_from_env left path or query NULL");
        (void)request_parse_body(&r, body, (size_t)(end - body), &err);
        (void)request_wants_json(&r);
        a = attribution_extract(&r, &conf);
        if (a != NULL) {
            fuzz_check_attribution(a);
            json_decref(a);
        }
    }
    request_free(&r);
    for (i = 0; i < env.n; i++) {
        free(env.names[i]);
        free(env.values[i]);
    }
    return 0;
}
