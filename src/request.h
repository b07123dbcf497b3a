/*
 * request.h: one HTTP request as the handlers see it.
 *
 * request_from_env() copies what we use out of a CGI/FastCGI environment (FastCGI's pointers die at
 * FCGX_Finish_r, so everything here is owned). The body is read by the caller (it owns the stream)
 * and turned into fields by request_parse_body(); handlers never see raw environment or streams.
 */
#ifndef LB_REQUEST_H
#define LB_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"
#include "parse.h"

/* Reads one CGI variable ("REQUEST_METHOD", "HTTP_REFERER"); NULL when unset. Borrowed result. */
typedef const char *(*env_get_fn)(void *ctx, const char *name);

enum http_method {
    METHOD_OTHER = 0,
    METHOD_GET,
    METHOD_HEAD,
    METHOD_POST,
    METHOD_PUT,
    METHOD_PATCH,
    METHOD_DELETE,
    METHOD_OPTIONS,
    METHOD__MAX
};

/* Longest value we keep of any header or variable; longer ones are cut (and never trusted). */
#define REQUEST_MAX_HEADER 4096

struct request {
    enum http_method method;
    char *method_name;
    char *path;             /* DOCUMENT_URI, else SCRIPT_NAME + PATH_INFO; never NULL */
    char *query;            /* QUERY_STRING; never NULL ("" when absent) */
    char *content_type;     /* NULL when absent; the rest likewise */
    long long content_length; /* -1 when absent */
    char *origin;
    char *referer;
    char *cookie;
    char *user_agent;
    char *accept;
    char *x_requested_with;
    char *idempotency_key;
    char *authorization;    /* for server-to-server webhooks; never logged */
    char *http_host;
    char *remote_addr;
    char *x_forwarded_for;
    bool https;
    json_t *fields;         /* submitted fields: an object (owned); NULL until parsed */
    const struct parse_limits *limits; /* the form's parsing limits (borrowed); NULL: defaults */
    char id[17];            /* request id, 16 hex digits */
};

/* Fills r from the environment. On failure r is still safe to request_free(). */
enum lb_err request_from_env(struct request *r, env_get_fn get, void *ctx, struct lb_error *err);

/*
 * Parses body (len bytes, not necessarily NUL-terminated) according to r->content_type into
 * r->fields; for GET/HEAD the query string is parsed instead. Returns LB_ERR_MEDIA_TYPE,
 * LB_ERR_BAD_REQUEST or LB_ERR_TOO_LARGE with a message in *err.
 */
enum lb_err request_parse_body(struct request *r, const char *body, size_t len,
                               struct lb_error *err);

/*
 * The CGI variable that carries header name ("Typeform-Signature" → "HTTP_TYPEFORM_SIGNATURE"):
 * a new string (caller frees), or NULL when name is empty, longer than 200 bytes or has anything
 * but letters, digits, '-' and '_'.
 */
char *request_header_var(const char *name);

/* True when the client is a script that wants JSON (Accept JSON or X-Requested-With). */
bool request_wants_json(const struct request *r);

/* Name of a method ("POST") for the Allow header and logs. */
const char *request_method_name(enum http_method m);

void request_free(struct request *r);

#endif
