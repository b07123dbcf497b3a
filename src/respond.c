/*
 * respond.c: builds and writes the answer to one request (see respond.h).
 *
 * Every header line is produced here from our own data. Values that came from a visitor reach a
 * header only percent-encoded in a redirect's query string; anything with CR, LF or NUL is refused.
 */
#include "respond.h"

#include <stdlib.h>
#include <string.h>

static const struct {
    int status;
    const char *reason;
} reasons[] = {
    {200, "OK"},
    {202, "Accepted"},
    {204, "No Content"},
    {303, "See Other"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {500, "Internal Server Error"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
};

static const char *reason_phrase(int status)
{
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].status == status)
            return reasons[i].reason;
    return "Unknown";
}

void response_init(struct response *r)
{
    memset(r, 0, sizeof(*r));
    r->status = 500;
    r->retry_after = -1;
}

void response_free(struct response *r)
{
    if (r == NULL)
        return;
    free(r->location);
    free(r->allow_origin);
    json_decref(r->body);
    free(r->text);
    r->location = NULL;
    r->allow_origin = NULL;
    r->body = NULL;
    r->text = NULL;
}

void response_json(struct response *r, int status, json_t *body)
{
    json_decref(r->body);
    free(r->location);
    free(r->text);
    r->location = NULL;
    r->text = NULL;
    r->status = status;
    r->body = body;
}

void response_text(struct response *r, int status, const char *content_type, char *text)
{
    response_json(r, status, NULL);
    r->text = text;
    r->text_type = content_type;
}

void response_error(struct response *r, enum lb_err code, const char *message)
{
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", lb_err_name(code), "message",
                             message != NULL && *message != '\0' ? message : lb_strerror(code));

    response_json(r, lb_err_status(code), body);
}

static bool header_safe(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

enum lb_err response_percent_encode(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    enum lb_err e = LB_OK;

    for (; *s != '\0' && e == LB_OK; s++) {
        unsigned char c = (unsigned char)*s;

        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~' || c == ',') {
            e = buf_putc(b, (char)c);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};

            e = buf_append(b, esc, 3);
        }
    }
    return e;
}

enum lb_err response_redirect(struct response *r, const char *base_url, const json_t *params)
{
    struct buf b;
    const char *key;
    json_t *v;
    char sep;
    enum lb_err e = LB_OK;

    if (base_url == NULL || !header_safe(base_url))
        return LB_ERR_INTERNAL;
    buf_init(&b, 8192);
    if (buf_puts(&b, base_url) != LB_OK)
        goto fail;
    sep = strchr(base_url, '?') != NULL ? '&' : '?';
    json_object_foreach((json_t *)params, key, v) {
        char num[64];
        const char *text;

        if (json_is_string(v)) {
            text = json_string_value(v);
        } else if (json_is_integer(v)) {
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            text = num;
        } else if (json_is_real(v)) {
            snprintf(num, sizeof(num), "%.15g", json_real_value(v));
            text = num;
        } else if (json_is_boolean(v)) {
            text = json_is_true(v) ? "1" : "0";
        } else {
            continue;
        }
        e = buf_putc(&b, sep);
        if (e == LB_OK)
            e = response_percent_encode(&b, key);
        if (e == LB_OK)
            e = buf_putc(&b, '=');
        if (e == LB_OK)
            e = response_percent_encode(&b, text);
        if (e != LB_OK)
            goto fail;
        sep = '&';
    }
    json_decref(r->body);
    r->body = NULL;
    free(r->location);
    r->location = buf_steal(&b);
    r->status = 303;
    return r->location != NULL ? LB_OK : LB_ERR_NOMEM;
fail:
    buf_free(&b);
    return e != LB_OK ? e : LB_ERR_NOMEM;
}

enum lb_err response_serialize(const struct response *r, bool head_only, struct buf *out)
{
    enum lb_err e;
    char *body = NULL;

    e = buf_printf(out, "Status: %d %s\r\n", r->status, reason_phrase(r->status));
    if (e == LB_OK && r->location != NULL) {
        if (!header_safe(r->location))
            return LB_ERR_INTERNAL;
        e = buf_printf(out, "Location: %s\r\n", r->location);
    }
    if (e == LB_OK && r->allow != NULL)
        e = buf_printf(out, "Allow: %s\r\n", r->allow);
    if (e == LB_OK && r->allow_origin != NULL) {
        if (!header_safe(r->allow_origin))
            return LB_ERR_INTERNAL;
        e = buf_printf(out, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n",
                       r->allow_origin);
    }
    if (e == LB_OK && r->preflight)
        e = buf_puts(out, "Access-Control-Allow-Methods: POST, OPTIONS\r\n"
                          "Access-Control-Allow-Headers: Content-Type, Idempotency-Key, "
                          "X-Requested-With\r\nAccess-Control-Max-Age: 600\r\n");
    if (e == LB_OK && r->retry_after >= 0)
        e = buf_printf(out, "Retry-After: %lld\r\n", r->retry_after);
    if (e == LB_OK && r->same_origin_referrer)
        e = buf_puts(out, "Referrer-Policy: same-origin\r\n");
    if (e == LB_OK)
        e = buf_puts(out, "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
    if (e == LB_OK && r->body != NULL) {
        body = json_dumps(r->body, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (body == NULL)
            return LB_ERR_NOMEM;
        e = buf_printf(out, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                       strlen(body) + 1);
        if (e == LB_OK && !head_only) {
            e = buf_puts(out, body);
            if (e == LB_OK)
                e = buf_putc(out, '\n');
        }
        free(body);
    } else if (e == LB_OK && r->text != NULL) {
        e = buf_printf(out, "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n", r->text_type,
                       strlen(r->text));
        if (e == LB_OK && !head_only)
            e = buf_puts(out, r->text);
    } else if (e == LB_OK) {
        e = buf_puts(out, "Content-Length: 0\r\n\r\n");
    }
    return e;
}
