/*
 * verify.h: per-form inbound verification of server-to-server posts (form builders' webhooks).
 *
 * A form's "verify" object names a scheme: a signing builder (typeform, webflow, tally,
 * hubspot_v3, standard_webhooks), a generic HMAC (header, sha1/sha256/sha512, hex or base64, an
 * optional prefix and a template of what is signed), or a shared secret (header, bearer, basic).
 * The named schemes are presets of the generic HMAC (one table), so they share one code path.
 *
 * verify_request() runs at the guard step over the raw body exactly as received, before the body
 * is parsed or anything is spooled. Up to two secrets are tried (rotation); every comparison is
 * constant-time. A failure says which check failed in our own words, never the secret or what the
 * client sent. The compiled struct is read-only after load and shared by all threads.
 */
#ifndef LB_VERIFY_H
#define LB_VERIFY_H

#include <stddef.h>

#include <jansson.h>

#include "diag.h"
#include "err.h"
#include "request.h"

struct verify;

/* Longest reason verify_request() writes. */
#define VERIFY_WHY_SIZE 96

/*
 * Compiles a form's "verify" object (borrowed; NULL means no verification: returns NULL without
 * a diagnostic). path is the object's JSON path ("forms.typeform.verify"). Mistakes go to d.
 * Returns a new struct (free with verify_free()), or NULL.
 */
struct verify *verify_compile(const json_t *obj, const char *path, struct diag *d);
void verify_free(struct verify *v);

/* The scheme's name ("typeform"), for logs. */
const char *verify_scheme_name(const struct verify *v);

/*
 * Checks one request: r for the method, Host and TLS flag, env for the headers the scheme names
 * (read as CGI variables, HTTP_<NAME>) and REQUEST_URI, body[0..len) the raw body, now_ms the
 * wall clock in milliseconds. Returns LB_OK, or LB_ERR_UNAUTHORIZED with the failed check in why
 * ("signature does not match", "timestamp outside the 300 s window", ...). v NULL: LB_OK.
 */
enum lb_err verify_request(const struct verify *v, const struct request *r, env_get_fn env,
                           void *env_ctx, const char *body, size_t len, long long now_ms,
                           char *why, size_t why_size);

#endif
