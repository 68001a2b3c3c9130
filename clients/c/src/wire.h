/* Encoding and decoding of breed messages (docs/PROTOCOL.md), internal to libbreed_client. */
#ifndef BREED_WIRE_H
#define BREED_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define W_MAGIC "BRED"
#define W_TOKEN 32
#define W_HEADER 39      /* !4sHB32s */
#define W_STEP_BODY 35   /* !QIHHHIIIIB */
#define W_STEPS_BODY 37  /* !QIHHHIIIIBH: STEP's, then count */
#define W_FINISH_BODY 16 /* !QHHI */
#define W_MAX_CONTROL (64 * 1024)

enum { K_REQUEST = 1, K_ASSIGN, K_STOP, K_WAIT, K_STEP, K_FINISH, K_ABORT, K_PING, K_PONG,
       K_REJECT, K_STEPS };

const char *wire_kind_name(int kind);
void wire_header(unsigned char out[W_HEADER], int kind, const unsigned char token[W_TOKEN]);
void wire_step_body(unsigned char out[W_STEP_BODY], uint64_t sim_id, uint32_t step,
                    uint16_t rank, uint16_t nranks, uint16_t field, uint32_t row_offset,
                    uint32_t rows, uint32_t global_rows, uint32_t cols, uint8_t dtype);
/* STEPS (PROTOCOL 6.1): the STEP body of the first step, then the count of steps. */
void wire_steps_body(unsigned char out[W_STEPS_BODY], uint64_t sim_id, uint32_t step,
                     uint16_t rank, uint16_t nranks, uint16_t field, uint32_t row_offset,
                     uint32_t rows, uint32_t global_rows, uint32_t cols, uint8_t dtype,
                     uint16_t count);
void wire_finish_body(unsigned char out[W_FINISH_BODY], uint64_t sim_id, uint16_t rank,
                      uint16_t nranks, uint32_t steps_sent);
/* Check a header: returns the kind (> 0), -1 malformed (message in err), -2 wrong token. */
int wire_check_header(const unsigned char *head, size_t len, const unsigned char *token,
                      char *err, size_t errlen);
int wire_little_endian(void);
/* Parse 64 hex digits into 32 bytes (surrounding white space allowed): 0 or -1. */
int wire_token_from_hex(const char *text, unsigned char out[W_TOKEN]);

#endif
