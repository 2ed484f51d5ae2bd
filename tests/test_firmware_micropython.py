"""The firmware is MicroPython: it compiles with mpy-cross and the encoder
produces the same bytes on the real MicroPython unix port as under CPython."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pulseline.targets.flash import NATIVE_SOURCE

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.micropython


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed (make installs it into .venv)"
    return found


def run_micropython(code: str, path: Path) -> str:
    res = subprocess.run([tool("micropython"), "-c", code], capture_output=True, text=True, timeout=60,
                         env={"MICROPYPATH": str(path), "PATH": str(BIN)})
    assert res.returncode == 0, res.stderr + res.stdout
    return res.stdout.strip()


SCRIPT = """
from pulsefw import wire
import binascii
enc = wire.LineEncoder(5, 4, wire.FMT_MONO12P)
out = []
out.append(enc.line_packet(65535, 4000000000, 3, 77, 2**40 + 12345, bytes(range(8))))
chunks = []
enc.write_line(chunks.append, 2, 9, 1, 10, 5, 999, bytes(range(8, 16)))
out.append(b"".join(bytes(c) for c in chunks))
out.append(wire.encode(wire.PKT_EVENT, 3, b'{"a": 1}'))
out.append(wire.stuff(wire.encode(wire.PKT_COMMAND, 3, b"\\x03\\x10\\x03")))
out.append(wire.trailer_payload(1, 2, 3, 256, 256, 80.0, 20.0, 10.0, 39.0, 1.5))
dec = wire.CommandDecoder()
got = dec.feed(b"noise" + out[3] + b"\\xa5\\x5a" + out[3][:7])
out.append(repr(got).encode())
print(" ".join(binascii.hexlify(o).decode() for o in out))
"""


def run_cpython(code: str) -> str:
    # The same script under CPython, with the host's shim for `micropython`.
    res = subprocess.run([sys.executable, "-c", "import pulseline.mpcompat as m; m.install()\n" + code],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_encoder_bytes_identical_on_micropython():
    on_board = run_micropython(SCRIPT, FIRMWARE)
    assert on_board.count(" ") == 5  # six results
    assert on_board == run_cpython(SCRIPT)


def test_every_firmware_file_compiles_with_mpy_cross_and_imports(tmp_path):
    sources = sorted(FIRMWARE.rglob("*.py"))
    assert sources
    for src in sources:
        rel = src.relative_to(FIRMWARE)
        dest = (tmp_path / rel).with_suffix(".mpy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.name in NATIVE_SOURCE:
            # Viper: deployed as source, compiled by the board. Here it must
            # compile for every core a Pico has (RP2040, RP2350 Arm and
            # RISC-V); the unix port below compiles it for x64 and runs it.
            for arch in ("armv6m", "armv7emsp", "rv32imc"):
                res = subprocess.run([tool("mpy-cross"), f"-march={arch}", "-o", str(dest), str(src)],
                                     capture_output=True, text=True)
                assert res.returncode == 0, f"{rel} ({arch}): {res.stderr}"
            dest.unlink()
            (tmp_path / rel).write_bytes(src.read_bytes())
            continue
        res = subprocess.run([tool("mpy-cross"), "-o", str(dest), str(src)], capture_output=True, text=True)
        assert res.returncode == 0, f"{rel}: {res.stderr}"
    # Only .mpy files on the path (and the viper source): the interpreter must load the compiled form.
    modules = [".".join(p.relative_to(FIRMWARE).with_suffix("").parts) for p in sources]
    # main.py is the entry point: importing it starts the firmware, which
    # needs a plant (tests/test_sim_socket.py runs it against one).
    # The rp2 board's own modules need its `rp2` and `machine`: compiled, not
    # imported here (tests/test_pio.py runs their programs).
    rp2_only = {m for m in modules if m.startswith("pulsefw.boards.rp2.")} - {
        "pulsefw.boards.rp2.__init__", "pulsefw.boards.rp2.timing", "pulsefw.boards.rp2.wiring"}  # (portable)
    modules = [m.removesuffix(".__init__") for m in modules if m != "main" and m not in rp2_only]
    code = "\n".join(f"import {m}" for m in modules) + "\nprint('ok', pulsefw.crc.NATIVE)"
    # The unix port compiles viper: the packet CRC is the native one there.
    assert run_micropython(code, tmp_path) == "ok True"
