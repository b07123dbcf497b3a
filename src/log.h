/*
 * log.h: one JSON line per request on stderr (the web server's error log), plus start-up and
 * operator messages. Never personal data (names, emails, phones, field values) or secrets: only
 * ids, form names, statuses, durations, outcomes and our own words.
 */
#ifndef LB_LOG_H
#define LB_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG__MAX };

struct log_record {
    const char *request_id;
    const char *form;      /* NULL when no form matched */
    const char *method;
    int status;
    double duration_ms;
    const char *outcome;   /* "echo", "created", "queued", "invalid_fields", ... */
    const char *detail;    /* optional, our words only */
    const char *reason;    /* optional: why a post was called spam or limited (our word) */
};

void log_set_level(enum log_level level);
void log_request(const struct log_record *rec);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
