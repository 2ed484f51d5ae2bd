"""Plain-Python reference of the frame assembler: the test oracle and the
slow end of `make bench`. It follows the rules of docs/protocol.md and
docs/architecture.md directly, with whole-stream buffering and plain floats,
and must agree with the native assembler frame by frame and counter by
counter (floats to rounding)."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import numpy as np

from .frames import COUNTER_NAMES, AssemblerConfig, Frame
from .protocol import Packet, Trailer, wire

Output = Frame | Packet
NAN = float("nan")


def unpack_line(data: bytes, pixels: int, pixel_format: int) -> list[int]:
    """Wire bytes of one line to pixel values."""
    if pixel_format == wire.FMT_MONO16:
        return [data[2 * i] | (data[2 * i + 1] << 8) for i in range(pixels)]
    out = []
    for i in range(pixels):
        b = data[3 * (i // 2): 3 * (i // 2) + 3]
        out.append(b[0] | ((b[1] & 0x0F) << 8) if i % 2 == 0 else (b[1] >> 4) | (b[2] << 4))
    return out


def pack_line(values: list[int], pixel_format: int) -> bytes:
    """Pixel values to wire bytes (Mono12p: two pixels in three bytes, LSB first)."""
    if pixel_format == wire.FMT_MONO16:
        return b"".join(struct.pack("<H", v) for v in values)
    out = bytearray()
    for i in range(0, len(values), 2):
        p0 = values[i] & 0xFFF
        p1 = values[i + 1] & 0xFFF if i + 1 < len(values) else 0
        out += bytes([p0 & 0xFF, (p0 >> 8) | ((p1 & 0x0F) << 4), p1 >> 4])
    return bytes(out[: wire.pixel_bytes(len(values), pixel_format)])


class _Slot:
    def __init__(self, frame_id: int, order: int, lines: int) -> None:
        self.frame_id = frame_id
        self.order = order
        self.rows: list[list[float] | None] = [None] * lines
        self.pulse_id = 0
        self.timestamp_us = 0


class ReferenceAssembler:
    """Same constructor, feed/flush and counters as FrameAssembler."""

    def __init__(self, pixels_per_line: int, lines_per_frame: int, pixel_format: str | int = "mono12p",
                 **options: Any) -> None:
        self.config = AssemblerConfig.build(pixels_per_line, lines_per_frame, pixel_format, **options)
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self.last_bad_version: int | None = None
        self._buf = bytearray()
        self._slots: list[_Slot] = []
        self._order = 0
        self._retired: list[int] = []  # the last PL_RETIRED_MEMORY emitted ids
        cfg = self.config
        h, w = cfg.shape
        self._state: list[list[float]] | None = [[NAN] * w for _ in range(h)] if cfg.filter_alpha > 0 else None

    # -- stream ------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[Output]:
        self._buf += bytes(data)
        self.counters["bytes_in"] += len(data)
        out: list[Output] = []
        self._parse(out, eof=False)
        return out

    def flush(self) -> list[Output]:
        out: list[Output] = []
        self._parse(out, eof=True)
        while self._slots:
            self._emit(min(self._slots, key=lambda s: s.order), 3, None, out)
        return out

    def _skip(self, n: int) -> None:
        self.counters["bytes_skipped"] += n
        del self._buf[:n]

    def _parse(self, out: list[Output], eof: bool) -> None:
        buf, c = self._buf, self.counters
        while buf:
            at = buf.find(wire.SYNC)
            if at < 0:
                # Keep a tail that may still become a sync marker.
                keep = next((k for k in (3, 2, 1) if len(buf) >= k and wire.SYNC.startswith(bytes(buf[-k:]))), 0)
                if eof:
                    keep = 0
                self._skip(len(buf) - keep)
                if not eof:
                    return
                continue
            if at:
                self._skip(at)
                continue
            total = wire.HEADER_SIZE
            if len(buf) >= wire.HEADER_SIZE:
                if zlib.crc32(bytes(buf[4:10])) & 0xFFFF != struct.unpack_from("<H", buf, 10)[0]:
                    c["header_errors"] += 1
                    self._skip(1)
                    continue
                total = wire.HEADER_SIZE + struct.unpack_from("<H", buf, 8)[0] + wire.CRC_SIZE
            if len(buf) < total:
                if not eof:
                    return
                self._skip(1)
                continue
            crc = struct.unpack_from("<I", buf, total - 4)[0]
            if zlib.crc32(bytes(buf[4: total - 4])) != crc:
                c["crc_errors"] += 1
                self._skip(1)
                continue
            c["packets_ok"] += 1
            self._dispatch(bytes(buf[:total]), out)
            del buf[:total]

    # -- packets -----------------------------------------------------------

    def _dispatch(self, pkt: bytes, out: list[Output]) -> None:
        c, cfg = self.counters, self.config
        version, ptype, seq, n = struct.unpack_from(wire.PACKET_HEADER_FORMAT, pkt, 4)
        payload = pkt[wire.HEADER_SIZE: wire.HEADER_SIZE + n]
        if version != wire.PROTOCOL_VERSION:
            c["bad_version"] += 1
            self.last_bad_version = version
            return
        if ptype == wire.PKT_LINE:
            if n < wire.LINE_HEADER_SIZE:
                c["malformed"] += 1
                return
            frame_id, line, lpf, ppl, fmt, _flags, pulse_id, ts = struct.unpack_from(wire.LINE_HEADER_FORMAT, payload)
            known = fmt in (wire.FMT_MONO16, wire.FMT_MONO12P)
            if not known or n != wire.LINE_HEADER_SIZE + wire.pixel_bytes(ppl, fmt):
                c["malformed"] += 1
                return
            if (ppl, lpf, fmt) != (cfg.pixels_per_line, cfg.lines_per_frame, cfg.pixel_format) or line >= lpf:
                c["geometry_mismatch"] += 1
                return
            slot = self._find(frame_id)
            if slot is None:
                if frame_id in self._retired:
                    c["lines_late"] += 1
                    return
                slot = self._open(frame_id, out)
            if slot.rows[line] is not None:
                c["lines_duplicate"] += 1
                return
            raw = unpack_line(payload[wire.LINE_HEADER_SIZE:], ppl, fmt)
            if cfg.float_output:
                w = cfg.pixels_per_line
                dark = cfg.dark[line] if cfg.dark is not None else [0.0] * w
                gain = cfg.gain[line] if cfg.gain is not None else [1.0] * w
                slot.rows[line] = [(raw[x] - float(dark[x])) * float(gain[x]) for x in range(w)]
            else:
                slot.rows[line] = [float(v) for v in raw]
            if all(r is None for i, r in enumerate(slot.rows) if i != line):
                slot.pulse_id, slot.timestamp_us = pulse_id, ts
            c["lines_ok"] += 1
            return
        if ptype == wire.PKT_TRAILER:
            if n != wire.TRAILER_SIZE:
                c["malformed"] += 1
                return
            trailer = Trailer.parse(payload)
            if trailer.lines_per_frame != cfg.lines_per_frame:
                c["geometry_mismatch"] += 1
                return
            slot = self._find(trailer.frame_id)
            if slot is None:
                if trailer.frame_id in self._retired:
                    c["trailers_late"] += 1
                    return
                slot = self._open(trailer.frame_id, out)
            self._emit(slot, 1, trailer, out)
            return
        c["messages"] += 1
        out.append(Packet(ptype, seq, payload))

    def _find(self, frame_id: int) -> _Slot | None:
        return next((s for s in self._slots if s.frame_id == frame_id), None)

    def _open(self, frame_id: int, out: list[Output]) -> _Slot:
        if len(self._slots) == self.config.max_frames_in_flight:
            self._emit(min(self._slots, key=lambda s: s.order), 2, None, out)
        slot = _Slot(frame_id, self._order, self.config.lines_per_frame)
        self._order += 1
        self._slots.append(slot)
        return slot

    # -- frames ------------------------------------------------------------

    def _emit(self, slot: _Slot, reason: int, trailer: Trailer | None, out: list[Output]) -> None:
        cfg, c = self.config, self.counters
        h, w = cfg.shape
        fill = NAN if cfg.float_output else 0.0
        rows = [r if r is not None else [fill] * w for r in slot.rows]
        got = [r is not None for r in slot.rows]
        if not any(got) and trailer is not None:
            slot.pulse_id, slot.timestamp_us = trailer.pulse_id, trailer.timestamp_us
        if cfg.float_output and cfg.defect_map is not None:
            self._replace_defects(rows, got)
        if self._state is not None:
            self._filter(rows, got)
        mean, lo, hi, centre = self._stats(rows, got)
        pixels: np.ndarray[Any, Any] = np.array(rows, dtype=cfg.dtype).reshape(h, w)
        out.append(Frame(
            frame_id=slot.frame_id, pixels=pixels, line_received=np.array(got, bool),
            reason={1: "trailer", 2: "overflow", 3: "flush"}[reason], trailer=trailer,
            pulse_id=slot.pulse_id, timestamp_us=slot.timestamp_us,
            mean=mean, min=lo, max=hi, centre_mean=centre, defect_map=cfg.defect_map,
        ))
        received = sum(got)
        c["frames_emitted"] += 1
        c["lines_lost"] += h - received
        c["frames_complete" if received == h and trailer is not None else "frames_incomplete"] += 1
        if reason == 2:
            c["frames_overflowed"] += 1
        self._slots.remove(slot)
        self._retired.append(slot.frame_id)
        del self._retired[:-64]  # PL_RETIRED_MEMORY

    def _replace_defects(self, rows: list[list[float]], got: list[bool]) -> None:
        # Mean of the good 8-neighbours: not defective, on a received line.
        cfg = self.config
        assert cfg.defect_map is not None
        h, w = cfg.shape
        dm = cfg.defect_map
        for y in range(h):
            if not got[y]:
                continue
            for x in range(w):
                if not dm[y, x]:
                    continue
                vals = [rows[yy][xx] for yy in (y - 1, y, y + 1) for xx in (x - 1, x, x + 1)
                        if (yy, xx) != (y, x) and 0 <= yy < h and 0 <= xx < w and got[yy] and not dm[yy, xx]]
                rows[y][x] = sum(vals) / len(vals) if vals else NAN

    def _filter(self, rows: list[list[float]], got: list[bool]) -> None:
        a = self.config.filter_alpha
        assert self._state is not None
        for y, row in enumerate(rows):
            if not got[y]:
                continue
            st = self._state[y]
            for x, v in enumerate(row):
                if math.isnan(v):
                    continue
                s = v if math.isnan(st[x]) else a * v + (1 - a) * st[x]
                st[x] = s
                row[x] = s

    def _stats(self, rows: list[list[float]], got: list[bool]) -> tuple[float, float, float, float]:
        r0, nr, c0, nc = self.config.centre
        vals = [v for y, row in enumerate(rows) if got[y] for v in row if not math.isnan(v)]
        centre = [v for y in range(r0, r0 + nr) if got[y] for v in rows[y][c0: c0 + nc] if not math.isnan(v)]
        if not vals:
            return NAN, NAN, NAN, NAN
        return (sum(vals) / len(vals), min(vals), max(vals), sum(centre) / len(centre) if centre else NAN)
