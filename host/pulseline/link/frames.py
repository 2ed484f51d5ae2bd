"""Frames and assembler configuration, shared by the native assembler and
its plain-Python reference."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .protocol import Trailer, pixel_format_code, wire

# Bits of Frame.defect_mask.
DEFECT_PIXEL = 1  # defective detector pixel, value replaced from its neighbours
LOST_LINE = 2  # the line never arrived intact: no data (0 raw, NaN corrected)
UNREPLACED = 4  # defective pixel with no good neighbour: left NaN

REASONS = {1: "trailer", 2: "overflow", 3: "flush"}

COUNTER_NAMES = (
    "bytes_in",
    "bytes_skipped",
    "packets_ok",
    "header_errors",
    "crc_errors",
    "bad_version",
    "malformed",
    "geometry_mismatch",
    "lines_ok",
    "lines_duplicate",
    "lines_late",
    "lines_lost",
    "trailers_late",
    "frames_emitted",
    "frames_complete",
    "frames_incomplete",
    "frames_overflowed",
    "messages",
)

FloatMap = npt.NDArray[np.float32]


def _as_map(name: str, value: Any, shape: tuple[int, int], dtype: type) -> npt.NDArray[Any] | None:
    if value is None:
        return None
    try:
        arr: npt.NDArray[Any] = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers: {exc}") from None
    if arr.ndim == 1 and arr.shape[0] == shape[1]:
        arr = np.broadcast_to(arr, shape)  # a line-scan map: one value per detector pixel
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}; the detector is {shape} (lines, pixels) or ({shape[1]},)")
    return np.ascontiguousarray(arr, dtype=dtype)


@dataclass
class AssemblerConfig:
    """Validated assembler settings. Maps are (lines, pixels) arrays, or one
    value per detector pixel (broadcast to every line)."""

    pixels_per_line: int
    lines_per_frame: int
    pixel_format: int
    max_frames_in_flight: int = 4
    dark: FloatMap | None = None
    gain: FloatMap | None = None
    defect_map: npt.NDArray[np.uint8] | None = None
    filter_alpha: float = 0.0
    centre: tuple[int, int, int, int] = (0, 0, 0, 0)  # row0, rows, col0, cols
    float_output: bool = False

    @classmethod
    def build(
        cls,
        pixels_per_line: int,
        lines_per_frame: int,
        pixel_format: str | int = "mono12p",
        *,
        max_frames_in_flight: int = 4,
        dark: Any = None,
        flat: Any = None,
        defect_map: Any = None,
        filter_alpha: float | None = None,
        centre_fraction: float = 0.5,
    ) -> AssemblerConfig:
        for name, value, top in (
            ("pixels_per_line", pixels_per_line, wire.MAX_PIXELS_PER_LINE),
            ("lines_per_frame", lines_per_frame, wire.MAX_LINES_PER_FRAME),
            ("max_frames_in_flight", max_frames_in_flight, 16),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if not 1 <= value <= top:
                raise ValueError(f"{name} must be 1..{top}, got {value}")
        fmt = pixel_format_code(pixel_format)
        if wire.LINE_HEADER_SIZE + wire.pixel_bytes(pixels_per_line, fmt) > wire.MAX_PAYLOAD:
            raise ValueError(f"a line of {pixels_per_line} pixels does not fit in one packet")
        if isinstance(centre_fraction, bool) or not isinstance(centre_fraction, int | float):
            raise TypeError(f"centre_fraction must be a number, not {type(centre_fraction).__name__}")
        if not 0 < centre_fraction <= 1:
            raise ValueError(f"centre_fraction must be in (0, 1], got {centre_fraction!r}")
        alpha = 0.0
        if filter_alpha is not None:
            if not isinstance(filter_alpha, int | float) or isinstance(filter_alpha, bool):
                raise TypeError(f"filter_alpha must be a number, not {type(filter_alpha).__name__}")
            if not 0 < filter_alpha <= 1:
                raise ValueError(f"filter_alpha must be in (0, 1], got {filter_alpha}")
            alpha = float(filter_alpha)

        shape = (int(lines_per_frame), int(pixels_per_line))
        dark_arr = _as_map("dark", dark, shape, np.float32)
        flat_arr = _as_map("flat", flat, shape, np.float32)
        defects = _as_map("defect_map", defect_map, shape, np.uint8)
        if defects is not None:
            defects = (defects != 0).astype(np.uint8)
        gain_arr = None
        if flat_arr is not None:
            # Two-point gain: (raw - dark) / (flat - dark). A pixel whose flat
            # does not rise above its dark has no usable gain: it is defective.
            span = flat_arr - (dark_arr if dark_arr is not None else np.float32(0))
            bad = ~(span > 0)
            gain_arr = np.zeros(shape, np.float32)
            np.divide(np.float32(1), span, out=gain_arr, where=~bad)
            if bad.any():
                defects = (bad | (defects.astype(bool) if defects is not None else False)).astype(np.uint8)

        def centre_span(n: int) -> tuple[int, int]:
            size = max(1, min(n, round(n * centre_fraction)))
            return (n - size) // 2, size

        r0, rows = centre_span(shape[0])
        c0, cols = centre_span(shape[1])
        float_output = any(x is not None for x in (dark_arr, gain_arr, defects)) or alpha > 0
        return cls(
            pixels_per_line=int(pixels_per_line),
            lines_per_frame=int(lines_per_frame),
            pixel_format=fmt,
            max_frames_in_flight=int(max_frames_in_flight),
            dark=dark_arr,
            gain=gain_arr,
            defect_map=defects,
            filter_alpha=alpha,
            centre=(r0, rows, c0, cols),
            float_output=float_output,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lines_per_frame, self.pixels_per_line)

    @property
    def dtype(self) -> type:
        return np.float32 if self.float_output else np.uint16


@dataclass(eq=False)
class Frame:
    """One assembled frame. `pixels` is (lines, pixels): uint16 raw, or
    float32 corrected; lines that never arrived hold 0 (raw) or NaN."""

    frame_id: int
    pixels: npt.NDArray[Any]
    line_received: npt.NDArray[np.bool_]
    reason: str  # "trailer", "overflow" (pushed out by newer frames) or "flush"
    trailer: Trailer | None
    pulse_id: int
    timestamp_us: int
    mean: float
    min: float
    max: float
    centre_mean: float
    defect_map: npt.NDArray[np.uint8] | None = field(default=None, repr=False)
    # Wall-clock time (time.time()) the host had the frame assembled; 0 if
    # not stamped. The live view measures its display delay from it.
    arrived_s: float = field(default=0.0, repr=False)

    @property
    def lines_received(self) -> int:
        return int(self.line_received.sum())

    @property
    def lines_lost(self) -> int:
        return int(self.line_received.size - self.line_received.sum())

    @property
    def complete(self) -> bool:
        return self.trailer is not None and bool(self.line_received.all())

    @property
    def defect_mask(self) -> npt.NDArray[np.uint8]:
        """Per pixel: DEFECT_PIXEL | LOST_LINE | UNREPLACED bits."""
        mask = np.zeros(self.pixels.shape, np.uint8)
        if self.defect_map is not None:
            mask |= self.defect_map * np.uint8(DEFECT_PIXEL)
            unreplaced = self.defect_map.astype(bool) & np.isnan(self.pixels) & self.line_received[:, None]
            mask[unreplaced] |= UNREPLACED
        mask[~self.line_received] |= LOST_LINE
        return mask


def nan_equal(a: float, b: float, rel: float = 1e-5, abs_: float = 1e-6) -> bool:
    """Float comparison for stats where NaN means 'no data'."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
