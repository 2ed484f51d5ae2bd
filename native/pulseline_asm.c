/* pulseline native frame assembler: see pulseline_asm.h. */
#include "pulseline_asm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(PL_CRC_ISAL)
#include <isa-l/crc.h>
uint32_t pl_crc32(uint32_t crc, const uint8_t *data, size_t n) { return crc32_gzip_refl(crc, data, n); }
const char *pl_crc_backend(void) { return "isa-l"; }
#else
#include <zlib.h>
uint32_t pl_crc32(uint32_t crc, const uint8_t *data, size_t n)
{
    /* zlib takes uInt lengths; feed huge buffers in pieces. */
    while (n > 0) {
        uInt step = n > 0x40000000u ? 0x40000000u : (uInt)n;
        crc = (uint32_t)crc32(crc, data, step);
        data += step;
        n -= step;
    }
    return crc;
}
const char *pl_crc_backend(void) { return "zlib"; }
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pulseline's assembler assumes a little-endian host"
#endif

/* The per-pixel loops get an AVX2 build beside the baseline one, picked at
 * load time, so one portable binary runs at full speed where AVX2 exists.
 * Sanitizer builds (the fuzzer) define PL_NO_CLONES. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(PL_NO_CLONES)
#define PL_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PL_HOT
#endif

static const uint8_t SYNC[4] = {PL_SYNC0, PL_SYNC1, PL_SYNC2, PL_SYNC3};
#define MAX_PACKET (PL_HEADER_SIZE + PL_MAX_PAYLOAD + PL_CRC_SIZE)

typedef struct {
    int in_use;
    uint32_t frame_id;
    uint64_t open_order;
    void *buffer;
    uint8_t *bitmap;       /* lines_per_frame bytes */
    uint32_t received;
    uint32_t pulse_id;
    uint64_t timestamp_us;
} slot_t;

typedef struct {
    pl_output out;
    uint8_t *bitmap;       /* lines_per_frame bytes owned by the queue entry */
} queued_t;

struct pl_asm {
    pl_config cfg;
    size_t npix;           /* pixels per frame */
    float *dark, *gain, *filter_state;
    uint8_t *defect;
    uint32_t *defect_list;
    size_t ndefect;

    slot_t slots[PL_MAX_FRAMES_IN_FLIGHT];
    uint64_t open_counter;
    uint32_t retired[PL_RETIRED_MEMORY];
    size_t nretired, retired_next;

    void *free_buf[PL_MAX_FRAMES_IN_FLIGHT + PL_OUTPUT_QUEUE + 4];
    int nfree;

    queued_t queue[PL_OUTPUT_QUEUE];
    size_t qhead, qlen;
    uint8_t *arena;
    size_t arena_used;

    uint8_t *pend;         /* bytes of an unresolved candidate across feeds: */
    size_t pend_off, pend_len; /* pend[pend_off .. pend_off + pend_len) */
    int flush_phase;

    pl_counters c;
    int last_bad_version;
};

/* ---- small helpers ------------------------------------------------------ */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

static size_t wire_pixel_bytes(uint32_t ppl, uint32_t fmt)
{
    if (fmt == PL_FMT_MONO16) return (size_t)ppl * 2;
    if (fmt == PL_FMT_MONO12P) return ((size_t)ppl * 12 + 7) / 8;
    return 0;
}

static int was_retired(const pl_asm *a, uint32_t frame_id)
{
    for (size_t i = 0; i < a->nretired; i++)
        if (a->retired[i] == frame_id) return 1;
    return 0;
}

static void remember_retired(pl_asm *a, uint32_t frame_id)
{
    a->retired[a->retired_next] = frame_id;
    a->retired_next = (a->retired_next + 1) % PL_RETIRED_MEMORY;
    if (a->nretired < PL_RETIRED_MEMORY) a->nretired++;
}

static slot_t *find_slot(pl_asm *a, uint32_t frame_id)
{
    for (uint32_t i = 0; i < a->cfg.max_frames_in_flight; i++)
        if (a->slots[i].in_use && a->slots[i].frame_id == frame_id) return &a->slots[i];
    return NULL;
}

static int queue_full(const pl_asm *a) { return a->qlen >= PL_OUTPUT_QUEUE; }

static queued_t *queue_push(pl_asm *a)
{
    queued_t *q = &a->queue[(a->qhead + a->qlen) % PL_OUTPUT_QUEUE];
    a->qlen++;
    uint8_t *bm = q->bitmap;
    memset(q, 0, sizeof(*q));
    q->bitmap = bm;
    return q;
}

/* ---- pixels ------------------------------------------------------------- */

/* Unpack one wire line to uint16. Mono12p: byte0 = p0[7:0], byte1 = p0[11:8]
 * | p1[3:0] << 4, byte2 = p1[11:4]. */
PL_HOT static void unpack_u16(uint16_t *restrict dst, const uint8_t *restrict src, uint32_t n, uint32_t fmt)
{
    if (fmt == PL_FMT_MONO16) {
        memcpy(dst, src, (size_t)n * 2);
        return;
    }
    uint32_t pairs = n / 2;
    for (uint32_t i = 0; i < pairs; i++) {
        const uint8_t *s = src + 3 * (size_t)i;
        dst[2 * i] = (uint16_t)(s[0] | ((s[1] & 0x0F) << 8));
        dst[2 * i + 1] = (uint16_t)((s[1] >> 4) | (s[2] << 4));
    }
    if (n & 1) {
        const uint8_t *s = src + 3 * (size_t)pairs;
        dst[n - 1] = (uint16_t)(s[0] | ((s[1] & 0x0F) << 8));
    }
}

/* Unpack and correct one line: (raw - dark) * gain, in float32. */
PL_HOT static void unpack_corrected(float *restrict dst, const uint8_t *restrict src, uint32_t n, uint32_t fmt,
                             const float *restrict dark, const float *restrict gain)
{
    if (fmt == PL_FMT_MONO16) {
        for (uint32_t i = 0; i < n; i++)
            dst[i] = ((float)rd16(src + 2 * (size_t)i) - dark[i]) * gain[i];
        return;
    }
    uint32_t pairs = n / 2;
    for (uint32_t i = 0; i < pairs; i++) {
        const uint8_t *s = src + 3 * (size_t)i;
        float p0 = (float)(s[0] | ((s[1] & 0x0F) << 8));
        float p1 = (float)((s[1] >> 4) | (s[2] << 4));
        dst[2 * i] = (p0 - dark[2 * i]) * gain[2 * i];
        dst[2 * i + 1] = (p1 - dark[2 * i + 1]) * gain[2 * i + 1];
    }
    if (n & 1) {
        const uint8_t *s = src + 3 * (size_t)pairs;
        float p0 = (float)(s[0] | ((s[1] & 0x0F) << 8));
        dst[n - 1] = (p0 - dark[n - 1]) * gain[n - 1];
    }
}

/* ---- frame completion --------------------------------------------------- */

static void replace_defects(pl_asm *a, float *px, const uint8_t *bitmap)
{
    const uint32_t W = a->cfg.pixels_per_line, H = a->cfg.lines_per_frame;
    for (size_t k = 0; k < a->ndefect; k++) {
        uint32_t idx = a->defect_list[k];
        uint32_t y = idx / W, x = idx % W;
        if (!bitmap[y]) continue;
        float sum = 0.0f;
        int count = 0;
        for (int dy = -1; dy <= 1; dy++) {
            int64_t yy = (int64_t)y + dy;
            if (yy < 0 || yy >= (int64_t)H || !bitmap[yy]) continue;
            for (int dx = -1; dx <= 1; dx++) {
                int64_t xx = (int64_t)x + dx;
                if ((dx == 0 && dy == 0) || xx < 0 || xx >= (int64_t)W) continue;
                size_t j = (size_t)yy * W + (size_t)xx;
                if (a->defect[j]) continue;
                sum += px[j];
                count++;
            }
        }
        px[idx] = count ? sum / (float)count : NAN;
    }
}

static void apply_filter(pl_asm *a, float *px, const uint8_t *bitmap)
{
    const uint32_t W = a->cfg.pixels_per_line, H = a->cfg.lines_per_frame;
    const float al = a->cfg.filter_alpha, bl = 1.0f - al;
    for (uint32_t y = 0; y < H; y++) {
        if (!bitmap[y]) continue;
        float *row = px + (size_t)y * W, *st = a->filter_state + (size_t)y * W;
        for (uint32_t x = 0; x < W; x++) {
            float v = row[x], s = st[x];
            if (isnan(v)) continue; /* state keeps its last good value */
            s = isnan(s) ? v : al * v + bl * s;
            st[x] = s;
            row[x] = s;
        }
    }
}

/* Sum, min and max of one row of floats. The plain pass vectorises; only a
 * row that holds NaN (lost data, an unreplaceable defect) takes the slow
 * per-pixel test. Returns the count of non-NaN pixels. */
PL_HOT static size_t row_stats_f32(const float *restrict row, uint32_t n, double *sum, float *mn, float *mx)
{
    double s = 0;
    float lo = INFINITY, hi = -INFINITY;
#pragma omp simd reduction(+ : s) reduction(min : lo) reduction(max : hi)
    for (uint32_t x = 0; x < n; x++) {
        float v = row[x];
        s += v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (!isnan(s)) {
        *sum = s, *mn = lo, *mx = hi;
        return n;
    }
    size_t count = 0;
    s = 0, lo = INFINITY, hi = -INFINITY;
    for (uint32_t x = 0; x < n; x++) {
        float v = row[x];
        if (isnan(v)) continue;
        s += v;
        count++;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    *sum = s, *mn = lo, *mx = hi;
    return count;
}

/* Same for raw pixels: a row is at most 16384 pixels, so 32 bits hold its sum. */
PL_HOT static void row_stats_u16(const uint16_t *restrict row, uint32_t n, uint64_t *sum, uint16_t *mn,
                                 uint16_t *mx)
{
    uint32_t s = 0;
    uint16_t lo = 0xFFFF, hi = 0;
    for (uint32_t x = 0; x < n; x++) {
        uint16_t v = row[x];
        s += v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    *sum = s, *mn = lo, *mx = hi;
}

static void frame_stats(const pl_asm *a, const void *buf, const uint8_t *bitmap, pl_output *o)
{
    const uint32_t W = a->cfg.pixels_per_line, H = a->cfg.lines_per_frame;
    const uint32_t r0 = a->cfg.centre_row0, r1 = r0 + a->cfg.centre_rows;
    const uint32_t c0 = a->cfg.centre_col0, nc = a->cfg.centre_cols;
    double sum = 0, csum = 0, mn = INFINITY, mx = -INFINITY;
    size_t count = 0, ccount = 0;
    for (uint32_t y = 0; y < H; y++) {
        if (!bitmap[y]) continue;
        int centre_row = y >= r0 && y < r1;
        if (a->cfg.float_output) {
            const float *row = (const float *)buf + (size_t)y * W;
            double s;
            float lo, hi;
            size_t cnt = row_stats_f32(row, W, &s, &lo, &hi);
            if (cnt) {
                sum += s;
                count += cnt;
                mn = lo < mn ? lo : mn;
                mx = hi > mx ? hi : mx;
            }
            if (centre_row) {
                ccount += row_stats_f32(row + c0, nc, &s, &lo, &hi);
                csum += s;
            }
        } else {
            const uint16_t *row = (const uint16_t *)buf + (size_t)y * W;
            uint64_t s;
            uint16_t lo, hi;
            row_stats_u16(row, W, &s, &lo, &hi);
            sum += (double)s;
            count += W;
            mn = lo < mn ? lo : mn;
            mx = hi > mx ? hi : mx;
            if (centre_row) {
                row_stats_u16(row + c0, nc, &s, &lo, &hi);
                csum += (double)s;
                ccount += nc;
            }
        }
    }
    o->mean = count ? sum / (double)count : NAN;
    o->min = count ? mn : NAN;
    o->max = count ? mx : NAN;
    o->centre_mean = ccount ? csum / (double)ccount : NAN;
}

/* Emit the frame in slot s. The caller has checked that the queue has room. */
static void emit_frame(pl_asm *a, slot_t *s, int reason, const uint8_t *trailer)
{
    const uint32_t W = a->cfg.pixels_per_line, H = a->cfg.lines_per_frame;
    for (uint32_t y = 0; y < H; y++) {
        if (s->bitmap[y]) continue;
        if (a->cfg.float_output) {
            float *row = (float *)s->buffer + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) row[x] = NAN;
        } else {
            memset((uint16_t *)s->buffer + (size_t)y * W, 0, (size_t)W * 2);
        }
    }
    if (a->cfg.float_output) {
        if (a->ndefect) replace_defects(a, (float *)s->buffer, s->bitmap);
        if (a->cfg.filter_alpha > 0.0f) apply_filter(a, (float *)s->buffer, s->bitmap);
    }
    if (s->received == 0 && trailer) {
        s->pulse_id = rd32(trailer + 4);
        s->timestamp_us = rd64(trailer + 8);
    }
    queued_t *q = queue_push(a);
    pl_output *o = &q->out;
    o->kind = PL_OUT_FRAME;
    o->buffer = s->buffer;
    o->frame_id = s->frame_id;
    o->pulse_id = s->pulse_id;
    o->timestamp_us = s->timestamp_us;
    o->lines_received = s->received;
    o->reason = reason;
    o->has_trailer = trailer != NULL;
    if (trailer) memcpy(o->trailer, trailer, PL_TRAILER_SIZE);
    memcpy(q->bitmap, s->bitmap, H);
    o->line_bitmap = q->bitmap;
    frame_stats(a, s->buffer, s->bitmap, o);

    a->c.frames_emitted++;
    a->c.lines_lost += H - s->received;
    if (s->received == H && trailer)
        a->c.frames_complete++;
    else
        a->c.frames_incomplete++;
    if (reason == PL_DONE_OVERFLOW) a->c.frames_overflowed++;
    remember_retired(a, s->frame_id);
    s->in_use = 0;
    s->buffer = NULL;
}

static slot_t *oldest_slot(pl_asm *a)
{
    slot_t *best = NULL;
    for (uint32_t i = 0; i < a->cfg.max_frames_in_flight; i++) {
        slot_t *s = &a->slots[i];
        if (s->in_use && (!best || s->open_order < best->open_order)) best = s;
    }
    return best;
}

/* Open a slot for frame_id. The caller has checked that a buffer is free and,
 * if every slot is busy, that the queue has room for the evicted frame. */
static slot_t *open_slot(pl_asm *a, uint32_t frame_id)
{
    slot_t *s = NULL;
    for (uint32_t i = 0; i < a->cfg.max_frames_in_flight && !s; i++)
        if (!a->slots[i].in_use) s = &a->slots[i];
    if (!s) {
        s = oldest_slot(a);
        emit_frame(a, s, PL_DONE_OVERFLOW, NULL);
    }
    s->in_use = 1;
    s->frame_id = frame_id;
    s->open_order = a->open_counter++;
    s->buffer = a->free_buf[--a->nfree];
    s->received = 0;
    s->pulse_id = 0;
    s->timestamp_us = 0;
    memset(s->bitmap, 0, a->cfg.lines_per_frame);
    return s;
}

static int all_slots_busy(const pl_asm *a)
{
    for (uint32_t i = 0; i < a->cfg.max_frames_in_flight; i++)
        if (!a->slots[i].in_use) return 0;
    return 1;
}

/* What opening a new frame needs; PL_FEED_DONE when it can go ahead. */
static int open_needs(const pl_asm *a, int also_emits)
{
    if (a->nfree == 0) return PL_FEED_NEED_BUFFER;
    size_t room = PL_OUTPUT_QUEUE - a->qlen;
    size_t need = (size_t)(all_slots_busy(a) ? 1 : 0) + (size_t)(also_emits ? 1 : 0);
    return room >= need ? PL_FEED_DONE : PL_FEED_OUTPUT_FULL;
}

/* ---- packet dispatch ---------------------------------------------------- */

/* Handle one good packet. Returns PL_FEED_DONE when consumed, or a blocking
 * status with no state changed. */
static int dispatch(pl_asm *a, const uint8_t *pkt)
{
    const uint8_t version = pkt[4], type = pkt[5];
    const uint16_t seq = rd16(pkt + 6);
    const uint32_t len = rd16(pkt + 8);
    const uint8_t *pl = pkt + PL_HEADER_SIZE;

    if (version != PL_PROTOCOL_VERSION) {
        a->c.bad_version++;
        a->last_bad_version = version;
        return PL_FEED_DONE;
    }
    if (type == PL_PKT_LINE) {
        if (len < PL_LINE_HEADER_SIZE) goto malformed;
        uint32_t frame_id = rd32(pl);
        uint32_t line = rd16(pl + 4), lpf = rd16(pl + 6), ppl = rd16(pl + 8), fmt = pl[10];
        size_t pb = wire_pixel_bytes(ppl, fmt);
        if (pb == 0 || len != PL_LINE_HEADER_SIZE + pb) goto malformed;
        if (ppl != a->cfg.pixels_per_line || lpf != a->cfg.lines_per_frame || fmt != a->cfg.pixel_format ||
            line >= lpf) {
            a->c.geometry_mismatch++;
            return PL_FEED_DONE;
        }
        slot_t *s = find_slot(a, frame_id);
        if (!s) {
            if (was_retired(a, frame_id)) {
                a->c.lines_late++;
                return PL_FEED_DONE;
            }
            int st = open_needs(a, 0);
            if (st != PL_FEED_DONE) return st;
            s = open_slot(a, frame_id);
        }
        if (s->bitmap[line]) {
            a->c.lines_duplicate++;
            return PL_FEED_DONE;
        }
        const uint32_t W = a->cfg.pixels_per_line;
        const uint8_t *src = pl + PL_LINE_HEADER_SIZE;
        if (a->cfg.float_output)
            unpack_corrected((float *)s->buffer + (size_t)line * W, src, W, fmt, a->dark + (size_t)line * W,
                             a->gain + (size_t)line * W);
        else
            unpack_u16((uint16_t *)s->buffer + (size_t)line * W, src, W, fmt);
        if (s->received == 0) {
            s->pulse_id = rd32(pl + 12);
            s->timestamp_us = rd64(pl + 16);
        }
        s->bitmap[line] = 1;
        s->received++;
        a->c.lines_ok++;
        return PL_FEED_DONE;
    }
    if (type == PL_PKT_TRAILER) {
        if (len != PL_TRAILER_SIZE) goto malformed;
        uint32_t frame_id = rd32(pl);
        if (rd16(pl + 16) != a->cfg.lines_per_frame) {
            a->c.geometry_mismatch++;
            return PL_FEED_DONE;
        }
        slot_t *s = find_slot(a, frame_id);
        if (!s) {
            if (was_retired(a, frame_id)) {
                a->c.trailers_late++;
                return PL_FEED_DONE;
            }
            /* Every line of this frame was lost: the frame still happened. */
            int st = open_needs(a, 1);
            if (st != PL_FEED_DONE) return st;
            s = open_slot(a, frame_id);
        } else if (queue_full(a)) {
            return PL_FEED_OUTPUT_FULL;
        }
        emit_frame(a, s, PL_DONE_TRAILER, pl);
        return PL_FEED_DONE;
    }
    /* Commands, responses, events, logs, and types this host does not know:
     * handed out as they are; the session decides. */
    if (queue_full(a) || a->arena_used + len > PL_MESSAGE_ARENA) return PL_FEED_OUTPUT_FULL;
    queued_t *q = queue_push(a);
    q->out.kind = PL_OUT_PACKET;
    q->out.packet_type = type;
    q->out.packet_seq = seq;
    q->out.payload = a->arena + a->arena_used;
    q->out.payload_len = len;
    memcpy(a->arena + a->arena_used, pl, len);
    a->arena_used += len;
    a->c.messages++;
    return PL_FEED_DONE;

malformed:
    a->c.malformed++;
    return PL_FEED_DONE;
}

/* ---- stream parsing ----------------------------------------------------- */

enum { STEP_TAKEN, STEP_NEED_MORE, STEP_BLOCKED };

/* One step at p[0..n): skip bytes up to a sync marker, or take one packet.
 * *used is what was consumed; *need (STEP_NEED_MORE) is how many bytes from p
 * the current candidate needs; *status (STEP_BLOCKED) why it could not go on.
 * With eof, an unfinished candidate is a failed one. */
static int step(pl_asm *a, const uint8_t *p, size_t n, int eof, size_t *used, size_t *need, int *status)
{
    *used = 0;
    if (n == 0) {
        *need = 1;
        return STEP_NEED_MORE;
    }
    if (p[0] != PL_SYNC0 || (n >= 4 && memcmp(p, SYNC, 4) != 0) || (n < 4 && memcmp(p, SYNC, n) != 0)) {
        /* Not at a marker: skip to the next possible one. */
        const uint8_t *q = memchr(p + 1, PL_SYNC0, n - 1);
        size_t skip = q ? (size_t)(q - p) : n;
        a->c.bytes_skipped += skip;
        *used = skip;
        return STEP_TAKEN;
    }
    size_t total = PL_HEADER_SIZE;
    if (n >= PL_HEADER_SIZE) {
        if ((pl_crc32(0, p + 4, 6) & 0xFFFFu) != rd16(p + 10)) {
            a->c.header_errors++;
            a->c.bytes_skipped += 1;
            *used = 1;
            return STEP_TAKEN;
        }
        total = PL_HEADER_SIZE + rd16(p + 8) + PL_CRC_SIZE;
    }
    if (n < total) {
        if (!eof) {
            *need = total;
            return STEP_NEED_MORE;
        }
        a->c.bytes_skipped += 1;
        *used = 1;
        return STEP_TAKEN;
    }
    const size_t body = total - PL_HEADER_SIZE - PL_CRC_SIZE;
    if (pl_crc32(0, p + 4, PL_HEADER_SIZE - 4 + body) != rd32(p + total - PL_CRC_SIZE)) {
        a->c.crc_errors++;
        a->c.bytes_skipped += 1;
        *used = 1;
        return STEP_TAKEN;
    }
    int st = dispatch(a, p);
    if (st != PL_FEED_DONE) {
        *status = st;
        return STEP_BLOCKED;
    }
    a->c.packets_ok++;
    *used = total;
    return STEP_TAKEN;
}

/* Work through the pending bytes, topping them up from data exactly as far as
 * the current candidate needs, so that pending never grows past one packet
 * and the common case parses straight from the caller's memory. */
static int run_pending(pl_asm *a, const uint8_t *data, size_t n, size_t *taken, int eof)
{
    *taken = 0;
    while (a->pend_len > 0) {
        size_t used = 0, need = 0;
        int status = PL_FEED_DONE;
        int r = step(a, a->pend + a->pend_off, a->pend_len, eof && *taken == n, &used, &need, &status);
        if (r == STEP_BLOCKED) return status;
        if (r == STEP_TAKEN) {
            /* Advance instead of moving: recovery from a long bogus candidate
             * stays linear in the bytes held. */
            a->pend_off += used;
            a->pend_len -= used;
            if (a->pend_len == 0) a->pend_off = 0;
            continue;
        }
        size_t add = need - a->pend_len;
        if (add > n - *taken) add = n - *taken;
        if (add == 0) return PL_FEED_DONE; /* wait for more input */
        if (a->pend_off + a->pend_len + add > MAX_PACKET) {
            memmove(a->pend, a->pend + a->pend_off, a->pend_len);
            a->pend_off = 0;
        }
        memcpy(a->pend + a->pend_off + a->pend_len, data + *taken, add);
        a->pend_len += add;
        *taken += add;
    }
    return PL_FEED_DONE;
}

static void reset_arena_if_drained(pl_asm *a)
{
    if (a->qlen == 0) a->arena_used = 0;
}

size_t pl_feed(pl_asm *a, const uint8_t *data, size_t n, int *status)
{
    size_t pos = 0;
    *status = PL_FEED_DONE;
    reset_arena_if_drained(a);
    if (a->pend_len > 0) {
        int st = run_pending(a, data, n, &pos, 0);
        if (st != PL_FEED_DONE || a->pend_len > 0) {
            *status = st;
            a->c.bytes_in += pos;
            return pos;
        }
    }
    while (pos < n) {
        size_t used = 0, need = 0;
        int st = PL_FEED_DONE;
        int r = step(a, data + pos, n - pos, 0, &used, &need, &st);
        if (r == STEP_BLOCKED) {
            *status = st;
            break;
        }
        if (r == STEP_NEED_MORE) {
            /* The candidate straddles this chunk's end: keep its bytes. */
            memcpy(a->pend, data + pos, n - pos);
            a->pend_off = 0;
            a->pend_len = n - pos;
            pos = n;
            break;
        }
        pos += used;
    }
    a->c.bytes_in += pos;
    return pos;
}

int pl_flush(pl_asm *a)
{
    reset_arena_if_drained(a);
    if (a->flush_phase == 0) {
        size_t taken;
        int st = run_pending(a, NULL, 0, &taken, 1);
        if (st != PL_FEED_DONE) return st;
        a->flush_phase = 1;
    }
    while (oldest_slot(a)) {
        if (queue_full(a)) return PL_FEED_OUTPUT_FULL;
        emit_frame(a, oldest_slot(a), PL_DONE_FLUSH, NULL);
    }
    a->flush_phase = 0;
    return PL_FEED_DONE;
}

int pl_next_output(pl_asm *a, pl_output *out)
{
    if (a->qlen == 0) return 0;
    *out = a->queue[a->qhead].out;
    a->qhead = (a->qhead + 1) % PL_OUTPUT_QUEUE;
    a->qlen--;
    return 1;
}

int pl_give_buffer(pl_asm *a, void *buffer)
{
    const int cap = (int)(sizeof(a->free_buf) / sizeof(a->free_buf[0]));
    if (!buffer || a->nfree >= cap) return 0;
    a->free_buf[a->nfree++] = buffer;
    return 1;
}

int pl_free_buffers(const pl_asm *a) { return a->nfree; }

void pl_get_counters(const pl_asm *a, pl_counters *c) { *c = a->c; }

int pl_last_bad_version(const pl_asm *a) { return a->last_bad_version; }

/* ---- life cycle --------------------------------------------------------- */

void pl_destroy(pl_asm *a)
{
    if (!a) return;
    free(a->dark);
    free(a->gain);
    free(a->filter_state);
    free(a->defect);
    free(a->defect_list);
    for (int i = 0; i < PL_MAX_FRAMES_IN_FLIGHT; i++) free(a->slots[i].bitmap);
    for (int i = 0; i < PL_OUTPUT_QUEUE; i++) free(a->queue[i].bitmap);
    free(a->arena);
    free(a->pend);
    free(a);
}

#define FAIL(...)                                   \
    do {                                            \
        if (err && errlen) snprintf(err, errlen, __VA_ARGS__); \
        pl_destroy(a);                              \
        return NULL;                                \
    } while (0)

pl_asm *pl_create(const pl_config *cfg, const float *dark, const float *gain, const uint8_t *defect_map,
                  char *err, size_t errlen)
{
    pl_asm *a = NULL;
    if (!cfg) FAIL("no configuration");
    const uint32_t W = cfg->pixels_per_line, H = cfg->lines_per_frame;
    if (W < 1 || W > PL_MAX_PIXELS_PER_LINE)
        FAIL("pixels_per_line must be 1..%d, got %u", PL_MAX_PIXELS_PER_LINE, W);
    if (H < 1 || H > PL_MAX_LINES_PER_FRAME)
        FAIL("lines_per_frame must be 1..%d, got %u", PL_MAX_LINES_PER_FRAME, H);
    size_t pb = wire_pixel_bytes(W, cfg->pixel_format);
    if (pb == 0) FAIL("unknown pixel format %u", cfg->pixel_format);
    if (PL_LINE_HEADER_SIZE + pb > PL_MAX_PAYLOAD)
        FAIL("a line of %u pixels does not fit in one packet", W);
    if (cfg->max_frames_in_flight < 1 || cfg->max_frames_in_flight > PL_MAX_FRAMES_IN_FLIGHT)
        FAIL("max_frames_in_flight must be 1..%d, got %u", PL_MAX_FRAMES_IN_FLIGHT, cfg->max_frames_in_flight);
    if (!(cfg->filter_alpha >= 0.0f && cfg->filter_alpha <= 1.0f))
        FAIL("filter_alpha must be in [0, 1]");
    if (cfg->filter_alpha > 0.0f && !cfg->float_output) FAIL("the recursive filter needs float output");
    if ((uint64_t)cfg->centre_row0 + cfg->centre_rows > H || (uint64_t)cfg->centre_col0 + cfg->centre_cols > W)
        FAIL("centre region lies outside the frame");

    a = calloc(1, sizeof(*a));
    if (!a) FAIL("out of memory");
    a->cfg = *cfg;
    a->last_bad_version = -1;
    a->npix = (size_t)W * H;
    for (int i = 0; i < PL_MAX_FRAMES_IN_FLIGHT; i++)
        if (!(a->slots[i].bitmap = calloc(H, 1))) FAIL("out of memory");
    for (int i = 0; i < PL_OUTPUT_QUEUE; i++)
        if (!(a->queue[i].bitmap = calloc(H, 1))) FAIL("out of memory");
    if (!(a->arena = malloc(PL_MESSAGE_ARENA))) FAIL("out of memory");
    if (!(a->pend = malloc(MAX_PACKET))) FAIL("out of memory");

    if (cfg->float_output) {
        a->dark = malloc(a->npix * sizeof(float));
        a->gain = malloc(a->npix * sizeof(float));
        a->defect = calloc(a->npix, 1);
        if (!a->dark || !a->gain || !a->defect) FAIL("out of memory");
        for (size_t i = 0; i < a->npix; i++) {
            a->dark[i] = dark ? dark[i] : 0.0f;
            a->gain[i] = gain ? gain[i] : 1.0f;
            a->defect[i] = defect_map && defect_map[i] ? 1 : 0;
            a->ndefect += a->defect[i];
        }
        if (a->ndefect) {
            if (!(a->defect_list = malloc(a->ndefect * sizeof(uint32_t)))) FAIL("out of memory");
            size_t k = 0;
            for (size_t i = 0; i < a->npix; i++)
                if (a->defect[i]) a->defect_list[k++] = (uint32_t)i;
        }
        if (cfg->filter_alpha > 0.0f) {
            if (!(a->filter_state = malloc(a->npix * sizeof(float)))) FAIL("out of memory");
            for (size_t i = 0; i < a->npix; i++) a->filter_state[i] = NAN;
        }
    } else if (dark || gain || defect_map) {
        FAIL("dark, gain and defect maps need float output");
    }
    return a;
}
