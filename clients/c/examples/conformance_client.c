/* The reference client of the conformance suite (tests/conformance/), in C, serial.
 *
 * Until STOP: request a simulation, send t = 0..steps of every field, each value
 * sum(params) + t + field index (all rows at once), then finish. Exit 0 after STOP,
 * 2 on a bad environment, 1 on any run-time error, with one line on stderr. Env
 * BREED_CONFORMANCE_ABORT=1 aborts each simulation after step 0 instead (then exits 1).
 * Also the C side of benchmarks/client_overhead.py: filling a field is its only work.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "breed_client.h"

static int run(breed_client *c) {
    int rc, abort_early = getenv("BREED_CONFORMANCE_ABORT") != NULL;
    double *buf = NULL;
    size_t cap = 0;
    while ((rc = breed_request(c)) == BREED_OK) {
        double base = 0.0;
        for (int i = 0; i < breed_nparams(c); i++) base += breed_param(c, i);
        for (int t = 0; t <= breed_steps(c) && rc == BREED_OK; t++) {
            for (int k = 0; k < breed_nfields(c) && rc == BREED_OK; k++) {
                size_t count = 1;
                for (int a = 0; a < breed_field_ndim(c, k); a++) count *= (size_t)breed_field_dim(c, k, a);
                if (count > cap) {
                    free(buf);
                    if (!(buf = malloc(count * sizeof *buf))) { breed_set_error(c, "out of memory"); return BREED_ERR_SYSTEM; }
                    cap = count;
                }
                for (size_t i = 0; i < count; i++) buf[i] = base + t + k;
                rc = breed_send(c, t, k, buf, BREED_FLOAT64, 0, (uint32_t)breed_field_dim(c, k, 0));
            }
            if (rc == BREED_OK && abort_early) {
                breed_abort(c, "conformance: abort after step 0");
                breed_set_error(c, "aborted on request (BREED_CONFORMANCE_ABORT)");
                rc = BREED_ERR_STATE;
            }
        }
        if (rc == BREED_OK) rc = breed_finish(c);
        if (rc != BREED_OK) break;
    }
    free(buf);
    return rc;
}

int main(void) {
    breed_client *c;
    int rc = breed_init(&c, 0, 1);
    if (rc == BREED_OK) rc = run(c);
    int code = rc == BREED_STOP ? 0 : rc == BREED_ERR_CONFIG ? 2 : 1;
    if (code) fprintf(stderr, "breed_c_client: error: %s\n", breed_error(c));
    breed_close(c, code != 0);
    return code;
}
