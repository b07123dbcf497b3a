/*
 * target_leadpro.c: the LeadPro Lead API (v103) behind struct target_ops.
 *
 * Three actions: create (POST {base}/leads), instant valuation (POST {base}/leads/valuation) and
 * update (PATCH {base}/leads/<id>), authenticated with the header X-API-KEY. validate() applies the
 * documented field rules before anything is sent; build() sends only the documented fields of the
 * action, taken from the canonical lead (a value under the lead's "leadpro" object wins over the
 * top-level one); classify() reads the lead id (64-bit safe: never through a double) and the
 * valuation estimate. No I/O here.
 *
 * Sizes: "max JSON byte size" is measured the way the API's PHP would (json_encode defaults:
 * compact, "/" escaped, non-ASCII as \uXXXX), which is never smaller than our own compact form.
 * Lengths of text are counted in UTF-8 characters.
 */
#include "target.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "conf.h"
#include "diag.h"
#include "log.h"

#define LP_DEFAULT_BASE "https://api.lead.pro/api/v103"
#define LP_META_MAX 1024
#define LP_AVAILABILITY_MAX 1024
#define LP_QUESTIONNAIRE_MAX 2048
#define LP_REASON_MAX 300    /* bytes of the API's own words kept in a reason */
#define LP_REASON_WINDOW 4096
#define LP_STATUS_MAX 64
#define LP_PATH_SIZE 512
#define LP_MAX_BEDROOMS 1000

/* The one way LeadPro authenticates: the key sent as X-API-KEY (api.credentials[0]). */
static const struct target_auth lp_auth = {"api_key", {"api_key", NULL}};

struct leadpro {
    struct target_api_conf api; /* base_url, api_key, timeouts */
    char *source;               /* default source for create; NULL: none */
    long long office_id;        /* default office; -1: none */
};

enum lp_kind {
    LP_TEXT = 0,
    LP_EMAIL,
    LP_ENUM,
    LP_BOOL,
    LP_OFFICE,
    LP_META,
    LP_AVAILABILITY,
    LP_QUESTIONNAIRE,
    LP_DATE,
    LP_COUNT,
    LP_SOURCE,
    LP_KIND__MAX
};

#define LP_REQUIRED 1u
#define LP_VALUATION_ONLY 2u

struct lp_field {
    const char *name;
    enum lp_kind kind;
    size_t min;                 /* LP_TEXT: characters */
    size_t max;                 /* LP_TEXT: characters; LP_META..LP_QUESTIONNAIRE: JSON bytes */
    const char *const *values;  /* LP_ENUM */
    unsigned flags;
};

static const char *const lp_lead_types[] = {"sale", "vendor", "landlord", "let",
                                            "mortgage_request", NULL};
static const char *const lp_property_types[] = {"detached", "semi-detached", "terraced",
                                                "flat-maisonette", NULL};
static const char *const lp_sources[] = {
    "rightmove", "rightmove_valuation", "zoopla", "zoopla_valuation", "onthemarket", "gumtree",
    "s1", "lettingweb", "propertypal", "propertynews", "ivt", "homepage", NULL};

/* Create and valuation fields, in the order they are sent. */
static const struct lp_field lp_new_lead_fields[] = {
    {"first_name", LP_TEXT, 1, 50, NULL, LP_REQUIRED},
    {"last_name", LP_TEXT, 1, 50, NULL, LP_REQUIRED},
    {"email", LP_EMAIL, 0, 0, NULL, LP_REQUIRED},
    {"phone", LP_TEXT, 1, 255, NULL, LP_REQUIRED},
    {"type", LP_ENUM, 0, 0, lp_lead_types, LP_REQUIRED},
    {"title", LP_TEXT, 1, 50, NULL, 0},
    {"advert_address", LP_TEXT, 0, 100, NULL, 0},
    {"advert_postcode", LP_TEXT, 2, 10, NULL, 0},
    {"advert_url", LP_TEXT, 0, 255, NULL, 0},
    {"advert_image", LP_TEXT, 0, 255, NULL, 0},
    {"message", LP_TEXT, 0, 255, NULL, 0},
    {"appointment_availability", LP_AVAILABILITY, 0, LP_AVAILABILITY_MAX, NULL, 0},
    {"meta", LP_META, 0, LP_META_MAX, NULL, 0},
    {"questionnaire", LP_QUESTIONNAIRE, 0, LP_QUESTIONNAIRE_MAX, NULL, 0},
    {"gdpr_checkbox", LP_BOOL, 0, 0, NULL, 0},
    {"host", LP_TEXT, 0, 255, NULL, 0},
    {"office_id", LP_OFFICE, 0, 0, NULL, 0},
    {"address", LP_TEXT, 0, 100, NULL, 0},
    {"postcode", LP_TEXT, 2, 10, NULL, 0},
    {"source", LP_SOURCE, 0, 0, NULL, 0},
    {"international", LP_BOOL, 0, 0, NULL, 0},
    {"utm_source", LP_TEXT, 0, 0, NULL, 0},
    {"utm_campaign", LP_TEXT, 0, 0, NULL, 0},
    {"utm_medium", LP_TEXT, 0, 0, NULL, 0},
    {"utm_term", LP_TEXT, 0, 0, NULL, 0},
    {"utm_content", LP_TEXT, 0, 0, NULL, 0},
    {"property_type", LP_ENUM, 0, 0, lp_property_types, 0},
    {"property_bedrooms", LP_COUNT, 0, LP_MAX_BEDROOMS, NULL, LP_VALUATION_ONLY},
    {NULL, LP_KIND__MAX, 0, 0, NULL, 0}};

/* Update fields, in the order they are sent (utm_gclid, from gclid, follows them). */
static const struct lp_field lp_update_fields[] = {
    {"first_name", LP_TEXT, 1, 50, NULL, 0},
    {"last_name", LP_TEXT, 1, 50, NULL, 0},
    {"address", LP_TEXT, 0, 255, NULL, 0},
    {"postcode", LP_TEXT, 0, 255, NULL, 0},
    {"advert_address", LP_TEXT, 0, 255, NULL, 0},
    {"advert_postcode", LP_TEXT, 0, 255, NULL, 0},
    {"status", LP_TEXT, 0, 255, NULL, 0},
    {"office_id", LP_OFFICE, 0, 0, NULL, 0},
    {"gdpr_checkbox", LP_BOOL, 0, 0, NULL, 0},
    {"next_action_date", LP_DATE, 0, 0, NULL, 0},
    {"questionnaire", LP_QUESTIONNAIRE, 0, LP_QUESTIONNAIRE_MAX, NULL, 0},
    {"meta", LP_META, 0, LP_META_MAX, NULL, 0},
    {"utm_source", LP_TEXT, 0, 0, NULL, 0},
    {"utm_campaign", LP_TEXT, 0, 0, NULL, 0},
    {"utm_medium", LP_TEXT, 0, 0, NULL, 0},
    {"utm_term", LP_TEXT, 0, 0, NULL, 0},
    {"utm_content", LP_TEXT, 0, 0, NULL, 0},
    {NULL, LP_KIND__MAX, 0, 0, NULL, 0}};

/* Attribution that travels in meta, highest priority first (gclid is utm_gclid on update). */
static const char *const lp_meta_extras[] = {
    "utm_id", "gclid",     "gbraid", "wbraid",       "dclid",    "fbclid",      "msclkid",
    "ttclid", "li_fat_id", "twclid", "landing_page", "referrer", "first_touch", NULL};

static const char *const lp_conf_keys[] = {"type", "base_url", "api_key", "connect_timeout",
                                           "timeout", "source", "office_id", NULL};

static const char *const lp_valuation_numbers[2][3] = {
    {"minimum_sale_estimation", "average_sale_estimation", "maximum_sale_estimation"},
    {"minimum_rent_estimation", "average_rent_estimation", "maximum_rent_estimation"}};

/* ---- small text helpers ---- */

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 when it is not one. */
static size_t lp_utf8_seq(const unsigned char *s, size_t n)
{
    size_t len, i;
    unsigned long cp;

    if (n == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1fu;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0fu;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Characters (not bytes) in a UTF-8 string; jansson has already checked the encoding. */
static size_t lp_utf8_chars(const char *s)
{
    size_t n = 0;

    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            n++;
    return n;
}

/*
 * Copies at most out_size - 1 bytes of src[0..len) into out for a person to read: control
 * characters become spaces, bytes that are not UTF-8 become '?', and a character is never cut.
 */
static void lp_clean_text(const char *src, size_t len, char *out, size_t out_size)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0, n;

    if (out_size == 0)
        return;
    while (i < len) {
        n = lp_utf8_seq(s + i, len - i);
        if (n == 0 || (n == 1 && (s[i] < 0x20 || s[i] == 0x7f))) {
            if (o + 1 >= out_size)
                break;
            out[o++] = n == 0 ? '?' : ' ';
            i += n == 0 ? 1 : n;
            continue;
        }
        if (o + n >= out_size)
            break;
        memcpy(out + o, s + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
}

/* Whether s names one of values (exactly, or ignoring case when fold is set); NULL when not. */
static const char *lp_lookup(const char *const *values, const char *s, bool fold)
{
    size_t i;

    for (i = 0; values[i] != NULL; i++)
        if (fold ? strcasecmp(values[i], s) == 0 : strcmp(values[i], s) == 0)
            return values[i];
    return NULL;
}

/* A LeadPro lead id we are willing to put in a URL: [A-Za-z0-9_-]{1,64}. */
static bool lp_lead_id_ok(const char *s)
{
    size_t n = 0;

    if (s == NULL)
        return false;
    for (; s[n] != '\0'; n++)
        if (!isalnum((unsigned char)s[n]) && s[n] != '_' && s[n] != '-')
            return false;
    return n >= 1 && n <= 64;
}

/* Reads ndigits decimal digits at *p into *out, advancing *p. */
static bool lp_digits(const char **p, int ndigits, int *out)
{
    int i, v = 0;

    for (i = 0; i < ndigits; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += ndigits;
    *out = v;
    return true;
}

/*
 * Whether s is an ISO 8601 date or date-time: YYYY-MM-DD, optionally followed by Thh:mm[:ss[.f]]
 * and an offset (Z, +hh, +hh:mm or +hhmm).
 */
static bool lp_iso8601_ok(const char *s)
{
    static const int days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int year, month, day, hour, minute, second, oh, om;
    bool leap;

    if (!lp_digits(&s, 4, &year) || *s++ != '-' || !lp_digits(&s, 2, &month) || *s++ != '-' ||
        !lp_digits(&s, 2, &day))
        return false;
    if (month < 1 || month > 12 || day < 1 || day > days[month - 1])
        return false;
    leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (month == 2 && day == 29 && !leap)
        return false;
    if (*s == '\0')
        return true;
    if (*s++ != 'T' || !lp_digits(&s, 2, &hour) || *s++ != ':' || !lp_digits(&s, 2, &minute) ||
        hour > 23 || minute > 59)
        return false;
    if (*s == ':') {
        s++;
        if (!lp_digits(&s, 2, &second) || second > 59)
            return false;
        if (*s == '.') {
            s++;
            if (!isdigit((unsigned char)*s))
                return false;
            while (isdigit((unsigned char)*s))
                s++;
        }
    }
    if (*s == 'Z')
        return s[1] == '\0';
    if (*s == '\0')
        return true;
    if (*s != '+' && *s != '-')
        return false;
    s++;
    if (!lp_digits(&s, 2, &oh) || oh > 23)
        return false;
    if (*s == ':')
        s++;
    if (*s == '\0')
        return true;
    return lp_digits(&s, 2, &om) && om <= 59 && *s == '\0';
}

/*
 * Whether s is an email address the API will take: one @, a local part of 1 to 64 bytes not
 * starting or ending with a dot, a domain with a dot inside it, no spaces or control characters.
 */
static bool lp_email_ok(const char *s)
{
    const char *at = strchr(s, '@');
    const char *domain, *p;
    size_t local;

    if (at == NULL || strchr(at + 1, '@') != NULL || strlen(s) > 254)
        return false;
    for (p = s; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    local = (size_t)(at - s);
    if (local == 0 || local > 64 || s[0] == '.' || at[-1] == '.')
        return false;
    domain = at + 1;
    p = strchr(domain, '.');
    if (p == NULL || p == domain || domain[strlen(domain) - 1] == '.')
        return false;
    return strstr(s, "..") == NULL;
}

/* Size of v as the API's PHP json_encode() would write it. */
static size_t lp_json_size(const json_t *v)
{
    return json_dumpb(v, NULL, 0, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH);
}

/*
 * An office id: a positive JSON integer or a string of 1 to 18 digits. Sets *out; returns false
 * for anything else (reals are refused: an id must not pass through a double).
 */
static bool lp_office_value(const json_t *v, long long *out)
{
    const char *s;
    size_t n;

    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return *out >= 1;
    }
    if (!json_is_string(v))
        return false;
    s = json_string_value(v);
    n = strlen(s);
    if (n == 0 || n > 18 || strspn(s, "0123456789") != n)
        return false;
    *out = strtoll(s, NULL, 10);
    return *out >= 1;
}

/* A count (bedrooms): a JSON integer or a string of digits, from 0 to max. */
static bool lp_count_value(const json_t *v, long long max, long long *out)
{
    const char *s;
    size_t n;

    if (json_is_integer(v)) {
        *out = json_integer_value(v);
    } else if (json_is_string(v)) {
        s = json_string_value(v);
        n = strlen(s);
        if (n == 0 || n > 9 || strspn(s, "0123456789") != n)
            return false;
        *out = strtoll(s, NULL, 10);
    } else {
        return false;
    }
    return *out >= 0 && *out <= max;
}

/*
 * The lead's value for a LeadPro field (borrowed): lead.leadpro.<name> when present, else
 * lead.<name>. null and "" count as absent (NULL).
 */
static const json_t *lp_get(const json_t *lead, const char *name)
{
    const json_t *own = json_object_get(lead, "leadpro");
    const json_t *v = NULL;

    if (json_is_object(own))
        v = json_object_get(own, name);
    if (v == NULL)
        v = json_object_get(lead, name);
    if (v == NULL || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
        return NULL;
    return v;
}

/* ---- validation ---- */

/* Whether v is an object whose values are strings (or, with lists, arrays of strings). */
static bool lp_string_map_ok(const json_t *v, bool lists)
{
    const char *key;
    json_t *value;
    size_t i;
    json_t *item;

    if (!json_is_object(v))
        return false;
    json_object_foreach((json_t *)v, key, value) {
        if (json_is_string(value))
            continue;
        if (!lists || !json_is_array(value))
            return false;
        json_array_foreach(value, i, item)
            if (!json_is_string(item))
                return false;
    }
    return true;
}

/* Whether v is a questionnaire: an array of [question, answer] string pairs, or an object. */
static bool lp_questionnaire_ok(const json_t *v)
{
    size_t i;
    json_t *pair;

    if (json_is_object(v))
        return lp_string_map_ok(v, false);
    if (!json_is_array(v))
        return false;
    json_array_foreach(v, i, pair) {
        if (!json_is_array(pair) || json_array_size(pair) != 2 ||
            !json_is_string(json_array_get(pair, 0)) || !json_is_string(json_array_get(pair, 1)))
            return false;
    }
    return true;
}

/* Returns a new questionnaire in the API's form (array of pairs); an object is converted. */
static json_t *lp_questionnaire_array(const json_t *v)
{
    json_t *out;
    const char *key;
    json_t *value;

    if (!json_is_object(v))
        return json_deep_copy(v);
    out = json_array();
    if (out == NULL)
        return NULL;
    json_object_foreach((json_t *)v, key, value) {
        if (json_array_append_new(out, json_pack("[sO]", key, value)) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* Writes "must be one of: a, b, c" for values into msg. */
static void lp_enum_message(const char *const *values, char *msg, size_t size)
{
    struct buf b;
    size_t i;
    char *s;

    buf_init(&b, size - 1);
    (void)buf_puts(&b, "must be one of:");
    for (i = 0; values[i] != NULL; i++)
        (void)buf_printf(&b, "%s %s", i == 0 ? "" : ",", values[i]);
    s = b.data;
    snprintf(msg, size, "%s", s != NULL ? s : "must be one of the documented values");
    buf_free(&b);
}

/*
 * Checks one present value v against field f. Returns true when it is fine; otherwise writes a
 * message for a person (never the value) into msg.
 */
static bool lp_check_field(const struct lp_field *f, const json_t *v, char *msg, size_t size)
{
    long long n;
    size_t chars, bytes;
    json_t *q;

    switch (f->kind) {
    case LP_TEXT:
    case LP_SOURCE:
        if (!json_is_string(v)) {
            snprintf(msg, size, "must be text");
            return false;
        }
        chars = lp_utf8_chars(json_string_value(v));
        if (chars < f->min) {
            snprintf(msg, size, "must be at least %zu characters", f->min);
            return false;
        }
        if (f->max > 0 && chars > f->max) {
            snprintf(msg, size, "must be at most %zu characters", f->max);
            return false;
        }
        return true;
    case LP_EMAIL:
        if (!json_is_string(v) || !lp_email_ok(json_string_value(v))) {
            snprintf(msg, size, "must be a valid email address, such as name@example.com");
            return false;
        }
        return true;
    case LP_ENUM:
        if (!json_is_string(v) || lp_lookup(f->values, json_string_value(v), false) == NULL) {
            lp_enum_message(f->values, msg, size);
            return false;
        }
        return true;
    case LP_BOOL:
        if (!json_is_boolean(v)) {
            snprintf(msg, size, "must be true or false");
            return false;
        }
        return true;
    case LP_OFFICE:
        if (!lp_office_value(v, &n)) {
            snprintf(msg, size, "must be a LeadPro office id (a whole number)");
            return false;
        }
        return true;
    case LP_COUNT:
        if (!lp_count_value(v, (long long)f->max, &n)) {
            snprintf(msg, size, "must be a whole number from 0 to %zu", f->max);
            return false;
        }
        return true;
    case LP_DATE:
        if (!json_is_string(v) || !lp_iso8601_ok(json_string_value(v))) {
            snprintf(msg, size, "must be an ISO 8601 date, such as 2025-07-12T10:00:00Z");
            return false;
        }
        return true;
    case LP_META:
    case LP_AVAILABILITY:
        if (!lp_string_map_ok(v, f->kind == LP_AVAILABILITY)) {
            snprintf(msg, size, f->kind == LP_META ? "must be an object whose values are text"
                                                   : "must be an object whose values are text "
                                                     "or lists of text");
            return false;
        }
        bytes = lp_json_size(v);
        break;
    case LP_QUESTIONNAIRE:
        if (!lp_questionnaire_ok(v)) {
            snprintf(msg, size, "must be a list of [question, answer] pairs of text");
            return false;
        }
        q = lp_questionnaire_array(v);
        if (q == NULL) {
            snprintf(msg, size, "could not be checked (out of memory)");
            return false;
        }
        bytes = lp_json_size(q);
        json_decref(q);
        break;
    default:
        snprintf(msg, size, "cannot be checked");
        return false;
    }
    if (bytes > f->max) {
        snprintf(msg, size, "is too long: at most %zu bytes as JSON", f->max);
        return false;
    }
    return true;
}

/* The documented rules that depend on the lead type and the action. Returns errors added. */
static int lp_check_by_type(enum target_action action, const json_t *lead, json_t *errors)
{
    static const char *const advert[] = {"advert_address", "advert_postcode", "advert_url",
                                         "advert_image", NULL};
    const json_t *tv = lp_get(lead, "type");
    const char *type = json_is_string(tv) ? json_string_value(tv) : "";
    bool vendor = strcmp(type, "vendor") == 0 || strcmp(type, "landlord") == 0;
    bool applicant = strcmp(type, "sale") == 0 || strcmp(type, "let") == 0;
    int added = 0;
    size_t i;

    if (action == TARGET_VALUATION && !vendor && tv != NULL)
        added += target_add_error(errors, "type",
                              "instant valuations are only for vendor or landlord leads");
    if (action == TARGET_CREATE && applicant && lp_get(lead, "advert_address") == NULL &&
        lp_get(lead, "advert_postcode") == NULL)
        added += target_add_error(errors, "advert_postcode",
                              "sale and let leads need the address or postcode of the property "
                              "they enquire about (advert_address or advert_postcode)");
    if ((vendor || action == TARGET_VALUATION) && lp_get(lead, "postcode") == NULL)
        added += target_add_error(errors, "postcode",
                              action == TARGET_VALUATION
                                  ? "is required for an instant valuation"
                                  : "is required for vendor and landlord leads");
    if (vendor)
        for (i = 0; advert[i] != NULL; i++)
            if (lp_get(lead, advert[i]) != NULL)
                added += target_add_error(errors, advert[i],
                                      "vendor and landlord leads use address and postcode; "
                                      "leave the advert fields empty");
    return added;
}

/* The field table for action. */
static const struct lp_field *lp_fields(enum target_action action)
{
    return action == TARGET_UPDATE ? lp_update_fields : lp_new_lead_fields;
}

/* See struct target_ops.validate. state is unused: the rules are the API's, not the config's. */
static int leadpro_validate(const void *state, enum target_action action, const json_t *lead,
                            json_t *errors)
{
    const struct lp_field *f;
    const json_t *v;
    char msg[256];
    int added = 0;
    bool any = false;

    (void)state;
    if ((unsigned)action >= TARGET_ACTION__MAX)
        return target_add_error(errors, "lead", "this action is not supported by LeadPro");
    if (!json_is_object(lead))
        return target_add_error(errors, "lead", "must be an object");
    for (f = lp_fields(action); f->name != NULL; f++) {
        if ((f->flags & LP_VALUATION_ONLY) && action != TARGET_VALUATION)
            continue;
        v = lp_get(lead, f->name);
        if (v == NULL) {
            if (f->flags & LP_REQUIRED)
                added += target_add_error(errors, f->name, "is required");
            continue;
        }
        any = true;
        if (!lp_check_field(f, v, msg, sizeof(msg)))
            added += target_add_error(errors, f->name, msg);
    }
    if (action != TARGET_UPDATE)
        return added + lp_check_by_type(action, lead, errors);
    if (json_is_string(lp_get(lead, "gclid")))
        any = true;
    if (!any)
        added += target_add_error(errors, "lead",
                              "nothing to update: give at least one field to change");
    return added;
}

/* ---- building the call ---- */

/*
 * The source to send: the lead's, else the action's default (valuation "ivt"; create the config's
 * or "homepage"). An unknown one becomes "homepage", as the API would do. Returns a static string.
 */
static const char *lp_source(const struct leadpro *st, enum target_action action,
                             const json_t *lead)
{
    const json_t *v = lp_get(lead, "source");
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    const char *known;

    if (s == NULL)
        s = action == TARGET_VALUATION ? "ivt" : st->source;
    if (s == NULL)
        return "homepage";
    known = lp_lookup(lp_sources, s, true);
    if (known == NULL) {
        log_msg(LOG_INFO, "leadpro: unknown lead source replaced by homepage");
        return "homepage";
    }
    return known;
}

/*
 * Sets meta[key] = value when meta then stays within LP_META_MAX bytes and key is not there yet.
 * Returns 1 when it was left out for size, else 0; -1 on allocation failure.
 */
static int lp_meta_try(json_t *meta, const char *key, const char *value)
{
    if (json_object_get(meta, key) != NULL)
        return 0;
    if (json_object_set_new(meta, key, json_string(value)) != 0)
        return -1;
    if (lp_json_size(meta) <= LP_META_MAX)
        return 0;
    return json_object_del(meta, key) == 0 ? 1 : -1;
}

/*
 * Builds the meta object to send into *out (new reference, or NULL when there is nothing to send):
 * our submission id first ("leadbridge_id"; "leadbridge_update_id" on update, so an update never
 * overwrites the id of the submission that made the lead), then the lead's own meta, then the
 * click ids, landing page and referrer, each only while meta stays within 1024 bytes.
 */
static enum lb_err lp_build_meta(enum target_action action, const json_t *lead,
                                 const char *submission_id, json_t **out)
{
    const json_t *own = lp_get(lead, "meta");
    json_t *meta = json_object();
    const char *key;
    json_t *value;
    const json_t *v;
    size_t i, dropped = 0;
    int r;

    *out = NULL;
    if (meta == NULL)
        return LB_ERR_NOMEM;
    if (submission_id != NULL && *submission_id != '\0') {
        r = lp_meta_try(meta, action == TARGET_UPDATE ? "leadbridge_update_id" : "leadbridge_id",
                        submission_id);
        if (r < 0)
            goto nomem;
    }
    if (json_is_object(own)) {
        json_object_foreach((json_t *)own, key, value) {
            if (!json_is_string(value))
                continue;
            r = lp_meta_try(meta, key, json_string_value(value));
            if (r < 0)
                goto nomem;
            dropped += (size_t)r;
        }
    }
    for (i = 0; lp_meta_extras[i] != NULL; i++) {
        if (action == TARGET_UPDATE && strcmp(lp_meta_extras[i], "gclid") == 0)
            continue;
        v = lp_get(lead, lp_meta_extras[i]);
        if (!json_is_string(v))
            continue;
        r = lp_meta_try(meta, lp_meta_extras[i], json_string_value(v));
        if (r < 0)
            goto nomem;
        dropped += (size_t)r;
    }
    if (dropped > 0)
        log_msg(LOG_INFO, "leadpro: %zu meta entries left out to stay within %d bytes", dropped,
                LP_META_MAX);
    if (json_object_size(meta) > 0)
        *out = meta;
    else
        json_decref(meta);
    return LB_OK;
nomem:
    json_decref(meta);
    return LB_ERR_NOMEM;
}

/* The JSON value to send for field f, from the lead's present value v (new reference or NULL). */
static json_t *lp_field_value(const struct lp_field *f, const json_t *v)
{
    long long n;

    switch (f->kind) {
    case LP_OFFICE:
        return lp_office_value(v, &n) ? json_integer(n) : NULL;
    case LP_COUNT:
        return lp_count_value(v, (long long)f->max, &n) ? json_integer(n) : NULL;
    case LP_QUESTIONNAIRE:
        return lp_questionnaire_array(v);
    default:
        return json_deep_copy(v);
    }
}

/* Builds the request body for action into *out (new reference). The lead has been validated. */
static enum lb_err lp_build_body(const struct leadpro *st, enum target_action action,
                                 const json_t *lead, const char *submission_id, json_t **out)
{
    json_t *body = json_object();
    json_t *value = NULL;
    const struct lp_field *f;
    const json_t *v;
    enum lb_err e = LB_ERR_NOMEM;

    *out = NULL;
    if (body == NULL)
        return LB_ERR_NOMEM;
    for (f = lp_fields(action); f->name != NULL; f++) {
        if ((f->flags & LP_VALUATION_ONLY) && action != TARGET_VALUATION)
            continue;
        v = lp_get(lead, f->name);
        value = NULL;
        if (f->kind == LP_META) {
            e = lp_build_meta(action, lead, submission_id, &value);
            if (e != LB_OK)
                goto out;
            if (value == NULL)
                continue;
        } else if (f->kind == LP_SOURCE) {
            value = json_string(lp_source(st, action, lead));
        } else if (f->kind == LP_OFFICE && v == NULL) {
            if (action == TARGET_UPDATE || st->office_id < 0)
                continue;
            value = json_integer(st->office_id);
        } else if (v == NULL) {
            continue;
        } else {
            value = lp_field_value(f, v);
        }
        e = LB_ERR_NOMEM;
        if (value == NULL || json_object_set_new(body, f->name, value) != 0)
            goto out;
    }
    if (action == TARGET_UPDATE) {
        v = lp_get(lead, "gclid");
        if (json_is_string(v) && json_object_set_new(body, "utm_gclid", json_deep_copy(v)) != 0)
            goto out;
    }
    *out = body;
    body = NULL;
    e = LB_OK;
out:
    json_decref(body);
    return e;
}

/*
 * See struct target_ops.build. Refuses a lead that fails validate() (LB_ERR_INVALID_FIELDS) and an
 * update lead_id outside [A-Za-z0-9_-]{1,64} (LB_ERR_BAD_REQUEST). On failure *call is left empty.
 */
static enum lb_err leadpro_build(const void *state, enum target_action action, const json_t *lead,
                                 const char *lead_id, const char *submission_id,
                                 struct http_call *call)
{
    const struct leadpro *st = state;
    json_t *errors = NULL, *body = NULL;
    char *text = NULL;
    enum lb_err e = LB_ERR_INTERNAL;
    int n = -1;

    memset(call, 0, sizeof(*call));
    if ((unsigned)action >= TARGET_ACTION__MAX)
        goto out;
    e = LB_ERR_BAD_REQUEST;
    if (!json_is_object(lead))
        goto out;
    if (action == TARGET_CREATE) {
        n = snprintf(call->url, sizeof(call->url), "%s/leads", st->api.base_url);
        call->method = "POST";
    } else if (action == TARGET_VALUATION) {
        n = snprintf(call->url, sizeof(call->url), "%s/leads/valuation", st->api.base_url);
        call->method = "POST";
    } else {
        if (!lp_lead_id_ok(lead_id))
            goto out;
        n = snprintf(call->url, sizeof(call->url), "%s/leads/%s", st->api.base_url, lead_id);
        call->method = "PATCH";
    }
    e = LB_ERR_INTERNAL;
    if (n < 0 || (size_t)n >= sizeof(call->url))
        goto out;
    e = LB_ERR_NOMEM;
    errors = json_object();
    if (errors == NULL)
        goto out;
    if (leadpro_validate(st, action, lead, errors) > 0) {
        e = LB_ERR_INVALID_FIELDS;
        goto out;
    }
    e = lp_build_body(st, action, lead, submission_id, &body);
    if (e != LB_OK)
        goto out;
    e = LB_ERR_NOMEM;
    text = json_dumps(body, JSON_COMPACT);
    if (text == NULL)
        goto out;
    e = http_call_add_header(call, "X-API-KEY", st->api.credentials[0]);
    if (e == LB_OK)
        e = http_call_add_header(call, "Accept", "application/json");
    if (e == LB_OK)
        e = http_call_add_header(call, "Content-Type", "application/json");
    if (e != LB_OK)
        goto out;
    call->body_len = strlen(text);
    call->body = text;
    text = NULL;
    call->connect_timeout_ms = st->api.connect_timeout_ms;
    call->timeout_ms = st->api.timeout_ms;
    e = LB_OK;
out:
    if (e != LB_OK) {
        http_call_free(call);
        memset(call, 0, sizeof(*call));
    }
    free(text);
    json_decref(body);
    json_decref(errors);
    return e;
}

/* ---- reading the answer ---- */

/*
 * Finds the digits of an "id" member in the raw body whose value equals approx (jansson turned a
 * number too large for long long into a double). Copies them into out; returns whether it did.
 */
static bool lp_scan_raw_id(const char *body, size_t len, double approx, char *out, size_t size)
{
    size_t i, j, start;
    char digits[32];

    for (i = 0; i + 4 <= len; i++) {
        if (memcmp(body + i, "\"id\"", 4) != 0)
            continue;
        j = i + 4;
        while (j < len && isspace((unsigned char)body[j]))
            j++;
        if (j >= len || body[j] != ':')
            continue;
        j++;
        while (j < len && isspace((unsigned char)body[j]))
            j++;
        start = j;
        while (j < len && isdigit((unsigned char)body[j]))
            j++;
        if (j == start || j - start >= sizeof(digits) || j - start >= size ||
            (j < len && (body[j] == '.' || body[j] == 'e' || body[j] == 'E')))
            continue;
        memcpy(digits, body + start, j - start);
        digits[j - start] = '\0';
        if (strtod(digits, NULL) != approx)
            continue;
        memcpy(out, digits, j - start + 1);
        return true;
    }
    return false;
}

/* Copies the lead id from the reply (id or data.id; number or string) into result->lead_id. */
static void lp_read_id(const struct http_reply *reply, const json_t *root,
                       struct target_result *result)
{
    const json_t *id = json_object_get(root, "id");
    const char *s;

    result->lead_id[0] = '\0';
    if (id == NULL || json_is_null(id))
        id = json_object_get(json_object_get(root, "data"), "id");
    if (json_is_integer(id)) {
        snprintf(result->lead_id, sizeof(result->lead_id), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(id));
    } else if (json_is_string(id)) {
        s = json_string_value(id);
        if (lp_lead_id_ok(s) && strlen(s) < sizeof(result->lead_id))
            snprintf(result->lead_id, sizeof(result->lead_id), "%s", s);
    } else if (json_is_real(id) && reply->body != NULL) {
        if (!lp_scan_raw_id(reply->body, reply->body_len, json_real_value(id), result->lead_id,
                            sizeof(result->lead_id)))
            result->lead_id[0] = '\0';
    }
}

/* The reply's member name, at the top level or else under "data" (borrowed, or NULL). */
static const json_t *lp_reply_get(const json_t *root, const char *name)
{
    const json_t *v = json_object_get(root, name);

    if (v == NULL || json_is_null(v))
        v = json_object_get(json_object_get(root, "data"), name);
    return v;
}

/* A copy of number v; a whole real below 2^53 (as after JSON_DECODE_INT_AS_REAL) is an integer. */
static json_t *lp_number_copy(const json_t *v)
{
    double x = json_number_value(v);

    if (json_is_real(v) && x >= 0 && x < 9007199254740992.0 && (double)(long long)x == x)
        return json_integer((json_int_t)x);
    return json_deep_copy(v);
}

/* {"min","avg","max"} from the three names when all are numbers >= 0 (new reference), else NULL. */
static json_t *lp_estimate_block(const json_t *root, const char *const names[3])
{
    static const char *const keys[3] = {"min", "avg", "max"};
    json_t *block = json_object();
    const json_t *v;
    size_t i;

    if (block == NULL)
        return NULL;
    for (i = 0; i < 3; i++) {
        v = lp_reply_get(root, names[i]);
        if (!json_is_number(v) || json_number_value(v) < 0 ||
            json_object_set_new(block, keys[i], lp_number_copy(v)) != 0) {
            json_decref(block);
            return NULL;
        }
    }
    return block;
}

/*
 * The valuation for the caller (new reference, or NULL without memory): {"status": "Success",
 * "sale": {...}, "rent": {...}} with only complete blocks, or {"status": <theirs or
 * "unavailable">} when the API made none. Never zeros in place of missing numbers.
 */
static json_t *lp_valuation(const json_t *root)
{
    const json_t *sv = lp_reply_get(root, "valuation_status");
    const char *theirs = json_is_string(sv) ? json_string_value(sv) : "";
    json_t *out = json_object();
    json_t *sale = NULL, *rent = NULL;
    char status[LP_STATUS_MAX + 1];

    if (out == NULL)
        return NULL;
    if (strcasecmp(theirs, "success") == 0) {
        sale = lp_estimate_block(root, lp_valuation_numbers[0]);
        rent = lp_estimate_block(root, lp_valuation_numbers[1]);
    }
    if (sale != NULL || rent != NULL)
        snprintf(status, sizeof(status), "Success");
    else if (*theirs == '\0' || strcasecmp(theirs, "success") == 0)
        snprintf(status, sizeof(status), "unavailable");
    else
        lp_clean_text(theirs, strlen(theirs), status, sizeof(status));
    if (json_object_set_new(out, "status", json_string(status)) != 0 ||
        (sale != NULL && json_object_set_new(out, "sale", sale) != 0) ||
        (rent != NULL && json_object_set_new(out, "rent", rent) != 0)) {
        json_decref(out);
        out = NULL;
    }
    return out;
}

/* The first message of an "errors" member: "field: message", "message", or "" (into out). */
static void lp_first_error(const json_t *errors, struct buf *out)
{
    const char *key;
    json_t *value;
    const json_t *first = NULL;

    if (json_is_string(errors)) {
        (void)buf_puts(out, json_string_value(errors));
        return;
    }
    if (json_is_array(errors)) {
        first = json_array_get(errors, 0);
        if (json_is_string(first))
            (void)buf_puts(out, json_string_value(first));
        return;
    }
    json_object_foreach((json_t *)errors, key, value) {
        first = json_is_array(value) ? json_array_get(value, 0) : value;
        if (json_is_string(first))
            (void)buf_printf(out, "%s: %s", key, json_string_value(first));
        return;
    }
}

/* Writes s with every occurrence of key replaced by "[redacted]" into out. */
static void lp_redact(const char *s, const char *key, struct buf *out)
{
    size_t klen = strlen(key);
    const char *hit;

    while (klen > 0 && (hit = strstr(s, key)) != NULL) {
        (void)buf_append(out, s, (size_t)(hit - s));
        (void)buf_puts(out, "[redacted]");
        s = hit + klen;
    }
    (void)buf_puts(out, s);
}

/*
 * Fills result->reason for a reply that was not a success: the body's "message" and first
 * "errors" entry when it is a JSON object with them, else the raw body; capped, cleaned and
 * without the API key.
 */
static void lp_failure_reason(const struct leadpro *st, const struct http_reply *reply,
                              const json_t *root, struct target_result *result)
{
    struct buf raw, safe;
    const json_t *message = json_object_get(root, "message");
    char words[LP_REASON_MAX + 1];

    buf_init(&raw, LP_REASON_WINDOW);
    buf_init(&safe, LP_REASON_WINDOW + 64);
    if (json_is_string(message))
        (void)buf_puts(&raw, json_string_value(message));
    if (json_is_object(root)) {
        struct buf first;

        buf_init(&first, LP_REASON_WINDOW / 2);
        lp_first_error(json_object_get(root, "errors"), &first);
        if (first.len > 0)
            (void)buf_printf(&raw, raw.len > 0 ? " (%s)" : "%s", first.data);
        buf_free(&first);
    }
    if (raw.len == 0 && reply->body != NULL)
        (void)buf_append(&raw, reply->body,
                         reply->body_len < LP_REASON_WINDOW ? reply->body_len : LP_REASON_WINDOW);
    if (raw.len == 0 && reply->status == 0)
        (void)buf_puts(&raw, reply->transport_message);
    words[0] = '\0';
    if (raw.len > 0) {
        lp_redact(raw.data, st != NULL && st->api.credentials[0] != NULL ? st->api.credentials[0] : "", &safe);
        if (safe.data != NULL)
            lp_clean_text(safe.data, safe.len, words, sizeof(words));
    }
    if (reply->status == 0)
        snprintf(result->reason, sizeof(result->reason), "no answer from LeadPro%s%s",
                 words[0] != '\0' ? ": " : "", words);
    else
        snprintf(result->reason, sizeof(result->reason), "LeadPro answered HTTP %ld%s%s",
                 reply->status, words[0] != '\0' ? ": " : " with no reason", words);
    buf_free(&raw);
    buf_free(&safe);
}

/* See struct target_ops.classify. The status code is the truth; the body only explains it. */
static void leadpro_classify(const void *state, enum target_action action,
                             const struct http_reply *reply, struct target_result *result)
{
    const struct leadpro *st = state;
    json_t *root = NULL;

    result->http_status = reply->status;
    result->outcome = target_outcome_for_status(reply->status);
    if (reply->body != NULL && reply->body_len > 0) {
        root = json_loadb(reply->body, reply->body_len, 0, NULL);
        /* jansson refuses integers beyond long long: read them as reals, then lp_read_id scans
         * the raw text for the exact digits. */
        if (root == NULL)
            root = json_loadb(reply->body, reply->body_len, JSON_DECODE_INT_AS_REAL, NULL);
    }
    if (reply->status < 200 || reply->status > 299 || result->outcome != DELIVERY_OK) {
        lp_failure_reason(st, reply, root, result);
        goto out;
    }
    lp_read_id(reply, root, result);
    if (result->lead_id[0] == '\0' && action != TARGET_UPDATE)
        snprintf(result->reason, sizeof(result->reason),
                 "LeadPro took the lead (HTTP %ld) but its reply held no lead id", reply->status);
    if (action == TARGET_VALUATION)
        result->valuation = lp_valuation(root);
out:
    json_decref(root);
}

/* ---- configuration ---- */

/* Frees a state from configure(); NULL is a no-op. */
static void leadpro_free(void *state)
{
    struct leadpro *st = state;

    if (st == NULL)
        return;
    target_api_conf_free(&st->api);
    free(st->source);
    free(st);
}

/*
 * See struct target_ops.configure. Reads type, base_url, api_key, connect_timeout, timeout,
 * source and office_id; every mistake goes to d under path. Returns a new state or NULL.
 */
static void *leadpro_configure(const json_t *conf, const char *path, struct diag *d)
{
    struct leadpro *st = calloc(1, sizeof(*st));
    size_t before = d->count;
    const char *type, *source;
    const json_t *office;
    char p[LP_PATH_SIZE];

    if (st == NULL) {
        diag_add(d, path, "out of memory");
        return NULL;
    }
    st->office_id = -1;
    if (!json_is_object(conf)) {
        diag_add(d, path, "a target must be an object");
        goto fail;
    }
    conf_check_keys(conf, path, lp_conf_keys, d);
    type = conf_string(conf, "type", path, NULL, true, d);
    if (type != NULL && strcmp(type, "leadpro") != 0) {
        conf_path(p, sizeof(p), path, "type");
        diag_add(d, p, "must be \"leadpro\"");
    }
    target_api_conf_read(conf, path, LP_DEFAULT_BASE, &lp_auth, 1, &st->api, d);
    source = conf_string(conf, "source", path, NULL, false, d);
    if (source != NULL && *source != '\0' && lp_lookup(lp_sources, source, true) == NULL)
        log_msg(LOG_WARN, "%s.source: not a documented LeadPro source; homepage will be sent",
                path);
    office = json_object_get(conf, "office_id");
    if (office != NULL && !lp_office_value(office, &st->office_id)) {
        conf_path(p, sizeof(p), path, "office_id");
        diag_add(d, p, "must be a LeadPro office id (a whole number, from GET /offices)");
    }
    if (d->count != before)
        goto fail;
    if (source != NULL && *source != '\0') {
        st->source = strdup(source);
        if (st->source == NULL) {
            diag_add(d, path, "out of memory");
            goto fail;
        }
    }
    return st;
fail:
    leadpro_free(st);
    return NULL;
}

static bool leadpro_supports(enum target_action action)
{
    return action == TARGET_CREATE || action == TARGET_VALUATION || action == TARGET_UPDATE;
}

/*
 * See struct target_ops.build_lookup: GET /person/leads?email= (or ?phone= without an email; see
 * target_lookup_url), with the same key. Our create puts the submission id in meta "leadbridge_id"; the match reads it.
 */
static enum lb_err leadpro_build_lookup(const void *state, const json_t *lead,
                                        struct http_call *call)
{
    const struct leadpro *st = state;
    char prefix[1024];
    enum lb_err e;
    int n;

    memset(call, 0, sizeof(*call));
    n = snprintf(prefix, sizeof(prefix), "%s/person/leads", st->api.base_url);
    if (n < 0 || (size_t)n >= sizeof(prefix))
        return LB_ERR_INTERNAL;
    e = target_lookup_url(call, prefix, lead);
    if (e == LB_OK)
        e = http_call_add_header(call, "X-API-KEY", st->api.credentials[0]);
    if (e == LB_OK)
        e = http_call_add_header(call, "Accept", "application/json");
    call->connect_timeout_ms = st->api.connect_timeout_ms;
    call->timeout_ms = st->api.timeout_ms;
    if (e != LB_OK)
        http_call_free(call);
    return e;
}

/* See struct target_ops.lookup_settle: a request cut short may run up to the timeout. */
static long long leadpro_lookup_settle(const void *state)
{
    const struct leadpro *st = state;

    return (st->api.connect_timeout_ms + st->api.timeout_ms) / 1000 + 1;
}

const struct target_ops target_leadpro_ops = {
    .type = "leadpro",
    .configure = leadpro_configure,
    .free = leadpro_free,
    .supports = leadpro_supports,
    .validate = leadpro_validate,
    .build = leadpro_build,
    .classify = leadpro_classify,
    .build_lookup = leadpro_build_lookup,
    .lookup_settle = leadpro_lookup_settle,
};
