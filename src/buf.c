/* buf.c: the capped growable buffer (see buf.h). */
#include "buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

/* Makes room for n more bytes plus the NUL, growing by doubling up to max + 1. */
static enum lb_err buf_reserve(struct buf *b, size_t n)
{
    size_t need, cap;
    char *p;

    if (n > b->max || b->len > b->max - n)
        return LB_ERR_TOO_LARGE;
    need = b->len + n + 1;
    if (need <= b->cap)
        return LB_OK;
    cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > (SIZE_MAX / 2) ? need : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    p = realloc(b->data, cap);
    if (p == NULL)
        return LB_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return LB_OK;
}

enum lb_err buf_append(struct buf *b, const void *p, size_t n)
{
    enum lb_err e = buf_reserve(b, n);

    if (e != LB_OK)
        return e;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return LB_OK;
}

enum lb_err buf_puts(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

enum lb_err buf_putc(struct buf *b, char c)
{
    return buf_append(b, &c, 1);
}

enum lb_err buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    enum lb_err e;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return LB_ERR_INTERNAL;
    e = buf_reserve(b, (size_t)n);
    if (e != LB_OK)
        return e;
    va_start(ap, fmt);
    n = vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return LB_ERR_INTERNAL;
    b->len += (size_t)n;
    return LB_OK;
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

char *buf_steal(struct buf *b)
{
    char *p = b->data;

    if (p == NULL)
        p = strdup("");
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}
