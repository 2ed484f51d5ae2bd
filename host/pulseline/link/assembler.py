"""Thin owner of the native frame assembler (native/pulseline_asm.c).

It owns the C object and the frame buffers, turns misuse into ValueError /
TypeError, and hands out frames whose pixels are the very numpy arrays the C
code wrote into (no copy). Buffers the caller has dropped are reused, so a
long capture does not fault in fresh pages for every frame.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from .._native import ffi, lib
from .frames import COUNTER_NAMES, REASONS, AssemblerConfig, Frame
from .protocol import Packet, Trailer

Output = Frame | Packet

_SPARE_BUFFERS = 2
_POOL_LIMIT = 64


class FrameAssembler:
    """Byte stream in, frames and other packets out, in stream order.

    >>> asm = FrameAssembler(256, 256, "mono12p")
    >>> for item in asm.feed(chunk): ...      # any chunk size
    >>> for item in asm.flush(): ...          # end of stream
    >>> asm.counters["lines_lost"]
    """

    def __init__(self, pixels_per_line: int, lines_per_frame: int, pixel_format: str | int = "mono12p",
                 **options: Any) -> None:
        # The keyword options are AssemblerConfig.build's: named, defaulted
        # and checked there only (ReferenceAssembler takes them the same way).
        cfg = AssemblerConfig.build(pixels_per_line, lines_per_frame, pixel_format, **options)
        self.config = cfg
        c = ffi.new("pl_config *")
        c.pixels_per_line = cfg.pixels_per_line
        c.lines_per_frame = cfg.lines_per_frame
        c.pixel_format = cfg.pixel_format
        c.max_frames_in_flight = cfg.max_frames_in_flight
        c.float_output = int(cfg.float_output)
        c.centre_row0, c.centre_rows, c.centre_col0, c.centre_cols = cfg.centre
        c.filter_alpha = cfg.filter_alpha
        err = ffi.new("char[256]")
        ptr = lib.pl_create(
            c, self._ptr(cfg.dark, "float *"), self._ptr(cfg.gain, "float *"),
            self._ptr(cfg.defect_map, "uint8_t *"), err, 256,
        )
        if ptr == ffi.NULL:
            raise ValueError(ffi.string(err).decode())
        self._asm = ffi.gc(ptr, lib.pl_destroy)
        self._status = ffi.new("int *")
        self._out = ffi.new("pl_output *")
        self._buffers: dict[int, npt.NDArray[Any]] = {}  # address -> array, while C holds it
        self._pool: list[npt.NDArray[Any]] = []  # every array made, for reuse
        self._top_up()

    @staticmethod
    def _ptr(arr: npt.NDArray[Any] | None, ctype: str) -> Any:
        return ffi.NULL if arr is None else ffi.cast(ctype, ffi.from_buffer(arr))

    # -- buffers -----------------------------------------------------------

    def _new_buffer(self) -> npt.NDArray[Any]:
        # An array nobody outside the pool refers to any more (no frame, no
        # view, not lent to the C side) can be reused. getrefcount sees: the
        # pool list, the loop variable and its own argument.
        for arr in self._pool:
            if sys.getrefcount(arr) == 3:
                return arr
        arr = np.empty(self.config.shape, self.config.dtype)
        if len(self._pool) < _POOL_LIMIT:
            self._pool.append(arr)
        return arr

    def _top_up(self) -> None:
        while lib.pl_free_buffers(self._asm) < _SPARE_BUFFERS:
            arr = self._new_buffer()
            address = int(ffi.cast("uintptr_t", ffi.from_buffer(arr)))
            self._buffers[address] = arr
            lib.pl_give_buffer(self._asm, ffi.cast("void *", address))

    # -- stream ------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[Output]:
        """Consume a chunk of the stream; return what it completed."""
        if isinstance(data, str) or not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"feed() needs bytes, bytearray or memoryview, not {type(data).__name__}")
        view = memoryview(data)
        if not view.contiguous:
            raise ValueError("feed() needs a contiguous buffer")
        if view.nbytes == 0:
            return []
        buf = ffi.from_buffer("uint8_t[]", view.cast("B"))
        n, pos = len(buf), 0
        out: list[Output] = []
        while True:
            # Also call again once every byte is taken if the C side stopped
            # for room or a buffer: held-back packets may be complete.
            pos += lib.pl_feed(self._asm, buf + pos, n - pos, self._status)
            self._drain(out)
            status = self._status[0]
            if status == lib.PL_FEED_NEED_BUFFER:
                self._top_up()
            if pos >= n and status == lib.PL_FEED_DONE:
                break
        self._top_up()
        return out

    def flush(self) -> list[Output]:
        """End of stream: resolve held bytes and emit every frame in flight."""
        out: list[Output] = []
        while (status := lib.pl_flush(self._asm)) != lib.PL_FEED_DONE:
            self._drain(out)
            if status == lib.PL_FEED_NEED_BUFFER:
                self._top_up()
        self._drain(out)
        self._top_up()
        return out

    def _drain(self, out: list[Output]) -> None:
        o = self._out
        cfg = self.config
        while lib.pl_next_output(self._asm, o):
            if o.kind == lib.PL_OUT_PACKET:
                out.append(Packet(o.packet_type, o.packet_seq, bytes(ffi.buffer(o.payload, o.payload_len))))
                continue
            address = int(ffi.cast("uintptr_t", o.buffer))
            pixels = self._buffers.pop(address)
            bitmap = np.frombuffer(ffi.buffer(o.line_bitmap, cfg.lines_per_frame), np.uint8).astype(bool)
            trailer = Trailer.parse(bytes(o.trailer)) if o.has_trailer else None
            out.append(
                Frame(
                    frame_id=o.frame_id,
                    pixels=pixels,
                    line_received=bitmap,
                    reason=REASONS[o.reason],
                    trailer=trailer,
                    pulse_id=o.pulse_id,
                    timestamp_us=o.timestamp_us,
                    mean=o.mean,
                    min=o.min,
                    max=o.max,
                    centre_mean=o.centre_mean,
                    defect_map=cfg.defect_map,
                )
            )

    # -- counters ----------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """Cumulative counts of what was taken and what was dropped, and why."""
        c = ffi.new("pl_counters *")
        lib.pl_get_counters(self._asm, c)
        return {name: int(getattr(c, name)) for name in COUNTER_NAMES}

    @property
    def last_bad_version(self) -> int | None:
        """Protocol version of the last good packet of another version, if any:
        what the session names when it meets incompatible firmware."""
        v = int(lib.pl_last_bad_version(self._asm))
        return None if v < 0 else v


def crc_backend() -> str:
    """The CRC-32 implementation the native module was built with."""
    return str(ffi.string(lib.pl_crc_backend()).decode())


def crc32(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    view = memoryview(data).cast("B")
    return int(lib.pl_crc32(crc, ffi.from_buffer("uint8_t[]", view), view.nbytes))
