/*
 * target.h: the interface every lead API sits behind.
 *
 * One file per API (target_leadpro.c, target_leadping.c, target_lofty.c, target_webhook.c), each
 * a static const struct target_ops. A target turns the canonical lead into a struct http_call for an
 * action, checks the lead locally first by the API's documented rules, and classifies the answer.
 * None of them does I/O: http_perform() does, in deliver (target.c).
 */
#ifndef LB_TARGET_H
#define LB_TARGET_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "diag.h"
#include "err.h"
#include "http.h"

enum target_action { TARGET_CREATE = 0, TARGET_VALUATION, TARGET_UPDATE, TARGET_ACTION__MAX };

enum delivery_outcome {
    DELIVERY_OK = 0,     /* the API took it */
    DELIVERY_TRANSIENT,  /* try again later: connection, timeout, 5xx, 408, 429 */
    DELIVERY_PERMANENT,  /* the API refused it: other 4xx; retrying will not help */
    DELIVERY_DEFERRED,   /* not sent: the target's rate limit (throttle.h); retry_after says when */
    DELIVERY__MAX
};

struct target_result {
    enum delivery_outcome outcome;
    long http_status;         /* 0 when no answer */
    char lead_id[64];         /* the API's id for the lead, as text (64-bit safe); "" if none */
    json_t *valuation;        /* owned; NULL or {"status":..,"sale":{min,avg,max},"rent":{...}} */
    char reason[512];         /* for a person; never holds secrets */
    long long retry_after;    /* seconds to wait before retrying, or -1 */
    bool still_unknown;       /* transient, and whether an interrupted create made the lead is
                                 still not known (the search failed or must wait): the next
                                 attempt must ask again */
};

struct target_ops {
    const char *type; /* "leadpro" */
    /* Reads the target's config object (borrowed) at path. Returns its state or NULL with d set. */
    void *(*configure)(const json_t *conf, const char *path, struct diag *d);
    void (*free)(void *state);
    /* Whether the API can do action at all. */
    bool (*supports)(enum target_action action);
    /*
     * Checks lead by the API's documented rules before anything is sent. Adds
     * {"field": "reason"} to errors (borrowed) and returns how many it added.
     */
    int (*validate)(const void *state, enum target_action action, const json_t *lead,
                    json_t *errors);
    /*
     * Builds the call. lead_id is the API's id for updates (else NULL); submission_id is our
     * stable id of the submission (the same on every retry). Fills *call.
     */
    enum lb_err (*build)(const void *state, enum target_action action, const json_t *lead,
                         const char *lead_id, const char *submission_id, struct http_call *call);
    /* Classifies the reply into *result (result is zeroed by the caller, retry_after = -1). */
    void (*classify)(const void *state, enum target_action action, const struct http_reply *reply,
                     struct target_result *result);
    /*
     * Optional; NULL for APIs that recognise a repeat by our submission id themselves (Leadping's
     * externalId, webhooks' Idempotency-Key). Builds a search for the leads of lead's person
     * (by email and/or phone; the answer is read by target_lookup_match), for when an earlier
     * create's outcome is unknown. LB_ERR_NOT_FOUND: the lead has nothing to search by.
     */
    enum lb_err (*build_lookup)(const void *state, const json_t *lead, struct http_call *call);
    /*
     * Seconds after an interrupted create began before a search can be trusted: the request may
     * still be in flight (up to the target's timeout) and the API may persist asynchronously.
     */
    long long (*lookup_settle)(const void *state);
};

struct target {
    char *name;                 /* the key under "targets" in the config */
    double rate_per_minute;     /* outbound rate limit ("rate_limit", throttle.h); 0: none */
    double rate_burst;
    const struct target_ops *ops;
    void *state;
};

extern const struct target_ops target_leadpro_ops;
extern const struct target_ops target_leadping_ops;
extern const struct target_ops target_lofty_ops;
extern const struct target_ops target_webhook_ops;

/* The ops for a "type" string, or NULL. */
const struct target_ops *target_ops_find(const char *type);
const char *target_action_name(enum target_action a);
const char *delivery_outcome_name(enum delivery_outcome o);

/*
 * Builds, performs and classifies one delivery. Never fails: transport errors and bad build
 * results become an outcome in *result (free result->valuation with target_result_clear).
 */
void target_deliver(const struct target *t, struct http_client *http, enum target_action action,
                    const json_t *lead, const char *lead_id, const char *submission_id,
                    struct target_result *result);
/*
 * target_deliver, first asking the API whether it has the lead already when check_existing is
 * true (the previous attempt's outcome is unknown: its worker died) and the target can be asked
 * (build_lookup). Found: DELIVERY_OK with its lead id, nothing created. Not found: created as
 * usual. The search failing: DELIVERY_TRANSIENT (never a blind second create).
 */
void target_deliver_checked(const struct target *t, struct http_client *http,
                            enum target_action action, const json_t *lead, const char *lead_id,
                            const char *submission_id, bool check_existing,
                            struct target_result *result);
/*
 * Reads a search answer tolerantly: any JSON object, at any depth of body, that carries
 * submission_id in one of its strings (exactly, or as "leadbridge id: <id>" in a note) and an id
 * ("id" or "leadId", a number or a string) names the lead. Returns true and fills lead_id.
 */
bool target_lookup_match(const char *body, size_t len, const char *submission_id,
                         char *lead_id, size_t size);
/*
 * Fills call->url with prefix + "?email=.." from lead's email, or "?phone=.." when it has no email
 * (percent-encoded). One key only: both APIs match either key, and a phone shared by a household
 * or an office would list every lead of all its people. LB_ERR_NOT_FOUND when the lead has
 * neither, LB_ERR_INTERNAL when it does not fit.
 */
enum lb_err target_lookup_url(struct http_call *call, const char *prefix, const json_t *lead);
/*
 * target_deliver in two halves, for callers that perform the call elsewhere (the event loop):
 * target_prepare builds it (returns false, with *result set, when there is nothing to send) and
 * target_conclude classifies its reply (borrowed) into *result, as target_deliver does.
 */
bool target_prepare(const struct target *t, enum target_action action, const json_t *lead,
                    const char *lead_id, const char *submission_id, struct http_call *call,
                    struct target_result *result);
void target_conclude(const struct target *t, enum target_action action, const char *lead_id,
                     const char *submission_id, const struct http_reply *reply,
                     struct target_result *result);
void target_result_init(struct target_result *r);
void target_result_clear(struct target_result *r);

/* Helpers for reading a lead and reporting on it, shared by the targets. */
/* The non-empty string at key of obj (borrowed), or NULL when absent, empty or not a string. */
const char *target_text(const json_t *obj, const char *key);
/* True when the value at key is present at all (null counts as absent). */
bool target_present(const json_t *obj, const char *key);
/* Adds {field: reason} to errors unless field already has a reason. Returns 1 if added, else 0. */
int target_add_error(json_t *errors, const char *field, const char *reason);

/*
 * Copies text into out (size bytes) for a reason a person reads: ASCII and C1 control characters
 * dropped (a run of them becomes one space), at most cap bytes, cut on a UTF-8 boundary. out is
 * always terminated.
 */
void target_clean_text(char *out, size_t size, const char *text, size_t cap);

/* Shared helper for classify: status → outcome (2xx ok; 408, 429, 5xx, 0 transient; else permanent). */
enum delivery_outcome target_outcome_for_status(long status);

/* ---- Config shared by the API targets (LeadPro, Leadping, Lofty) ---- */

#define TARGET_BASE_URL_MAX 1900  /* bytes; leaves room in a call's url for a path and an id */
#define TARGET_CREDENTIAL_MAX 512 /* bytes of one credential */
#define TARGET_AUTH_KEYS 2        /* credentials one auth mode needs, at most */

/* One way to authenticate: its name for "auth" and the keys holding its credentials. */
struct target_auth {
    const char *name;
    const char *keys[TARGET_AUTH_KEYS]; /* unused slots NULL */
};

/* What every API target reads the same way. */
struct target_api_conf {
    char base_url[TARGET_BASE_URL_MAX + 1]; /* without trailing slashes */
    int auth;                               /* index of the chosen mode in the table given */
    char *credentials[TARGET_AUTH_KEYS];    /* owned: the chosen mode's keys, in its order */
    long connect_timeout_ms;
    long timeout_ms;
};

/*
 * Reads an API target's shared keys from conf (borrowed) at path into *out, reporting every
 * mistake to d:
 * - "base_url" (default default_base): http:// or https://, a host, printable ASCII without
 *   spaces, query or fragment, at most TARGET_BASE_URL_MAX bytes; trailing slashes are removed;
 * - the credentials of one of the n_modes auth modes: with more than one mode, "auth" names it
 *   and may be left out when only one mode's keys are given; a key of another mode is a mistake.
 *   Each credential is required: 1 to TARGET_CREDENTIAL_MAX bytes of printable ASCII without
 *   spaces (it travels in a header);
 * - "connect_timeout" (seconds, 1 to 300, default 3) and "timeout" (1 to 600, default 15), the
 *   first not longer than the second.
 * The caller checks the other keys. Free with target_api_conf_free() whatever d says.
 */
void target_api_conf_read(const json_t *conf, const char *path, const char *default_base,
                          const struct target_auth *modes, int n_modes,
                          struct target_api_conf *out, struct diag *d);
/* Frees the credentials and clears *c; NULL is a no-op. */
void target_api_conf_free(struct target_api_conf *c);

/*
 * The Standard Webhooks signature of one message: "v1," + base64(HMAC-SHA256(key, msg_id "."
 * timestamp "." body)), written into out. LB_ERR_INTERNAL when out is too small.
 */
/*
 * The key a webhook "secret" stands for: "whsec_" + base64 is decoded, anything else is the bytes
 * themselves. Writes it to out and returns its length; -1 for bad base64, -2 when longer than
 * out_size.
 */
long target_webhook_secret_key(const char *secret, uint8_t *out, size_t out_size);
enum lb_err target_webhook_sign(const void *key, size_t key_len, const char *msg_id,
                                long long timestamp, const char *body, size_t body_len, char *out,
                                size_t out_size);

#endif
