/* test_notify.c: notices carry no personal data; the "notify" config is checked. */
#include <criterion/criterion.h>
#include <string.h>

#include "notify.h"

static void clean(const char *in, const char *want)
{
    char out[200];

    notify_clean_reason(in, out, sizeof(out));
    cr_assert_str_eq(out, want, "%s -> %s", in, out);
}

Test(notify, reasons_mask_emails_and_phone_numbers)
{
    clean("LeadPro answered HTTP 422: office id is invalid",
          "LeadPro answered HTTP 422: office id is invalid");
    clean("email ada@example.com is taken", "email [email] is taken");
    clean("phone +44 7700 900789 refused", "phone [number] refused");
    clean("lead 12345 exists", "lead 12345 exists");
    clean("line\nbreak\tand\x01" "control", "line break and control");
    clean("id=1234567", "id=[number]");
    clean(NULL, "");
}

Test(notify, reason_is_cut_on_a_utf8_boundary)
{
    char out[6];

    notify_clean_reason("abcd\xc3\xa9", out, sizeof(out));
    cr_assert_str_eq(out, "abcd");
}

static size_t load(const char *text, struct notify_conf *c)
{
    struct diag d;
    json_t *j = json_loads(text, 0, NULL);
    size_t n;

    cr_assert_not_null(j, "%s", text);
    diag_init(&d, "t.json", text, strlen(text));
    notify_conf_from_json(j, "notify", &d, c);
    n = d.count;
    diag_free(&d);
    json_decref(j);
    return n;
}

Test(notify, config_checked)
{
    struct notify_conf c;

    cr_assert_eq(load("{\"webhook\": {\"url\": \"https://ops.example.org/h\", \"secret\": "
                      "\"0123456789abcdef\"}, \"mail\": {\"to\": [\"a@example.org\"]}}", &c), 0);
    cr_assert(c.on);
    cr_assert_str_eq(c.sendmail, "/usr/sbin/sendmail");
    cr_assert_eq(c.min_interval, 900);
    notify_conf_free(&c);
    cr_assert_eq(load("{}", &c), 1, "no channel");
    notify_conf_free(&c);
    cr_assert_eq(load("{\"mail\": {\"sendmail\": \"sendmail\", \"to\": [\"a@b\"]}}", &c), 1,
                 "relative path");
    notify_conf_free(&c);
    cr_assert_eq(load("{\"mail\": {\"to\": [\"a@b\\r\\nBcc: x@y\"]}}", &c), 1, "header injection");
    notify_conf_free(&c);
    cr_assert_eq(load("{\"mail\": {\"to\": []}}", &c), 1);
    notify_conf_free(&c);
    cr_assert_eq(load("{\"webhook\": {\"url\": \"ftp://x\", \"secret\": \"short\"}}", &c), 2);
    notify_conf_free(&c);
    cr_assert_eq(load("{\"mail\": {\"to\": [\"a@b\"]}, \"colour\": 1}", &c), 1, "unknown key");
    notify_conf_free(&c);
}
