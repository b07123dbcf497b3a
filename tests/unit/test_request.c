/*
 * test_request.c: the CGI environment becomes a struct request; answers are serialised safely.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "request.h"
#include "respond.h"

struct env {
    const char *const *pairs; /* name, value, name, value, ..., NULL */
};

static const char *env_get(void *ctx, const char *name)
{
    const struct env *e = ctx;

    for (size_t i = 0; e->pairs[i] != NULL; i += 2)
        if (strcmp(e->pairs[i], name) == 0)
            return e->pairs[i + 1];
    return NULL;
}

Test(request, nginx_environment)
{
    static const char *const pairs[] = {
        "REQUEST_METHOD", "POST", "DOCUMENT_URI", "/lead/contact", "QUERY_STRING", "utm_source=x",
        "CONTENT_TYPE", "application/x-www-form-urlencoded", "CONTENT_LENGTH", "11",
        "HTTP_REFERER", "https://example.com/p?utm_medium=cpc", "HTTP_ORIGIN",
        "https://example.com", "REMOTE_ADDR", "192.0.2.1", "HTTPS", "on",
        "HTTP_IDEMPOTENCY_KEY", "k1", NULL,
    };
    struct env e = {pairs};
    struct request r;
    struct lb_error err;

    cr_assert_eq(request_from_env(&r, env_get, &e, &err), LB_OK);
    cr_assert_eq(r.method, METHOD_POST);
    cr_assert_str_eq(r.path, "/lead/contact");
    cr_assert_str_eq(r.query, "utm_source=x");
    cr_assert_eq(r.content_length, 11);
    cr_assert_str_eq(r.origin, "https://example.com");
    cr_assert_str_eq(r.idempotency_key, "k1");
    cr_assert(r.https);
    cr_assert_eq(strlen(r.id), 16);
    cr_assert_eq(request_parse_body(&r, "name=Marla&", 11, &err), LB_OK);
    cr_assert_str_eq(json_string_value(json_object_get(r.fields, "name")), "Marla");
    request_free(&r);
}

Test(request, apache_script_name_and_path_info)
{
    static const char *const pairs[] = {
        "REQUEST_METHOD", "GET", "SCRIPT_NAME", "/lead", "PATH_INFO", "/contact",
        "QUERY_STRING", "a=1&a=2", NULL,
    };
    struct env e = {pairs};
    struct request r;
    struct lb_error err;
    json_t *a;

    cr_assert_eq(request_from_env(&r, env_get, &e, &err), LB_OK);
    cr_assert_str_eq(r.path, "/lead/contact");
    cr_assert_eq(r.content_length, -1);
    cr_assert_eq(request_parse_body(&r, NULL, 0, &err), LB_OK);
    a = json_object_get(r.fields, "a");
    cr_assert(json_is_array(a) && json_array_size(a) == 2, "GET fields come from the query");
    request_free(&r);
}

Test(request, malformed_content_length_is_refused)
{
    static const char *const pairs[] = {
        "REQUEST_METHOD", "POST", "DOCUMENT_URI", "/x", "CONTENT_LENGTH", "12abc", NULL,
    };
    static const char *const huge[] = {
        "REQUEST_METHOD", "POST", "DOCUMENT_URI", "/x", "CONTENT_LENGTH",
        "99999999999999999999999", NULL,
    };
    struct env e = {pairs}, h = {huge};
    struct request r;
    struct lb_error err;

    cr_assert_eq(request_from_env(&r, env_get, &e, &err), LB_ERR_BAD_REQUEST);
    request_free(&r);
    cr_assert_eq(request_from_env(&r, env_get, &h, &err), LB_ERR_BAD_REQUEST);
    request_free(&r);
}

Test(request, long_headers_are_cut)
{
    static char big[REQUEST_MAX_HEADER * 3];
    const char *pairs[] = {"REQUEST_METHOD", "POST", "DOCUMENT_URI", "/x", "HTTP_REFERER", big,
                           NULL};
    struct env e = {pairs};
    struct request r;
    struct lb_error err;

    memset(big, 'a', sizeof(big) - 1);
    cr_assert_eq(request_from_env(&r, env_get, &e, &err), LB_OK);
    cr_assert_eq(strlen(r.referer), REQUEST_MAX_HEADER);
    request_free(&r);
}

Test(request, wants_json)
{
    struct request r;

    memset(&r, 0, sizeof(r));
    r.accept = "text/html,application/xhtml+xml,*/*;q=0.8";
    cr_assert_not(request_wants_json(&r), "a browser navigating wants HTML");
    r.accept = "application/json";
    cr_assert(request_wants_json(&r));
    r.accept = "text/html";
    r.x_requested_with = "XMLHttpRequest";
    cr_assert(request_wants_json(&r));
    r.x_requested_with = NULL;
    r.accept = NULL;
    cr_assert(request_wants_json(&r), "webhooks and curl get JSON");
}

Test(respond, error_body_shape)
{
    struct response res;
    struct buf out;

    response_init(&res);
    response_error(&res, LB_ERR_TOO_LARGE, "too big");
    buf_init(&out, 4096);
    cr_assert_eq(response_serialize(&res, false, &out), LB_OK);
    cr_assert(strncmp(out.data, "Status: 413 ", 12) == 0);
    cr_assert_not_null(strstr(out.data, "\r\nContent-Type: application/json\r\n"));
    cr_assert_not_null(
        strstr(out.data, "{\"error\":{\"code\":\"body_too_large\",\"message\":\"too big\"}}"));
    buf_free(&out);
    response_free(&res);
}

Test(respond, redirect_encodes_values_and_cannot_inject_headers)
{
    struct response res;
    struct buf out;
    json_t *params = json_pack("{s:s,s:i}", "status", "ok\r\nSet-Cookie: x=1", "sale_min", 2000000);
    const char *loc;

    response_init(&res);
    cr_assert_eq(response_redirect(&res, "https://example.com/thanks.html", params), LB_OK);
    buf_init(&out, 4096);
    cr_assert_eq(response_serialize(&res, false, &out), LB_OK);
    cr_assert(strncmp(out.data, "Status: 303 ", 12) == 0);
    loc = strstr(out.data, "Location: ");
    cr_assert_not_null(loc);
    cr_assert(strncmp(loc, "Location: https://example.com/thanks.html?status=ok%0D%0ASet-Cookie"
                           "%3A%20x%3D1&sale_min=2000000\r\n", 85) == 0, "%s", loc);
    cr_assert_null(strstr(out.data, "\r\nSet-Cookie"));
    cr_assert_eq(response_redirect(&res, "https://e.com/\r\nX: y", params), LB_ERR_INTERNAL);
    json_decref(params);
    buf_free(&out);
    response_free(&res);
}

Test(respond, head_has_no_body)
{
    struct response res;
    struct buf out;

    response_init(&res);
    response_error(&res, LB_ERR_METHOD, "POST only");
    res.allow = "POST, OPTIONS";
    buf_init(&out, 4096);
    cr_assert_eq(response_serialize(&res, true, &out), LB_OK);
    cr_assert_not_null(strstr(out.data, "Allow: POST, OPTIONS\r\n"));
    cr_assert(out.len >= 4 && strcmp(out.data + out.len - 4, "\r\n\r\n") == 0);
    buf_free(&out);
    response_free(&res);
}
