/* Byte layout of the protocol's headers and fixed bodies: network (big-endian) order. */
#include "wire.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

static const char *NAMES[] = {"?", "REQUEST", "ASSIGN", "STOP", "WAIT", "STEP", "FINISH",
                              "ABORT", "PING", "PONG", "REJECT", "STEPS"};

const char *wire_kind_name(int kind) { return (kind >= 1 && kind <= K_STEPS) ? NAMES[kind] : "?"; }

static unsigned char *be(unsigned char *p, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) { p[i] = (unsigned char)(v & 0xFF); v >>= 8; }
    return p + bytes;
}

void wire_header(unsigned char out[W_HEADER], int kind, const unsigned char token[W_TOKEN]) {
    memcpy(out, W_MAGIC, 4);
    be(out + 4, 2, 2); /* protocol version */
    out[6] = (unsigned char)kind;
    memcpy(out + 7, token, W_TOKEN);
}

void wire_step_body(unsigned char out[W_STEP_BODY], uint64_t sim_id, uint32_t step,
                    uint16_t rank, uint16_t nranks, uint16_t field, uint32_t row_offset,
                    uint32_t rows, uint32_t global_rows, uint32_t cols, uint8_t dtype) {
    unsigned char *p = be(out, sim_id, 8);
    p = be(p, step, 4);
    p = be(p, rank, 2);
    p = be(p, nranks, 2);
    p = be(p, field, 2);
    p = be(p, row_offset, 4);
    p = be(p, rows, 4);
    p = be(p, global_rows, 4);
    p = be(p, cols, 4);
    *p = dtype;
}

void wire_steps_body(unsigned char out[W_STEPS_BODY], uint64_t sim_id, uint32_t step,
                     uint16_t rank, uint16_t nranks, uint16_t field, uint32_t row_offset,
                     uint32_t rows, uint32_t global_rows, uint32_t cols, uint8_t dtype,
                     uint16_t count) {
    wire_step_body(out, sim_id, step, rank, nranks, field, row_offset, rows, global_rows, cols,
                   dtype);
    be(out + W_STEP_BODY, count, 2);
}

void wire_finish_body(unsigned char out[W_FINISH_BODY], uint64_t sim_id, uint16_t rank,
                      uint16_t nranks, uint32_t steps_sent) {
    unsigned char *p = be(out, sim_id, 8);
    p = be(p, rank, 2);
    p = be(p, nranks, 2);
    be(p, steps_sent, 4);
}

int wire_check_header(const unsigned char *head, size_t len, const unsigned char *token,
                      char *err, size_t errlen) {
    if (len != W_HEADER) {
        snprintf(err, errlen, "header is %zu bytes, expected %d", len, W_HEADER);
        return -1;
    }
    if (memcmp(head, W_MAGIC, 4) != 0) {
        snprintf(err, errlen, "bad magic: not a breed message");
        return -1;
    }
    int version = head[4] << 8 | head[5];
    if (version != 2) {
        snprintf(err, errlen, "protocol version %d, this side speaks 2", version);
        return -1;
    }
    int kind = head[6];
    if (kind < 1 || kind > K_STEPS) {
        snprintf(err, errlen, "unknown message kind %d", kind);
        return -1;
    }
    unsigned char diff = 0; /* constant time: timing tells nothing about the token */
    for (int i = 0; i < W_TOKEN; i++) diff |= (unsigned char)(head[7 + i] ^ token[i]);
    return diff ? -2 : kind;
}

int wire_little_endian(void) {
    uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int wire_token_from_hex(const char *text, unsigned char out[W_TOKEN]) {
    while (isspace((unsigned char)*text)) text++;
    size_t n = strlen(text);
    while (n && isspace((unsigned char)text[n - 1])) n--;
    if (n != 2 * W_TOKEN) return -1;
    for (int i = 0; i < W_TOKEN; i++) {
        int hi = nibble(text[2 * i]), lo = nibble(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}
