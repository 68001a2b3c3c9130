/* breed_client.h: stream a solver's time steps into a breed run (C API of libbreed_client).
 *
 * The wire protocol is docs/PROTOCOL.md; this library is one implementation of its client
 * side, over libzmq, with no MPI and no Python at run time. Typical use (one process):
 *
 *     breed_client *c;
 *     if (breed_init(&c, 0, 1) != BREED_OK) { fprintf(stderr, "%s\n", breed_error(c)); ... }
 *     while ((rc = breed_request(c)) == BREED_OK) {     // BREED_STOP: no more work
 *         for (t = 0; t <= breed_steps(c); ++t)        // t = 0 is the initial state
 *             breed_send(c, t, 0, field, BREED_FLOAT64, 0, rows);
 *         breed_finish(c);                            // waits for the server's answer
 *     }
 *     breed_close(c, rc < 0);
 *
 * Under MPI include breed_client_mpi.h instead (rank 0 talks to the control socket and
 * broadcasts each assignment; every rank sends its own slab). Every function returns a
 * breed_status; on an error breed_error() gives a one-line message.
 */
#ifndef BREED_CLIENT_H
#define BREED_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BREED_PROTOCOL_VERSION 2

typedef enum breed_status {
    BREED_OK = 0,
    BREED_STOP = 1,            /* breed_request: the server has no more work */
    BREED_ERR_CONFIG = -1,     /* bad environment or argument (exit status 2) */
    BREED_ERR_TIMEOUT = -2,    /* no reply / data not taken within the timeout */
    BREED_ERR_AUTH = -3,       /* a reply failed the run-token check (wrong BREED_TOKEN?) */
    BREED_ERR_REJECTED = -4,   /* the server refused a message (REJECT, with its reason) */
    BREED_ERR_PROTOCOL = -5,   /* an undecodable or malformed message from the server */
    BREED_ERR_STATE = -6,      /* call out of order (send without an assignment, ...) */
    BREED_ERR_SYSTEM = -7      /* ZeroMQ or memory failure */
} breed_status;

typedef enum breed_dtype { BREED_FLOAT32 = 1, BREED_FLOAT64 = 2 } breed_dtype;

typedef struct breed_client breed_client;

/* Connect as the launcher's environment says: BREED_SERVER, BREED_TOKEN (64 hex digits) or
 * BREED_TOKEN_FILE, BREED_JOB_ID, BREED_JOB_KEY, BREED_ONCE, BREED_CURVE_SERVERKEY,
 * BREED_CLIENT_TIMEOUT (seconds, default 30). Rank 0 of nranks opens the control socket.
 * *out is set even on failure (so breed_error works); breed_close it in every case. */
int breed_init(breed_client **out, int rank, int nranks);

/* Ask for the next simulation: BREED_OK (an assignment is open), BREED_STOP, or an error.
 * Rank 0 only (under MPI, breed_mpi_request broadcasts it). Waits out WAIT answers. */
int breed_request(breed_client *c);

/* Send this rank's rows [row_offset, row_offset + rows) of field `field` at time step
 * `step` (0..breed_steps). `data` holds rows x (product of the field's other axes) values
 * of type `dtype`, C order; they travel in the field's declared dtype. Checks first for a
 * REJECT of the simulation. Blocks while the server is full (backpressure). When the ASSIGN
 * offers "batch" {steps k, linger s} (PROTOCOL 6.1), the values are copied and held: a
 * field's consecutive steps of one slab go as one STEPS message once k are held, before a
 * step that does not follow, at breed_finish, or when the oldest held step of any field is
 * s seconds old (checked at each call; there is no timer). `data` may be reused at once. */
int breed_send(breed_client *c, int step, int field, const void *data, int dtype,
               uint32_t row_offset, uint32_t rows);

/* This rank sent all its steps: send what is held (batching), then FINISH, and wait for
 * the server's acknowledgement. breed_abort, breed_close and a new assignment drop held
 * steps unsent. */
int breed_finish(breed_client *c);

/* Give the current simulation back (the server runs it again); rank 0 tells the server. */
int breed_abort(breed_client *c, const char *reason);

/* Close the sockets; queued steps are still delivered (up to the send timeout) unless
 * `discard`. Frees c. */
void breed_close(breed_client *c, int discard);

/* The last error, one line (never NULL). */
const char *breed_error(const breed_client *c);
const char *breed_status_name(int status);

/* The open assignment (valid between a BREED_OK request and finish/abort). */
uint64_t breed_sim_id(const breed_client *c);
int breed_attempt(const breed_client *c);
int breed_steps(const breed_client *c);          /* send t = 0..steps */
int breed_nparams(const breed_client *c);
double breed_param(const breed_client *c, int i);
const char *breed_param_name(const breed_client *c, int i);
int breed_nfields(const breed_client *c);
const char *breed_field_name(const breed_client *c, int k);
int breed_field_ndim(const breed_client *c, int k);
long breed_field_dim(const breed_client *c, int k, int axis);
int breed_field_dtype(const breed_client *c, int k);
/* A number of the problem's settings (ASSIGN "settings"), e.g. "grid": BREED_OK or
 * BREED_ERR_CONFIG if absent or not a number. */
int breed_setting(const breed_client *c, const char *key, double *out);

/* MPI glue (breed_client_mpi.h): the raw ASSIGN body of the open assignment, and how the
 * other ranks adopt the one rank 0 received. */
const char *breed_assignment_json(const breed_client *c);
int breed_adopt(breed_client *c, const char *assign_json);
/* Record an error that happened elsewhere (e.g. on rank 0) as this client's last error. */
void breed_set_error(breed_client *c, const char *message);
int breed_rank(const breed_client *c);
int breed_nranks(const breed_client *c);

#ifdef __cplusplus
}
#endif
#endif
