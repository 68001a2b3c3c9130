/* The paper's 2D heat solver (Appendix B.1) in C with MPI row blocks, streaming into breed.
 *
 * Same discretisation as breed.problems.heat2d_solver: an M x M grid including the walls,
 * h = L/(M-1), 5-point Laplacian on the (M-2)^2 interior nodes, implicit Euler
 * (I - r Lap_h) u^{t+1} = u^t + r b with r = alpha dt / h^2, the x1 walls (rows 0 and M-1)
 * owning the corners. The interior rows are split as breed.problems.heat2d_mpi.split_rows
 * does; each step is solved by conjugate gradients (one halo row exchanged with each
 * neighbour per product, dot products by MPI_Allreduce) to a relative residual of 1e-14, so
 * the field equals the Python (spectral) solver's to ~1e-13.
 *
 * Started by breed as a problem's client command (clients/c/examples/heat2d_c.yaml), serially
 * or under mpiexec; exit 0 when the server says STOP, 2 on a bad environment, 1 on a run-time
 * error, 143 after SIGTERM (the simulation is given back first).
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "breed_client_mpi.h"

static volatile sig_atomic_t terminated = 0;
static void on_term(int sig) { (void)sig; terminated = 1; }

typedef struct {
    MPI_Comm comm;
    int rank, nranks, grid, n, a, rows, row_start, row_stop, first, last;
    double r, lam[5];
    double *u, *b, *rhs, *x, *res, *p, *ap, *above, *below, *out;
} heat;

static double dot(heat *h, const double *x, const double *y) {
    double local = 0.0, sum;
    for (int i = 0; i < h->rows * h->n; i++) local += x[i] * y[i];
    MPI_Allreduce(&local, &sum, 1, MPI_DOUBLE, MPI_SUM, h->comm);
    return sum;
}

/* out = (I - r Lap_h) p on this rank's interior rows; neighbours' rows through the halo */
static void apply(heat *h, const double *p, double *out) {
    int n = h->n, m = h->rows;
    int up = h->first ? MPI_PROC_NULL : h->rank - 1, down = h->last ? MPI_PROC_NULL : h->rank + 1;
    memset(h->above, 0, sizeof(double) * (size_t)n);
    memset(h->below, 0, sizeof(double) * (size_t)n);
    MPI_Sendrecv(p, n, MPI_DOUBLE, up, 1, h->below, n, MPI_DOUBLE, down, 1, h->comm,
                 MPI_STATUS_IGNORE);
    MPI_Sendrecv(p + (size_t)(m - 1) * n, n, MPI_DOUBLE, down, 2, h->above, n, MPI_DOUBLE, up, 2,
                 h->comm, MPI_STATUS_IGNORE);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double nb = (i > 0 ? p[(i - 1) * n + j] : h->above[j]) +
                        (i < m - 1 ? p[(i + 1) * n + j] : h->below[j]) +
                        (j > 0 ? p[i * n + j - 1] : 0.0) + (j < n - 1 ? p[i * n + j + 1] : 0.0);
            out[i * n + j] = (1.0 + 4.0 * h->r) * p[i * n + j] - h->r * nb;
        }
}

/* one implicit Euler step by CG, warm-started from u; 0 or -1 if it did not converge */
static int step(heat *h) {
    size_t len = (size_t)h->rows * h->n;
    for (size_t k = 0; k < len; k++) h->rhs[k] = h->u[k] + h->b[k]; /* b holds r b */
    memcpy(h->x, h->u, len * sizeof(double));
    apply(h, h->x, h->ap);
    for (size_t k = 0; k < len; k++) h->res[k] = h->rhs[k] - h->ap[k];
    double rr = dot(h, h->res, h->res), target = 1e-28 * dot(h, h->rhs, h->rhs);
    memcpy(h->p, h->res, len * sizeof(double));
    int it = 0, maxiter = 20 * h->n + 100;
    while (rr > target && it++ < maxiter) {
        apply(h, h->p, h->ap);
        double alpha = rr / dot(h, h->p, h->ap);
        for (size_t k = 0; k < len; k++) {
            h->x[k] += alpha * h->p[k];
            h->res[k] -= alpha * h->ap[k];
        }
        double rr_new = dot(h, h->res, h->res);
        for (size_t k = 0; k < len; k++) h->p[k] = h->res[k] + (rr_new / rr) * h->p[k];
        rr = rr_new;
    }
    memcpy(h->u, h->x, len * sizeof(double));
    return rr > target ? -1 : 0;
}

/* this rank's output rows [row_start, row_stop) of the full grid, walls included */
static void write_block(heat *h) {
    int g = h->grid, lo = h->first ? 1 : 0;
    for (int i = 0; i < h->row_stop - h->row_start; i++) {
        double *row = h->out + (size_t)i * g;
        row[0] = h->lam[3];
        row[g - 1] = h->lam[4];
        int k = i - lo;
        if (k >= 0 && k < h->rows) memcpy(row + 1, h->u + (size_t)k * h->n, sizeof(double) * h->n);
    }
    if (h->first) for (int j = 0; j < g; j++) h->out[j] = h->lam[1];
    if (h->last)
        for (int j = 0; j < g; j++) h->out[(size_t)(h->row_stop - h->row_start - 1) * g + j] = h->lam[2];
}

static int setup(heat *h, breed_client *c, MPI_Comm comm, char *err, size_t errlen) {
    double grid, dt, alpha, length;
    memset(h, 0, sizeof *h);
    if (breed_setting(c, "grid", &grid) || breed_setting(c, "dt", &dt) ||
        breed_setting(c, "alpha", &alpha) || breed_setting(c, "length", &length) ||
        breed_nparams(c) != 5 || breed_nfields(c) != 1 || grid < 3 ||
        breed_field_dim(c, 0, 0) != (long)grid || breed_field_dim(c, 0, 1) != (long)grid) {
        snprintf(err, errlen, "not a heat problem: needs settings grid, dt, alpha, length, five "
                 "parameters and one grid x grid field");
        return -1;
    }
    h->comm = comm;
    MPI_Comm_rank(comm, &h->rank);
    MPI_Comm_size(comm, &h->nranks);
    h->grid = (int)grid;
    h->n = h->grid - 2;
    if (h->n < h->nranks) {
        snprintf(err, errlen, "grid %d has %d interior rows, fewer than %d MPI ranks", h->grid,
                 h->n, h->nranks);
        return -1;
    }
    int base = h->n / h->nranks, extra = h->n % h->nranks;
    h->a = h->rank * base + (h->rank < extra ? h->rank : extra);
    h->rows = base + (h->rank < extra ? 1 : 0);
    h->first = h->rank == 0;
    h->last = h->rank == h->nranks - 1;
    h->row_start = h->first ? 0 : h->a + 1;
    h->row_stop = h->last ? h->grid : h->a + h->rows + 1;
    double sp = length / (h->grid - 1);
    h->r = alpha * dt / (sp * sp);
    for (int i = 0; i < 5; i++) h->lam[i] = breed_param(c, i);
    size_t len = (size_t)h->rows * h->n;
    double **bufs[] = {&h->u, &h->b, &h->rhs, &h->x, &h->res, &h->p, &h->ap};
    for (int k = 0; k < 7; k++) *bufs[k] = calloc(len, sizeof(double));
    h->above = calloc((size_t)h->n, sizeof(double));
    h->below = calloc((size_t)h->n, sizeof(double));
    h->out = calloc((size_t)(h->row_stop - h->row_start) * h->grid, sizeof(double));
    for (size_t k = 0; k < len; k++) h->u[k] = h->lam[0];
    for (int i = 0; i < h->rows; i++) { /* r b: wall values seen through the stencil */
        h->b[(size_t)i * h->n] += h->r * h->lam[3];
        h->b[(size_t)i * h->n + h->n - 1] += h->r * h->lam[4];
    }
    for (int j = 0; j < h->n; j++) {
        if (h->first) h->b[j] += h->r * h->lam[1];
        if (h->last) h->b[(size_t)(h->rows - 1) * h->n + j] += h->r * h->lam[2];
    }
    return 0;
}

static void release(heat *h) {
    double *bufs[] = {h->u, h->b, h->rhs, h->x, h->res, h->p, h->ap, h->above, h->below, h->out};
    for (int k = 0; k < 10; k++) free(bufs[k]);
}

/* one simulation: 0, or a status < 0 with the message in err */
static int simulate(breed_client *c, MPI_Comm comm, char *err, size_t errlen) {
    heat h;
    int rc = setup(&h, c, comm, err, errlen);
    for (int t = 0; rc == 0 && t <= breed_steps(c); t++) {
        if (terminated) { snprintf(err, errlen, "terminated by signal 15"); rc = -1; break; }
        if (t > 0 && step(&h) != 0) { snprintf(err, errlen, "CG did not converge"); rc = -1; break; }
        write_block(&h);
        rc = breed_send(c, t, 0, h.out, BREED_FLOAT64, (uint32_t)h.row_start,
                        (uint32_t)(h.row_stop - h.row_start));
        if (rc != BREED_OK) snprintf(err, errlen, "%s", breed_error(c));
    }
    release(&h);
    if (rc == -1) { /* the solver failed, not the connection: give the simulation back */
        breed_mpi_abort(c, err);
        return terminated ? -143 : BREED_ERR_STATE;
    }
    if (rc == BREED_OK && (rc = breed_finish(c)) != BREED_OK)
        snprintf(err, errlen, "%s", breed_error(c));
    return rc;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    signal(SIGTERM, on_term);
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    breed_client *c;
    char err[1100] = "";
    int rc = breed_mpi_init(&c, MPI_COMM_WORLD);
    while (rc == BREED_OK && (rc = breed_mpi_request(c, MPI_COMM_WORLD)) == BREED_OK) {
        rc = simulate(c, MPI_COMM_WORLD, err, sizeof err);
        if (rc != BREED_OK) break;
    }
    int code = rc == BREED_STOP ? 0 : rc == -143 ? 143 : rc == BREED_ERR_CONFIG ? 2 : 1;
    if (code && code != 143 && (rank == 0 || err[0]))
        fprintf(stderr, "heat2d_c: error: %s\n", err[0] ? err : breed_error(c));
    else if (code == 143 && rank == 0)
        fprintf(stderr, "heat2d_c: error: terminated by signal 15\n");
    breed_close(c, code != 0);
    if (code && err[0] && nranks > 1) MPI_Abort(MPI_COMM_WORLD, code); /* others may wait */
    MPI_Finalize();
    return code;
}
