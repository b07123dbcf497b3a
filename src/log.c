/*
 * log.c: JSON lines on stderr (see log.h). One fputs per line under the stdio lock, so lines from
 * several threads never interleave. Callers pass only non-personal values.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

static enum log_level min_level = LOG_INFO;
static const char *const level_names[LOG__MAX] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    min_level = level;
}

static void timestamp(char *out, size_t size)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0 && size > 0)
        out[0] = '\0';
}

/* Writes obj (stolen) as one line. */
static void emit(json_t *obj)
{
    char *line, *with_newline;
    size_t n;

    if (obj == NULL)
        return;
    line = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER |
                               JSON_REAL_PRECISION(6));
    json_decref(obj);
    if (line == NULL)
        return;
    /* One write per line: stderr is unbuffered, and lines of several threads must not mix. */
    n = strlen(line);
    with_newline = realloc(line, n + 2);
    if (with_newline == NULL) {
        free(line);
        return;
    }
    with_newline[n] = '\n';
    with_newline[n + 1] = '\0';
    flockfile(stderr);
    fwrite(with_newline, 1, n + 1, stderr);
    funlockfile(stderr);
    free(with_newline);
}

void log_request(const struct log_record *rec)
{
    char ts[32];
    json_t *obj;

    timestamp(ts, sizeof(ts));
    obj = json_pack("{s:s,s:s,s:s,s:s?,s:s?,s:i,s:f,s:s?}", "ts", ts, "level", "info",
                    "request_id", rec->request_id != NULL ? rec->request_id : "", "form",
                    rec->form, "method", rec->method, "status", rec->status, "duration_ms",
                    rec->duration_ms, "outcome", rec->outcome);
    if (obj != NULL && rec->reason != NULL)
        json_object_set_new(obj, "reason", json_string(rec->reason));
    if (obj != NULL && rec->detail != NULL)
        json_object_set_new(obj, "detail", json_string(rec->detail));
    emit(obj);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    char ts[32], msg[1024];
    va_list ap;

    if (level < min_level || (unsigned)level >= LOG__MAX)
        return;
    va_start(ap, fmt);
    if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
        msg[0] = '\0';
    va_end(ap);
    timestamp(ts, sizeof(ts));
    emit(json_pack("{s:s,s:s,s:s}", "ts", ts, "level", level_names[level], "msg", msg));
}
