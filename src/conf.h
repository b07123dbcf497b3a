/*
 * conf.h: the helpers every module uses to read its own part of the JSON configuration.
 *
 * config.c reads the document; the rules, the targets and the outbox read their objects with
 * these. Each getter reports a mistake through struct diag under the key's JSON path and returns
 * the default, so one pass reports every mistake. This module depends on nothing above it.
 */
#ifndef LB_CONF_H
#define LB_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "diag.h"

/*
 * Expands ${VAR} and ${VAR:-default} in s. Returns a new string (caller frees) or NULL, with
 * *missing set to the unset variable's name (a static copy, at most 127 bytes) or "" on bad syntax.
 */
char *conf_expand_env(const char *s, char *missing, size_t missing_size);

/* What v is, for a message: "an object", "a string", "null", ... */
const char *conf_json_kind(const json_t *v);

/* Writes parent + "." + key (or parent + "[index]") into out. */
void conf_path(char *out, size_t size, const char *parent, const char *key);
void conf_path_index(char *out, size_t size, const char *parent, size_t index);
/* Reports every key of obj not in allowed (NULL-terminated). */
void conf_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                     struct diag *d);
/* Borrowed string or dflt; reports a wrong type, and a missing key when required. */
const char *conf_string(const json_t *obj, const char *key, const char *path, const char *dflt,
                        bool required, struct diag *d);
long long conf_integer(const json_t *obj, const char *key, const char *path, long long dflt,
                       long long min, long long max, struct diag *d);
double conf_number(const json_t *obj, const char *key, const char *path, double dflt, double min,
                   double max, struct diag *d);
bool conf_bool(const json_t *obj, const char *key, const char *path, bool dflt, struct diag *d);

#endif
