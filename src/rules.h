/*
 * rules.h: the field rules that turn a form's submitted fields into the canonical lead.
 *
 * Pure: data in, lead and per-field errors out; no I/O. Rules are compiled once at load (PCRE2,
 * JIT where available) and are read-only afterwards, so one ruleset serves every thread. Match
 * data is per thread. The rule language is documented in leadbridge.conf(5) and the README.
 */
#ifndef LB_RULES_H
#define LB_RULES_H

#include <jansson.h>

#include "diag.h"
#include "err.h"

struct ruleset;

/*
 * Compiles the rule keys of a form object (borrowed): "rules", "unused_fields" and "attribution".
 * path is the form's JSON path ("forms.contact"). Every source path is parsed and every regex
 * compiled here. Returns a new ruleset (free with rules_free()), or NULL with the mistakes in d
 * (each at its JSON path, e.g. forms.contact.rules[2].match).
 */
struct ruleset *rules_compile(const json_t *form, const char *path, struct diag *d);

/* The form keys rules_compile reads (NULL-terminated), for the config's unknown-key check. */
extern const char *const rules_form_keys[];

/*
 * Applies rs to the submitted fields and the attribution (both borrowed; either may be NULL). On
 * LB_OK *lead is a new object (the canonical lead, holding the valid fields) and *errors is NULL
 * when every field is valid or a new object {"field": "reason a person understands"} otherwise
 * (first error per field; never the submitted value). Thread-safe for a shared rs: the only state
 * is this thread's PCRE2 match data. Returns LB_ERR_NOMEM only.
 */
enum lb_err rules_apply(const struct ruleset *rs, const json_t *fields, const json_t *attribution,
                        json_t **lead, json_t **errors);

/*
 * One source path outside a rule (a form's event id, a host field): compiled with the same syntax
 * as "from". rules_source_compile reports a bad path under path and returns NULL; free with
 * rules_source_free (NULL is a no-op). rules_source_get returns the value in fields (borrowed), or
 * NULL; "attribution." and "lead." paths read nothing here.
 */
struct rules_source;
struct rules_source *rules_source_compile(const char *text, const char *path, struct diag *d);
const json_t *rules_source_get(const struct rules_source *s, const json_t *fields);
void rules_source_free(struct rules_source *s);

/*
 * The errors of rules_apply (borrowed) keyed by the submitted input each field's value came from
 * (its rule's "from", following "lead.x" sources back to the rule that wrote x), so a page can
 * put each message under the box the visitor filled in: {"name": "please give your full name"}.
 * A field no input feeds keeps its own name; the first message per input wins. Returns a new
 * object, or NULL when out of memory.
 */
json_t *rules_error_inputs(const struct ruleset *rs, const json_t *fields, const json_t *errors);

/* Frees rs; NULL is a no-op. */
void rules_free(struct ruleset *rs);
/* Frees this thread's match data; call before a worker thread exits. */
void rules_thread_cleanup(void);

#endif
