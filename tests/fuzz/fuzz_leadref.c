/*
 * fuzz_leadref.c: signed lead references (src/leadref.c).
 *
 * Input: four lines: a reference to verify, then a target, a lead id and an expiry (decimal) to
 * sign. Properties: verifying anything never crashes and leaves the outputs empty unless it
 * returns LB_OK; whatever leadref_sign accepts, leadref_verify takes back until (and including)
 * its expiry, with the same target and lead id, and answers LB_ERR_GONE a second later; a
 * reference never verifies under another secret.
 */
#include "fuzz.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "leadref.h"

#define FUZZ_SECRET "fuzz-secret-0123456789"

/* The next line of [*s, end) as a new string (NULs end it early); *s moves past it. */
static char *fuzz_line(const char **s, const char *end)
{
    const char *nl = memchr(*s, '\n', (size_t)(end - *s));
    const char *line_end = nl != NULL ? nl : end;
    char *out = strndup(*s, (size_t)(line_end - *s));

    *s = nl != NULL ? nl + 1 : end;
    return out;
}

static void fuzz_verify_any(const char *ref)
{
    char target[64], lead_id[LEADREF_MAX];
    enum lb_err rc = leadref_verify(FUZZ_SECRET, ref, 1700000000LL, target, sizeof(target),
                                    lead_id, sizeof(lead_id));

    if (rc != LB_OK && (target[0] != '\0' || lead_id[0] != '\0'))
        fuzz_fail("leadref_verify refused but filled its outputs");
    if (rc != LB_OK && rc != LB_ERR_FORBIDDEN && rc != LB_ERR_GONE)
        fuzz_fail("leadref_verify returned an unexpected code");
}

static void fuzz_round_trip(const char *target, const char *lead_id, long long expires)
{
    char ref[LEADREF_MAX + 64], t[LEADREF_MAX], id[LEADREF_MAX];

    if (leadref_sign(FUZZ_SECRET, target, lead_id, expires, ref, sizeof(ref)) != LB_OK)
        return;
    if (strlen(ref) > LEADREF_MAX)
        fuzz_fail("leadref_sign wrote a reference longer than LEADREF_MAX");
    if (leadref_verify(FUZZ_SECRET, ref, expires, t, sizeof(t), id, sizeof(id)) != LB_OK)
        fuzz_fail("a reference leadref_sign accepted does not verify");
    if (strcmp(t, target) != 0 || strcmp(id, lead_id) != 0)
        fuzz_fail("a verified reference names another target or lead");
    if (expires < LLONG_MAX &&
        leadref_verify(FUZZ_SECRET, ref, expires + 1, t, sizeof(t), id, sizeof(id)) !=
            LB_ERR_GONE)
        fuzz_fail("a reference is not gone after its expiry");
    if (leadref_verify("another-secret", ref, expires, t, sizeof(t), id, sizeof(id)) !=
        LB_ERR_FORBIDDEN)
        fuzz_fail("a reference verifies under another secret");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data, *end = s + size;
    char *ref = fuzz_line(&s, end);
    char *target = fuzz_line(&s, end);
    char *lead_id = fuzz_line(&s, end);
    char *expiry = fuzz_line(&s, end);
    long long expires;
    char *stop;

    if (ref != NULL)
        fuzz_verify_any(ref);
    if (target != NULL && lead_id != NULL && expiry != NULL) {
        errno = 0;
        expires = strtoll(expiry, &stop, 10);
        if (errno == 0 && stop != expiry)
            fuzz_round_trip(target, lead_id, expires);
    }
    free(ref);
    free(target);
    free(lead_id);
    free(expiry);
    return 0;
}
