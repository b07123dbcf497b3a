/* test_buf.c: the capped buffer never grows past its cap and stays NUL-terminated. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"

Test(buf, append_within_cap)
{
    struct buf b;

    buf_init(&b, 8);
    cr_assert_eq(buf_puts(&b, "abc"), LB_OK);
    cr_assert_eq(buf_putc(&b, 'd'), LB_OK);
    cr_assert_str_eq(b.data, "abcd");
    cr_assert_eq(b.len, 4);
    buf_free(&b);
}

Test(buf, refuses_past_cap_and_keeps_content)
{
    struct buf b;

    buf_init(&b, 5);
    cr_assert_eq(buf_puts(&b, "12345"), LB_OK);
    cr_assert_eq(buf_putc(&b, '6'), LB_ERR_TOO_LARGE);
    cr_assert_eq(buf_printf(&b, "%d", 7), LB_ERR_TOO_LARGE);
    cr_assert_str_eq(b.data, "12345");
    cr_assert_eq(b.len, 5);
    buf_free(&b);
}

Test(buf, huge_append_does_not_overflow)
{
    struct buf b;

    buf_init(&b, 100);
    cr_assert_eq(buf_append(&b, "x", SIZE_MAX), LB_ERR_TOO_LARGE);
    cr_assert_eq(buf_puts(&b, "ok"), LB_OK);
    cr_assert_eq(buf_append(&b, "x", SIZE_MAX - 1), LB_ERR_TOO_LARGE);
    buf_free(&b);
}

Test(buf, printf_grows_and_steal_empties)
{
    struct buf b;
    char *s;

    buf_init(&b, 1 << 20);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(buf_printf(&b, "%04d", i), LB_OK);
    cr_assert_eq(b.len, 4000);
    cr_assert(strncmp(b.data + 3996, "0999", 4) == 0);
    s = buf_steal(&b);
    cr_assert_eq(strlen(s), 4000);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    free(s);
    s = buf_steal(&b);
    cr_assert_str_eq(s, "");
    free(s);
}

Test(err, table_maps_codes_to_statuses)
{
    cr_assert_eq(lb_err_status(LB_ERR_TOO_LARGE), 413);
    cr_assert_str_eq(lb_err_name(LB_ERR_TOO_LARGE), "body_too_large");
    cr_assert_eq(lb_err_status(LB_ERR_MEDIA_TYPE), 415);
    cr_assert_eq(lb_err_status(LB_ERR_INVALID_FIELDS), 422);
    cr_assert_eq(lb_err_status((enum lb_err)999), 500);
    for (int i = 0; i < LB_ERR__MAX; i++)
        cr_assert_not_null(lb_err_name((enum lb_err)i), "code %d has no name", i);
}
