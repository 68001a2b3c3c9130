/* Minimal JSON reader (see json.h): recursive descent, RFC 8259 values. */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 32

typedef struct {
    const char *s, *end;
    char *err;
    size_t errlen;
} P;

static int fail(P *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, p->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static void ws(P *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

static int value(P *p, jv *out, int depth);

static int hex4(P *p, unsigned *out) {
    unsigned v = 0;
    if (p->end - p->s < 4) return fail(p, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *p->s++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return fail(p, "bad \\u escape");
    }
    *out = v;
    return 0;
}

static size_t utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int string(P *p, char **out) {
    const char *q = ++p->s; /* after the opening quote */
    while (q < p->end && *q != '"') q += (*q == '\\') ? 2 : 1;
    if (q >= p->end) return fail(p, "unterminated string");
    char *buf = malloc((size_t)(q - p->s) + 1), *o = buf; /* escapes never grow */
    if (!buf) return fail(p, "out of memory");
    while (*p->s != '"') {
        unsigned char c = (unsigned char)*p->s++;
        if (c < 0x20) { free(buf); return fail(p, "control character in string"); }
        if (c != '\\') { *o++ = (char)c; continue; }
        char e = *p->s++;
        unsigned cp;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (hex4(p, &cp)) { free(buf); return -1; }
            if (cp >= 0xD800 && cp < 0xDC00 && p->end - p->s >= 6 && p->s[0] == '\\' &&
                p->s[1] == 'u') {
                unsigned lo;
                p->s += 2;
                if (hex4(p, &lo)) { free(buf); return -1; }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            o += utf8(o, cp);
            break;
        default: free(buf); return fail(p, "bad escape \\%c", e);
        }
    }
    p->s++;
    *o = 0;
    *out = buf;
    return 0;
}

static int number(P *p, jv *out) {
    const char *q = p->s;
    if (q < p->end && *q == '-') q++;
    if (q >= p->end || *q < '0' || *q > '9') return fail(p, "bad number");
    while (q < p->end && strchr("0123456789+-.eE", *q)) q++;
    char tmp[64];
    size_t n = (size_t)(q - p->s);
    if (n >= sizeof tmp) return fail(p, "number too long");
    memcpy(tmp, p->s, n);
    tmp[n] = 0;
    char *stop;
    out->num = strtod(tmp, &stop);
    if (*stop) return fail(p, "bad number %s", tmp);
    out->type = J_NUM;
    p->s = q;
    return 0;
}

static int items(P *p, jv *out, int depth, int obj) {
    char close = obj ? '}' : ']';
    int cap = 0;
    p->s++;
    out->type = obj ? J_OBJ : J_ARR;
    ws(p);
    if (p->s < p->end && *p->s == close) { p->s++; return 0; }
    for (;;) {
        if (out->n == cap) {
            cap = cap ? 2 * cap : 8;
            jv *it = realloc(out->items, (size_t)cap * sizeof *it);
            if (!it) return fail(p, "out of memory");
            out->items = it;
            if (obj) {
                char **k = realloc(out->keys, (size_t)cap * sizeof *k);
                if (!k) return fail(p, "out of memory");
                out->keys = k;
            }
        }
        memset(&out->items[out->n], 0, sizeof(jv));
        if (obj) {
            ws(p);
            if (p->s >= p->end || *p->s != '"') return fail(p, "expected a key");
            if (string(p, &out->keys[out->n])) return -1;
            ws(p);
            if (p->s >= p->end || *p->s != ':') { free(out->keys[out->n]); return fail(p, "expected ':'"); }
            p->s++;
        }
        int rc = value(p, &out->items[out->n], depth + 1);
        out->n++; /* counted even on failure, so json_free frees what was made */
        if (rc) return -1;
        ws(p);
        if (p->s < p->end && *p->s == ',') { p->s++; continue; }
        if (p->s < p->end && *p->s == close) { p->s++; return 0; }
        return fail(p, "expected ',' or '%c'", close);
    }
}

static int literal(P *p, const char *word, int type, jv *out) {
    size_t n = strlen(word);
    if ((size_t)(p->end - p->s) < n || memcmp(p->s, word, n)) return fail(p, "unexpected token");
    p->s += n;
    out->type = type;
    return 0;
}

static int value(P *p, jv *out, int depth) {
    if (depth > MAX_DEPTH) return fail(p, "nested too deep");
    ws(p);
    if (p->s >= p->end) return fail(p, "unexpected end");
    switch (*p->s) {
    case '{': return items(p, out, depth, 1);
    case '[': return items(p, out, depth, 0);
    case '"': out->type = J_STR; return string(p, &out->str);
    case 't': return literal(p, "true", J_TRUE, out);
    case 'f': return literal(p, "false", J_FALSE, out);
    case 'n': return literal(p, "null", J_NULL, out);
    default: return number(p, out);
    }
}

int json_parse(const char *text, size_t len, jv *out, char *err, size_t errlen) {
    P p = {text, text + len, err, errlen};
    memset(out, 0, sizeof *out);
    if (value(&p, out, 0) == 0) {
        ws(&p);
        if (p.s == p.end) return 0;
        fail(&p, "trailing characters");
    }
    json_free(out);
    return -1;
}

void json_free(jv *v) {
    if (!v) return;
    free(v->str);
    for (int i = 0; i < v->n; i++) {
        json_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

const jv *json_get(const jv *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

long json_quote(char *buf, size_t cap, long pos, const char *s) {
    if (pos < 0) return -1;
    size_t at = (size_t)pos;
#define PUT(ch) do { if (at + 1 >= cap) return -1; buf[at++] = (ch); } while (0)
    PUT('"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') { PUT('\\'); PUT((char)*c); }
        else if (*c < 0x20) {
            if (at + 7 >= cap) return -1;
            at += (size_t)snprintf(buf + at, cap - at, "\\u%04x", *c);
        } else PUT((char)*c);
    }
    PUT('"');
#undef PUT
    buf[at] = 0;
    return (long)at;
}
