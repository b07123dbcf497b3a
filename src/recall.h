/*
 * recall.h: a rejected plain-HTML post, kept for a few minutes so the page can show the form
 * again with the visitor's values and a message under each field, without JavaScript and
 * without putting anything personal in a URL or a log line.
 *
 * The bridge writes {form, created, values, errors} to <spool>/recall/<token>.json (0600) and
 * redirects to the form's error page with only lb_error=<token> (128 random bits), the error code
 * and the field names. The page (nginx SSI) reads each value and message back with
 * GET <form path>/recall?t=<token>&v=<name> and ...&e=<name>, which answer text/plain. A record
 * lives RECALL_TTL seconds; older ones are removed whenever a new one is written, and never read.
 */
#ifndef LB_RECALL_H
#define LB_RECALL_H

#include <jansson.h>

#include "err.h"

#define RECALL_TTL 900
#define RECALL_TOKEN_SIZE 33

/*
 * Keeps the submitted top-level text values (fields, borrowed; spam-guard and lb_token/altcha
 * fields left out) and the per-input errors (borrowed) of form under a new token written into
 * token. Returns LB_OK, or LB_ERR_IO / LB_ERR_NOMEM / LB_ERR_INTERNAL (no randomness).
 */
enum lb_err recall_put(const char *spool_dir, const char *form, const json_t *fields,
                       const json_t *errors, long long now, char token[RECALL_TOKEN_SIZE]);

/*
 * The record of form under token (new reference), or NULL when token is malformed, unknown,
 * older than RECALL_TTL or for another form.
 */
json_t *recall_get(const char *spool_dir, const char *form, const char *token, long long now);

#endif
