/*
 * test_live.c: the configuration in use. A holder keeps its generation across reloads; a good
 * reload swaps in the new one; a broken one keeps the old one.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "live.h"

static char path[] = "/tmp/leadbridge-live-XXXXXX";

static void write_config(const char *forms)
{
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f);
    fprintf(f, "{\"spool\": \"/tmp/leadbridge-live-spool\", \"forms\": {%s}}", forms);
    fclose(f);
}

static void setup(void)
{
    int fd = mkstemp(path);

    cr_assert_geq(fd, 0);
    close(fd);
}

static void teardown(void)
{
    live_shutdown();
    unlink(path);
}

Test(live, holders_keep_their_generation, .init = setup, .fini = teardown)
{
    struct diag d;
    struct config *cfg;
    const struct config *a, *b, *c;

    write_config("\"a\": {\"path\": \"/a\"}");
    diag_init(&d, path, NULL, 0);
    cfg = config_load(path, &d);
    cr_assert_not_null(cfg);
    diag_free(&d);
    live_init(cfg, path);

    a = live_acquire();
    cr_assert_eq(a, cfg);
    write_config("\"a\": {\"path\": \"/a\"}, \"b\": {\"path\": \"/b\"}");
    cr_assert(live_reload());
    b = live_acquire();
    cr_assert_neq(a, b);
    cr_assert_eq(b->n_forms, 2);
    /* The first holder still reads its own, whole. */
    cr_assert_eq(a->n_forms, 1);
    cr_assert_str_eq(config_find_form(a, "/a")->name, "a");
    cr_assert_null(config_find_form(a, "/b"));
    live_release(a); /* its last holder: freed now (ASan would see a later use) */

    write_config("\"a\": {\"path\": \"a-without-slash\"}");
    cr_assert_not(live_reload());
    c = live_acquire();
    cr_assert_eq(c, b, "a broken config keeps the one in use");
    live_release(c);
    live_release(b);
    live_release(NULL);
}
