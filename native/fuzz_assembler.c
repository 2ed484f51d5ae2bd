/* libFuzzer harness for the native frame assembler (pulseline_asm.c).
 *
 * Input layout (bytes past the end of the input read as 0):
 *   [0..13]  configuration, see parse_setup()
 *   [14]     mode: bit 0 structured, bits 1-3 number of corruption ops,
 *            bits 4-5 chunking (see next_chunk), bits 6-7 spare buffers (0..3)
 *   raw mode:        the rest is the byte stream as it is.
 *   structured mode: the corruption ops (4 bytes each), then packet
 *                    descriptions (see build_stream). The harness turns them
 *                    into packets with a good sync, header check and CRC, so
 *                    the fuzzer gets past the CRC to placement, eviction and
 *                    trailers, then applies the corruption ops.
 *
 * The stream is fed in chunks and drained the way host/pulseline/link/assembler.py
 * does. Every output is read in full and checked against what the API
 * contract (pulseline_asm.h) and the counter definitions imply. In structured
 * mode the content of every good packet is a function of its identity (frame
 * id and line, or type, seq and length), so the harness also checks pixels,
 * corrections, statistics and, without corruption, the exact counters.
 * tests/make_corpus.py writes seeds in this format.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pulseline_asm.h"

#define HDR_BYTES 14
#define STREAM_CAP (1u << 19) /* room for > 4 max-size messages (arena full) */
#define MAX_FEEDS (1u << 14)   /* chunks per run, for speed */
#define MAX_BUFS 64           /* lent at most 16 in slots + 3 spare */
#define MAX_CORRUPTIONS 7

__attribute__((noreturn)) static void fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_assembler.c:%d: invariant failed: %s\n", line, what);
    abort();
}
#define CHECK(cond)                           \
    do {                                      \
        if (!(cond)) fail(#cond, __LINE__);   \
    } while (0)

static const uint32_t BIG_WIDTHS[8] = {300, 2048, 65, 127, 128, 255, 1000, 513};

/* ---- bytes, numbers, pseudo-random content ------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t n, pos;
} reader_t;

static uint8_t rd_u8(reader_t *r) { return r->pos < r->n ? r->p[r->pos++] : 0; }
static int rd_more(const reader_t *r) { return r->pos < r->n; }

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }
static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v), put16(p + 2, v >> 16); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v), put32(p + 4, (uint32_t)(v >> 32)); }

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *g) { return mix64(g->s += 0x9E3779B97F4A7C15ull); }

/* A byte stream per seed; a shorter request gets a prefix of a longer one,
 * so a line sent with another length still carries the same pixels. */
static void fill_bytes(uint64_t seed, uint8_t *dst, size_t n)
{
    rng_t g = {seed};
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = rng_next(&g);
        memcpy(dst + i, &v, n - i < 8 ? n - i : 8);
    }
}

static int same_bytes(uint64_t seed, const uint8_t *p, size_t n)
{
    rng_t g = {seed};
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = rng_next(&g);
        if (memcmp(p + i, &v, n - i < 8 ? n - i : 8) != 0) return 0;
    }
    return 1;
}

static uint64_t line_seed(uint64_t seed, uint32_t fid, uint32_t line) { return mix64(seed ^ mix64((uint64_t)fid << 16 ^ line)); }
static uint64_t msg_seed(uint64_t seed, uint32_t type, uint32_t seq, uint32_t len)
{
    return mix64(seed ^ 0x6D7367ull ^ mix64((uint64_t)type << 48 ^ (uint64_t)seq << 24 ^ len));
}
static uint32_t pulse_of(uint32_t fid) { return fid ^ 0x5A5A0000u; }
static uint64_t ts_of(uint32_t fid) { return (uint64_t)fid * 133333u; }

static size_t wire_bytes(uint32_t ppl, uint32_t fmt)
{
    if (fmt == PL_FMT_MONO16) return (size_t)ppl * 2;
    if (fmt == PL_FMT_MONO12P) return ((size_t)ppl * 12 + 7) / 8;
    return 0;
}

/* docs/protocol.md, "Pixel formats": an independent decoder to check against. */
static uint16_t wire_pixel(const uint8_t *line, uint32_t x, uint32_t fmt)
{
    if (fmt == PL_FMT_MONO16) return get16(line + 2 * (size_t)x);
    const uint8_t *s = line + 3 * (size_t)(x / 2);
    return x & 1 ? (uint16_t)(s[1] >> 4 | s[2] << 4) : (uint16_t)(s[0] | (s[1] & 0x0F) << 8);
}

typedef struct {
    uint8_t *d;
    size_t len, cap;
} bytes_t;

static void reserve(bytes_t *b, size_t extra)
{
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    b->d = realloc(b->d, cap);
    CHECK(b->d);
    b->cap = cap;
}

static void insert_bytes(bytes_t *b, size_t at, const uint8_t *src, size_t n)
{
    reserve(b, n);
    memmove(b->d + at + n, b->d + at, b->len - at);
    memcpy(b->d + at, src, n);
    b->len += n;
}

static volatile uint8_t sink;

/* Read every byte so ASan sees any out-of-bounds or freed memory. */
static void touch(const void *p, size_t n)
{
    const volatile uint8_t *q = p;
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) acc ^= q[i];
    sink = acc;
}

static int same_float(float a, float b) { return (isnan(a) && isnan(b)) || a == b; }
static int same_double(double a, double b) { return (isnan(a) && isnan(b)) || a == b; }

/* ---- configuration -------------------------------------------------------- */

typedef struct {
    pl_config cfg;
    int valid;           /* pl_create must succeed */
    int err_null;        /* pass no error buffer */
    unsigned map_bits;   /* 1 dark, 2 gain, 4 defect */
    uint8_t map_seed, map_param;
    int pool_free;       /* free buffers that come back instead of reusing them */
    int mid_flush;       /* flush once half way through the stream */
    uint8_t chunk_seed, chunk_param;
    size_t npix, frame_bytes;
    /* The maps as given to pl_create, kept for the oracle. */
    float *dark, *gain;
    uint8_t *defect;
    uint32_t *defect_list;
    size_t ndefect;
} setup_t;

/* Bytes 0..13: 0 width (< 0xF0: 1..64, else BIG_WIDTHS), 1 height 1..32,
 * 2 flags (bit 0 mono12p, 1 float output, 2 filter, 3-5 dark/gain/defect
 * maps, 6 free returned buffers, 7 break the configuration), 3 frames in
 * flight 1..16, 4 filter alpha, 5-8 centre region, 9-10 map seed and map
 * parameters (or which field to break), 11-12 chunking, 13 bit 0 mid flush. */
static void parse_setup(reader_t *r, setup_t *su)
{
    uint8_t b[HDR_BYTES];
    for (int i = 0; i < HDR_BYTES; i++) b[i] = rd_u8(r);
    memset(su, 0, sizeof(*su));
    pl_config *c = &su->cfg;
    const uint32_t W = b[0] < 0xF0 ? 1u + b[0] % 64 : BIG_WIDTHS[b[0] & 7];
    const uint32_t H = 1u + b[1] % 32;
    c->pixels_per_line = W;
    c->lines_per_frame = H;
    c->pixel_format = b[2] & 1 ? PL_FMT_MONO12P : PL_FMT_MONO16;
    c->float_output = (b[2] >> 1) & 1;
    c->filter_alpha = c->float_output && (b[2] & 4) ? (float)(b[4] + 1) / 256.0f : 0.0f;
    c->max_frames_in_flight = 1u + b[3] % 16;
    c->centre_row0 = b[5] % H;
    c->centre_rows = b[6] % (H - c->centre_row0 + 1);
    c->centre_col0 = (uint32_t)(((uint64_t)b[7] * W) >> 8);
    c->centre_cols = (uint32_t)(((uint64_t)b[8] * (W - c->centre_col0 + 1)) >> 8);
    su->map_bits = c->float_output ? (b[2] >> 3) & 7 : 0;
    su->pool_free = (b[2] >> 6) & 1;
    su->map_seed = b[9];
    su->map_param = b[10];
    su->chunk_seed = b[11];
    su->chunk_param = b[12];
    su->mid_flush = b[13] & 1;
    su->npix = (size_t)W * H;
    su->frame_bytes = su->npix * (c->float_output ? 4 : 2);
    su->valid = 1;
    if (!(b[2] & 0x80)) return;

    /* Break exactly one rule of pl_create; it must then return NULL. */
    const uint8_t arg = b[10];
    su->valid = 0;
    su->err_null = arg >> 7;
    switch (b[9] % 9) {
    case 0: c->pixel_format = arg % 3 == 0 ? 0 : arg % 3 == 1 ? 3 : 255; break;
    case 1: c->max_frames_in_flight = arg & 1 ? PL_MAX_FRAMES_IN_FLIGHT + 1 : 0; break;
    case 2: c->pixels_per_line = arg & 1 ? PL_MAX_PIXELS_PER_LINE + 1 : 0; break;
    case 3: c->lines_per_frame = arg & 1 ? PL_MAX_LINES_PER_FRAME + 1 : 0; break;
    case 4: c->filter_alpha = arg % 4 == 0 ? 1.5f : arg % 4 == 1 ? -0.25f : arg % 4 == 2 ? NAN : 2.0f; break;
    case 5: c->float_output = 0, c->filter_alpha = 0.5f, su->map_bits = 0; break;
    case 6: c->float_output = 0, c->filter_alpha = 0.0f, su->map_bits = 1; break;
    case 7: c->centre_row0 = H, c->centre_rows = 1 + arg % 2; break;
    default: c->centre_col0 = arg % (W + 1), c->centre_cols = W + 1 - c->centre_col0; break;
    }
}

/* Maps from a seed; with map_param bit 6 some entries are NaN, inf, 0 or
 * negative; bits 0-5 set the defect density. */
static void make_maps(setup_t *su, float **dark, float **gain, uint8_t **defect)
{
    static const float DARK_ODD[4] = {NAN, INFINITY, -1e30f, 70000.0f};
    static const float GAIN_ODD[4] = {0.0f, -1.0f, NAN, INFINITY};
    const int odd = su->map_param & 0x40;
    const unsigned density = (su->map_param & 0x3F) * 4u;
    rng_t g = {mix64(su->map_seed + 1u)};
    *dark = *gain = NULL;
    *defect = NULL;
    if (su->map_bits & 1) {
        CHECK((*dark = malloc(su->npix * sizeof(float))) != NULL);
        for (size_t i = 0; i < su->npix; i++) {
            uint64_t v = rng_next(&g);
            (*dark)[i] = odd && (v >> 32) % 64 == 0 ? DARK_ODD[(v >> 40) % 4] : (float)(v % 512);
        }
    }
    if (su->map_bits & 2) {
        CHECK((*gain = malloc(su->npix * sizeof(float))) != NULL);
        for (size_t i = 0; i < su->npix; i++) {
            uint64_t v = rng_next(&g);
            (*gain)[i] = odd && (v >> 32) % 64 == 0 ? GAIN_ODD[(v >> 40) % 4] : 0.5f + (float)(v % 1024) / 1024.0f;
        }
    }
    if (su->map_bits & 4) {
        CHECK((*defect = malloc(su->npix)) != NULL);
        for (size_t i = 0; i < su->npix; i++) (*defect)[i] = (rng_next(&g) & 255) < density ? (uint8_t)(1 + i % 3) : 0;
    }
}

static void *dup_mem(const void *p, size_t n)
{
    if (!p) return NULL;
    void *q = malloc(n);
    CHECK(q);
    return memcpy(q, p, n);
}

/* Create the assembler; NULL (after checking the error path) for a broken
 * configuration. The maps handed over are freed right away: the assembler
 * must have copied them. */
static pl_asm *create(setup_t *su)
{
    float *dark, *gain;
    uint8_t *defect;
    make_maps(su, &dark, &gain, &defect);
    char err[160];
    err[0] = 0;
    pl_asm *a = pl_create(&su->cfg, dark, gain, defect, su->err_null ? NULL : err, su->err_null ? 0 : sizeof(err));
    if (!su->valid) {
        CHECK(a == NULL);
        CHECK(su->err_null || (err[0] != 0 && memchr(err, 0, sizeof(err)) != NULL));
    } else {
        CHECK(a != NULL);
        su->dark = dup_mem(dark, su->npix * sizeof(float));
        su->gain = dup_mem(gain, su->npix * sizeof(float));
        su->defect = dup_mem(defect, su->npix);
        if (defect) {
            CHECK((su->defect_list = malloc(su->npix * sizeof(uint32_t))) != NULL);
            for (size_t i = 0; i < su->npix; i++)
                if (defect[i]) su->defect_list[su->ndefect++] = (uint32_t)i;
        }
    }
    free(dark);
    free(gain);
    free(defect);
    return a;
}

static void free_setup(setup_t *su)
{
    free(su->dark);
    free(su->gain);
    free(su->defect);
    free(su->defect_list);
}

/* ---- structured streams --------------------------------------------------- */

typedef struct {
    bytes_t out;
    const pl_config *cfg;
    uint64_t seed;
    rng_t g;
    uint32_t cur; /* frame ids in descriptions are relative to this */
    uint16_t seq;
    int full;
    /* what the good, undamaged stream must produce */
    uint64_t packets, bad_version, malformed, geometry, messages;
    uint8_t last_bad_version;
} builder_t;

enum { K_NORMAL, K_MALFORMED, K_GEOMETRY, K_MESSAGE };

/* Header with a good header check; returns where the payload goes. */
static uint8_t *pkt_begin(builder_t *b, uint8_t version, uint8_t type, size_t len)
{
    if (b->full || b->out.len + PL_HEADER_SIZE + len + PL_CRC_SIZE > STREAM_CAP) {
        b->full = 1;
        return NULL;
    }
    reserve(&b->out, PL_HEADER_SIZE + len + PL_CRC_SIZE);
    uint8_t *p = b->out.d + b->out.len;
    p[0] = PL_SYNC0, p[1] = PL_SYNC1, p[2] = PL_SYNC2, p[3] = PL_SYNC3;
    p[4] = version;
    p[5] = type;
    put16(p + 6, b->seq++);
    put16(p + 8, (uint32_t)len);
    put16(p + 10, pl_crc32(0, p + 4, 6) & 0xFFFFu);
    return p + PL_HEADER_SIZE;
}

static void pkt_end(builder_t *b, size_t len, int kind)
{
    uint8_t *p = b->out.d + b->out.len;
    put32(p + PL_HEADER_SIZE + len, pl_crc32(0, p + 4, PL_HEADER_SIZE - 4 + len));
    b->out.len += PL_HEADER_SIZE + len + PL_CRC_SIZE;
    b->packets++;
    if (p[4] != PL_PROTOCOL_VERSION) {
        b->bad_version++;
        b->last_bad_version = p[4];
    } else if (kind == K_MALFORMED) {
        b->malformed++;
    } else if (kind == K_GEOMETRY) {
        b->geometry++;
    } else if (kind == K_MESSAGE) {
        b->messages++;
    }
}

/* A line packet; len < 0: the length its geometry implies. */
static void build_line(builder_t *b, uint8_t ver, uint32_t fid, uint32_t line, uint32_t lpf, uint32_t ppl, uint32_t fmt,
                       long len)
{
    const size_t pb = wire_bytes(ppl, fmt);
    const size_t n = len < 0 ? PL_LINE_HEADER_SIZE + pb : (size_t)len;
    uint8_t head[PL_LINE_HEADER_SIZE];
    put32(head, fid);
    put16(head + 4, line);
    put16(head + 6, lpf);
    put16(head + 8, ppl);
    head[10] = (uint8_t)fmt;
    head[11] = 0;
    put32(head + 12, pulse_of(fid));
    put64(head + 16, ts_of(fid) + 10u * line);
    uint8_t *pl = pkt_begin(b, ver, PL_PKT_LINE, n);
    if (!pl) return;
    memcpy(pl, head, n < sizeof(head) ? n : sizeof(head));
    if (n > sizeof(head)) fill_bytes(line_seed(b->seed, fid, line), pl + sizeof(head), n - sizeof(head));
    const pl_config *c = b->cfg;
    int kind = K_NORMAL;
    if (n < PL_LINE_HEADER_SIZE || pb == 0 || n != PL_LINE_HEADER_SIZE + pb)
        kind = K_MALFORMED;
    else if (ppl != c->pixels_per_line || lpf != c->lines_per_frame || fmt != c->pixel_format || line >= lpf)
        kind = K_GEOMETRY;
    pkt_end(b, n, kind);
}

static void build_trailer(builder_t *b, uint8_t ver, uint32_t fid, uint32_t lpf, size_t len)
{
    uint8_t t[PL_TRAILER_SIZE];
    const float dose[5] = {80.0f, 20.0f, 10.0f, 39.0f, 1.5f};
    put32(t, fid);
    put32(t + 4, pulse_of(fid));
    put64(t + 8, ts_of(fid));
    put16(t + 16, lpf);
    put16(t + 18, lpf);
    memcpy(t + 20, dose, sizeof(dose));
    uint8_t *pl = pkt_begin(b, ver, PL_PKT_TRAILER, len);
    if (!pl) return;
    memcpy(pl, t, len < sizeof(t) ? len : sizeof(t));
    if (len > sizeof(t)) memset(pl + sizeof(t), 0, len - sizeof(t));
    pkt_end(b, len, len != PL_TRAILER_SIZE ? K_MALFORMED : lpf != b->cfg->lines_per_frame ? K_GEOMETRY : K_NORMAL);
}

static void build_msg(builder_t *b, uint8_t ver, uint8_t type, size_t len)
{
    const uint16_t seq = b->seq;
    uint8_t *pl = pkt_begin(b, ver, type, len);
    if (!pl) return;
    fill_bytes(msg_seed(b->seed, type, seq, (uint32_t)len), pl, len);
    pkt_end(b, len, K_MESSAGE);
}

static uint8_t rd_version(reader_t *r)
{
    uint8_t v = rd_u8(r);
    return v == PL_PROTOCOL_VERSION ? 0 : v;
}

static uint32_t rd_fid(reader_t *r, const builder_t *b) { return b->cur + (uint32_t)(int32_t)(int8_t)rd_u8(r); }

/* Packet descriptions, op = first byte, kind = op & 7:
 *   0-2 LINE    fid, line; op bit 3: another geometry (+1 byte), bit 4: bad
 *               length or pixel format (+1), bit 5: bad version (+1), bit 6:
 *               send twice, bit 7: follow with the frame's trailer.
 *   3   TRAILER fid; bit 3: other lines_per_frame (+1), bit 4: bad length
 *               (+1), bit 5: bad version (+1).
 *   4-6 EVENT, LOG, other type (+1 byte type); length (+1); bit 3: 16-bit
 *               length (+1), bit 4: bad version (+1), bit 5: burst (+1).
 *   7   FRAMES  k: 1 + (k & 3) whole frames; order (k >> 2 & 3) in order,
 *               reversed, shuffled, or with lost lines; bit 4 no trailer,
 *               bit 5 every line twice, bit 6 trailer first, bit 7 events.
 * Frame ids are cur + a signed byte; FRAMES advances cur. */
static void build_stream(reader_t *r, builder_t *b)
{
    const uint32_t W = b->cfg->pixels_per_line, H = b->cfg->lines_per_frame, F = b->cfg->pixel_format;
    while (rd_more(r) && !b->full) {
        const uint8_t op = rd_u8(r), kind = op & 7;
        if (kind <= 2) {
            const uint32_t fid = rd_fid(r, b);
            uint32_t line = rd_u8(r) % H, ppl = W, lpf = H, fmt = F;
            long len = -1;
            uint8_t ver = PL_PROTOCOL_VERSION;
            if (op & 0x08) {
                const uint8_t g = rd_u8(r);
                switch (g & 3) {
                case 0: ppl = W + 1u + (g >> 2); break;
                case 1: lpf = H + 1u + (g >> 2); break;
                case 2: fmt = F == PL_FMT_MONO16 ? PL_FMT_MONO12P : PL_FMT_MONO16; break;
                default: line = H + (g >> 2); break;
                }
            }
            if (op & 0x10) {
                const uint8_t m = rd_u8(r);
                const long pb = (long)wire_bytes(ppl, fmt);
                switch (m % 3) {
                case 0: len = (m >> 2) % PL_LINE_HEADER_SIZE; break;
                case 1: len = PL_LINE_HEADER_SIZE + pb + (m & 4 ? 1 + (m >> 3) % 8 : -1 - (m >> 3) % 2); break;
                default: fmt = m & 4 ? 0u : 3u + (m >> 3); break;
                }
            }
            if (op & 0x20) ver = rd_version(r);
            build_line(b, ver, fid, line, lpf, ppl, fmt, len);
            if (op & 0x40) build_line(b, ver, fid, line, lpf, ppl, fmt, len);
            if (op & 0x80) build_trailer(b, PL_PROTOCOL_VERSION, fid, H, PL_TRAILER_SIZE);
        } else if (kind == 3) {
            const uint32_t fid = rd_fid(r, b);
            uint32_t lpf = H;
            size_t len = PL_TRAILER_SIZE;
            uint8_t ver = PL_PROTOCOL_VERSION;
            if (op & 0x08) lpf = H + 1u + rd_u8(r);
            if (op & 0x10) {
                len = rd_u8(r) % 80;
                if (len == PL_TRAILER_SIZE) len++;
            }
            if (op & 0x20) ver = rd_version(r);
            build_trailer(b, ver, fid, lpf, len);
        } else if (kind <= 6) {
            uint8_t type = kind == 4 ? PL_PKT_EVENT : kind == 5 ? PL_PKT_LOG : rd_u8(r);
            if (type == PL_PKT_LINE || type == PL_PKT_TRAILER) type += 128; /* those have their own ops */
            size_t len = rd_u8(r);
            if (op & 0x08) len = len << 8 | rd_u8(r);
            const uint8_t ver = op & 0x10 ? rd_version(r) : PL_PROTOCOL_VERSION;
            const unsigned count = op & 0x20 ? 1u + rd_u8(r) % 96 : 1u; /* > PL_OUTPUT_QUEUE */
            for (unsigned i = 0; i < count; i++) build_msg(b, ver, type, len);
        } else {
            const uint8_t k = rd_u8(r);
            const unsigned count = 1u + (k & 3), order = (k >> 2) & 3;
            uint32_t perm[32]; /* H <= 32 */
            for (unsigned f = 0; f < count; f++) {
                const uint32_t fid = ++b->cur;
                for (uint32_t y = 0; y < H; y++) perm[y] = order == 1 ? H - 1 - y : y;
                for (uint32_t y = H; order == 2 && y > 1; y--) {
                    uint32_t j = (uint32_t)(rng_next(&b->g) % y), t = perm[y - 1];
                    perm[y - 1] = perm[j], perm[j] = t;
                }
                if (k & 0x40) build_trailer(b, PL_PROTOCOL_VERSION, fid, H, PL_TRAILER_SIZE);
                for (uint32_t i = 0; i < H; i++) {
                    if (order == 3 && rng_next(&b->g) % 4 == 0) continue;
                    build_line(b, PL_PROTOCOL_VERSION, fid, perm[i], H, W, F, -1);
                    if (k & 0x20) build_line(b, PL_PROTOCOL_VERSION, fid, perm[i], H, W, F, -1);
                }
                if (!(k & 0x50)) build_trailer(b, PL_PROTOCOL_VERSION, fid, H, PL_TRAILER_SIZE);
                if (k & 0x80) build_msg(b, PL_PROTOCOL_VERSION, PL_PKT_EVENT, rng_next(&b->g) % 48);
            }
        }
    }
}

/* op: kind, position (16-bit fraction of the length), argument. */
static void corrupt(bytes_t *s, const uint8_t op[4])
{
    if (s->len == 0) return;
    const size_t pos = (size_t)(((uint64_t)(op[1] << 8 | op[2]) * s->len) >> 16);
    size_t span = 1 + (size_t)op[3] * op[3];
    if (span > s->len - pos) span = s->len - pos;
    switch (op[0] % 5) {
    case 0: s->d[pos] ^= (uint8_t)(1u << (op[3] & 7)); break;
    case 1: s->len = pos; break;
    case 2: {
        uint8_t *copy = dup_mem(s->d + pos, span);
        insert_bytes(s, pos + span, copy, span);
        free(copy);
        break;
    }
    case 3:
        memmove(s->d + pos, s->d + pos + span, s->len - pos - span);
        s->len -= span;
        break;
    default: {
        static const uint8_t sync[4] = {PL_SYNC0, PL_SYNC1, PL_SYNC2, PL_SYNC3};
        insert_bytes(s, pos, op[3] & 1 ? sync : &op[3], op[3] & 1 ? 4 : 1);
        break;
    }
    }
}

/* ---- running the assembler ------------------------------------------------ */

typedef struct {
    pl_asm *a;
    const setup_t *su;
    void *buf[MAX_BUFS];
    uint8_t lent[MAX_BUFS]; /* 1: the assembler holds it */
    int nbuf, spares;
    int blocked; /* the last call returned a blocking status */
    /* tallies over outputs */
    uint64_t fed, frames, frames_trailer, frames_complete, frames_overflow;
    uint64_t messages, message_bytes, lines_rx, lines_missing;
    /* structured mode: content is known */
    int oracle;
    uint64_t seed;
    float *expect, *fstate;
    uint8_t *line;
} run_t;

static int lent_count(const run_t *r)
{
    int n = 0;
    for (int i = 0; i < r->nbuf; i++) n += r->lent[i];
    return n;
}

static void give_buffer(run_t *r)
{
    int i = -1;
    for (int k = 0; k < r->nbuf && i < 0; k++)
        if (!r->lent[k]) i = k;
    if (i < 0) {
        CHECK(r->nbuf < MAX_BUFS);
        i = r->nbuf++;
        CHECK((r->buf[i] = malloc(r->su->frame_bytes)) != NULL);
    }
    /* Stale contents: the assembler must write every pixel it hands back. */
    memset(r->buf[i], 0xCD, r->su->frame_bytes);
    CHECK(pl_give_buffer(r->a, r->buf[i]) == 1);
    r->lent[i] = 1;
}

/* The pixels the assembler should have produced: raw or corrected, defects
 * replaced and filtered. Per pixel the arithmetic is fixed (docs: (raw -
 * dark) * gain, the mean of good neighbours in row-major order, a*x +
 * (1-a)*y), and the fuzz build has no FMA (x86-64 baseline, PL_NO_CLONES),
 * so floats compare exactly. */
static void check_content(run_t *r, const pl_output *o)
{
    const pl_config *c = &r->su->cfg;
    const uint32_t W = c->pixels_per_line, H = c->lines_per_frame, F = c->pixel_format;
    const size_t pb = wire_bytes(W, F);
    float *e = r->expect;
    for (uint32_t y = 0; y < H; y++) {
        float *erow = e + (size_t)y * W;
        if (!o->line_bitmap[y]) {
            for (uint32_t x = 0; x < W; x++) erow[x] = NAN;
            continue;
        }
        fill_bytes(line_seed(r->seed, o->frame_id, y), r->line, pb);
        for (uint32_t x = 0; x < W; x++) {
            const uint16_t raw = wire_pixel(r->line, x, F);
            if (!c->float_output) {
                CHECK(((const uint16_t *)o->buffer)[(size_t)y * W + x] == raw);
                continue;
            }
            const size_t i = (size_t)y * W + x;
            erow[x] = ((float)raw - (r->su->dark ? r->su->dark[i] : 0.0f)) * (r->su->gain ? r->su->gain[i] : 1.0f);
        }
    }
    if (!c->float_output) return;
    for (size_t k = 0; k < r->su->ndefect; k++) {
        const uint32_t idx = r->su->defect_list[k], y = idx / W, x = idx % W;
        if (!o->line_bitmap[y]) continue;
        float sum = 0.0f;
        int count = 0;
        for (int dy = -1; dy <= 1; dy++) {
            const long yy = (long)y + dy;
            if (yy < 0 || yy >= (long)H || !o->line_bitmap[yy]) continue;
            for (int dx = -1; dx <= 1; dx++) {
                const long xx = (long)x + dx;
                if ((dx == 0 && dy == 0) || xx < 0 || xx >= (long)W || r->su->defect[(size_t)yy * W + (size_t)xx])
                    continue;
                sum += e[(size_t)yy * W + (size_t)xx];
                count++;
            }
        }
        e[idx] = count ? sum / (float)count : NAN;
    }
    if (c->filter_alpha > 0.0f) {
        const float al = c->filter_alpha, bl = 1.0f - al;
        for (size_t i = 0; i < r->su->npix; i++) {
            if (!o->line_bitmap[i / W] || isnan(e[i])) continue;
            const float s = isnan(r->fstate[i]) ? e[i] : al * e[i] + bl * r->fstate[i];
            r->fstate[i] = e[i] = s;
        }
    }
    for (size_t i = 0; i < r->su->npix; i++) CHECK(same_float(((const float *)o->buffer)[i], e[i]));
}

/* Running mean, min and max of pixels; NaN pixels (float output) do not count. */
typedef struct {
    double sum, abs_sum, mn, mx;
    size_t count;
} acc_t;

static void acc_add(acc_t *s, double v)
{
    if (isnan(v)) return;
    s->sum += v;
    s->abs_sum += fabs(v);
    s->mn = v < s->mn ? v : s->mn;
    s->mx = v > s->mx ? v : s->mx;
    s->count++;
}

/* The summation order is the implementation's choice (it vectorises), so the
 * mean may differ by rounding: at most count * 2^-53 * sum |v|, far below the
 * margin here. Min and max do not depend on the order. */
static void check_acc(const acc_t *s, double mean, const double *mn, const double *mx)
{
    if (!s->count) {
        CHECK(isnan(mean));
        if (mn) CHECK(isnan(*mn) && isnan(*mx));
        return;
    }
    const double want = s->sum / (double)s->count;
    CHECK(same_double(mean, want) || fabs(mean - want) <= 1e-9 * (s->abs_sum / (double)s->count));
    if (mn) CHECK(*mn == s->mn && *mx == s->mx);
}

static void check_stats(const run_t *r, const pl_output *o)
{
    const pl_config *c = &r->su->cfg;
    const uint32_t W = c->pixels_per_line, H = c->lines_per_frame;
    acc_t all = {0, 0, INFINITY, -INFINITY, 0}, centre = all;
    for (uint32_t y = 0; y < H; y++) {
        if (!o->line_bitmap[y]) continue;
        const int centre_row = y >= c->centre_row0 && y < c->centre_row0 + c->centre_rows;
        for (uint32_t x = 0; x < W; x++) {
            const size_t i = (size_t)y * W + x;
            const double v = c->float_output ? ((const float *)o->buffer)[i] : ((const uint16_t *)o->buffer)[i];
            acc_add(&all, v);
            if (centre_row && x >= c->centre_col0 && x < c->centre_col0 + c->centre_cols) acc_add(&centre, v);
        }
    }
    check_acc(&all, o->mean, &o->min, &o->max);
    check_acc(&centre, o->centre_mean, NULL, NULL);
}

static void check_frame(run_t *r, const pl_output *o)
{
    const pl_config *c = &r->su->cfg;
    const uint32_t W = c->pixels_per_line, H = c->lines_per_frame;
    int i = -1;
    for (int k = 0; k < r->nbuf && i < 0; k++)
        if (r->buf[k] == o->buffer && r->lent[k]) i = k;
    CHECK(i >= 0); /* a buffer this harness gave and has not had back */
    r->lent[i] = 0;
    CHECK(o->reason == PL_DONE_TRAILER || o->reason == PL_DONE_OVERFLOW || o->reason == PL_DONE_FLUSH);
    CHECK(o->has_trailer == (o->reason == PL_DONE_TRAILER));

    uint32_t ones = 0;
    for (uint32_t y = 0; y < H; y++) {
        CHECK(o->line_bitmap[y] <= 1);
        ones += o->line_bitmap[y];
    }
    CHECK(ones == o->lines_received && ones <= H);
    if (ones == 0 && o->has_trailer) /* known only from its trailer */
        CHECK(o->pulse_id == get32(o->trailer + 4) && o->timestamp_us == get64(o->trailer + 8));
    if (ones == 0 && !o->has_trailer) CHECK(o->pulse_id == 0 && o->timestamp_us == 0);
    if (o->has_trailer) CHECK(get32(o->trailer) == o->frame_id && get16(o->trailer + 16) == H);

    touch(o->buffer, r->su->frame_bytes);
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            const size_t k = (size_t)y * W + x;
            if (c->float_output) {
                if (!o->line_bitmap[y]) CHECK(isnan(((const float *)o->buffer)[k]));
            } else {
                const uint16_t v = ((const uint16_t *)o->buffer)[k];
                CHECK(o->line_bitmap[y] ? c->pixel_format == PL_FMT_MONO16 || v <= 0xFFF : v == 0);
            }
        }
    check_stats(r, o);

    if (r->oracle) {
        if (ones) {
            const uint64_t d = o->timestamp_us - ts_of(o->frame_id);
            CHECK(o->pulse_id == pulse_of(o->frame_id));
            CHECK(d % 10 == 0 && d / 10 < H && o->line_bitmap[d / 10]); /* from a received line */
        }
        if (o->has_trailer)
            CHECK(get32(o->trailer + 4) == pulse_of(o->frame_id) && get64(o->trailer + 8) == ts_of(o->frame_id));
        check_content(r, o);
    }

    r->frames++;
    r->frames_trailer += o->has_trailer;
    r->frames_complete += ones == H && o->has_trailer;
    r->frames_overflow += o->reason == PL_DONE_OVERFLOW;
    r->lines_rx += ones;
    r->lines_missing += H - ones;
    if (r->su->pool_free) {
        free(r->buf[i]);
        r->nbuf--;
        r->buf[i] = r->buf[r->nbuf];
        r->lent[i] = r->lent[r->nbuf];
    }
}

static void check_packet(run_t *r, const pl_output *o)
{
    /* Good version-1 lines and trailers are never handed out as packets. */
    CHECK(o->packet_type != PL_PKT_LINE && o->packet_type != PL_PKT_TRAILER);
    CHECK(o->packet_type <= 0xFF && o->packet_seq <= 0xFFFF && o->payload_len <= PL_MAX_PAYLOAD);
    touch(o->payload, o->payload_len);
    if (r->oracle)
        CHECK(same_bytes(msg_seed(r->seed, (uint32_t)o->packet_type, o->packet_seq, o->payload_len), o->payload,
                         o->payload_len));
    r->messages++;
    r->message_bytes += o->payload_len;
}

/* Counter identities that hold whenever the output queue is drained;
 * settled: after a flush, when no frame is in flight and no bytes pend. */
static void check_counters(const run_t *r, int settled)
{
    pl_counters c;
    pl_get_counters(r->a, &c);
    CHECK(c.bytes_in == r->fed);
    CHECK(c.bytes_skipped <= c.bytes_in);
    CHECK(c.header_errors + c.crc_errors <= c.bytes_skipped); /* each skips one byte */
    CHECK(c.frames_emitted == r->frames);
    CHECK(c.frames_complete + c.frames_incomplete == c.frames_emitted);
    CHECK(c.frames_complete == r->frames_complete);
    CHECK(c.frames_overflowed == r->frames_overflow);
    CHECK(c.messages == r->messages);
    CHECK(c.lines_lost == r->lines_missing);
    CHECK(c.lines_ok >= r->lines_rx);
    /* Every good packet lands in exactly one of these. */
    CHECK(c.packets_ok == c.bad_version + c.malformed + c.geometry_mismatch + c.lines_ok + c.lines_duplicate +
                              c.lines_late + c.trailers_late + r->frames_trailer + c.messages);
    const int last = pl_last_bad_version(r->a);
    CHECK(c.bad_version ? last >= 0 && last <= 0xFF && last != PL_PROTOCOL_VERSION : last == -1);
    CHECK(pl_free_buffers(r->a) >= 0 && pl_free_buffers(r->a) <= lent_count(r));

    /* Byte accounting: good packets whose size is known from their type. */
    const pl_config *cfg = &r->su->cfg;
    const uint64_t line_pkt = PL_LINE_HEADER_SIZE + wire_bytes(cfg->pixels_per_line, cfg->pixel_format);
    const uint64_t known = (uint64_t)(PL_HEADER_SIZE + PL_CRC_SIZE) * c.packets_ok +
                           line_pkt * (c.lines_ok + c.lines_duplicate + c.lines_late) +
                           (uint64_t)PL_TRAILER_SIZE * (c.trailers_late + r->frames_trailer) + r->message_bytes;
    CHECK(c.bytes_in - c.bytes_skipped >= known);
    if (!settled) return;
    CHECK(c.lines_ok == r->lines_rx);
    CHECK(pl_free_buffers(r->a) == lent_count(r)); /* no frame holds a buffer */
    if (c.bad_version + c.malformed + c.geometry_mismatch == 0) CHECK(c.bytes_in - c.bytes_skipped == known);
}

static void drain(run_t *r)
{
    pl_output o;
    while (pl_next_output(r->a, &o)) {
        CHECK(o.kind == PL_OUT_FRAME || o.kind == PL_OUT_PACKET);
        if (o.kind == PL_OUT_FRAME)
            check_frame(r, &o);
        else
            check_packet(r, &o);
    }
    check_counters(r, 0);
}

/* Counters that only grow. Held bytes can hold many packets (a long
 * candidate that failed its CRC), each of which may block, so a call can
 * consume nothing; but once the harness has given what a blocked call asked
 * for, the next call must move some of these, else the caller would spin. */
static uint64_t progress(const pl_asm *a)
{
    pl_counters c;
    pl_get_counters(a, &c);
    return c.bytes_in + c.bytes_skipped + c.packets_ok + c.frames_emitted;
}

static void flush(run_t *r)
{
    int st;
    uint64_t before = progress(r->a);
    while ((st = pl_flush(r->a)) != PL_FEED_DONE) {
        CHECK(st == PL_FEED_OUTPUT_FULL || st == PL_FEED_NEED_BUFFER);
        const uint64_t after = progress(r->a);
        CHECK(!r->blocked || after != before);
        before = after;
        r->blocked = 1;
        drain(r);
        if (st == PL_FEED_NEED_BUFFER) give_buffer(r);
    }
    r->blocked = 0;
    drain(r);
    check_counters(r, 1);
}

typedef struct {
    int mode;
    size_t param, min;
    rng_t g;
} chunker_t;

/* 0: all at once, 1: single bytes, 2: 1..1+param, 3: a mix of single bytes
 * and up to 1+256*param; never smaller than min (long streams). */
static size_t next_chunk(chunker_t *ch, size_t left)
{
    size_t n = left;
    if (ch->mode == 1) {
        n = 1;
    } else if (ch->mode == 2) {
        n = 1 + rng_next(&ch->g) % (1 + ch->param);
    } else if (ch->mode == 3) {
        const uint64_t v = rng_next(&ch->g);
        n = (v & 3) == 0 ? 1 : 1 + (v >> 2) % (1 + ch->param * 256);
    }
    n = n > ch->min ? n : ch->min;
    return n < left ? n : left;
}

static void top_up(run_t *r)
{
    while (pl_free_buffers(r->a) < r->spares) give_buffer(r);
}

/* Feed like FrameAssembler.feed: each chunk in its own exactly sized, soon
 * freed allocation, so reads past it or kept pointers into it show up. */
static void feed_all(run_t *r, const uint8_t *s, size_t len, chunker_t *ch)
{
    int flushed = !r->su->mid_flush;
    top_up(r);
    for (size_t pos = 0; pos < len;) {
        const size_t n = next_chunk(ch, len - pos);
        uint8_t *chunk = dup_mem(s + pos, n);
        for (size_t off = 0; off < n;) {
            int st = -1;
            const uint64_t before = progress(r->a);
            const size_t got = pl_feed(r->a, chunk + off, n - off, &st);
            CHECK(!r->blocked || progress(r->a) != before);
            r->blocked = st != PL_FEED_DONE;
            CHECK(got <= n - off);
            CHECK(st == PL_FEED_DONE || st == PL_FEED_OUTPUT_FULL || st == PL_FEED_NEED_BUFFER);
            CHECK(st != PL_FEED_DONE || got == n - off);
            off += got;
            r->fed += got;
            drain(r);
            if (st == PL_FEED_NEED_BUFFER) {
                CHECK(pl_free_buffers(r->a) == 0);
                give_buffer(r);
            }
        }
        free(chunk);
        pos += n;
        top_up(r);
        if (!flushed && pos >= len / 2) {
            flush(r);
            flushed = 1;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader_t rd = {data, size, 0};
    setup_t su;
    parse_setup(&rd, &su);
    const uint8_t mode = rd_u8(&rd);
    pl_asm *a = create(&su);
    if (!a) {
        free_setup(&su);
        return 0;
    }
    CHECK(pl_give_buffer(a, NULL) == 0);

    run_t r;
    memset(&r, 0, sizeof(r));
    r.a = a;
    r.su = &su;
    r.spares = mode >> 6;
    r.seed = mix64(0x5EEDu ^ (uint64_t)su.map_seed << 8 ^ (uint64_t)su.chunk_seed << 16);
    chunker_t ch = {(mode >> 4) & 3, su.chunk_param, 1, {mix64(su.chunk_seed)}};

    builder_t b;
    memset(&b, 0, sizeof(b));
    const uint8_t *stream = data + rd.pos;
    size_t len = size - rd.pos;
    const unsigned ncorrupt = (mode >> 1) & 7;
    if (mode & 1) {
        uint8_t ops[MAX_CORRUPTIONS][4];
        for (unsigned i = 0; i < ncorrupt; i++)
            for (int j = 0; j < 4; j++) ops[i][j] = rd_u8(&rd);
        b.cfg = &su.cfg;
        b.seed = r.seed;
        b.g.s = r.seed ^ 0xB17Du;
        build_stream(&rd, &b);
        for (unsigned i = 0; i < ncorrupt; i++) corrupt(&b.out, ops[i]);
        stream = b.out.d;
        len = b.out.len;
        r.oracle = 1;
        CHECK((r.expect = malloc(su.npix * sizeof(float))) != NULL);
        CHECK((r.line = malloc(wire_bytes(su.cfg.pixels_per_line, su.cfg.pixel_format))) != NULL);
        if (su.cfg.filter_alpha > 0.0f) {
            CHECK((r.fstate = malloc(su.npix * sizeof(float))) != NULL);
            for (size_t i = 0; i < su.npix; i++) r.fstate[i] = NAN;
        }
    }
    if (len / MAX_FEEDS > 1) ch.min = len / MAX_FEEDS;

    feed_all(&r, stream, len, &ch);
    flush(&r);
    CHECK(r.fed == len);
    CHECK(pl_flush(a) == PL_FEED_DONE); /* a second flush has nothing to do */
    pl_output o;
    CHECK(pl_next_output(a, &o) == 0);

    if ((mode & 1) && ncorrupt == 0 && !su.mid_flush) {
        /* An undamaged stream of whole packets: every byte is a good packet. */
        pl_counters c;
        pl_get_counters(a, &c);
        CHECK(c.bytes_skipped == 0 && c.header_errors == 0 && c.crc_errors == 0);
        CHECK(c.packets_ok == b.packets);
        CHECK(c.bad_version == b.bad_version && c.malformed == b.malformed);
        CHECK(c.geometry_mismatch == b.geometry && c.messages == b.messages);
        if (b.bad_version) CHECK(pl_last_bad_version(a) == b.last_bad_version);
    }

#ifdef FUZZ_ASM_TRACE /* -DFUZZ_ASM_TRACE: what a seed reaches, for tests/make_corpus.py */
    pl_counters c;
    pl_get_counters(a, &c);
    fprintf(stderr,
            "mode=%s in=%llu skip=%llu ok=%llu hdr=%llu crc=%llu ver=%llu malf=%llu geom=%llu lines=%llu dup=%llu "
            "late=%llu lost=%llu tlate=%llu frames=%llu complete=%llu overflow=%llu msgs=%llu\n",
            mode & 1 ? "structured" : "raw", (unsigned long long)c.bytes_in, (unsigned long long)c.bytes_skipped,
            (unsigned long long)c.packets_ok, (unsigned long long)c.header_errors, (unsigned long long)c.crc_errors,
            (unsigned long long)c.bad_version, (unsigned long long)c.malformed,
            (unsigned long long)c.geometry_mismatch, (unsigned long long)c.lines_ok,
            (unsigned long long)c.lines_duplicate, (unsigned long long)c.lines_late, (unsigned long long)c.lines_lost,
            (unsigned long long)c.trailers_late, (unsigned long long)c.frames_emitted,
            (unsigned long long)c.frames_complete, (unsigned long long)c.frames_overflowed,
            (unsigned long long)c.messages);
#endif
    pl_destroy(a);
    for (int i = 0; i < r.nbuf; i++) free(r.buf[i]);
    free(r.expect);
    free(r.fstate);
    free(r.line);
    free(b.out.d);
    free_setup(&su);
    return 0;
}
