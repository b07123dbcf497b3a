/*
 * fuzz_config.c: the configuration file (src/config.c, every target's configure) and the field
 * rules it compiles (src/rules_compile.c), then applied to a submission.
 *
 * Input: the config's JSON text, then optionally a NUL byte and a urlencoded submission (a
 * default contact-form submission when there is none). When the config loads, every form's rules
 * run on the submission and a fixed attribution. Properties: config_load_text returns a config or
 * at least one diagnostic, never both silent; rules_apply returns LB_OK (or LB_ERR_NOMEM) with an
 * object lead, and errors NULL or an object of strings.
 */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "diag.h"
#include "err.h"
#include "parse.h"
#include "rules.h"

static const char fuzz_default_fields[] =
    "name=Ada+Lovelace&email=ada%40example.com&phone=07700+900123&postcode=de1+1jx&"
    "address=1+Example+Street&bedrooms=4&message=Hello&consent=yes&utm_source=fuzz";

static void fuzz_check_rules(const struct form *f, const json_t *fields, const json_t *attr)
{
    json_t *lead = NULL, *errors = NULL;
    const char *key;
    json_t *v;
    enum lb_err rc;

    if (f->rules == NULL)
        return;
    rc = rules_apply(f->rules, fields, attr, &lead, &errors);
    if (rc == LB_ERR_NOMEM)
        return;
    if (rc != LB_OK)
        fuzz_fail("rules_apply returned something other than LB_OK or LB_ERR_NOMEM");
    if (!json_is_object(lead))
        fuzz_fail("rules_apply gave no lead object");
    if (errors != NULL) {
        if (!json_is_object(errors))
            fuzz_fail("rules_apply's errors are not an object");
        json_object_foreach(errors, key, v) {
            if (!json_is_string(v))
                fuzz_fail("a rules error is not a string");
        }
    }
    json_decref(lead);
    json_decref(errors);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const char *nul = memchr(data, '\0', size);
    size_t text_len = nul != NULL ? (size_t)(nul - text) : size;
    const char *fields_s = nul != NULL ? nul + 1 : fuzz_default_fields;
    size_t fields_len = nul != NULL ? size - text_len - 1 : sizeof(fuzz_default_fields) - 1;
    struct diag d;
    struct config *c;
    struct lb_error err;
    json_t *fields, *attr;
    size_t i;

    diag_init(&d, "fuzz.json", text, text_len);
    c = config_load_text("fuzz.json", text, text_len, &d);
    if (c == NULL && d.count == 0)
        fuzz_fail("config_load_text refused a config without saying why");
    if (c != NULL) {
        fields = json_object();
        attr = json_pack("{s:s, s:s, s:s}", "utm_source", "google", "host",
                         "https://www.example.com", "ip", "203.0.113.9");
        memset(&err, 0, sizeof(err));
        if (fields != NULL && attr != NULL &&
            parse_urlencoded(fields_s, fields_len, &parse_default_limits, fields, &err) == LB_OK) {
            for (i = 0; i < c->n_forms; i++)
                fuzz_check_rules(&c->forms[i], fields, attr);
        }
        json_decref(fields);
        json_decref(attr);
        (void)config_find_form(c, "/lead/contact");
        config_free(c);
    }
    diag_free(&d);
    rules_thread_cleanup();
    return 0;
}
