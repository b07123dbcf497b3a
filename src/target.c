/*
 * target.c: the shared half of the target interface (see target.h).
 *
 * The table of target types, names for actions and outcomes, the status → outcome map every
 * classify uses, and target_deliver(): build, perform, classify, with transport failures and
 * rate-limit hints folded into one struct target_result. This is the only place a target's call
 * meets the network. Also what the targets share: the config reader for base URL, credentials
 * and timeouts, and helpers for reading a lead and writing a reason.
 */
#include "target.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conf.h"
#include "metrics.h"

#define TARGET_PATH_SIZE 512

static const struct target_ops *const target_table[] = {
    &target_leadpro_ops,
    &target_leadping_ops,
    &target_lofty_ops,
    &target_webhook_ops,
};

static const char *const target_action_names[TARGET_ACTION__MAX] = {
    [TARGET_CREATE] = "create",
    [TARGET_VALUATION] = "valuation",
    [TARGET_UPDATE] = "update",
};

static const char *const delivery_outcome_names[DELIVERY__MAX] = {
    [DELIVERY_OK] = "ok",
    [DELIVERY_TRANSIENT] = "transient",
    [DELIVERY_PERMANENT] = "permanent",
    [DELIVERY_DEFERRED] = "deferred",
};

const struct target_ops *target_ops_find(const char *type)
{
    size_t i;

    if (type == NULL)
        return NULL;
    for (i = 0; i < sizeof(target_table) / sizeof(target_table[0]); i++) {
        if (strcmp(target_table[i]->type, type) == 0)
            return target_table[i];
    }
    return NULL;
}

const char *target_action_name(enum target_action a)
{
    if ((unsigned)a >= TARGET_ACTION__MAX)
        return "unknown";
    return target_action_names[a];
}

const char *delivery_outcome_name(enum delivery_outcome o)
{
    if ((unsigned)o >= DELIVERY__MAX)
        return "unknown";
    return delivery_outcome_names[o];
}

/* 2xx ok; no answer, 408, 429 and 5xx transient; all else (4xx, 1xx, 3xx, junk) permanent. */
enum delivery_outcome target_outcome_for_status(long status)
{
    if (status >= 200 && status <= 299)
        return DELIVERY_OK;
    if (status == 0 || status == 408 || status == 429 || (status >= 500 && status <= 599))
        return DELIVERY_TRANSIENT;
    return DELIVERY_PERMANENT;
}

void target_result_init(struct target_result *r)
{
    memset(r, 0, sizeof(*r));
    r->outcome = DELIVERY_PERMANENT;
    r->retry_after = -1;
}

void target_result_clear(struct target_result *r)
{
    if (r == NULL)
        return;
    json_decref(r->valuation);
    r->valuation = NULL;
}

/* Sets outcome and a printf-style reason in one step. */
static void target_set(struct target_result *r, enum delivery_outcome o, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void target_set(struct target_result *r, enum delivery_outcome o, const char *fmt, ...)
{
    va_list ap;

    r->outcome = o;
    va_start(ap, fmt);
    if (vsnprintf(r->reason, sizeof(r->reason), fmt, ap) < 0)
        r->reason[0] = '\0';
    va_end(ap);
}

/*
 * Builds, performs and classifies one delivery of lead to t (see target.h). *result is
 * initialised here (it must not hold a valuation from before) and always says what happened:
 * a build failure is permanent (transient when only memory ran out), a transport failure is
 * transient with http.c's plain reason ("timed out", "could not connect", "connected, but the API
 * closed the connection without answering", ...), an HTTP answer is classified
 * by the target. A webhook that names no lead gets our id (the submission id, or lead_id for an
 * update) so a reference can still be signed. For a transient outcome without the target's own
 * hint, retry_after comes from Retry-After or X-RateLimit-Reset. The call and reply are freed here.
 */
bool target_prepare(const struct target *t, enum target_action action, const json_t *lead,
                    const char *lead_id, const char *submission_id, struct http_call *call,
                    struct target_result *result)
{
    enum lb_err rc;

    memset(call, 0, sizeof(*call));
    target_result_init(result);
    if (t == NULL || t->ops == NULL) {
        target_set(result, DELIVERY_PERMANENT, "no such target");
        return false;
    }
    if ((unsigned)action >= TARGET_ACTION__MAX || !t->ops->supports(action)) {
        target_set(result, DELIVERY_PERMANENT, "a %s target cannot %s", t->ops->type,
                   target_action_name(action));
        return false;
    }
    rc = t->ops->build(t->state, action, lead, lead_id, submission_id, call);
    if (rc != LB_OK) {
        http_call_free(call);
        memset(call, 0, sizeof(*call));
        target_set(result, rc == LB_ERR_NOMEM ? DELIVERY_TRANSIENT : DELIVERY_PERMANENT,
                   "could not build the %s request: %s", t->ops->type, lb_strerror(rc));
        metrics_delivery(t->name, delivery_outcome_name(result->outcome));
        return false;
    }
    return true;
}

void target_conclude(const struct target *t, enum target_action action, const char *lead_id,
                     const char *submission_id, const struct http_reply *reply,
                     struct target_result *result)
{
    if (reply->transport != LB_OK) {
        result->http_status = reply->status;
        target_set(result, DELIVERY_TRANSIENT, "%s",
                   reply->transport_message[0] != '\0' ? reply->transport_message
                   : reply->transport == LB_ERR_TIMEOUT  ? "timed out"
                                                         : "the call failed");
        metrics_delivery(t->name, delivery_outcome_name(result->outcome));
        return;
    }
    t->ops->classify(t->state, action, reply, result);
    if (result->http_status == 0)
        result->http_status = reply->status;
    if (result->outcome != DELIVERY_OK && result->reason[0] == '\0') {
        if (reply->status / 100 == 1 || reply->status / 100 == 3)
            target_set(result, result->outcome, "unexpected status %ld", reply->status);
        else
            target_set(result, result->outcome, "HTTP %ld", reply->status);
    }
    /* A webhook receiver need not name the lead: our own id then stands for it. */
    if (result->outcome == DELIVERY_OK && result->lead_id[0] == '\0' &&
        t->ops == &target_webhook_ops) {
        const char *id = action == TARGET_UPDATE ? lead_id : submission_id;

        if (id != NULL && strlen(id) < sizeof(result->lead_id))
            memcpy(result->lead_id, id, strlen(id) + 1);
    }
    if (result->outcome == DELIVERY_TRANSIENT && result->retry_after < 0) {
        if (reply->retry_after >= 0) {
            result->retry_after = reply->retry_after;
        } else if (reply->rate_limit_reset >= 0) {
            long long wait = reply->rate_limit_reset - (long long)time(NULL);

            result->retry_after = wait > 0 ? wait : 0;
        }
    }
    metrics_delivery(t->name, delivery_outcome_name(result->outcome));
}

void target_deliver(const struct target *t, struct http_client *http, enum target_action action,
                    const json_t *lead, const char *lead_id, const char *submission_id,
                    struct target_result *result)
{
    struct http_call call;
    struct http_reply reply;

    if (!target_prepare(t, action, lead, lead_id, submission_id, &call, result))
        return;
    (void)http_perform(http, &call, &reply);
    target_conclude(t, action, lead_id, submission_id, &reply, result);
    http_call_free(&call);
    http_reply_free(&reply);
}

/* ---- looking a lead up before creating it again ---- */

/* Whether the string s names submission id: equal to it, or containing "leadbridge id: <id>". */
static bool target_names_submission(const char *s, const char *id)
{
    char tag[96];

    if (strcmp(s, id) == 0)
        return true;
    snprintf(tag, sizeof(tag), "leadbridge id: %s", id);
    return strstr(s, tag) != NULL;
}

/* Whether any string anywhere inside v names the submission (depth-capped). */
static bool target_mentions(const json_t *v, const char *id, int depth)
{
    const char *key;
    json_t *item;
    size_t i;

    if (depth > 16)
        return false;
    if (json_is_string(v))
        return target_names_submission(json_string_value(v), id);
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, item) {
            if (target_mentions(item, id, depth + 1))
                return true;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, item) {
            if (target_mentions(item, id, depth + 1))
                return true;
        }
    }
    return false;
}

/* Copies obj's "id" or "leadId" (integer, or a string of [A-Za-z0-9_-]) into out. */
static bool target_take_any_id(const json_t *obj, char *out, size_t size)
{
    static const char *const keys[] = {"leadId", "id", "lead_id"};

    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        const json_t *v = json_object_get(obj, keys[k]);
        int n = -1;

        if (json_is_integer(v)) {
            n = snprintf(out, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        } else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            size_t len = strlen(s), i;

            for (i = 0; i < len; i++)
                if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
                    break;
            if (len > 0 && i == len)
                n = snprintf(out, size, "%s", s);
        }
        if (n > 0 && (size_t)n < size)
            return true;
    }
    return false;
}

/* Searches v for the innermost object with an id that mentions the submission. */
static bool target_find_lead(const json_t *v, const char *id, char *out, size_t size, int depth)
{
    const char *key;
    json_t *item;
    size_t i;

    if (depth > 16)
        return false;
    if (json_is_array(v)) {
        json_array_foreach(v, i, item) {
            if (target_find_lead(item, id, out, size, depth + 1))
                return true;
        }
        return false;
    }
    if (!json_is_object(v))
        return false;
    json_object_foreach((json_t *)v, key, item) {
        if ((json_is_array(item) || json_is_object(item)) &&
            target_find_lead(item, id, out, size, depth + 1))
            return true;
    }
    return target_mentions(v, id, depth) && target_take_any_id(v, out, size);
}

bool target_lookup_match(const char *body, size_t len, const char *submission_id,
                         char *lead_id, size_t size)
{
    json_t *j;
    bool found;

    if (body == NULL || submission_id == NULL || submission_id[0] == '\0' || size == 0)
        return false;
    j = json_loadb(body, len, 0, NULL);
    if (j == NULL)
        return false;
    found = target_find_lead(j, submission_id, lead_id, size, 0);
    json_decref(j);
    return found;
}

/* Appends "name=<value percent-encoded>" to out at *o. */
static bool target_query_add(char *out, size_t size, size_t *o, const char *name, const char *v)
{
    static const char hex[] = "0123456789ABCDEF";
    int n = snprintf(out + *o, size - *o, "%s%s=", out[*o - 1] == '?' ? "" : "&", name);

    if (n < 0 || (size_t)n >= size - *o)
        return false;
    *o += (size_t)n;
    for (; *v != '\0'; v++) {
        unsigned char c = (unsigned char)*v;

        if (*o + 4 >= size)
            return false;
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out[(*o)++] = (char)c;
        } else {
            out[(*o)++] = '%';
            out[(*o)++] = hex[c >> 4];
            out[(*o)++] = hex[c & 15];
        }
    }
    out[*o] = '\0';
    return true;
}

enum lb_err target_lookup_url(struct http_call *call, const char *prefix, const json_t *lead)
{
    const char *email = target_text(lead, "email"), *phone = target_text(lead, "phone");
    size_t o;
    int n;

    if (email == NULL && phone == NULL)
        return LB_ERR_NOT_FOUND;
    n = snprintf(call->url, sizeof(call->url), "%s?", prefix);
    if (n < 0 || (size_t)n >= sizeof(call->url))
        return LB_ERR_INTERNAL;
    o = (size_t)n;
    if (email != NULL && !target_query_add(call->url, sizeof(call->url), &o, "email", email))
        return LB_ERR_INTERNAL;
    if (email == NULL && !target_query_add(call->url, sizeof(call->url), &o, "phone", phone))
        return LB_ERR_INTERNAL;
    call->method = "GET";
    return LB_OK;
}

/*
 * Asks t whether it has the lead submission_id made. Returns 1 (found: *result is DELIVERY_OK with
 * the lead id), 0 (not found, or the lead cannot be searched for: create it) or -1 (the search
 * failed: *result is transient).
 */
static int target_lookup(const struct target *t, struct http_client *http, const json_t *lead,
                         const char *submission_id, struct target_result *result)
{
    struct http_call call;
    struct http_reply reply;
    enum lb_err rc;
    int found = 0;

    memset(&call, 0, sizeof(call));
    memset(&reply, 0, sizeof(reply));
    reply.retry_after = -1;
    reply.rate_limit_reset = -1;
    rc = t->ops->build_lookup(t->state, lead, &call);
    if (rc == LB_ERR_NOT_FOUND)
        goto out;
    if (rc != LB_OK) {
        target_set(result, DELIVERY_TRANSIENT, "could not build the %s search: %s", t->ops->type,
                   lb_strerror(rc));
        result->still_unknown = true;
        found = -1;
        goto out;
    }
    rc = http_perform(http, &call, &reply);
    if (rc != LB_OK || (reply.status != 200 && reply.status != 404)) {
        result->http_status = reply.status;
        if (rc != LB_OK)
            target_set(result, DELIVERY_TRANSIENT,
                       "could not check whether the API has the lead already: %s",
                       reply.transport_message[0] != '\0' ? reply.transport_message
                                                           : "the call failed");
        else
            target_set(result, DELIVERY_TRANSIENT,
                       "could not check whether the API has the lead already: HTTP %ld",
                       reply.status);
        result->retry_after = reply.retry_after;
        result->still_unknown = true;
        found = -1;
        goto out;
    }
    if (reply.status == 200 && target_lookup_match(reply.body, reply.body_len, submission_id,
                                                   result->lead_id, sizeof(result->lead_id))) {
        result->outcome = DELIVERY_OK;
        result->http_status = reply.status;
        snprintf(result->reason, sizeof(result->reason),
                 "the API had the lead already (found by our id after an interrupted attempt)");
        found = 1;
    }
out:
    http_call_free(&call);
    http_reply_free(&reply);
    return found;
}

void target_deliver_checked(const struct target *t, struct http_client *http,
                            enum target_action action, const json_t *lead, const char *lead_id,
                            const char *submission_id, bool check_existing,
                            struct target_result *result)
{
    if (check_existing && t != NULL && t->ops != NULL && t->ops->build_lookup != NULL &&
        action != TARGET_UPDATE) {
        int found;

        target_result_init(result);
        found = target_lookup(t, http, lead, submission_id, result);
        if (found != 0) {
            metrics_delivery(t->name, delivery_outcome_name(result->outcome));
            return;
        }
    }
    target_deliver(t, http, action, lead, lead_id, submission_id, result);
}

/* Length of a UTF-8 sequence starting with byte c (1 for stray bytes). */
static size_t utf8_sequence_length(unsigned char c)
{
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    if (c >= 0xE0)
        return c <= 0xEF ? 3 : 1;
    if (c >= 0xC2)
        return 2;
    return 1;
}

void target_clean_text(char *out, size_t size, const char *text, size_t cap)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t o = 0, i = 0, n;
    bool gap = false;

    if (size == 0)
        return;
    if (cap > size - 1)
        cap = size - 1;
    while (s[i] != '\0') {
        if (s[i] < 0x20 || s[i] == 0x7F || (s[i] == 0xC2 && s[i + 1] >= 0x80 && s[i + 1] <= 0x9F)) {
            i += s[i] == 0xC2 ? 2 : 1;
            gap = o > 0;
            continue;
        }
        n = utf8_sequence_length(s[i]);
        if (strnlen((const char *)s + i, n) < n)
            break;
        if (gap) {
            if (o + 1 > cap)
                break;
            out[o++] = ' ';
            gap = false;
        }
        if (o + n > cap)
            break;
        memcpy(out + o, s + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
}

const char *target_text(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    const char *s;

    if (!json_is_string(v))
        return NULL;
    s = json_string_value(v);
    return s[0] != '\0' ? s : NULL;
}

bool target_present(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);

    return v != NULL && !json_is_null(v);
}

int target_add_error(json_t *errors, const char *field, const char *reason)
{
    if (json_object_get(errors, field) != NULL)
        return 0;
    return json_object_set_new(errors, field, json_string(reason)) == 0 ? 1 : 0;
}

/* ---- Config shared by the API targets ---- */

/* Whether s is an http(s) URL we can append paths to: a host; no spaces, query or fragment. */
static bool target_base_url_ok(const char *s)
{
    const char *host;
    const char *p;

    if (strncasecmp(s, "https://", 8) == 0)
        host = s + 8;
    else if (strncasecmp(s, "http://", 7) == 0)
        host = s + 7;
    else
        return false;
    if (*host == '\0' || *host == '/')
        return false;
    for (p = s; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '?' || *p == '#')
            return false;
    return true;
}

/* Reads "base_url" into out without trailing slashes (see target_api_conf_read). */
static void target_conf_base_url(const json_t *conf, const char *path, const char *default_base,
                                 struct target_api_conf *out, struct diag *d)
{
    const char *s = conf_string(conf, "base_url", path, default_base, false, d);
    char p[TARGET_PATH_SIZE];
    size_t len;

    if (s == NULL)
        return;
    len = strlen(s);
    while (len > 0 && s[len - 1] == '/')
        len--;
    if (!target_base_url_ok(s) || len > TARGET_BASE_URL_MAX) {
        conf_path(p, sizeof(p), path, "base_url");
        diag_add(d, p, "must be an http:// or https:// URL with a host, printable ASCII without "
                       "spaces, query or fragment, at most %d bytes, such as %s",
                 TARGET_BASE_URL_MAX, default_base);
        return;
    }
    memcpy(out->base_url, s, len);
    out->base_url[len] = '\0';
}

/* Whether a credential can travel in a header: printable ASCII, no spaces, not too long. */
static bool target_credential_ok(const char *s)
{
    size_t n;

    for (n = 0; s[n] != '\0'; n++)
        if ((unsigned char)s[n] <= 0x20 || (unsigned char)s[n] >= 0x7f)
            return false;
    return n >= 1 && n <= TARGET_CREDENTIAL_MAX;
}

/* Reads the credential at key into *out (a new copy), reporting a missing or unusable one. */
static void target_conf_credential(const json_t *conf, const char *key, const char *path,
                                   char **out, struct diag *d)
{
    const char *s = conf_string(conf, key, path, NULL, true, d);
    char p[TARGET_PATH_SIZE];

    if (s == NULL || s[0] == '\0')
        return;
    conf_path(p, sizeof(p), path, key);
    if (!target_credential_ok(s)) {
        diag_add(d, p, "must be 1 to %d bytes of printable ASCII, without spaces or control "
                       "characters", TARGET_CREDENTIAL_MAX);
        return;
    }
    *out = strdup(s);
    if (*out == NULL)
        diag_add(d, p, "out of memory");
}

/* Whether any key of mode is in conf. */
static bool target_auth_given(const json_t *conf, const struct target_auth *mode)
{
    int k;

    for (k = 0; k < TARGET_AUTH_KEYS && mode->keys[k] != NULL; k++)
        if (json_object_get(conf, mode->keys[k]) != NULL)
            return true;
    return false;
}

/* Whether key is one of mode's keys. */
static bool target_auth_has_key(const struct target_auth *mode, const char *key)
{
    int k;

    for (k = 0; k < TARGET_AUTH_KEYS && mode->keys[k] != NULL; k++)
        if (strcmp(mode->keys[k], key) == 0)
            return true;
    return false;
}

/*
 * Describes the modes for a message: with keys, '"source_key" (source_id and source_key) or
 * "bearer" (token)'; without, '"source_key" or "bearer"'.
 */
static void target_auth_describe(char *out, size_t size, const struct target_auth *modes,
                                 int n_modes, bool with_keys)
{
    size_t used = 0;
    int i, k, n;

    out[0] = '\0';
    for (i = 0; i < n_modes; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n_modes ? " or " : ", ";

        n = snprintf(out + used, size - used, "%s\"%s\"", sep, modes[i].name);
        if (n < 0 || (size_t)n >= size - used)
            return;
        used += (size_t)n;
        for (k = 0; with_keys && k < TARGET_AUTH_KEYS && modes[i].keys[k] != NULL; k++) {
            n = snprintf(out + used, size - used, "%s%s%s", k == 0 ? " (" : " and ",
                         modes[i].keys[k],
                         k + 1 == TARGET_AUTH_KEYS || modes[i].keys[k + 1] == NULL ? ")" : "");
            if (n < 0 || (size_t)n >= size - used)
                return;
            used += (size_t)n;
        }
    }
}

/* Chooses the auth mode (see target_api_conf_read): its index, or -1 after reporting. */
static int target_conf_auth_mode(const json_t *conf, const char *path,
                                 const struct target_auth *modes, int n_modes, struct diag *d)
{
    const char *auth;
    char p[TARGET_PATH_SIZE], names[256];
    int i, given = -1;

    if (n_modes == 1)
        return 0;
    conf_path(p, sizeof(p), path, "auth");
    auth = conf_string(conf, "auth", path, NULL, false, d);
    if (auth == NULL) {
        if (json_object_get(conf, "auth") != NULL)
            return -1; /* not a string: reported */
        for (i = 0; i < n_modes; i++) {
            if (!target_auth_given(conf, &modes[i]))
                continue;
            given = given < 0 ? i : n_modes;
        }
        if (given >= 0 && given < n_modes)
            return given;
        target_auth_describe(names, sizeof(names), modes, n_modes, true);
        diag_add(d, p, "is required: %s", names);
        return -1;
    }
    for (i = 0; i < n_modes; i++)
        if (strcmp(modes[i].name, auth) == 0)
            return i;
    target_auth_describe(names, sizeof(names), modes, n_modes, false);
    diag_add(d, p, "must be %s", names);
    return -1;
}

void target_api_conf_read(const json_t *conf, const char *path, const char *default_base,
                          const struct target_auth *modes, int n_modes,
                          struct target_api_conf *out, struct diag *d)
{
    char p[TARGET_PATH_SIZE];
    long long connect_s, total_s;
    int i, k;

    memset(out, 0, sizeof(*out));
    out->auth = -1;
    target_conf_base_url(conf, path, default_base, out, d);

    out->auth = target_conf_auth_mode(conf, path, modes, n_modes, d);
    if (out->auth >= 0) {
        const struct target_auth *chosen = &modes[out->auth];

        for (i = 0; i < n_modes; i++) {
            for (k = 0; i != out->auth && k < TARGET_AUTH_KEYS && modes[i].keys[k] != NULL; k++) {
                if (json_object_get(conf, modes[i].keys[k]) == NULL ||
                    target_auth_has_key(chosen, modes[i].keys[k]))
                    continue;
                conf_path(p, sizeof(p), path, modes[i].keys[k]);
                diag_add(d, p, "is not used with auth \"%s\"", chosen->name);
            }
        }
        for (k = 0; k < TARGET_AUTH_KEYS && chosen->keys[k] != NULL; k++)
            target_conf_credential(conf, chosen->keys[k], path, &out->credentials[k], d);
    }

    connect_s = conf_integer(conf, "connect_timeout", path, 3, 1, 300, d);
    total_s = conf_integer(conf, "timeout", path, 15, 1, 600, d);
    if (connect_s > total_s) {
        conf_path(p, sizeof(p), path, "connect_timeout");
        diag_add(d, p, "must not be longer than timeout (%lld seconds)", total_s);
    }
    out->connect_timeout_ms = (long)connect_s * 1000;
    out->timeout_ms = (long)total_s * 1000;
}

void target_api_conf_free(struct target_api_conf *c)
{
    int k;

    if (c == NULL)
        return;
    for (k = 0; k < TARGET_AUTH_KEYS; k++)
        free(c->credentials[k]);
    memset(c, 0, sizeof(*c));
    c->auth = -1;
}
