/*
 * handler.c: one request from environment and body to a struct response (see handler.h).
 *
 * The order is fixed and each step may answer early: route → method → origin → size → body →
 * parse → attribution → rules → (update: reference) → target validation → delivery → response.
 * Nothing personal is logged: the log record gets the form name, status and outcome only.
 */
#include "handler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "attribution.h"
#include "crypto.h"
#include "leadref.h"
#include "rules.h"
#include "target.h"

#define READ_CHUNK 8192

/* Everything one request builds; freed once at the end of handler_run. */
struct job {
    const struct config *cfg;
    const struct form *form;
    struct worker *w;
    struct request req;
    json_t *attribution;
    json_t *lead;
    json_t *errors;
    char submission_id[33];
    const struct target *update_target; /* update: the target the reference names */
    char update_lead_id[64];
};

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static enum target_action target_action_for(enum form_action a)
{
    switch (a) {
    case FORM_VALUATION: return TARGET_VALUATION;
    case FORM_UPDATE: return TARGET_UPDATE;
    default: return TARGET_CREATE;
    }
}

/* Answers an error: JSON for scripts; for plain posts a 303 to the error page when one is set. */
static void answer_error(struct job *j, struct response *out, enum lb_err code, const char *msg,
                         json_t *fields)
{
    if (j->form != NULL && j->form->error_page != NULL && j->req.path != NULL &&
        !request_wants_json(&j->req)) {
        /* Only field names and the code go in the URL: never what the visitor typed. */
        json_t *params = json_pack("{s:s}", "error", lb_err_name(code));
        const char *key;
        json_t *v;
        struct buf names;

        buf_init(&names, 1024);
        json_object_foreach(fields, key, v) {
            if (names.len > 0)
                buf_putc(&names, ',');
            buf_puts(&names, key);
        }
        if (params != NULL && names.len > 0)
            json_object_set_new(params, "fields", json_string(names.data));
        buf_free(&names);
        if (params != NULL && response_redirect(out, j->form->error_page, params) == LB_OK) {
            json_decref(params);
            return;
        }
        json_decref(params);
    }
    response_error(out, code, msg);
    if (fields != NULL && out->body != NULL)
        json_object_set(json_object_get(out->body, "error"), "fields", fields);
}

/* Reads the body into b (capped at the form's limit). */
static enum lb_err read_body(struct job *j, body_read_fn rd, void *ctx, struct buf *b,
                             struct lb_error *err)
{
    size_t limit = j->form->body_limit;
    long long want = j->req.content_length;
    char chunk[READ_CHUNK];

    if (want > (long long)limit)
        return lb_fail(err, LB_ERR_TOO_LARGE, "the body is %lld bytes; this form takes at most %zu",
                       want, limit);
    buf_init(b, limit);
    while (want < 0 || (long long)b->len < want) {
        size_t n = sizeof(chunk);
        ssize_t got;

        if (want >= 0 && (long long)(want - (long long)b->len) < (long long)n)
            n = (size_t)(want - (long long)b->len);
        got = rd(ctx, chunk, n);
        if (got < 0)
            return lb_fail(err, LB_ERR_BAD_REQUEST, "the body could not be read");
        if (got == 0)
            break;
        if (buf_append(b, chunk, (size_t)got) != LB_OK)
            return lb_fail(err, LB_ERR_TOO_LARGE, "the body is larger than this form's %zu bytes",
                           limit);
    }
    if (want >= 0 && (long long)b->len < want)
        return lb_fail(err, LB_ERR_BAD_REQUEST, "the body is shorter than its Content-Length");
    return LB_OK;
}

static bool origin_allowed(const struct form *f, const char *origin)
{
    if (f->n_origins == 0)
        return true;
    for (size_t i = 0; i < f->n_origins; i++)
        if (strcasecmp(f->origins[i], origin) == 0)
            return true;
    return false;
}

/* The string value of a control field (lb_ref, lb_lead_id, lb_target), or NULL. */
static const char *control_field(const json_t *fields, const char *name)
{
    json_t *v = json_object_get(fields, name);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

/*
 * Works out which lead an update form patches: a signed reference from the page (lb_ref), or, for
 * an authenticated server-to-server call (Authorization: Bearer <webhook_secret>), a lead id.
 */
static enum lb_err resolve_update(struct job *j, struct lb_error *err)
{
    const char *ref = control_field(j->req.fields, "lb_ref");
    char target[64];
    enum lb_err e;

    if (ref != NULL) {
        if (j->cfg->secret == NULL)
            return lb_fail(err, LB_ERR_INTERNAL, "no secret configured");
        e = leadref_verify(j->cfg->secret, ref, (long long)time(NULL), target, sizeof(target),
                           j->update_lead_id, sizeof(j->update_lead_id));
        if (e == LB_ERR_GONE)
            return lb_fail(err, e, "this lead reference has expired; please submit the form again");
        if (e != LB_OK)
            return lb_fail(err, LB_ERR_FORBIDDEN, "the lead reference is not valid");
    } else if (j->form->webhook_secret != NULL && j->req.authorization != NULL) {
        const char *auth = j->req.authorization;
        const char *id = control_field(j->req.fields, "lb_lead_id");
        const char *t = control_field(j->req.fields, "lb_target");
        size_t n = strlen(j->form->webhook_secret);

        if (strncmp(auth, "Bearer ", 7) != 0 || strlen(auth + 7) != n ||
            !crypto_equal(auth + 7, j->form->webhook_secret, n))
            return lb_fail(err, LB_ERR_FORBIDDEN, "bad credentials");
        if (id == NULL || *id == '\0' || strlen(id) >= sizeof(j->update_lead_id))
            return lb_fail(err, LB_ERR_INVALID_FIELDS, "lb_lead_id is required");
        snprintf(j->update_lead_id, sizeof(j->update_lead_id), "%s", id);
        snprintf(target, sizeof(target), "%s",
                 t != NULL ? t : (j->form->n_targets > 0 ? j->form->targets[0]->name : ""));
    } else {
        return lb_fail(err, LB_ERR_FORBIDDEN, "an update needs the lead reference (lb_ref)");
    }
    for (size_t i = 0; i < j->form->n_targets; i++)
        if (strcmp(j->form->targets[i]->name, target) == 0)
            j->update_target = j->form->targets[i];
    if (j->update_target == NULL)
        return lb_fail(err, LB_ERR_FORBIDDEN, "the lead reference is not for this form");
    return LB_OK;
}

/* Runs each target's documented checks; adds to j->errors. Returns the number of errors. */
static int validate_for_targets(struct job *j, enum target_action action)
{
    int n = 0;

    if (j->errors == NULL)
        j->errors = json_object();
    if (j->errors == NULL)
        return 0;
    for (size_t i = 0; i < j->form->n_targets; i++) {
        const struct target *t = j->form->targets[i];

        if (j->update_target != NULL && t != j->update_target)
            continue;
        n += t->ops->validate(t->state, action, j->lead, j->errors);
    }
    return n;
}

/* Dry run: the exact payload each target would receive, without credentials. */
static json_t *dry_run_payloads(struct job *j, enum target_action action)
{
    json_t *out = json_object();

    for (size_t i = 0; out != NULL && i < j->form->n_targets; i++) {
        const struct target *t = j->form->targets[i];
        struct http_call call;
        json_t *body = NULL, *entry;

        if (j->update_target != NULL && t != j->update_target)
            continue;
        memset(&call, 0, sizeof(call));
        if (t->ops->build(t->state, action, j->lead,
                          action == TARGET_UPDATE ? j->update_lead_id : NULL, j->submission_id,
                          &call) != LB_OK) {
            json_object_set_new(out, t->name, json_pack("{s:s}", "error", "could not build"));
            http_call_free(&call);
            continue;
        }
        if (call.body != NULL)
            body = json_loadb(call.body, call.body_len, 0, NULL);
        entry = json_pack("{s:s,s:s,s:o*}", "method", call.method, "url", call.url, "body",
                          body != NULL ? body : json_null());
        json_object_set_new(out, t->name, entry);
        http_call_free(&call);
    }
    return out;
}

/* Delivers to every target of the form; fills the answer. */
static void deliver(struct job *j, enum target_action action, struct response *out,
                    struct log_record *rec)
{
    json_t *targets = json_object();
    json_t *valuation = NULL;
    json_t *refs = json_object();
    const char *first_ref_target = NULL;
    int ok = 0, transient = 0, permanent = 0, timeouts = 0;
    char reason[512] = "";
    json_t *body, *params;
    long long retry_after = -1;

    for (size_t i = 0; i < j->form->n_targets; i++) {
        const struct target *t = j->form->targets[i];
        struct target_result res;
        char word[600];

        if (j->update_target != NULL && t != j->update_target)
            continue;
        target_result_init(&res);
        target_deliver(t, j->w->http, action, j->lead,
                       action == TARGET_UPDATE ? j->update_lead_id : NULL, j->submission_id, &res);
        if (res.outcome == DELIVERY_OK) {
            ok++;
            snprintf(word, sizeof(word), "%s", action == TARGET_UPDATE ? "updated" : "created");
            if (res.valuation != NULL && valuation == NULL)
                valuation = json_incref(res.valuation);
            if (res.lead_id[0] != '\0' && j->cfg->secret != NULL) {
                char ref[LEADREF_MAX];
                const char *lead_id = res.lead_id;

                if (leadref_sign(j->cfg->secret, t->name, lead_id,
                                 (long long)time(NULL) + j->cfg->ref_ttl, ref,
                                 sizeof(ref)) == LB_OK) {
                    json_object_set_new(refs, t->name, json_string(ref));
                    if (first_ref_target == NULL)
                        first_ref_target = t->name;
                }
            }
        } else {
            if (res.outcome == DELIVERY_TRANSIENT) {
                transient++;
                if (res.http_status == 0 && strstr(res.reason, "timed out") != NULL)
                    timeouts++;
                if (res.retry_after > retry_after)
                    retry_after = res.retry_after;
            } else {
                permanent++;
            }
            snprintf(word, sizeof(word), "failed: %s", res.reason);
            if (reason[0] == '\0')
                snprintf(reason, sizeof(reason), "%s", res.reason);
        }
        json_object_set_new(targets, t->name, json_string(word));
        target_result_clear(&res);
    }

    if (ok == 0) {
        enum lb_err code = permanent > 0 ? LB_ERR_REJECTED
                           : timeouts == transient ? LB_ERR_TIMEOUT
                                                   : LB_ERR_UPSTREAM;

        rec->outcome = permanent > 0 ? "rejected" : "upstream_failed";
        answer_error(j, out, code, reason, NULL);
        if (out->body != NULL)
            json_object_set(out->body, "targets", targets);
        out->retry_after = retry_after;
        goto out;
    }

    rec->outcome = action == TARGET_UPDATE ? "updated" : "created";
    body = json_pack("{s:b,s:s,s:O}", "ok", 1, "status", rec->outcome, "targets", targets);
    if (body != NULL && first_ref_target != NULL) {
        json_t *lead = json_pack("{s:O}", "ref", json_object_get(refs, first_ref_target));

        if (json_object_size(refs) > 1)
            json_object_set(lead, "refs", refs);
        json_object_set_new(body, "lead", lead);
    }
    if (body != NULL && action == TARGET_VALUATION)
        json_object_set_new(body, "valuation",
                            valuation != NULL ? json_incref(valuation)
                                              : json_pack("{s:s}", "status", "unavailable"));

    if (request_wants_json(&j->req) || j->form->success_page == NULL) {
        response_json(out, 200, body);
        goto out;
    }
    /* A plain HTML post: 303 to the success page with the numbers, nothing personal. */
    params = json_pack("{s:s}", "status", rec->outcome);
    if (params != NULL && first_ref_target != NULL)
        json_object_set(params, "lb_ref", json_object_get(refs, first_ref_target));
    if (params != NULL && action == TARGET_VALUATION) {
        static const char *const blocks[] = {"sale", "rent"};
        static const char *const keys[] = {"min", "avg", "max"};

        json_t *status = json_object_get(valuation, "status");

        json_object_set_new(params, "valuation", json_is_string(status)
                                                     ? json_incref(status)
                                                     : json_string("unavailable"));
        for (size_t b = 0; valuation != NULL && b < 2; b++)
            for (size_t k = 0; k < 3; k++) {
                json_t *v = json_object_get(json_object_get(valuation, blocks[b]), keys[k]);
                char name[16];

                snprintf(name, sizeof(name), "%s_%s", blocks[b], keys[k]);
                if (json_is_number(v))
                    json_object_set(params, name, v);
            }
    }
    if (params == NULL || response_redirect(out, j->form->success_page, params) != LB_OK)
        response_json(out, 200, json_incref(body));
    json_decref(params);
    json_decref(body);
out:
    json_decref(targets);
    json_decref(refs);
    json_decref(valuation);
}

void handler_run(const struct config *cfg, struct worker *w, env_get_fn env, void *env_ctx,
                 body_read_fn read_fn, void *read_ctx, struct response *out,
                 struct log_record *rec)
{
    struct job j;
    struct lb_error err = {LB_OK, ""};
    struct buf body;
    enum lb_err e;
    double start = now_ms();
    enum target_action action;
    unsigned char rnd[16];

    memset(&j, 0, sizeof(j));
    j.cfg = cfg;
    j.w = w;
    buf_init(&body, 0);
    memset(rec, 0, sizeof(*rec));
    rec->outcome = "error";

    e = request_from_env(&j.req, env, env_ctx, &err);
    snprintf(w->request_id, sizeof(w->request_id), "%s", j.req.id);
    rec->request_id = w->request_id;
    rec->method = request_method_name(j.req.method);
    if (e != LB_OK) {
        answer_error(&j, out, e, err.message, NULL);
        goto out;
    }

    j.form = config_find_form(cfg, j.req.path);
    if (j.form == NULL) {
        rec->outcome = "not_found";
        response_error(out, LB_ERR_NOT_FOUND, "no form at this address");
        goto out;
    }
    rec->form = j.form->name;

    if (j.req.origin != NULL && !origin_allowed(j.form, j.req.origin)) {
        rec->outcome = "origin_refused";
        response_error(out, LB_ERR_FORBIDDEN, "this site may not post to this form");
        goto out;
    }
    if (j.req.origin != NULL && j.form->n_origins > 0)
        out->allow_origin = strdup(j.req.origin);

    if (j.req.method == METHOD_OPTIONS) {
        rec->outcome = "preflight";
        response_json(out, 204, NULL);
        out->preflight = true;
        goto out;
    }
    if (j.req.method != METHOD_POST &&
        !(j.form->action == FORM_ECHO &&
          (j.req.method == METHOD_GET || j.req.method == METHOD_HEAD))) {
        rec->outcome = "method_not_allowed";
        response_error(out, LB_ERR_METHOD, "this form takes POST");
        out->allow = j.form->action == FORM_ECHO ? "GET, HEAD, POST, OPTIONS" : "POST, OPTIONS";
        goto out;
    }

    if (j.req.method == METHOD_POST) {
        e = read_body(&j, read_fn, read_ctx, &body, &err);
        if (e != LB_OK) {
            rec->outcome = "bad_body";
            answer_error(&j, out, e, err.message, NULL);
            goto out;
        }
    }
    e = request_parse_body(&j.req, body.data != NULL ? body.data : "", body.len, &err);
    if (e != LB_OK) {
        rec->outcome = "bad_body";
        answer_error(&j, out, e, err.message, NULL);
        goto out;
    }

    j.attribution = attribution_extract(&j.req, &cfg->attribution);
    if (j.attribution == NULL ||
        rules_apply(j.form->rules, j.req.fields, j.attribution, &j.lead, &j.errors) != LB_OK) {
        response_error(out, LB_ERR_NOMEM, NULL);
        goto out;
    }

    if (j.form->action == FORM_ECHO) {
        rec->outcome = j.errors != NULL ? "invalid_fields" : "echo";
        if (j.errors != NULL) {
            answer_error(&j, out, LB_ERR_INVALID_FIELDS, "some fields are not valid", j.errors);
            goto out;
        }
        if (!request_wants_json(&j.req) && j.form->success_page != NULL) {
            json_t *params = json_pack("{s:s}", "status", "ok");

            if (response_redirect(out, j.form->success_page, params) == LB_OK) {
                json_decref(params);
                goto out;
            }
            json_decref(params);
        }
        response_json(out, 200,
                      json_pack("{s:b,s:s,s:O,s:O,s:O}", "ok", 1, "form", j.form->name, "fields",
                                j.req.fields, "attribution", j.attribution, "lead", j.lead));
        goto out;
    }

    action = target_action_for(j.form->action);
    if (action == TARGET_UPDATE) {
        e = resolve_update(&j, &err);
        if (e != LB_OK) {
            rec->outcome = "bad_reference";
            answer_error(&j, out, e, err.message, NULL);
            goto out;
        }
    }
    if (j.errors == NULL || json_object_size(j.errors) == 0)
        validate_for_targets(&j, action);
    if (j.errors != NULL && json_object_size(j.errors) > 0) {
        rec->outcome = "invalid_fields";
        answer_error(&j, out, LB_ERR_INVALID_FIELDS, "some fields are not valid", j.errors);
        goto out;
    }

    if (crypto_random(rnd, sizeof(rnd)) != 0) {
        response_error(out, LB_ERR_INTERNAL, "no randomness");
        goto out;
    }
    hex_encode(rnd, sizeof(rnd), j.submission_id);

    if (w->dry_run) {
        rec->outcome = "dry_run";
        response_json(out, 200,
                      json_pack("{s:b,s:b,s:O,s:o}", "ok", 1, "dry_run", 1, "lead", j.lead,
                                "payloads", dry_run_payloads(&j, action)));
        goto out;
    }
    deliver(&j, action, out, rec);
out:
    if (out->body == NULL && out->location == NULL && out->status != 204)
        response_error(out, LB_ERR_NOMEM, NULL);
    rec->status = out->status;
    rec->duration_ms = now_ms() - start;
    buf_free(&body);
    json_decref(j.attribution);
    json_decref(j.lead);
    json_decref(j.errors);
    request_free(&j.req);
}
