/*
 * respond.h: the answer to one request, built as data and written once.
 *
 * Script clients get JSON; plain HTML forms get a 303 to an allow-listed page whose query string
 * holds only non-personal values. Header values are built here from our own data, percent-encoded,
 * and refused if they would hold CR or LF.
 */
#ifndef LB_RESPOND_H
#define LB_RESPOND_H

#include <stdbool.h>

#include <jansson.h>

#include "buf.h"
#include "err.h"

struct response {
    int status;
    char *location;        /* owned; set for redirects */
    json_t *body;          /* owned JSON body; NULL for none */
    const char *allow;     /* static Allow header value for 405 */
    char *allow_origin;    /* owned; Access-Control-Allow-Origin for allowed cross-origin scripts */
    long long retry_after; /* Retry-After seconds, or -1 */
    bool preflight;        /* a CORS preflight answer: adds the Allow-Methods/Headers lines */
    char *text;            /* owned non-JSON body (metrics); NULL for none */
    const char *text_type; /* static Content-Type of text */
    bool same_origin_referrer; /* Referrer-Policy: same-origin (the answer carries a lead ref) */
};

void response_init(struct response *r);
void response_free(struct response *r);

/* Sets status and body {"error": {"code": lb_err_name(code), "message": message}}. */
void response_error(struct response *r, enum lb_err code, const char *message);
/* Sets status and body (stolen). */
void response_json(struct response *r, int status, json_t *body);
/* Sets status and a text body (stolen, NUL-terminated) of type content_type (static). */
void response_text(struct response *r, int status, const char *content_type, char *text);
/*
 * Sets a 303 to base_url with params (an object of string/number/bool values, borrowed) appended
 * to its query string, percent-encoded. LB_ERR_INTERNAL if base_url holds CR/LF/NUL.
 */
enum lb_err response_redirect(struct response *r, const char *base_url, const json_t *params);

/* Appends s percent-encoded (RFC 3986 unreserved characters and ',' kept). */
enum lb_err response_percent_encode(struct buf *b, const char *s);

/* Writes the CGI response (Status line, headers, blank line, body unless head_only) into out. */
enum lb_err response_serialize(const struct response *r, bool head_only, struct buf *out);

#endif
