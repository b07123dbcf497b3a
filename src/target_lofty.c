/*
 * target_lofty.c: the Lofty CRM lead API (POST /v1.0/leads, PUT /v1.0/leads/{leadId}), behind
 * struct target_ops.
 *
 * Lofty silently cuts names and segments to 30 characters and tags to 64. We never let that
 * happen unseen: an over-long value is a validation error, except names when "long_names" is
 * "note" (then the name is cut on a UTF-8 boundary by us and the full value goes into the note).
 * Attribution (UTM values, click ids, host) travels as tags ("utm_source:google", capped by us to
 * fit) or as text custom attributes. Every created lead carries "leadbridge id: <submission id>"
 * in its note so a retried post is recognisable. An update sends only what the lead holds.
 * Lofty's leadId is a 64-bit integer: it is read as a JSON integer (json_int_t is long long) and
 * kept as text, never through a double.
 */
#include "target.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "conf.h"

#define LOFTY_DEFAULT_BASE "https://api.lofty.com"
#define LOFTY_DEFAULT_SOURCE "leadbridge"
#define LOFTY_NAME_CHARS 30
#define LOFTY_SEGMENT_CHARS 30
#define LOFTY_TAG_CHARS 64
#define LOFTY_PHONE_CHARS 20
#define LOFTY_MAX_BEDROOMS 1000
#define LOFTY_REASON_CAP 300
#define LOFTY_MAX_CONTENT (256 * 1024)
#define LOFTY_MAX_BODY (1024 * 1024)
#define LOFTY_MAX_CONF_TAGS 64

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

enum lofty_auth { LOFTY_AUTH_TOKEN = 0, LOFTY_AUTH_BEARER, LOFTY_AUTH__MAX };
enum lofty_long_names { LOFTY_NAMES_REFUSE = 0, LOFTY_NAMES_NOTE, LOFTY_NAMES__MAX };
enum lofty_attribution { LOFTY_ATTR_TAGS = 0, LOFTY_ATTR_CUSTOM, LOFTY_ATTR__MAX };

/* Each auth and the key of its secret (api.credentials[0]), and the Authorization scheme. */
static const struct target_auth lofty_auths[LOFTY_AUTH__MAX] = {
    [LOFTY_AUTH_TOKEN] = {"token", {"api_key", NULL}},
    [LOFTY_AUTH_BEARER] = {"bearer", {"token", NULL}},
};
static const char *const lofty_auth_schemes[LOFTY_AUTH__MAX] = {
    [LOFTY_AUTH_TOKEN] = "token",
    [LOFTY_AUTH_BEARER] = "Bearer",
};
static const char *const lofty_long_names_names[LOFTY_NAMES__MAX] = {
    [LOFTY_NAMES_REFUSE] = "refuse",
    [LOFTY_NAMES_NOTE] = "note",
};
static const char *const lofty_attribution_names[LOFTY_ATTR__MAX] = {
    [LOFTY_ATTR_TAGS] = "tags",
    [LOFTY_ATTR_CUSTOM] = "custom_attributes",
};

struct lofty {
    struct target_api_conf api;    /* credentials: api_key or token */
    enum lofty_long_names long_names;
    enum lofty_attribution attribution;
    char *source;                  /* owned */
    char **tags;                   /* owned static tags */
    size_t n_tags;
};

/* Canonical lead type → Lofty leadTypes id; anything else is Other (-1). */
static const struct {
    const char *type;
    int id;
} lofty_lead_types[] = {
    {"sale", 2},
    {"let", 5},
    {"vendor", 1},
    {"landlord", 9},
};
#define LOFTY_TYPE_OTHER (-1)

/* Canonical fields that must be text when present. */
static const char *const lofty_text_fields[] = {
    "first_name", "last_name", "email", "phone", "address", "address2", "city", "state",
    "postcode", "property_type", "message", "source", "type", "utm_source", "utm_medium",
    "utm_campaign", "utm_term", "utm_content", "utm_id", "host", "gclid", "gbraid", "wbraid",
    "dclid", "fbclid", "msclkid", "ttclid", "li_fat_id", "twclid", "landing_page", "referrer",
    "first_touch",
};

/* Attribution sent as tags "name:value" (attribution "tags"). */
static const char *const lofty_tag_attribution[] = {
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "utm_id", "host",
};

/* Attribution too long for a tag: in "tags" mode it goes into the note as "name: value" lines. */
static const char *const lofty_note_attribution[] = {
    "gclid",  "gbraid",    "wbraid", "dclid",        "fbclid",   "msclkid",     "ttclid",
    "li_fat_id", "twclid", "landing_page", "referrer", "first_touch",
};

/* Attribution sent as text custom attributes of the same name (attribution "custom_attributes"). */
static const char *const lofty_custom_attribution[] = {
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "utm_id", "gclid",
    "gbraid", "wbraid", "dclid", "fbclid", "msclkid", "ttclid", "li_fat_id", "twclid", "host",
    "landing_page", "referrer", "first_touch",
};

/* --- small helpers ---------------------------------------------------------------------------- */


/* Characters (code points) in the UTF-8 string s. */
static size_t lofty_chars(const char *s)
{
    size_t n = 0;

    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* Bytes of the longest prefix of s holding at most max characters (a UTF-8 boundary). */
static size_t lofty_prefix_bytes(const char *s, size_t max)
{
    size_t i, chars = 0;

    for (i = 0; s[i] != '\0'; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (chars == max)
                break;
            chars++;
        }
    }
    return i;
}

/*
 * Writes the printf-style reason into result->reason. Every text put in is capped well below the
 * reason's size, so nothing is cut; an encoding error leaves the reason empty.
 */
static void lofty_reason(struct target_result *result, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void lofty_reason(struct target_result *result, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(result->reason, sizeof(result->reason), fmt, ap);
    va_end(ap);
    if (n < 0)
        result->reason[0] = '\0';
}

/* Index of name in names[n], or -1. */
static int lofty_lookup(const char *const *names, int n, const char *name)
{
    int i;

    for (i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

/* True for a Lofty lead id: 1..19 digits, at most 9223372036854775807. */
static bool lofty_lead_id_valid(const char *id)
{
    size_t len, i;

    if (id == NULL)
        return false;
    len = strlen(id);
    if (len == 0 || len > 19)
        return false;
    for (i = 0; i < len; i++)
        if (id[i] < '0' || id[i] > '9')
            return false;
    return len < 19 || strcmp(id, "9223372036854775807") <= 0;
}

/* --- configure -------------------------------------------------------------------------------- */

static void lofty_free(void *state)
{
    struct lofty *lf = state;
    size_t i;

    if (lf == NULL)
        return;
    target_api_conf_free(&lf->api);
    free(lf->source);
    for (i = 0; i < lf->n_tags; i++)
        free(lf->tags[i]);
    free(lf->tags);
    free(lf);
}

/* Reads one of the enum-valued keys: its index in names[n], or dflt (reporting a bad value). */
static int lofty_conf_choice(const json_t *conf, const char *key, const char *path,
                             const char *const *names, int n, int dflt, struct diag *d)
{
    const char *s = conf_string(conf, key, path, names[dflt], false, d);
    char sub[512];
    int i;

    if (s == NULL)
        return dflt;
    i = lofty_lookup(names, n, s);
    if (i >= 0)
        return i;
    conf_path(sub, sizeof(sub), path, key);
    diag_add(d, sub, "must be \"%s\" or \"%s\"", names[0], names[1]);
    return dflt;
}

/* Reads the static "tags": an array of 1..64-character strings. */
static void lofty_conf_tags(struct lofty *lf, const json_t *conf, const char *path, struct diag *d)
{
    const json_t *tags = json_object_get(conf, "tags");
    const json_t *v;
    char sub[512], item[600];
    size_t i;

    if (tags == NULL)
        return;
    conf_path(sub, sizeof(sub), path, "tags");
    if (!json_is_array(tags) || json_array_size(tags) > LOFTY_MAX_CONF_TAGS) {
        diag_add(d, sub, "must be an array of at most %d tags", LOFTY_MAX_CONF_TAGS);
        return;
    }
    lf->tags = calloc(json_array_size(tags) + 1, sizeof(*lf->tags));
    if (lf->tags == NULL) {
        diag_add(d, sub, "out of memory");
        return;
    }
    json_array_foreach(tags, i, v) {
        const char *s = json_string_value(v);

        conf_path_index(item, sizeof(item), sub, i);
        if (s == NULL || s[0] == '\0' || lofty_chars(s) > LOFTY_TAG_CHARS) {
            diag_add(d, item, "must be a tag of 1 to %d characters", LOFTY_TAG_CHARS);
            continue;
        }
        lf->tags[lf->n_tags] = strdup(s);
        if (lf->tags[lf->n_tags] == NULL) {
            diag_add(d, item, "out of memory");
            continue;
        }
        lf->n_tags++;
    }
}

/* Reads a "lofty" target's config object (borrowed) at path. New state, or NULL with d set. */
static void *lofty_configure(const json_t *conf, const char *path, struct diag *d)
{
    static const char *const allowed[] = {
        "type", "base_url", "auth", "api_key", "token", "long_names", "attribution", "source",
        "tags", "connect_timeout", "timeout", NULL,
    };
    struct lofty *lf;
    size_t before = d->count;
    const char *s;

    if (!json_is_object(conf)) {
        diag_add(d, path, "must be an object");
        return NULL;
    }
    lf = calloc(1, sizeof(*lf));
    if (lf == NULL) {
        diag_add(d, path, "out of memory");
        return NULL;
    }
    conf_check_keys(conf, path, allowed, d);
    target_api_conf_read(conf, path, LOFTY_DEFAULT_BASE, lofty_auths, LOFTY_AUTH__MAX, &lf->api,
                         d);
    lf->long_names = (enum lofty_long_names)lofty_conf_choice(
        conf, "long_names", path, lofty_long_names_names, LOFTY_NAMES__MAX, LOFTY_NAMES_REFUSE, d);
    lf->attribution = (enum lofty_attribution)lofty_conf_choice(
        conf, "attribution", path, lofty_attribution_names, LOFTY_ATTR__MAX, LOFTY_ATTR_TAGS, d);
    s = conf_string(conf, "source", path, LOFTY_DEFAULT_SOURCE, false, d);
    if (s != NULL && s[0] != '\0') {
        lf->source = strdup(s);
        if (lf->source == NULL)
            diag_add(d, path, "out of memory");
    }
    lofty_conf_tags(lf, conf, path, d);
    if (d->count != before) {
        lofty_free(lf);
        return NULL;
    }
    return lf;
}

static bool lofty_supports(enum target_action action)
{
    return action == TARGET_CREATE || action == TARGET_UPDATE;
}

/* --- validate --------------------------------------------------------------------------------- */

/*
 * Checks that lofty.<key> (when present) is an array of 1..max-character strings, reporting under
 * "lofty.<key>". Returns how many errors were added (0 or 1).
 */
static int lofty_check_list(const json_t *nested, const char *key, size_t max, json_t *errors)
{
    const json_t *list = json_object_get(nested, key);
    const json_t *v;
    char field[64], reason[128];
    size_t i;
    int n;

    if (list == NULL || json_is_null(list))
        return 0;
    n = snprintf(field, sizeof(field), "lofty.%s", key);
    if (n < 0 || (size_t)n >= sizeof(field))
        return 0;
    if (!json_is_array(list))
        return target_add_error(errors, field, "must be a list of text");
    json_array_foreach(list, i, v) {
        if (!json_is_string(v) || json_string_value(v)[0] == '\0')
            return target_add_error(errors, field, "must be a list of text");
        if (lofty_chars(json_string_value(v)) > max) {
            n = snprintf(reason, sizeof(reason),
                         "each must be at most %zu characters (Lofty would cut it)", max);
            return target_add_error(errors, field, n > 0 && (size_t)n < sizeof(reason) ? reason
                                                                                  : "too long");
        }
    }
    return 0;
}

/*
 * Checks lead by Lofty's documented limits: a first name to create a lead, names of at most 30
 * characters unless long_names is "note", phones of at most 20, tags of at most 64 and segments of
 * at most 30 characters, an integer bedroom count, and text where text is sent. Adds
 * {"field": "reason"} to errors; returns how many were added.
 */
static int lofty_validate(const void *state, enum target_action action, const json_t *lead,
                          json_t *errors)
{
    static const char *const names[] = {"first_name", "last_name"};
    const struct lofty *lf = state;
    const json_t *nested, *v;
    const char *s;
    int added = 0;
    size_t i;

    if (!lofty_supports(action))
        return target_add_error(errors, "action", "Lofty can only create and update leads");
    if (!json_is_object(lead))
        return target_add_error(errors, "lead", "must be an object");
    for (i = 0; i < N_ELEMENTS(lofty_text_fields); i++) {
        v = json_object_get(lead, lofty_text_fields[i]);
        if (v != NULL && !json_is_null(v) && !json_is_string(v))
            added += target_add_error(errors, lofty_text_fields[i], "must be text");
    }
    if (action == TARGET_CREATE && target_text(lead, "first_name") == NULL)
        added += target_add_error(errors, "first_name", "is required by Lofty");
    for (i = 0; i < N_ELEMENTS(names) && lf->long_names == LOFTY_NAMES_REFUSE; i++) {
        s = target_text(lead, names[i]);
        if (s != NULL && lofty_chars(s) > LOFTY_NAME_CHARS)
            added += target_add_error(errors, names[i],
                                 "must be at most 30 characters (Lofty would cut it)");
    }
    s = target_text(lead, "phone");
    if (s != NULL && lofty_chars(s) > LOFTY_PHONE_CHARS)
        added += target_add_error(errors, "phone", "must be at most 20 characters");
    v = json_object_get(lead, "property_bedrooms");
    if (v != NULL && !json_is_null(v) &&
        (!json_is_integer(v) || json_integer_value(v) < 0 ||
         json_integer_value(v) > LOFTY_MAX_BEDROOMS))
        added += target_add_error(errors, "property_bedrooms", "must be a whole number of bedrooms");
    nested = json_object_get(lead, "lofty");
    if (nested != NULL && !json_is_null(nested) && !json_is_object(nested)) {
        added += target_add_error(errors, "lofty", "must be an object");
    } else if (nested != NULL) {
        added += lofty_check_list(nested, "tags", LOFTY_TAG_CHARS, errors);
        added += lofty_check_list(nested, "segments", LOFTY_SEGMENT_CHARS, errors);
    }
    return added;
}

/* --- build ------------------------------------------------------------------------------------ */

static enum lb_err lofty_set_new(json_t *obj, const char *key, json_t *value)
{
    return json_object_set_new(obj, key, value) == 0 ? LB_OK : LB_ERR_NOMEM;
}

/* Sets key to the first max characters of value (cut on a UTF-8 boundary). */
static enum lb_err lofty_set_prefix(json_t *obj, const char *key, const char *value, size_t max)
{
    return lofty_set_new(obj, key, json_stringn(value, lofty_prefix_bytes(value, max)));
}

/* Appends the string tag (n bytes) to the array tags unless an equal tag is already there. */
static enum lb_err lofty_add_tag(json_t *tags, const char *tag, size_t n)
{
    const json_t *v;
    size_t i;

    json_array_foreach(tags, i, v) {
        if (json_string_length(v) == n && memcmp(json_string_value(v), tag, n) == 0)
            return LB_OK;
    }
    return json_array_append_new(tags, json_stringn(tag, n)) == 0 ? LB_OK : LB_ERR_NOMEM;
}

/*
 * Appends the attribution tags "name:value" for the lead's attribution fields, each cut (on a
 * UTF-8 boundary) to fit Lofty's 64 characters. host drops its scheme.
 */
static enum lb_err lofty_attribution_tags(const json_t *lead, json_t *tags)
{
    char tag[LOFTY_TAG_CHARS * 4 + 1];
    enum lb_err e = LB_OK;
    const char *s;
    size_t i, len;
    int n;

    for (i = 0; i < N_ELEMENTS(lofty_tag_attribution) && e == LB_OK; i++) {
        s = target_text(lead, lofty_tag_attribution[i]);
        if (s == NULL)
            continue;
        if (strcmp(lofty_tag_attribution[i], "host") == 0) {
            if (strncmp(s, "https://", 8) == 0)
                s += 8;
            else if (strncmp(s, "http://", 7) == 0)
                s += 7;
            if (*s == '\0')
                continue;
        }
        n = snprintf(tag, sizeof(tag), "%s:", lofty_tag_attribution[i]);
        if (n < 0 || (size_t)n >= sizeof(tag))
            return LB_ERR_INTERNAL;
        len = lofty_prefix_bytes(s, LOFTY_TAG_CHARS - (size_t)n);
        memcpy(tag + n, s, len);
        e = lofty_add_tag(tags, tag, (size_t)n + len);
    }
    return e;
}

/*
 * Sets "tags" (create: static tags, lofty.tags, attribution tags) or "tagsAdd" (update: lofty.tags
 * and attribution tags, so tags already on the lead stay) when there is any.
 */
static enum lb_err lofty_build_tags(const struct lofty *lf, enum target_action action,
                                    const json_t *lead, json_t *payload)
{
    const json_t *nested = json_object_get(lead, "lofty");
    const json_t *list = json_is_object(nested) ? json_object_get(nested, "tags") : NULL;
    json_t *tags = json_array();
    enum lb_err e = LB_OK;
    const json_t *v;
    size_t i;

    if (tags == NULL)
        return LB_ERR_NOMEM;
    for (i = 0; action == TARGET_CREATE && i < lf->n_tags && e == LB_OK; i++)
        e = lofty_add_tag(tags, lf->tags[i], strlen(lf->tags[i]));
    json_array_foreach(list, i, v) {
        if (e != LB_OK)
            break;
        e = lofty_add_tag(tags, json_string_value(v), json_string_length(v));
    }
    if (e == LB_OK && lf->attribution == LOFTY_ATTR_TAGS)
        e = lofty_attribution_tags(lead, tags);
    if (e == LB_OK && json_array_size(tags) > 0)
        e = json_object_set(payload, action == TARGET_CREATE ? "tags" : "tagsAdd", tags) == 0
                ? LB_OK
                : LB_ERR_NOMEM;
    json_decref(tags);
    return e;
}

/* Appends {attributeName: name, attributeType: "text", value} to list. */
static enum lb_err lofty_add_attribute(json_t *list, const char *name, const char *value)
{
    json_t *a = json_pack("{s:s, s:s, s:s}", "attributeName", name, "attributeType", "text",
                          "value", value);

    if (a == NULL)
        return LB_ERR_NOMEM;
    return json_array_append_new(list, a) == 0 ? LB_OK : LB_ERR_NOMEM;
}

/*
 * Sets "customAttributeList" (attribution "custom_attributes"): one text attribute per
 * attribution field present, plus leadbridge_id on creation.
 */
static enum lb_err lofty_build_attributes(const struct lofty *lf, enum target_action action,
                                          const json_t *lead, const char *submission_id,
                                          json_t *payload)
{
    json_t *list;
    enum lb_err e = LB_OK;
    const char *s;
    size_t i;

    if (lf->attribution != LOFTY_ATTR_CUSTOM)
        return LB_OK;
    list = json_array();
    if (list == NULL)
        return LB_ERR_NOMEM;
    for (i = 0; i < N_ELEMENTS(lofty_custom_attribution) && e == LB_OK; i++) {
        s = target_text(lead, lofty_custom_attribution[i]);
        if (s != NULL)
            e = lofty_add_attribute(list, lofty_custom_attribution[i], s);
    }
    if (e == LB_OK && action == TARGET_CREATE && submission_id != NULL && submission_id[0] != '\0')
        e = lofty_add_attribute(list, "leadbridge_id", submission_id);
    if (e == LB_OK && json_array_size(list) > 0)
        e = json_object_set(payload, "customAttributeList", list) == 0 ? LB_OK : LB_ERR_NOMEM;
    json_decref(list);
    return e;
}

/* Sets "property" from the lead's address and property fields, when any is present. */
static enum lb_err lofty_build_property(const json_t *lead, json_t *payload)
{
    static const struct {
        const char *canonical;
        const char *lofty;
    } fields[] = {
        {"postcode", "zipCode"}, {"city", "city"}, {"state", "state"},
        {"property_type", "propertyType"},
    };
    json_t *prop = json_object();
    const char *address = target_text(lead, "address");
    const char *address2 = target_text(lead, "address2");
    const json_t *beds = json_object_get(lead, "property_bedrooms");
    enum lb_err e = LB_OK;
    const char *s;
    size_t i;

    if (prop == NULL)
        return LB_ERR_NOMEM;
    if (address != NULL && address2 != NULL)
        e = lofty_set_new(prop, "streetAddress", json_sprintf("%s, %s", address, address2));
    else if (address != NULL || address2 != NULL)
        e = lofty_set_new(prop, "streetAddress", json_string(address ? address : address2));
    for (i = 0; i < N_ELEMENTS(fields) && e == LB_OK; i++) {
        s = target_text(lead, fields[i].canonical);
        if (s != NULL)
            e = lofty_set_new(prop, fields[i].lofty, json_string(s));
    }
    if (e == LB_OK && json_is_integer(beds))
        e = lofty_set_new(prop, "bedrooms", json_integer(json_integer_value(beds)));
    if (e == LB_OK && json_object_size(prop) > 0)
        e = json_object_set(payload, "property", prop) == 0 ? LB_OK : LB_ERR_NOMEM;
    json_decref(prop);
    return e;
}

/*
 * Sets firstName/lastName, cut to 30 characters in "note" mode (the full names are appended to
 * note as "Full first name: ..." lines). In "refuse" mode a long name is LB_ERR_INVALID_FIELDS.
 */
static enum lb_err lofty_build_names(const struct lofty *lf, const json_t *lead, json_t *payload,
                                     struct buf *note)
{
    static const struct {
        const char *canonical;
        const char *lofty;
        const char *label;
    } names[] = {
        {"first_name", "firstName", "Full first name"},
        {"last_name", "lastName", "Full last name"},
    };
    enum lb_err e = LB_OK;
    const char *s;
    size_t i;

    for (i = 0; i < N_ELEMENTS(names) && e == LB_OK; i++) {
        s = target_text(lead, names[i].canonical);
        if (s == NULL)
            continue;
        if (lofty_chars(s) > LOFTY_NAME_CHARS) {
            if (lf->long_names != LOFTY_NAMES_NOTE)
                return LB_ERR_INVALID_FIELDS;
            e = buf_printf(note, "%s: %s\n", names[i].label, s);
        }
        if (e == LB_OK)
            e = lofty_set_prefix(payload, names[i].lofty, s, LOFTY_NAME_CHARS);
    }
    return e;
}

/*
 * Sets "content", the note: the message, then the full-name lines from note, then
 * "leadbridge id: <submission_id>". On creation the note is always sent; on update only when the
 * lead has a message or a cut name.
 */
static enum lb_err lofty_build_content(enum target_action action, const json_t *lead,
                                       const char *submission_id, struct buf *note,
                                       json_t *payload)
{
    const char *message = target_text(lead, "message");
    struct buf content;
    enum lb_err e = LB_OK;

    if (action == TARGET_UPDATE && message == NULL && note->len == 0)
        return LB_OK;
    buf_init(&content, LOFTY_MAX_CONTENT);
    if (message != NULL) {
        e = buf_puts(&content, message);
        if (e == LB_OK)
            e = buf_puts(&content, "\n\n");
    }
    if (e == LB_OK && note->len > 0)
        e = buf_append(&content, note->data, note->len);
    if (e == LB_OK && submission_id != NULL && submission_id[0] != '\0')
        e = buf_printf(&content, "leadbridge id: %s\n", submission_id);
    while (e == LB_OK && content.len > 0 && content.data[content.len - 1] == '\n')
        content.data[--content.len] = '\0';
    if (e == LB_OK && content.len > 0)
        e = lofty_set_new(payload, "content", json_stringn(content.data, content.len));
    buf_free(&content);
    return e;
}

/* The lead's leadTypes id (Other when type is absent or unknown). */
static int lofty_lead_type(const json_t *lead)
{
    const char *type = target_text(lead, "type");
    size_t i;

    for (i = 0; type != NULL && i < N_ELEMENTS(lofty_lead_types); i++)
        if (strcmp(type, lofty_lead_types[i].type) == 0)
            return lofty_lead_types[i].id;
    return LOFTY_TYPE_OTHER;
}

/*
 * The payload for action (a new object in *out). Creation sends the whole lead with defaults
 * (source, static tags, leadTypes Other); update sends only what the lead holds.
 */
static enum lb_err lofty_payload(const struct lofty *lf, enum target_action action,
                                 const json_t *lead, const char *submission_id, json_t **out)
{
    const json_t *nested = json_object_get(lead, "lofty");
    const json_t *segments = json_is_object(nested) ? json_object_get(nested, "segments") : NULL;
    json_t *payload = json_object();
    struct buf note;
    enum lb_err e = LB_OK;
    const char *s;

    *out = NULL;
    buf_init(&note, LOFTY_MAX_CONTENT);
    if (payload == NULL)
        return LB_ERR_NOMEM;
    e = lofty_build_names(lf, lead, payload, &note);
    s = target_text(lead, "email");
    if (e == LB_OK && s != NULL)
        e = lofty_set_new(payload, "emails", json_pack("[s]", s));
    s = target_text(lead, "phone");
    if (e == LB_OK && s != NULL && lofty_chars(s) > LOFTY_PHONE_CHARS)
        e = LB_ERR_INVALID_FIELDS;
    else if (e == LB_OK && s != NULL)
        e = lofty_set_new(payload, "phones", json_pack("[s]", s));
    if (e == LB_OK && (action == TARGET_CREATE || target_present(lead, "type")))
        e = lofty_set_new(payload, "leadTypes", json_pack("[i]", lofty_lead_type(lead)));
    s = target_text(lead, "source");
    if (s == NULL && action == TARGET_CREATE)
        s = lf->source;
    if (e == LB_OK && s != NULL)
        e = lofty_set_new(payload, "source", json_string(s));
    if (e == LB_OK)
        e = lofty_build_tags(lf, action, lead, payload);
    if (e == LB_OK && json_is_array(segments) && json_array_size(segments) > 0)
        e = lofty_set_new(payload, "segments", json_deep_copy(segments));
    if (e == LB_OK)
        e = lofty_build_property(lead, payload);
    /* Tags hold 64 characters: in tags mode the long attribution values go in the note, whole. */
    for (size_t i = 0; e == LB_OK && lf->attribution == LOFTY_ATTR_TAGS &&
                       i < N_ELEMENTS(lofty_note_attribution); i++) {
        s = target_text(lead, lofty_note_attribution[i]);
        if (s != NULL)
            e = buf_printf(&note, "%s: %s\n", lofty_note_attribution[i], s);
    }
    if (e == LB_OK)
        e = lofty_build_content(action, lead, submission_id, &note, payload);
    if (e == LB_OK)
        e = lofty_build_attributes(lf, action, lead, submission_id, payload);
    buf_free(&note);
    if (e != LB_OK) {
        json_decref(payload);
        return e;
    }
    *out = payload;
    return LB_OK;
}

/*
 * Builds POST {base}/v1.0/leads (create) or PUT {base}/v1.0/leads/{lead_id} (update) into *call
 * (cleared first; left empty on failure). The lead is checked again as in validate: anything Lofty
 * would cut silently is LB_ERR_INVALID_FIELDS; a lead_id that is not 1..19 digits within int64 is
 * LB_ERR_BAD_REQUEST.
 */
static enum lb_err lofty_build(const void *state, enum target_action action, const json_t *lead,
                               const char *lead_id, const char *submission_id,
                               struct http_call *call)
{
    const struct lofty *lf = state;
    json_t *payload = NULL, *errors = NULL;
    char auth[1024];
    enum lb_err e = LB_OK;
    int n;

    memset(call, 0, sizeof(*call));
    if (!lofty_supports(action) || !json_is_object(lead))
        return LB_ERR_BAD_REQUEST;
    if (action == TARGET_UPDATE && !lofty_lead_id_valid(lead_id))
        return LB_ERR_BAD_REQUEST;
    errors = json_object();
    if (errors == NULL)
        return LB_ERR_NOMEM;
    if (lofty_validate(lf, action, lead, errors) > 0 || json_object_size(errors) > 0) {
        e = LB_ERR_INVALID_FIELDS;
        goto out;
    }
    e = lofty_payload(lf, action, lead, submission_id, &payload);
    if (e != LB_OK)
        goto out;
    call->connect_timeout_ms = lf->api.connect_timeout_ms;
    call->timeout_ms = lf->api.timeout_ms;
    if (action == TARGET_CREATE) {
        call->method = "POST";
        n = snprintf(call->url, sizeof(call->url), "%s/v1.0/leads", lf->api.base_url);
    } else {
        call->method = "PUT";
        n = snprintf(call->url, sizeof(call->url), "%s/v1.0/leads/%s", lf->api.base_url, lead_id);
    }
    if (n < 0 || (size_t)n >= sizeof(call->url)) {
        e = LB_ERR_INTERNAL;
        goto out;
    }
    n = snprintf(auth, sizeof(auth), "%s %s", lofty_auth_schemes[lf->api.auth], lf->api.credentials[0]);
    if (n < 0 || (size_t)n >= sizeof(auth)) {
        e = LB_ERR_INTERNAL;
        goto out;
    }
    e = http_call_add_header(call, "Content-Type", "application/json");
    if (e == LB_OK)
        e = http_call_add_header(call, "Accept", "application/json");
    if (e == LB_OK)
        e = http_call_add_header(call, "Authorization", auth);
    if (e != LB_OK)
        goto out;
    e = http_call_set_json(call, payload, JSON_COMPACT, LOFTY_MAX_BODY);
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
 * Sets result->lead_id from body's "leadId": a JSON integer (exact: json_int_t is long long, no
 * double is involved) or a string of digits. A real number is refused: it may already have lost
 * digits. Returns false when there is no usable id.
 */
static bool lofty_take_id(const json_t *body, struct target_result *result)
{
    const json_t *id = json_object_get(body, "leadId");
    int n;

    if (json_is_integer(id)) {
        if (json_integer_value(id) < 0)
            return false;
        n = snprintf(result->lead_id, sizeof(result->lead_id), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(id));
        return n > 0 && (size_t)n < sizeof(result->lead_id);
    }
    if (json_is_string(id) && lofty_lead_id_valid(json_string_value(id))) {
        memcpy(result->lead_id, json_string_value(id), json_string_length(id) + 1);
        return true;
    }
    return false;
}

/*
 * Classifies Lofty's answer: 2xx is taken (with the leadId when the body has one); otherwise
 * {"code", "message"} becomes the reason "code: message" and the status the outcome (400, 401
 * and 404 permanent, 429 transient).
 */
static void lofty_classify(const void *state, enum target_action action,
                           const struct http_reply *reply, struct target_result *result)
{
    json_t *body = NULL;
    const json_t *code;
    const char *message = NULL;
    char clean[LOFTY_REASON_CAP + 1], code_text[64], joined[LOFTY_REASON_CAP * 2 + 8];
    int n;

    (void)state;
    result->http_status = reply->status;
    result->lead_id[0] = '\0';
    if (reply->status == 0) {
        result->outcome = DELIVERY_TRANSIENT;
        target_clean_text(clean, sizeof(clean), reply->transport_message, LOFTY_REASON_CAP);
        lofty_reason(result, "Lofty unreachable: %s", clean);
        return;
    }
    if (reply->body != NULL)
        body = json_loadb(reply->body, reply->body_len, 0, NULL);
    if (reply->status >= 200 && reply->status <= 299) {
        result->outcome = DELIVERY_OK;
        if (!lofty_take_id(body, result)) {
            result->lead_id[0] = '\0';
            if (action == TARGET_CREATE)
                lofty_reason(result, "Lofty took the lead (HTTP %ld) but its answer held no "
                                     "usable leadId", reply->status);
        }
        goto out;
    }
    result->outcome = target_outcome_for_status(reply->status);
    if (reply->status == 400 || reply->status == 401 || reply->status == 404)
        result->outcome = DELIVERY_PERMANENT;
    else if (reply->status == 429)
        result->outcome = DELIVERY_TRANSIENT;
    code_text[0] = '\0';
    code = json_object_get(body, "code");
    if (json_is_string(code))
        target_clean_text(code_text, sizeof(code_text), json_string_value(code),
                         sizeof(code_text) - 1);
    else if (json_is_integer(code))
        n = snprintf(code_text, sizeof(code_text), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(code));
    message = target_text(body, "message");
    if (code_text[0] != '\0' && message != NULL)
        n = snprintf(joined, sizeof(joined), "%s: %s", code_text, message);
    else if (code_text[0] != '\0' || message != NULL)
        n = snprintf(joined, sizeof(joined), "%s", message != NULL ? message : code_text);
    else
        n = snprintf(joined, sizeof(joined), "Lofty answered HTTP %ld", reply->status);
    if (n < 0)
        joined[0] = '\0';
    target_clean_text(clean, sizeof(clean), joined, LOFTY_REASON_CAP);
    lofty_reason(result, "%s", clean);
out:
    json_decref(body);
}

/*
 * See struct target_ops.build_lookup: GET /v1.0/leads?email= (or ?phone=). Our create's note carries
 * "leadbridge id: <submission id>" (and the attribute leadbridge_id); the match reads either.
 * Lofty persists asynchronously, so a lead made a moment ago may not be found yet: the caller
 * waits a while after an interrupted attempt before asking (see main.c).
 */
static enum lb_err lofty_build_lookup(const void *state, const json_t *lead,
                                      struct http_call *call)
{
    const struct lofty *lf = state;
    char prefix[1024], auth[1024];
    enum lb_err e;
    int n;

    memset(call, 0, sizeof(*call));
    n = snprintf(prefix, sizeof(prefix), "%s/v1.0/leads", lf->api.base_url);
    if (n < 0 || (size_t)n >= sizeof(prefix))
        return LB_ERR_INTERNAL;
    n = snprintf(auth, sizeof(auth), "%s %s", lofty_auth_schemes[lf->api.auth], lf->api.credentials[0]);
    if (n < 0 || (size_t)n >= sizeof(auth))
        return LB_ERR_INTERNAL;
    e = target_lookup_url(call, prefix, lead);
    if (e == LB_OK)
        e = http_call_add_header(call, "Accept", "application/json");
    if (e == LB_OK)
        e = http_call_add_header(call, "Authorization", auth);
    call->connect_timeout_ms = lf->api.connect_timeout_ms;
    call->timeout_ms = lf->api.timeout_ms;
    if (e != LB_OK)
        http_call_free(call);
    return e;
}

/*
 * See struct target_ops.lookup_settle: a request cut short may run up to the timeout, and a lead
 * shows in a search only some seconds after it was made (asynchronous persistence).
 */
static long long lofty_lookup_settle(const void *state)
{
    const struct lofty *lf = state;

    return (lf->api.connect_timeout_ms + lf->api.timeout_ms) / 1000 + 5;
}

const struct target_ops target_lofty_ops = {
    .type = "lofty",
    .configure = lofty_configure,
    .free = lofty_free,
    .supports = lofty_supports,
    .validate = lofty_validate,
    .build = lofty_build,
    .classify = lofty_classify,
    .build_lookup = lofty_build_lookup,
    .lookup_settle = lofty_lookup_settle,
};
