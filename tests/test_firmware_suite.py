"""The firmware unit suite (tests/fw) on the real MicroPython binary; pytest
runs the same files under CPython directly."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "fw"
MODULES = sorted(p.stem for p in SUITE.glob("test_*.py"))


@pytest.mark.micropython
def test_firmware_unit_suite_passes_on_micropython(tmp_path):
    micropython = Path(sys.executable).parent / "micropython"
    env = {"MICROPYPATH": f"{ROOT / 'firmware'}:{SUITE}", "PULSEFW_TMP": str(tmp_path),
           "PATH": os.environ.get("PATH", "")}
    # The heap holds the tests' recorded board output too, not only firmware.
    res = subprocess.run([str(micropython), "-X", "heapsize=64M", str(SUITE / "mpy_runner.py"), *MODULES],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every test function ran: the count must match the files.
    expected = sum((SUITE / f"{m}.py").read_text().count("\ndef test_") for m in MODULES)
    assert f"micropython: {expected} passed, 0 failed" in res.stdout, res.stdout


@pytest.mark.micropython
def test_firmware_unit_suite_passes_on_32_bit_micropython():
    # The webassembly port (npm, package.json; `make` installs it) is a real
    # MicroPython whose small integers are 31 bits, as the Pico's: what would
    # be a long integer there (an allocation on the hot path) is one here.
    node = shutil.which("node")
    runtime = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    assert node, "node is not installed: the 32-bit MicroPython runs on Node.js"
    assert runtime.is_dir(), "the 32-bit MicroPython is not installed: run `make` (npm ci)"
    res = subprocess.run([node, str(SUITE / "mp32_runner.mjs"), str(ROOT), *MODULES],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = sum((SUITE / f"{m}.py").read_text().count("\ndef test_") for m in MODULES)
    assert f"micropython: {expected} passed, 0 failed" in res.stdout, res.stdout
