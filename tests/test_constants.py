"""The C header and the firmware's wire module are one source of truth."""

import re
import struct
from pathlib import Path

from pulseline._native import ffi, lib
from pulseline.link.protocol import codes, wire

HEADER = (Path(__file__).resolve().parents[1] / "native" / "pulseline_asm.h").read_text()
# Assembler-only limits and statuses that the firmware has no reason to know.
HOST_ONLY = re.compile(r"^PL_(MAX_FRAMES_IN_FLIGHT|RETIRED_MEMORY|OUTPUT_QUEUE|MESSAGE_ARENA|FEED_|OUT_|DONE_)")


def c_constants() -> dict[str, int]:
    names = re.findall(r"^#define (PL_\w+) ", HEADER, flags=re.M)
    return {n: getattr(lib, n) for n in names if not HOST_ONLY.match(n)}


def test_every_protocol_constant_in_c_matches_the_firmware():
    consts = c_constants()
    assert len(consts) > 30
    for name, value in consts.items():
        py_name = name[3:]
        module = codes if py_name.startswith("ERR_") else wire  # status codes live with every other code
        assert hasattr(module, py_name), f"{name} has no counterpart in firmware/pulsefw/{module.__name__[8:]}.py"
        assert getattr(module, py_name) == value, f"{name}: C {value} != firmware {getattr(module, py_name)}"


def test_every_firmware_constant_is_in_the_c_header():
    shared = re.compile(r"^(PKT|FMT|ERR)_|^(PROTOCOL_VERSION|HEADER_SIZE|CRC_SIZE|MAX_PAYLOAD|SYNC\d|LINE_HEADER_SIZE|"
                        r"TRAILER_SIZE|MAX_PIXELS_PER_LINE|MAX_LINES_PER_FRAME|CTRL_C|ESC|ESC_XOR)$")
    for module in (wire, codes):
        for name in dir(module):
            if shared.match(name):
                assert hasattr(lib, "PL_" + name), f"{module.__name__}.{name} is missing from native/pulseline_asm.h"
                assert getattr(lib, "PL_" + name) == getattr(module, name)


def test_layouts_agree():
    assert bytes([lib.PL_SYNC0, lib.PL_SYNC1, lib.PL_SYNC2, lib.PL_SYNC3]) == wire.SYNC
    assert struct.calcsize(wire.LINE_HEADER_FORMAT) == wire.LINE_HEADER_SIZE == lib.PL_LINE_HEADER_SIZE
    assert struct.calcsize(wire.TRAILER_FORMAT) == wire.TRAILER_SIZE == lib.PL_TRAILER_SIZE
    assert ffi.sizeof(ffi.typeof("pl_output").fields[[f[0] for f in ffi.typeof("pl_output").fields].index(
        "trailer")][1].type) == wire.TRAILER_SIZE
    assert set(codes.ERROR_NAMES) == {getattr(codes, n) for n in dir(codes) if n.startswith("ERR_")}


def test_each_payload_head_is_its_size():
    # The board's encoders and the host's decoders take these; the sizes are what a decoder skips.
    for kind in ("COMMAND", "RESPONSE", "EVENT", "LOG"):
        assert struct.calcsize(getattr(wire, f"{kind}_HEAD_FORMAT")) == getattr(wire, f"{kind}_HEAD_SIZE"), kind
    assert struct.calcsize(wire.PACKET_HEADER_FORMAT) + 4 + 2 == wire.HEADER_SIZE  # sync marker, header check
