/*
 * attribution.c: where a lead came from (see attribution.h).
 *
 * A pure function of a parsed request: no I/O, no globals, no state, so it is safe on any thread.
 * Every value goes through clean_value() before it is stored: invalid UTF-8 is dropped, control
 * characters (C0, DEL, C1) are removed, blanks trimmed and the result cut on a character boundary.
 * Whatever a client sends can at worst make a value disappear, never an error.
 */
#include "attribution.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "parse.h"

#define ATTRIBUTION_DEFAULT_MAX 512
/* Longest scheme://authority we consider; real hosts are far shorter. */
#define ATTRIBUTION_MAX_ORIGIN 300

const char *const attribution_param_keys[] = {
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "utm_id",
    "gclid",      "gbraid",     "wbraid",       "dclid",    "fbclid",      "msclkid",
    "ttclid",     "li_fat_id",  "twclid",
};
const size_t attribution_param_count =
    sizeof(attribution_param_keys) / sizeof(attribution_param_keys[0]);

/*
 * Makes a clean copy of s[0..len): valid UTF-8 only, without C0, DEL and C1 control characters,
 * trimmed of spaces and cut to cap bytes on a character boundary. *out is a new string, or NULL
 * when nothing is left (or s was not UTF-8). Returns LB_ERR_NOMEM only when out of memory.
 */
static enum lb_err clean_value(const char *s, size_t len, size_t cap, char **out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i, n = 0, start = 0;
    char *c;

    *out = NULL;
    if (s == NULL || len == 0 || !parse_utf8_valid(s, len))
        return LB_OK;
    c = malloc(len + 1);
    if (c == NULL)
        return LB_ERR_NOMEM;
    for (i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7F)
            continue;
        if (p[i] == 0xC2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9F) {
            i++;
            continue;
        }
        c[n++] = (char)p[i];
    }
    while (start < n && c[start] == ' ')
        start++;
    if (n - start > cap) {
        n = start + cap;
        while (n > start && ((unsigned char)c[n] & 0xC0) == 0x80)
            n--;
    }
    while (n > start && c[n - 1] == ' ')
        n--;
    if (n == start) {
        free(c);
        return LB_OK;
    }
    memmove(c, c + start, n - start);
    c[n - start] = '\0';
    *out = c;
    return LB_OK;
}

/*
 * Finds key in the query string q[0..len) ("a=1&b=2"; ';' is not a separator). Takes the first
 * occurrence whose value percent-decodes ('+' as space) and cleans to something non-empty; *out is
 * that new string or NULL. Returns LB_ERR_NOMEM only when out of memory.
 */
static enum lb_err query_find(const char *q, size_t len, const char *key, size_t cap, char **out)
{
    size_t klen = strlen(key), i = 0;
    enum lb_err e = LB_OK;

    *out = NULL;
    while (q != NULL && i < len && *out == NULL) {
        const char *pair = q + i;
        const char *amp = memchr(pair, '&', len - i);
        size_t plen = amp ? (size_t)(amp - pair) : len - i;
        char *decoded = NULL;

        i += plen + 1;
        if (plen <= klen || memcmp(pair, key, klen) != 0 || pair[klen] != '=')
            continue;
        e = parse_percent_decode(pair + klen + 1, plen - klen - 1, true, &decoded);
        if (e == LB_ERR_NOMEM)
            break;
        if (e != LB_OK) {
            e = LB_OK;
            continue;
        }
        e = clean_value(decoded, strlen(decoded), cap, out);
        free(decoded);
        if (e != LB_OK)
            break;
    }
    return e;
}

/*
 * The text of a submitted field: a string, the first string of an array, or a number written out
 * (into num). Returns a borrowed pointer (or num) and its length in *len, or NULL.
 */
static const char *field_text(const json_t *fields, const char *key, char *num, size_t num_size,
                              size_t *len)
{
    json_t *v = json_object_get(fields, key);
    size_t i;
    int n = -1;

    if (json_is_array(v)) {
        json_t *first = NULL;

        for (i = 0; i < json_array_size(v) && first == NULL; i++) {
            if (json_is_string(json_array_get(v, i)))
                first = json_array_get(v, i);
        }
        v = first;
    }
    if (json_is_string(v)) {
        *len = json_string_length(v);
        return json_string_value(v);
    }
    if (json_is_integer(v))
        n = snprintf(num, num_size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        n = snprintf(num, num_size, "%.15g", json_real_value(v));
    if (n < 0 || (size_t)n >= num_size)
        return NULL;
    *len = (size_t)n;
    return num;
}

/* Cleans the field's text into *out (new string or NULL); LB_ERR_NOMEM when out of memory. */
static enum lb_err field_value(const json_t *fields, const char *key, size_t cap, char **out)
{
    char num[64];
    size_t len = 0;
    const char *s = field_text(fields, key, num, sizeof(num), &len);

    *out = NULL;
    if (s == NULL)
        return LB_OK;
    return clean_value(s, len, cap, out);
}

/* Length of "http://" or "https://" (any case) at the start of url, or 0 for anything else. */
static size_t http_scheme_len(const char *url)
{
    if (url == NULL)
        return 0;
    if (strncasecmp(url, "http://", 7) == 0)
        return 7;
    if (strncasecmp(url, "https://", 8) == 0)
        return 8;
    return 0;
}

/*
 * True when a[0..n) is a plain host[:port]: only [A-Za-z0-9.-:[]], a non-empty host (a bracketed
 * IPv6 literal or a name), and a port of 1 to 5 digits when one is given.
 */
static bool authority_ok(const char *a, size_t n)
{
    size_t i, host_end, digits;

    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '[' || c == ']'))
            return false;
    }
    if (a[0] == '[') {
        const char *close = memchr(a, ']', n);

        if (close == NULL || close == a + 1)
            return false;
        host_end = (size_t)(close - a) + 1;
    } else {
        const char *colon = memchr(a, ':', n);

        host_end = colon ? (size_t)(colon - a) : n;
        if (host_end == 0 || memchr(a, '[', n) != NULL || memchr(a, ']', n) != NULL)
            return false;
    }
    if (host_end == n)
        return true;
    if (a[host_end] != ':')
        return false;
    digits = n - host_end - 1;
    if (digits == 0 || digits > 5)
        return false;
    for (i = host_end + 1; i < n; i++) {
        if (a[i] < '0' || a[i] > '9')
            return false;
    }
    return true;
}

/*
 * Writes "scheme://host[:port]" in lower case into out from an http(s) URL. With whole set the URL
 * must be exactly that (an Origin header); otherwise the authority ends at '/', '?', '#' or the
 * end. Returns false, leaving out undefined, when the URL does not qualify.
 */
static bool url_origin(const char *url, bool whole, char *out, size_t size)
{
    size_t slen = http_scheme_len(url), alen, i;

    if (slen == 0)
        return false;
    alen = strcspn(url + slen, "/?#");
    if (whole && url[slen + alen] != '\0')
        return false;
    if (slen + alen >= size || !authority_ok(url + slen, alen))
        return false;
    for (i = 0; i < slen + alen; i++) {
        char c = url[i];

        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[slen + alen] = '\0';
    return true;
}

/*
 * The page's origin: Origin (unless "null"), else the Referer's. Never the Host header: without
 * Origin and Referer the post came from a server (a form builder), and Host is our own address.
 */
static bool host_of(const struct request *r, char *out, size_t size)
{
    if (r->origin != NULL && strcmp(r->origin, "null") != 0 && url_origin(r->origin, true, out,
                                                                           size))
        return true;
    return url_origin(r->referer, false, out, size);
}

bool attribution_url_origin(const char *url, char *out, size_t size)
{
    return url_origin(url, false, out, size);
}

/* An IPv4 or IPv6 address in binary form. */
struct ipaddr {
    int family;
    unsigned char bytes[16];
};

/* Parses s[0..n) (surrounding blanks ignored) with inet_pton, v4 then v6. */
static bool ip_parse(const char *s, size_t n, struct ipaddr *a)
{
    char tmp[INET6_ADDRSTRLEN + 1];

    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    memset(a, 0, sizeof(*a));
    if (inet_pton(AF_INET, tmp, a->bytes) == 1) {
        a->family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, tmp, a->bytes) == 1) {
        a->family = AF_INET6;
        return true;
    }
    return false;
}

static bool ip_trusted(const struct ipaddr *a, const struct attribution_conf *conf)
{
    size_t i;

    for (i = 0; i < conf->n_trusted_proxies; i++) {
        struct ipaddr t;
        const char *p = conf->trusted_proxies[i];

        if (p != NULL && ip_parse(p, strlen(p), &t) && t.family == a->family &&
            memcmp(t.bytes, a->bytes, sizeof(t.bytes)) == 0)
            return true;
    }
    return false;
}

/*
 * The visitor's address: REMOTE_ADDR, or, when that is a trusted proxy, the right-most address in
 * X-Forwarded-For that is not a trusted proxy (the left-most when all are). An entry that does not
 * parse ends the walk: what lies left of it cannot be believed, and the last trusted hop stands.
 * Writes the address in canonical form into out; false when there is none.
 */
bool attribution_client_ip(const struct request *r, const struct attribution_conf *conf,
                           char *out, size_t size)
{
    struct ipaddr addr, hop;
    const char *xff = r->x_forwarded_for;
    size_t end;

    if (r->remote_addr == NULL || !ip_parse(r->remote_addr, strlen(r->remote_addr), &addr))
        return false;
    if (xff != NULL && ip_trusted(&addr, conf)) {
        end = strlen(xff);
        for (;;) {
            size_t start = end;

            while (start > 0 && xff[start - 1] != ',')
                start--;
            if (!ip_parse(xff + start, end - start, &hop))
                break;
            addr = hop;
            if (!ip_trusted(&hop, conf) || start == 0)
                break;
            end = start - 1;
        }
    }
    return inet_ntop(addr.family, addr.bytes, out, (socklen_t)size) != NULL;
}

/* Cleans s and stores it under key in obj when anything is left. */
static enum lb_err put_clean(json_t *obj, const char *key, const char *s, size_t len, size_t cap)
{
    char *v = NULL;
    enum lb_err e = clean_value(s, len, cap, &v);

    if (e != LB_OK || v == NULL)
        return e;
    if (json_object_set_new(obj, key, json_string(v)) != 0)
        e = LB_ERR_NOMEM;
    free(v);
    return e;
}

/* Stores v (owned, may be NULL) under key. */
static enum lb_err put_owned(json_t *obj, const char *key, char *v)
{
    enum lb_err e = LB_OK;

    if (v != NULL && json_object_set_new(obj, key, json_string(v)) != 0)
        e = LB_ERR_NOMEM;
    free(v);
    return e;
}

/*
 * The cookie's value as a query string: the first cookie named name in the Cookie header, its
 * quotes removed, percent-decoded once unless it already holds a '=' (written un-encoded). *out
 * is a new string or NULL. Returns LB_ERR_NOMEM only when out of memory.
 */
static enum lb_err cookie_query(const char *header, const char *name, char **out)
{
    size_t nlen, i = 0, len;
    enum lb_err e = LB_OK;

    *out = NULL;
    if (header == NULL || name == NULL || name[0] == '\0')
        return LB_OK;
    nlen = strlen(name);
    len = strlen(header);
    while (i < len) {
        const char *c = header + i;
        const char *semi = memchr(c, ';', len - i);
        size_t clen = semi ? (size_t)(semi - c) : len - i;

        i += clen + 1;
        while (clen > 0 && (*c == ' ' || *c == '\t')) {
            c++;
            clen--;
        }
        while (clen > 0 && (c[clen - 1] == ' ' || c[clen - 1] == '\t'))
            clen--;
        if (clen <= nlen || memcmp(c, name, nlen) != 0 || c[nlen] != '=')
            continue;
        c += nlen + 1;
        clen -= nlen + 1;
        if (clen >= 2 && c[0] == '"' && c[clen - 1] == '"') {
            c++;
            clen -= 2;
        }
        if (memchr(c, '=', clen) != NULL) {
            *out = strndup(c, clen);
            if (*out == NULL)
                e = LB_ERR_NOMEM;
        } else {
            e = parse_percent_decode(c, clen, false, out);
            if (e != LB_ERR_NOMEM)
                e = LB_OK;
        }
        break;
    }
    return e;
}

/* The Referer's query string (borrowed, without '?' and fragment) for http(s) Referers. */
static const char *referer_query(const char *referer, size_t *len)
{
    const char *q;

    *len = 0;
    if (http_scheme_len(referer) == 0)
        return NULL;
    q = strchr(referer, '?');
    if (q == NULL)
        return NULL;
    q++;
    *len = strcspn(q, "#");
    return q;
}

/* Finds one UTM parameter or click id from the four sources in order; *out as in query_find. */
static enum lb_err param_value(const struct request *r, const char *key, const char *ref_q,
                               size_t ref_len, const char *cookie_q, size_t cap, char **out)
{
    enum lb_err e;

    e = field_value(r->fields, key, cap, out);
    if (e == LB_OK && *out == NULL && r->query != NULL)
        e = query_find(r->query, strlen(r->query), key, cap, out);
    if (e == LB_OK && *out == NULL)
        e = query_find(ref_q, ref_len, key, cap, out);
    if (e == LB_OK && *out == NULL && cookie_q != NULL)
        e = query_find(cookie_q, strlen(cookie_q), key, cap, out);
    return e;
}

/* True when url (http or https) is on the site whose scheme://host[:port] is origin. */
static bool same_site(const char *url, const char *origin)
{
    char o[ATTRIBUTION_MAX_ORIGIN];

    return origin != NULL && url != NULL && url_origin(url, false, o, sizeof(o)) &&
           strcasecmp(o, origin) == 0;
}

/*
 * landing_page and referrer: a submitted field first, else the http(s) Referer without query. A
 * referrer on the site itself (origin, the lead's host) is no referrer: it is dropped.
 */
static enum lb_err add_pages(json_t *obj, const struct request *r, size_t cap, const char *origin)
{
    size_t ref_len = http_scheme_len(r->referer) ? strcspn(r->referer, "?#") : 0;
    char *v = NULL;
    enum lb_err e;

    e = field_value(r->fields, "landing_page", cap, &v);
    if (e == LB_OK && v != NULL)
        e = put_owned(obj, "landing_page", v);
    else if (e == LB_OK && ref_len > 0)
        e = put_clean(obj, "landing_page", r->referer, ref_len, cap);
    if (e != LB_OK)
        return e;
    if (json_object_get(r->fields, "referrer") != NULL) {
        e = field_value(r->fields, "referrer", cap, &v);
        if (e == LB_OK)
            e = put_owned(obj, "referrer", v);
    } else if (ref_len > 0) {
        e = put_clean(obj, "referrer", r->referer, ref_len, cap);
    }
    if (e == LB_OK && same_site(json_string_value(json_object_get(obj, "referrer")), origin))
        json_object_del(obj, "referrer");
    return e;
}

/*
 * first_touch: the submitted field, else the cookie <cookie_name>_first (the first visit's UTMs
 * and click ids as a query string, decoded like the attribution cookie), cleaned and capped.
 */
static enum lb_err add_first_touch(json_t *obj, const struct request *r,
                                   const struct attribution_conf *conf, size_t cap)
{
    char name[128], *v = NULL;
    enum lb_err e;

    e = field_value(r->fields, "first_touch", cap, &v);
    if (e == LB_OK && v != NULL)
        return put_owned(obj, "first_touch", v);
    if (e != LB_OK || conf->cookie_name == NULL || conf->cookie_name[0] == '\0')
        return e;
    if (snprintf(name, sizeof(name), "%s_first", conf->cookie_name) >= (int)sizeof(name))
        return LB_OK;
    e = cookie_query(r->cookie, name, &v);
    if (e == LB_OK && v != NULL)
        e = put_clean(obj, "first_touch", v, strlen(v), cap);
    free(v);
    return e;
}

json_t *attribution_extract(const struct request *r, const struct attribution_conf *conf)
{
    size_t cap = conf->max_value ? conf->max_value : ATTRIBUTION_DEFAULT_MAX;
    char origin[ATTRIBUTION_MAX_ORIGIN];
    char ip[INET6_ADDRSTRLEN];
    char *cookie_q = NULL, *v = NULL;
    const char *ref_q;
    size_t ref_len, i;
    json_t *obj = json_object();
    enum lb_err e = LB_OK;

    if (obj == NULL)
        return NULL;
    ref_q = referer_query(r->referer, &ref_len);
    e = cookie_query(r->cookie, conf->cookie_name, &cookie_q);
    for (i = 0; i < attribution_param_count && e == LB_OK; i++) {
        e = param_value(r, attribution_param_keys[i], ref_q, ref_len, cookie_q, cap, &v);
        if (e == LB_OK)
            e = put_owned(obj, attribution_param_keys[i], v);
    }
    if (e == LB_OK && host_of(r, origin, sizeof(origin)))
        e = put_clean(obj, "host", origin, strlen(origin), cap);
    if (e == LB_OK)
        e = add_pages(obj, r, cap, json_string_value(json_object_get(obj, "host")));
    if (e == LB_OK)
        e = add_first_touch(obj, r, conf, cap);
    if (e == LB_OK && attribution_client_ip(r, conf, ip, sizeof(ip)))
        e = put_clean(obj, "ip", ip, strlen(ip), cap);
    if (e == LB_OK && r->user_agent != NULL)
        e = put_clean(obj, "user_agent", r->user_agent, strlen(r->user_agent), cap);
    free(cookie_q);
    if (e != LB_OK) {
        json_decref(obj);
        obj = NULL;
    }
    return obj;
}
