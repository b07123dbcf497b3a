/*
 * visitor.h: what a form shows the visitor besides its fields: consent, number display and the
 * estimate's disclaimer, per form ("consent" and "display" in the form's config).
 *
 * Consent: a form with a "consent" block requires its checkbox (unless "required": false) and
 * may offer a separate marketing opt-in. What was agreed to (the privacy policy URL) and when
 * goes with the lead, in meta, and gdpr_checkbox is set; a missing required consent is a
 * per-field error under the checkbox's own name, and the lead is refused locally.
 * Display: the locale and currency the numbers are written in (en-GB, GBP by default) and the
 * "automated estimate" disclaimer, for the widget (GET <form path>/settings) and for the
 * numbers the no-JavaScript result page prints. Pure: no I/O.
 */
#ifndef LB_VISITOR_H
#define LB_VISITOR_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "diag.h"
#include "err.h"

struct visitor_form {
    bool consent;            /* a "consent" block is configured */
    bool consent_required;
    char *consent_field;     /* the checkbox's name (default "consent") */
    char *privacy_url;       /* the privacy policy the checkbox links to */
    char *consent_message;   /* the error when it is not ticked */
    char *marketing_field;   /* the optional opt-in's name; NULL: none */
    char *locale;            /* BCP 47, default "en-GB" */
    char *currency;          /* ISO 4217, default "GBP" */
    char *disclaimer;        /* shown with every estimate */
};

/* The form keys visitor_compile reads (NULL-terminated), for the config's unknown-key check. */
extern const char *const visitor_form_keys[];

/*
 * Reads "consent" and "display" of a form object (borrowed) at path. Returns a new struct with
 * the defaults filled in (free with visitor_free), mistakes in d; NULL only when out of memory.
 */
struct visitor_form *visitor_compile(const json_t *form, const char *path, struct diag *d);
void visitor_free(struct visitor_form *v);

/*
 * Checks and records consent for one submission (fields borrowed; lead and *errors changed).
 * Ticked: lead.gdpr_checkbox = true and lead.meta.consent = "privacy policy <url> agreed
 * <UTC time>"; with an opt-in, lead.meta.marketing = "yes <UTC time>" or "no". Not ticked and
 * required: (*errors)[consent_field] = the message (*errors is created when NULL). now is the
 * Unix time. A form without a consent block is left alone. Returns LB_ERR_NOMEM only.
 */
enum lb_err visitor_consent_apply(const struct visitor_form *v, const json_t *fields,
                                  json_t *lead, json_t **errors, long long now);

/*
 * Writes value rounded to a whole unit as money in locale and currency ("£357,300" for en-GB
 * GBP, "357.300 €" for de-DE EUR, ...; unknown currencies as "CHF 357,300"). Returns out.
 */
const char *visitor_money(const char *locale, const char *currency, double value, char *out,
                          size_t size);

/* The public settings the widget reads: a new object {locale, currency, disclaimer, consent}. */
json_t *visitor_settings(const struct visitor_form *v, const char *form_name);

#endif
