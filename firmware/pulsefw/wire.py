# pulseline wire protocol: constants, packet encoder, and the board-side
# decoder for host->board traffic. Runs on MicroPython and, for the host's
# tests and simulator, on CPython. docs/protocol.md is the prose of this file;
# native/pulseline_asm.h repeats the constants and a test keeps them equal.
import struct
from binascii import crc32

from micropython import const

from .crc import crc32_into, crc32_span_into

PROTOCOL_VERSION = const(1)

# Framing: sync(4) version(1) type(1) seq(2) length(2) header_check(2) |
# payload | crc32(4). header_check is the low 16 bits of the CRC-32 of
# version..length: a receiver rejects a damaged header (a corrupt length
# above all) at once instead of waiting for bytes that may never come. The
# packet CRC covers version..payload (everything after the sync marker).
SYNC = b"\xa5\x5aPL"
SYNC0 = const(0xA5)
SYNC1 = const(0x5A)
SYNC2 = const(0x50)
SYNC3 = const(0x4C)
HEADER_SIZE = const(12)
CRC_SIZE = const(4)
MAX_PAYLOAD = const(65535)

# Packet types.
PKT_COMMAND = const(1)  # host -> board
PKT_RESPONSE = const(2)  # board -> host, answers one command
PKT_EVENT = const(3)  # board -> host, unsolicited
PKT_LINE = const(4)  # board -> host, one detector line
PKT_TRAILER = const(5)  # board -> host, closes a frame
PKT_LOG = const(6)  # board -> host, firmware log text

# Pixel formats on the wire.
FMT_MONO16 = const(1)  # 16-bit little-endian, 2 bytes per pixel
FMT_MONO12P = const(2)  # GenICam Mono12p: 2 pixels in 3 bytes, LSB first


# Packet header after the sync marker (little-endian): version u8, type u8,
# seq u16, payload length u16 (then the header check u16).
PACKET_HEADER_FORMAT = "<BBHH"

# The head of each message payload (little-endian); what follows it is JSON
# (commands, responses, events) or text (logs). Encoders and decoders, on the
# board and on the host, take these, never a format of their own.
COMMAND_HEAD_FORMAT = "<B"  # opcode u8
COMMAND_HEAD_SIZE = const(1)
RESPONSE_HEAD_FORMAT = "<HB"  # command seq u16, status u8 (ERR_*)
RESPONSE_HEAD_SIZE = const(3)
EVENT_HEAD_FORMAT = "<HQ"  # event code u16 (EV_*), board time us u64
EVENT_HEAD_SIZE = const(10)
LOG_HEAD_FORMAT = "<BQ"  # level u8, board time us u64
LOG_HEAD_SIZE = const(9)

# Line data payload header (little-endian), followed by the pixels.
#   frame_id u32, line_index u16, lines_per_frame u16, pixels_per_line u16,
#   pixel_format u8, flags u8, pulse_id u32, timestamp_us u64
LINE_HEADER_FORMAT = "<IHHHBBIQ"
LINE_HEADER_SIZE = const(24)
MAX_PIXELS_PER_LINE = const(16384)
MAX_LINES_PER_FRAME = const(16384)

# Frame trailer payload (little-endian): what the board actually delivered.
#   frame_id u32, pulse_id u32, timestamp_us u64, lines_per_frame u16,
#   lines_sent u16, kv f32, ma f32, pulse_width_ms f32,
#   air_kerma_ugy f32 (reference point), kap_ugy_m2 f32 (kerma-area product)
TRAILER_FORMAT = "<IIQHHfffff"
TRAILER_SIZE = const(40)

# Host->board byte stuffing: Ctrl-C (0x03) must never appear in ordinary
# host->board traffic, so that a raw 0x03 always means "interrupt" and
# mpremote can reach the REPL. 0x03 and ESC are sent as ESC, byte ^ ESC_XOR.
CTRL_C = const(0x03)
ESC = const(0x10)
ESC_XOR = const(0x20)


def pixel_bytes(pixels_per_line, pixel_format):
    """Bytes one line of pixels takes on the wire."""
    if pixel_format == FMT_MONO16:
        return 2 * pixels_per_line
    if pixel_format == FMT_MONO12P:
        return (pixels_per_line * 12 + 7) // 8
    raise ValueError("unknown pixel format")


def header_check(head6):
    """Check field of the 6 header bytes version..length."""
    return crc32(head6) & 0xFFFF


def encode(ptype, seq, payload):
    """One complete packet as bytes (allocates; for commands, events, logs)."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError("payload too long")
    head = struct.pack(PACKET_HEADER_FORMAT, PROTOCOL_VERSION, ptype, seq & 0xFFFF, n)
    head += struct.pack("<H", header_check(head))
    crc = crc32(payload, crc32(head))
    return SYNC + head + payload + struct.pack("<I", crc & 0xFFFFFFFF)


def put_u64(buf, offset, hi, lo):
    # Writes hi * 2**30 + lo as u64 LE using only small-int arithmetic, so a
    # 32-bit board does not allocate a long int per line (lo < 2**30, as
    # time.ticks_us wraps there; hi counts the wraps).
    buf[offset] = lo & 0xFF
    buf[offset + 1] = (lo >> 8) & 0xFF
    buf[offset + 2] = (lo >> 16) & 0xFF
    buf[offset + 3] = ((lo >> 24) & 0x3F) | ((hi & 0x3) << 6)
    hi >>= 2
    buf[offset + 4] = hi & 0xFF
    buf[offset + 5] = (hi >> 8) & 0xFF
    buf[offset + 6] = (hi >> 16) & 0xFF
    buf[offset + 7] = (hi >> 24) & 0xFF


def put_seq_and_check(head, seq, check_part, scratch):
    """A preallocated packet's seq, then its header check (check_part: a
    view of head[4:10]), without allocating: CRCs go straight into buffers,
    as on a 32-bit board their values would be long integers (crc.py)."""
    head[6] = seq & 0xFF
    head[7] = (seq >> 8) & 0xFF
    crc32_into(scratch, 0, check_part)
    head[10] = scratch[0]
    head[11] = scratch[1]


class LineEncoder:
    """Line packets for a fixed geometry with buffers allocated once.

    `write_line` emits a packet as three writes (head, pixels, crc) so the
    pixels never get copied; `line_packet` returns one bytes object.
    """

    def __init__(self, pixels_per_line, lines_per_frame, pixel_format):
        if not 1 <= pixels_per_line <= MAX_PIXELS_PER_LINE:
            raise ValueError("pixels_per_line out of range")
        if not 1 <= lines_per_frame <= MAX_LINES_PER_FRAME:
            raise ValueError("lines_per_frame out of range")
        self.pixels_per_line = pixels_per_line
        self.lines_per_frame = lines_per_frame
        self.pixel_format = pixel_format
        self.pixel_bytes = pixel_bytes(pixels_per_line, pixel_format)
        self.payload_size = LINE_HEADER_SIZE + self.pixel_bytes
        self.head = bytearray(HEADER_SIZE + LINE_HEADER_SIZE)
        self.head[0:4] = SYNC
        struct.pack_into(PACKET_HEADER_FORMAT, self.head, 4, PROTOCOL_VERSION, PKT_LINE, 0, self.payload_size)
        struct.pack_into("<HHB", self.head, HEADER_SIZE + 6, lines_per_frame, pixels_per_line, pixel_format)
        self.crc = bytearray(CRC_SIZE)
        self._head_mv = memoryview(self.head)
        # (Public: the readout's pump writes lines with these itself.)
        self.check_scratch = bytearray(CRC_SIZE)
        self.crc_part = self._head_mv[4:]
        self.check_part = self._head_mv[4:10]

    def _fill(self, seq, frame_id, line_index, pulse_id, ts_hi, ts_lo, pixels):
        # (readout.Readout.pump does the same, written out: keep them alike.)
        if len(pixels) != self.pixel_bytes:
            raise ValueError("pixel data has the wrong length")
        h = self.head
        put_seq_and_check(h, seq, self.check_part, self.check_scratch)
        struct.pack_into("<IH", h, HEADER_SIZE, frame_id, line_index)
        struct.pack_into("<I", h, HEADER_SIZE + 12, pulse_id)
        put_u64(h, HEADER_SIZE + 16, ts_hi, ts_lo)
        crc32_into(self.crc, 0, self.crc_part, pixels)

    def write_line(self, write, seq, frame_id, line_index, pulse_id, ts_hi, ts_lo, pixels):
        self._fill(seq, frame_id, line_index, pulse_id, ts_hi, ts_lo, pixels)
        write(self.head)
        write(pixels)
        write(self.crc)

    def line_packet(self, seq, frame_id, line_index, pulse_id, timestamp_us, pixels):
        self._fill(seq, frame_id, line_index, pulse_id, timestamp_us >> 30, timestamp_us & 0x3FFFFFFF, pixels)
        return bytes(self.head) + bytes(pixels) + bytes(self.crc)


class TrailerEncoder:
    """Trailer packets in one buffer allocated once (a frame's trailer is
    sent every pulse). The time is given as ticks.BoardClock splits it."""

    def __init__(self):
        self.packet = bytearray(HEADER_SIZE + TRAILER_SIZE + CRC_SIZE)
        p = self.packet
        p[0:4] = SYNC
        struct.pack_into(PACKET_HEADER_FORMAT, p, 4, PROTOCOL_VERSION, PKT_TRAILER, 0, TRAILER_SIZE)
        mv = memoryview(p)
        self._check_part = mv[4:10]
        self._crc_part = mv[4:HEADER_SIZE + TRAILER_SIZE]
        self._check = bytearray(CRC_SIZE)

    def fill(self, seq, frame_id, pulse_id, ts_hi, ts_lo, lines_per_frame, lines_sent,
             kv, ma, pulse_width_ms, air_kerma_ugy, kap_ugy_m2):
        p = self.packet
        put_seq_and_check(p, seq, self._check_part, self._check)
        struct.pack_into("<II", p, HEADER_SIZE, frame_id, pulse_id)
        put_u64(p, HEADER_SIZE + 8, ts_hi, ts_lo)
        struct.pack_into("<HHfffff", p, HEADER_SIZE + 16, lines_per_frame, lines_sent, kv, ma, pulse_width_ms,
                         air_kerma_ugy, kap_ugy_m2)
        crc32_into(p, HEADER_SIZE + TRAILER_SIZE, self._crc_part)
        return p


def trailer_payload(frame_id, pulse_id, timestamp_us, lines_per_frame, lines_sent,
                    kv, ma, pulse_width_ms, air_kerma_ugy, kap_ugy_m2):
    return struct.pack(TRAILER_FORMAT, frame_id, pulse_id, timestamp_us, lines_per_frame,
                       lines_sent, kv, ma, pulse_width_ms, air_kerma_ugy, kap_ugy_m2)


def response_payload(command_seq, status, body):
    # body: JSON text (status ERR_OK) or a one-line message (errors), as bytes.
    return struct.pack(RESPONSE_HEAD_FORMAT, command_seq & 0xFFFF, status) + body


def command_payload(opcode, args_json):
    return struct.pack(COMMAND_HEAD_FORMAT, opcode) + args_json


def stuff(packet):
    """Host->board byte stuffing (see CTRL_C / ESC above)."""
    if CTRL_C not in packet and ESC not in packet:
        return packet
    out = bytearray()
    for b in packet:
        if b == CTRL_C or b == ESC:
            out.append(ESC)
            out.append(b ^ ESC_XOR)
        else:
            out.append(b)
    return bytes(out)


PING_BODY_HEAD = b'{"t_us":'
PING_DIGITS = const(20)  # board time, right-aligned (JSON takes the spaces before it)


class PingAnswer:
    """The answer to a ping, {"t_us": board time}, in one packet made once:
    the heartbeat's answer allocates nothing. The time fills a fixed field,
    so the packet's length, its header check's inputs but the seq, and its
    views never change; its digits come from the ticks and their wraps in
    small integers (one integer would be a long one on a 32-bit board)."""

    def __init__(self):
        plen = RESPONSE_HEAD_SIZE + len(PING_BODY_HEAD) + PING_DIGITS + 1
        self.packet = bytearray(HEADER_SIZE + plen + CRC_SIZE)
        p = self.packet
        p[0:4] = SYNC
        struct.pack_into(PACKET_HEADER_FORMAT, p, 4, PROTOCOL_VERSION, PKT_RESPONSE, 0, plen)
        body = HEADER_SIZE + RESPONSE_HEAD_SIZE  # (status ERR_OK: 0, as made)
        p[body:body + len(PING_BODY_HEAD)] = PING_BODY_HEAD
        self._digits = body + len(PING_BODY_HEAD)
        p[self._digits + PING_DIGITS] = 0x7D  # }
        mv = memoryview(p)
        self._check_part = mv[4:10]
        self._crc_part = mv[4:HEADER_SIZE + plen]
        self._crc_at = HEADER_SIZE + plen
        self._scratch = bytearray(CRC_SIZE)

    def fill(self, seq, command_seq, hi, tick):
        """The packet answering command_seq at board time hi * 2**30 + tick."""
        p = self.packet
        p[HEADER_SIZE] = command_seq & 0xFF
        p[HEADER_SIZE + 1] = (command_seq >> 8) & 0xFF
        # Decimal digits of the time, in 15-bit limbs (a remainder times
        # 2**15 plus a limb stays a small integer).
        l3 = hi >> 15
        l2 = hi & 0x7FFF
        l1 = tick >> 15
        l0 = tick & 0x7FFF
        i = self._digits + PING_DIGITS
        while True:
            r = l3 % 10
            l3 //= 10
            t = r * 32768 + l2
            l2 = t // 10
            t = (t % 10) * 32768 + l1
            l1 = t // 10
            t = (t % 10) * 32768 + l0
            l0 = t // 10
            i -= 1
            p[i] = 48 + t % 10
            if not (l3 or l2 or l1 or l0):
                break
        while i > self._digits:
            i -= 1
            p[i] = 0x20
        put_seq_and_check(p, seq, self._check_part, self._scratch)
        crc32_into(p, self._crc_at, self._crc_part)
        return p


class CommandDecoder:
    """Board-side decoder of the stuffed host->board stream.

    Feed bytes as they arrive; `feed` returns a list of
    (version, type, seq, payload) for every packet whose CRC holds, and
    (version, type, seq, None) for a good header announcing a payload over
    max_payload (the packet itself is skipped). Damaged
    input is skipped with the host assembler's resynchronisation rule: after
    a failed candidate, scanning resumes one byte after its sync marker. The
    buffer is allocated once; a packet longer than max_payload is refused.

    A packet cut short (a host that died mid-write, a header whose length
    was damaged into another good header) must not hold the bytes after it:
    a host writes each packet whole, so a good header starting inside an
    unfinished packet means that packet never ends, and it is dropped at
    once; with nothing after it, the board drops it after a gap in the
    traffic (drop_partial, called by the main loop).
    """

    def __init__(self, max_payload=1024):
        self.max_payload = max_payload
        self.buf = bytearray(HEADER_SIZE + max_payload + CRC_SIZE)
        self.mv = memoryview(self.buf)
        # The checks allocate nothing: a CRC's value would be a long integer
        # on a 32-bit board, so it goes into _crc, over spans of buf.
        self._crc = bytearray(CRC_SIZE)
        self.n = 0
        self.escaped = False
        self.bytes_skipped = 0
        self.header_errors = 0
        self.crc_errors = 0
        self.too_long = 0
        self.partial_dropped = 0  # packets cut short: dropped for a later good header, or after a gap

    def feed(self, data):
        """Every packet in data as a list of (version, type, seq, payload)
        (payload: bytes, or None for one announced too long)."""
        out = []  # type: list

        def keep(version, ptype, seq, length):
            out.append((version, ptype, seq, None if length < 0 else bytes(self.payload(length))))

        self.feed_into(data, len(data), keep)
        return out

    def feed_into(self, data, n, handler):
        """The main loop's way: data[:n] taken in, and handler(version,
        type, seq, length) called for each packet whose checks hold
        (length -1: one announced too long). During the call its payload
        is buf[HEADER_SIZE:HEADER_SIZE + length] (payload() gives a view
        of it). Allocates nothing."""
        buf = self.buf
        for i in range(n):
            b = data[i]
            if self.escaped:
                self.escaped = False
                if b == CTRL_C ^ ESC_XOR or b == ESC ^ ESC_XOR:
                    b ^= ESC_XOR
                else:
                    # Not a valid escape: the ESC was line noise. Drop it and
                    # keep this byte as it is, so noise cannot eat a sync byte.
                    self.bytes_skipped += 1
                    if b == ESC:
                        self.escaped = True
                        continue
            elif b == ESC:
                self.escaped = True
                continue
            buf[self.n] = b
            self.n += 1
            if self.n == len(buf):
                self._parse(handler)  # full: make room (the buffer holds the largest packet)
        self._parse(handler)

    def partial(self):
        """Bytes of an unfinished packet are waiting."""
        return self.n > 0

    def drop_partial(self):
        """Drop what is buffered: the rest of that packet is not coming."""
        if self.n:
            self.partial_dropped += 1
            self.bytes_skipped += self.n
            self.n = 0
        self.escaped = False

    def payload(self, length):
        """A view of the packet's payload being handled (valid during the
        handler's call only)."""
        return self.mv[HEADER_SIZE:HEADER_SIZE + length]

    def _header_holds(self, i):
        """The header check of the header at i holds."""
        crc = self._crc
        crc32_span_into(crc, 0, self.buf, i + 4, 6)
        return crc[0] == self.buf[i + 10] and crc[1] == self.buf[i + 11]

    def _good_header_at(self, i):
        """A sync marker with a header whose check holds starts at i."""
        buf = self.buf
        return (buf[i] == SYNC0 and buf[i + 1] == SYNC1 and buf[i + 2] == SYNC2 and buf[i + 3] == SYNC3
                and self._header_holds(i))

    def _later_header(self):
        """Where a good header starts after the sync marker at 0 (-1: none
        yet). Searched from just past that marker: a packet cut inside its
        own header leaves the next one's marker there."""
        i = 4
        while True:
            i = self.buf.find(SYNC, i, self.n)
            if i < 0 or self.n - i < HEADER_SIZE:
                return -1
            if self._good_header_at(i):
                return i
            i += 1

    def _discard(self, k):
        # Usually nothing is left (a packet comes whole): then nothing is
        # moved or made. What is left moves down through a copy (C speed):
        # byte by byte in Python, a burst of packets (the host's pings
        # queued while the board was busy) cost a Pico its watchdog.
        n = self.n - k
        if n > 0:
            buf = self.buf
            buf[:n] = buf[k:k + n]
        self.n = n if n > 0 else 0

    def _parse(self, handler):
        buf = self.buf
        crc = self._crc
        while self.n:
            # Drop bytes that cannot start a sync marker.
            i = 0
            while i < self.n and (buf[i] != SYNC0 or (self.n - i >= 2 and buf[i + 1] != SYNC1)
                                  or (self.n - i >= 3 and buf[i + 2] != SYNC2)
                                  or (self.n - i >= 4 and buf[i + 3] != SYNC3)):
                i += 1
            if i:
                self.bytes_skipped += i
                self._discard(i)
                continue
            if self.n < HEADER_SIZE:
                return
            length = buf[8] | (buf[9] << 8)
            # A header that fails its check, or announces more than this
            # board accepts, is no packet start (so the buffer, sized for the
            # largest acceptable packet, can never overflow).
            if not self._header_holds(0):
                self.header_errors += 1
                self.bytes_skipped += 1
                self._discard(1)
                continue
            if length > self.max_payload:
                # A good header announcing more than this board takes: report
                # it (payload None) so the sender gets an answer, then scan on.
                self.too_long += 1
                handler(buf[4], buf[5], buf[6] | (buf[7] << 8), -1)
                self.bytes_skipped += 1
                self._discard(1)
                continue
            total = HEADER_SIZE + length + CRC_SIZE
            if self.n < total:
                j = self._later_header()
                if j < 0:
                    return
                # Cut short: the host has sent a new packet since.
                self.partial_dropped += 1
                self.bytes_skipped += j
                self._discard(j)
                continue
            crc32_span_into(crc, 0, buf, 4, HEADER_SIZE - 4 + length)
            if (crc[0] != buf[total - 4] or crc[1] != buf[total - 3] or crc[2] != buf[total - 2]
                    or crc[3] != buf[total - 1]):
                self.crc_errors += 1
                self.bytes_skipped += 1
                self._discard(1)
                continue
            handler(buf[4], buf[5], buf[6] | (buf[7] << 8), length)
            self._discard(total)
