/*
 * fuzz_parse.c: the request-body parsers (src/parse.c): urlencoded, multipart and JSON.
 *
 * Input: a Content-Type line, "\n", then the body. With the default limits and with tight ones
 * (so every limit is reached), parse_body() must return LB_OK with an object, or an error with
 * no object; a parsed object must serialise (every string in it is valid UTF-8, as jansson
 * checks). The body also goes through parse_percent_decode() and parse_utf8_valid(), whose
 * results must agree: a decoded string is always valid UTF-8.
 */
#include "fuzz.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "err.h"
#include "parse.h"

static const struct parse_limits fuzz_tight = {
    .max_fields = 8, .max_depth = 3, .max_key = 16, .max_value = 64};

static void fuzz_parse_with(const char *ct, const char *body, size_t len,
                            const struct parse_limits *limits)
{
    struct lb_error err;
    json_t *out = (json_t *)1;
    enum lb_err rc;
    char *text;

    memset(&err, 0, sizeof(err));
    rc = parse_body(ct, body, len, limits, &out, &err);
    if (rc != LB_OK) {
        if (out != NULL)
            fuzz_fail("parse_body failed but left an object");
        return;
    }
    if (!json_is_object(out))
        fuzz_fail("parse_body succeeded without an object");
    text = json_dumps(out, JSON_COMPACT);
    if (text == NULL)
        fuzz_fail("a parsed object does not serialise");
    free(text);
    json_decref(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nl = memchr(data, '\n', size);
    size_t ct_len = nl != NULL ? (size_t)(nl - (const char *)data) : size;
    const char *body = nl != NULL ? nl + 1 : (const char *)data + size;
    size_t len = size - ct_len - (nl != NULL ? 1 : 0);
    char *ct = malloc(ct_len + 1), *decoded = NULL;

    if (ct == NULL)
        return 0;
    memcpy(ct, data, ct_len);
    ct[ct_len] = '\0';
    fuzz_parse_with(ct, body, len, &parse_default_limits);
    fuzz_parse_with(ct, body, len, &fuzz_tight);
    if (parse_percent_decode(body, len, true, &decoded) == LB_OK) {
        if (decoded == NULL || !parse_utf8_valid(decoded, strlen(decoded)))
            fuzz_fail("parse_percent_decode gave invalid UTF-8");
    }
    free(decoded);
    (void)parse_utf8_valid(body, len);
    free(ct);
    return 0;
}
