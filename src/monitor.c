/*
 * monitor.c: the metrics and health endpoints and `queue stats` (see monitor.h).
 */
#include "monitor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "conf.h"
#include "crypto.h"
#include "outbox.h"

#define MONITOR_PATH_SIZE 512
#define MONITOR_MAX_ALLOW 64
#define MONITOR_TEXT_MAX (2 * 1024 * 1024)
#define PROMETHEUS_TYPE "text/plain; version=0.0.4; charset=utf-8"

static const char *const metrics_keys[] = {"path", "allow", "token", NULL};
static const char *const health_keys[] = {"path", "max_queue_age", NULL};

/* Parses "1.2.3.4", "::1", "10.0.0.0/8" or "fd00::/8" into *n. Returns false on bad syntax. */
static bool parse_net(const char *s, struct monitor_net *n)
{
    char host[64];
    const char *slash = strchr(s, '/');
    size_t len = slash != NULL ? (size_t)(slash - s) : strlen(s);
    int max;

    if (len == 0 || len >= sizeof(host))
        return false;
    memcpy(host, s, len);
    host[len] = '\0';
    memset(n, 0, sizeof(*n));
    if (inet_pton(AF_INET, host, n->addr) == 1) {
        n->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, host, n->addr) == 1) {
        n->family = AF_INET6;
        max = 128;
    } else {
        return false;
    }
    n->prefix = max;
    if (slash != NULL) {
        char *end;
        long p = strtol(slash + 1, &end, 10);

        if (slash[1] == '\0' || *end != '\0' || p < 0 || p > max)
            return false;
        n->prefix = (int)p;
    }
    return true;
}

static bool net_contains(const struct monitor_net *n, int family, const unsigned char *addr)
{
    int full = n->prefix / 8, rest = n->prefix % 8;

    if (n->family != family)
        return false;
    if (memcmp(n->addr, addr, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    return ((n->addr[full] ^ addr[full]) & (0xff << (8 - rest))) == 0;
}

/* Whether addr (REMOTE_ADDR text; an IPv4-mapped IPv6 address counts as IPv4) is allowed. */
static bool address_allowed(const struct monitor_conf *c, const char *text)
{
    unsigned char addr[16];
    int family;

    if (text == NULL)
        return false;
    if (inet_pton(AF_INET, text, addr) == 1) {
        family = AF_INET;
    } else if (inet_pton(AF_INET6, text, addr) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

        family = AF_INET6;
        if (memcmp(addr, mapped, sizeof(mapped)) == 0) {
            memmove(addr, addr + 12, 4);
            family = AF_INET;
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < c->n_allow; i++)
        if (net_contains(&c->allow[i], family, addr))
            return true;
    return false;
}

static char *read_path(const json_t *obj, const char *path, struct diag *d)
{
    const char *s = conf_string(obj, "path", path, NULL, true, d);
    char p[MONITOR_PATH_SIZE];

    if (s == NULL || *s == '\0')
        return NULL;
    if (s[0] != '/') {
        conf_path(p, sizeof(p), path, "path");
        diag_add(d, p, "must start with /");
        return NULL;
    }
    return strdup(s);
}

static void read_allow(const json_t *metrics, struct diag *d, struct monitor_conf *out)
{
    const json_t *arr = json_object_get(metrics, "allow");
    char p[MONITOR_PATH_SIZE];
    size_t i;
    json_t *v;

    if (arr == NULL) {
        if (out->token != NULL)
            return; /* a token alone: no address is let in without it */
        out->allow = calloc(2, sizeof(*out->allow));
        if (out->allow == NULL)
            return;
        parse_net("127.0.0.1", &out->allow[0]);
        parse_net("::1", &out->allow[1]);
        out->n_allow = 2;
        return;
    }
    if (!json_is_array(arr) || json_array_size(arr) > MONITOR_MAX_ALLOW) {
        diag_add(d, "metrics.allow", "must be an array of at most %d addresses or CIDR blocks",
                 MONITOR_MAX_ALLOW);
        return;
    }
    out->allow = calloc(json_array_size(arr) + 1, sizeof(*out->allow));
    if (out->allow == NULL)
        return;
    json_array_foreach(arr, i, v) {
        conf_path_index(p, sizeof(p), "metrics.allow", i);
        if (!json_is_string(v) || !parse_net(json_string_value(v), &out->allow[out->n_allow]))
            diag_add(d, p, "must be an IPv4 or IPv6 address or CIDR block (\"10.0.0.0/8\")");
        else
            out->n_allow++;
    }
}

void monitor_conf_from_json(const json_t *metrics, const json_t *health, struct diag *d,
                            struct monitor_conf *out)
{
    memset(out, 0, sizeof(*out));
    out->max_queue_age = 3600;
    if (metrics != NULL && !json_is_object(metrics)) {
        diag_add(d, "metrics", "must be an object");
    } else if (metrics != NULL) {
        const char *token;

        conf_check_keys(metrics, "metrics", metrics_keys, d);
        out->metrics_path = read_path(metrics, "metrics", d);
        token = conf_string(metrics, "token", "metrics", NULL, false, d);
        if (token != NULL && *token == '\0')
            token = NULL; /* "${METRICS_TOKEN:-}": no token */
        if (token != NULL && strlen(token) < 16)
            diag_add(d, "metrics.token", "must be at least 16 characters");
        else if (token != NULL)
            out->token = strdup(token);
        read_allow(metrics, d, out);
    }
    if (health != NULL && !json_is_object(health)) {
        diag_add(d, "health", "must be an object");
    } else if (health != NULL) {
        conf_check_keys(health, "health", health_keys, d);
        out->health_path = read_path(health, "health", d);
        out->max_queue_age =
            conf_integer(health, "max_queue_age", "health", 3600, 1, 365LL * 86400, d);
    }
    if (out->metrics_path != NULL && out->health_path != NULL &&
        strcmp(out->metrics_path, out->health_path) == 0)
        diag_add(d, "health.path", "is the same as metrics.path");
}

void monitor_conf_free(struct monitor_conf *c)
{
    if (c == NULL)
        return;
    free(c->metrics_path);
    free(c->allow);
    if (c->token != NULL)
        memset(c->token, 0, strlen(c->token));
    free(c->token);
    free(c->health_path);
    memset(c, 0, sizeof(*c));
}

bool monitor_owns_path(const struct monitor_conf *c, const char *path)
{
    return path != NULL &&
           ((c->metrics_path != NULL && strcmp(c->metrics_path, path) == 0) ||
            (c->health_path != NULL && strcmp(c->health_path, path) == 0));
}

void monitor_queue(struct outbox *ob, long long now, struct metrics_queue *q)
{
    struct outbox_stats st;

    memset(q, 0, sizeof(*q));
    if (ob == NULL || outbox_stats(ob, now, &st) != LB_OK)
        return;
    q->known = true;
    q->queued = (long long)st.queued;
    q->dead = (long long)st.dead;
    q->done = (long long)st.done;
    q->oldest_age = st.oldest_created >= 0 && now > st.oldest_created ? now - st.oldest_created : 0;
}

/* Whether the request carries "Authorization: Bearer <token>" (constant-time compare). */
static bool token_ok(const struct monitor_conf *c, const struct request *req)
{
    const char *auth = req->authorization;
    size_t n;

    if (c->token == NULL || auth == NULL || strncmp(auth, "Bearer ", 7) != 0)
        return false;
    n = strlen(c->token);
    return strlen(auth + 7) == n && crypto_equal(auth + 7, c->token, n);
}

static void answer_metrics(const struct monitor_conf *c, struct outbox *ob,
                           const struct request *req, struct response *out, struct log_record *rec)
{
    struct metrics_queue q;
    struct buf b;

    if (!address_allowed(c, req->remote_addr) && !token_ok(c, req)) {
        rec->outcome = "forbidden";
        response_error(out, LB_ERR_FORBIDDEN, "metrics are for allow-listed addresses or a "
                                              "bearer token");
        return;
    }
    monitor_queue(ob, (long long)time(NULL), &q);
    buf_init(&b, MONITOR_TEXT_MAX);
    if (metrics_render(&q, &b) != LB_OK) {
        buf_free(&b);
        response_error(out, LB_ERR_INTERNAL, "the metrics could not be written");
        return;
    }
    rec->outcome = "metrics";
    response_text(out, 200, PROMETHEUS_TYPE, buf_steal(&b));
}

/* Whether a file can be created and written in the spool's tmp/ now; why not into why. */
static bool spool_writable(struct outbox *ob, char *why, size_t size)
{
    char path[4096];
    unsigned char rnd[8];
    char hex[17];
    int fd;
    bool ok;

    if (crypto_random(rnd, sizeof(rnd)) != 0) {
        snprintf(why, size, "no randomness");
        return false;
    }
    hex_encode(rnd, sizeof(rnd), hex);
    if (snprintf(path, sizeof(path), "%s/tmp/health.%ld.%s", outbox_dir(ob), (long)getpid(),
                 hex) >= (int)sizeof(path)) {
        snprintf(why, size, "the spool path is too long");
        return false;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(why, size, "the spool is not writable: %s", strerror(errno));
        return false;
    }
    ok = write(fd, "ok\n", 3) == 3;
    if (!ok)
        snprintf(why, size, "the spool is not writable: %s", strerror(errno));
    close(fd);
    unlink(path);
    return ok;
}

static void answer_health(const struct monitor_conf *c, struct outbox *ob, struct response *out,
                          struct log_record *rec)
{
    long long now = (long long)time(NULL);
    struct metrics_queue q;
    char why[300] = "";
    bool ok = true;
    json_t *body, *checks;

    checks = json_object();
    if (ob != NULL) {
        bool spool = strcmp(outbox_store_name(ob), "spool") == 0;

        /* A database store is checked by reading its queue (unreachable: not known). */
        if (spool) {
            ok = spool_writable(ob, why, sizeof(why));
            json_object_set_new(checks, "spool", json_string(ok ? "writable" : "not writable"));
        }
        monitor_queue(ob, now, &q);
        if (!spool)
            json_object_set_new(checks, outbox_store_name(ob),
                                json_string(q.known ? "reachable" : "unreachable"));
        if (!q.known && ok) {
            ok = false;
            snprintf(why, sizeof(why), "the %s queue cannot be read",
                     spool ? "spool's" : "database's");
        }
        if (q.known) {
            json_object_set_new(checks, "queue",
                                json_pack("{s:I,s:I,s:I}", "queued", (json_int_t)q.queued,
                                          "oldest_age", (json_int_t)q.oldest_age,
                                          "max_queue_age", (json_int_t)c->max_queue_age));
            if (ok && q.queued > 0 && q.oldest_age > c->max_queue_age) {
                ok = false;
                snprintf(why, sizeof(why),
                         "the oldest queued job is %lld s old (the limit is %lld s)",
                         q.oldest_age, c->max_queue_age);
            }
        }
    }
    rec->outcome = "health";
    if (ok) {
        body = json_pack("{s:s,s:o}", "status", "ok", "checks", checks);
        response_json(out, 200, body);
        return;
    }
    response_error(out, LB_ERR_UNAVAILABLE, why);
    if (out->body != NULL) {
        json_object_set_new(out->body, "status", json_string("fail"));
        json_object_set_new(out->body, "checks", checks);
    } else {
        json_decref(checks);
    }
}

bool monitor_handle(const struct monitor_conf *c, struct outbox *ob, const struct request *req,
                    struct response *out, struct log_record *rec)
{
    bool metrics = c->metrics_path != NULL && strcmp(req->path, c->metrics_path) == 0;
    bool health = c->health_path != NULL && strcmp(req->path, c->health_path) == 0;

    if (!metrics && !health)
        return false;
    if (req->method != METHOD_GET && req->method != METHOD_HEAD) {
        rec->outcome = "method_not_allowed";
        response_error(out, LB_ERR_METHOD, "this address takes GET");
        out->allow = "GET, HEAD";
        return true;
    }
    if (metrics)
        answer_metrics(c, ob, req, out, rec);
    else
        answer_health(c, ob, out, rec);
    return true;
}

int monitor_print_stats(struct outbox *ob, bool json, long long now, FILE *out)
{
    struct metrics_queue q;
    json_t *j, *group, *inner, *v;
    const char *key, *k2;

    monitor_queue(ob, now, &q);
    j = metrics_json(&q);
    if (j == NULL)
        return 1;
    if (json) {
        json_dumpf(j, out, JSON_INDENT(2) | JSON_SORT_KEYS);
        fputc('\n', out);
        json_decref(j);
        return q.known ? 0 : 1;
    }
    if (q.known)
        fprintf(out, "queue: %lld queued (oldest %lld s), %lld dead, %lld done\n", q.queued,
                q.oldest_age, q.dead, q.done);
    else
        fprintf(out, "queue: the spool cannot be read\n");
    json_object_foreach(j, key, group) {
        if (strcmp(key, "queue") == 0)
            continue;
        fprintf(out, "%s:%s\n", key, json_object_size(group) == 0 ? " none" : "");
        json_object_foreach(group, k2, inner) {
            const char *k3;

            if (json_is_integer(inner)) {
                fprintf(out, "  %s %lld\n", k2, (long long)json_integer_value(inner));
                continue;
            }
            fprintf(out, "  %s", *k2 != '\0' ? k2 : "-");
            json_object_foreach(inner, k3, v) {
                if (json_is_integer(v))
                    fprintf(out, " %s=%lld", *k3 != '\0' ? k3 : "-",
                            (long long)json_integer_value(v));
                else
                    fprintf(out, " %s=%g", k3, json_number_value(v));
            }
            fputc('\n', out);
        }
    }
    json_decref(j);
    return q.known ? 0 : 1;
}
