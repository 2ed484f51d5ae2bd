"""Synthetic board->host streams for tests, benchmarks and the fuzz corpus.

Packets are made by the firmware's own encoder (pulsefw.wire), so what the
host is tested against is what the board sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .protocol import wire

U16 = npt.NDArray[np.uint16]


def pack_pixels(values: U16, pixel_format: int) -> bytes:
    """Pixel rows (any shape, last axis = pixels) to wire bytes, row by row."""
    values = np.asarray(values, dtype=np.uint16)
    if pixel_format == wire.FMT_MONO16:
        return values.astype("<u2").tobytes()
    if pixel_format != wire.FMT_MONO12P:
        raise ValueError(f"unknown pixel format {pixel_format}")
    rows = values.reshape(-1, values.shape[-1]) & 0xFFF
    w = rows.shape[1]
    if w % 2:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), np.uint16)], axis=1)
    p0, p1 = rows[:, 0::2], rows[:, 1::2]
    packed = np.empty((rows.shape[0], p0.shape[1], 3), np.uint8)
    packed[..., 0] = p0 & 0xFF
    packed[..., 1] = (p0 >> 8) | ((p1 & 0x0F) << 4)
    packed[..., 2] = p1 >> 4
    flat = packed.reshape(rows.shape[0], -1)[:, : wire.pixel_bytes(w, pixel_format)]
    return flat.tobytes()


def random_frames(rng: np.random.Generator, count: int, lines: int, pixels: int, pixel_format: int) -> U16:
    top = 4096 if pixel_format == wire.FMT_MONO12P else 65536
    return rng.integers(0, top, size=(count, lines, pixels), dtype=np.uint16)


@dataclass(frozen=True)
class WirePacket:
    """One encoded packet and what it carries (for fault-injection truth)."""

    data: bytes
    type: int
    frame_id: int = -1
    line_index: int = -1


class StreamWriter:
    """Board-side packet sequence: lines and trailers of frames, events, logs."""

    def __init__(self, pixels_per_line: int, lines_per_frame: int, pixel_format: int) -> None:
        self.encoder = wire.LineEncoder(pixels_per_line, lines_per_frame, pixel_format)
        self.pixel_format = pixel_format
        self.seq = 0

    def _next_seq(self) -> int:
        s = self.seq
        self.seq = (self.seq + 1) & 0xFFFF
        return s

    def frame(self, frame_id: int, pixels: U16, pulse_id: int | None = None,
              timestamp_us: int | None = None, trailer: bool = True) -> Iterator[WirePacket]:
        lines = pixels.shape[0]
        pulse_id = frame_id if pulse_id is None else pulse_id
        ts = frame_id * 133_333 if timestamp_us is None else timestamp_us
        packed = pack_pixels(pixels, self.pixel_format)
        step = len(packed) // lines
        for y in range(lines):
            data = self.encoder.line_packet(self._next_seq(), frame_id, y, pulse_id, ts + y * 10,
                                            packed[y * step:(y + 1) * step])
            yield WirePacket(data, wire.PKT_LINE, frame_id, y)
        if trailer:
            payload = wire.trailer_payload(frame_id, pulse_id, ts, lines, lines, 80.0, 20.0, 10.0, 39.0, 1.5)
            yield WirePacket(wire.encode(wire.PKT_TRAILER, self._next_seq(), payload), wire.PKT_TRAILER, frame_id)

    def event(self, code: int, body: dict[str, object]) -> WirePacket:
        payload = code.to_bytes(2, "little") + (0).to_bytes(8, "little") + json.dumps(body).encode()
        return WirePacket(wire.encode(wire.PKT_EVENT, self._next_seq(), payload), wire.PKT_EVENT)

    def log(self, text: str) -> WirePacket:
        payload = bytes([1]) + (0).to_bytes(8, "little") + text.encode()
        return WirePacket(wire.encode(wire.PKT_LOG, self._next_seq(), payload), wire.PKT_LOG)


def clean_stream(frames: U16, pixel_format: int, first_id: int = 0) -> bytes:
    """Every frame's lines and trailer, nothing lost."""
    count, lines, pixels = frames.shape
    w = StreamWriter(pixels, lines, pixel_format)
    return b"".join(p.data for i in range(count) for p in w.frame(first_id + i, frames[i]))
