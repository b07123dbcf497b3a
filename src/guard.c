/*
 * guard.c: honeypot, signed form token and time trap, ALTCHA proof of work, third-party
 * captchas, content checks and inbound rate limits of one form (see guard.h).
 *
 * Keys: the token and the challenge each use their own key derived from the config's secret
 * (HMAC-SHA256(secret, label)), so neither can be made from a lead reference or the other.
 * Token: "<issued ms>.<nonce: 32 hex>.<base64url HMAC(token key, form \n issued \n nonce)>".
 * Challenge (ALTCHA): salt = 24 hex "?expires=<epoch s>", challenge = hex SHA-256(salt number),
 * signature = hex HMAC(challenge key of the form, challenge). A solution is checked for the
 * signature first (constant time), then the expiry, then the work, then single use.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "guard.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <pcre2.h>

#include "buf.h"
#include "conf.h"
#include "crypto.h"
#include "log.h"
#include "respond.h"

#define GUARD_TOKEN_MAX 160
#define GUARD_CHALLENGE_MAX 2048
#define GUARD_CAPTCHA_MAX 4096        /* longest response token sent to a verifier */
#define GUARD_DISPOSABLE_MAX (16 * 1024 * 1024)
#define GUARD_CLOCK_SKEW_MS 5000      /* processes' clocks may differ this much */
#define GUARD_PATH_SIZE 512

const char *const guard_form_keys[] = {"guard", NULL};

enum guard_missing { GUARD_MISSING_ALLOW = 0, GUARD_MISSING_SPAM, GUARD_MISSING__MAX };
static const char *const guard_missing_names[GUARD_MISSING__MAX] = {"allow", "spam"};

enum captcha_provider { CAPTCHA_NONE = 0, CAPTCHA_TURNSTILE, CAPTCHA_HCAPTCHA, CAPTCHA_RECAPTCHA,
                        CAPTCHA__MAX };

/* Each provider's name, the field its widget posts and its documented siteverify URL. */
static const struct {
    const char *name;
    const char *field;
    const char *url;
} captcha_providers[CAPTCHA__MAX] = {
    [CAPTCHA_NONE] = {"none", NULL, NULL},
    [CAPTCHA_TURNSTILE] = {"turnstile", "cf-turnstile-response",
                           "https://challenges.cloudflare.com/turnstile/v0/siteverify"},
    [CAPTCHA_HCAPTCHA] = {"hcaptcha", "h-captcha-response", "https://api.hcaptcha.com/siteverify"},
    [CAPTCHA_RECAPTCHA] = {"recaptcha", "g-recaptcha-response",
                           "https://www.google.com/recaptcha/api/siteverify"},
};

/* The scripts a form may expect, as Unicode block ranges of their letters. */
enum guard_script {
    SCRIPT_LATIN = 0, SCRIPT_GREEK, SCRIPT_CYRILLIC, SCRIPT_ARMENIAN, SCRIPT_HEBREW, SCRIPT_ARABIC,
    SCRIPT_DEVANAGARI, SCRIPT_THAI, SCRIPT_GEORGIAN, SCRIPT_HANGUL, SCRIPT_HIRAGANA,
    SCRIPT_KATAKANA, SCRIPT_HAN, SCRIPT__MAX
};
static const char *const guard_script_names[SCRIPT__MAX] = {
    "latin", "greek", "cyrillic", "armenian", "hebrew", "arabic", "devanagari", "thai",
    "georgian", "hangul", "hiragana", "katakana", "han",
};
static const struct {
    uint32_t lo, hi;
    enum guard_script script;
} guard_script_ranges[] = {
    {0x41, 0x5a, SCRIPT_LATIN},          {0x61, 0x7a, SCRIPT_LATIN},
    {0xc0, 0xd6, SCRIPT_LATIN},          {0xd8, 0xf6, SCRIPT_LATIN},
    {0xf8, 0x2af, SCRIPT_LATIN},         {0x370, 0x3ff, SCRIPT_GREEK},
    {0x400, 0x52f, SCRIPT_CYRILLIC},     {0x531, 0x58f, SCRIPT_ARMENIAN},
    {0x5d0, 0x5ff, SCRIPT_HEBREW},       {0x620, 0x6ff, SCRIPT_ARABIC},
    {0x750, 0x77f, SCRIPT_ARABIC},       {0x8a0, 0x8ff, SCRIPT_ARABIC},
    {0x900, 0x97f, SCRIPT_DEVANAGARI},   {0xe00, 0xe7f, SCRIPT_THAI},
    {0x10a0, 0x10ff, SCRIPT_GEORGIAN},   {0x1100, 0x11ff, SCRIPT_HANGUL},
    {0x1c80, 0x1c8f, SCRIPT_CYRILLIC},   {0x1e00, 0x1eff, SCRIPT_LATIN},
    {0x1f00, 0x1fff, SCRIPT_GREEK},      {0x2c60, 0x2c7f, SCRIPT_LATIN},
    {0x2de0, 0x2dff, SCRIPT_CYRILLIC},   {0x3040, 0x309f, SCRIPT_HIRAGANA},
    {0x30a0, 0x30ff, SCRIPT_KATAKANA},   {0x3130, 0x318f, SCRIPT_HANGUL},
    {0x3400, 0x4dbf, SCRIPT_HAN},        {0x4e00, 0x9fff, SCRIPT_HAN},
    {0xa640, 0xa69f, SCRIPT_CYRILLIC},   {0xa720, 0xa7ff, SCRIPT_LATIN},
    {0xac00, 0xd7af, SCRIPT_HANGUL},     {0xf900, 0xfaff, SCRIPT_HAN},
    {0xfb1d, 0xfb4f, SCRIPT_HEBREW},     {0xfb50, 0xfdff, SCRIPT_ARABIC},
    {0xfe70, 0xfeff, SCRIPT_ARABIC},     {0xff21, 0xff3a, SCRIPT_LATIN},
    {0xff41, 0xff5a, SCRIPT_LATIN},      {0xff66, 0xff9f, SCRIPT_KATAKANA},
    {0x20000, 0x2ffff, SCRIPT_HAN},
};
/* Share of a text's letters that may be in scripts the form does not expect. */
#define GUARD_FOREIGN_SHARE 0.2

struct guard_net {
    int family;
    unsigned char addr[16];
    int bits;
};

struct guard {
    char *form;
    bool queued_answer;
    char *honeypot;               /* NULL: off */
    bool token_on;
    long long min_ms, max_age_ms;
    enum guard_missing token_missing;
    uint8_t token_key[SHA256_DIGEST_SIZE];
    bool challenge_on;
    long long maxnumber, challenge_expires;
    enum guard_missing challenge_missing;
    uint8_t challenge_key[SHA256_DIGEST_SIZE];
    enum captcha_provider captcha;
    char *captcha_secret, *captcha_sitekey, *captcha_url, *captcha_action, *captcha_hostname;
    long captcha_timeout_ms;
    double captcha_min_score, captcha_max_score; /* < 0: not checked */
    bool captcha_fail_open;
    enum guard_missing captcha_missing;
    long long max_links;          /* < 0: off */
    char **text_fields;           /* NULL: every submitted text */
    size_t n_text_fields;
    char **disposable;            /* sorted lower-case domains */
    size_t n_disposable;
    pcre2_code **blocked;
    size_t n_blocked;
    unsigned scripts;             /* bit per enum guard_script; 0: off */
    double ip_burst, ip_rate, form_burst, form_rate; /* rate per second; burst 0: off */
    long long daily_cap;          /* 0: off */
    struct guard_net *allow;
    size_t n_allow;
};

static const char *const guard_keys[] = {"answer", "honeypot", "token", "challenge", "captcha",
                                         "content", "rate_limit", NULL};
static const char *const guard_token_keys[] = {"min_seconds", "max_age", "missing", NULL};
static const char *const guard_challenge_keys[] = {"maxnumber", "expires", "missing", NULL};
static const char *const guard_captcha_keys[] = {
    "provider", "secret", "sitekey", "verify_url", "timeout", "on_error", "missing",
    "min_score", "max_score", "action", "hostname", NULL};
static const char *const guard_content_keys[] = {"max_links", "fields", "disposable_domains",
                                                 "blocked", "scripts", NULL};
static const char *const guard_rate_keys[] = {"per_ip", "per_form", "daily_cap", "allow", NULL};
static const char *const guard_bucket_keys[] = {"burst", "per_minute", NULL};

/* ---- small helpers ---- */

static void derive_key(const char *secret, const char *label, const char *form,
                       uint8_t out[SHA256_DIGEST_SIZE])
{
    char msg[600];
    int n = snprintf(msg, sizeof(msg), "%s\n%s", label, form);

    hmac_sha256(secret, strlen(secret), msg, n < 0 ? 0 : (size_t)n, out);
}

/* Index of s in names[n], or -1. */
static int name_index(const char *s, const char *const *names, int n)
{
    for (int i = 0; s != NULL && i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

static enum guard_missing conf_missing(const json_t *obj, const char *path,
                                       enum guard_missing dflt, struct diag *d)
{
    const char *s = conf_string(obj, "missing", path, NULL, false, d);
    int i = name_index(s, guard_missing_names, GUARD_MISSING__MAX);
    char p[GUARD_PATH_SIZE];

    if (s == NULL)
        return dflt;
    if (i < 0) {
        conf_path(p, sizeof(p), path, "missing");
        diag_add(d, p, "must be \"allow\" or \"spam\"");
        return dflt;
    }
    return (enum guard_missing)i;
}

/* obj[key] as a section object: NULL when absent or false; *off set when false. */
static const json_t *section(const json_t *obj, const char *key, const char *path, bool *off,
                             struct diag *d)
{
    json_t *v = json_object_get(obj, key);
    char p[GUARD_PATH_SIZE];

    *off = json_is_false(v);
    if (v == NULL || json_is_false(v) || json_is_object(v))
        return json_is_object(v) ? v : NULL;
    conf_path(p, sizeof(p), path, key);
    if (json_is_true(v))
        return NULL;
    diag_add(d, p, "must be an object, true or false");
    return NULL;
}

static char **strings_of(const json_t *arr, const char *path, size_t *n, struct diag *d)
{
    char **out;
    size_t i;
    json_t *v;

    *n = 0;
    if (arr == NULL)
        return NULL;
    if (!json_is_array(arr)) {
        diag_add(d, path, "must be an array of strings");
        return NULL;
    }
    out = calloc(json_array_size(arr) + 1, sizeof(*out));
    json_array_foreach(arr, i, v) {
        char p[GUARD_PATH_SIZE];

        if (!json_is_string(v)) {
            conf_path_index(p, sizeof(p), path, i);
            diag_add(d, p, "must be a string");
        } else if (out != NULL) {
            out[(*n)++] = strdup(json_string_value(v));
        }
    }
    return out;
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++)
        free(v[i]);
    free(v);
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* ---- config ---- */

static bool field_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 64)
        return false;
    for (; *s != '\0'; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-')
            return false;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the disposable-domain file: one domain a line, '#' comments, case-insensitive. */
static void load_disposable(struct guard *g, const char *file, const char *conf_dir,
                            const char *path, struct diag *d)
{
    char full[4096];
    FILE *fp;
    char line[512];
    size_t cap = 0, total = 0;
    int n;

    n = file[0] == '/' || conf_dir == NULL
            ? snprintf(full, sizeof(full), "%s", file)
            : snprintf(full, sizeof(full), "%s/%s", conf_dir, file);
    if (n < 0 || (size_t)n >= sizeof(full)) {
        diag_add(d, path, "the file name is too long");
        return;
    }
    fp = fopen(full, "r");
    if (fp == NULL) {
        diag_add(d, path, "cannot open %s: %s", full, strerror(errno));
        return;
    }
    while (fgets(line, sizeof(line), fp) != NULL) {
        char *s = line, *e;

        total += strlen(line);
        if (total > GUARD_DISPOSABLE_MAX) {
            diag_add(d, path, "%s is larger than %d bytes", full, GUARD_DISPOSABLE_MAX);
            break;
        }
        while (isspace((unsigned char)*s))
            s++;
        e = s + strcspn(s, "# \t\r\n");
        *e = '\0';
        if (*s == '\0')
            continue;
        for (char *c = s; *c != '\0'; c++)
            *c = (char)tolower((unsigned char)*c);
        if (g->n_disposable == cap) {
            size_t ncap = cap == 0 ? 256 : cap * 2;
            char **nv = realloc(g->disposable, ncap * sizeof(*nv));

            if (nv == NULL)
                break;
            g->disposable = nv;
            cap = ncap;
        }
        g->disposable[g->n_disposable] = strdup(s);
        if (g->disposable[g->n_disposable] != NULL)
            g->n_disposable++;
    }
    fclose(fp);
    if (g->n_disposable > 0)
        qsort(g->disposable, g->n_disposable, sizeof(*g->disposable), cmp_str);
}

static pcre2_code *compile_blocked(const char *pattern, const char *path, struct diag *d)
{
    int errcode;
    PCRE2_SIZE offset;
    PCRE2_UCHAR msg[256];
    pcre2_code *re;

    /* Blocked words are caseless unless the pattern says otherwise ((?-i)). */
    re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                       PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &errcode, &offset, NULL);
    if (re == NULL) {
        if (pcre2_get_error_message(errcode, msg, sizeof(msg)) < 0)
            snprintf((char *)msg, sizeof(msg), "error %d", errcode);
        diag_add(d, path, "bad regular expression at offset %zu: %s", (size_t)offset,
                 (const char *)msg);
        return NULL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

/* "203.0.113.0/24", "2001:db8::/32" or a single address. */
static bool parse_net(const char *s, struct guard_net *out)
{
    char host[64];
    const char *slash = strchr(s, '/');
    size_t n = slash != NULL ? (size_t)(slash - s) : strlen(s);
    long bits;
    char *end;

    if (n == 0 || n >= sizeof(host))
        return false;
    memcpy(host, s, n);
    host[n] = '\0';
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, host, out->addr) == 1) {
        out->family = AF_INET;
        out->bits = 32;
    } else if (inet_pton(AF_INET6, host, out->addr) == 1) {
        out->family = AF_INET6;
        out->bits = 128;
    } else {
        return false;
    }
    if (slash != NULL) {
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || bits < 0 || bits > out->bits)
            return false;
        out->bits = (int)bits;
    }
    return true;
}

static void compile_bucket(const json_t *obj, const char *key, const char *path, double *burst,
                           double *rate, struct diag *d)
{
    json_t *v = json_object_get(obj, key);
    char p[GUARD_PATH_SIZE];

    *burst = 0;
    *rate = 0;
    if (v == NULL || json_is_false(v))
        return;
    conf_path(p, sizeof(p), path, key);
    if (!json_is_object(v)) {
        diag_add(d, p, "must be an object {\"burst\": N, \"per_minute\": N} or false");
        return;
    }
    conf_check_keys(v, p, guard_bucket_keys, d);
    *burst = (double)conf_integer(v, "burst", p, 10, 1, 1000000, d);
    *rate = conf_number(v, "per_minute", p, 6, 0.001, 6000000, d) / 60.0;
}

static void compile_captcha(struct guard *g, const json_t *c, const char *path, struct diag *d)
{
    const char *s;
    char p[GUARD_PATH_SIZE];
    int i;

    conf_check_keys(c, path, guard_captcha_keys, d);
    s = conf_string(c, "provider", path, NULL, true, d);
    i = name_index(s, (const char *const[]){"none", "turnstile", "hcaptcha", "recaptcha"},
                   CAPTCHA__MAX);
    if (s != NULL && i < 0) {
        conf_path(p, sizeof(p), path, "provider");
        diag_add(d, p, "must be turnstile, hcaptcha or recaptcha");
    }
    g->captcha = i > 0 ? (enum captcha_provider)i : CAPTCHA_NONE;
    if (g->captcha == CAPTCHA_NONE)
        return;
    g->captcha_secret = dup_or_null(conf_string(c, "secret", path, NULL, true, d));
    g->captcha_sitekey = dup_or_null(conf_string(c, "sitekey", path, NULL, false, d));
    g->captcha_url = dup_or_null(conf_string(c, "verify_url", path,
                                             captcha_providers[g->captcha].url, false, d));
    if (g->captcha_url != NULL && strncmp(g->captcha_url, "https://", 8) != 0 &&
        strncmp(g->captcha_url, "http://", 7) != 0) {
        conf_path(p, sizeof(p), path, "verify_url");
        diag_add(d, p, "must be an http:// or https:// URL");
    }
    g->captcha_timeout_ms = (long)(conf_number(c, "timeout", path, 5, 0.1, 60, d) * 1000);
    s = conf_string(c, "on_error", path, "closed", false, d);
    if (s != NULL && strcmp(s, "open") != 0 && strcmp(s, "closed") != 0) {
        conf_path(p, sizeof(p), path, "on_error");
        diag_add(d, p, "must be \"open\" or \"closed\"");
    }
    g->captcha_fail_open = s != NULL && strcmp(s, "open") == 0;
    g->captcha_missing = conf_missing(c, path, GUARD_MISSING_SPAM, d);
    g->captcha_min_score = conf_number(c, "min_score", path, -1, 0, 1, d);
    g->captcha_max_score = conf_number(c, "max_score", path, -1, 0, 1, d);
    g->captcha_action = dup_or_null(conf_string(c, "action", path, NULL, false, d));
    g->captcha_hostname = dup_or_null(conf_string(c, "hostname", path, NULL, false, d));
}

static void compile_content(struct guard *g, const json_t *c, const char *path,
                            const char *conf_dir, struct diag *d)
{
    char p[GUARD_PATH_SIZE];
    const char *s;
    size_t n = 0;
    char **names;

    conf_check_keys(c, path, guard_content_keys, d);
    g->max_links = conf_integer(c, "max_links", path, -1, 0, 1000, d);
    conf_path(p, sizeof(p), path, "fields");
    g->text_fields = strings_of(json_object_get(c, "fields"), p, &g->n_text_fields, d);
    s = conf_string(c, "disposable_domains", path, NULL, false, d);
    if (s != NULL) {
        conf_path(p, sizeof(p), path, "disposable_domains");
        load_disposable(g, s, conf_dir, p, d);
    }
    conf_path(p, sizeof(p), path, "blocked");
    names = strings_of(json_object_get(c, "blocked"), p, &n, d);
    if (n > 0)
        g->blocked = calloc(n, sizeof(*g->blocked));
    for (size_t i = 0; g->blocked != NULL && i < n; i++) {
        char ip[GUARD_PATH_SIZE];

        conf_path_index(ip, sizeof(ip), p, i);
        g->blocked[g->n_blocked] = compile_blocked(names[i], ip, d);
        if (g->blocked[g->n_blocked] != NULL)
            g->n_blocked++;
    }
    free_strings(names, n);
    conf_path(p, sizeof(p), path, "scripts");
    names = strings_of(json_object_get(c, "scripts"), p, &n, d);
    for (size_t i = 0; i < n; i++) {
        int k = name_index(names[i], guard_script_names, SCRIPT__MAX);
        char ip[GUARD_PATH_SIZE];

        if (k < 0) {
            conf_path_index(ip, sizeof(ip), p, i);
            diag_add(d, ip, "unknown script \"%s\" (latin, greek, cyrillic, armenian, hebrew, "
                            "arabic, devanagari, thai, georgian, hangul, hiragana, katakana, han)",
                     names[i]);
        } else {
            g->scripts |= 1u << k;
        }
    }
    free_strings(names, n);
}

static void compile_rate(struct guard *g, const json_t *r, const char *path, struct diag *d)
{
    char p[GUARD_PATH_SIZE];
    char **nets;
    size_t n = 0;

    conf_check_keys(r, path, guard_rate_keys, d);
    compile_bucket(r, "per_ip", path, &g->ip_burst, &g->ip_rate, d);
    compile_bucket(r, "per_form", path, &g->form_burst, &g->form_rate, d);
    g->daily_cap = conf_integer(r, "daily_cap", path, 0, 0, 100000000, d);
    conf_path(p, sizeof(p), path, "allow");
    nets = strings_of(json_object_get(r, "allow"), p, &n, d);
    if (n > 0)
        g->allow = calloc(n, sizeof(*g->allow));
    for (size_t i = 0; g->allow != NULL && i < n; i++) {
        char ip[GUARD_PATH_SIZE];

        if (parse_net(nets[i], &g->allow[g->n_allow])) {
            g->n_allow++;
        } else {
            conf_path_index(ip, sizeof(ip), p, i);
            diag_add(d, ip, "must be an IPv4 or IPv6 address or network (\"10.0.0.0/8\")");
        }
    }
    free_strings(nets, n);
}

struct guard *guard_compile(const json_t *form_obj, const char *name, const char *path,
                            const char *secret, const char *conf_dir, struct diag *d)
{
    struct guard *g = calloc(1, sizeof(*g));
    const json_t *obj = json_object_get(form_obj, "guard"), *sec;
    char gp[GUARD_PATH_SIZE], p[GUARD_PATH_SIZE];
    const char *s;
    json_t *hp;
    bool off;

    if (g == NULL)
        return NULL;
    g->form = strdup(name);
    g->queued_answer = true;
    g->max_links = -1;
    g->captcha_min_score = g->captcha_max_score = -1;
    conf_path(gp, sizeof(gp), path, "guard");
    if (obj != NULL && !json_is_object(obj)) {
        diag_add(d, gp, "must be an object");
        obj = NULL;
    }
    conf_check_keys(obj, gp, guard_keys, d);

    s = conf_string(obj, "answer", gp, "queued", false, d);
    if (s != NULL && strcmp(s, "queued") != 0 && strcmp(s, "refuse") != 0) {
        conf_path(p, sizeof(p), gp, "answer");
        diag_add(d, p, "must be \"queued\" (spam gets the answer a person would) or \"refuse\"");
    }
    g->queued_answer = s == NULL || strcmp(s, "refuse") != 0;

    hp = json_object_get(obj, "honeypot");
    conf_path(p, sizeof(p), gp, "honeypot");
    if (hp == NULL || json_is_true(hp))
        g->honeypot = strdup(GUARD_HONEYPOT_DEFAULT);
    else if (json_is_string(hp) && field_name_ok(json_string_value(hp)))
        g->honeypot = strdup(json_string_value(hp));
    else if (!json_is_false(hp))
        diag_add(d, p, "must be a field name (letters, digits, _ and -, at most 64) or false");

    sec = section(obj, "token", gp, &off, d);
    conf_path(p, sizeof(p), gp, "token");
    conf_check_keys(sec, p, guard_token_keys, d);
    g->token_on = !off && secret != NULL;
    g->min_ms = (long long)(conf_number(sec, "min_seconds", p, 3, 0, 3600, d) * 1000);
    g->max_age_ms = conf_integer(sec, "max_age", p, 86400, 10, 30LL * 86400, d) * 1000;
    g->token_missing = conf_missing(sec, p, GUARD_MISSING_ALLOW, d);
    if (secret != NULL)
        derive_key(secret, "leadbridge form token", "", g->token_key);
    if (g->min_ms >= g->max_age_ms)
        diag_add(d, p, "min_seconds must be less than max_age");

    sec = section(obj, "challenge", gp, &off, d);
    conf_path(p, sizeof(p), gp, "challenge");
    conf_check_keys(sec, p, guard_challenge_keys, d);
    g->challenge_on = json_object_get(obj, "challenge") != NULL && !off && secret != NULL;
    g->maxnumber = conf_integer(sec, "maxnumber", p, 50000, 1, 100000000, d);
    g->challenge_expires = conf_integer(sec, "expires", p, 86400, 10, 30LL * 86400, d);
    g->challenge_missing = conf_missing(sec, p, GUARD_MISSING_SPAM, d);
    if (secret != NULL)
        derive_key(secret, "leadbridge altcha", name, g->challenge_key);
    if (g->challenge_on && !g->token_on)
        diag_add(d, p, "the challenge is handed out with the form token: the token must be on");

    sec = section(obj, "captcha", gp, &off, d);
    conf_path(p, sizeof(p), gp, "captcha");
    if (sec != NULL)
        compile_captcha(g, sec, p, d);
    sec = section(obj, "content", gp, &off, d);
    conf_path(p, sizeof(p), gp, "content");
    if (sec != NULL)
        compile_content(g, sec, p, conf_dir, d);
    sec = section(obj, "rate_limit", gp, &off, d);
    conf_path(p, sizeof(p), gp, "rate_limit");
    if (sec != NULL)
        compile_rate(g, sec, p, d);
    return g;
}

void guard_free(struct guard *g)
{
    if (g == NULL)
        return;
    free(g->form);
    free(g->honeypot);
    free(g->captcha_secret);
    free(g->captcha_sitekey);
    free(g->captcha_url);
    free(g->captcha_action);
    free(g->captcha_hostname);
    free_strings(g->text_fields, g->n_text_fields);
    free_strings(g->disposable, g->n_disposable);
    for (size_t i = 0; i < g->n_blocked; i++)
        pcre2_code_free(g->blocked[i]);
    free(g->blocked);
    free(g->allow);
    free(g);
}

bool guard_answer_queued(const struct guard *g)
{
    return g == NULL || g->queued_answer;
}

/* ---- rate limits ---- */

static bool net_contains(const struct guard_net *n, const char *ip)
{
    unsigned char a[16];
    int full, rest;

    if (inet_pton(n->family, ip, a) != 1)
        return false;
    full = n->bits / 8;
    rest = n->bits % 8;
    if (memcmp(a, n->addr, (size_t)full) != 0)
        return false;
    return rest == 0 || ((a[full] ^ n->addr[full]) & (0xff << (8 - rest))) == 0;
}

bool guard_rate_ok(const struct guard *g, struct ratelimit *rl, const char *ip, long long now_ms,
                   long long *retry_after, const char **why)
{
    char key[300];
    long long wait = 0;

    *retry_after = 0;
    *why = NULL;
    if (g == NULL || rl == NULL)
        return true;
    for (size_t i = 0; ip != NULL && i < g->n_allow; i++)
        if (net_contains(&g->allow[i], ip))
            return true;
    if (g->ip_burst > 0 && ip != NULL) {
        snprintf(key, sizeof(key), "ip:%s:%s", g->form, ip);
        if (!ratelimit_take(rl, key, g->ip_burst, g->ip_rate, now_ms, &wait)) {
            *why = "rate_limit_ip";
            goto limited;
        }
    }
    if (g->form_burst > 0) {
        snprintf(key, sizeof(key), "form:%s", g->form);
        if (!ratelimit_take(rl, key, g->form_burst, g->form_rate, now_ms, &wait)) {
            *why = "rate_limit_form";
            goto limited;
        }
    }
    if (g->daily_cap > 0) {
        long long day = now_ms / 86400000LL;

        snprintf(key, sizeof(key), "day:%s:%lld", g->form, day);
        if (!ratelimit_count(rl, key, g->daily_cap, (day + 1) * 86400000LL, now_ms)) {
            *why = "daily_cap";
            wait = (day + 1) * 86400000LL - now_ms;
            goto limited;
        }
    }
    return true;
limited:
    *retry_after = (wait + 999) / 1000;
    if (*retry_after < 1)
        *retry_after = 1;
    return false;
}

/* ---- controls ---- */

static char *take_string(json_t *fields, const char *name)
{
    json_t *v = json_object_get(fields, name);
    char *s = NULL;

    if (v == NULL)
        return NULL;
    if (json_is_string(v))
        s = strdup(json_string_value(v));
    else if (json_is_array(v) && json_is_string(json_array_get(v, 0)))
        s = strdup(json_string_value(json_array_get(v, 0))); /* a repeated field: the first */
    else
        s = strdup(""); /* present but not text: counts as given and wrong */
    json_object_del(fields, name);
    return s;
}

static bool filled(const json_t *v)
{
    size_t i;
    json_t *x;

    if (json_is_string(v)) {
        for (const char *s = json_string_value(v); *s != '\0'; s++)
            if (!isspace((unsigned char)*s))
                return true;
        return false;
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, x)
            if (filled(x))
                return true;
        return false;
    }
    return v != NULL && !json_is_null(v) && !json_is_false(v);
}

void guard_take_controls(const struct guard *g, json_t *fields, struct guard_controls *c)
{
    memset(c, 0, sizeof(*c));
    if (g == NULL || !json_is_object(fields))
        return;
    c->token = take_string(fields, GUARD_TOKEN_FIELD);
    c->challenge = take_string(fields, GUARD_CHALLENGE_FIELD);
    if (g->captcha != CAPTCHA_NONE)
        c->captcha = take_string(fields, captcha_providers[g->captcha].field);
    if (g->honeypot != NULL) {
        c->honeypot_filled = filled(json_object_get(fields, g->honeypot));
        json_object_del(fields, g->honeypot);
    }
}

void guard_controls_free(struct guard_controls *c)
{
    free(c->token);
    free(c->challenge);
    free(c->captcha);
    memset(c, 0, sizeof(*c));
}

/* ---- form token ---- */

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return n > 0;
}

static bool all_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i]))
            return false;
    return n > 0;
}

static void token_mac(const struct guard *g, const char *issued, const char *nonce,
                      uint8_t mac[SHA256_DIGEST_SIZE])
{
    char msg[400];
    int n = snprintf(msg, sizeof(msg), "%s\n%s\n%s", g->form, issued, nonce);

    hmac_sha256(g->token_key, sizeof(g->token_key), msg, n < 0 ? 0 : (size_t)n, mac);
}

enum lb_err guard_token_sign(const struct guard *g, long long issued_ms, char *out, size_t size)
{
    uint8_t nonce[16], mac[SHA256_DIGEST_SIZE];
    char nonce_hex[33], issued[24], mac64[64];
    int n;

    if (!g->token_on || crypto_random(nonce, sizeof(nonce)) != 0)
        return LB_ERR_INTERNAL;
    hex_encode(nonce, sizeof(nonce), nonce_hex);
    snprintf(issued, sizeof(issued), "%lld", issued_ms);
    token_mac(g, issued, nonce_hex, mac);
    if (base64_encode(mac, sizeof(mac), true, mac64, sizeof(mac64)) == 0)
        return LB_ERR_INTERNAL;
    n = snprintf(out, size, "%s.%s.%s", issued, nonce_hex, mac64);
    return n > 0 && (size_t)n < size ? LB_OK : LB_ERR_INTERNAL;
}

static const char *check_token(const struct guard *g, const char *tok, struct ratelimit *rl,
                               long long now_ms)
{
    const char *dot1, *dot2;
    char issued[24], nonce[33], key[400];
    uint8_t mac[SHA256_DIGEST_SIZE], got[SHA256_DIGEST_SIZE + 4];
    long long at;
    size_t len;

    if (tok == NULL || *tok == '\0')
        return g->token_missing == GUARD_MISSING_SPAM ? "token_missing" : NULL;
    len = strlen(tok);
    dot1 = strchr(tok, '.');
    dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;
    if (len > GUARD_TOKEN_MAX || dot2 == NULL || (size_t)(dot1 - tok) >= sizeof(issued) ||
        !all_digits(tok, (size_t)(dot1 - tok)) || dot2 - dot1 - 1 != 32 ||
        !all_hex(dot1 + 1, 32))
        return "token_forged";
    memcpy(issued, tok, (size_t)(dot1 - tok));
    issued[dot1 - tok] = '\0';
    memcpy(nonce, dot1 + 1, 32);
    nonce[32] = '\0';
    token_mac(g, issued, nonce, mac);
    if (base64_decode(dot2 + 1, strlen(dot2 + 1), got, sizeof(got)) != SHA256_DIGEST_SIZE ||
        !crypto_equal(mac, got, sizeof(mac)))
        return "token_forged";
    at = strtoll(issued, NULL, 10);
    if (at > now_ms + GUARD_CLOCK_SKEW_MS)
        return "token_forged";
    if (now_ms - at < g->min_ms)
        return "token_too_fast";
    if (now_ms - at > g->max_age_ms)
        return "token_expired";
    snprintf(key, sizeof(key), "tok:%s:%s", g->form, nonce);
    if (rl != NULL && !ratelimit_first_use(rl, key, at + g->max_age_ms + 1000, now_ms))
        return "token_replayed";
    return NULL;
}

/* ---- ALTCHA challenge ---- */

static void sha256_hex(const char *a, const char *b, char out[2 * SHA256_DIGEST_SIZE + 1])
{
    uint8_t d[SHA256_DIGEST_SIZE];
    struct buf m;

    buf_init(&m, 4096);
    buf_puts(&m, a);
    buf_puts(&m, b);
    sha256(m.data != NULL ? m.data : "", m.len, d);
    buf_free(&m);
    hex_encode(d, sizeof(d), out);
}

static void challenge_signature(const struct guard *g, const char *challenge,
                                char out[2 * SHA256_DIGEST_SIZE + 1])
{
    uint8_t mac[SHA256_DIGEST_SIZE];

    hmac_sha256(g->challenge_key, sizeof(g->challenge_key), challenge, strlen(challenge), mac);
    hex_encode(mac, sizeof(mac), out);
}

static json_t *challenge_new(const struct guard *g, long long now_ms)
{
    uint8_t rnd[12];
    uint32_t pick;
    char salt_hex[25], salt[80], number[24], challenge[65], sig[65];

    if (crypto_random(rnd, sizeof(rnd)) != 0 || crypto_random(&pick, sizeof(pick)) != 0)
        return NULL;
    hex_encode(rnd, sizeof(rnd), salt_hex);
    snprintf(salt, sizeof(salt), "%s?expires=%lld", salt_hex,
             now_ms / 1000 + g->challenge_expires);
    snprintf(number, sizeof(number), "%lld", (long long)(pick % (uint64_t)(g->maxnumber + 1)));
    sha256_hex(salt, number, challenge);
    challenge_signature(g, challenge, sig);
    return json_pack("{s:s,s:s,s:I,s:s,s:s}", "algorithm", "SHA-256", "challenge", challenge,
                     "maxnumber", (json_int_t)g->maxnumber, "salt", salt, "signature", sig);
}

/* The expires=<n> parameter of an ALTCHA salt, or -1. */
static long long salt_expires(const char *salt)
{
    const char *q = strchr(salt, '?');

    while (q != NULL) {
        q++;
        if (strncmp(q, "expires=", 8) == 0 && all_digits(q + 8, strcspn(q + 8, "&")) &&
            strcspn(q + 8, "&") < 16)
            return strtoll(q + 8, NULL, 10);
        q = strchr(q, '&');
    }
    return -1;
}

static const char *check_challenge(const struct guard *g, const char *payload,
                                   struct ratelimit *rl, long long now_ms)
{
    char raw[GUARD_CHALLENGE_MAX], number[24], want[65], sig[65], key[400];
    long n;
    json_t *j = NULL, *num;
    const char *alg, *challenge, *salt, *signature, *why = NULL;
    long long expires;

    if (payload == NULL || *payload == '\0')
        return g->challenge_missing == GUARD_MISSING_SPAM ? "challenge_missing" : NULL;
    if (strlen(payload) >= sizeof(raw))
        return "challenge_forged";
    n = base64_decode(payload, strlen(payload), raw, sizeof(raw) - 1);
    if (n <= 0)
        return "challenge_forged";
    j = json_loadb(raw, (size_t)n, 0, NULL);
    alg = json_string_value(json_object_get(j, "algorithm"));
    challenge = json_string_value(json_object_get(j, "challenge"));
    salt = json_string_value(json_object_get(j, "salt"));
    signature = json_string_value(json_object_get(j, "signature"));
    num = json_object_get(j, "number");
    if (alg == NULL || strcmp(alg, "SHA-256") != 0 || challenge == NULL || salt == NULL ||
        signature == NULL || strlen(challenge) != 64 || strlen(signature) != 64 ||
        strlen(salt) > 200 || !json_is_number(num)) {
        why = "challenge_forged";
        goto out;
    }
    challenge_signature(g, challenge, sig);
    if (!crypto_equal(sig, signature, 64)) {
        why = "challenge_forged";
        goto out;
    }
    expires = salt_expires(salt);
    if (expires < 0) {
        why = "challenge_forged";
        goto out;
    }
    if (expires * 1000 < now_ms) {
        why = "challenge_expired";
        goto out;
    }
    if (!json_is_integer(num) || json_integer_value(num) < 0 ||
        json_integer_value(num) > g->maxnumber) {
        why = "challenge_wrong";
        goto out;
    }
    snprintf(number, sizeof(number), "%lld", (long long)json_integer_value(num));
    sha256_hex(salt, number, want);
    if (!crypto_equal(want, challenge, 64)) {
        why = "challenge_wrong";
        goto out;
    }
    snprintf(key, sizeof(key), "alt:%s:%s", g->form, challenge);
    if (rl != NULL && !ratelimit_first_use(rl, key, expires * 1000 + 1000, now_ms))
        why = "challenge_replayed";
out:
    json_decref(j);
    return why;
}

/* ---- content ---- */

/* Links in s: http:// and https:// URLs, bare www. hosts, BBCode [url and HTML <a. */
static long long count_links(const char *s)
{
    long long n = 0;

    for (const char *p = s; *p != '\0'; p++) {
        if (strncasecmp(p, "http://", 7) == 0 || strncasecmp(p, "https://", 8) == 0 ||
            strncasecmp(p, "[url", 4) == 0 ||
            (strncasecmp(p, "<a", 2) == 0 && isspace((unsigned char)p[2])))
            n++;
        else if (strncasecmp(p, "www.", 4) == 0 && (p == s || p[-1] != '/'))
            n++;
    }
    return n;
}

/* Next code point of valid UTF-8 (the parser checked it) at *p; advances *p. */
static uint32_t next_code_point(const unsigned char **p)
{
    const unsigned char *s = *p;
    uint32_t c = s[0];
    int extra = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;

    if (extra > 0)
        c &= 0x3f >> extra;
    for (int i = 1; i <= extra; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *p = s + i;
            return 0xfffd;
        }
        c = (c << 6) | (s[i] & 0x3f);
    }
    *p = s + 1 + extra;
    return c;
}

static int script_of(uint32_t c)
{
    size_t lo = 0, hi = sizeof(guard_script_ranges) / sizeof(guard_script_ranges[0]);

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;

        if (c < guard_script_ranges[mid].lo)
            hi = mid;
        else if (c > guard_script_ranges[mid].hi)
            lo = mid + 1;
        else
            return (int)guard_script_ranges[mid].script;
    }
    return -1;
}

/* Letters of s in expected scripts and in others, added to *ok and *foreign. */
static void count_scripts(const struct guard *g, const char *s, size_t *ok, size_t *foreign)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p != '\0') {
        int k = script_of(next_code_point(&p));

        if (k < 0)
            continue;
        if (g->scripts & (1u << k))
            (*ok)++;
        else
            (*foreign)++;
    }
}

struct text_scan {
    const struct guard *g;
    long long links;
    size_t ok_letters, foreign_letters;
    bool blocked;
    pcre2_match_data *md;
};

static void scan_text(struct text_scan *t, const char *s)
{
    t->links += count_links(s);
    if (t->g->scripts != 0)
        count_scripts(t->g, s, &t->ok_letters, &t->foreign_letters);
    for (size_t i = 0; !t->blocked && t->md != NULL && i < t->g->n_blocked; i++)
        if (pcre2_match(t->g->blocked[i], (PCRE2_SPTR)s, strlen(s), 0, 0, t->md, NULL) >= 0)
            t->blocked = true;
}

static void scan_value(struct text_scan *t, const json_t *v, int depth)
{
    const char *key;
    json_t *x;
    size_t i;

    if (depth > 32)
        return;
    if (json_is_string(v)) {
        scan_text(t, json_string_value(v));
    } else if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, x)
            scan_value(t, x, depth + 1);
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x)
            scan_value(t, x, depth + 1);
    }
}

static bool disposable_email(const struct guard *g, const char *email)
{
    const char *at = email != NULL ? strrchr(email, '@') : NULL;
    char domain[256];
    size_t n;

    if (at == NULL || g->n_disposable == 0)
        return false;
    n = strlen(at + 1);
    if (n == 0 || n >= sizeof(domain))
        return false;
    for (size_t i = 0; i <= n; i++)
        domain[i] = (char)tolower((unsigned char)at[1 + i]);
    while (n > 0 && domain[n - 1] == '.')
        domain[--n] = '\0';
    /* the domain and every parent domain: mail.mailinator.com matches mailinator.com */
    for (const char *d = domain; d != NULL && *d != '\0';) {
        const char *key = d;

        if (bsearch(&key, g->disposable, g->n_disposable, sizeof(*g->disposable), cmp_str))
            return true;
        d = strchr(d, '.');
        if (d != NULL)
            d++;
    }
    return false;
}

static const char *check_content(const struct guard *g, const json_t *fields, const json_t *lead)
{
    struct text_scan t;
    const char *email;

    memset(&t, 0, sizeof(t));
    t.g = g;
    if (g->n_disposable > 0) {
        email = json_string_value(json_object_get(lead, "email"));
        if (email == NULL)
            email = json_string_value(json_object_get(fields, "email"));
        if (disposable_email(g, email))
            return "disposable_email";
    }
    if (g->max_links < 0 && g->n_blocked == 0 && g->scripts == 0)
        return NULL;
    if (g->n_blocked > 0)
        t.md = pcre2_match_data_create(1, NULL);
    if (g->text_fields != NULL) {
        for (size_t i = 0; i < g->n_text_fields; i++)
            scan_value(&t, json_object_get(fields, g->text_fields[i]), 0);
    } else {
        scan_value(&t, fields, 0);
    }
    pcre2_match_data_free(t.md);
    if (g->max_links >= 0 && t.links > g->max_links)
        return "links";
    if (t.blocked)
        return "blocked_content";
    if (t.foreign_letters > 0 &&
        (double)t.foreign_letters > GUARD_FOREIGN_SHARE * (double)(t.ok_letters + t.foreign_letters))
        return "unexpected_script";
    return NULL;
}

/* ---- captcha ---- */

/* Verifier trouble: the configured policy decides. */
static const char *captcha_trouble(const struct guard *g, const char *what)
{
    log_msg(LOG_WARN, "captcha: %s verifier for form %s: %s (failing %s)",
            captcha_providers[g->captcha].name, g->form, what,
            g->captcha_fail_open ? "open" : "closed");
    return g->captcha_fail_open ? NULL : "captcha_unreachable";
}

static bool has_code(const json_t *codes, const char *code)
{
    size_t i;
    json_t *v;

    json_array_foreach(codes, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), code) == 0)
            return true;
    return false;
}

static const char *check_captcha(const struct guard *g, const char *response, const char *ip,
                                 struct http_client *http)
{
    struct http_call call;
    struct http_reply reply;
    struct buf body;
    json_t *j = NULL, *codes, *score;
    const char *why = NULL, *s;

    if (response == NULL || *response == '\0')
        return g->captcha_missing == GUARD_MISSING_SPAM ? "captcha_missing" : NULL;
    if (strlen(response) > GUARD_CAPTCHA_MAX)
        return "captcha_failed";
    if (http == NULL)
        return captcha_trouble(g, "no HTTP client");
    memset(&call, 0, sizeof(call));
    memset(&reply, 0, sizeof(reply));
    buf_init(&body, 3 * GUARD_CAPTCHA_MAX + 1024);
    buf_puts(&body, "secret=");
    response_percent_encode(&body, g->captcha_secret);
    buf_puts(&body, "&response=");
    response_percent_encode(&body, response);
    if (ip != NULL) {
        buf_puts(&body, "&remoteip=");
        response_percent_encode(&body, ip);
    }
    if (g->captcha == CAPTCHA_HCAPTCHA && g->captcha_sitekey != NULL) {
        buf_puts(&body, "&sitekey=");
        response_percent_encode(&body, g->captcha_sitekey);
    }
    call.method = "POST";
    snprintf(call.url, sizeof(call.url), "%s", g->captcha_url);
    call.body_len = body.len;
    call.body = buf_steal(&body);
    call.connect_timeout_ms = g->captcha_timeout_ms;
    call.timeout_ms = g->captcha_timeout_ms;
    if (call.body == NULL ||
        http_call_add_header(&call, "Content-Type", "application/x-www-form-urlencoded") != LB_OK ||
        http_call_add_header(&call, "Accept", "application/json") != LB_OK) {
        why = captcha_trouble(g, "out of memory");
        goto out;
    }
    if (http_perform(http, &call, &reply) != LB_OK) {
        why = captcha_trouble(g, reply.transport == LB_ERR_TIMEOUT ? "timed out" : "unreachable");
        goto out;
    }
    if (reply.status != 200) {
        why = captcha_trouble(g, "answered an HTTP error");
        goto out;
    }
    j = reply.body != NULL ? json_loadb(reply.body, reply.body_len, 0, NULL) : NULL;
    if (!json_is_object(j) || !json_is_boolean(json_object_get(j, "success"))) {
        why = captcha_trouble(g, "answered something that is not its JSON");
        goto out;
    }
    codes = json_object_get(j, "error-codes");
    if (has_code(codes, "invalid-input-secret") || has_code(codes, "missing-input-secret") ||
        has_code(codes, "sitekey-secret-mismatch") || has_code(codes, "internal-error")) {
        why = captcha_trouble(g, "refused the configured secret or failed inside");
        goto out;
    }
    if (!json_is_true(json_object_get(j, "success"))) {
        why = "captcha_failed";
        goto out;
    }
    score = json_object_get(j, "score");
    if (g->captcha_min_score >= 0 && json_is_number(score) &&
        json_number_value(score) < g->captcha_min_score) {
        why = "captcha_score";
        goto out;
    }
    if (g->captcha_max_score >= 0 && json_is_number(score) &&
        json_number_value(score) > g->captcha_max_score) {
        why = "captcha_score";
        goto out;
    }
    s = json_string_value(json_object_get(j, "action"));
    if (g->captcha_action != NULL && (s == NULL || strcmp(s, g->captcha_action) != 0)) {
        why = "captcha_action";
        goto out;
    }
    s = json_string_value(json_object_get(j, "hostname"));
    if (g->captcha_hostname != NULL && (s == NULL || strcasecmp(s, g->captcha_hostname) != 0))
        why = "captcha_hostname";
out:
    json_decref(j);
    http_reply_free(&reply);
    http_call_free(&call);
    buf_free(&body);
    return why;
}

/* ---- the verdict ---- */

const char *guard_verdict(const struct guard *g, const struct guard_request *r)
{
    const char *why = NULL;

    if (g == NULL)
        return NULL;
    if (r->controls->honeypot_filled)
        return "honeypot";
    if (g->token_on)
        why = check_token(g, r->controls->token, r->rl, r->now_ms);
    if (why == NULL && g->challenge_on)
        why = check_challenge(g, r->controls->challenge, r->rl, r->now_ms);
    if (why == NULL)
        why = check_content(g, r->fields, r->lead);
    if (why == NULL && g->captcha != CAPTCHA_NONE)
        why = check_captcha(g, r->controls->captcha, r->ip, r->http);
    return why;
}

/* ---- GET <form>/token ---- */

json_t *guard_token_json(const struct guard *g, long long now_ms)
{
    char token[GUARD_TOKEN_MAX];
    json_t *out;

    if (g == NULL)
        return NULL;
    if (g->token_on && guard_token_sign(g, now_ms, token, sizeof(token)) != LB_OK)
        return NULL;
    out = json_pack("{s:s?,s:s?,s:o}", "token", g->token_on ? token : NULL, "honeypot",
                    g->honeypot, "challenge",
                    g->challenge_on ? challenge_new(g, now_ms) : json_null());
    if (out != NULL && g->captcha != CAPTCHA_NONE && g->captcha_sitekey != NULL)
        json_object_set_new(out, "captcha",
                            json_pack("{s:s,s:s,s:s}", "provider",
                                      captcha_providers[g->captcha].name, "sitekey",
                                      g->captcha_sitekey, "field",
                                      captcha_providers[g->captcha].field));
    return out;
}

char *guard_token_html(const struct guard *g, long long now_ms)
{
    char token[GUARD_TOKEN_MAX];
    struct buf b;

    if (g == NULL)
        return NULL;
    if (g->token_on && guard_token_sign(g, now_ms, token, sizeof(token)) != LB_OK)
        return NULL;
    buf_init(&b, 4096);
    /* The token and the honeypot name are our own [A-Za-z0-9._-] text: nothing to escape. */
    if (g->token_on)
        buf_printf(&b, "<input type=\"hidden\" name=\"%s\" value=\"%s\">\n",
                   GUARD_TOKEN_FIELD, token);
    if (g->honeypot != NULL)
        buf_printf(&b,
                   "<div class=\"lb-hp\" aria-hidden=\"true\" style=\"position:absolute;"
                   "left:-10000px;top:auto;width:1px;height:1px;overflow:hidden\">"
                   "<label for=\"lb-hp-%s\">Leave this field empty</label>"
                   "<input type=\"text\" id=\"lb-hp-%s\" name=\"%s\" value=\"\" tabindex=\"-1\" "
                   "autocomplete=\"off\"></div>\n",
                   g->honeypot, g->honeypot, g->honeypot);
    return buf_steal(&b);
}
