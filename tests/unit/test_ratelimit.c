/*
 * test_ratelimit.c: the shared table: a bucket gives its burst then its rate, a hold pauses it,
 * a daily cap counts to its limit, a first-use mark catches the replay, the table stays bounded
 * when flooded with keys, and two processes share one bucket through the mapped file.
 */
#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ratelimit.h"
#include "shmfile.h"
#include "throttle.h"

#define T0 1700000000000LL

static char dir[64];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/lb-rl-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(ratelimit, .init = setup, .fini = teardown);

static struct ratelimit *open_table(size_t slots)
{
    struct lb_error err = {LB_OK, ""};
    struct ratelimit *rl = ratelimit_open(dir, slots, &err);

    cr_assert_not_null(rl, "%s", err.message);
    return rl;
}

Test(ratelimit, burst_then_rate)
{
    struct ratelimit *rl = open_table(1024);
    long long wait = 0;
    int ok = 0;

    for (int i = 0; i < 10; i++)
        ok += ratelimit_take(rl, "ip:a", 5, 1.0, T0, &wait);
    cr_expect_eq(ok, 5);
    cr_expect_eq(wait, 1000);
    cr_expect(!ratelimit_take(rl, "ip:a", 5, 1.0, T0 + 999, NULL));
    cr_expect(ratelimit_take(rl, "ip:a", 5, 1.0, T0 + 1000, NULL));
    cr_expect(!ratelimit_take(rl, "ip:a", 5, 1.0, T0 + 1001, NULL));
    /* another key has its own bucket */
    cr_expect(ratelimit_take(rl, "ip:b", 5, 1.0, T0, NULL));
    /* after a long pause the bucket is full again, never more than the burst */
    ok = 0;
    for (int i = 0; i < 10; i++)
        ok += ratelimit_take(rl, "ip:a", 5, 1.0, T0 + 3600000, NULL);
    cr_expect_eq(ok, 5);
    ratelimit_close(rl);
}

Test(ratelimit, hold_pauses_a_bucket)
{
    struct ratelimit *rl = open_table(1024);
    long long wait = 0;

    cr_expect(ratelimit_take(rl, "out:t", 3, 10, T0, NULL));
    ratelimit_hold(rl, "out:t", T0 + 60000, T0);
    cr_expect(!ratelimit_take(rl, "out:t", 3, 10, T0 + 30000, &wait));
    cr_expect_eq(wait, 30000);
    cr_expect(!ratelimit_take(rl, "out:t", 3, 10, T0 + 60000, &wait));
    cr_expect(ratelimit_take(rl, "out:t", 3, 10, T0 + 60100, NULL));
    ratelimit_close(rl);
}

Test(ratelimit, daily_cap_and_first_use)
{
    struct ratelimit *rl = open_table(1024);
    int ok = 0;

    for (int i = 0; i < 7; i++)
        ok += ratelimit_count(rl, "day:f:1", 5, T0 + 1000, T0);
    cr_expect_eq(ok, 5);
    cr_expect(ratelimit_count(rl, "day:f:1", 5, T0 + 2000, T0 + 1000), "a new day counts anew");
    cr_expect(ratelimit_first_use(rl, "tok:x", T0 + 5000, T0));
    cr_expect(!ratelimit_first_use(rl, "tok:x", T0 + 5000, T0 + 10));
    cr_expect(ratelimit_first_use(rl, "tok:y", T0 + 5000, T0 + 10));
    cr_expect(ratelimit_first_use(rl, "tok:x", T0 + 9000, T0 + 5000), "the mark expired");
    ratelimit_close(rl);
}

Test(ratelimit, bounded_under_a_flood_of_keys)
{
    struct ratelimit *rl = open_table(1024);
    char key[64];
    int replays = 0;

    /* 100000 distinct tokens in a table of 1024 slots: no error, no growth; the newest are
     * remembered. */
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof(key), "tok:%d", i);
        cr_assert(ratelimit_first_use(rl, key, T0 + 86400000, T0 + i));
    }
    for (int i = 100000 - 200; i < 100000; i++) {
        snprintf(key, sizeof(key), "tok:%d", i);
        replays += !ratelimit_first_use(rl, key, T0 + 86400000, T0 + 100000);
    }
    cr_expect_geq(replays, 190, "recent tokens are remembered (%d of 200)", replays);
    ratelimit_close(rl);
}

Test(ratelimit, shared_by_two_processes)
{
    struct ratelimit *rl;
    int *got = mmap(NULL, 2 * sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                    -1, 0);
    pid_t kids[2];

    cr_assert_neq(got, MAP_FAILED);
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        cr_assert_geq(kids[k], 0);
        if (kids[k] == 0) {
            struct lb_error err = {LB_OK, ""};
            struct ratelimit *mine = ratelimit_open(dir, 4096, &err);
            int ok = 0;

            for (int i = 0; mine != NULL && i < 500; i++)
                ok += ratelimit_take(mine, "ip:shared", 50, 0.001, T0, NULL);
            got[k] = ok;
            ratelimit_close(mine);
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++)
        waitpid(kids[k], NULL, 0);
    cr_expect_eq(got[0] + got[1], 50, "one bucket of 50 between two processes: %d + %d",
                 got[0], got[1]);
    rl = open_table(4096);
    cr_expect(!ratelimit_take(rl, "ip:shared", 50, 0.001, T0, NULL));
    ratelimit_close(rl);
    munmap(got, 2 * sizeof(int));
}

Test(ratelimit, shmfile_grows_and_keeps)
{
    struct lb_error err = {LB_OK, ""};
    char path[128];
    unsigned char *m;

    snprintf(path, sizeof(path), "%s/x.map", dir);
    m = shmfile_open(path, 4096, &err);
    cr_assert_not_null(m, "%s", err.message);
    m[10] = 42;
    shmfile_close(m, 4096);
    m = shmfile_open(path, 8192, &err);
    cr_assert_not_null(m);
    cr_expect_eq(m[10], 42);
    cr_expect_eq(m[8000], 0);
    shmfile_close(m, 8192);
    cr_expect_null(shmfile_open("/nonexistent-dir/x.map", 4096, &err));
    cr_expect_eq(err.code, LB_ERR_IO);
}

Test(ratelimit, throttle_keeps_the_rate_order_and_429)
{
    struct ratelimit *rl = open_table(4096);
    struct target t = {.name = "lp", .rate_per_minute = 62, .rate_burst = 2};
    struct target_result r;
    json_t *counted = json_pack("{s:b}", "throttled", 1);
    int sent = 0;
    const char *ids[] = {"a", "b", "c", "d", "e"};

    /* a bucket of 2 that refills at (62 - 2) / 60 = 1 a second */
    for (int i = 0; i < 5; i++) {
        target_result_init(&r);
        if (!throttle_defer(rl, &t, false, NULL, ids[i], T0, &r))
            sent++;
    }
    cr_expect_eq(sent, 2);
    cr_expect_eq(r.outcome, DELIVERY_DEFERRED);
    cr_expect_eq(r.retry_after, 1);
    /* later, with room in the bucket: the request path still waits behind the deferred leads,
     * the outbox's worker (oldest first) goes */
    target_result_init(&r);
    cr_expect(throttle_defer(rl, &t, false, NULL, "f", T0 + 5000, &r), "a new lead queues behind");
    target_result_init(&r);
    cr_expect(!throttle_defer(rl, &t, true, counted, "c", T0 + 5000, &r), "the queued one goes");
    for (int i = 0; i < 4; i++)
        throttle_after(rl, &t, counted, &r, T0 + 5000);
    target_result_init(&r);
    cr_expect(!throttle_defer(rl, &t, false, NULL, "g", T0 + 6000, &r), "backlog drained");
    /* a 429 holds the whole target for its Retry-After */
    r.http_status = 429;
    r.retry_after = 30;
    throttle_after(rl, &t, NULL, &r, T0 + 6000);
    target_result_init(&r);
    cr_expect(throttle_defer(rl, &t, true, NULL, "h", T0 + 20000, &r));
    cr_expect_geq(r.retry_after, 16);
    target_result_init(&r);
    cr_expect(!throttle_defer(rl, &t, true, NULL, "h", T0 + 38000, &r), "after the hold");
    json_decref(counted);
    ratelimit_close(rl);
}
