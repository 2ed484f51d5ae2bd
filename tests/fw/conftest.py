# The firmware unit suite: these files run under pytest (CPython, with the
# host's `micropython` shim) and, unchanged, on the real MicroPython binary
# (the 64-bit unix port, through mpy_runner.py) and on a 32-bit MicroPython
# (the webassembly port under Node.js, through mp32_runner.mjs): see
# tests/test_firmware_suite.py.
from pulseline import mpcompat

mpcompat.install()


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _scratch_dir(tmp_path, monkeypatch):
    # test_journal's real-filesystem test writes here (on MicroPython the
    # runner passes the same variable).
    monkeypatch.setenv("PULSEFW_TMP", str(tmp_path))
