"""A board's USB CDC output, from the unix port's stdout: text (the REPL,
print, tracebacks) with CRLF line endings, as a board's USB stack sends
it, and the firmware's binary writes as they are.

The unix port cooks nothing (a terminal would), so the sim HAL frames each
binary write (RAW_MARK, a little-endian u32 length, the bytes) and this
cooks only the text around the frames: a LF not after a CR becomes CRLF.

May import link and plant; never targets or above.
"""

from __future__ import annotations

import struct

from ..mpcompat import import_firmware

_hal = import_firmware("pulsefw.boards.sim.hal")
RAW_MARK: bytes = _hal.RAW_MARK
RAW_HEAD_SIZE: int = _hal.RAW_HEAD_SIZE


class CdcOutput:
    """feed() the interpreter's stdout as it comes; what the host gets."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._raw_left = 0  # bytes of a binary write still to come
        self._last = 0  # the last text byte passed on (a CR before a LF)

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        buf = self._buf
        while buf:
            if self._raw_left:
                n = min(self._raw_left, len(buf))
                out += buf[:n]
                del buf[:n]
                self._raw_left -= n
                continue
            i = buf.find(RAW_MARK)
            if i < 0:
                # Text to the end, but for what may be the start of a mark.
                keep = _partial_mark(buf)
                out += self._cook(bytes(buf[:len(buf) - keep]))
                del buf[:len(buf) - keep]
                break
            out += self._cook(bytes(buf[:i]))
            if len(buf) - i < RAW_HEAD_SIZE:
                del buf[:i]
                break
            (self._raw_left,) = struct.unpack_from("<I", buf, i + len(RAW_MARK))
            del buf[:i + RAW_HEAD_SIZE]
            self._last = 0  # (a CR before the write and a LF after it are no CRLF)
        return bytes(out)

    def _cook(self, text: bytes) -> bytes:
        if not text:
            return b""
        cooked = text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if text[0] == 0x0A and self._last == 0x0D:  # the CR came in the last piece
            cooked = cooked[1:]
        self._last = text[-1]
        return cooked


def _partial_mark(buf: bytearray) -> int:
    """How many bytes at the end of buf could begin RAW_MARK."""
    for k in range(min(len(RAW_MARK) - 1, len(buf)), 0, -1):
        if buf.endswith(RAW_MARK[:k]):
            return k
    return 0
