/*
 * err.h: the one error vocabulary of leadbridge.
 *
 * Every fallible function returns an enum lb_err. Each code maps (by table) to the HTTP status and
 * the machine-readable "code" string that a client sees in {"error": {"code": ..., "message": ...}}.
 * Where a person must fix something, a struct lb_error carries a human message as well.
 */
#ifndef LB_ERR_H
#define LB_ERR_H

#include <stddef.h>

enum lb_err {
    LB_OK = 0,
    LB_ERR_NOMEM,          /* 500 out_of_memory */
    LB_ERR_INTERNAL,       /* 500 internal_error */
    LB_ERR_BAD_REQUEST,    /* 400 malformed_body */
    LB_ERR_FORBIDDEN,      /* 403 forbidden */
    LB_ERR_NOT_FOUND,      /* 404 not_found */
    LB_ERR_METHOD,         /* 405 method_not_allowed */
    LB_ERR_CLIENT_TIMEOUT, /* 408 request_timeout: the client stalled */
    LB_ERR_CONFLICT,       /* 409 conflict */
    LB_ERR_GONE,           /* 410 gone */
    LB_ERR_LENGTH_REQUIRED,/* 411 length_required */
    LB_ERR_TOO_LARGE,      /* 413 body_too_large */
    LB_ERR_MEDIA_TYPE,     /* 415 unsupported_media_type */
    LB_ERR_INVALID_FIELDS, /* 422 invalid_fields */
    LB_ERR_REJECTED,       /* 422 rejected: the lead API refused the lead */
    LB_ERR_UPSTREAM,       /* 502 upstream_error */
    LB_ERR_UNAVAILABLE,    /* 503 unavailable */
    LB_ERR_TIMEOUT,        /* 504 upstream_timeout */
    LB_ERR_CONFIG,         /* (start-up only) bad configuration */
    LB_ERR_IO,             /* 500 io_error: disk or socket */
    LB_ERR_UNAUTHORIZED,   /* 401 unauthorized: a builder's signature or secret did not check */
    LB_ERR_TOO_MANY_FIELDS,/* 400 too_many_fields: more fields (JSON values) than the form takes */
    LB_ERR_TOO_DEEP,       /* 400 too_deep: nested deeper than the form takes */
    LB_ERR_RATE_LIMITED,   /* 429 rate_limited: too many posts; Retry-After says when */
    LB_ERR__MAX
};

/* A code plus a message for a person. message is always NUL-terminated. */
struct lb_error {
    enum lb_err code;
    char message[256];
};

/* HTTP status for a code (200 for LB_OK). */
int lb_err_status(enum lb_err code);
/* Stable snake_case name used in JSON error bodies and logs ("body_too_large"). */
const char *lb_err_name(enum lb_err code);
/* Generic English sentence for a code. */
const char *lb_strerror(enum lb_err code);

/*
 * Records code and a printf-style message in *e (which may be NULL) and returns code, so callers
 * can write `return lb_fail(err, LB_ERR_BAD_REQUEST, "bad boundary");`.
 */
enum lb_err lb_fail(struct lb_error *e, enum lb_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
