/*
 * test_metrics.c: shared counters (shmfile + metrics): several processes counting into one file
 * lose nothing, a full table drops new series without harm, and the text escapes label values.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics.h"
#include "shmfile.h"

static char dir[] = "/tmp/leadbridge-metrics-XXXXXX";

static void setup(void)
{
    struct lb_error err = {LB_OK, ""};

    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(metrics_open(dir, &err), LB_OK, "%s", err.message);
}

static void teardown(void)
{
    char path[256];

    metrics_close();
    snprintf(path, sizeof(path), "%s/metrics.shm", dir);
    unlink(path);
    rmdir(dir);
}

static char *render(void)
{
    struct buf b;
    struct metrics_queue q = {true, 3, 1, 2, 42};

    buf_init(&b, 4 * 1024 * 1024);
    cr_assert_eq(metrics_render(&q, &b), LB_OK);
    return buf_steal(&b);
}

Test(shmfile, zero_filled_shared_and_resized, .init = setup, .fini = teardown)
{
    char path[256];
    struct lb_error err = {LB_OK, ""};
    unsigned char *a, *b;

    snprintf(path, sizeof(path), "%s/x.shm", dir);
    a = shmfile_open(path, 4096, &err);
    cr_assert_not_null(a, "%s", err.message);
    b = shmfile_open(path, 4096, &err);
    cr_assert_not_null(b);
    cr_assert_eq(a[100], 0);
    a[100] = 7;
    cr_assert_eq(b[100], 7, "both mappings see the same page");
    shmfile_close(a, 4096);
    shmfile_close(b, 4096);
    cr_assert_null(shmfile_open("/nonexistent-dir/x.shm", 4096, &err));
    cr_assert_eq(err.code, LB_ERR_IO);
    unlink(path);
}

Test(metrics, processes_share_counters_exactly, .init = setup, .fini = teardown)
{
    enum { PROCS = 4, EACH = 5000 };
    pid_t pids[PROCS];
    char *text;

    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        cr_assert_neq(pids[p], -1);
        if (pids[p] == 0) {
            for (int i = 0; i < EACH; i++) {
                metrics_request("contact", 200, 0.003);
                metrics_delivery(i % 2 ? "leadpro" : "lofty", "ok");
            }
            _exit(0);
        }
    }
    for (int p = 0; p < PROCS; p++) {
        int status;

        cr_assert_eq(waitpid(pids[p], &status, 0), pids[p]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    text = render();
    cr_assert_not_null(strstr(text, "leadbridge_requests_total{form=\"contact\",status=\"200\"} 20000\n"),
                       "%s", text);
    cr_assert_not_null(strstr(text, "leadbridge_deliveries_total{target=\"leadpro\",outcome=\"ok\"} 10000\n"));
    cr_assert_not_null(strstr(text, "leadbridge_request_duration_seconds_bucket{form=\"contact\",le=\"0.005\"} 20000\n"));
    cr_assert_not_null(strstr(text, "leadbridge_request_duration_seconds_count{form=\"contact\"} 20000\n"));
    cr_assert_not_null(strstr(text, "leadbridge_request_duration_seconds_sum{form=\"contact\"} 60.000000\n"), "%s", text);
    cr_assert_not_null(strstr(text, "leadbridge_queue_oldest_age_seconds 42\n"));
    free(text);
}

Test(metrics, label_values_escaped_and_cut, .init = setup, .fini = teardown)
{
    char *text;
    char longname[200];

    memset(longname, 'f', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    metrics_spam("we\"ird\\form\nx", "honeypot");
    metrics_spam(longname, "too_fast");
    text = render();
    cr_assert_not_null(strstr(text, "leadbridge_spam_total{form=\"we\\\"ird\\\\form\\nx\",reason=\"honeypot\"} 1\n"),
                       "%s", text);
    longname[METRICS_LABEL_MAX - 1] = '\0';
    cr_assert_not_null(strstr(text, longname));
    free(text);
}

Test(metrics, full_table_drops_new_series_only, .init = setup, .fini = teardown)
{
    char name[32], *text;

    for (int i = 0; i < METRICS_SLOTS + 10; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        metrics_delivery(name, "ok");
    }
    metrics_delivery("t0", "ok"); /* an existing series still counts */
    text = render();
    cr_assert_not_null(strstr(text, "leadbridge_deliveries_total{target=\"t0\",outcome=\"ok\"} 2\n"));
    cr_assert_not_null(strstr(text, "leadbridge_metrics_series_dropped_total 10\n"), "dropped");
    free(text);
}

Test(metrics, off_before_open)
{
    metrics_close();
    metrics_request("x", 200, 1); /* no crash, nothing happens */
    metrics_reload(true);
}
