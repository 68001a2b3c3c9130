/* Minimal JSON reader for the control bodies of the protocol (ASSIGN, WAIT, REJECT, PONG):
 * small objects from a trusted-by-token peer, still parsed defensively (depth and size
 * limits, every error reported, never a crash). Internal to libbreed_client. */
#ifndef BREED_JSON_H
#define BREED_JSON_H

#include <stddef.h>

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
    int type;
    double num;
    char *str;          /* J_STR: UTF-8, NUL-terminated */
    int n;              /* J_ARR, J_OBJ: number of items */
    struct jv *items;   /* J_ARR, J_OBJ */
    char **keys;        /* J_OBJ */
} jv;

/* Parse text[0..len): 0 on success (*out filled), else -1 with a message in err. */
int json_parse(const char *text, size_t len, jv *out, char *err, size_t errlen);
void json_free(jv *v);
const jv *json_get(const jv *obj, const char *key); /* NULL if absent or not an object */
/* Append s as a JSON string literal to buf (capacity cap, at pos); returns new pos or -1. */
long json_quote(char *buf, size_t cap, long pos, const char *s);

#endif
