/* err.c: the table behind enum lb_err. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

static const struct {
    int status;
    const char *name;
    const char *text;
} err_table[LB_ERR__MAX] = {
    [LB_OK] = {200, "ok", "success"},
    [LB_ERR_NOMEM] = {500, "out_of_memory", "the server ran out of memory"},
    [LB_ERR_INTERNAL] = {500, "internal_error", "internal error"},
    [LB_ERR_BAD_REQUEST] = {400, "malformed_body", "the request body could not be read"},
    [LB_ERR_FORBIDDEN] = {403, "forbidden", "not allowed"},
    [LB_ERR_NOT_FOUND] = {404, "not_found", "no form at this address"},
    [LB_ERR_METHOD] = {405, "method_not_allowed", "method not allowed"},
    [LB_ERR_CLIENT_TIMEOUT] = {408, "request_timeout", "the request did not arrive in time"},
    [LB_ERR_CONFLICT] = {409, "conflict", "conflicts with an earlier request"},
    [LB_ERR_GONE] = {410, "gone", "no longer valid"},
    [LB_ERR_LENGTH_REQUIRED] = {411, "length_required", "a Content-Length is required"},
    [LB_ERR_TOO_LARGE] = {413, "body_too_large", "the request body is too large"},
    [LB_ERR_MEDIA_TYPE] = {415, "unsupported_media_type", "unsupported content type"},
    [LB_ERR_INVALID_FIELDS] = {422, "invalid_fields", "some fields are not valid"},
    [LB_ERR_REJECTED] = {422, "rejected", "the lead system refused the lead"},
    [LB_ERR_UPSTREAM] = {502, "upstream_error", "the lead system could not be reached"},
    [LB_ERR_UNAVAILABLE] = {503, "unavailable", "temporarily unavailable"},
    [LB_ERR_TIMEOUT] = {504, "upstream_timeout", "the lead system did not answer in time"},
    [LB_ERR_CONFIG] = {500, "config_error", "configuration error"},
    [LB_ERR_IO] = {500, "io_error", "input/output error"},
    [LB_ERR_UNAUTHORIZED] = {401, "unauthorized", "the signature or credentials did not check"},
    [LB_ERR_TOO_MANY_FIELDS] = {400, "too_many_fields", "more fields than this form takes"},
    [LB_ERR_TOO_DEEP] = {400, "too_deep", "nested deeper than this form takes"},
    [LB_ERR_RATE_LIMITED] = {429, "rate_limited", "too many posts; please try again later"},
};

int lb_err_status(enum lb_err code)
{
    if ((unsigned)code >= LB_ERR__MAX)
        return 500;
    return err_table[code].status;
}

const char *lb_err_name(enum lb_err code)
{
    if ((unsigned)code >= LB_ERR__MAX)
        return "internal_error";
    return err_table[code].name;
}

const char *lb_strerror(enum lb_err code)
{
    if ((unsigned)code >= LB_ERR__MAX)
        return "internal error";
    return err_table[code].text;
}

enum lb_err lb_fail(struct lb_error *e, enum lb_err code, const char *fmt, ...)
{
    va_list ap;

    if (e == NULL)
        return code;
    e->code = code;
    va_start(ap, fmt);
    if (vsnprintf(e->message, sizeof(e->message), fmt, ap) < 0)
        e->message[0] = '\0';
    va_end(ap);
    return code;
}
