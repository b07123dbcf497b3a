/*
 * leadref.h: opaque, signed references to a lead created upstream.
 *
 * The page gets a reference instead of the API's lead id, so a later update can only patch the lead
 * that this bridge created for that visitor. ref = base64url(target \n lead_id \n expiry) "."
 * base64url(HMAC-SHA256(secret, that payload)).
 */
#ifndef LB_LEADREF_H
#define LB_LEADREF_H

#include <stddef.h>

#include "err.h"

/* The longest reference, without its NUL, that leadref_verify reads (and leadref_sign writes). */
#define LEADREF_MAX 512
/* The latest expiry a reference can hold: 18 decimal digits. */
#define LEADREF_EXPIRES_MAX 999999999999999999LL

/*
 * Writes a reference into out. LB_ERR_INTERNAL when it does not fit out or LEADREF_MAX, or the
 * inputs are unusable (expires outside 0..LEADREF_EXPIRES_MAX). What it writes, leadref_verify
 * accepts until expires.
 */
enum lb_err leadref_sign(const char *secret, const char *target, const char *lead_id,
                         long long expires, char *out, size_t out_size);
/*
 * Verifies ref at time now. LB_OK with target and lead_id filled; LB_ERR_FORBIDDEN when malformed
 * or tampered; LB_ERR_GONE when genuine but expired.
 */
enum lb_err leadref_verify(const char *secret, const char *ref, long long now, char *target,
                           size_t target_size, char *lead_id, size_t lead_id_size);

/*
 * The lead id a reference carries while the lead's create is still queued: this prefix and the
 * job's submission id. The handler resolves it (see resolve_queued_lead in handler.c).
 */
#define LEADREF_JOB_PREFIX "lbjob-"

#endif
