/*
 * test_rules.c: unit tests for the field rules engine (src/rules_compile.c, src/rules_apply.c).
 *
 * Data-driven first: every directory under tests/data/rules/ is a case.
 *  - <case>/form.json (a form object), fields.json, optional attribution.json, lead.json (the
 *    expected lead) and optional errors.json (the expected per-field errors; absent: none).
 *  - bad_<case>/form.json (a whole {"forms": {"t": {...}}} document) and expected_error: every
 *    non-empty line must appear in the diagnostics of compiling forms.t, so a line holds the JSON
 *    path, the line:column or the words of the message.
 * Then direct tests for what data files cannot show: runaway regexes, oversized values, threads,
 * and the exported key list.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "diag.h"
#include "rules.h"

#define RULES_DIR TEST_DATA_DIR "/rules"

/* Reads a whole file; NULL when it does not exist. Caller frees. */
static char *read_text(const char *dir, const char *name, size_t *len)
{
    char path[1024];
    FILE *f;
    char *text = NULL;
    long size;

    cr_assert(snprintf(path, sizeof(path), "%s/%s", dir, name) < (int)sizeof(path));
    f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    cr_assert(fseek(f, 0, SEEK_END) == 0);
    size = ftell(f);
    cr_assert(size >= 0);
    cr_assert(fseek(f, 0, SEEK_SET) == 0);
    text = malloc((size_t)size + 1);
    cr_assert_not_null(text);
    cr_assert(fread(text, 1, (size_t)size, f) == (size_t)size);
    text[size] = '\0';
    fclose(f);
    if (len != NULL)
        *len = (size_t)size;
    return text;
}

static json_t *read_json(const char *dir, const char *name)
{
    char *text = read_text(dir, name, NULL);
    json_error_t err;
    json_t *v;

    if (text == NULL)
        return NULL;
    v = json_loads(text, 0, &err);
    cr_assert_not_null(v, "%s/%s:%d: %s", dir, name, err.line, err.text);
    free(text);
    return v;
}

static char *all_messages(const struct diag *d)
{
    size_t i, len = 1, used = 0, n;
    char *s;

    for (i = 0; i < d->count; i++)
        len += strlen(d->messages[i]) + 1;
    s = calloc(1, len);
    cr_assert_not_null(s);
    for (i = 0; i < d->count; i++) {
        n = strlen(d->messages[i]);
        memcpy(s + used, d->messages[i], n);
        s[used + n] = '\n';
        used += n + 1;
    }
    return s;
}

/* Sorted names of the case directories, golden (bad == false) or bad_*. */
static size_t list_cases(bool bad, char names[][128], size_t max)
{
    DIR *dir = opendir(RULES_DIR);
    struct dirent *de;
    size_t n = 0, i, j;
    char tmp[128];

    cr_assert_not_null(dir, "cannot open %s", RULES_DIR);
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.' || (strncmp(de->d_name, "bad_", 4) == 0) != bad)
            continue;
        cr_assert(n < max && strlen(de->d_name) < 128);
        memcpy(names[n++], de->d_name, strlen(de->d_name) + 1);
    }
    closedir(dir);
    for (i = 1; i < n; i++)
        for (j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            memcpy(tmp, names[j], sizeof(tmp));
            memcpy(names[j], names[j - 1], sizeof(tmp));
            memcpy(names[j - 1], tmp, sizeof(tmp));
        }
    return n;
}

static void run_golden(const char *name)
{
    char dir[512], *form_text, *msgs, *got_s, *want_s;
    size_t form_len;
    json_t *form, *fields, *attribution, *want_lead, *want_errors, *lead, *errors;
    json_error_t jerr;
    struct diag d;
    struct ruleset *rs;

    snprintf(dir, sizeof(dir), "%s/%s", RULES_DIR, name);
    form_text = read_text(dir, "form.json", &form_len);
    cr_assert_not_null(form_text, "%s: no form.json", name);
    form = json_loads(form_text, 0, &jerr);
    cr_assert_not_null(form, "%s/form.json:%d: %s", name, jerr.line, jerr.text);
    fields = read_json(dir, "fields.json");
    attribution = read_json(dir, "attribution.json");
    want_lead = read_json(dir, "lead.json");
    want_errors = read_json(dir, "errors.json");
    cr_assert_not_null(fields, "%s: no fields.json", name);
    cr_assert_not_null(want_lead, "%s: no lead.json", name);

    diag_init(&d, "form.json", form_text, form_len);
    rs = rules_compile(form, "form", &d);
    msgs = all_messages(&d);
    cr_assert_not_null(rs, "%s: does not compile:\n%s", name, msgs);
    cr_assert_eq(d.count, 0, "%s: %s", name, msgs);

    cr_assert_eq(rules_apply(rs, fields, attribution, &lead, &errors), LB_OK, "%s", name);
    cr_assert_not_null(lead);
    got_s = json_dumps(lead, JSON_SORT_KEYS);
    want_s = json_dumps(want_lead, JSON_SORT_KEYS);
    cr_expect(json_equal(lead, want_lead), "%s: lead\n got: %s\nwant: %s", name, got_s, want_s);
    free(got_s);
    free(want_s);
    if (want_errors == NULL) {
        got_s = errors != NULL ? json_dumps(errors, JSON_SORT_KEYS) : NULL;
        cr_expect_null(errors, "%s: unexpected errors %s", name, got_s != NULL ? got_s : "");
        free(got_s);
    } else {
        got_s = errors != NULL ? json_dumps(errors, JSON_SORT_KEYS) : strdup("(none)");
        want_s = json_dumps(want_errors, JSON_SORT_KEYS);
        cr_expect(errors != NULL && json_equal(errors, want_errors),
                  "%s: errors\n got: %s\nwant: %s", name, got_s, want_s);
        free(got_s);
        free(want_s);
    }
    json_decref(lead);
    json_decref(errors);
    rules_free(rs);
    diag_free(&d);
    free(msgs);
    json_decref(form);
    json_decref(fields);
    json_decref(attribution);
    json_decref(want_lead);
    json_decref(want_errors);
    free(form_text);
}

static void run_bad(const char *name)
{
    char dir[512], *form_text, *expected, *msgs, *line, *save = NULL;
    size_t form_len;
    json_t *doc, *form;
    json_error_t jerr;
    struct diag d;
    struct ruleset *rs;

    snprintf(dir, sizeof(dir), "%s/%s", RULES_DIR, name);
    form_text = read_text(dir, "form.json", &form_len);
    expected = read_text(dir, "expected_error", NULL);
    cr_assert_not_null(form_text, "%s: no form.json", name);
    cr_assert_not_null(expected, "%s: no expected_error", name);
    doc = json_loads(form_text, 0, &jerr);
    cr_assert_not_null(doc, "%s/form.json:%d: %s", name, jerr.line, jerr.text);
    form = json_object_get(json_object_get(doc, "forms"), "t");
    cr_assert_not_null(form, "%s: form.json must be {\"forms\": {\"t\": {...}}}", name);

    diag_init(&d, "form.json", form_text, form_len);
    rs = rules_compile(form, "forms.t", &d);
    msgs = all_messages(&d);
    cr_expect_null(rs, "%s: compiled although it should not", name);
    cr_expect_gt(d.count, 0, "%s: no message", name);
    for (line = strtok_r(expected, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save))
        cr_expect(strstr(msgs, line) != NULL, "%s: expected \"%s\" in:\n%s", name, line, msgs);
    rules_free(rs);
    diag_free(&d);
    free(msgs);
    json_decref(doc);
    free(expected);
    free(form_text);
}

Test(rules_golden, every_case)
{
    static char names[256][128];
    size_t n = list_cases(false, names, 256), i;

    cr_assert_geq(n, 20, "only %zu golden cases", n);
    for (i = 0; i < n; i++)
        run_golden(names[i]);
}

Test(rules_bad, every_case)
{
    static char names[256][128];
    size_t n = list_cases(true, names, 256), i;

    cr_assert_geq(n, 7, "only %zu bad cases", n);
    for (i = 0; i < n; i++)
        run_bad(names[i]);
}

/* ---- direct tests ---- */

/* Compiles {"rules": rules_json, "unused_fields": "drop"}; asserts it compiles. */
static struct ruleset *compile_rules(const char *rules_json)
{
    char text[4096];
    json_t *form;
    json_error_t jerr;
    struct diag d;
    struct ruleset *rs;
    char *msgs;

    cr_assert(snprintf(text, sizeof(text), "{\"rules\": %s, \"unused_fields\": \"drop\"}",
                       rules_json) < (int)sizeof(text));
    form = json_loads(text, 0, &jerr);
    cr_assert_not_null(form, "%s: %s", text, jerr.text);
    diag_init(&d, "test", text, strlen(text));
    rs = rules_compile(form, "form", &d);
    msgs = all_messages(&d);
    cr_assert_not_null(rs, "%s", msgs);
    free(msgs);
    diag_free(&d);
    json_decref(form);
    return rs;
}

/* Applies rs to one field {"v": value}; returns the lead's "out" (new ref) or the error text. */
static void apply_one(const struct ruleset *rs, const char *value, json_t **out, char **error)
{
    json_t *fields = json_pack("{s:s}", "v", value), *lead, *errors;

    cr_assert_not_null(fields);
    cr_assert_eq(rules_apply(rs, fields, NULL, &lead, &errors), LB_OK);
    *out = json_incref(json_object_get(lead, "out"));
    *error = NULL;
    if (errors != NULL)
        *error = strdup(json_string_value(json_object_get(errors, "out")));
    json_decref(lead);
    json_decref(errors);
    json_decref(fields);
}

Test(rules, form_keys_for_the_config_loader)
{
    size_t n = 0;

    for (; rules_form_keys[n] != NULL; n++)
        ;
    cr_assert_eq(n, 3);
    cr_assert_str_eq(rules_form_keys[0], "rules");
    cr_assert_str_eq(rules_form_keys[1], "unused_fields");
    cr_assert_str_eq(rules_form_keys[2], "attribution");
    rules_free(NULL);
    rules_thread_cleanup();
    rules_thread_cleanup();
}

Test(rules, uk_postcodes)
{
    static const char *const good[][2] = {
        {"de11jx", "DE1 1JX"},   {"DE1 1JX", "DE1 1JX"}, {"sw1a 1aa", "SW1A 1AA"},
        {"M1 1AE", "M1 1AE"},    {"b338th", "B33 8TH"},  {"CR2 6XH", "CR2 6XH"},
        {"w1a0ax", "W1A 0AX"},   {"ec1a 1bb", "EC1A 1BB"}, {"GIR 0AA", "GIR 0AA"},
        {"  dn55 1pt ", "DN55 1PT"},
    };
    static const char *const bad[] = {"DE1", "12345", "DE1 1J", "DEE 1JX", "D 1JX", "DE1 JJX",
                                      "DE1 11X", "DE12345 1JX", "DÉ1 1JX"};
    struct ruleset *rs = compile_rules("[{\"field\": \"out\", \"from\": \"v\", "
                                       "\"format\": \"uk_postcode\"}]");
    json_t *out;
    char *error;
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        apply_one(rs, good[i][0], &out, &error);
        cr_expect_null(error, "%s", good[i][0]);
        cr_expect_str_eq(json_string_value(out), good[i][1], "%s", good[i][0]);
        json_decref(out);
        free(error);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        apply_one(rs, bad[i], &out, &error);
        cr_expect_null(out, "%s should be refused", bad[i]);
        cr_expect_str_eq(error, "not a valid UK postcode", "%s", bad[i]);
        json_decref(out);
        free(error);
    }
    rules_free(rs);
}

Test(rules, emails_phones_urls)
{
    static const struct {
        const char *format, *value, *want; /* want NULL: refused */
    } cases[] = {
        {"email", "marla@example.com", "marla@example.com"},
        {"email", "Marla.Singer+x@Example.CO.UK", "Marla.Singer+x@example.co.uk"},
        {"email", "marla@", NULL},
        {"email", "@example.com", NULL},
        {"email", "marla@example", NULL},
        {"email", "marla@@example.com", NULL},
        {"email", "marla singer@example.com", NULL},
        {"email", "marla@example..com", NULL},
        {"email", "marla@example.com.", NULL},
        {"phone", "+44 (0)1332 123-456", "+44 (0)1332 123-456"},
        {"phone", "07700900123", "07700900123"},
        {"phone", "123456", NULL},
        {"phone", "0770090012x", NULL},
        {"phone", "0770+0900123", NULL},
        {"phone", "123456789012345678901", NULL},
        {"url", "https://www.example.com/p?id=1", "https://www.example.com/p?id=1"},
        {"url", "HTTP://example.com", "HTTP://example.com"},
        {"url", "ftp://example.com", NULL},
        {"url", "https://", NULL},
        {"url", "https://exa mple.com", NULL},
        {"url", "javascript:alert(1)", NULL},
    };
    char rules[256];
    struct ruleset *rs;
    json_t *out;
    char *error;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(rules, sizeof(rules), "[{\"field\": \"out\", \"from\": \"v\", \"format\": \"%s\"}]",
                 cases[i].format);
        rs = compile_rules(rules);
        apply_one(rs, cases[i].value, &out, &error);
        if (cases[i].want != NULL) {
            cr_expect_null(error, "%s %s: %s", cases[i].format, cases[i].value, error);
            cr_expect_str_eq(json_string_value(out), cases[i].want, "%s", cases[i].value);
        } else {
            cr_expect_null(out, "%s %s should be refused", cases[i].format, cases[i].value);
            cr_expect_not_null(error, "%s %s", cases[i].format, cases[i].value);
            cr_expect(error == NULL || strstr(error, "not a valid") == error, "%s", error);
        }
        json_decref(out);
        free(error);
        rules_free(rs);
    }
}

Test(rules, runaway_regex_is_stopped, .timeout = 20)
{
    struct ruleset *rs = compile_rules("[{\"field\": \"out\", \"from\": \"v\", "
                                       "\"pattern\": \"^(a|aa)+$\"},"
                                       "{\"field\": \"other\", \"value\": \"still runs\"}]");
    char value[128];
    json_t *fields, *lead, *errors;

    memset(value, 'a', 100);
    value[100] = 'b';
    value[101] = '\0';
    fields = json_pack("{s:s}", "v", value);
    cr_assert_eq(rules_apply(rs, fields, NULL, &lead, &errors), LB_OK);
    cr_assert_not_null(errors);
    cr_expect_str_eq(json_string_value(json_object_get(errors, "out")), "could not be checked");
    cr_expect_null(json_object_get(lead, "out"));
    cr_expect_str_eq(json_string_value(json_object_get(lead, "other")), "still runs");
    json_decref(lead);
    json_decref(errors);
    json_decref(fields);
    rules_free(rs);
    rules_thread_cleanup();
}

Test(rules, long_values_never_reach_a_regex)
{
    struct ruleset *rs = compile_rules("[{\"field\": \"out\", \"from\": \"v\", "
                                       "\"match\": \"(x+)\"},"
                                       "{\"field\": \"plain\", \"from\": \"v\"}]");
    size_t n = 16385;
    char *value = malloc(n + 1);
    json_t *fields, *lead, *errors;

    cr_assert_not_null(value);
    memset(value, 'x', n);
    value[n] = '\0';
    fields = json_pack("{s:s}", "v", value);
    cr_assert_eq(rules_apply(rs, fields, NULL, &lead, &errors), LB_OK);
    cr_assert_not_null(errors);
    cr_expect_str_eq(json_string_value(json_object_get(errors, "out")), "is too long");
    cr_expect_eq(json_string_length(json_object_get(lead, "plain")), n);
    json_decref(lead);
    json_decref(errors);
    /* One byte less is matched. */
    value[n - 1] = '\0';
    json_object_set_new(fields, "v", json_string(value));
    cr_assert_eq(rules_apply(rs, fields, NULL, &lead, &errors), LB_OK);
    cr_expect_null(errors);
    cr_expect_eq(json_string_length(json_object_get(lead, "out")), n - 1);
    json_decref(lead);
    json_decref(fields);
    free(value);
    rules_free(rs);
    rules_thread_cleanup();
}

Test(rules, errors_never_repeat_the_value)
{
    struct ruleset *rs = compile_rules(
        "[{\"field\": \"a\", \"from\": \"v\", \"format\": \"email\"},"
        " {\"field\": \"b\", \"from\": \"v\", \"type\": \"integer\"},"
        " {\"field\": \"c\", \"from\": \"v\", \"pattern\": \"^[0-9]+$\"},"
        " {\"field\": \"d\", \"from\": \"v\", \"max_length\": 3},"
        " {\"field\": \"e\", \"from\": \"v\", \"type\": \"boolean\"}]");
    json_t *fields = json_pack("{s:s}", "v", "secret-value"), *lead, *errors, *msg;
    const char *key;

    cr_assert_eq(rules_apply(rs, fields, NULL, &lead, &errors), LB_OK);
    cr_assert_eq(json_object_size(errors), 5);
    json_object_foreach(errors, key, msg)
        cr_expect_null(strstr(json_string_value(msg), "secret"), "%s", json_string_value(msg));
    cr_expect_eq(json_object_size(lead), 0);
    json_decref(lead);
    json_decref(errors);
    json_decref(fields);
    rules_free(rs);
}

Test(rules, non_object_inputs_are_safe)
{
    struct ruleset *rs = compile_rules("[{\"field\": \"a\", \"from\": \"x.y[3][k=v]\","
                                       " \"required\": true}]");
    json_t *not_object = json_string("x"), *lead, *errors;

    cr_assert_eq(rules_apply(rs, NULL, NULL, &lead, &errors), LB_OK);
    cr_expect_str_eq(json_string_value(json_object_get(errors, "a")), "is required");
    json_decref(lead);
    json_decref(errors);
    cr_assert_eq(rules_apply(rs, not_object, not_object, &lead, &errors), LB_OK);
    cr_expect_not_null(errors);
    json_decref(lead);
    json_decref(errors);
    json_decref(not_object);
    rules_free(rs);
}

struct thread_job {
    const struct ruleset *rs;
    int failures;
};

static void *apply_many(void *arg)
{
    struct thread_job *job = arg;
    json_t *fields = json_pack("{s:s,s:s}", "name", "marla singer", "pc", "de11jx");
    json_t *lead, *errors;
    int i;

    for (i = 0; i < 200; i++) {
        if (rules_apply(job->rs, fields, NULL, &lead, &errors) != LB_OK || errors != NULL ||
            !json_is_string(json_object_get(lead, "last_name")) ||
            strcmp(json_string_value(json_object_get(lead, "last_name")), "Singer") != 0 ||
            strcmp(json_string_value(json_object_get(lead, "postcode")), "DE1 1JX") != 0)
            job->failures++;
        json_decref(lead);
        json_decref(errors);
    }
    json_decref(fields);
    rules_thread_cleanup();
    return NULL;
}

Test(rules, one_ruleset_many_threads)
{
    struct ruleset *rs = compile_rules(
        "[{\"from\": \"name\", \"match\": \"^(?<first_name>\\\\S+)\\\\s+(?<last_name>.+)$\","
        "  \"case\": \"title\"},"
        " {\"field\": \"postcode\", \"from\": \"pc\", \"format\": \"uk_postcode\","
        "  \"pattern\": \"^[A-Z]{1,2}\\\\d\"}]");
    pthread_t t[4];
    struct thread_job jobs[4];
    int i;

    for (i = 0; i < 4; i++) {
        jobs[i].rs = rs;
        jobs[i].failures = 0;
        cr_assert_eq(pthread_create(&t[i], NULL, apply_many, &jobs[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        cr_assert_eq(pthread_join(t[i], NULL), 0);
        cr_expect_eq(jobs[i].failures, 0, "thread %d", i);
    }
    rules_free(rs);
}

/* Returns true when {"field": "x", "from": <source>} compiles. */
static bool source_compiles(const char *source)
{
    json_t *form = json_pack("{s:[{s:s,s:s}]}", "rules", "field", "x", "from", source);
    struct diag d;
    struct ruleset *rs;
    bool ok;

    cr_assert_not_null(form);
    diag_init(&d, "test", NULL, 0);
    rs = rules_compile(form, "form", &d);
    ok = rs != NULL;
    cr_expect_eq(ok, d.count == 0, "%s", source);
    rules_free(rs);
    diag_free(&d);
    json_decref(form);
    return ok;
}

Test(rules, source_path_syntax)
{
    static const char *const good[] = {
        "email", "fields.email.value", "fields[email][value]", "[\"first name\"]",
        "['it\\'s']", "a[\"q\\\"uote\"]", "answers[0]", "answers.0.email",
        "answers[field.ref=email].email", "answers[field.ref=\"a]b\"].x", "Property Type",
        "attribution.utm_source", "lead.lofty.tags", "[\"lead\"]", "a[b=]",
    };
    static const char *const bad[] = {
        "", "[", "a[", "a[]", "a[=x]", "a[b=", "a]", "a..b", ".a", "a.", "[\"x", "a[\"x\"]b",
        "a[0]b", "a[1000001]", "attribution", "lead", "a[b[c]]", "a[\"x\"y]", "a[k=\"v\"w]",
    };
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        cr_expect(source_compiles(good[i]), "should compile: %s", good[i]);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect(!source_compiles(bad[i]), "should be refused: %s", bad[i]);
}
