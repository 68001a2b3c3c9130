/* The open assignment: an ASSIGN body validated as the Python client does (a malformed one
 * is the server's fault: BREED_ERR_PROTOCOL), its accessors, and its adoption by other ranks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"

static char *dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int is_int(const jv *v) {
    return v && v->type == J_NUM && v->num == floor(v->num) && fabs(v->num) < 9e15;
}

static int bad(breed_client *c, const char *what) {
    bc_clear(c);
    return bc_fail(c, BREED_ERR_PROTOCOL, "malformed ASSIGN from the server: %s", what);
}

int bc_assign(breed_client *c, const jv *b, const char *raw) {
    bc_clear(c);
    bc_job *j = &c->job;
    const jv *v = json_get(b, "sim_id");
    if (!is_int(v) || v->num < 0) return bad(c, "sim_id");
    j->sim_id = (uint64_t)v->num;
    v = json_get(b, "attempt");
    j->attempt = is_int(v) ? (int)v->num : 0;
    v = json_get(b, "steps");
    if (!is_int(v) || v->num < 0 || v->num > 4e9) return bad(c, "steps");
    j->steps = (int)v->num;
    v = json_get(b, "data");
    if (!v || v->type != J_STR || !v->str[0] || strlen(v->str) >= sizeof j->data)
        return bad(c, "data address");
    strcpy(j->data, v->str);
    v = json_get(b, "batch"); /* optional (PROTOCOL 6.1); null is taken as absent */
    if (v && v->type != J_NULL) {
        const jv *k = json_get(v, "steps"), *s = json_get(v, "linger");
        if (!is_int(k) || k->num < 1 || !s || s->type != J_NUM || !isfinite(s->num) ||
            s->num < 0)
            return bad(c, "batch");
        /* a STEPS count is 16 bits; sending fewer than k steps a message is allowed */
        j->batch = k->num > BC_MAX_BATCH ? BC_MAX_BATCH : (int)k->num;
        j->linger = s->num;
    }
    const jv *params = json_get(b, "params"), *names = json_get(b, "parameters");
    if (!params || params->type != J_ARR || !params->n || !names || names->type != J_ARR ||
        names->n != params->n)
        return bad(c, "params");
    j->params = calloc((size_t)params->n, sizeof *j->params);
    j->names = calloc((size_t)params->n, sizeof *j->names);
    if (!j->params || !j->names) return bad(c, "out of memory");
    j->nparams = params->n;
    for (int i = 0; i < params->n; i++) {
        const jv *p = &params->items[i], *nm = json_get(&names->items[i], "name");
        if (p->type != J_NUM || !isfinite(p->num) || !nm || nm->type != J_STR)
            return bad(c, "params");
        j->params[i] = p->num;
        if (!(j->names[i] = dup(nm->str))) return bad(c, "out of memory");
    }
    const jv *fields = json_get(b, "fields");
    if (!fields || fields->type != J_ARR || !fields->n) return bad(c, "fields");
    j->fields = calloc((size_t)fields->n, sizeof *j->fields);
    if (!j->fields) return bad(c, "out of memory");
    j->nfields = fields->n;
    for (int k = 0; k < fields->n; k++) {
        const jv *f = &fields->items[k], *nm = json_get(f, "name"), *sh = json_get(f, "shape"),
                 *dt = json_get(f, "dtype");
        bc_field *o = &j->fields[k];
        if (!nm || nm->type != J_STR || !sh || sh->type != J_ARR || !sh->n ||
            sh->n > BC_MAX_DIMS || !dt || dt->type != J_STR)
            return bad(c, "fields");
        if (strcmp(dt->str, "float32") == 0) o->dtype = BREED_FLOAT32;
        else if (strcmp(dt->str, "float64") == 0) o->dtype = BREED_FLOAT64;
        else return bad(c, "fields (dtype)");
        o->ndim = sh->n;
        o->cols = 1;
        for (int a = 0; a < sh->n; a++) {
            if (!is_int(&sh->items[a]) || sh->items[a].num < 1 || sh->items[a].num > 1 << 28)
                return bad(c, "fields (shape)");
            o->shape[a] = (long)sh->items[a].num;
            if (a) o->cols *= (size_t)o->shape[a];
        }
        if (!(o->name = dup(nm->str))) return bad(c, "out of memory");
    }
    /* keep the raw body (what breed_adopt receives on other ranks) and a parsed copy of it
     * (for breed_setting) */
    char err[200];
    if (!(j->raw = dup(raw)) || json_parse(raw, strlen(raw), &j->body, err, sizeof err) != 0)
        return bad(c, "out of memory");
    c->open = 1;
    c->steps_sent = 0;
    c->last_step = -1;
    return BREED_OK;
}

void bc_clear(breed_client *c) {
    bc_job *j = &c->job;
    for (int i = 0; i < j->nparams; i++) free(j->names ? j->names[i] : NULL);
    for (int k = 0; k < j->nfields; k++) free(j->fields ? j->fields[k].name : NULL);
    free(j->params);
    free(j->names);
    free(j->fields);
    json_free(&j->body);
    free(j->raw);
    memset(j, 0, sizeof *j);
    for (int k = 0; k < c->nhold; k++) c->hold[k].count = 0; /* held steps are dropped */
    c->open = 0;
}

int breed_adopt(breed_client *c, const char *text) {
    jv body;
    char err[200];
    if (json_parse(text, strlen(text), &body, err, sizeof err) != 0)
        return bc_fail(c, BREED_ERR_PROTOCOL, "malformed ASSIGN from the server: %s", err);
    int rc = bc_assign(c, &body, text);
    json_free(&body);
    return rc;
}

uint64_t breed_sim_id(const breed_client *c) { return c->job.sim_id; }
int breed_attempt(const breed_client *c) { return c->job.attempt; }
int breed_steps(const breed_client *c) { return c->job.steps; }
int breed_nparams(const breed_client *c) { return c->job.nparams; }
double breed_param(const breed_client *c, int i) {
    return i >= 0 && i < c->job.nparams ? c->job.params[i] : NAN;
}
const char *breed_param_name(const breed_client *c, int i) {
    return i >= 0 && i < c->job.nparams ? c->job.names[i] : NULL;
}
int breed_nfields(const breed_client *c) { return c->job.nfields; }
static const bc_field *field(const breed_client *c, int k) {
    return k >= 0 && k < c->job.nfields ? &c->job.fields[k] : NULL;
}
const char *breed_field_name(const breed_client *c, int k) {
    return field(c, k) ? field(c, k)->name : NULL;
}
int breed_field_ndim(const breed_client *c, int k) { return field(c, k) ? field(c, k)->ndim : 0; }
long breed_field_dim(const breed_client *c, int k, int axis) {
    const bc_field *f = field(c, k);
    return f && axis >= 0 && axis < f->ndim ? f->shape[axis] : 0;
}
int breed_field_dtype(const breed_client *c, int k) { return field(c, k) ? field(c, k)->dtype : 0; }
const char *breed_assignment_json(const breed_client *c) { return c->job.raw; }
int breed_rank(const breed_client *c) { return c->rank; }
int breed_nranks(const breed_client *c) { return c->nranks; }

int breed_setting(const breed_client *c, const char *key, double *out) {
    const jv *v = json_get(json_get(&c->job.body, "settings"), key);
    if (!v || v->type != J_NUM) return BREED_ERR_CONFIG;
    *out = v->num;
    return BREED_OK;
}
