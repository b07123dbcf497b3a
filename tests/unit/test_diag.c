/*
 * test_diag.c: unit tests for configuration diagnostics (src/diag.c).
 *
 * jsonpos_locate is checked on nested keys, indexes, escaped keys, prefix keys, tricky values,
 * missing paths, CRLF text and every truncation of a document (which must never crash or read out
 * of bounds: run under ASan). diag_add and friends are checked for their exact message format.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diag.h"

static const char doc[] =
    "{\n"
    "  \"forms\": {\n"
    "    \"valuation\": {\n"
    "      \"rules\": [\n"
    "        {\"match\": \"a\"},\n"
    "        {\"match\": \"[{\\\"\"},\n"
    "        {\"x\": [1, {\"y\": \"}]\"}], \"match\": 42}\n"
    "      ],\n"
    "      \"path\": \"/v\"\n"
    "    },\n"
    "    \"my form\": {\"path\": \"/m\"},\n"
    "    \"q\\\"k\": 1,\n"
    "    \"caf\\u00e9\": true,\n"
    "    \"pile\\ud83d\\udca9\": null\n"
    "  },\n"
    "  \"targets\": {\"leadpro_x\": 0, \"leadpro\": {\"api_key\": \"k\"}}\n"
    "}\n";

#define LOC(path, want_rc, want_line, want_col)                                               \
    do {                                                                                      \
        int line_ = -7, col_ = -7;                                                            \
        int rc_ = jsonpos_locate(doc, sizeof(doc) - 1, path, &line_, &col_);                  \
        cr_assert_eq(rc_, want_rc, "%s: rc %d", path, rc_);                                   \
        cr_assert_eq(line_, want_line, "%s: line %d", path, line_);                           \
        cr_assert_eq(col_, want_col, "%s: col %d", path, col_);                               \
    } while (0)

Test(jsonpos, root_and_nested_keys)
{
    LOC("", 0, 1, 1);
    LOC("forms", 0, 2, 12);
    LOC("forms.valuation", 0, 3, 18);
    LOC("forms.valuation.path", 0, 9, 15);
    LOC("targets.leadpro.api_key", 0, 16, 54);
}

Test(jsonpos, indexes_and_values_with_brackets)
{
    LOC("forms.valuation.rules", 0, 4, 16);
    LOC("forms.valuation.rules[0]", 0, 5, 9);
    LOC("forms.valuation.rules[0].match", 0, 5, 19);
    LOC("forms.valuation.rules[1].match", 0, 6, 19);
    LOC("forms.valuation.rules[2]", 0, 7, 9);
    LOC("forms.valuation.rules[2].x[1].y", 0, 7, 25);
    LOC("forms.valuation.rules[2].match", 0, 7, 42);
}

Test(jsonpos, quoted_and_escaped_keys)
{
    LOC("forms[\"my form\"].path", 0, 11, 25);
    LOC("forms[\"q\\\"k\"]", 0, 12, 13);
    LOC("forms[\"caf\xc3\xa9\"]", 0, 13, 18);
    LOC("forms[\"caf\\u00e9\"]", 0, 13, 18);
    LOC("forms[\"pile\xf0\x9f\x92\xa9\"]", 0, 14, 25);
    LOC("forms.caf", -1, 2, 12);
}

Test(jsonpos, prefix_keys_do_not_match)
{
    LOC("targets.leadpro", 0, 16, 42);
    LOC("targets.leadpro_x", 0, 16, 28);
    LOC("targets.lead", -1, 16, 14);
    LOC("forms.valuation.rule", -1, 3, 18);
}

Test(jsonpos, missing_paths_give_deepest_ancestor)
{
    LOC("nope", -1, 1, 1);
    LOC("forms.valuation.rules[3]", -1, 4, 16);
    LOC("forms.valuation.rules[0].match.deeper", -1, 5, 19);
    LOC("forms.valuation.rules[0][1]", -1, 5, 9);
    LOC("forms.valuation[0]", -1, 3, 18);
    LOC("forms..x", -1, 2, 12);
    LOC("forms[", -1, 2, 12);
    LOC("forms[\"unterminated", -1, 2, 12);
}

Test(jsonpos, crlf_line_endings)
{
    const char t[] = "{\r\n  \"a\": {\r\n    \"b\": [\r\n 1,\r\n  2]\r\n  }\r\n}\r\n";
    int line, col;

    cr_assert_eq(jsonpos_locate(t, sizeof(t) - 1, "a.b[1]", &line, &col), 0);
    cr_assert_eq(line, 5);
    cr_assert_eq(col, 3);
    cr_assert_eq(jsonpos_locate(t, sizeof(t) - 1, "a.b", &line, &col), 0);
    cr_assert_eq(line, 3);
    cr_assert_eq(col, 10);
}

Test(jsonpos, empty_and_null_text)
{
    int line = 0, col = 0;

    cr_assert_eq(jsonpos_locate(NULL, 0, "a", &line, &col), -1);
    cr_assert_eq(line, 1);
    cr_assert_eq(col, 1);
    cr_assert_eq(jsonpos_locate("", 0, "a", &line, &col), -1);
    cr_assert_eq(jsonpos_locate("   \n ", 5, "", &line, &col), -1);
    cr_assert_eq(line, 1);
    cr_assert_eq(col, 1);
}

/* Every prefix of the document, copied to an exactly-sized heap block so ASan sees any overread. */
Test(jsonpos, truncated_text_never_overreads)
{
    static const char *const paths[] = {
        "forms.valuation.rules[2].match", "forms[\"pile\xf0\x9f\x92\xa9\"]",
        "targets.leadpro.api_key", "forms[\"q\\\"k\"]", "x[5].y",
    };
    size_t n, k;

    for (n = 0; n < sizeof(doc) - 1; n++) {
        char *t = malloc(n ? n : 1);

        cr_assert_not_null(t);
        memcpy(t, doc, n);
        for (k = 0; k < sizeof(paths) / sizeof(paths[0]); k++) {
            int line = 0, col = 0;

            (void)jsonpos_locate(t, n, paths[k], &line, &col);
            cr_assert(line >= 1 && col >= 1);
        }
        free(t);
    }
}

Test(jsonpos, malformed_text_never_overreads)
{
    static const char *const bad[] = {
        "{\"a\"", "{\"a\":", "{\"a\" 1}", "[,,,", "{\"a\\", "{\"a\\u12", "{\"\\ud83d\\u",
        "{{{{{", "]]]]}}}", "\"", "{\"a\": \"\\", "{\"a\":[1,2", "{1: 2}", "{\"a\":1 \"b\":2}",
    };
    size_t k;

    for (k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        size_t n = strlen(bad[k]);
        char *t = malloc(n);
        int line = 0, col = 0;

        cr_assert_not_null(t);
        memcpy(t, bad[k], n);
        cr_assert_eq(jsonpos_locate(t, n, "a[1].b", &line, &col), -1, "%s", bad[k]);
        cr_assert(line >= 1 && col >= 1);
        free(t);
    }
}

Test(diag, formats_file_line_col_path)
{
    struct diag d;

    diag_init(&d, "conf/lb.json", doc, sizeof(doc) - 1);
    diag_add(&d, "forms.valuation.rules[1].match", "bad pattern: %s", "missing )");
    diag_add(&d, "", "no forms");
    diag_add(&d, NULL, "%d problems", 2);
    diag_add(&d, "forms.nope", "unknown form");
    diag_add_at(&d, 3, 9, "syntax error: %s", "']' expected");
    cr_assert_eq(d.count, 5);
    cr_assert_str_eq(d.messages[0],
                     "conf/lb.json:6:19: forms.valuation.rules[1].match: bad pattern: missing )");
    cr_assert_str_eq(d.messages[1], "conf/lb.json:1:1: no forms");
    cr_assert_str_eq(d.messages[2], "conf/lb.json:1:1: 2 problems");
    cr_assert_str_eq(d.messages[3], "conf/lb.json:2:12: forms.nope: unknown form");
    cr_assert_str_eq(d.messages[4], "conf/lb.json:3:9: syntax error: ']' expected");
    diag_free(&d);
    cr_assert_eq(d.count, 0);
    cr_assert_null(d.messages);
    diag_free(&d);
}

Test(diag, without_text)
{
    struct diag d;

    diag_init(&d, "env", NULL, 0);
    diag_add(&d, "targets.leadpro.api_key", "LEADPRO_KEY is not set");
    diag_add(&d, "", "empty");
    cr_assert_eq(d.count, 2);
    cr_assert_str_eq(d.messages[0], "env: targets.leadpro.api_key: LEADPRO_KEY is not set");
    cr_assert_str_eq(d.messages[1], "env: empty");
    diag_free(&d);
}

Test(diag, long_message_is_cut_not_overflowed)
{
    struct diag d;
    char *big = malloc(20000);

    cr_assert_not_null(big);
    memset(big, 'x', 19999);
    big[19999] = '\0';
    diag_init(&d, "f", NULL, 0);
    diag_add(&d, "p", "%s", big);
    cr_assert_eq(d.count, 1);
    cr_assert(strlen(d.messages[0]) < 4096);
    cr_assert_eq(strncmp(d.messages[0], "f: p: xxx", 9), 0);
    diag_free(&d);
    free(big);
}

Test(diag, print_one_per_line)
{
    struct diag d;
    char out[256] = { 0 };
    FILE *f = fmemopen(out, sizeof(out) - 1, "w");

    cr_assert_not_null(f);
    diag_init(&d, "f", NULL, 0);
    diag_add(&d, "a", "one");
    diag_add(&d, "b", "two");
    diag_print(&d, f);
    cr_assert_eq(fclose(f), 0);
    cr_assert_str_eq(out, "f: a: one\nf: b: two\n");
    diag_free(&d);
}

Test(diag, path_builders_round_trip)
{
    char p[128];
    int line, col;

    cr_assert_eq(diag_path_key(p, sizeof(p), "", "forms"), 0);
    cr_assert_eq(diag_path_key(p, sizeof(p), p, "my form"), 0);
    cr_assert_str_eq(p, "forms[\"my form\"]");
    cr_assert_eq(diag_path_key(p, sizeof(p), p, "path"), 0);
    cr_assert_str_eq(p, "forms[\"my form\"].path");
    cr_assert_eq(jsonpos_locate(doc, sizeof(doc) - 1, p, &line, &col), 0);
    cr_assert_eq(line, 11);
    cr_assert_eq(col, 25);

    cr_assert_eq(diag_path_key(p, sizeof(p), "forms", "q\"k"), 0);
    cr_assert_str_eq(p, "forms[\"q\\\"k\"]");
    cr_assert_eq(jsonpos_locate(doc, sizeof(doc) - 1, p, &line, &col), 0);
    cr_assert_eq(line, 12);

    cr_assert_eq(diag_path_key(p, sizeof(p), NULL, "a\nb"), 0);
    cr_assert_str_eq(p, "[\"a\\u000ab\"]");
    cr_assert_eq(diag_path_index(p, sizeof(p), "rules", 3), 0);
    cr_assert_str_eq(p, "rules[3]");
    cr_assert_eq(diag_path_index(p, sizeof(p), p, 12), 0);
    cr_assert_str_eq(p, "rules[3][12]");
    cr_assert_eq(diag_path_key(p, 8, "forms", "valuation"), -1);
    cr_assert_eq(diag_path_index(p, 4, "rules", 3), -1);
}
