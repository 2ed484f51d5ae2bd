"""Host view of the wire protocol.

The constants, layouts and encoder are the firmware's own (`pulsefw.wire`),
imported here under CPython so there is one source of truth.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..mpcompat import import_firmware

wire = import_firmware("pulsefw.wire")
codes = import_firmware("pulsefw.codes")  # every opcode, status, event, state, block and fault code

__all__ = ["Packet", "Trailer", "wire"]

PACKET_TYPE_NAMES = {
    wire.PKT_COMMAND: "command",
    wire.PKT_RESPONSE: "response",
    wire.PKT_EVENT: "event",
    wire.PKT_LINE: "line",
    wire.PKT_TRAILER: "trailer",
    wire.PKT_LOG: "log",
}

PIXEL_FORMATS = {"mono16": wire.FMT_MONO16, "mono12p": wire.FMT_MONO12P}


@dataclass(frozen=True)
class Packet:
    """A good packet other than line data or a frame trailer."""

    type: int
    seq: int
    payload: bytes

    @property
    def type_name(self) -> str:
        return PACKET_TYPE_NAMES.get(self.type, f"unknown({self.type})")


@dataclass(frozen=True)
class Trailer:
    """What the board says it delivered for one frame."""

    frame_id: int
    pulse_id: int
    timestamp_us: int
    lines_per_frame: int
    lines_sent: int
    kv: float
    ma: float
    pulse_width_ms: float
    air_kerma_ugy: float
    kap_ugy_m2: float

    @classmethod
    def parse(cls, payload: bytes) -> Trailer:
        if len(payload) != wire.TRAILER_SIZE:
            raise ValueError(f"a trailer is {wire.TRAILER_SIZE} bytes, not {len(payload)}")
        return cls(*struct.unpack(wire.TRAILER_FORMAT, payload))


def pixel_format_code(pixel_format: str | int) -> int:
    """Accept 'mono16' / 'mono12p' or the wire code; ValueError otherwise."""
    if isinstance(pixel_format, str):
        try:
            return int(PIXEL_FORMATS[pixel_format.lower()])
        except KeyError:
            raise ValueError(
                f"unknown pixel format {pixel_format!r}; use one of {', '.join(PIXEL_FORMATS)}"
            ) from None
    if isinstance(pixel_format, bool) or not isinstance(pixel_format, int):
        raise TypeError(f"pixel_format must be a name or an int, not {type(pixel_format).__name__}")
    if pixel_format not in PIXEL_FORMATS.values():
        raise ValueError(f"unknown pixel format code {pixel_format}")
    return pixel_format
