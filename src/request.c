/*
 * request.c: copies what we use of a CGI/FastCGI environment into struct request, and turns the
 * body into fields (see request.h). Nothing here trusts the environment: every value is capped,
 * CONTENT_LENGTH is parsed strictly, and the path is taken as nginx or Apache give it.
 */
#include "request.h"

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"
#include "parse.h"

#define REQUEST_MAX_QUERY (16 * 1024)

static const char *const method_names[METHOD__MAX] = {
    [METHOD_OTHER] = "OTHER", [METHOD_GET] = "GET",       [METHOD_HEAD] = "HEAD",
    [METHOD_POST] = "POST",   [METHOD_PUT] = "PUT",       [METHOD_PATCH] = "PATCH",
    [METHOD_DELETE] = "DELETE", [METHOD_OPTIONS] = "OPTIONS",
};

const char *request_method_name(enum http_method m)
{
    return (unsigned)m < METHOD__MAX ? method_names[m] : "OTHER";
}

/* A copy of the variable cut to max bytes, or NULL when unset. */
static char *copy_var(env_get_fn get, void *ctx, const char *name, size_t max)
{
    const char *v = get(ctx, name);

    if (v == NULL)
        return NULL;
    return strndup(v, max);
}

/* Strict decimal: digits only, no sign, no overflow. -1 when absent, -2 when malformed. */
static long long parse_content_length(const char *s)
{
    long long n = 0;

    if (s == NULL || *s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (!isdigit((unsigned char)*s))
            return -2;
        if (n > (LLONG_MAX - 9) / 10)
            return -2;
        n = n * 10 + (*s - '0');
    }
    return n;
}

enum lb_err request_from_env(struct request *r, env_get_fn get, void *ctx, struct lb_error *err)
{
    const char *v;
    unsigned char rnd[8];

    memset(r, 0, sizeof(*r));
    r->content_length = -1;
    if (crypto_random(rnd, sizeof(rnd)) != 0)
        memset(rnd, 0, sizeof(rnd));
    hex_encode(rnd, sizeof(rnd), r->id);

    r->method_name = copy_var(get, ctx, "REQUEST_METHOD", 16);
    r->method = METHOD_OTHER;
    for (int m = METHOD_GET; m < METHOD__MAX; m++)
        if (r->method_name != NULL && strcmp(r->method_name, method_names[m]) == 0)
            r->method = (enum http_method)m;

    /* nginx: DOCUMENT_URI is the path without the query. Apache: SCRIPT_NAME + PATH_INFO. */
    v = get(ctx, "DOCUMENT_URI");
    if (v != NULL && *v != '\0') {
        r->path = strndup(v, REQUEST_MAX_HEADER);
    } else {
        const char *script = get(ctx, "SCRIPT_NAME");
        const char *info = get(ctx, "PATH_INFO");
        size_t a = script != NULL ? strnlen(script, REQUEST_MAX_HEADER) : 0;
        size_t b = info != NULL ? strnlen(info, REQUEST_MAX_HEADER) : 0;

        r->path = malloc(a + b + 1);
        if (r->path != NULL) {
            memcpy(r->path, script != NULL ? script : "", a);
            memcpy(r->path + a, info != NULL ? info : "", b);
            r->path[a + b] = '\0';
        }
    }
    v = get(ctx, "QUERY_STRING");
    if (v != NULL && strlen(v) > REQUEST_MAX_QUERY)
        return lb_fail(err, LB_ERR_TOO_LARGE, "the query string is longer than %d bytes",
                       REQUEST_MAX_QUERY);
    r->query = strdup(v != NULL ? v : "");
    if (r->path == NULL || r->query == NULL || r->method_name == NULL) {
        if (r->method_name == NULL && r->path != NULL && r->query != NULL)
            return lb_fail(err, LB_ERR_BAD_REQUEST, "no REQUEST_METHOD: not a CGI request");
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    }

    r->content_type = copy_var(get, ctx, "CONTENT_TYPE", REQUEST_MAX_HEADER);
    if (r->content_type != NULL && *r->content_type == '\0') {
        free(r->content_type);
        r->content_type = NULL;
    }
    r->content_length = parse_content_length(get(ctx, "CONTENT_LENGTH"));
    r->origin = copy_var(get, ctx, "HTTP_ORIGIN", REQUEST_MAX_HEADER);
    r->referer = copy_var(get, ctx, "HTTP_REFERER", REQUEST_MAX_HEADER);
    r->cookie = copy_var(get, ctx, "HTTP_COOKIE", REQUEST_MAX_HEADER);
    r->user_agent = copy_var(get, ctx, "HTTP_USER_AGENT", REQUEST_MAX_HEADER);
    r->accept = copy_var(get, ctx, "HTTP_ACCEPT", REQUEST_MAX_HEADER);
    r->x_requested_with = copy_var(get, ctx, "HTTP_X_REQUESTED_WITH", REQUEST_MAX_HEADER);
    r->idempotency_key = copy_var(get, ctx, "HTTP_IDEMPOTENCY_KEY", REQUEST_MAX_HEADER);
    r->authorization = copy_var(get, ctx, "HTTP_AUTHORIZATION", REQUEST_MAX_HEADER);
    r->http_host = copy_var(get, ctx, "HTTP_HOST", REQUEST_MAX_HEADER);
    r->remote_addr = copy_var(get, ctx, "REMOTE_ADDR", 64);
    r->x_forwarded_for = copy_var(get, ctx, "HTTP_X_FORWARDED_FOR", REQUEST_MAX_HEADER);
    v = get(ctx, "HTTPS");
    r->https = v != NULL && (strcasecmp(v, "on") == 0 || strcmp(v, "1") == 0);
    if (r->content_length == -2)
        return lb_fail(err, LB_ERR_BAD_REQUEST, "Content-Length is not a number");
    return LB_OK;
}

enum lb_err request_parse_body(struct request *r, const char *body, size_t len,
                               struct lb_error *err)
{
    enum lb_err e;

    json_decref(r->fields);
    r->fields = NULL;
    if (r->method == METHOD_GET || r->method == METHOD_HEAD) {
        r->fields = json_object();
        if (r->fields == NULL)
            return lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return parse_urlencoded(r->query, strlen(r->query),
                                r->limits != NULL ? r->limits : &parse_default_limits, r->fields,
                                err);
    }
    e = parse_body(r->content_type, body, len, r->limits, &r->fields, err);
    if (e != LB_OK) {
        json_decref(r->fields);
        r->fields = NULL;
    }
    return e;
}

char *request_header_var(const char *name)
{
    size_t n = strlen(name), i;
    char *out;

    if (n == 0 || n > 200 || strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                          "0123456789-_") != n)
        return NULL;
    out = malloc(n + 6);
    if (out == NULL)
        return NULL;
    memcpy(out, "HTTP_", 5);
    for (i = 0; i < n; i++) {
        char c = name[i];

        out[5 + i] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
    }
    out[5 + n] = '\0';
    return out;
}

/* True when the media type (before any ';') of s is JSON. */
static bool is_json_type(const char *s)
{
    size_t n = strcspn(s, ";");

    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    return (n == 16 && strncasecmp(s, "application/json", 16) == 0) ||
           (n > 5 && strncasecmp(s + n - 5, "+json", 5) == 0);
}

bool request_wants_json(const struct request *r)
{
    if (r->x_requested_with != NULL)
        return true;
    if (r->accept != NULL && strcasestr(r->accept, "json") != NULL)
        return true;
    if (r->content_type != NULL && is_json_type(r->content_type))
        return true;
    /* A browser navigating (a plain HTML form post) asks for HTML; anything else is a script. */
    if (r->accept != NULL && strcasestr(r->accept, "text/html") != NULL)
        return false;
    return true;
}

void request_free(struct request *r)
{
    if (r == NULL)
        return;
    free(r->method_name);
    free(r->path);
    free(r->query);
    free(r->content_type);
    free(r->origin);
    free(r->referer);
    free(r->cookie);
    free(r->user_agent);
    free(r->accept);
    free(r->x_requested_with);
    free(r->idempotency_key);
    free(r->authorization);
    free(r->http_host);
    free(r->remote_addr);
    free(r->x_forwarded_for);
    json_decref(r->fields);
    memset(r, 0, sizeof(*r));
}
