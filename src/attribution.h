/*
 * attribution.h: where a lead came from. A pure function of the parsed request.
 *
 * UTM parameters and click ids are taken, per key, from the first place that has them: the
 * submitted fields, the request's query string, the Referer's query string, then the first-party
 * attribution cookie (a urlencoded set of the same keys). host, landing_page and referrer describe
 * the page; ip and user_agent the visitor. Every value is capped and stripped of control
 * characters; a value that is not valid UTF-8 or does not decode is dropped, never an error.
 */
#ifndef LB_ATTRIBUTION_H
#define LB_ATTRIBUTION_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "request.h"

struct attribution_conf {
    const char *cookie_name;            /* NULL: no cookie */
    const char *const *trusted_proxies; /* addresses whose X-Forwarded-For we believe */
    size_t n_trusted_proxies;
    size_t max_value;                   /* cap for each value, bytes (whole UTF-8 characters) */
};

/*
 * The keys, in output order: utm_source ... utm_id, then the click ids gclid, gbraid, wbraid,
 * dclid (Google), fbclid (Meta), msclkid (Microsoft), ttclid (TikTok), li_fat_id (LinkedIn),
 * twclid (X).
 */
extern const char *const attribution_param_keys[];
extern const size_t attribution_param_count;

/*
 * Returns a new object with the keys that have values, among attribution_param_keys plus "host",
 * "landing_page", "referrer", "first_touch", "ip", "user_agent". Never NULL unless out of memory.
 * - host: Origin (unless "null"), else the Referer's scheme://host[:port]; lower case, http(s)
 *   only. Never the Host header (our own address): a server-to-server post has no host here, and
 *   the form's config may supply one (see inbound.h).
 * - landing_page / referrer: the submitted field, else the http(s) Referer without query and
 *   fragment (a "referrer" field that is present but empty means no referrer). A referrer on the
 *   host's own site is dropped: the site's own pages are never a referrer.
 * - first_touch: the "first_touch" field, else the cookie <cookie_name>_first (the first visit's
 *   UTMs and click ids as a query string, kept by the widget or the nginx snippet).
 * - ip: REMOTE_ADDR; when that is a trusted proxy, the right-most X-Forwarded-For address that is
 *   not (an unparsable entry ends the walk at the last trusted hop). Written in canonical form.
 * - the cookie (conf->cookie_name) is percent-decoded once unless it already holds '='.
 * max_value 0 means 512. Thread-safe; reads r and conf only.
 */
json_t *attribution_extract(const struct request *r, const struct attribution_conf *conf);

/* Writes the lower-case "scheme://host[:port]" of an http(s) URL into out; false if it has none. */
bool attribution_url_origin(const char *url, char *out, size_t size);

/*
 * The visitor's address as in "ip" above, written into out (INET6_ADDRSTRLEN is enough); false
 * when there is none. Pure, like attribution_extract (the rate limits use it before the body).
 */
bool attribution_client_ip(const struct request *r, const struct attribution_conf *conf,
                           char *out, size_t size);

#endif
