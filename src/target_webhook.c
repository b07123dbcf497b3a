/*
 * target_webhook.c: the generic signed webhook target (type "webhook").
 *
 * Lets a user reach any system we have no dedicated target for. Each delivery is one POST of
 * {"type": "lead.created" | "lead.updated", "submission_id", "lead_id" (updates), "lead"} signed
 * the Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature "v1,<base64 HMAC>"),
 * so a receiver can check it with any Standard Webhooks library. webhook-id is stable across
 * retries of the same submission, so receivers can de-duplicate.
 *
 * Config: {"type": "webhook", "url": "https://...", "secret": "whsec_<base64>" or raw text,
 *          "connect_timeout": 3, "timeout": 15, "headers": {"Name": "value", ...}}
 */
#include "target.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "buf.h"
#include "conf.h"
#include "crypto.h"

#define WEBHOOK_SECRET_PREFIX "whsec_"
#define WEBHOOK_KEY_MAX 1024
/* Three header slots are ours: webhook-id, webhook-timestamp, webhook-signature. */
#define WEBHOOK_EXTRA_HEADERS (HTTP_MAX_HEADERS - 3)
#define WEBHOOK_REASON_MAX 200
#define WEBHOOK_PATH_SIZE 512

struct webhook {
    char url[sizeof(((struct http_call *)0)->url)];
    uint8_t *key;
    size_t key_len;
    long connect_timeout_ms;
    long timeout_ms;
    char *header_names[WEBHOOK_EXTRA_HEADERS];
    char *header_values[WEBHOOK_EXTRA_HEADERS];
    size_t n_headers;
};

static const char *const webhook_keys[] = {"type", "url", "secret", "connect_timeout", "timeout",
                                           "headers", NULL};

/* Header names the target sets itself or that would corrupt the request. */
static const char *const webhook_reserved_headers[] = {
    "webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length",
    "host", "transfer-encoding", "expect", NULL};

static void webhook_free(void *state)
{
    struct webhook *w = state;
    size_t i;

    if (w == NULL)
        return;
    if (w->key != NULL) {
        memset(w->key, 0, WEBHOOK_KEY_MAX);
        free(w->key);
    }
    for (i = 0; i < w->n_headers; i++) {
        free(w->header_names[i]);
        free(w->header_values[i]);
    }
    free(w);
}

/* Whether url is an absolute http(s) URL with a host and no spaces or control characters. */
static bool webhook_url_ok(const char *url, size_t max)
{
    const char *host, *p;

    if (strncmp(url, "https://", 8) == 0)
        host = url + 8;
    else if (strncmp(url, "http://", 7) == 0)
        host = url + 7;
    else
        return false;
    if (strlen(url) >= max || *host == '\0' || *host == '/' || *host == '?' || *host == '#')
        return false;
    for (p = url; *p != '\0'; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f)
            return false;
    }
    return true;
}

/* See target.h. */
long target_webhook_secret_key(const char *secret, uint8_t *out, size_t out_size)
{
    size_t plen = strlen(WEBHOOK_SECRET_PREFIX), len = strlen(secret);
    long n;

    if (strncmp(secret, WEBHOOK_SECRET_PREFIX, plen) == 0) {
        n = base64_decode(secret + plen, len - plen, out, out_size);
        return n <= 0 ? -1 : n;
    }
    if (len > out_size)
        return -2;
    memcpy(out, secret, len);
    return (long)len;
}

/* Reads "secret" into w->key: "whsec_" + base64 is decoded, anything else is taken as bytes. */
static void webhook_read_secret(struct webhook *w, const char *secret, const char *path,
                                struct diag *d)
{
    char p[WEBHOOK_PATH_SIZE];
    size_t len = strlen(secret);
    long n;

    conf_path(p, sizeof(p), path, "secret");
    if (len == 0)
        return;
    w->key = malloc(WEBHOOK_KEY_MAX);
    if (w->key == NULL) {
        diag_add(d, p, "out of memory");
        return;
    }
    n = target_webhook_secret_key(secret, w->key, WEBHOOK_KEY_MAX);
    if (n == -1)
        diag_add(d, p, "a \"whsec_\" secret must be followed by base64 (at most %d bytes)",
                 WEBHOOK_KEY_MAX);
    else if (n < 0)
        diag_add(d, p, "is longer than %d bytes", WEBHOOK_KEY_MAX);
    else
        w->key_len = (size_t)n;
}

/* Reads the optional "headers" object of static extra headers, checked as HTTP headers now. */
static void webhook_read_headers(struct webhook *w, const json_t *conf, const char *path,
                                 struct diag *d)
{
    const json_t *headers = json_object_get(conf, "headers");
    char p[WEBHOOK_PATH_SIZE], hp[WEBHOOK_PATH_SIZE];
    const char *name;
    json_t *value;

    if (headers == NULL)
        return;
    conf_path(p, sizeof(p), path, "headers");
    if (!json_is_object(headers)) {
        diag_add(d, p, "must be an object of header names to values");
        return;
    }
    if (json_object_size(headers) > WEBHOOK_EXTRA_HEADERS) {
        diag_add(d, p, "at most %d extra headers", WEBHOOK_EXTRA_HEADERS);
        return;
    }
    json_object_foreach((json_t *)headers, name, value) {
        size_t i;
        bool reserved = false;

        conf_path(hp, sizeof(hp), p, name);
        if (!json_is_string(value)) {
            diag_add(d, hp, "a header value must be a string");
            continue;
        }
        if (!http_header_valid(name, json_string_value(value)) ||
            strlen(json_string_value(value)) != json_string_length(value)) {
            diag_add(d, hp, "not a valid HTTP header (names are tokens without ':' or spaces; "
                            "values hold no CR, LF or other control characters)");
            continue;
        }
        for (i = 0; webhook_reserved_headers[i] != NULL; i++)
            reserved = reserved || strcasecmp(name, webhook_reserved_headers[i]) == 0;
        if (reserved) {
            diag_add(d, hp, "the header \"%s\" is set by leadbridge", name);
            continue;
        }
        w->header_names[w->n_headers] = strdup(name);
        w->header_values[w->n_headers] = strdup(json_string_value(value));
        if (w->header_names[w->n_headers] == NULL || w->header_values[w->n_headers] == NULL) {
            free(w->header_names[w->n_headers]);
            free(w->header_values[w->n_headers]);
            diag_add(d, hp, "out of memory");
            continue;
        }
        w->n_headers++;
    }
}

/*
 * See struct target_ops.configure. Returns a new state (freed with webhook_free) or NULL when any
 * mistake was reported under path.
 */
static void *webhook_configure(const json_t *conf, const char *path, struct diag *d)
{
    struct webhook *w = calloc(1, sizeof(*w));
    size_t errors = d->count;
    const char *url, *secret;
    char p[WEBHOOK_PATH_SIZE];

    if (w == NULL) {
        diag_add(d, path, "out of memory");
        return NULL;
    }
    conf_check_keys(conf, path, webhook_keys, d);
    url = conf_string(conf, "url", path, NULL, true, d);
    if (url != NULL && url[0] != '\0') {
        conf_path(p, sizeof(p), path, "url");
        if (!webhook_url_ok(url, sizeof(w->url)))
            diag_add(d, p, "must be an absolute http:// or https:// URL without spaces");
        else if (snprintf(w->url, sizeof(w->url), "%s", url) < 0)
            diag_add(d, p, "could not be stored");
    }
    secret = conf_string(conf, "secret", path, NULL, true, d);
    if (secret != NULL)
        webhook_read_secret(w, secret, path, d);
    w->connect_timeout_ms = (long)conf_integer(conf, "connect_timeout", path, 3, 1, 60, d) * 1000;
    w->timeout_ms = (long)conf_integer(conf, "timeout", path, 15, 1, 300, d) * 1000;
    webhook_read_headers(w, conf, path, d);
    if (d->count > errors || w->key_len == 0 || w->url[0] == '\0') {
        if (d->count == errors)
            diag_add(d, path, "the webhook target is incomplete");
        webhook_free(w);
        return NULL;
    }
    return w;
}

static bool webhook_supports(enum target_action action)
{
    return action == TARGET_CREATE || action == TARGET_UPDATE;
}

/* Nothing is required of a lead: the receiver decides. */
static int webhook_validate(const void *state, enum target_action action, const json_t *lead,
                            json_t *errors)
{
    return 0;
}

/*
 * See target.h. The signed content is msg_id "." timestamp "." body, exactly the bytes sent.
 */
enum lb_err target_webhook_sign(const void *key, size_t key_len, const char *msg_id,
                                long long timestamp, const char *body, size_t body_len, char *out,
                                size_t out_size)
{
    struct buf content;
    uint8_t mac[SHA256_DIGEST_SIZE];
    enum lb_err rc;
    size_t n;

    buf_init(&content, body_len + strlen(msg_id) + 32);
    rc = buf_printf(&content, "%s.%lld.", msg_id, timestamp);
    if (rc == LB_OK)
        rc = buf_append(&content, body, body_len);
    if (rc != LB_OK)
        goto out;
    hmac_sha256(key, key_len, content.data, content.len, mac);
    rc = LB_ERR_INTERNAL;
    if (out_size < 4)
        goto out;
    memcpy(out, "v1,", 3);
    n = base64_encode(mac, sizeof(mac), false, out + 3, out_size - 3);
    if (n == 0) {
        out[0] = '\0';
        goto out;
    }
    rc = LB_OK;

out:
    buf_free(&content);
    return rc;
}

/* The JSON body of one delivery. Returns a new string (caller frees) or NULL. */
static char *webhook_body(enum target_action action, const json_t *lead, const char *lead_id,
                          const char *submission_id)
{
    json_t *root = json_object(), *copy = NULL;
    char *text = NULL;
    const char *type;
    int rc;

    if (root == NULL)
        goto out;
    copy = lead != NULL ? json_deep_copy(lead) : json_object();
    if (copy == NULL)
        goto out;
    type = action == TARGET_UPDATE ? "lead.updated" : "lead.created";
    rc = json_object_set_new(root, "type", json_string(type));
    rc |= json_object_set_new(root, "submission_id", json_string(submission_id));
    if (action == TARGET_UPDATE)
        rc |= json_object_set_new(root, "lead_id", json_string(lead_id));
    rc |= json_object_set_new(root, "lead", copy);
    copy = NULL;
    if (rc != 0)
        goto out;
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);

out:
    json_decref(copy);
    json_decref(root);
    return text;
}

/* See struct target_ops.build. LB_ERR_BAD_REQUEST when an id is missing or not header-safe. */
static enum lb_err webhook_build(const void *state, enum target_action action, const json_t *lead,
                                 const char *lead_id, const char *submission_id,
                                 struct http_call *call)
{
    const struct webhook *w = state;
    char msg_id[128], ts[32], sig[64];
    long long now = (long long)time(NULL);
    enum lb_err rc = LB_OK;
    size_t i;
    int n;

    if (!webhook_supports(action))
        return LB_ERR_INTERNAL;
    if (submission_id == NULL || submission_id[0] == '\0' ||
        (action == TARGET_UPDATE && (lead_id == NULL || lead_id[0] == '\0')) ||
        (lead != NULL && !json_is_object(lead)))
        return LB_ERR_BAD_REQUEST;
    n = snprintf(msg_id, sizeof(msg_id), "msg_%s%s", submission_id,
                 action == TARGET_UPDATE ? "_update" : "");
    if (n < 0 || (size_t)n >= sizeof(msg_id))
        return LB_ERR_BAD_REQUEST;
    n = snprintf(ts, sizeof(ts), "%lld", now);
    if (n < 0 || (size_t)n >= sizeof(ts))
        return LB_ERR_INTERNAL;

    call->method = "POST";
    memcpy(call->url, w->url, sizeof(call->url));
    call->connect_timeout_ms = w->connect_timeout_ms;
    call->timeout_ms = w->timeout_ms;
    call->body = webhook_body(action, lead, lead_id, submission_id);
    if (call->body == NULL)
        return LB_ERR_NOMEM;
    call->body_len = strlen(call->body);
    rc = target_webhook_sign(w->key, w->key_len, msg_id, now, call->body, call->body_len, sig,
                             sizeof(sig));
    for (i = 0; rc == LB_OK && i < w->n_headers; i++)
        rc = http_call_add_header(call, w->header_names[i], w->header_values[i]);
    if (rc == LB_OK)
        rc = http_call_add_header(call, "webhook-id", msg_id);
    if (rc == LB_OK)
        rc = http_call_add_header(call, "webhook-timestamp", ts);
    if (rc == LB_OK)
        rc = http_call_add_header(call, "webhook-signature", sig);
    return rc;
}

/*
 * A short, printable explanation from a refusal's body: its "message" or "error" string when the
 * body is a JSON object holding one, else the body text. At most WEBHOOK_REASON_MAX bytes, never
 * cut inside a UTF-8 sequence, control characters turned into spaces.
 */
static void webhook_reason_from_body(const struct http_reply *reply, char *out, size_t size)
{
    const char *text = reply->body;
    size_t len = reply->body_len, i, o = 0;
    json_t *root = NULL, *msg;

    out[0] = '\0';
    if (text == NULL || len == 0 || size == 0)
        return;
    root = json_loadb(text, len, 0, NULL);
    if (json_is_object(root)) {
        msg = json_object_get(root, "message");
        if (!json_is_string(msg))
            msg = json_object_get(root, "error");
        if (json_is_string(msg)) {
            text = json_string_value(msg);
            len = json_string_length(msg);
        }
    }
    if (len > WEBHOOK_REASON_MAX)
        len = WEBHOOK_REASON_MAX;
    if (len >= size)
        len = size - 1;
    /* Back off to a UTF-8 boundary when the cut fell inside a sequence. */
    if (len < strlen(text))
        while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
            len--;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];

        if (c == '\0')
            break;
        out[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[o] = '\0';
    json_decref(root);
}

/* Whether an id from the answer is usable: 1..max-1 visible ASCII characters. */
static bool webhook_id_ok(const char *id, size_t len, size_t max)
{
    size_t i;

    if (len == 0 || len >= max)
        return false;
    for (i = 0; i < len; i++) {
        if ((unsigned char)id[i] <= 0x20 || (unsigned char)id[i] >= 0x7f)
            return false;
    }
    return true;
}

/*
 * See struct target_ops.classify. 2xx is success and the lead id is the answer's "id" when it is
 * a string of visible ASCII or an integer (else left empty: target_deliver then uses the submission
 * id, or the given lead id for updates); anything else is
 * classed by status with the body's explanation as the reason.
 */
static void webhook_classify(const void *state, enum target_action action,
                             const struct http_reply *reply, struct target_result *result)
{
    char why[WEBHOOK_REASON_MAX + 1];
    json_t *root = NULL, *id;
    int n = 0;

    result->http_status = reply->status;
    result->outcome = target_outcome_for_status(reply->status);
    if (result->outcome != DELIVERY_OK) {
        webhook_reason_from_body(reply, why, sizeof(why));
        if (why[0] != '\0')
            n = snprintf(result->reason, sizeof(result->reason), "webhook answered HTTP %ld: %s",
                         reply->status, why);
        else
            n = snprintf(result->reason, sizeof(result->reason), "webhook answered HTTP %ld",
                         reply->status);
        if (n < 0)
            result->reason[0] = '\0';
        return;
    }
    if (reply->body == NULL || reply->body_len == 0)
        return;
    root = json_loadb(reply->body, reply->body_len, 0, NULL);
    id = json_object_get(root, "id");
    if (json_is_string(id) && webhook_id_ok(json_string_value(id), json_string_length(id),
                                            sizeof(result->lead_id)))
        n = snprintf(result->lead_id, sizeof(result->lead_id), "%s", json_string_value(id));
    else if (json_is_integer(id))
        n = snprintf(result->lead_id, sizeof(result->lead_id), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(id));
    if (n < 0)
        result->lead_id[0] = '\0';
    json_decref(root);
}

const struct target_ops target_webhook_ops = {
    .type = "webhook",
    .configure = webhook_configure,
    .free = webhook_free,
    .supports = webhook_supports,
    .validate = webhook_validate,
    .build = webhook_build,
    .classify = webhook_classify,
};
