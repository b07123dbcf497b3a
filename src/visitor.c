/*
 * visitor.c: consent, number display and the disclaimer of a form (see visitor.h).
 */
#include "visitor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conf.h"

#define VISITOR_PATH_SIZE 512

const char *const visitor_form_keys[] = {"consent", "display", NULL};

static const char *const consent_keys[] = {"required", "field", "privacy_url", "message",
                                           "marketing_field", NULL};
static const char *const display_keys[] = {"locale", "currency", "disclaimer", NULL};

#define VISITOR_DISCLAIMER                                                                     \
    "This is an automated estimate from recent sales and listings nearby, not a formal "      \
    "valuation. An agent will confirm it after a visit."

/* Currency symbols we write ourselves; any other code is written before the number. */
static const struct {
    const char *code;
    const char *symbol;
} currencies[] = {{"GBP", "\xc2\xa3"}, {"EUR", "\xe2\x82\xac"}, {"USD", "$"},
                  {"AUD", "A$"},       {"CAD", "CA$"},          {"NZD", "NZ$"}};

/* How a language groups digits and where the symbol goes (the rest write English style). */
static const struct {
    const char *lang;
    const char *group;
    bool symbol_after;
} locales[] = {{"de", ".", true},           {"es", ".", true},  {"it", ".", true},
               {"pt", ".", true},           {"nl", ".", false}, {"da", ".", true},
               {"fr", "\xe2\x80\xaf", true}, {"en", ",", false}};

static char *dup_or(const char *s, const char *dflt)
{
    return strdup(s != NULL ? s : dflt);
}

struct visitor_form *visitor_compile(const json_t *form, const char *path, struct diag *d)
{
    struct visitor_form *v = calloc(1, sizeof(*v));
    const json_t *consent = json_object_get(form, "consent");
    const json_t *display = json_object_get(form, "display");
    char p[VISITOR_PATH_SIZE];
    const char *s;

    if (v == NULL)
        return NULL;
    conf_path(p, sizeof(p), path, "consent");
    if (consent != NULL && !json_is_object(consent)) {
        diag_add(d, p, "must be an object");
    } else if (consent != NULL) {
        conf_check_keys(consent, p, consent_keys, d);
        v->consent = true;
        v->consent_required = conf_bool(consent, "required", p, true, d);
        v->consent_field = dup_or(conf_string(consent, "field", p, NULL, false, d), "consent");
        s = conf_string(consent, "privacy_url", p, NULL, true, d);
        if (s != NULL && strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0 &&
            s[0] != '/') {
            char kp[VISITOR_PATH_SIZE];

            conf_path(kp, sizeof(kp), p, "privacy_url");
            diag_add(d, kp, "must be an http(s) URL or a path on the site");
        }
        v->privacy_url = dup_or(s, "");
        v->consent_message =
            dup_or(conf_string(consent, "message", p, NULL, false, d),
                   "Tick the box to agree to the privacy policy so we can contact you");
        s = conf_string(consent, "marketing_field", p, NULL, false, d);
        v->marketing_field = s != NULL ? strdup(s) : NULL;
    }
    conf_path(p, sizeof(p), path, "display");
    if (display != NULL && !json_is_object(display)) {
        diag_add(d, p, "must be an object");
        display = NULL;
    }
    if (display != NULL)
        conf_check_keys(display, p, display_keys, d);
    v->locale = dup_or(conf_string(display, "locale", p, NULL, false, d), "en-GB");
    v->currency = dup_or(conf_string(display, "currency", p, NULL, false, d), "GBP");
    v->disclaimer = dup_or(conf_string(display, "disclaimer", p, NULL, false, d),
                           VISITOR_DISCLAIMER);
    if (strlen(v->currency) != 3) {
        char kp[VISITOR_PATH_SIZE];

        conf_path(kp, sizeof(kp), p, "currency");
        diag_add(d, kp, "must be a three-letter ISO 4217 code such as \"GBP\"");
    }
    return v;
}

void visitor_free(struct visitor_form *v)
{
    if (v == NULL)
        return;
    free(v->consent_field);
    free(v->privacy_url);
    free(v->consent_message);
    free(v->marketing_field);
    free(v->locale);
    free(v->currency);
    free(v->disclaimer);
    free(v);
}

/* Whether a submitted checkbox value means "ticked". */
static bool ticked(const json_t *v)
{
    static const char *const yes[] = {"on", "yes", "true", "1", "y"};
    const char *s;

    if (json_is_true(v))
        return true;
    if (json_is_integer(v))
        return json_integer_value(v) == 1;
    if (json_is_array(v))
        v = json_array_get(v, json_array_size(v) > 0 ? json_array_size(v) - 1 : 0);
    s = json_string_value(v);
    for (size_t i = 0; s != NULL && i < sizeof(yes) / sizeof(yes[0]); i++)
        if (strcasecmp(s, yes[i]) == 0)
            return true;
    return false;
}

/* lead.meta (created as an object when missing); NULL when it is not an object or no memory. */
static json_t *lead_meta(json_t *lead)
{
    json_t *meta = json_object_get(lead, "meta");

    if (meta == NULL) {
        meta = json_object();
        if (meta == NULL || json_object_set_new(lead, "meta", meta) != 0)
            return NULL;
    }
    return json_is_object(meta) ? meta : NULL;
}

enum lb_err visitor_consent_apply(const struct visitor_form *v, const json_t *fields,
                                  json_t *lead, json_t **errors, long long now)
{
    char when[32], text[600];
    time_t t = (time_t)now;
    struct tm tm;
    json_t *meta;

    if (v == NULL || !v->consent)
        return LB_OK;
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!ticked(json_object_get(fields, v->consent_field))) {
        if (!v->consent_required)
            return LB_OK;
        if (*errors == NULL)
            *errors = json_object();
        if (*errors == NULL ||
            json_object_set_new(*errors, v->consent_field, json_string(v->consent_message)) != 0)
            return LB_ERR_NOMEM;
        return LB_OK;
    }
    meta = lead_meta(lead);
    if (json_object_set_new(lead, "gdpr_checkbox", json_true()) != 0)
        return LB_ERR_NOMEM;
    if (meta == NULL)
        return LB_OK;
    snprintf(text, sizeof(text), "privacy policy %.500s agreed %s", v->privacy_url, when);
    if (json_object_set_new(meta, "consent", json_string(text)) != 0)
        return LB_ERR_NOMEM;
    if (v->marketing_field != NULL) {
        bool yes = ticked(json_object_get(fields, v->marketing_field));

        snprintf(text, sizeof(text), "yes %s", when);
        json_object_del(meta, v->marketing_field);
        if (json_object_set_new(meta, "marketing", json_string(yes ? text : "no")) != 0)
            return LB_ERR_NOMEM;
    }
    return LB_OK;
}

const char *visitor_money(const char *locale, const char *currency, double value, char *out,
                          size_t size)
{
    const char *group = ",", *symbol = NULL;
    bool after = false;
    char digits[32], grouped[96];
    unsigned long long n;
    size_t len, i, g = 0;
    bool negative = value < 0;

    for (i = 0; locale != NULL && i < sizeof(locales) / sizeof(locales[0]); i++)
        if (strncasecmp(locale, locales[i].lang, 2) == 0 &&
            (locale[2] == '\0' || locale[2] == '-' || locale[2] == '_')) {
            group = locales[i].group;
            after = locales[i].symbol_after;
            break;
        }
    for (i = 0; currency != NULL && i < sizeof(currencies) / sizeof(currencies[0]); i++)
        if (strcasecmp(currency, currencies[i].code) == 0)
            symbol = currencies[i].symbol;
    value = negative ? -value : value;
    n = value < 1e18 ? (unsigned long long)(value + 0.5) : 999999999999999999ULL;
    len = (size_t)snprintf(digits, sizeof(digits), "%llu", n);
    for (i = 0; i < len && g + 4 < sizeof(grouped); i++) {
        if (i > 0 && (len - i) % 3 == 0) {
            size_t gl = strlen(group);

            memcpy(grouped + g, group, gl);
            g += gl;
        }
        grouped[g++] = digits[i];
    }
    grouped[g] = '\0';
    if (symbol == NULL)
        snprintf(out, size, "%s%.3s\xc2\xa0%s", negative ? "-" : "",
                 currency != NULL ? currency : "", grouped);
    else if (after)
        snprintf(out, size, "%s%s\xc2\xa0%s", negative ? "-" : "", grouped, symbol);
    else
        snprintf(out, size, "%s%s%s", negative ? "-" : "", symbol, grouped);
    return out;
}

json_t *visitor_settings(const struct visitor_form *v, const char *form_name)
{
    json_t *consent = json_null();

    if (v->consent)
        consent = json_pack("{s:b,s:s,s:s,s:s?}", "required", v->consent_required, "field",
                            v->consent_field, "privacy_url", v->privacy_url, "marketing_field",
                            v->marketing_field);
    return json_pack("{s:s,s:s,s:s,s:s,s:o*}", "form", form_name, "locale", v->locale,
                     "currency", v->currency, "disclaimer", v->disclaimer, "consent", consent);
}
