/*
 * parse.h: request-body parsers. Pure functions: bytes in, a JSON object of fields out.
 *
 * - application/x-www-form-urlencoded: repeated keys become arrays; a[b][c] brackets nest; a[]
 *   appends to an array (only as the last bracket); numeric brackets are object keys ("0"). A name
 *   that is not exactly base[seg]...[seg] (a[b, a], [a], a[b]c, a[][b]) is kept literally as one
 *   key. A name used both as a value and as a group (a=1&a[b]=2) is LB_ERR_BAD_REQUEST. Depth
 *   counts the top object as 1, so a[b] has depth 2.
 * - multipart/form-data: text parts become fields the same way; file parts are skipped, never kept.
 * - application/json: any object, nesting capped at limits->max_depth.
 * All strings are validated as UTF-8. Every size is bounded by struct parse_limits.
 */
#ifndef LB_PARSE_H
#define LB_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"

struct parse_limits {
    size_t max_fields; /* total fields (leaves) in one request */
    size_t max_depth;  /* bracket or JSON nesting */
    size_t max_key;    /* bytes in one field name */
    size_t max_value;  /* bytes in one field value */
};

/* The defaults: 4,096 fields (JSON values; a HubSpot contact profile has ~300), depth 16,
 * keys of 256 bytes, values of 16 KiB. */
extern const struct parse_limits parse_default_limits;

/*
 * Parses body by content_type (its parameters, such as boundary and charset, included) into a new
 * object stored in *out (caller owns it). Returns LB_ERR_MEDIA_TYPE for a type we do not take,
 * LB_ERR_BAD_REQUEST for a malformed body (message names the problem), LB_ERR_TOO_MANY_FIELDS or
 * LB_ERR_TOO_DEEP past the field count or nesting, LB_ERR_TOO_LARGE past a name or value size.
 * *out is NULL on failure.
 */
enum lb_err parse_body(const char *content_type, const char *body, size_t len,
                       const struct parse_limits *limits, json_t **out, struct lb_error *err);

/* Parses an urlencoded string (a body or a query string) adding fields into obj. */
enum lb_err parse_urlencoded(const char *s, size_t len, const struct parse_limits *limits,
                             json_t *obj, struct lb_error *err);

/*
 * Decodes percent-encoding (and '+' as space when plus_is_space) of s into a new NUL-terminated
 * string in *out. LB_ERR_BAD_REQUEST on a bad escape or invalid UTF-8.
 */
enum lb_err parse_percent_decode(const char *s, size_t len, bool plus_is_space, char **out);

/*
 * Parses JSON text held in a string (Jotform's rawRequest) into a new value of any type in *out,
 * under the same limits and checks as a JSON body. LB_ERR_BAD_REQUEST for malformed JSON,
 * LB_ERR_TOO_MANY_FIELDS / LB_ERR_TOO_DEEP / LB_ERR_TOO_LARGE past a limit; *out NULL then.
 */
enum lb_err parse_json_value(const char *s, size_t len, const struct parse_limits *limits,
                             json_t **out, struct lb_error *err);

/* True when s[0..len) is valid UTF-8 (no overlongs, no surrogates, no NUL). */
bool parse_utf8_valid(const char *s, size_t len);

#endif
