/*
 * fuzz_spool.c: job files in the outbox's spool (src/outbox.c), read through its public paths.
 *
 * Input: the bytes of one job file. They are written, as a crash, a disk error or a person with an
 * editor might leave them, as queue/<id>.json, dead/<id2>.json and done/<id3>.json of a spool in
 * a temp dir (on /dev/shm when there is one: fsync is cheap there). Then, as the server and
 * `leadbridge queue` would: outbox_list, outbox_show, outbox_stats, two outbox_run passes (now,
 * and 80 years later) whose delivery answers ok, transient (with Retry-After) and permanent in
 * turn, outbox_retry_all, outbox_list again, outbox_load_response. Properties: nothing crashes
 * or hangs; outbox_list returns an array; after the runs no job is left claimed. The spool is
 * emptied after each input.
 */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "err.h"
#include "outbox.h"
#include "target.h"

#define FUZZ_ID1 "0123456789abcdef0123456789abcdef"
#define FUZZ_ID2 "fedcba9876543210fedcba9876543210"
#define FUZZ_ID3 "00000000000000000000000000000001"
#define FUZZ_NOW 1700000000LL

static char fuzz_spool[256];
static struct outbox *fuzz_ob;

static const char *const fuzz_subs[] = {"tmp", "queue", "done", "dead", "keys"};

/* Removes every file in each spool folder (the folders stay). */
static void fuzz_spool_empty(void)
{
    size_t i;

    for (i = 0; i < sizeof(fuzz_subs) / sizeof(fuzz_subs[0]); i++) {
        char dir[512], path[1024];
        struct dirent *e;
        DIR *d;

        snprintf(dir, sizeof(dir), "%s/%s", fuzz_spool, fuzz_subs[i]);
        d = opendir(dir);
        if (d == NULL)
            continue;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            (void)unlink(path);
        }
        closedir(d);
    }
}

static void fuzz_spool_remove(void)
{
    size_t i;

    outbox_close(fuzz_ob);
    fuzz_ob = NULL;
    fuzz_spool_empty();
    for (i = 0; i < sizeof(fuzz_subs) / sizeof(fuzz_subs[0]); i++) {
        char dir[512];

        snprintf(dir, sizeof(dir), "%s/%s", fuzz_spool, fuzz_subs[i]);
        (void)rmdir(dir);
    }
    (void)rmdir(fuzz_spool);
}

/* Opens the spool once per process, in a fresh temp dir removed at exit. */
static struct outbox *fuzz_spool_open(void)
{
    struct outbox_conf conf;
    struct lb_error err;
    struct stat st;
    const char *base = getenv("TMPDIR");

    if (fuzz_ob != NULL)
        return fuzz_ob;
    if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
        base = "/dev/shm";
    else if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(fuzz_spool, sizeof(fuzz_spool), "%s/leadbridge-fuzz-spool-XXXXXX", base);
    if (mkdtemp(fuzz_spool) == NULL)
        fuzz_fail("cannot make a temp spool");
    outbox_conf_default(&conf);
    conf.jitter = 0;
    memset(&err, 0, sizeof(err));
    fuzz_ob = outbox_open(fuzz_spool, &conf, &err);
    if (fuzz_ob == NULL)
        fuzz_fail("cannot open the temp spool");
    atexit(fuzz_spool_remove);
    return fuzz_ob;
}

static void fuzz_write(const char *sub, const char *id, const uint8_t *data, size_t size)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s/%s.json", fuzz_spool, sub, id);
    f = fopen(path, "wb");
    if (f == NULL)
        fuzz_fail("cannot write a job file");
    if (size > 0 && fwrite(data, 1, size, f) != size)
        fuzz_fail("cannot write a job file");
    if (fclose(f) != 0)
        fuzz_fail("cannot write a job file");
}

/* Answers ok, transient and permanent in turn. */
static void fuzz_deliver(void *ctx, const json_t *job, const char *target, const json_t *entry,
                         struct target_result *result)
{
    unsigned *turn = ctx;

    (void)job;
    (void)target;
    (void)entry;
    switch ((*turn)++ % 3) {
    case 0:
        result->outcome = DELIVERY_OK;
        result->http_status = 201;
        snprintf(result->lead_id, sizeof(result->lead_id), "42");
        break;
    case 1:
        result->outcome = DELIVERY_TRANSIENT;
        result->http_status = 503;
        result->retry_after = 120;
        snprintf(result->reason, sizeof(result->reason), "HTTP 503");
        break;
    default:
        result->outcome = DELIVERY_PERMANENT;
        result->http_status = 422;
        snprintf(result->reason, sizeof(result->reason), "HTTP 422");
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct outbox *ob = fuzz_spool_open();
    struct outbox_run_stats rs;
    struct outbox_stats st;
    struct outbox_claim *c = NULL;
    unsigned turn = 0;
    size_t moved = 0;
    json_t *j;

    if (size > OUTBOX_FILE_MAX)
        return 0;
    fuzz_write("queue", FUZZ_ID1, data, size);
    fuzz_write("dead", FUZZ_ID2, data, size);
    fuzz_write("done", FUZZ_ID3, data, size);

    j = outbox_list(ob);
    if (j != NULL && !json_is_array(j))
        fuzz_fail("outbox_list did not return an array");
    json_decref(j);
    json_decref(outbox_show(ob, FUZZ_ID1));
    json_decref(outbox_show(ob, FUZZ_ID2));
    (void)outbox_stats(ob, FUZZ_NOW, &st);
    (void)outbox_run(ob, FUZZ_NOW, fuzz_deliver, &turn, 0, &rs);
    (void)outbox_run(ob, FUZZ_NOW + 80LL * 365 * 86400, fuzz_deliver, &turn, 0, &rs);
    (void)outbox_retry_all(ob, FUZZ_NOW, &moved);
    j = outbox_list(ob);
    if (j != NULL && !json_is_array(j))
        fuzz_fail("outbox_list did not return an array");
    json_decref(j);
    json_decref(outbox_load_response(ob, FUZZ_ID1, NULL));
    json_decref(outbox_load_response(ob, FUZZ_ID3, NULL));
    switch (outbox_claim(ob, FUZZ_ID1, &c)) {
    case LB_OK:
        outbox_release(c);
        break;
    case LB_ERR_CONFLICT:
        fuzz_fail("a job was left claimed after the runs");
    default:
        if (c != NULL)
            fuzz_fail("outbox_claim failed but gave a claim");
    }
    fuzz_spool_empty();
    return 0;
}
