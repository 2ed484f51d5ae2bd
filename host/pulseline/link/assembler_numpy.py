"""The numpy baseline of `make bench`: the clean path of the frame assembler
written the way a competent numpy user would, instead of using the C code.

One Python loop walks the packets (struct header reads, zlib CRC check,
bytes.find to resynchronise), remembering where each line's pixels lie; all
per-pixel work is vectorised, once per frame: the line bytes are gathered
with one fancy-indexing copy, unpacked (Mono16 / Mono12p), corrected
((raw - dark) * gain in float32), defective pixels replaced by the mean of
their good 8-neighbours (neighbour index table built once per call), and the
frame statistics taken.

It covers clean streams only: no loss accounting, no frames-in-flight limit,
no late-line memory, no recursive filter. On a clean stream its pixels equal
FrameAssembler's (uint16 exactly; float32 to rounding).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .frames import AssemblerConfig
from .protocol import wire

# sync, version, type, (seq), length, (header check), then a line header's
# frame_id, line, lines_per_frame, pixels_per_line, format
_PKT = struct.Struct("<4sBB2xH2xIHHHB")
_U32 = struct.Struct("<I")
_TRAILER = struct.Struct("<I12xH")  # frame_id, lines_per_frame
_SYNC = wire.SYNC
_HS = wire.HEADER_SIZE
_CS = wire.CRC_SIZE
_LHS = wire.LINE_HEADER_SIZE
# Neighbour order of the C assembler's defect replacement (row by row).
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(eq=False)
class NumpyFrame:
    frame_id: int
    pixels: npt.NDArray[Any]  # (lines, pixels): uint16 raw or float32 corrected
    line_received: npt.NDArray[np.bool_]
    mean: float
    min: float
    max: float
    centre_mean: float


class _Defects:
    """Defective pixels and their 8 neighbours, as flat indices (built once)."""

    def __init__(self, defect_map: npt.NDArray[Any], shape: tuple[int, int]) -> None:
        h, w = shape
        dm = np.asarray(defect_map).reshape(shape) != 0
        ys, xs = np.nonzero(dm)
        self.index = (ys * w + xs).astype(np.intp)
        self.row = ys.astype(np.intp)
        dy = np.array([d[0] for d in _NEIGHBOURS], np.intp)
        dx = np.array([d[1] for d in _NEIGHBOURS], np.intp)
        ny = ys[:, None] + dy[None, :]
        nx = xs[:, None] + dx[None, :]
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        ny = np.clip(ny, 0, h - 1)
        nx = np.clip(nx, 0, w - 1)
        self.nrow = ny.astype(np.intp)  # (ndefect, 8)
        self.nindex = (ny * w + nx).astype(np.intp)
        self.static_good = inside & ~dm[ny, nx]  # in the frame and not defective

    def replace(self, px: npt.NDArray[np.float32], received: npt.NDArray[np.bool_], all_received: bool) -> None:
        if self.index.size == 0:
            return
        flat = px.reshape(-1)
        vals = flat[self.nindex]  # (ndefect, 8)
        index = self.index
        good = self.static_good if all_received else self.static_good & received[self.nrow]
        vals = np.where(good, vals, np.float32(0))
        # Sequential float32 sum in the C neighbour order (adding 0 is exact).
        total = vals[:, 0].copy()
        for k in range(1, len(_NEIGHBOURS)):
            total += vals[:, k]
        count = good.sum(axis=1).astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.float32(np.nan)).astype(np.float32)
        if not all_received:  # a defect on a lost line stays NaN
            own = received[self.row]
            index, mean = index[own], mean[own]
        flat[index] = mean


class _Builder:
    """Per-frame vectorised work for one geometry and set of maps."""

    def __init__(self, cfg: AssemblerConfig, dark: Any, gain: Any, defect_map: Any) -> None:
        self.h, self.w = cfg.shape
        self.fmt = cfg.pixel_format
        self.pixel_bytes = wire.pixel_bytes(self.w, self.fmt)
        shape = (self.h, self.w)
        self.dark = None if dark is None else np.ascontiguousarray(np.broadcast_to(dark, shape), np.float32)
        self.gain = None if gain is None else np.ascontiguousarray(np.broadcast_to(gain, shape), np.float32)
        self.defects = None
        if defect_map is not None:
            d = _Defects(np.broadcast_to(np.asarray(defect_map), shape), shape)
            self.defects = d if d.index.size else None
        self.float_output = dark is not None or gain is not None or defect_map is not None
        r0, nr, c0, nc = cfg.centre
        self.centre = (slice(r0, r0 + nr), slice(c0, c0 + nc))

    def unpack(self, raw: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint16]:
        """(lines, pixel_bytes) wire bytes to (lines, pixels) uint16."""
        h, w = raw.shape[0], self.w
        if self.fmt == wire.FMT_MONO16:
            return raw.view("<u2").astype(np.uint16, copy=False).reshape(h, w)
        pairs = (w + 1) // 2
        if raw.shape[1] != 3 * pairs:  # odd width: the last pixel's byte pair is cut short
            padded = np.zeros((h, 3 * pairs), np.uint8)
            padded[:, : raw.shape[1]] = raw
            raw = padded
        # Mono12p: byte0 = p0[7:0], byte1 = p0[11:8] | p1[3:0] << 4, byte2 = p1[11:4]
        t = raw.reshape(h, pairs, 3)
        b0, b1, b2 = (t[..., k].astype(np.uint16) for k in range(3))
        out = np.empty((h, pairs, 2), np.uint16)
        out[..., 0] = b0 | ((b1 & 0x0F) << 8)
        out[..., 1] = (b1 >> 4) | (b2 << 4)
        return out.reshape(h, 2 * pairs)[:, :w]

    def build(self, window: npt.NDArray[np.uint8], frame_id: int, offsets: list[int]) -> NumpyFrame:
        offs = np.asarray(offsets, np.intp)
        received = offs >= 0
        all_received = bool(received.all())
        if all_received:
            raw = window[offs]  # one row-gather copy of every line's pixel bytes
        else:
            raw = np.zeros((self.h, self.pixel_bytes), np.uint8)
            raw[received] = window[offs[received]]
        values = self.unpack(raw)
        px: npt.NDArray[Any]
        if not self.float_output:
            px = np.ascontiguousarray(values)
            if not all_received:
                px[~received] = 0
        else:
            px = values.astype(np.float32)
            if self.dark is not None:
                px -= self.dark
            if self.gain is not None:
                px *= self.gain
            if not all_received:
                px[~received] = np.nan
            if self.defects is not None:
                self.defects.replace(px, received, all_received)
        return NumpyFrame(frame_id, px, received, *self.stats(px, received, all_received))

    def stats(self, px: npt.NDArray[Any], received: npt.NDArray[np.bool_],
              all_received: bool) -> tuple[float, float, float, float]:
        nan = float("nan")
        if not received.any():
            return nan, nan, nan, nan
        centre = px[self.centre]
        if not all_received:
            px = px[received]
            centre = centre[received[self.centre[0]]]
        if not self.float_output:
            mean = float(px.mean(dtype=np.float64))
            cm = float(centre.mean(dtype=np.float64)) if centre.size else nan
            return mean, float(px.min()), float(px.max()), cm
        total = float(px.sum(dtype=np.float64))
        if not math.isnan(total):  # no NaN anywhere: the plain reductions
            cm = float(centre.mean(dtype=np.float64)) if centre.size else nan
            return total / px.size, float(px.min()), float(px.max()), cm
        good = px[~np.isnan(px)]
        if good.size == 0:
            return nan, nan, nan, nan
        cgood = centre[~np.isnan(centre)]
        cm = float(cgood.mean(dtype=np.float64)) if cgood.size else nan
        return float(good.mean(dtype=np.float64)), float(good.min()), float(good.max()), cm


def decode_numpy(
    stream: bytes | bytearray | memoryview,
    pixels_per_line: int,
    lines_per_frame: int,
    pixel_format: str | int,
    dark: Any = None,
    gain: Any = None,
    defect_map: Any = None,
    centre_fraction: float = 0.5,
) -> list[NumpyFrame]:
    """Frames of a whole stream, with their statistics, in emission order
    (on its trailer, or at the end in the order the frames were opened).
    `dark`/`gain` are the float maps FrameAssembler uses (gain = 1/(flat-dark),
    see AssemblerConfig.build); any map given means float32 output."""
    cfg = AssemblerConfig.build(pixels_per_line, lines_per_frame, pixel_format, centre_fraction=centre_fraction)
    b = _Builder(cfg, dark, gain, defect_map)
    data = bytes(stream)
    mv = memoryview(data)
    buf = np.frombuffer(data, np.uint8)
    pb = b.pixel_bytes
    # Row k of `window` is data[k:k + pb]: a row gather of line offsets copies whole lines.
    window: npt.NDArray[np.uint8] = (
        np.lib.stride_tricks.sliding_window_view(buf, pb) if len(buf) >= pb else np.empty((0, pb), np.uint8)
    )
    h, w, fmt = cfg.lines_per_frame, cfg.pixels_per_line, cfg.pixel_format
    line_len = _LHS + pb
    pkt_unpack, u32_unpack, crc32 = _PKT.unpack_from, _U32.unpack_from, zlib.crc32
    trailer_unpack = _TRAILER.unpack_from
    version, pkt_line, pkt_trailer = wire.PROTOCOL_VERSION, wire.PKT_LINE, wire.PKT_TRAILER
    open_frames: dict[int, list[int]] = {}
    out: list[NumpyFrame] = []
    n = len(data)
    pos = data.find(_SYNC)
    while pos >= 0 and pos + _HS <= n:
        try:  # packet header and, if it is a line, its line header: one call
            sync, ver, ptype, length, frame_id, line, lpf, ppl, f = pkt_unpack(data, pos)
        except struct.error:  # the last few bytes of the stream
            sync, ver, ptype, length, frame_id, line, lpf, ppl, f = pkt_unpack(data[pos:] + bytes(_PKT.size))
        if sync != _SYNC:
            pos = data.find(_SYNC, pos + 1)
            continue
        end = pos + _HS + length  # the CRC follows
        if end + _CS > n or crc32(mv[pos + 4:end]) != u32_unpack(data, end)[0]:
            pos = data.find(_SYNC, pos + 1)
            continue
        body = pos + _HS
        pos = end + _CS
        if ver != version:
            continue
        if ptype == pkt_line:
            if length != line_len or lpf != h or ppl != w or f != fmt or line >= h:
                continue
            offsets = open_frames.get(frame_id)
            if offsets is None:
                offsets = open_frames[frame_id] = [-1] * h
            if offsets[line] < 0:
                offsets[line] = body + _LHS
        elif ptype == pkt_trailer and length == wire.TRAILER_SIZE:
            frame_id, lpf = trailer_unpack(data, body)
            if lpf != h:
                continue
            offsets = open_frames.pop(frame_id, None)
            out.append(b.build(window, frame_id, offsets if offsets is not None else [-1] * h))
    for frame_id, offsets in open_frames.items():
        out.append(b.build(window, frame_id, offsets))
    return out

