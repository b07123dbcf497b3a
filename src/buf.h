/*
 * buf.h: the one growable byte buffer, always capped.
 *
 * Every buffer that grows with input is given its maximum size when it is made (after curl's
 * dynbuf). Appending past the cap fails with LB_ERR_TOO_LARGE and leaves the buffer as it was.
 * data is always NUL-terminated once anything was appended (and NULL before).
 */
#ifndef LB_BUF_H
#define LB_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "err.h"

struct buf {
    char *data;
    size_t len;
    size_t cap; /* allocated, including the NUL */
    size_t max; /* the most len may ever be */
};

void buf_init(struct buf *b, size_t max);
enum lb_err buf_append(struct buf *b, const void *p, size_t n);
enum lb_err buf_puts(struct buf *b, const char *s);
enum lb_err buf_putc(struct buf *b, char c);
enum lb_err buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Empties the buffer, keeping its memory and cap. */
void buf_reset(struct buf *b);
/* Returns the data (caller frees; "" if empty, NULL only on allocation failure) and empties b. */
char *buf_steal(struct buf *b);
void buf_free(struct buf *b);

#endif
