/*
 * inbound.h: what a form takes from a server-to-server post (a form builder's webhook) besides
 * its signature (verify.h): the builder's event id as the idempotency key, the lead's host when
 * the post has no Origin or Referer, and the parsing limits sized for real payloads.
 *
 * Form keys (leadbridge.conf(5)): "event_id" (a source path in the submitted fields) or
 * "event_id_header" (a header such as Webhook-Id); "host" (a constant origin) or "host_from" (a
 * source path holding a page URL); "max_fields" and "max_depth". Compiled once at load and
 * read-only afterwards; every function is pure.
 */
#ifndef LB_INBOUND_H
#define LB_INBOUND_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "diag.h"
#include "parse.h"
#include "request.h"

struct inbound;

/* Longest event id kept; a longer one is not trusted as a key (the request has none). */
#define INBOUND_EVENT_ID_MAX 256

/* The form keys inbound_compile reads (NULL-terminated), for the config's unknown-key check. */
extern const char *const inbound_form_keys[];

/*
 * Compiles the inbound keys of a form object (borrowed); path is the form's JSON path. Returns a
 * new struct (free with inbound_free(); NULL is a no-op), or NULL with the mistakes in d.
 */
struct inbound *inbound_compile(const json_t *form, const char *path, struct diag *d);
void inbound_free(struct inbound *ib);

/* The form's parsing limits (max_fields default 4,096, max_depth 16; the rest as parse.h). */
const struct parse_limits *inbound_limits(const struct inbound *ib);

/*
 * Writes the builder's event id (a string, or a number as text; trimmed, printable ASCII or
 * UTF-8 without controls) into out. Returns true when the form names one and the request has it.
 */
bool inbound_event_id(const struct inbound *ib, const json_t *fields, env_get_fn env,
                      void *env_ctx, char *out, size_t size);

/*
 * Sets attribution.host from the form's "host" or "host_from" when the attribution has none (no
 * Origin or Referer). A "host_from" value that is not an http(s) URL sets nothing. Returns
 * LB_ERR_NOMEM only.
 */
enum lb_err inbound_set_host(const struct inbound *ib, const json_t *fields, json_t *attribution);

#endif
