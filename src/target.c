/*
 * target.c: the shared half of the target interface (see target.h).
 *
 * The table of target types, names for actions and outcomes, the status → outcome map every
 * classify uses, and target_deliver(): build, perform, classify, with transport failures and
 * rate-limit hints folded into one struct target_result. This is the only place a target's call
 * meets the network.
 */
#include "target.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

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
void target_deliver(const struct target *t, struct http_client *http, enum target_action action,
                    const json_t *lead, const char *lead_id, const char *submission_id,
                    struct target_result *result)
{
    struct http_call call;
    struct http_reply reply;
    enum lb_err rc;

    memset(&call, 0, sizeof(call));
    memset(&reply, 0, sizeof(reply));
    reply.retry_after = -1;
    reply.rate_limit_reset = -1;
    target_result_init(result);

    if (t == NULL || t->ops == NULL) {
        target_set(result, DELIVERY_PERMANENT, "no such target");
        goto out;
    }
    if ((unsigned)action >= TARGET_ACTION__MAX || !t->ops->supports(action)) {
        target_set(result, DELIVERY_PERMANENT, "a %s target cannot %s", t->ops->type,
                   target_action_name(action));
        goto out;
    }
    rc = t->ops->build(t->state, action, lead, lead_id, submission_id, &call);
    if (rc != LB_OK) {
        target_set(result, rc == LB_ERR_NOMEM ? DELIVERY_TRANSIENT : DELIVERY_PERMANENT,
                   "could not build the %s request: %s", t->ops->type, lb_strerror(rc));
        goto out;
    }
    rc = http_perform(http, &call, &reply);
    if (rc != LB_OK) {
        result->http_status = reply.status;
        target_set(result, DELIVERY_TRANSIENT, "%s",
                   reply.transport_message[0] != '\0' ? reply.transport_message
                   : rc == LB_ERR_TIMEOUT                ? "timed out"
                                                         : "the call failed");
        goto out;
    }
    t->ops->classify(t->state, action, &reply, result);
    if (result->http_status == 0)
        result->http_status = reply.status;
    if (result->outcome != DELIVERY_OK && result->reason[0] == '\0') {
        if (reply.status / 100 == 1 || reply.status / 100 == 3)
            target_set(result, result->outcome, "unexpected status %ld", reply.status);
        else
            target_set(result, result->outcome, "HTTP %ld", reply.status);
    }
    /* A webhook receiver need not name the lead: our own id then stands for it. */
    if (result->outcome == DELIVERY_OK && result->lead_id[0] == '\0' &&
        t->ops == &target_webhook_ops) {
        const char *id = action == TARGET_UPDATE ? lead_id : submission_id;

        if (id != NULL && strlen(id) < sizeof(result->lead_id))
            memcpy(result->lead_id, id, strlen(id) + 1);
    }
    if (result->outcome == DELIVERY_TRANSIENT && result->retry_after < 0) {
        if (reply.retry_after >= 0) {
            result->retry_after = reply.retry_after;
        } else if (reply.rate_limit_reset >= 0) {
            long long wait = reply.rate_limit_reset - (long long)time(NULL);

            result->retry_after = wait > 0 ? wait : 0;
        }
    }

out:
    metrics_delivery(t->name, delivery_outcome_name(result->outcome));
    http_call_free(&call);
    http_reply_free(&reply);
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
