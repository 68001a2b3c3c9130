/* The client's state, shared by breed_client.c (sockets) and assign.c (the assignment). */
#ifndef BREED_CLIENT_IMPL_H
#define BREED_CLIENT_IMPL_H

#include <zmq.h>

#include "breed_client.h"
#include "json.h"
#include "wire.h"

#define BC_MAX_DATA 8
#define BC_MAX_DIMS 8
#define BC_SNDHWM 64 /* steps a rank may queue before send blocks (backpressure) */
#define BC_MAX_BATCH 65535 /* a STEPS message's count is 16 bits */

typedef struct {
    char *name;
    int ndim, dtype;
    long shape[BC_MAX_DIMS];
    size_t cols; /* product of shape[1:] */
} bc_field;

typedef struct {
    uint64_t sim_id;
    int attempt, steps, nparams, nfields;
    double *params;
    char **names;
    bc_field *fields;
    char data[512];
    int batch;     /* ASSIGN "batch": steps per STEPS message (0: none offered, send STEP) */
    double linger; /* and the seconds a held step may wait */
    jv body;   /* the ASSIGN body, parsed (settings) */
    char *raw; /* the ASSIGN body, for breed_adopt on other ranks */
} bc_job;

/* One field's held steps (batching, PROTOCOL 6.1): `count` consecutive steps from `first`
 * of one slab, in wire form (the field's dtype, little-endian), step-major. */
typedef struct {
    unsigned char *buf;
    size_t cap; /* bytes allocated, at most batch x one slab */
    int count, first, dtype;
    uint32_t row_offset, rows;
    size_t cols;
    double since; /* monotonic time the first held step came */
} bc_hold;

struct breed_client {
    int rank, nranks, once, little, open, finished, steps_sent, last_step;
    int timeout_ms, send_timeout_ms;
    unsigned char token[W_TOKEN];
    char server[512], job_id[256], job_key[256], curve[41];
    void *ctx, *req;
    struct { char address[512]; void *sock; } data[BC_MAX_DATA];
    int ndata;
    bc_job job;
    bc_hold *hold; /* per field of the open assignment (nhold allocated), kept for reuse */
    int nhold;
    void *scratch;
    size_t scratch_len;
    char err[1024];
    char *last_raw; /* body text of the last control reply */
};

int bc_fail(breed_client *c, int status, const char *fmt, ...);
int bc_call(breed_client *c, int kind, const char *json, jv *reply);
int bc_assign(breed_client *c, const jv *body, const char *raw); /* validate, open it */
void bc_clear(breed_client *c);                 /* close the open assignment, drop held steps */

#endif
