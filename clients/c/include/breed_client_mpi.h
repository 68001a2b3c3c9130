/* breed_client_mpi.h: the MPI glue of libbreed_client, header-only (compiled by the
 * solver's own mpicc, so the library itself never links MPI and works with any MPI).
 *
 * Rank 0 talks to the control socket and broadcasts each answer; every rank streams its
 * own slab (rows [row_offset, row_offset + rows) of each field's first axis):
 *
 *     breed_client *c;
 *     int rc = breed_mpi_init(&c, MPI_COMM_WORLD);
 *     while (rc == BREED_OK && (rc = breed_mpi_request(c, MPI_COMM_WORLD)) == BREED_OK) {
 *         for (t = 0; t <= breed_steps(c); ++t) breed_send(c, t, 0, slab, BREED_FLOAT64,
 *                                                          first_row, my_rows);
 *         rc = breed_finish(c);   // each rank waits for the server's answer to its data
 *     }
 *
 * Collective calls return the same status on every rank (rank 0's), with rank 0's message
 * in breed_error, so all ranks leave the loop together. breed_send/breed_finish are
 * per-rank: on an error there, call MPI_Abort (other ranks may wait in a collective).
 */
#ifndef BREED_CLIENT_MPI_H
#define BREED_CLIENT_MPI_H

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "breed_client.h"

static inline int breed__mpi_agree(breed_client *c, int rc, MPI_Comm comm) {
    int rank, len = 0;
    char msg[1024];
    MPI_Comm_rank(comm, &rank);
    if (rank == 0) {
        strncpy(msg, breed_error(c), sizeof msg - 1);
        msg[sizeof msg - 1] = 0;
        len = rc < 0 ? (int)strlen(msg) + 1 : 0;
    }
    int head[2] = {rc, len};
    MPI_Bcast(head, 2, MPI_INT, 0, comm);
    if (head[1] > 0) {
        MPI_Bcast(msg, head[1], MPI_CHAR, 0, comm);
        if (rank != 0) breed_set_error(c, msg);
    }
    return head[0];
}

/* breed_init with this rank and size of comm; collective. */
static inline int breed_mpi_init(breed_client **out, MPI_Comm comm) {
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int rc = breed_init(out, rank, size);
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MIN, comm); /* any rank's failure stops all */
    if (worst < 0 && rc == BREED_OK) breed_set_error(*out, "another rank could not start");
    return worst;
}

/* breed_request on rank 0, the assignment broadcast to every rank; collective. */
static inline int breed_mpi_request(breed_client *c, MPI_Comm comm) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    int rc = rank == 0 ? breed_request(c) : BREED_OK;
    rc = breed__mpi_agree(c, rc, comm);
    if (rc != BREED_OK) return rc;
    int len = rank == 0 ? (int)strlen(breed_assignment_json(c)) + 1 : 0;
    MPI_Bcast(&len, 1, MPI_INT, 0, comm);
    char *text = rank == 0 ? (char *)breed_assignment_json(c) : (char *)malloc((size_t)len);
    if (!text) MPI_Abort(comm, 1);
    MPI_Bcast(text, len, MPI_CHAR, 0, comm);
    if (rank != 0) {
        rc = breed_adopt(c, text);
        free(text);
    }
    return rc;
}

/* breed_abort on every rank (rank 0 tells the server); not collective. */
static inline int breed_mpi_abort(breed_client *c, const char *reason) {
    return breed_abort(c, reason);
}

#endif
