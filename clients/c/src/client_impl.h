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
    jv body;   /* the ASSIGN body, parsed (settings) */
    char *raw; /* the ASSIGN body, for breed_adopt on other ranks */
} bc_job;

struct breed_client {
    int rank, nranks, once, little, open, finished, steps_sent, last_step;
    int timeout_ms, send_timeout_ms;
    unsigned char token[W_TOKEN];
    char server[512], job_id[256], job_key[256], curve[41];
    void *ctx, *req;
    struct { char address[512]; void *sock; } data[BC_MAX_DATA];
    int ndata;
    bc_job job;
    void *scratch;
    size_t scratch_len;
    char err[1024];
    char *last_raw; /* body text of the last control reply */
};

int bc_fail(breed_client *c, int status, const char *fmt, ...);
int bc_call(breed_client *c, int kind, const char *json, jv *reply);
int bc_assign(breed_client *c, const jv *body, const char *raw); /* validate, open it */
void bc_clear(breed_client *c);                 /* close the open assignment */

#endif
