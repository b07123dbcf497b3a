/*
 * target_leadping.c: the Leadping lead API (POST /leads/intake), behind struct target_ops.
 *
 * Leadping takes one flat camelCase object per lead, authenticated either by a source id and key
 * (X-Leadping-Source-Id / X-Leadping-Source-Key) or by a bearer source token. Only creation exists.
 * Absent canonical fields are left out (never sent as null). The submission id travels as
 * externalId so a retried post is recognisable on Leadping's side. Prices are sent as JSON numbers
 * (the newest schema) or, with "price_format": "string", as decimal strings (the older documented
 * pattern). Answers: 2xx with an "id" (string or integer) on success; errors are RFC 9457 problem
 * documents whose detail (else title) becomes the reason.
 */
#include "target.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "conf.h"

#define LEADPING_DEFAULT_BASE "https://api.leadping.ai"
#define LEADPING_REASON_CAP 300
#define LEADPING_MAX_BODY (1024 * 1024)

enum leadping_auth { LEADPING_AUTH_SOURCE_KEY = 0, LEADPING_AUTH_BEARER, LEADPING_AUTH__MAX };
enum leadping_price { LEADPING_PRICE_NUMBER = 0, LEADPING_PRICE_STRING, LEADPING_PRICE__MAX };

/* Each auth and the keys of its credentials, in the order of api.credentials. */
static const struct target_auth leadping_auths[LEADPING_AUTH__MAX] = {
    [LEADPING_AUTH_SOURCE_KEY] = {"source_key", {"source_id", "source_key"}},
    [LEADPING_AUTH_BEARER] = {"bearer", {"token", NULL}},
};

static const char *const leadping_price_names[LEADPING_PRICE__MAX] = {
    [LEADPING_PRICE_NUMBER] = "number",
    [LEADPING_PRICE_STRING] = "string",
};

struct leadping {
    struct target_api_conf api; /* credentials: source_id and source_key, or token */
    char *sub_id;               /* owned; NULL for none */
    enum leadping_price price_format;
};

/* Canonical string field → Leadping's flat field of the same value. */
struct leadping_field {
    const char *canonical;
    const char *leadping;
};

static const struct leadping_field leadping_fields[] = {
    {"first_name", "firstName"},
    {"last_name", "lastName"},
    {"email", "email"},
    {"phone", "phone"},
    {"address", "address1"},
    {"address2", "address2"},
    {"city", "city"},
    {"state", "state"},
    {"postcode", "zip"},
    {"postcode", "postalCode"},
    {"date_of_birth", "dateOfBirth"},
    {"utm_source", "utmSource"},
    {"utm_medium", "utmMedium"},
    {"utm_campaign", "utmCampaign"},
    {"utm_term", "utmTerm"},
    {"utm_content", "utmContent"},
    {"referrer", "referrer"},
    {"landing_page", "landingPage"},
    {"trusted_form_url", "trustedFormUrl"},
};

/* Canonical string fields carried in sourceMetadata under their own names. */
static const char *const leadping_metadata_fields[] = {
    "host",   "gclid",  "gbraid",    "wbraid", "dclid",       "fbclid", "msclkid",
    "ttclid", "li_fat_id", "twclid", "utm_id", "first_touch", "type",   "message",
};

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

/* --- small helpers ---------------------------------------------------------------------------- */


/*
 * Writes the printf-style reason into result->reason. Every text put in is capped well below the
 * reason's size, so nothing is cut; an encoding error leaves the reason empty.
 */
static void leadping_reason(struct target_result *result, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void leadping_reason(struct target_result *result, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(result->reason, sizeof(result->reason), fmt, ap);
    va_end(ap);
    if (n < 0)
        result->reason[0] = '\0';
}

/* True for YYYY-MM-DD naming a real calendar day. */
static bool leadping_date_valid(const char *s)
{
    static const int days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, m, d, i;

    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return false;
    for (i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !isdigit((unsigned char)s[i]))
            return false;
    y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    m = (s[5] - '0') * 10 + (s[6] - '0');
    d = (s[8] - '0') * 10 + (s[9] - '0');
    if (y < 1 || m < 1 || m > 12 || d < 1 || d > days[m - 1])
        return false;
    if (m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return false;
    return true;
}

/*
 * A plain check of an e-mail address: one '@', a local part of 1..64 bytes and a dotted domain,
 * no spaces or control characters, no empty dot-separated labels, at most 254 bytes.
 */
static bool leadping_email_valid(const char *s)
{
    const char *at = strrchr(s, '@');
    const char *p;
    size_t len = strlen(s);

    if (at == NULL || len > 254 || at == s || (size_t)(at - s) > 64 || strchr(s, '@') != at)
        return false;
    for (p = s; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7F)
            return false;
    if (s[0] == '.' || at[-1] == '.' || strstr(s, "..") != NULL)
        return false;
    p = at + 1;
    if (*p == '\0' || *p == '.' || *p == '-' || strchr(p, '.') == NULL)
        return false;
    return s[len - 1] != '.' && s[len - 1] != '-';
}

/* True for Leadping's decimal pattern ^-?(?:0|[1-9]\d*)(?:\.\d+)?$ (at most 32 bytes). */
static bool leadping_decimal_valid(const char *s)
{
    const char *p = s;

    if (strlen(s) > 32)
        return false;
    if (*p == '-')
        p++;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (isdigit((unsigned char)*p))
            p++;
    } else {
        return false;
    }
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == '\0';
}

/* True when v is a price Leadping takes: a finite JSON number or a decimal string. */
static bool leadping_price_valid(const json_t *v)
{
    if (json_is_integer(v))
        return true;
    if (json_is_real(v))
        return isfinite(json_real_value(v));
    if (json_is_string(v))
        return leadping_decimal_valid(json_string_value(v));
    return false;
}

/*
 * Converts a valid price (see leadping_price_valid) to what we send: a JSON number or a decimal
 * string, by fmt. Returns a new reference, or NULL when out of memory or not convertible.
 */
static json_t *leadping_price_value(const json_t *v, enum leadping_price fmt)
{
    char text[64];
    int n;

    if (fmt == LEADPING_PRICE_NUMBER) {
        if (json_is_string(v)) {
            const char *s = json_string_value(v);
            char *end;
            long long i;
            double d;

            if (strchr(s, '.') == NULL) {
                errno = 0;
                i = strtoll(s, &end, 10);
                if (errno == 0 && *end == '\0')
                    return json_integer(i);
            }
            d = strtod(s, &end);
            return *end == '\0' && isfinite(d) ? json_real(d) : NULL;
        }
        return json_deep_copy(v);
    }
    if (json_is_string(v))
        return json_string(json_string_value(v));
    if (json_is_integer(v)) {
        n = snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else {
        /* The shortest of %.15g and %.17g that reads back to the same double. */
        n = snprintf(text, sizeof(text), "%.15g", json_real_value(v));
        if (n > 0 && (size_t)n < sizeof(text) && strtod(text, NULL) != json_real_value(v))
            n = snprintf(text, sizeof(text), "%.17g", json_real_value(v));
    }
    if (n < 0 || (size_t)n >= sizeof(text) || !leadping_decimal_valid(text))
        return NULL;
    return json_string(text);
}

/* --- configure -------------------------------------------------------------------------------- */

static void leadping_free(void *state)
{
    struct leadping *lp = state;

    if (lp == NULL)
        return;
    target_api_conf_free(&lp->api);
    free(lp->sub_id);
    free(lp);
}

/* True when s holds a byte that may not go into an HTTP header value. */
static bool leadping_bad_header_text(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            return true;
    return false;
}

/* Index of name in names[n], or -1. */
static int leadping_lookup(const char *const *names, int n, const char *name)
{
    int i;

    for (i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

/*
 * Reads a "leadping" target's config object (borrowed) at path. "auth" may be left out when only
 * one auth's keys are given. Returns new state (free with leadping_free) or NULL with d set.
 */
static void *leadping_configure(const json_t *conf, const char *path, struct diag *d)
{
    static const char *const allowed[] = {
        "type", "base_url", "auth", "source_id", "source_key", "token", "connect_timeout",
        "timeout", "sub_id", "price_format", NULL,
    };
    struct leadping *lp = NULL;
    size_t before = d->count;
    const char *s;
    char sub[512];
    int i;

    if (!json_is_object(conf)) {
        diag_add(d, path, "must be an object");
        return NULL;
    }
    lp = calloc(1, sizeof(*lp));
    if (lp == NULL) {
        diag_add(d, path, "out of memory");
        return NULL;
    }
    conf_check_keys(conf, path, allowed, d);

    target_api_conf_read(conf, path, LEADPING_DEFAULT_BASE, leadping_auths, LEADPING_AUTH__MAX,
                         &lp->api, d);

    s = conf_string(conf, "price_format", path, "number", false, d);
    if (s != NULL) {
        i = leadping_lookup(leadping_price_names, LEADPING_PRICE__MAX, s);
        conf_path(sub, sizeof(sub), path, "price_format");
        if (i < 0)
            diag_add(d, sub, "must be \"number\" or \"string\"");
        else
            lp->price_format = (enum leadping_price)i;
    }

    s = conf_string(conf, "sub_id", path, NULL, false, d);
    if (s != NULL && s[0] != '\0') {
        lp->sub_id = strdup(s);
        if (lp->sub_id == NULL)
            diag_add(d, path, "out of memory");
    }

    if (d->count != before) {
        leadping_free(lp);
        return NULL;
    }
    return lp;
}

static bool leadping_supports(enum target_action action)
{
    return action == TARGET_CREATE;
}

/* --- validate --------------------------------------------------------------------------------- */

/*
 * Checks lead by Leadping's rules: a way to reach the person (email or phone), a plausible
 * e-mail address, a YYYY-MM-DD date of birth, numeric prices, and text where text is sent.
 * Adds {"field": "reason"} to errors; returns how many were added.
 */
static int leadping_validate(const void *state, enum target_action action, const json_t *lead,
                             json_t *errors)
{
    const json_t *nested = json_object_get(lead, "leadping");
    const json_t *v;
    const char *s;
    int added = 0;
    size_t i;

    (void)state;
    if (!leadping_supports(action))
        return target_add_error(errors, "action", "Leadping can only create leads");
    if (!json_is_object(lead))
        return target_add_error(errors, "lead", "must be an object");
    for (i = 0; i < N_ELEMENTS(leadping_fields); i++) {
        v = json_object_get(lead, leadping_fields[i].canonical);
        if (v != NULL && !json_is_null(v) && !json_is_string(v))
            added += target_add_error(errors, leadping_fields[i].canonical, "must be text");
    }
    if (target_text(lead, "email") == NULL && target_text(lead, "phone") == NULL)
        added += target_add_error(errors, "email", "an email address or a phone number is required");
    s = target_text(lead, "email");
    if (s != NULL && !leadping_email_valid(s))
        added += target_add_error(errors, "email", "is not a valid email address");
    s = target_text(lead, "date_of_birth");
    if (s != NULL && !leadping_date_valid(s))
        added += target_add_error(errors, "date_of_birth", "must be a date as YYYY-MM-DD");
    if (target_present(lead, "price") && !leadping_price_valid(json_object_get(lead, "price")))
        added += target_add_error(errors, "price", "must be a number");
    if (nested != NULL && !json_is_null(nested) && !json_is_object(nested)) {
        added += target_add_error(errors, "leadping", "must be an object");
    } else if (nested != NULL) {
        if (target_present(nested, "directPostPrice") &&
            !leadping_price_valid(json_object_get(nested, "directPostPrice")))
            added += target_add_error(errors, "leadping.directPostPrice", "must be a number");
        if (target_present(nested, "subId") && !json_is_string(json_object_get(nested, "subId")))
            added += target_add_error(errors, "leadping.subId", "must be text");
    }
    return added;
}

/* --- build ------------------------------------------------------------------------------------ */

/* Adds key: a new string of value to obj. LB_ERR_NOMEM on failure. */
static enum lb_err leadping_set_text(json_t *obj, const char *key, const char *value)
{
    return json_object_set_new(obj, key, json_string(value)) == 0 ? LB_OK : LB_ERR_NOMEM;
}

/* Builds sourceMetadata (non-empty strings only) into payload, when there is anything to carry. */
static enum lb_err leadping_build_metadata(const json_t *lead, json_t *payload)
{
    json_t *meta = json_object();
    const json_t *lead_meta = json_object_get(lead, "meta");
    const char *key, *s;
    const json_t *v;
    char name[512];
    enum lb_err e = LB_OK;
    size_t i;
    int n;

    if (meta == NULL)
        return LB_ERR_NOMEM;
    for (i = 0; i < N_ELEMENTS(leadping_metadata_fields) && e == LB_OK; i++) {
        s = target_text(lead, leadping_metadata_fields[i]);
        if (s != NULL)
            e = leadping_set_text(meta, leadping_metadata_fields[i], s);
    }
    if (json_is_object(lead_meta)) {
        json_object_foreach((json_t *)lead_meta, key, v) {
            if (e != LB_OK)
                break;
            if (!json_is_string(v) || json_string_length(v) == 0)
                continue;
            n = snprintf(name, sizeof(name), "meta.%s", key);
            if (n < 0 || (size_t)n >= sizeof(name))
                continue;
            e = leadping_set_text(meta, name, json_string_value(v));
        }
    }
    if (e == LB_OK && json_object_size(meta) > 0)
        e = json_object_set(payload, "sourceMetadata", meta) == 0 ? LB_OK : LB_ERR_NOMEM;
    json_decref(meta);
    return e;
}

/* Sets key to the converted price v (see leadping_price_value) when v is a valid price. */
static enum lb_err leadping_set_price(json_t *payload, const char *key, const json_t *v,
                                      enum leadping_price fmt)
{
    json_t *out;

    if (v == NULL || json_is_null(v))
        return LB_OK;
    if (!leadping_price_valid(v))
        return LB_ERR_INVALID_FIELDS;
    out = leadping_price_value(v, fmt);
    if (out == NULL)
        return LB_ERR_INVALID_FIELDS;
    return json_object_set_new(payload, key, out) == 0 ? LB_OK : LB_ERR_NOMEM;
}

/*
 * The intake payload for lead (a new object in *out). submission_id may be NULL (then no
 * externalId). LB_ERR_INVALID_FIELDS when a price cannot be sent.
 */
static enum lb_err leadping_payload(const struct leadping *lp, const json_t *lead,
                                    const char *submission_id, json_t **out)
{
    const json_t *nested = json_object_get(lead, "leadping");
    json_t *payload = json_object();
    enum lb_err e = LB_OK;
    const char *s;
    size_t i;

    *out = NULL;
    if (payload == NULL)
        return LB_ERR_NOMEM;
    for (i = 0; i < N_ELEMENTS(leadping_fields) && e == LB_OK; i++) {
        s = target_text(lead, leadping_fields[i].canonical);
        if (s != NULL)
            e = leadping_set_text(payload, leadping_fields[i].leadping, s);
    }
    if (e == LB_OK && submission_id != NULL && submission_id[0] != '\0')
        e = leadping_set_text(payload, "externalId", submission_id);
    s = json_is_object(nested) ? target_text(nested, "subId") : NULL;
    if (s == NULL)
        s = lp->sub_id;
    if (e == LB_OK && s != NULL)
        e = leadping_set_text(payload, "subId", s);
    if (e == LB_OK)
        e = leadping_set_price(payload, "price", json_object_get(lead, "price"), lp->price_format);
    if (e == LB_OK && json_is_object(nested))
        e = leadping_set_price(payload, "directPostPrice",
                               json_object_get(nested, "directPostPrice"), lp->price_format);
    if (e == LB_OK)
        e = leadping_build_metadata(lead, payload);
    if (e != LB_OK) {
        json_decref(payload);
        return e;
    }
    *out = payload;
    return LB_OK;
}

/*
 * Builds POST {base}/leads/intake for lead into *call (cleared first; on failure it is left
 * empty). lead_id is unused. Returns LB_ERR_BAD_REQUEST for an action Leadping lacks and
 * LB_ERR_INVALID_FIELDS for a lead that leadping_validate refuses.
 */
static enum lb_err leadping_build(const void *state, enum target_action action, const json_t *lead,
                                  const char *lead_id, const char *submission_id,
                                  struct http_call *call)
{
    const struct leadping *lp = state;
    json_t *payload = NULL, *errors = NULL;
    char auth[1024];
    enum lb_err e;
    int n;

    (void)lead_id;
    memset(call, 0, sizeof(*call));
    if (!leadping_supports(action) || !json_is_object(lead))
        return LB_ERR_BAD_REQUEST;
    errors = json_object();
    if (errors == NULL)
        return LB_ERR_NOMEM;
    if (leadping_validate(lp, action, lead, errors) > 0 || json_object_size(errors) > 0) {
        e = LB_ERR_INVALID_FIELDS;
        goto out;
    }
    e = leadping_payload(lp, lead, submission_id, &payload);
    if (e != LB_OK)
        goto out;
    call->method = "POST";
    call->connect_timeout_ms = lp->api.connect_timeout_ms;
    call->timeout_ms = lp->api.timeout_ms;
    n = snprintf(call->url, sizeof(call->url), "%s/leads/intake", lp->api.base_url);
    if (n < 0 || (size_t)n >= sizeof(call->url)) {
        e = LB_ERR_INTERNAL;
        goto out;
    }
    e = http_call_add_header(call, "Content-Type", "application/json");
    if (e == LB_OK)
        e = http_call_add_header(call, "Accept", "application/json, application/problem+json");
    if (e == LB_OK && lp->api.auth == LEADPING_AUTH_SOURCE_KEY) {
        e = http_call_add_header(call, "X-Leadping-Source-Id", lp->api.credentials[0]);
        if (e == LB_OK)
            e = http_call_add_header(call, "X-Leadping-Source-Key", lp->api.credentials[1]);
    } else if (e == LB_OK) {
        n = snprintf(auth, sizeof(auth), "Bearer %s", lp->api.credentials[0]);
        e = n < 0 || (size_t)n >= sizeof(auth) ? LB_ERR_INTERNAL
                                               : http_call_add_header(call, "Authorization", auth);
    }
    if (e != LB_OK)
        goto out;
    e = http_call_set_json(call, payload, JSON_COMPACT | JSON_REAL_PRECISION(15), LEADPING_MAX_BODY);
out:
    if (e != LB_OK) {
        http_call_free(call);
        memset(call, 0, sizeof(*call));
    }
    json_decref(payload);
    json_decref(errors);
    return e;
}

/* --- classify --------------------------------------------------------------------------------- */

/*
 * Sets result->lead_id from the "id" of a 2xx body (a string, or an integer written as text).
 * Returns false when there is no usable id.
 */
static bool leadping_take_id(const json_t *body, struct target_result *result)
{
    const json_t *id = json_object_get(body, "id");
    int n;

    if (json_is_string(id)) {
        const char *s = json_string_value(id);

        if (s[0] == '\0' || strlen(s) >= sizeof(result->lead_id) || leadping_bad_header_text(s))
            return false;
        memcpy(result->lead_id, s, strlen(s) + 1);
        return true;
    }
    if (json_is_integer(id)) {
        n = snprintf(result->lead_id, sizeof(result->lead_id), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(id));
        return n > 0 && (size_t)n < sizeof(result->lead_id);
    }
    return false;
}

/*
 * Classifies Leadping's answer: 2xx is taken (with the lead id when the body has one); otherwise
 * the problem document's detail (else title) becomes the reason and the status the outcome, with
 * 401/403 marked as refused credentials.
 */
static void leadping_classify(const void *state, enum target_action action,
                              const struct http_reply *reply, struct target_result *result)
{
    json_t *body = NULL;
    const char *text = NULL;
    char clean[LEADPING_REASON_CAP + 1];

    (void)state;
    (void)action;
    result->http_status = reply->status;
    result->lead_id[0] = '\0';
    if (reply->status == 0) {
        result->outcome = DELIVERY_TRANSIENT;
        target_clean_text(clean, sizeof(clean), reply->transport_message, LEADPING_REASON_CAP);
        leadping_reason(result, "Leadping unreachable: %s", clean);
        return;
    }
    if (reply->body != NULL)
        body = json_loadb(reply->body, reply->body_len, 0, NULL);
    if (reply->status >= 200 && reply->status <= 299) {
        result->outcome = DELIVERY_OK;
        if (!leadping_take_id(body, result)) {
            result->lead_id[0] = '\0';
            leadping_reason(result, "Leadping took the lead (HTTP %ld) but its answer held no "
                                    "usable id", reply->status);
        }
        goto out;
    }
    result->outcome = target_outcome_for_status(reply->status);
    if (json_is_object(body)) {
        text = target_text(body, "detail");
        if (text == NULL)
            text = target_text(body, "title");
    }
    if (text != NULL)
        target_clean_text(clean, sizeof(clean), text, LEADPING_REASON_CAP);
    if (reply->status == 401 || reply->status == 403) {
        result->outcome = DELIVERY_PERMANENT;
        if (text != NULL)
            leadping_reason(result, "credentials refused by Leadping: %s", clean);
        else
            leadping_reason(result, "credentials refused by Leadping (HTTP %ld)", reply->status);
        goto out;
    }
    if (reply->status == 400)
        result->outcome = DELIVERY_PERMANENT;
    else if (reply->status == 429)
        result->outcome = DELIVERY_TRANSIENT;
    if (text != NULL)
        leadping_reason(result, "%s", clean);
    else
        leadping_reason(result, "Leadping answered HTTP %ld", reply->status);
out:
    json_decref(body);
}

const struct target_ops target_leadping_ops = {
    .type = "leadping",
    .configure = leadping_configure,
    .free = leadping_free,
    .supports = leadping_supports,
    .validate = leadping_validate,
    .build = leadping_build,
    .classify = leadping_classify,
};
