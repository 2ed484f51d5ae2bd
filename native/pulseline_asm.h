/* pulseline native frame assembler.
 *
 * Turns the board->host byte stream into frames: sync scan, CRC-32 check,
 * line placement (several frames in flight, out-of-order and duplicate
 * lines), exact loss accounting, pixel unpacking, corrections, recursive
 * filter and per-frame statistics. docs/protocol.md describes the stream,
 * docs/architecture.md the API.
 *
 * Everything between CDEF-BEGIN and CDEF-END is also the cffi cdef (see
 * native/build_native.py), so it holds only plain declarations and integer
 * #defines. The protocol constants must equal firmware/pulsefw/wire.py;
 * tests/test_constants.py checks that.
 */
#ifndef PULSELINE_ASM_H
#define PULSELINE_ASM_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
#define PL_PROTOCOL_VERSION 1
#define PL_SYNC0 0xA5
#define PL_SYNC1 0x5A
#define PL_SYNC2 0x50
#define PL_SYNC3 0x4C
#define PL_HEADER_SIZE 12
#define PL_CRC_SIZE 4
#define PL_MAX_PAYLOAD 65535

#define PL_PKT_COMMAND 1
#define PL_PKT_RESPONSE 2
#define PL_PKT_EVENT 3
#define PL_PKT_LINE 4
#define PL_PKT_TRAILER 5
#define PL_PKT_LOG 6

#define PL_FMT_MONO16 1
#define PL_FMT_MONO12P 2

#define PL_ERR_OK 0
#define PL_ERR_UNKNOWN_COMMAND 1
#define PL_ERR_MALFORMED 2
#define PL_ERR_BAD_ARGUMENT 3
#define PL_ERR_OUT_OF_RANGE 4
#define PL_ERR_BAD_STATE 5
#define PL_ERR_INTERLOCK 6
#define PL_ERR_LINK_BUDGET 7
#define PL_ERR_VERSION 8
#define PL_ERR_BUSY 9
#define PL_ERR_STORAGE 10
#define PL_ERR_INTERNAL 11

#define PL_LINE_HEADER_SIZE 24
#define PL_TRAILER_SIZE 40
#define PL_MAX_PIXELS_PER_LINE 16384
#define PL_MAX_LINES_PER_FRAME 16384

#define PL_CTRL_C 0x03
#define PL_ESC 0x10
#define PL_ESC_XOR 0x20

/* Assembler limits (host side only). */
#define PL_MAX_FRAMES_IN_FLIGHT 16
#define PL_RETIRED_MEMORY 64
#define PL_OUTPUT_QUEUE 64
#define PL_MESSAGE_ARENA 262144

/* feed/flush status */
#define PL_FEED_DONE 0
#define PL_FEED_OUTPUT_FULL 1
#define PL_FEED_NEED_BUFFER 2

/* output kinds */
#define PL_OUT_FRAME 1
#define PL_OUT_PACKET 2

/* why a frame was emitted */
#define PL_DONE_TRAILER 1
#define PL_DONE_OVERFLOW 2
#define PL_DONE_FLUSH 3

typedef struct {
    uint32_t pixels_per_line;
    uint32_t lines_per_frame;
    uint32_t pixel_format;
    uint32_t max_frames_in_flight;
    /* 0: frames are uint16 raw pixels, lost lines 0.
     * 1: frames are float32 ((raw - dark) * gain), defect replacement and
     *    the recursive filter applied, lost lines NaN. */
    uint32_t float_output;
    uint32_t centre_row0, centre_rows, centre_col0, centre_cols;
    float filter_alpha; /* 0: off; (0, 1]: y = a*x + (1-a)*y_prev */
} pl_config;

typedef struct {
    uint64_t bytes_in;
    uint64_t bytes_skipped;       /* resync: bytes not part of any good packet */
    uint64_t packets_ok;          /* CRC good */
    uint64_t header_errors;       /* candidate headers whose check failed */
    uint64_t crc_errors;          /* candidates with a good header whose CRC failed */
    uint64_t bad_version;         /* good CRC, other protocol version */
    uint64_t malformed;           /* good CRC, payload size wrong for its type */
    uint64_t geometry_mismatch;   /* line/trailer for another geometry */
    uint64_t lines_ok;            /* lines placed in a frame */
    uint64_t lines_duplicate;
    uint64_t lines_late;          /* line for a frame already emitted */
    uint64_t lines_lost;          /* sum over emitted frames of missing lines */
    uint64_t trailers_late;       /* trailer for a frame already emitted */
    uint64_t frames_emitted;
    uint64_t frames_complete;     /* every line and the trailer */
    uint64_t frames_incomplete;   /* emitted with lines lost or no trailer */
    uint64_t frames_overflowed;   /* pushed out: too many frames in flight */
    uint64_t messages;            /* non-line packets handed out */
} pl_counters;

typedef struct {
    int kind;                       /* PL_OUT_FRAME or PL_OUT_PACKET */
    /* frame */
    void *buffer;                   /* the pixels, a buffer given by pl_give_buffer */
    uint32_t frame_id;
    uint32_t pulse_id;              /* of the first line received, else the trailer's */
    uint64_t timestamp_us;          /* of the first line received, else the trailer's */
    uint32_t lines_received;
    int reason;                     /* PL_DONE_* */
    int has_trailer;
    uint8_t trailer[40];            /* PL_TRAILER_SIZE bytes, if has_trailer */
    const uint8_t *line_bitmap;     /* lines_per_frame bytes, 1 = received; valid until the next feed */
    double mean, min, max, centre_mean; /* over received pixels, NaN if none */
    /* packet */
    int packet_type;
    uint32_t packet_seq;
    const uint8_t *payload;         /* valid until the next feed/flush */
    uint32_t payload_len;
} pl_output;

typedef struct pl_asm pl_asm;

/* Create an assembler. dark/gain/defect_map are lines*pixels arrays (row
 * major) copied at creation; they may be NULL (dark 0, gain 1, no defects)
 * and are used only with float_output. Returns NULL and a message in err
 * (errlen bytes) on a bad configuration. */
pl_asm *pl_create(const pl_config *cfg, const float *dark, const float *gain,
                  const uint8_t *defect_map, char *err, size_t errlen);
void pl_destroy(pl_asm *a);

/* Hand the assembler a frame buffer: lines*pixels uint16 or float32 (per
 * float_output). The assembler writes into it and returns it in a
 * PL_OUT_FRAME output; it never frees it. */
int pl_give_buffer(pl_asm *a, void *buffer);
int pl_free_buffers(const pl_asm *a);

/* Consume bytes. Returns how many were consumed; *status says why it stopped
 * early (PL_FEED_OUTPUT_FULL: drain outputs; PL_FEED_NEED_BUFFER: give a
 * buffer), then call again with the rest. Never fails on any input. */
size_t pl_feed(pl_asm *a, const uint8_t *data, size_t n, int *status);

/* End of stream: resolve buffered bytes, then emit every frame in flight.
 * Call until it returns PL_FEED_DONE, draining outputs in between. */
int pl_flush(pl_asm *a);

/* Outputs in stream order. Returns 1 and fills *out, or 0 when empty. */
int pl_next_output(pl_asm *a, pl_output *out);

void pl_get_counters(const pl_asm *a, pl_counters *c);
/* Version of the last good packet of another protocol version; -1: none. */
int pl_last_bad_version(const pl_asm *a);

/* CRC-32 (IEEE, zlib-compatible) with the backend chosen at build time. */
uint32_t pl_crc32(uint32_t crc, const uint8_t *data, size_t n);
const char *pl_crc_backend(void);
/* CDEF-END */

#endif
