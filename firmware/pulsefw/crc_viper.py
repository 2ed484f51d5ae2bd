# CRC-32 (IEEE 802.3, as binascii.crc32) in viper, written straight into a
# buffer: the value is never a Python integer. On a 32-bit board a value of
# 2**30 or more is a long integer, so binascii.crc32 would allocate for three
# packets in four. Compiled by the board's own native emitter (flash deploys
# this file as source), so it is the same code on the Pico, the Pico 2 (Arm
# or RISC-V) and the simulated board (x64). Machine words may be 32 or 64
# bits: every value is kept below 2**32 and shifted as unsigned.
# ruff: noqa: F821 (uint, ptr8 and ptr32 are viper's own types)
from array import array

import micropython

_TABLE = array("I", bytearray(1024))  # 256 words, filled below
_STATE = array("I", bytearray(4))  # the running register between parts


@micropython.viper
def _fill(t: ptr32):
    poly = (uint(0xEDB8) << 16) | uint(0x8320)  # 0xEDB88320 without a long literal
    n = 0
    while n < 256:
        c = uint(n)
        k = 0
        while k < 8:
            if c & 1:
                c = (c >> 1) ^ poly
            else:
                c = c >> 1
            k += 1
        t[n] = c
        n += 1


@micropython.viper
def _start(s: ptr32):
    s[0] = (uint(0xFFFF) << 16) | uint(0xFFFF)


@micropython.viper
def _update(s: ptr32, data: ptr8, n: int):
    t = ptr32(_TABLE)
    c = uint(s[0])
    i = 0
    while i < n:
        c = uint(t[(c ^ uint(data[i])) & 0xFF]) ^ (c >> 8)
        i += 1
    s[0] = c


@micropython.viper
def _update_span(s: ptr32, data: ptr8, start: int, n: int):
    t = ptr32(_TABLE)
    c = uint(s[0])
    i = start
    end = start + n
    while i < end:
        c = uint(t[(c ^ uint(data[i])) & 0xFF]) ^ (c >> 8)
        i += 1
    s[0] = c


@micropython.viper
def _end(s: ptr32, out: ptr8, off: int):
    c = uint(s[0]) ^ ((uint(0xFFFF) << 16) | uint(0xFFFF))
    out[off] = c & 0xFF
    out[off + 1] = (c >> 8) & 0xFF
    out[off + 2] = (c >> 16) & 0xFF
    out[off + 3] = (c >> 24) & 0xFF


_fill(_TABLE)  # type: ignore[arg-type]  # (viper takes any buffer as a pointer)


def crc32_into(out, off, first, second=None):
    """CRC-32 of first, then second (if given), little-endian into
    out[off:off + 4]. Allocates nothing."""
    # (viper takes any buffer as a pointer: the types say ptr, the calls pass buffers)
    s = _STATE
    _start(s)  # type: ignore[arg-type]
    _update(s, first, len(first))  # type: ignore[arg-type]
    if second is not None:
        _update(s, second, len(second))  # type: ignore[arg-type]
    _end(s, out, off)  # type: ignore[arg-type]


def crc32_span_into(out, off, buf, start, n):
    """CRC-32 of buf[start:start + n], little-endian into out[off:off + 4],
    with no view of the span made. Allocates nothing."""
    s = _STATE
    _start(s)  # type: ignore[arg-type]
    _update_span(s, buf, start, n)  # type: ignore[arg-type]
    _end(s, out, off)  # type: ignore[arg-type]
