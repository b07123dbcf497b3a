/*
 * test_config.c: the loader accepts a good config and names file, line, column and JSON path for
 * each mistake in the bad_* files of tests/data/config (each with a .expect file: one expected
 * message fragment per line).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "rules.h"
#include "target.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    char *s;
    long n;

    cr_assert_not_null(fp, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    rewind(fp);
    s = malloc((size_t)n + 1);
    cr_assert_eq(fread(s, 1, (size_t)n, fp), (size_t)n);
    s[n] = '\0';
    fclose(fp);
    *len = (size_t)n;
    return s;
}

Test(config, good_file_loads)
{
    size_t len;
    char *text = slurp(TEST_DATA_DIR "/config/good.json", &len);
    struct diag d;
    struct config *c;
    const struct form *f;

    setenv("LB_TEST_HOOK_URL", "http://127.0.0.1:1/hook", 1);
    unsetenv("LB_TEST_SECRET");
    diag_init(&d, "good.json", text, len);
    c = config_load_text("good.json", text, len, &d);
    for (size_t i = 0; i < d.count; i++)
        cr_log_error("%s", d.messages[i]);
    cr_assert_not_null(c);
    cr_assert_str_eq(c->secret, "0123456789abcdef0123", "${VAR:-default} takes the default");
    cr_assert_eq(c->n_forms, 2);
    f = config_find_form(c, "/lead/contact");
    cr_assert_not_null(f);
    cr_assert_eq(f->action, FORM_CREATE);
    cr_assert_eq(f->body_limit, 4096);
    cr_assert_eq(f->n_targets, 1);
    cr_assert_str_eq(f->targets[0]->name, "crm");
    cr_assert_str_eq(f->targets[0]->ops->type, "webhook");
    cr_assert_eq(config_find_form(c, "/lead/echo")->body_limit, 65536);
    cr_assert_null(config_find_form(c, "/lead/none"));
    cr_assert_str_eq(c->attribution.cookie_name, "lb_attr");
    cr_assert_eq(c->attribution.n_trusted_proxies, 1);
    config_free(c);
    diag_free(&d);
    free(text);
}

Test(config, env_expansion)
{
    char missing[128];
    char *s;

    setenv("LB_TEST_A", "alpha", 1);
    setenv("LB_TEST_EMPTY", "", 1);
    s = conf_expand_env("x${LB_TEST_A}y${LB_TEST_EMPTY:-dflt}z", missing, sizeof(missing));
    cr_assert_str_eq(s, "xalphaydfltz");
    free(s);
    s = conf_expand_env("${LB_TEST_NOPE_NOPE}", missing, sizeof(missing));
    cr_assert_null(s);
    cr_assert_str_eq(missing, "LB_TEST_NOPE_NOPE");
    s = conf_expand_env("${unterminated", missing, sizeof(missing));
    cr_assert_null(s);
    cr_assert_str_eq(missing, "");
    s = conf_expand_env("${BAD-NAME}", missing, sizeof(missing));
    cr_assert_null(s);
    s = conf_expand_env("no vars $ here", missing, sizeof(missing));
    cr_assert_str_eq(s, "no vars $ here");
    free(s);
}

Test(config, paths_quote_odd_keys)
{
    char p[128];

    conf_path(p, sizeof(p), "forms", "contact");
    cr_assert_str_eq(p, "forms.contact");
    conf_path(p, sizeof(p), "forms", "my \"form\"");
    cr_assert_str_eq(p, "forms[\"my \\\"form\\\"\"]");
    conf_path_index(p, sizeof(p), "forms.a.rules", 3);
    cr_assert_str_eq(p, "forms.a.rules[3]");
}

static void check_bad(const char *name)
{
    char path[512], expect_path[512], *text, *expect, *line, *save = NULL;
    size_t len, elen;
    struct diag d;
    struct config *c;

    snprintf(path, sizeof(path), "%s/config/%s", TEST_DATA_DIR, name);
    snprintf(expect_path, sizeof(expect_path), "%.*s.expect", (int)(strlen(path) - 5), path);
    text = slurp(path, &len);
    expect = slurp(expect_path, &elen);
    diag_init(&d, name, text, len);
    c = config_load_text(name, text, len, &d);
    cr_expect_null(c, "%s loaded although it is broken", name);
    for (line = strtok_r(expect, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        bool found = false;

        for (size_t i = 0; i < d.count; i++)
            if (strstr(d.messages[i], line) != NULL)
                found = true;
        if (!found)
            for (size_t i = 0; i < d.count; i++)
                cr_log_error("%s: got: %s", name, d.messages[i]);
        cr_expect(found, "%s: no message contains \"%s\"", name, line);
    }
    config_free(c);
    diag_free(&d);
    free(text);
    free(expect);
}

Test(config, bad_files_are_explained)
{
    DIR *dir = opendir(TEST_DATA_DIR "/config");
    struct dirent *de;
    int n = 0;

    cr_assert_not_null(dir);
    unsetenv("LB_TEST_SURELY_UNSET_VAR");
    while ((de = readdir(dir)) != NULL) {
        size_t l = strlen(de->d_name);

        if (strncmp(de->d_name, "bad_", 4) == 0 && l > 5 && strcmp(de->d_name + l - 5, ".json") == 0) {
            check_bad(de->d_name);
            n++;
        }
    }
    closedir(dir);
    cr_assert_geq(n, 7, "only %d bad configs found", n);
}

Test(config, rules_are_not_env_expanded)
{
    static const char text[] =
        "{\"forms\": {\"a\": {\"path\": \"/a\", \"rules\": [{\"field\": \"phone\", \"from\": \"tel\","
        " \"replace\": [{\"pattern\": \"^0(\\\\d+)$\", \"with\": \"+44${1}\"}]}]}}}";
    struct diag d;
    struct config *c;
    json_t *fields = json_pack("{s:s}", "tel", "07986000000"), *attr = json_object();
    json_t *lead = NULL, *errors = NULL;

    diag_init(&d, "t.json", text, sizeof(text) - 1);
    c = config_load_text("t.json", text, sizeof(text) - 1, &d);
    for (size_t i = 0; i < d.count; i++)
        cr_log_error("%s", d.messages[i]);
    cr_assert_not_null(c, "${1} in a rule must not be read as an environment variable");
    cr_assert_eq(rules_apply(c->forms[0].rules, fields, attr, &lead, &errors), LB_OK);
    cr_assert_str_eq(json_string_value(json_object_get(lead, "phone")), "+447986000000");
    json_decref(lead);
    json_decref(errors);
    json_decref(fields);
    json_decref(attr);
    config_free(c);
    diag_free(&d);
}
