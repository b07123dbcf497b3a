/*
 * handler.c: one request from environment and body to a struct response (see handler.h).
 *
 * The order is fixed and each step may answer early: route (a form, or a form's /token) → origin
 * → method → rate limits (429) → size → body → builder's signature (verify) → parse → guard
 * controls taken out → attribution (+ the form's host) → rules → (update: reference) → target
 * validation → spam verdict (spam: quarantine, answered like a queued lead) → duplicates
 * (builder's event id, Idempotency-Key, content fingerprint) → the job on disk (outbox) →
 * delivery now → response.
 * What the request path cannot deliver stays in the outbox for the retry worker.
 * Nothing personal is logged: the log record gets the form name, status and outcome only.
 */
#include "handler.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "attribution.h"
#include "crypto.h"
#include "inbound.h"
#include "guard.h"
#include "leadref.h"
#include "metrics.h"
#include "monitor.h"
#include "outbox.h"
#include "recall.h"
#include "quarantine.h"
#include "rules.h"
#include "target.h"
#include "throttle.h"
#include "verify.h"
#include "visitor.h"

#define READ_CHUNK 8192
/* Seconds after which a queued job without a stored answer counts as left by a dead worker. */
#define REPLAY_ORPHAN_AFTER 20

/* Everything one request builds; freed once at the end of handler_run. */
struct job {
    const struct config *cfg;
    const struct form *form;
    struct worker *w;
    struct request req;
    json_t *attribution;
    json_t *lead;
    json_t *errors;
    char submission_id[OUTBOX_ID_SIZE];
    const struct target *update_target; /* update: the target the reference names */
    json_t *refused;                    /* targets whose documented limits refuse the lead */
    char update_lead_id[64];
    char update_after[OUTBOX_ID_SIZE]; /* update of a lead whose create job is still queued */
    char event_id[INBOUND_EVENT_ID_MAX + 1]; /* the builder's event id; "": none */
    struct guard_controls controls;     /* lb_token, altcha, captcha, honeypot: not lead data */
};

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static long long wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static enum target_action target_action_for(enum form_action a)
{
    switch (a) {
    case FORM_VALUATION: return TARGET_VALUATION;
    case FORM_UPDATE: return TARGET_UPDATE;
    default: return TARGET_CREATE;
    }
}

/*
 * Answers an error: JSON for scripts; for plain posts a 303 to the error page when one is set.
 * Per-field errors are also given under the submitted inputs they came from ("inputs"); for a
 * plain post they and the visitor's values are kept behind a random token (recall.h) so the page
 * can show the form again: only the token, the code and field names go in the URL.
 */
static void answer_error(struct job *j, struct response *out, enum lb_err code, const char *msg,
                         json_t *fields)
{
    json_t *inputs = NULL;

    if (fields != NULL && j->form != NULL && j->form->rules != NULL)
        inputs = rules_error_inputs(j->form->rules, j->req.fields, fields);
    if (j->form != NULL && j->form->error_page != NULL && j->req.path != NULL &&
        !request_wants_json(&j->req)) {
        /* Only field names and the code go in the URL: never what the visitor typed. */
        json_t *params = json_pack("{s:s}", "error", lb_err_name(code));
        const char *key;
        json_t *v;
        struct buf names;
        char token[RECALL_TOKEN_SIZE];

        buf_init(&names, 1024);
        json_object_foreach(fields, key, v) {
            if (names.len > 0)
                buf_putc(&names, ',');
            buf_puts(&names, key);
        }
        if (params != NULL && names.len > 0)
            json_object_set_new(params, "fields", json_string(names.data));
        buf_free(&names);
        if (params != NULL && inputs != NULL && j->req.fields != NULL &&
            recall_put(j->cfg->spool_dir, j->form->name, j->req.fields, inputs,
                       (long long)time(NULL), token) == LB_OK)
            json_object_set_new(params, "lb_error", json_string(token));
        if (params != NULL && response_redirect(out, j->form->error_page, params) == LB_OK) {
            /* the error page carries a token that reads personal data back: keep it on site */
            out->same_origin_referrer = true;
            json_decref(params);
            json_decref(inputs);
            return;
        }
        json_decref(params);
    }
    response_error(out, code, msg);
    if (fields != NULL && out->body != NULL)
        json_object_set(json_object_get(out->body, "error"), "fields", fields);
    if (inputs != NULL && out->body != NULL)
        json_object_set(json_object_get(out->body, "error"), "inputs", inputs);
    json_decref(inputs);
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
        errno = 0;
        got = rd(ctx, chunk, n);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT))
            return lb_fail(err, LB_ERR_CLIENT_TIMEOUT,
                           "the body stopped arriving before its end (read timeout)");
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
 * A reference handed out while the create was still queued names the job ("lbjob-<id>"), not a
 * lead. Once that job is done, the lead id it got is used; while it is queued, the update waits
 * behind it in the outbox (j->update_after). A create that went dead, or a job no longer kept,
 * cannot be updated.
 */
static enum lb_err resolve_queued_lead(struct job *j, const char *target, struct lb_error *err)
{
    const char *id = j->update_lead_id + strlen(LEADREF_JOB_PREFIX);
    enum outbox_state state = OUTBOX_UNKNOWN;
    const char *lead_id;
    json_t *rec;

    if (strncmp(j->update_lead_id, LEADREF_JOB_PREFIX, strlen(LEADREF_JOB_PREFIX)) != 0)
        return LB_OK;
    if (!outbox_id_valid(id) || j->w->outbox == NULL)
        return lb_fail(err, LB_ERR_FORBIDDEN, "the lead reference is not valid");
    rec = outbox_show(j->w->outbox, id);
    if (rec != NULL) {
        const char *st = json_string_value(json_object_get(rec, "state"));

        state = st == NULL ? OUTBOX_UNKNOWN
                : strcmp(st, "queued") == 0 ? OUTBOX_QUEUED
                : strcmp(st, "done") == 0   ? OUTBOX_DONE
                : strcmp(st, "dead") == 0   ? OUTBOX_DEAD
                                            : OUTBOX_UNKNOWN;
    }
    lead_id = json_string_value(json_object_get(
        json_object_get(json_object_get(rec, "targets"), target), "lead_id"));
    if (lead_id == NULL)
        lead_id = json_string_value(json_object_get(json_object_get(
            json_object_get(json_object_get(rec, "targets"), target), "result"), "lead_id"));
    if (state == OUTBOX_DONE && lead_id != NULL && strlen(lead_id) < sizeof(j->update_lead_id)) {
        snprintf(j->update_lead_id, sizeof(j->update_lead_id), "%s", lead_id);
    } else if (state == OUTBOX_QUEUED) {
        snprintf(j->update_after, sizeof(j->update_after), "%s", id);
    } else {
        json_decref(rec);
        return lb_fail(err, LB_ERR_GONE, state == OUTBOX_DEAD
                                             ? "we could not pass on your first details; "
                                               "please call us"
                                             : "this lead reference has expired; please submit "
                                               "the form again");
    }
    json_decref(rec);
    return LB_OK;
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
        if (j->form->secret == NULL)
            return lb_fail(err, LB_ERR_INTERNAL, "no secret configured");
        e = leadref_verify(j->form->secret, ref, (long long)time(NULL), target, sizeof(target),
                           j->update_lead_id, sizeof(j->update_lead_id));
        if (e == LB_ERR_GONE)
            return lb_fail(err, e, "this lead reference has expired; please submit the form again");
        if (e != LB_OK)
            return lb_fail(err, LB_ERR_FORBIDDEN, "the lead reference is not valid");
        e = resolve_queued_lead(j, target, err);
        if (e != LB_OK)
            return e;
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

/* Whether target i of the form takes part: the one an update names, and none refused. */
static bool target_in_play(const struct job *j, size_t i)
{
    const struct target *t = j->form->targets[i];

    if (j->update_target != NULL && t != j->update_target)
        return false;
    return j->refused == NULL || json_object_get(j->refused, t->name) == NULL;
}

/*
 * Runs each target's documented checks. A target that refuses the lead is left out (recorded in
 * j->refused with the first reason) and the others still get it: one target's limits do not stop
 * the rest. Only when every target refuses are the errors put in j->errors (a 422 for the page).
 */
static void validate_for_targets(struct job *j, enum target_action action)
{
    json_t *all = json_object();
    size_t tried = 0;

    j->refused = json_object();
    if (all == NULL || j->refused == NULL)
        goto out;
    for (size_t i = 0; i < j->form->n_targets; i++) {
        const struct target *t = j->form->targets[i];
        json_t *errs;
        const char *key;
        json_t *v;
        char reason[300];

        if (!target_in_play(j, i))
            continue;
        tried++;
        errs = json_object();
        if (errs == NULL || t->ops->validate(t->state, action, j->lead, errs) == 0) {
            json_decref(errs);
            continue;
        }
        json_object_update_missing(all, errs);
        json_object_foreach(errs, key, v) {
            snprintf(reason, sizeof(reason), "invalid fields (%s: %s)", key,
                     json_is_string(v) ? json_string_value(v) : "not valid");
            break;
        }
        json_object_set_new(j->refused, t->name, json_string(reason));
        json_decref(errs);
    }
    if (tried > 0 && json_object_size(j->refused) == tried) {
        json_decref(j->errors);
        j->errors = json_incref(all);
    }
out:
    json_decref(all);
}

/* Dry run: the exact payload each target would receive, without credentials. */
static json_t *dry_run_payloads(struct job *j, enum target_action action)
{
    json_t *out = json_object();

    for (size_t i = 0; out != NULL && i < j->form->n_targets; i++) {
        const struct target *t = j->form->targets[i];
        struct http_call call;
        json_t *body = NULL, *entry;

        if (!target_in_play(j, i))
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

/* The JSON answer and where a plain HTML post goes, from the delivery results. */
static void answer_delivery(struct job *j, enum target_action action, const char *status,
                            json_t *targets, json_t *refs, const char *ref_target,
                            json_t *valuation, struct response *out)
{
    json_t *body, *params;
    int code = strcmp(status, "queued") == 0 ? 202 : 200;

    body = json_pack("{s:b,s:s,s:O}", "ok", 1, "status", status, "targets", targets);
    if (body != NULL && ref_target != NULL) {
        json_t *lead = json_pack("{s:O}", "ref", json_object_get(refs, ref_target));

        if (json_object_size(refs) > 1)
            json_object_set(lead, "refs", refs);
        json_object_set_new(body, "lead", lead);
    }
    if (body != NULL && code == 202)
        json_object_set_new(body, "message",
                            json_string("we have your details and will pass them on shortly"));
    if (body != NULL && action == TARGET_VALUATION) {
        json_t *v = valuation != NULL ? json_incref(valuation)
                                      : json_pack("{s:s}", "status", "unavailable");

        if (v != NULL && valuation == NULL)
            json_object_set_new(v, "message",
                                json_string(code == 202 ? "the valuation service is busy: an "
                                                          "agent will send your estimate"
                                                        : "no estimate was made"));
        json_object_set_new(body, "valuation", v);
    }
    if (ref_target != NULL)
        out->same_origin_referrer = true; /* the page holds a lead reference */
    if (request_wants_json(&j->req) || j->form->success_page == NULL) {
        response_json(out, code, body);
        return;
    }
    /* A plain HTML post: 303 to the success page with the numbers, nothing personal. */
    params = json_pack("{s:s}", "status", status);
    if (params != NULL && ref_target != NULL)
        json_object_set(params, "lb_ref", json_object_get(refs, ref_target));
    if (params != NULL && action == TARGET_VALUATION) {
        static const char *const blocks[] = {"sale", "rent"};
        static const char *const keys[] = {"min", "avg", "max"};
        json_t *vstatus = json_object_get(valuation, "status");

        json_object_set_new(params, "valuation", json_is_string(vstatus)
                                                     ? json_incref(vstatus)
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
        response_json(out, code, json_incref(body));
    json_decref(params);
    json_decref(body);
}

/* Appends "target: reason" to the request's log detail, as far as it fits (never cut mid-way). */
static void log_detail_add(struct worker *w, const char *target, const char *reason)
{
    size_t used = strlen(w->detail);
    int n = snprintf(w->detail + used, sizeof(w->detail) - used, "%s%s: %s", used > 0 ? "; " : "",
                     target, reason);

    if (n < 0 || (size_t)n >= sizeof(w->detail) - used)
        w->detail[used] = '\0';
}

/*
 * Records the delivery results (results[i] for target i of the form; those not in play are
 * ignored) in the claim, so the outbox retries what failed transiently, and fills the answer: 200
 * when a target took the lead, 202 "queued" when the rest will be retried, 422 when every target
 * refused it.
 */
static void summarize(struct job *j, enum target_action action, struct outbox_claim *claim,
                      struct target_result *results, struct response *out,
                      struct log_record *rec)
{
    json_t *targets = json_object();
    json_t *valuation = NULL;
    json_t *refs = json_object();
    const char *ref_target = NULL;
    int ok = 0, transient = 0, permanent = 0;
    char reason[512] = "";
    long long retry_after = -1;
    size_t n = j->form->n_targets, done = 0;

    for (size_t i = 0; i < n; i++) {
        const struct target *t = j->form->targets[i];
        struct target_result res = results[i];
        char word[600];

        if (!target_in_play(j, i))
            continue;
        if (outbox_record(claim, t->name, &res, (long long)time(NULL)) == LB_OK &&
            res.outcome == DELIVERY_OK && ++done < n)
            outbox_save(claim); /* a crash now must not deliver this target twice */
        if (res.outcome == DELIVERY_OK) {
            ok++;
            snprintf(word, sizeof(word), "%s", action == TARGET_UPDATE ? "updated" : "created");
            if (res.valuation != NULL && valuation == NULL)
                valuation = json_incref(res.valuation);
            if (res.lead_id[0] == '\0' && action == TARGET_UPDATE)
                snprintf(res.lead_id, sizeof(res.lead_id), "%s", j->update_lead_id);
            if (res.lead_id[0] != '\0' && j->form->secret != NULL) {
                char ref[LEADREF_MAX];

                if (leadref_sign(j->form->secret, t->name, res.lead_id,
                                 (long long)time(NULL) + j->cfg->ref_ttl, ref,
                                 sizeof(ref)) == LB_OK) {
                    json_object_set_new(refs, t->name, json_string(ref));
                    if (ref_target == NULL)
                        ref_target = t->name;
                }
            }
        } else {
            if (res.outcome == DELIVERY_TRANSIENT || res.outcome == DELIVERY_DEFERRED) {
                transient++;
                if (res.retry_after > retry_after)
                    retry_after = res.retry_after;
            } else {
                permanent++;
            }
            /* The page gets our words; the API's own text goes to the log and the job. */
            snprintf(word, sizeof(word), "%s",
                     res.outcome == DELIVERY_PERMANENT ? "failed" : "queued");
            if (reason[0] == '\0' || (permanent > 0 && res.outcome == DELIVERY_PERMANENT))
                snprintf(reason, sizeof(reason), "%s", res.reason);
            log_detail_add(j->w, t->name, res.reason);
            rec->detail = j->w->detail;
        }
        json_object_set_new(targets, t->name, json_string(word));
        target_result_clear(&res);
    }
    if (j->refused != NULL) {
        const char *name;
        json_t *why;

        json_object_foreach(j->refused, name, why) {
            char word[600];

            snprintf(word, sizeof(word), "failed: %s", json_string_value(why));
            json_object_set_new(targets, name, json_string(word));
            permanent++;
        }
    }

    /* A queued step 1 still hands out a reference, to the job: step 2 then waits behind it. */
    if (ok == 0 && transient > 0 && action != TARGET_UPDATE && j->cfg->secret != NULL) {
        for (size_t i = 0; i < n && ref_target == NULL; i++) {
            const struct target *t = j->form->targets[i];
            char jobref[64], ref[LEADREF_MAX];

            if (!target_in_play(j, i) || (results[i].outcome != DELIVERY_TRANSIENT &&
                                          results[i].outcome != DELIVERY_DEFERRED))
                continue;
            snprintf(jobref, sizeof(jobref), "%s%s", LEADREF_JOB_PREFIX, j->submission_id);
            if (leadref_sign(j->cfg->secret, t->name, jobref,
                             (long long)time(NULL) + j->cfg->ref_ttl, ref,
                             sizeof(ref)) == LB_OK) {
                json_object_set_new(refs, t->name, json_string(ref));
                ref_target = t->name;
            }
        }
    }
    if (ok > 0 || transient > 0) {
        const char *status = ok > 0 ? (action == TARGET_UPDATE ? "updated" : "created") : "queued";

        rec->outcome = status;
        answer_delivery(j, action, status, targets, refs, ref_target, valuation, out);
    } else {
        rec->outcome = "rejected";
        answer_error(j, out, LB_ERR_REJECTED,
                     permanent > 0 && reason[0] != '\0'
                         ? "we could not pass on these details; please check them, or call us"
                         : "we could not pass on these details; please try again",
                     NULL);
        if (out->body != NULL)
            json_object_set(out->body, "targets", targets);
    }
    json_decref(targets);
    json_decref(refs);
    json_decref(valuation);
}

/* What a duplicate must be answered: the status, body and Location of the first answer. */
static json_t *response_record(const struct response *out)
{
    json_t *r = json_pack("{s:i}", "status", out->status);

    if (r != NULL && out->body != NULL)
        json_object_set(r, "body", out->body);
    if (r != NULL && out->location != NULL)
        json_object_set_new(r, "location", json_string(out->location));
    return r;
}

/*
 * Answers a repeat from the job's state: when its first answer was never stored (the worker that
 * took it died), or was "queued" and the outbox has delivered it since. Delivered: 200 with the
 * targets' outcomes, references and valuation numbers; refused: 422; waiting for a retry: 202.
 * Returns false while the job is in flight.
 */
static bool answer_from_state(struct job *j, enum target_action action, const char *existing,
                              enum outbox_state state, struct response *out)
{
    struct outbox_claim *claim = NULL;
    json_t *rec, *targets, *refs, *t, *valuation = NULL;
    const char *name, *ref_target = NULL;

    if (state != OUTBOX_QUEUED && state != OUTBOX_DONE && state != OUTBOX_DEAD)
        return false;
    rec = outbox_show(j->w->outbox, existing);
    if (rec == NULL)
        return false;
    if (state == OUTBOX_QUEUED) {
        /* A young job's first request is still delivering it (and must win the claim): wait
         * for its answer. An older one was left by a worker that died: answer "queued". */
        json_int_t created = json_integer_value(json_object_get(rec, "created"));

        if ((long long)time(NULL) - (long long)created < REPLAY_ORPHAN_AFTER ||
            outbox_claim(j->w->outbox, existing, &claim) != LB_OK) {
            json_decref(rec);
            return false;
        }
        outbox_release(claim);
    }
    if (state == OUTBOX_DEAD) {
        /* the dead reason (the API's words) stays in the job: leadbridge queue show */
        answer_error(j, out, LB_ERR_REJECTED,
                     "we could not pass on these details; please check them, or call us", NULL);
        json_decref(rec);
        return true;
    }
    targets = json_object();
    refs = json_object();
    json_object_foreach(json_object_get(rec, "targets"), name, t) {
        const char *status = json_string_value(json_object_get(t, "status"));
        const char *lead_id = json_string_value(json_object_get(
            json_object_get(t, "result"), "lead_id"));
        json_t *v = json_object_get(json_object_get(t, "result"), "valuation");
        char ref[LEADREF_MAX];

        if (v == NULL)
            v = json_object_get(t, "valuation"); /* a done record keeps the numbers here */
        if (valuation == NULL && json_is_object(v))
            valuation = v; /* borrowed from rec */
        if (lead_id == NULL)
            lead_id = json_string_value(json_object_get(t, "lead_id"));
        json_object_set_new(targets, name, json_string(
            status != NULL && strcmp(status, "delivered") == 0
                ? (action == TARGET_UPDATE ? "updated" : "created")
                : status != NULL && strcmp(status, "dead") == 0 ? "failed" : "queued"));
        if (lead_id != NULL && *lead_id != '\0' && j->form->secret != NULL &&
            leadref_sign(j->form->secret, name, lead_id, (long long)time(NULL) + j->cfg->ref_ttl,
                         ref, sizeof(ref)) == LB_OK) {
            json_object_set_new(refs, name, json_string(ref));
            if (ref_target == NULL)
                ref_target = name; /* borrowed from rec, which outlives the answer */
        }
    }
    answer_delivery(j, action,
                    state == OUTBOX_QUEUED ? "queued"
                    : action == TARGET_UPDATE ? "updated" : "created",
                    targets, refs, ref_target, valuation, out);
    json_decref(targets);
    json_decref(refs);
    json_decref(rec);
    return true;
}

/*
 * Answers a repeat of an earlier submission (same Idempotency-Key, or the same content from the
 * same client within the duplicate window) with the first answer. The first may still be in
 * flight in another worker: wait for its answer, bounded by the targets' time limit. A first
 * answer that was never stored is made from the job's state.
 */
static void replay(struct job *j, enum target_action action, const char *existing,
                   struct response *out, struct log_record *rec)
{
    struct timespec pause = {0, 50 * 1000 * 1000};

    rec->outcome = "duplicate";
    for (int i = 0; i < 20 * 30; i++) {
        enum outbox_state state = OUTBOX_UNKNOWN;
        json_t *r = outbox_load_response(j->w->outbox, existing, &state);

        /* A stored "queued" answer is stale once the outbox has delivered (or given up on)
         * the job since: answer from what happened instead, with the real numbers. */
        if (r != NULL && json_integer_value(json_object_get(r, "status")) == 202 &&
            (state == OUTBOX_DONE || state == OUTBOX_DEAD) &&
            answer_from_state(j, action, existing, state, out)) {
            json_decref(r);
            return;
        }
        if (r != NULL) {
            json_t *body = json_object_get(r, "body");
            const char *loc = json_string_value(json_object_get(r, "location"));

            response_json(out, (int)json_integer_value(json_object_get(r, "status")),
                          json_incref(body));
            if (loc != NULL)
                out->location = strdup(loc);
            json_decref(r);
            return;
        }
        if (answer_from_state(j, action, existing, state, out))
            return;
        nanosleep(&pause, NULL);
    }
    answer_error(j, out, LB_ERR_CONFLICT, "the same submission is still being processed", NULL);
}

/* The outbox job for this submission: every target in play with the lead. NULL: no memory. */
static json_t *job_new(struct job *j, enum target_action action, long long now)
{
    json_t *job = outbox_job_new(j->submission_id, j->form->name, now);

    for (size_t i = 0; job != NULL && i < j->form->n_targets; i++) {
        const struct target *t = j->form->targets[i];

        if (!target_in_play(j, i))
            continue;
        if (outbox_job_add_target(job, t->name, target_action_name(action), j->lead,
                                  action == TARGET_UPDATE && j->update_after[0] == '\0'
                                      ? j->update_lead_id
                                      : NULL) != LB_OK ||
            (j->update_after[0] != '\0' &&
             outbox_job_wait_for(job, t->name, j->update_after) != LB_OK)) {
            json_decref(job);
            job = NULL;
        }
    }
    return job;
}

/*
 * Spam: the job goes to the quarantine (durably, never to a target) and the page gets what a
 * person whose lead waits in the outbox gets (202 "queued", or the success page), unless the form
 * says "answer": "refuse" (422). The log line says outcome "spam" and the reason, nothing else.
 */
static void quarantine_spam(struct job *j, enum target_action action, const char *why,
                            struct response *out, struct log_record *rec)
{
    long long now = (long long)time(NULL);
    json_t *job = job_new(j, action, now), *targets = json_object(), *refs = json_object();
    struct lb_error err = {LB_OK, ""};
    enum lb_err e;
    const char *name;
    json_t *v;

    rec->outcome = "spam";
    rec->reason = why;
    metrics_spam(j->form->name, why);
    e = job == NULL ? LB_ERR_NOMEM
        : j->w->quarantine == NULL ? lb_fail(&err, LB_ERR_UNAVAILABLE, "no quarantine")
                                   : quarantine_put(j->w->quarantine, job, why, now, &err);
    if (e != LB_OK) {
        log_msg(LOG_ERROR, "quarantine: %s", err.message);
        answer_error(j, out, LB_ERR_UNAVAILABLE,
                     "the submission could not be stored; please try again", NULL);
        goto out;
    }
    if (!guard_answer_queued(j->form->guard)) {
        answer_error(j, out, LB_ERR_REJECTED, "this submission was not accepted", NULL);
        goto out;
    }
    json_object_foreach(json_object_get(job, "targets"), name, v)
        json_object_set_new(targets, name, json_string("queued"));
    answer_delivery(j, action, "queued", targets, refs, NULL, NULL, out);
out:
    json_decref(targets);
    json_decref(refs);
    json_decref(job);
}

/* The spam verdict for this post (NULL: clean); see guard_verdict. */
static const char *spam_verdict(struct job *j)
{
    struct guard_request gr;

    memset(&gr, 0, sizeof(gr));
    gr.controls = &j->controls;
    gr.fields = j->req.fields;
    gr.lead = j->lead;
    gr.ip = json_string_value(json_object_get(j->attribution, "ip"));
    gr.rl = j->w->limits;
    gr.http = j->w->dry_run ? NULL : j->w->http;
    gr.now_ms = wall_ms();
    return guard_verdict(j->form->guard, &gr);
}

/*
 * GET <form path>/token: a signed form token, the honeypot's name and a challenge, as JSON, or
 * with ?format=html as hidden inputs for an SSI include. Never cached (Cache-Control: no-store).
 */
static bool serve_token(struct job *j, const struct config *cfg, struct response *out,
                        struct log_record *rec)
{
    size_t n = strlen(j->req.path);
    char form_path[1024];

    if (n <= 6 || n - 6 >= sizeof(form_path) || strcmp(j->req.path + n - 6, "/token") != 0)
        return false;
    memcpy(form_path, j->req.path, n - 6);
    form_path[n - 6] = '\0';
    j->form = config_find_form(cfg, form_path);
    if (j->form == NULL)
        return false;
    rec->form = j->form->name;
    rec->outcome = "token";
    if (j->req.origin != NULL && !origin_allowed(j->form, j->req.origin)) {
        rec->outcome = "origin_refused";
        response_error(out, LB_ERR_FORBIDDEN, "this site may not use this form");
        return true;
    }
    if (j->req.origin != NULL && j->form->n_origins > 0)
        out->allow_origin = strdup(j->req.origin);
    if (j->req.method != METHOD_GET && j->req.method != METHOD_HEAD) {
        rec->outcome = "method_not_allowed";
        response_error(out, LB_ERR_METHOD, "the token is fetched with GET");
        out->allow = "GET, HEAD";
        return true;
    }
    if (strcmp(j->req.query, "format=html") == 0) {
        char *html = guard_token_html(j->form->guard, wall_ms());

        if (html != NULL)
            response_text(out, 200, "text/html; charset=utf-8", html);
        else
            response_error(out, LB_ERR_INTERNAL, "no token could be made");
        return true;
    }
    response_json(out, 200, guard_token_json(j->form->guard, wall_ms()));
    if (out->body == NULL)
        response_error(out, LB_ERR_INTERNAL, "no token could be made");
    return true;
}

/*
 * "fp:" + SHA-256 over the form, the client (address and whether it takes JSON or a redirect, so a
 * replay has the form the client expects) and the lead: the same content from the same client.
 */
static void fingerprint(const struct job *j, enum target_action action, char *out, size_t size)
{
    /* The lead without the moment consent was given (visitor.c dates it): a repeat a second
     * later is still the same submission. */
    json_t *lead = json_deep_copy(j->lead);
    json_t *meta = json_object_get(lead, "meta");
    char *text;

    if (json_is_object(meta)) {
        (void)json_object_del(meta, "consent");
        (void)json_object_del(meta, "marketing");
    }
    text = json_dumps(lead != NULL ? lead : j->lead, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(lead);
    struct buf b;
    uint8_t digest[SHA256_DIGEST_SIZE];
    char hex[2 * SHA256_DIGEST_SIZE + 1];
    const char *ip = json_string_value(json_object_get(j->attribution, "ip"));

    buf_init(&b, 1024 * 1024);
    buf_printf(&b, "%s\n%d\n%s\n%d\n%s\n%s", j->form->name, (int)action, ip != NULL ? ip : "",
               (int)request_wants_json(&j->req), j->update_lead_id, text != NULL ? text : "");
    sha256(b.data != NULL ? b.data : "", b.len, digest);
    hex_encode(digest, sizeof(digest), hex);
    snprintf(out, size, "fp:%s", hex);
    buf_free(&b);
    free(text);
}

/* Delivers to each target in play now, on this thread, and summarizes. */
static void deliver_now(struct job *j, enum target_action action, struct outbox_claim *claim,
                        struct response *out, struct log_record *rec)
{
    size_t n = j->form->n_targets;
    struct target_result *results = calloc(n + 1, sizeof(*results));

    if (results == NULL) {
        response_error(out, LB_ERR_NOMEM, NULL);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct target *t = j->form->targets[i];

        target_result_init(&results[i]);
        if (!target_in_play(j, i) ||
            throttle_defer(j->w->limits, t, false, NULL, j->submission_id, wall_ms(),
                           &results[i]))
            continue;
        target_deliver(t, j->w->http, action, j->lead,
                       action == TARGET_UPDATE ? j->update_lead_id : NULL, j->submission_id,
                       &results[i]);
        throttle_after(j->w->limits, t, NULL, &results[i], wall_ms());
    }
    summarize(j, action, claim, results, out, rec);
    free(results);
}

/* Stores the first answer in the claimed job and files it (done, queued for retry, or dead). */
static void file_job(struct job *j, struct outbox_claim *claim, const struct response *out)
{
    json_t *record = response_record(out);

    if (record != NULL)
        outbox_claim_set_response(claim, record);
    json_decref(record);
    if (outbox_finish(claim, (long long)time(NULL), NULL) != LB_OK)
        log_msg(LOG_ERROR, "outbox: could not file job %s", j->submission_id);
}

/*
 * A request whose delivery waits in the event loop instead of on a worker thread. It owns the
 * job (moved out of handler_run), the claim, the answer and the log record; the targets' calls
 * run in parallel, and the last one to finish answers the page (worker->finish).
 */
struct pending {
    struct job j;
    struct worker w;                 /* the job's worker from here on: its own log detail */
    enum target_action action;
    struct outbox_claim *claim;
    struct target_result *results;
    size_t waiting;                  /* calls not yet answered */
    pthread_mutex_t mu;              /* guards waiting (a call may end on the submitting thread) */
    struct response out;
    struct log_record rec;
    char request_id[17];
    char detail[256];
    double start;
    handler_finish_fn finish;
    void *conn;
};

/* One target of a pending request. */
struct pending_call {
    struct pending *p;
    size_t index;
};

/* Everything after delivery: summary, filing, the log record, the answer, the clean-up. */
static void pending_complete(struct pending *p)
{
    struct job *j = &p->j;

    summarize(j, p->action, p->claim, p->results, &p->out, &p->rec);
    file_job(j, p->claim, &p->out);
    if (p->out.body == NULL && p->out.text == NULL && p->out.location == NULL &&
        p->out.status != 204)
        response_error(&p->out, LB_ERR_NOMEM, NULL);
    p->rec.status = p->out.status;
    p->rec.duration_ms = now_ms() - p->start;
    metrics_request(p->rec.form, p->rec.status, p->rec.duration_ms / 1000.0);
    p->finish(p->conn, &p->out, &p->rec);
    response_free(&p->out);
    json_decref(j->attribution);
    json_decref(j->lead);
    json_decref(j->errors);
    json_decref(j->refused);
    guard_controls_free(&j->controls);
    request_free(&j->req);
    free(p->results);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* http_done_fn: one target's answer. */
static void pending_call_done(void *ctx, const struct http_reply *reply)
{
    struct pending_call *pc = ctx;
    struct pending *p = pc->p;
    const struct target *t = p->j.form->targets[pc->index];
    size_t left;

    target_conclude(t, p->action, p->action == TARGET_UPDATE ? p->j.update_lead_id : NULL,
                    p->j.submission_id, reply, &p->results[pc->index]);
    throttle_after(p->w.limits, t, NULL, &p->results[pc->index], wall_ms());
    free(pc);
    pthread_mutex_lock(&p->mu);
    left = --p->waiting;
    pthread_mutex_unlock(&p->mu);
    if (left == 0)
        pending_complete(p);
}

/*
 * Hands the claimed job's delivery to the event loop. On success the job's contents belong to
 * the pending request (j is emptied) and true is returned: the loop will answer. False: nothing
 * was handed over; deliver on this thread.
 */
static bool defer(struct job *j, enum target_action action, struct outbox_claim *claim,
                  struct response *out,
                  struct log_record *rec)
{
    size_t n = j->form->n_targets, calls = 0;
    struct pending *p = calloc(1, sizeof(*p));
    struct http_call *built = calloc(n + 1, sizeof(*built));

    if (p == NULL || built == NULL)
        goto fail;
    p->results = calloc(n + 1, sizeof(*p->results));
    if (p->results == NULL)
        goto fail;
    /* Build every call first: once one is submitted there is no going back. */
    for (size_t i = 0; i < n; i++) {
        target_result_init(&p->results[i]);
        if (target_in_play(j, i) &&
            !throttle_defer(j->w->limits, j->form->targets[i], false, NULL, j->submission_id,
                            wall_ms(), &p->results[i]) &&
            target_prepare(j->form->targets[i], action, j->lead,
                           action == TARGET_UPDATE ? j->update_lead_id : NULL, j->submission_id,
                           &built[i], &p->results[i]))
            calls++;
    }
    if (calls == 0) {
        for (size_t i = 0; i < n; i++)
            target_result_clear(&p->results[i]);
        goto fail;
    }
    pthread_mutex_init(&p->mu, NULL);
    p->j = *j;
    memset(j, 0, sizeof(*j));
    j->cfg = p->j.cfg;
    j->form = p->j.form;
    j->w = p->j.w;
    /* The worker goes on with other requests: the pending one keeps a copy (its outbox, its
     * request id and log detail), never its HTTP client. */
    p->w = *j->w;
    p->w.http = NULL;
    p->j.w = &p->w;
    p->action = action;
    p->claim = claim;
    p->rec = *rec;
    snprintf(p->request_id, sizeof(p->request_id), "%s", rec->request_id ? rec->request_id : "");
    p->rec.request_id = p->request_id;
    if (rec->detail != NULL) {
        snprintf(p->detail, sizeof(p->detail), "%s", rec->detail);
        p->rec.detail = p->detail;
    }
    response_init(&p->out);
    /* What the worker already set for every answer to this request (CORS for the embed on
     * another origin) goes with it: the loop's answer starts from this. */
    p->out.allow_origin = out->allow_origin;
    out->allow_origin = NULL;
    p->start = p->w.start_ms;
    p->finish = p->w.finish;
    p->conn = p->w.conn;
    p->waiting = calls + 1; /* + 1: held until every call is submitted */
    j->w->deferred = true;
    for (size_t i = 0; i < n; i++) {
        struct pending_call *pc;

        if (built[i].method == NULL)
            continue;
        pc = malloc(sizeof(*pc));
        if (pc != NULL) {
            pc->p = p;      /* before submitting: the call may end at once */
            pc->index = i;
        }
        if (pc == NULL || http_loop_submit(p->w.loop, &built[i], pending_call_done, pc) !=
                              LB_OK) {
            /* Out of memory: this target is retried by the outbox. */
            free(pc);
            http_call_free(&built[i]);
            snprintf(p->results[i].reason, sizeof(p->results[i].reason), "out of memory");
            p->results[i].outcome = DELIVERY_TRANSIENT;
            pthread_mutex_lock(&p->mu);
            p->waiting--;
            pthread_mutex_unlock(&p->mu);
            continue;
        }
    }
    free(built);
    /* The hold: the last call may already have ended; whoever brings waiting to 0 answers. */
    {
        size_t left;

        pthread_mutex_lock(&p->mu);
        left = --p->waiting;
        pthread_mutex_unlock(&p->mu);
        if (left == 0)
            pending_complete(p);
    }
    return true;

fail:
    if (built != NULL)
        for (size_t i = 0; i < n; i++)
            http_call_free(&built[i]);
    free(built);
    if (p != NULL)
        free(p->results);
    free(p);
    return false;
}

/*
 * Accepts the submission durably, then delivers it: duplicate checks (the builder's event id,
 * else Idempotency-Key and the content fingerprint) → the job on disk (outbox_put) → claim → deliver now → first answer stored → job
 * filed (done, queued for retry, or dead). Nothing is answered "accepted" before the job is on
 * disk. replayed (a "token_replayed"-style verdict, or NULL): the post reused a single-use token;
 * a repeat of an earlier submission (a double click) is answered as one, anything else is spam.
 */
static void accept_and_deliver(struct job *j, enum target_action action, const struct buf *body,
                               const char *replayed, struct response *out,
                               struct log_record *rec)
{
    struct outbox *ob = j->w->outbox;
    long long now = (long long)time(NULL);
    char idem[600] = "", fp[80], existing[OUTBOX_ID_SIZE], hash_hex[2 * SHA256_DIGEST_SIZE + 1];
    const char *hash = NULL; /* the body's hash for an Idempotency-Key; NULL: the key alone */
    bool dup = false;
    json_t *job = NULL;
    struct outbox_claim *claim = NULL;
    struct lb_error err = {LB_OK, ""};
    enum lb_err e = LB_OK;

    if (j->event_id[0] != '\0') {
        /* A builder's retry carries the same event id (its body may differ, e.g. a new
         * timestamp): the key alone decides, so a repeat replays the first answer. */
        snprintf(idem, sizeof(idem), "event:%s:%.500s", j->form->name, j->event_id);
    } else if (j->req.idempotency_key != NULL && j->req.idempotency_key[0] != '\0') {
        uint8_t digest[SHA256_DIGEST_SIZE];
        struct buf h;

        buf_init(&h, body->len + 256);
        buf_printf(&h, "%s\n", j->form->name);
        buf_append(&h, body->data != NULL ? body->data : "", body->len);
        sha256(h.data != NULL ? h.data : "", h.len, digest);
        buf_free(&h);
        hex_encode(digest, sizeof(digest), hash_hex);
        hash = hash_hex;
        snprintf(idem, sizeof(idem), "idem:%s:%.500s", j->form->name, j->req.idempotency_key);
    }
    if (idem[0] != '\0') {
        e = outbox_reserve_key(ob, idem, hash, j->submission_id, now, &dup, existing);
        if (e == LB_ERR_CONFLICT) {
            rec->outcome = "idempotency_conflict";
            answer_error(j, out, LB_ERR_CONFLICT,
                         "this Idempotency-Key was used for a different submission", NULL);
            return;
        }
        if (e != LB_OK) {
            answer_error(j, out, LB_ERR_UNAVAILABLE, "the submission could not be stored", NULL);
            return;
        }
        if (dup) {
            replay(j, action, existing, out, rec);
            return;
        }
    }
    /* A builder's event id is the whole answer to "is this a repeat": two events with the
     * same answers are two submissions, so no content fingerprint for them. */
    fp[0] = '\0';
    if (j->event_id[0] == '\0') {
        fingerprint(j, action, fp, sizeof(fp));
        e = outbox_reserve_key(ob, fp, NULL, j->submission_id, now, &dup, existing);
    }
    if (fp[0] != '\0' && e == LB_OK && dup) {
        if (idem[0] != '\0')
            outbox_release_key(ob, idem, j->submission_id);
        replay(j, action, existing, out, rec);
        return;
    }
    if (replayed != NULL) {
        if (idem[0] != '\0')
            outbox_release_key(ob, idem, j->submission_id);
        if (e == LB_OK)
            outbox_release_key(ob, fp, j->submission_id);
        quarantine_spam(j, action, replayed, out, rec);
        return;
    }

    job = job_new(j, action, now);
    /* Due later than now: the background worker leaves it to this request unless we die. */
    if (job != NULL)
        json_object_set_new(job, "next_attempt", json_integer(now + 30));
    /* Delivered at once below: a crash during that makes the retry ask the API first. An update
     * waiting for its lead's create is not: it is due at once for the outbox, behind the create. */
    if (job != NULL && j->update_after[0] != '\0')
        json_object_set_new(job, "next_attempt", json_integer(now));
    else if (job != NULL && outbox_job_mark_started(job) != LB_OK) {
        json_decref(job);
        job = NULL;
    }
    e = job != NULL ? outbox_put_claim(ob, job, &claim, &err) : LB_ERR_NOMEM;
    json_decref(job);
    if (e != LB_OK) {
        if (idem[0] != '\0')
            outbox_release_key(ob, idem, j->submission_id);
        if (fp[0] != '\0')
            outbox_release_key(ob, fp, j->submission_id);
        log_msg(LOG_ERROR, "outbox: %s", err.message);
        answer_error(j, out, LB_ERR_UNAVAILABLE,
                     "the submission could not be stored; please try again", NULL);
        return;
    }
    if (j->update_after[0] != '\0') {
        /* Applied by the outbox to the lead its create makes, once that is delivered. */
        json_t *targets = json_object();

        outbox_release(claim);

        rec->outcome = "queued";
        json_object_set_new(targets, j->update_target->name, json_string("queued"));
        answer_delivery(j, action, "queued", targets, NULL, NULL, NULL, out);
        json_decref(targets);
        return;
    }
    for (int i = 0; claim == NULL && i < 20 &&
                    (e = outbox_claim(ob, j->submission_id, &claim)) == LB_ERR_CONFLICT;
         i++)
        nanosleep(&(struct timespec){0, 5 * 1000 * 1000}, NULL); /* a duplicate looking at it */
    if (e != LB_OK) {
        /* On disk and held elsewhere (or already filed): the outbox delivers it. */
        rec->outcome = "queued";
        response_json(out, 202, json_pack("{s:b,s:s}", "ok", 1, "status", "queued"));
        return;
    }
    if (j->w->loop != NULL && j->w->finish != NULL && defer(j, action, claim, out, rec))
        return; /* the event loop answers */
    deliver_now(j, action, claim, out, rec);
    file_job(j, claim, out);
}

/* Sets status and a text/plain body: a copy of text. */
static void answer_text(struct response *out, int status, const char *text)
{
    response_text(out, status, "text/plain; charset=utf-8", strdup(text != NULL ? text : ""));
}

/* The string value of a query parameter of a GET (parsed into j->req.fields), or NULL. */
static const char *query_param(const struct job *j, const char *name)
{
    return control_field(j->req.fields, name);
}

/*
 * GET <form path>/settings and GET <form path>/recall: what the widget and the no-JavaScript
 * pages read besides posting. settings answers the form's public display and consent settings as
 * JSON (?k=disclaimer answers the disclaimer alone as text, ?k=money&n=DIGITS one number written
 * in the form's locale and currency, both for SSI includes); recall answers
 * one value (?t=TOKEN&v=NAME) or one error message (?t=TOKEN&e=NAME) of a rejected plain post as
 * text, empty when there is none, 404 when the token is unknown or expired. Returns false when
 * the path is neither (the caller answers 404).
 */
static bool serve_form_extra(struct job *j, struct response *out, struct log_record *rec)
{
    static const char *const suffixes[] = {"/settings", "/recall"};
    struct lb_error err = {LB_OK, ""};
    size_t plen = strlen(j->req.path), which = 0, slen = 0;
    char base[512];

    for (which = 0; which < 2; which++) {
        slen = strlen(suffixes[which]);
        if (plen > slen && strcmp(j->req.path + plen - slen, suffixes[which]) == 0)
            break;
    }
    if (which == 2 || plen - slen >= sizeof(base))
        return false;
    memcpy(base, j->req.path, plen - slen);
    base[plen - slen] = '\0';
    j->form = config_find_form(j->cfg, base);
    if (j->form == NULL || j->form->visitor == NULL)
        return false;
    rec->form = j->form->name;
    rec->outcome = which == 0 ? "settings" : "recall";
    if (j->req.origin != NULL && !origin_allowed(j->form, j->req.origin)) {
        rec->outcome = "origin_refused";
        response_error(out, LB_ERR_FORBIDDEN, "this site may not use this form");
        return true;
    }
    if (j->req.origin != NULL && j->form->n_origins > 0)
        out->allow_origin = strdup(j->req.origin);
    if (j->req.method != METHOD_GET && j->req.method != METHOD_HEAD) {
        response_error(out, LB_ERR_METHOD, "this address takes GET");
        out->allow = "GET, HEAD";
        return true;
    }
    if (request_parse_body(&j->req, "", 0, &err) != LB_OK) {
        response_error(out, LB_ERR_BAD_REQUEST, err.message);
        return true;
    }
    if (which == 0) {
        const char *k = query_param(j, "k"), *n = query_param(j, "n");

        if (k != NULL && strcmp(k, "disclaimer") == 0) {
            answer_text(out, 200, j->form->visitor->disclaimer);
        } else if (k != NULL && strcmp(k, "money") == 0) {
            char money[64];
            size_t len = n != NULL ? strlen(n) : 0;

            /* a number from the result page's own query (nginx SSI): digits only */
            if (len == 0 || len > 15 || strspn(n, "0123456789") != len)
                answer_text(out, 200, "");
            else
                answer_text(out, 200,
                            visitor_money(j->form->visitor->locale, j->form->visitor->currency,
                                          strtod(n, NULL), money, sizeof(money)));
        } else {
            response_json(out, 200, visitor_settings(j->form->visitor, j->form->name));
        }
        return true;
    }
    {
        json_t *r = recall_get(j->cfg->spool_dir, j->form->name, query_param(j, "t"),
                               (long long)time(NULL));
        const char *v = query_param(j, "v"), *e = query_param(j, "e");
        const json_t *text = NULL;

        if (r == NULL) {
            answer_text(out, 404, "");
            return true;
        }
        if (v != NULL)
            text = json_object_get(json_object_get(r, "values"), v);
        else if (e != NULL)
            text = json_object_get(json_object_get(r, "errors"), e);
        answer_text(out, 200, json_is_string(text) ? json_string_value(text) : "");
        json_decref(r);
    }
    return true;
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
    bool monitoring = false;
    const char *spam;

    memset(&j, 0, sizeof(j));
    j.cfg = cfg;
    j.w = w;
    w->deferred = false;
    w->start_ms = start;
    buf_init(&body, 0);
    memset(rec, 0, sizeof(*rec));
    rec->outcome = "error";
    w->detail[0] = '\0';

    e = request_from_env(&j.req, env, env_ctx, &err);
    snprintf(w->request_id, sizeof(w->request_id), "%s", j.req.id);
    rec->request_id = w->request_id;
    rec->method = request_method_name(j.req.method);
    if (e != LB_OK) {
        answer_error(&j, out, e, err.message, NULL);
        goto out;
    }

    if (monitor_handle(&cfg->monitor, w->outbox, &j.req, out, rec)) {
        monitoring = true; /* scrapes and health checks are not counted as requests */
        goto out;
    }
    j.form = config_find_form(cfg, j.req.path);
    if (j.form == NULL && (serve_form_extra(&j, out, rec) || serve_token(&j, cfg, out, rec)))
        goto out;
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

    if (j.req.method == METHOD_POST && !w->dry_run) {
        char ip[64];
        long long wait;
        const char *why;

        if (!guard_rate_ok(j.form->guard, w->limits,
                           attribution_client_ip(&j.req, &cfg->attribution, ip, sizeof(ip)) ? ip
                                                                                           : NULL,
                           wall_ms(), &wait, &why)) {
            rec->outcome = "rate_limited";
            rec->reason = why;
            metrics_spam(j.form->name, why);
            response_error(out, LB_ERR_RATE_LIMITED, "too many posts; please try again later");
            out->retry_after = wait;
            goto out;
        }
    }
    if (j.req.method == METHOD_POST) {
        e = read_body(&j, read_fn, read_ctx, &body, &err);
        if (e != LB_OK) {
            rec->outcome = "bad_body";
            answer_error(&j, out, e, err.message, NULL);
            goto out;
        }
    }
    if (j.form->verify != NULL &&
        verify_request(j.form->verify, &j.req, env, env_ctx, body.data, body.len, wall_ms(),
                       w->detail, sizeof(w->detail)) != LB_OK) {
        /* Which check failed, in our words: never the secret or what was sent. */
        rec->outcome = "unauthorized";
        rec->detail = w->detail;
        log_msg(LOG_WARN, "form %s: %s verification failed: %s", j.form->name,
                verify_scheme_name(j.form->verify), w->detail);
        response_error(out, LB_ERR_UNAUTHORIZED, w->detail);
        goto out;
    }
    j.req.limits = inbound_limits(j.form->inbound);
    e = request_parse_body(&j.req, body.data != NULL ? body.data : "", body.len, &err);
    if (e != LB_OK) {
        rec->outcome = "bad_body";
        answer_error(&j, out, e, err.message, NULL);
        goto out;
    }

    guard_take_controls(j.form->guard, j.req.fields, &j.controls);
    j.attribution = attribution_extract(&j.req, &cfg->attribution);
    if (j.attribution != NULL &&
        inbound_set_host(j.form->inbound, j.req.fields, j.attribution) != LB_OK) {
        json_decref(j.attribution);
        j.attribution = NULL;
    }
    inbound_event_id(j.form->inbound, j.req.fields, env, env_ctx, j.event_id, sizeof(j.event_id));
    if (j.attribution == NULL ||
        rules_apply(j.form->rules, j.req.fields, j.attribution, &j.lead, &j.errors) != LB_OK) {
        response_error(out, LB_ERR_NOMEM, NULL);
        goto out;
    }
    if (j.form->action != FORM_UPDATE && j.form->action != FORM_ECHO &&
        visitor_consent_apply(j.form->visitor, j.req.fields, j.lead, &j.errors,
                              (long long)time(NULL)) != LB_OK) {
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
                      json_pack("{s:b,s:s,s:O,s:O,s:O,s:s?}", "ok", 1, "form", j.form->name,
                                "fields", j.req.fields, "attribution", j.attribution, "lead",
                                j.lead, "spam", spam_verdict(&j)));
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

    if (outbox_new_id(j.submission_id) != LB_OK) {
        response_error(out, LB_ERR_INTERNAL, "no randomness");
        goto out;
    }

    if (w->dry_run) {
        rec->outcome = "dry_run";
        response_json(out, 200,
                      json_pack("{s:b,s:b,s:O,s:o,s:s?}", "ok", 1, "dry_run", 1, "lead", j.lead,
                                "payloads", dry_run_payloads(&j, action), "spam",
                                spam_verdict(&j)));
        if (out->body != NULL && json_object_size(j.refused) > 0)
            json_object_set(out->body, "refused", j.refused);
        goto out;
    }
    if (w->outbox == NULL) {
        response_error(out, LB_ERR_UNAVAILABLE, "no outbox: the spool could not be opened");
        goto out;
    }
    spam = spam_verdict(&j);
    if (spam != NULL && strstr(spam, "_replayed") == NULL) {
        quarantine_spam(&j, action, spam, out, rec);
        goto out;
    }
    accept_and_deliver(&j, action, &body, spam, out, rec);
    if (w->deferred) {
        buf_free(&body); /* everything else now belongs to the event loop */
        return;
    }
out:
    if (out->body == NULL && out->text == NULL && out->location == NULL && out->status != 204)
        response_error(out, LB_ERR_NOMEM, NULL);
    rec->status = out->status;
    rec->duration_ms = now_ms() - start;
    if (!monitoring)
        metrics_request(rec->form, rec->status, rec->duration_ms / 1000.0);
    buf_free(&body);
    json_decref(j.attribution);
    json_decref(j.lead);
    json_decref(j.errors);
    json_decref(j.refused);
    guard_controls_free(&j.controls);
    request_free(&j.req);
}
