/*
 * guard.h: the spam guards of one form, compiled from its "guard" config object.
 *
 * - honeypot: a field humans never fill (default name "lb_website"); filled is spam.
 * - token: a signed form token from GET <form path>/token (HMAC-SHA256 over the form, the issue
 *   time in milliseconds and a random nonce). Posted back as lb_token: sooner than min_seconds
 *   after issue, older than max_age, forged, for another form or used before is spam; a missing
 *   token is what "missing" says ("allow" or "spam").
 * - challenge: an ALTCHA-compatible proof of work issued with the token and posted back as
 *   "altcha" (base64 of JSON {algorithm, challenge, number, salt, signature}). HMAC-signed per
 *   form, expiry in the salt ("?expires=<epoch s>"), cost "maxnumber", each solution single-use.
 * - captcha: Cloudflare Turnstile, hCaptcha or Google reCAPTCHA (v2, v3 with a score), verified
 *   server-side at the provider's siteverify URL within a timeout; an unreachable verifier fails
 *   open or closed as configured. The secret is only ever sent to the verifier.
 * - content: more than max_links links, an email at a disposable domain (a file of domains),
 *   blocked patterns (PCRE2), letters of a script the form does not expect.
 * - rate_limit: token buckets per client IP and per form (burst + per_minute), a daily cap per
 *   form, an allow-list of addresses and networks that skip them; see ratelimit.h.
 *
 * A compiled guard is read-only: threads share it. The single-use marks and the buckets live in
 * the shared table (struct ratelimit) the caller passes; with none (--dry-run) those checks are
 * skipped. Verdicts are short static reason words for the log and the quarantine, never content.
 */
#ifndef LB_GUARD_H
#define LB_GUARD_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "diag.h"
#include "err.h"
#include "http.h"
#include "ratelimit.h"

#define GUARD_TOKEN_FIELD "lb_token"
#define GUARD_CHALLENGE_FIELD "altcha"
#define GUARD_HONEYPOT_DEFAULT "lb_website"

struct guard; /* opaque; read-only after guard_compile */

/* The form key guard_compile reads (NULL-terminated), for the config's unknown-key check. */
extern const char *const guard_form_keys[];

/*
 * Compiles form_obj's "guard" object (borrowed; absent gives the defaults: honeypot on, token
 * checked when present, nothing else) for form name at path. secret is the config's "secret"
 * (borrowed for the guard's life; NULL turns the token and the challenge off). conf_dir is the
 * directory relative file names are read from. Returns a new guard or NULL with d set.
 */
struct guard *guard_compile(const json_t *form_obj, const char *name, const char *path,
                            const char *secret, const char *conf_dir, struct diag *d);
void guard_free(struct guard *g);

/* Whether spam gets the answer a person whose lead waits gets ("answer": "queued", default). */
bool guard_answer_queued(const struct guard *g);

/*
 * The inbound rate limits for a post from ip at now_ms. Returns true when it may go on; false
 * with *retry_after (seconds, >= 1) and *why ("rate_limit_ip", "rate_limit_form", "daily_cap").
 * Allow-listed addresses, and a NULL rl, always pass.
 */
bool guard_rate_ok(const struct guard *g, struct ratelimit *rl, const char *ip, long long now_ms,
                   long long *retry_after, const char **why);

/* The control fields a post carries, taken out of its fields before the rules see them. */
struct guard_controls {
    char *token;      /* lb_token; NULL when absent */
    char *challenge;  /* altcha */
    char *captcha;    /* the provider's response field */
    bool honeypot_filled;
};

/* Removes the control fields from fields (an object, changed) into *c (free with
 * guard_controls_free). */
void guard_take_controls(const struct guard *g, json_t *fields, struct guard_controls *c);
void guard_controls_free(struct guard_controls *c);

/* What a verdict needs from the request. */
struct guard_request {
    const struct guard_controls *controls;
    const json_t *fields;   /* submitted fields without the controls (borrowed) */
    const json_t *lead;     /* the canonical lead (borrowed; for "email") */
    const char *ip;         /* client address or NULL */
    struct ratelimit *rl;   /* shared marks; NULL skips single-use checks */
    struct http_client *http; /* for the captcha verifier; NULL fails it as unreachable */
    long long now_ms;
};

/*
 * Runs the checks in order: honeypot, token, challenge, content, captcha (the only one that
 * calls out, last). Returns NULL for a clean post, else the reason (a static word such as
 * "honeypot", "token_too_fast", "challenge_replayed", "links", "captcha_failed").
 */
const char *guard_verdict(const struct guard *g, const struct guard_request *r);

/*
 * The answer of GET <form>/token: {"token": "...", "honeypot": "<name>" or null,
 * "challenge": {algorithm, challenge, salt, signature, maxnumber} or null,
 * "captcha": {"provider", "sitekey"} when a site key is configured}. A new reference or NULL.
 */
json_t *guard_token_json(const struct guard *g, long long now_ms);
/*
 * The same as HTML for an SSI include: hidden lb_token (and altcha challenge data) inputs and the
 * accessibly hidden honeypot. A new string (caller frees) or NULL.
 */
char *guard_token_html(const struct guard *g, long long now_ms);

/* Signs a form token for form at issued_ms (tests). out gets at most size bytes. */
enum lb_err guard_token_sign(const struct guard *g, long long issued_ms, char *out, size_t size);

#endif
