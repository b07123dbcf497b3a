/*
 * rules_int.h: what rules_compile.c and rules_apply.c share, and nothing else includes.
 *
 * The compiled form of a ruleset: rules_compile.c builds it from the config and frees it,
 * rules_apply.c only reads it. The two helpers at the end live in rules_apply.c.
 */
#ifndef LB_RULES_INT_H
#define LB_RULES_INT_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <pcre2.h>

#include "buf.h"
#include "rules.h"

enum {
    RULES_PATH_SIZE = 512,
    RULES_VALUE_MAX = 65536,          /* a working value, in bytes */
    RULES_REGEX_SUBJECT_MAX = 16384,  /* longer values are never given to a regex */
    RULES_META_MAX = 1024,            /* LeadPro's cap on the JSON size of meta */
    RULES_MAX_CAPTURES = 32,          /* fields one "match" may write */
    RULES_MAX_INDEX = 100000,
    RULES_MATCH_LIMIT = 1000000,
    RULES_DEPTH_LIMIT = 10000,
    RULES_HEAP_LIMIT_KIB = 16384,
    RULES_MESSAGE_SIZE = 128,
};

enum source_root { ROOT_FIELDS = 0, ROOT_ATTRIBUTION, ROOT_LEAD };
enum step_kind { STEP_KEY = 0, STEP_INDEX, STEP_FILTER };

struct step {
    enum step_kind kind;
    char *key;    /* STEP_KEY */
    size_t index; /* STEP_INDEX */
    char **lhs;   /* STEP_FILTER: the dotted path looked up inside each element */
    size_t n_lhs;
    char *value;  /* STEP_FILTER: what it must equal */
};

struct source {
    enum source_root root;
    struct step *steps;
    size_t n_steps;
};

enum rule_type { TYPE_STRING = 0, TYPE_INTEGER, TYPE_NUMBER, TYPE_BOOLEAN, TYPE_ARRAY, TYPE_PAIRS,
                 TYPE__MAX };

enum rule_case { CASE_NONE = 0, CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE__MAX };

enum rule_format { FORMAT_NONE = 0, FORMAT_EMAIL, FORMAT_UK_POSTCODE, FORMAT_PHONE, FORMAT_URL,
                   FORMAT__MAX };

enum cond_kind { COND_MATCH = 0, COND_EQUALS, COND_PRESENT };

struct cond {
    struct source src;
    enum cond_kind kind;
    pcre2_code *re;
    char *equals;
    bool present;
};

struct replace {
    pcre2_code *re;
    char *with;
};

struct capture {
    uint32_t group;
    char *field;
};

struct map_entry {
    char *key;
    json_t *value;
};

struct rule {
    char *field; /* the field written; NULL when captures write the fields */
    struct source *from;
    size_t n_from;
    json_t *value;
    json_t *dflt;
    bool trim;
    bool collapse;
    struct replace *replace;
    size_t n_replace;
    pcre2_code *match;
    struct capture *captures; /* non-empty: the match writes these fields */
    size_t n_captures;
    enum rule_case text_case;
    struct map_entry *map;
    size_t n_map;
    json_t *map_default;
    enum rule_type type;
    char *split;
    char *join;
    bool required;
    long long min_length; /* -1: none */
    long long max_length;
    bool has_min;
    bool has_max;
    double min;
    double max;
    enum rule_format format;
    pcre2_code *pattern;
    char *message;
    struct cond *when;
    bool parse_json; /* a step: from[0] holds JSON text; later rules read inside it */
};

struct ruleset {
    struct rule *rules;
    size_t n_rules;
    bool has_parse_json; /* rules_apply works on a copy of the fields */
    bool unused_to_meta;
    bool attribution;
    pcre2_match_context *mctx;
};

struct rules_source {
    struct source src;
};

/* Trims Unicode white space at both ends of b. */
void rules_text_trim(struct buf *b);
/* Whether key is a whole number of 1 to 6 digits (an array index); sets *index. */
bool rules_key_is_index(const char *key, size_t *index);

#endif
