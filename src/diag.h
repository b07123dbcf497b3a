/*
 * diag.h: configuration diagnostics that a person can act on.
 *
 * A struct diag collects messages about one JSON file. Each message names the file, the line and
 * column of the offending value and its JSON path (forms.valuation.rules[3].match), found by
 * re-scanning the file's text: jansson keeps no positions after parsing.
 */
#ifndef LB_DIAG_H
#define LB_DIAG_H

#include <stddef.h>
#include <stdio.h>

struct diag {
    const char *file; /* borrowed */
    const char *text; /* borrowed: the file's bytes, for locating paths; may be NULL */
    size_t text_len;
    char **messages;  /* owned */
    size_t count;
};

void diag_init(struct diag *d, const char *file, const char *text, size_t text_len);
/*
 * Adds "file:line:col: path: message". path is dotted with [index] for arrays; keys that are not
 * plain identifiers are written ["like this"]. When the path cannot be found the line and column
 * are those of the nearest existing ancestor.
 */
void diag_add(struct diag *d, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Adds a message at a known position (JSON syntax errors from jansson). */
void diag_add_at(struct diag *d, int line, int column, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void diag_free(struct diag *d);
/* Prints each message on its own line. */
void diag_print(const struct diag *d, FILE *out);

/*
 * Path builders for callers: write parent + ".key" (or ["key"] with JSON escapes when key is not
 * [A-Za-z0-9_-]+; no dot when parent is empty or NULL), or parent + "[index]", into dst. Return 0,
 * or -1 when it does not fit (dst is then cut but NUL-terminated when size > 0). parent may be
 * dst.
 */
int diag_path_key(char *dst, size_t size, const char *parent, const char *key);
int diag_path_index(char *dst, size_t size, const char *parent, size_t index);

/*
 * Finds the value at path in JSON text; sets *line and *column (1-based) and returns 0, or returns
 * -1 when the text does not contain the path (then *line and *column are those of the deepest
 * ancestor found, or 1:1). Never allocates; never reads past text[len - 1].
 */
int jsonpos_locate(const char *text, size_t len, const char *path, int *line, int *column);

#endif
