/*
 * ratelimit.c: shared buckets, caps and single-use marks in a mapped file (see ratelimit.h).
 *
 * File layout: a 64-byte header (the layout tag) and then slots of struct rl_slot. A slot's key is
 * the first 8 bytes of SHA-256 over the key text (0 means free); "until" is the moment after
 * which the slot means nothing. A key looks at RL_PROBE consecutive slots from its hash.
 */
#include "ratelimit.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "crypto.h"
#include "shmfile.h"

#define RL_MAGIC 0x3170616d626c4c00ULL /* "\0Llbmap1" */
#define RL_PROBE 32
#define RL_SLOTS_MIN 64
#define RL_SLOTS_MAX (16 * 1024 * 1024)

enum rl_kind { RL_BUCKET = 1, RL_COUNT, RL_MARK };

struct rl_slot {
    uint64_t key;
    int64_t until;    /* ms since the epoch; after it the slot is free */
    int64_t stamp;    /* bucket: when value was last brought up to date; hold: paused until */
    double value;     /* bucket: tokens; count: events */
};

struct rl_header {
    uint64_t magic; /* shmfile_open_tagged's layout tag */
    uint8_t pad[56];
};

struct ratelimit {
    pthread_mutex_t lock; /* threads of this process; flock covers the other processes */
    int fd;
    size_t slots;
    size_t size;
    struct rl_header *head;
    struct rl_slot *slot;
};

struct ratelimit *ratelimit_open(const char *dir, size_t slots, struct lb_error *err)
{
    struct ratelimit *rl;
    char name[64], path[4096];
    int n;

    if (slots < RL_SLOTS_MIN || slots > RL_SLOTS_MAX) {
        lb_fail(err, LB_ERR_INTERNAL, "ratelimit: %zu slots is out of range", slots);
        return NULL;
    }
    snprintf(name, sizeof(name), "guard-%zu.map", slots);
    n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        lb_fail(err, LB_ERR_INTERNAL, "ratelimit: the spool path is too long");
        return NULL;
    }
    rl = calloc(1, sizeof(*rl));
    if (rl == NULL) {
        lb_fail(err, LB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    rl->fd = -1;
    rl->slots = slots;
    rl->size = sizeof(struct rl_header) + slots * sizeof(struct rl_slot);
    pthread_mutex_init(&rl->lock, NULL);
    /* All zero is a valid table (every slot free); the tag says the layout. */
    rl->head = shmfile_open_tagged(dir, name, rl->size, RL_MAGIC, err);
    if (rl->head == NULL)
        goto fail;
    rl->slot = (struct rl_slot *)(rl->head + 1);
    rl->fd = open(path, O_RDWR | O_CLOEXEC);
    if (rl->fd < 0) {
        lb_fail(err, LB_ERR_IO, "cannot open %s", path);
        goto fail;
    }
    return rl;
fail:
    ratelimit_close(rl);
    return NULL;
}

void ratelimit_close(struct ratelimit *rl)
{
    if (rl == NULL)
        return;
    shmfile_close(rl->head, rl->size);
    if (rl->fd >= 0)
        close(rl->fd);
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

static uint64_t rl_hash(const char *key, enum rl_kind kind)
{
    uint8_t d[SHA256_DIGEST_SIZE];
    uint64_t h = 0;
    char k[1024];
    int n = snprintf(k, sizeof(k), "%d:%s", (int)kind, key);

    sha256(k, n < 0 ? 0 : (size_t)n >= sizeof(k) ? sizeof(k) - 1 : (size_t)n, d);
    for (int i = 0; i < 8; i++)
        h = (h << 8) | d[i];
    return h != 0 ? h : 1;
}

/* x rounded up to a whole number of milliseconds (x >= 0; no libm). */
static long long rl_ceil(double x)
{
    long long n = (long long)x;

    return (double)n < x ? n + 1 : n;
}

static void rl_lock(struct ratelimit *rl)
{
    pthread_mutex_lock(&rl->lock);
    while (flock(rl->fd, LOCK_EX) != 0)
        ; /* only EINTR: the descriptor is ours and valid */
}

static void rl_unlock(struct ratelimit *rl)
{
    flock(rl->fd, LOCK_UN);
    pthread_mutex_unlock(&rl->lock);
}

/*
 * The slot for h: its own when live, else a free or expired one (cleared, *fresh set), else the
 * live one that expires soonest, the oldest of those (cleared, *fresh set). Called with the lock held.
 */
static struct rl_slot *rl_find(struct ratelimit *rl, uint64_t h, long long now, bool *fresh)
{
    size_t start = (size_t)(h % rl->slots);
    struct rl_slot *spare = NULL, *oldest = NULL;

    for (size_t i = 0; i < RL_PROBE; i++) {
        struct rl_slot *s = &rl->slot[(start + i) % rl->slots];
        bool dead = s->key == 0 || s->until <= now;

        if (s->key == h && !dead) {
            *fresh = false;
            return s;
        }
        if (dead && spare == NULL)
            spare = s;
        if (!dead && (oldest == NULL || s->until < oldest->until ||
                      (s->until == oldest->until && s->stamp < oldest->stamp)))
            oldest = s;
    }
    if (spare == NULL)
        spare = oldest;
    memset(spare, 0, sizeof(*spare));
    spare->key = h;
    *fresh = true;
    return spare;
}

bool ratelimit_take(struct ratelimit *rl, const char *key, double burst, double per_second,
                    long long now_ms, long long *retry_after_ms)
{
    struct rl_slot *s;
    bool fresh, ok;
    double tokens;

    if (retry_after_ms != NULL)
        *retry_after_ms = 0;
    if (burst < 1)
        burst = 1;
    if (per_second <= 0)
        per_second = 1e-9;
    rl_lock(rl);
    s = rl_find(rl, rl_hash(key, RL_BUCKET), now_ms, &fresh);
    if (fresh) {
        s->value = burst;
        s->stamp = now_ms;
    }
    if (s->stamp > now_ms && s->value <= 0) {
        /* held: nothing until the hold ends */
        if (retry_after_ms != NULL)
            *retry_after_ms = s->stamp - now_ms;
        rl_unlock(rl);
        return false;
    }
    tokens = s->value;
    if (now_ms > s->stamp)
        tokens += (double)(now_ms - s->stamp) / 1000.0 * per_second;
    if (tokens > burst)
        tokens = burst;
    ok = tokens >= 1.0;
    if (ok)
        tokens -= 1.0;
    else if (retry_after_ms != NULL)
        *retry_after_ms = rl_ceil((1.0 - tokens) / per_second * 1000.0);
    s->value = tokens;
    if (now_ms > s->stamp)
        s->stamp = now_ms;
    /* Full again after this long: from then on the slot is as good as absent. */
    s->until = s->stamp + rl_ceil((burst - tokens) / per_second * 1000.0) + 1;
    rl_unlock(rl);
    return ok;
}

void ratelimit_mark(struct ratelimit *rl, const char *key, long long until_ms, long long now_ms)
{
    struct rl_slot *s;
    bool fresh;

    if (until_ms <= now_ms)
        return;
    rl_lock(rl);
    s = rl_find(rl, rl_hash(key, RL_MARK), now_ms, &fresh);
    if (fresh)
        s->stamp = now_ms;
    if (fresh || s->until < until_ms)
        s->until = until_ms;
    rl_unlock(rl);
}

long long ratelimit_marked(struct ratelimit *rl, const char *key, long long now_ms)
{
    uint64_t h = rl_hash(key, RL_MARK);
    size_t start = (size_t)(h % rl->slots);
    long long until = 0;

    rl_lock(rl);
    for (size_t i = 0; i < RL_PROBE && until == 0; i++) {
        const struct rl_slot *s = &rl->slot[(start + i) % rl->slots];

        if (s->key == h && s->until > now_ms)
            until = s->until;
    }
    rl_unlock(rl);
    return until;
}

long long ratelimit_add(struct ratelimit *rl, const char *key, long long delta, long long until_ms,
                        long long now_ms)
{
    struct rl_slot *s;
    bool fresh;
    long long v;

    rl_lock(rl);
    s = rl_find(rl, rl_hash(key, RL_COUNT), now_ms, &fresh);
    s->value += (double)delta;
    if (s->value < 0)
        s->value = 0;
    s->until = until_ms > now_ms ? until_ms : now_ms + 1;
    v = (long long)s->value;
    rl_unlock(rl);
    return v;
}

void ratelimit_hold(struct ratelimit *rl, const char *key, long long until_ms, long long now_ms)
{
    struct rl_slot *s;
    bool fresh;

    if (until_ms <= now_ms)
        return;
    rl_lock(rl);
    s = rl_find(rl, rl_hash(key, RL_BUCKET), now_ms, &fresh);
    if (fresh || s->stamp < until_ms) {
        s->value = 0;
        s->stamp = until_ms;
    }
    if (s->until < until_ms + 1)
        s->until = until_ms + 1;
    rl_unlock(rl);
}

bool ratelimit_count(struct ratelimit *rl, const char *key, long long limit, long long until_ms,
                     long long now_ms)
{
    struct rl_slot *s;
    bool fresh, ok;

    rl_lock(rl);
    s = rl_find(rl, rl_hash(key, RL_COUNT), now_ms, &fresh);
    if (fresh)
        s->until = until_ms;
    ok = s->value < (double)limit;
    if (ok)
        s->value += 1;
    rl_unlock(rl);
    return ok;
}

bool ratelimit_first_use(struct ratelimit *rl, const char *key, long long until_ms,
                         long long now_ms)
{
    struct rl_slot *s;
    bool fresh;

    rl_lock(rl);
    s = rl_find(rl, rl_hash(key, RL_MARK), now_ms, &fresh);
    if (fresh) {
        s->until = until_ms > now_ms ? until_ms : now_ms + 1;
        s->stamp = now_ms; /* among marks that expire together, the oldest goes first */
    }
    rl_unlock(rl);
    return fresh;
}
