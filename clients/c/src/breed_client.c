/* libbreed_client: the client side of docs/PROTOCOL.md over libzmq (see breed_client.h).
 * Control path (rank 0): REQ socket to the server's control ROUTER. Data path (every rank):
 * one DEALER per data address, high-water mark 64 steps (backpressure), answers (REJECT,
 * FINISH's PONG) read on the same connection. When the ASSIGN offers "batch", each field's
 * consecutive steps are held and sent k at a time as STEPS messages (PROTOCOL 6.1). The
 * assignment itself lives in assign.c. */
#include "client_impl.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void breed_set_error(breed_client *c, const char *message) {
    if (c) bc_fail(c, 0, "%s", message);
}

int bc_fail(breed_client *c, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    for (char *p = c->err; *p; p++) /* one line, always */
        if (*p == '\n' || *p == '\r') *p = ' ';
    return status;
}

const char *breed_error(const breed_client *c) {
    return c ? c->err : "breed_init: out of memory";
}

const char *breed_status_name(int s) {
    switch (s) {
    case BREED_OK: return "ok";
    case BREED_STOP: return "stop";
    case BREED_ERR_CONFIG: return "configuration error";
    case BREED_ERR_TIMEOUT: return "timeout";
    case BREED_ERR_AUTH: return "wrong run token";
    case BREED_ERR_REJECTED: return "rejected";
    case BREED_ERR_PROTOCOL: return "protocol error";
    case BREED_ERR_STATE: return "call out of order";
    default: return "system error";
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int set_curve(breed_client *c, void *sock) {
    char pub[41], sec[41];
    if (!c->curve[0]) return 0;
    if (zmq_curve_keypair(pub, sec) != 0) return -1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, c->curve, 40) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 40) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 40))
        return -1;
    return 0;
}

static int connect_req(breed_client *c) {
    int zero = 0, ms = c->timeout_ms;
    c->req = zmq_socket(c->ctx, ZMQ_REQ);
    if (!c->req) return bc_fail(c, BREED_ERR_SYSTEM, "zmq_socket: %s", zmq_strerror(errno));
    zmq_setsockopt(c->req, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c->req, ZMQ_RCVTIMEO, &ms, sizeof ms);
    zmq_setsockopt(c->req, ZMQ_SNDTIMEO, &ms, sizeof ms);
    if (set_curve(c, c->req) != 0 || zmq_connect(c->req, c->server) != 0) {
        int e = errno;
        zmq_close(c->req);
        c->req = NULL;
        return bc_fail(c, BREED_ERR_CONFIG, "invalid server address '%s' or "
                       "BREED_CURVE_SERVERKEY: %s", c->server, zmq_strerror(e));
    }
    return BREED_OK;
}

static int env_config(breed_client *c) {
    const char *v = getenv("BREED_SERVER");
    if (!v || !*v) return bc_fail(c, BREED_ERR_CONFIG, "no server address: set BREED_SERVER");
    snprintf(c->server, sizeof c->server, "%s", v);
    v = getenv("BREED_TOKEN");
    char buf[256];
    if (v && *v) {
        if (wire_token_from_hex(v, c->token) != 0)
            return bc_fail(c, BREED_ERR_CONFIG, "BREED_TOKEN: the run token must be 64 hex "
                           "digits (32 bytes)");
    } else if ((v = getenv("BREED_TOKEN_FILE")) && *v) {
        FILE *fh = fopen(v, "r");
        if (!fh) return bc_fail(c, BREED_ERR_CONFIG, "cannot read BREED_TOKEN_FILE %s: %s", v,
                                strerror(errno));
        size_t n = fread(buf, 1, sizeof buf - 1, fh);
        fclose(fh);
        buf[n] = 0;
        if (wire_token_from_hex(buf, c->token) != 0)
            return bc_fail(c, BREED_ERR_CONFIG, "BREED_TOKEN_FILE %s: the run token must be "
                           "64 hex digits (32 bytes)", v);
    } else {
        return bc_fail(c, BREED_ERR_CONFIG, "no run token: set BREED_TOKEN or BREED_TOKEN_FILE");
    }
    if ((v = getenv("BREED_JOB_ID")) && *v) snprintf(c->job_id, sizeof c->job_id, "%s", v);
    if ((v = getenv("BREED_JOB_KEY")) && *v) snprintf(c->job_key, sizeof c->job_key, "%s", v);
    v = getenv("BREED_ONCE");
    c->once = v && strcmp(v, "1") == 0;
    double seconds = 30.0;
    if ((v = getenv("BREED_CLIENT_TIMEOUT")) && *v) {
        char *end;
        seconds = strtod(v, &end);
        if (*end || !isfinite(seconds) || seconds <= 0 || seconds > 2e6)
            return bc_fail(c, BREED_ERR_CONFIG, "BREED_CLIENT_TIMEOUT must be a number of "
                           "seconds > 0, got '%s'", v);
    }
    c->timeout_ms = (int)(seconds * 1000);
    c->send_timeout_ms = (int)(fmax(10 * seconds, 60.0) * 1000);
    c->curve[0] = 0;
    if ((v = getenv("BREED_CURVE_SERVERKEY")) && *v) {
        if (strlen(v) != 40)
            return bc_fail(c, BREED_ERR_CONFIG, "BREED_CURVE_SERVERKEY must be a 40-character "
                           "Z85 CURVE public key");
        if (!zmq_has("curve"))
            return bc_fail(c, BREED_ERR_CONFIG, "BREED_CURVE_SERVERKEY set but this libzmq "
                           "has no CURVE support");
        memcpy(c->curve, v, 41);
    }
    return BREED_OK;
}

int breed_init(breed_client **out, int rank, int nranks) {
    breed_client *c = calloc(1, sizeof *c);
    *out = c;
    if (!c) return BREED_ERR_SYSTEM;
    c->rank = rank;
    c->nranks = nranks;
    c->little = wire_little_endian();
    if (nranks < 1 || nranks > 65535 || rank < 0 || rank >= nranks)
        return bc_fail(c, BREED_ERR_CONFIG, "rank %d out of range for %d ranks", rank, nranks);
    int rc = env_config(c);
    if (rc != BREED_OK) return rc;
    c->ctx = zmq_ctx_new();
    if (!c->ctx) return bc_fail(c, BREED_ERR_SYSTEM, "zmq_ctx_new: %s", zmq_strerror(errno));
    return rank == 0 ? connect_req(c) : BREED_OK;
}

/* Receive one multipart message (at most 3 frames kept) into msgs; returns frames or -1. */
static int recv_frames(void *sock, zmq_msg_t msgs[3]) {
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            for (int i = 0; i < n && i < 3; i++) zmq_msg_close(&msgs[i]);
            return -1;
        }
        more = zmq_msg_more(&m);
        if (n < 3) msgs[n] = m;
        else zmq_msg_close(&m);
        n++;
    }
    return n;
}

/* Decode a control reply: kind (>0) with its JSON body in *body, or a status < 0. */
static int decode_control(breed_client *c, void *sock, const char *who, jv *body) {
    zmq_msg_t f[3];
    int n = recv_frames(sock, f);
    if (n < 0) return BREED_ERR_TIMEOUT;
    char why[200] = "";
    int kind = -1;
    if (n != 2) snprintf(why, sizeof why, "expected 2 frames, got %d", n);
    else kind = wire_check_header(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]), c->token, why,
                                  sizeof why);
    if (kind > 0 && (kind == K_STEP || kind == K_STEPS || kind == K_FINISH)) {
        snprintf(why, sizeof why, "unexpected %s", wire_kind_name(kind));
        kind = -1;
    }
    if (kind > 0) {
        size_t len = zmq_msg_size(&f[1]);
        if (len > W_MAX_CONTROL) { snprintf(why, sizeof why, "control body too large"); kind = -1; }
        else if (json_parse(zmq_msg_data(&f[1]), len, body, why, sizeof why) != 0) kind = -1;
        else if (body->type != J_OBJ) {
            json_free(body);
            snprintf(why, sizeof why, "control body must be a JSON object");
            kind = -1;
        } else {
            char *raw = realloc(c->last_raw, len + 1); /* realloc(NULL) on the first */
            if (!raw) {
                json_free(body);
                snprintf(why, sizeof why, "out of memory");
                kind = -1;
            } else {
                memcpy(raw, zmq_msg_data(&f[1]), len);
                raw[len] = 0;
                c->last_raw = raw;
            }
        }
    }
    for (int i = 0; i < n && i < 3; i++) zmq_msg_close(&f[i]);
    if (kind == -2)
        return bc_fail(c, BREED_ERR_AUTH, "server %s reply failed the run-token check (wrong "
                       "BREED_TOKEN for this run?)", who);
    if (kind < 0) return bc_fail(c, BREED_ERR_PROTOCOL, "undecodable reply from server %s: %s",
                                 who, why);
    return kind;
}

static int send_frames(void *sock, const void *const *data, const size_t *len, int n) {
    for (int i = 0; i < n; i++)
        if (zmq_send(sock, data[i], len[i], i < n - 1 ? ZMQ_SNDMORE : 0) < 0) return -1;
    return 0;
}

/* One request/reply on the REQ socket: the reply's kind, REJECT made an error. */
int bc_call(breed_client *c, int kind, const char *json, jv *reply) {
    unsigned char head[W_HEADER];
    wire_header(head, kind, c->token);
    const void *data[2] = {head, json};
    size_t len[2] = {W_HEADER, strlen(json)};
    int rc = send_frames(c->req, data, len, 2);
    if (rc == 0) rc = decode_control(c, c->req, c->server, reply);
    else rc = BREED_ERR_TIMEOUT;
    if (rc == BREED_ERR_TIMEOUT) { /* a REQ that missed its reply cannot be reused */
        zmq_close(c->req);
        c->req = NULL;
        connect_req(c);
        return bc_fail(c, BREED_ERR_TIMEOUT, "no reply from server %s within %g s (wrong "
                       "address or server down?)", c->server, c->timeout_ms / 1000.0);
    }
    if (rc == K_REJECT) {
        const jv *r = json_get(reply, "reason");
        bc_fail(c, BREED_ERR_REJECTED, "server rejected %s: %s", wire_kind_name(kind),
                r && r->type == J_STR ? r->str : "no reason given");
        json_free(reply);
        return BREED_ERR_REJECTED;
    }
    return rc;
}

int breed_request(breed_client *c) {
    if (c->open) return bc_fail(c, BREED_ERR_STATE, "sim %llu is still open: finish or abort "
                                "it", (unsigned long long)c->job.sim_id);
    if (c->once && c->finished) return BREED_STOP;
    if (c->rank != 0 || !c->req) return bc_fail(c, BREED_ERR_STATE, "breed_request on rank %d: "
                                                "only rank 0 asks (breed_mpi_request)", c->rank);
    char host[128] = "?", body[1024];
    gethostname(host, sizeof host - 1);
    long p = snprintf(body, sizeof body, "{\"client\":\"%.100s:%ld\",\"job_id\":", host,
                      (long)getpid());
    p = c->job_id[0] ? json_quote(body, sizeof body, p, c->job_id)
                     : p + snprintf(body + p, sizeof body - (size_t)p, "null");
    if (p > 0) p += snprintf(body + p, sizeof body - (size_t)p, ",\"job_key\":");
    p = c->job_key[0] ? json_quote(body, sizeof body, p, c->job_key)
                      : (p < 0 ? -1 : p + snprintf(body + p, sizeof body - (size_t)p, "null"));
    if (p < 0 || snprintf(body + p, sizeof body - (size_t)p, ",\"nranks\":%d}", c->nranks) >=
                     (int)(sizeof body - (size_t)p))
        return bc_fail(c, BREED_ERR_CONFIG, "BREED_JOB_ID or BREED_JOB_KEY too long");
    for (;;) {
        jv reply;
        int kind = bc_call(c, K_REQUEST, body, &reply);
        if (kind < 0) return kind;
        if (kind == K_ASSIGN) {
            int rc = bc_assign(c, &reply, c->last_raw);
            json_free(&reply);
            return rc;
        }
        if (kind == K_STOP) { json_free(&reply); return BREED_STOP; }
        if (kind == K_WAIT) {
            const jv *r = json_get(&reply, "retry_after");
            double s = r && r->type == J_NUM && isfinite(r->num) ? r->num : 1.0;
            s = s < 0.01 ? 0.01 : s > 60.0 ? 60.0 : s;
            json_free(&reply);
            struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
            nanosleep(&ts, NULL);
            continue;
        }
        json_free(&reply);
        return bc_fail(c, BREED_ERR_PROTOCOL, "unexpected %s reply to REQUEST",
                       wire_kind_name(kind));
    }
}

static void *data_socket(breed_client *c) {
    for (int i = 0; i < c->ndata; i++)
        if (strcmp(c->data[i].address, c->job.data) == 0) return c->data[i].sock;
    if (c->ndata == BC_MAX_DATA) { bc_fail(c, BREED_ERR_SYSTEM, "too many data addresses"); return NULL; }
    void *s = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!s) { bc_fail(c, BREED_ERR_SYSTEM, "zmq_socket: %s", zmq_strerror(errno)); return NULL; }
    /* batching k steps a message: about as many steps queued as without (PROTOCOL 6.1) */
    int k = c->job.batch, hwm = k ? (BC_SNDHWM + k - 1) / k : BC_SNDHWM, ms = c->send_timeout_ms;
    if (hwm < 2) hwm = 2;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &ms, sizeof ms);
    zmq_setsockopt(s, ZMQ_LINGER, &ms, sizeof ms); /* deliver what is queued, not forever */
    if (set_curve(c, s) != 0 || zmq_connect(s, c->job.data) != 0) {
        bc_fail(c, BREED_ERR_PROTOCOL, "invalid data address '%s' from the server: %s",
                c->job.data, zmq_strerror(errno));
        zmq_close(s);
        return NULL;
    }
    snprintf(c->data[c->ndata].address, sizeof c->data[0].address, "%s", c->job.data);
    c->data[c->ndata++].sock = s;
    return s;
}

/* The server's next answer on the data connection within wait_ms: K_PONG (with its sim_id
 * in *sim), 0 for nothing, or an error (a REJECT of the current simulation). */
static int answers(breed_client *c, void *sock, int wait_ms, long long *sim) {
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, wait_ms) <= 0) return 0;
    jv body;
    int kind = decode_control(c, sock, c->job.data, &body);
    if (kind == BREED_ERR_AUTH || kind == BREED_ERR_TIMEOUT)
        return bc_fail(c, BREED_ERR_PROTOCOL, "undecodable answer from server %s: wrong run "
                       "token", c->job.data);
    if (kind < 0) return kind;
    const jv *id = json_get(&body, "sim_id");
    long long got = id && id->type == J_NUM ? (long long)id->num : -1;
    int rc = 0;
    if (kind == K_REJECT && (!id || got == (long long)c->job.sim_id)) {
        const jv *r = json_get(&body, "reason");
        rc = bc_fail(c, BREED_ERR_REJECTED, "server rejected the data of simulation %llu: %s",
                     (unsigned long long)c->job.sim_id,
                     r && r->type == J_STR ? r->str : "no reason given");
    } else if (kind == K_PONG) {
        *sim = got;
        rc = K_PONG;
    }
    json_free(&body);
    return rc; /* a late REJECT of an earlier, given-back simulation is dropped */
}

/* n values of `data` (dtype) into `out` in the field's dtype (item bytes), little-endian. */
static void to_wire(const breed_client *c, unsigned char *out, const void *data, int dtype,
                    size_t n, size_t item) {
    for (size_t i = 0; i < n; i++, out += item) {
        double v = dtype == BREED_FLOAT64 ? ((const double *)data)[i]
                                          : (double)((const float *)data)[i];
        if (item == 4) { float x = (float)v; memcpy(out, &x, 4); }
        else memcpy(out, &v, 8);
        if (!c->little)
            for (size_t a = 0, b = item - 1; a < b; a++, b--) {
                unsigned char t = out[a]; out[a] = out[b]; out[b] = t;
            }
    }
}

static int send_failed(breed_client *c) {
    return bc_fail(c, BREED_ERR_TIMEOUT, "server %s took no data for %g s", c->job.data,
                   c->send_timeout_ms / 1000.0);
}

/* Send what field k holds as one STEPS message (nothing if it holds nothing). */
static int flush(breed_client *c, void *sock, int k) {
    bc_hold *h = &c->hold[k];
    if (!h->count) return BREED_OK;
    const bc_field *f = &c->job.fields[k];
    unsigned char head[W_HEADER], body[W_STEPS_BODY];
    wire_header(head, K_STEPS, c->token);
    wire_steps_body(body, c->job.sim_id, (uint32_t)h->first, (uint16_t)c->rank,
                    (uint16_t)c->nranks, (uint16_t)k, h->row_offset, h->rows,
                    (uint32_t)f->shape[0], (uint32_t)h->cols, (uint8_t)h->dtype,
                    (uint16_t)h->count);
    size_t item = h->dtype == BREED_FLOAT32 ? 4 : 8;
    const void *frames[3] = {head, body, h->buf};
    size_t len[3] = {W_HEADER, W_STEPS_BODY, (size_t)h->count * h->rows * h->cols * item};
    h->count = 0;
    return send_frames(sock, frames, len, 3) != 0 ? send_failed(c) : BREED_OK;
}

static int flush_all(breed_client *c, void *sock) {
    int rc = BREED_OK;
    for (int k = 0; k < c->nhold && k < c->job.nfields && rc == BREED_OK; k++)
        rc = flush(c, sock, k);
    return rc;
}

/* Batching: add one step to field k's hold, flushing first what it cannot follow, then
 * send what is full or has waited `linger` seconds (any field's). */
static int hold_step(breed_client *c, void *sock, int step, int k, const void *data, int dtype,
                     uint32_t row_offset, uint32_t rows) {
    const bc_field *f = &c->job.fields[k];
    if (c->nhold < c->job.nfields) {
        bc_hold *p = realloc(c->hold, (size_t)c->job.nfields * sizeof *p);
        if (!p) return bc_fail(c, BREED_ERR_SYSTEM, "out of memory for the held steps");
        memset(p + c->nhold, 0, (size_t)(c->job.nfields - c->nhold) * sizeof *p);
        c->hold = p;
        c->nhold = c->job.nfields;
    }
    bc_hold *h = &c->hold[k];
    int rc;
    if (h->count && (step != h->first + h->count || row_offset != h->row_offset ||
                     rows != h->rows || f->dtype != h->dtype || f->cols != h->cols) &&
        (rc = flush(c, sock, k)) != BREED_OK)
        return rc;
    size_t n = (size_t)rows * f->cols, item = f->dtype == BREED_FLOAT32 ? 4 : 8;
    size_t slab = n * item, batch = (size_t)c->job.batch, need = ((size_t)h->count + 1) * slab;
    if (n && (slab / n != item || batch > SIZE_MAX / slab))
        return bc_fail(c, BREED_ERR_SYSTEM, "out of memory: %d steps of %u rows of field %d "
                       "overflow", c->job.batch, rows, k);
    if (h->cap < need) { /* grown as needed, up to batch slabs */
        size_t cap = 2 * h->cap > need ? 2 * h->cap : need;
        if (cap > batch * slab) cap = batch * slab;
        unsigned char *p = realloc(h->buf, cap);
        if (!p) return bc_fail(c, BREED_ERR_SYSTEM, "out of memory holding %zu bytes of field "
                               "%d", cap, k);
        h->buf = p;
        h->cap = cap;
    }
    unsigned char *o = h->buf + (size_t)h->count * slab;
    if (dtype == f->dtype && c->little) memcpy(o, data, slab);
    else to_wire(c, o, data, dtype, n, item);
    if (!h->count) {
        h->first = step;
        h->row_offset = row_offset;
        h->rows = rows;
        h->dtype = f->dtype;
        h->cols = f->cols;
        h->since = now();
    }
    h->count++;
    if (h->count >= c->job.batch && (rc = flush(c, sock, k)) != BREED_OK) return rc;
    double t = now();
    for (int i = 0; i < c->job.nfields; i++) /* no timer: the linger is checked here */
        if (c->hold[i].count && t - c->hold[i].since >= c->job.linger &&
            (rc = flush(c, sock, i)) != BREED_OK)
            return rc;
    return BREED_OK;
}

int breed_send(breed_client *c, int step, int field, const void *data, int dtype,
               uint32_t row_offset, uint32_t rows) {
    if (!c->open) return bc_fail(c, BREED_ERR_STATE, "breed_send without an assignment: call "
                                 "breed_request first");
    if (field < 0 || field >= c->job.nfields)
        return bc_fail(c, BREED_ERR_CONFIG, "field %d: the problem has %d fields", field,
                       c->job.nfields);
    if (dtype != BREED_FLOAT32 && dtype != BREED_FLOAT64)
        return bc_fail(c, BREED_ERR_CONFIG, "dtype %d: use BREED_FLOAT32 or BREED_FLOAT64", dtype);
    if (step < 0 || rows == 0 || !data)
        return bc_fail(c, BREED_ERR_CONFIG, "breed_send: step %d, %u rows: need step >= 0 and "
                       "rows > 0", step, rows);
    bc_field *f = &c->job.fields[field];
    void *sock = data_socket(c);
    if (!sock) return BREED_ERR_SYSTEM;
    long long ignored;
    int rc = answers(c, sock, 0, &ignored); /* a REJECT of an earlier step: stop now */
    if (rc < 0) return rc;
    if (c->job.batch) {
        rc = hold_step(c, sock, step, field, data, dtype, row_offset, rows);
        if (rc != BREED_OK) return rc;
        if (step != c->last_step) { c->steps_sent++; c->last_step = step; }
        return BREED_OK;
    }
    size_t count = (size_t)rows * f->cols, item = f->dtype == BREED_FLOAT32 ? 4 : 8;
    if (c->scratch_len < count * item) {
        void *p = realloc(c->scratch, count * item);
        if (!p) return bc_fail(c, BREED_ERR_SYSTEM, "out of memory for %zu values", count);
        c->scratch = p;
        c->scratch_len = count * item;
    }
    const void *payload = data;
    if (dtype != f->dtype || !c->little) { /* the wire carries the field's dtype, little-endian */
        to_wire(c, c->scratch, data, dtype, count, item);
        payload = c->scratch;
    }
    unsigned char head[W_HEADER], body[W_STEP_BODY];
    wire_header(head, K_STEP, c->token);
    wire_step_body(body, c->job.sim_id, (uint32_t)step, (uint16_t)c->rank, (uint16_t)c->nranks,
                   (uint16_t)field, row_offset, rows, (uint32_t)f->shape[0], (uint32_t)f->cols,
                   (uint8_t)f->dtype);
    const void *frames[3] = {head, body, payload};
    size_t len[3] = {W_HEADER, W_STEP_BODY, count * item};
    if (send_frames(sock, frames, len, 3) != 0) return send_failed(c);
    if (step != c->last_step) { c->steps_sent++; c->last_step = step; }
    return BREED_OK;
}

int breed_finish(breed_client *c) {
    if (!c->open) return bc_fail(c, BREED_ERR_STATE, "breed_finish without an assignment");
    void *sock = data_socket(c);
    if (!sock) return BREED_ERR_SYSTEM;
    unsigned char head[W_HEADER], body[W_FINISH_BODY];
    wire_header(head, K_FINISH, c->token);
    wire_finish_body(body, c->job.sim_id, (uint16_t)c->rank, (uint16_t)c->nranks,
                     (uint32_t)c->steps_sent);
    const void *frames[2] = {head, body};
    size_t len[2] = {W_HEADER, W_FINISH_BODY};
    int rc = flush_all(c, sock); /* held steps go before FINISH */
    if (rc == BREED_OK && send_frames(sock, frames, len, 2) != 0) rc = send_failed(c);
    double deadline = now() + c->send_timeout_ms / 1000.0;
    while (rc == BREED_OK) { /* the ack comes after every step this rank sent */
        double left = deadline - now();
        if (left <= 0) {
            rc = bc_fail(c, BREED_ERR_TIMEOUT, "server %s did not acknowledge the end of "
                         "simulation %llu within %g s", c->job.data,
                         (unsigned long long)c->job.sim_id, c->send_timeout_ms / 1000.0);
            break;
        }
        long long sim = -1;
        int got = answers(c, sock, (int)(left * 1000) + 1, &sim);
        if (got < 0) rc = got;
        else if (got == K_PONG && sim == (long long)c->job.sim_id) break;
    }
    if (rc == BREED_OK) c->finished++;
    bc_clear(c);
    return rc;
}

int breed_abort(breed_client *c, const char *reason) {
    if (!c->open) return bc_fail(c, BREED_ERR_STATE, "breed_abort without an assignment");
    unsigned long long sim = (unsigned long long)c->job.sim_id;
    bc_clear(c);
    if (c->rank != 0 || !c->req) return BREED_OK;
    char body[1600], text[1001];
    snprintf(text, sizeof text, "%s", reason ? reason : "");
    long p = snprintf(body, sizeof body, "{\"sim_id\":%llu,\"reason\":", sim);
    p = json_quote(body, sizeof body, p, text);
    if (p > 0) p += snprintf(body + p, sizeof body - (size_t)p, ",\"job_id\":");
    if (p > 0) p = c->job_id[0] ? json_quote(body, sizeof body, p, c->job_id)
                                : p + snprintf(body + p, sizeof body - (size_t)p, "null");
    if (p > 0) p += snprintf(body + p, sizeof body - (size_t)p, ",\"job_key\":");
    if (p > 0) p = c->job_key[0] ? json_quote(body, sizeof body, p, c->job_key)
                                 : p + snprintf(body + p, sizeof body - (size_t)p, "null");
    if (p < 0 || (size_t)p + 2 > sizeof body) return bc_fail(c, BREED_ERR_CONFIG, "abort reason too long");
    strcat(body, "}");
    jv reply;
    int kind = bc_call(c, K_ABORT, body, &reply);
    if (kind < 0) return kind;
    json_free(&reply);
    return BREED_OK;
}

void breed_close(breed_client *c, int discard) {
    if (!c) return;
    int zero = 0;
    if (c->req) zmq_close(c->req);
    for (int i = 0; i < c->ndata; i++) {
        if (discard) zmq_setsockopt(c->data[i].sock, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(c->data[i].sock);
    }
    if (c->ctx) zmq_ctx_term(c->ctx);
    bc_clear(c);
    for (int k = 0; k < c->nhold; k++) free(c->hold[k].buf);
    free(c->hold);
    free(c->scratch);
    free(c->last_raw);
    free(c);
}
