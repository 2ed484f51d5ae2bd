"""The MicroPython unix port made to look like a board at its REPL: the
launcher that runs boot.py and main.py, the `machine` and `os` shims a
board's firmware and mpremote rely on, and what the host sees of the REPL
across interpreter restarts (which prompt it shows, a Ctrl-C waiting for an
answer, the banner hidden when the board comes back to the raw REPL).

May import link and plant; never targets or above.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..mpcompat import import_firmware

hal_sim = import_firmware("pulsefw.boards.sim.hal")

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
FRIENDLY_PROMPT = b">>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"
READY_MARK = b"\x00PLSIM\x00"  # printed by the launcher between boot.py and the REPL banner (raw mode)
INTERRUPT_GRACE_S = 0.5  # a firmware that ignores Ctrl-C this long gets SIGINT

# Runs in the interpreter: boot.py, then main.py unless a soft reset came
# from the raw REPL; -i then leaves it at the REPL, as a board.
LAUNCHER = """
import os
def _pl_run(name):
    try:
        os.stat(name)
    except OSError:
        return
    exec(open(name).read(), {"__name__": "__main__"})
_pl_run("boot.py")
if %r:
    _pl_run("main.py")
else:
    print(%r, end="")
"""

# machine.reset() for the unix port: the builtin `machine` has none.
MACHINE_SHIM = f"""
from umachine import *
import sys
def reset():
    sys.exit({hal_sim.EXIT_HARD_RESET})
def soft_reset():
    raise SystemExit
def reset_cause():
    return 1
"""


# The unix port's os is POSIX's: stat("") fails and ilistdir gives no sizes.
# A board's VFS does both, and mpremote relies on them ("cp x :", "ls").
OS_SHIM = """
from uos import *
import uos

def stat(path):
    return uos.stat(path or ".")

def ilistdir(path="."):
    base = path or "."
    for e in uos.ilistdir(base):
        name, kind, inode = e[0], e[1], e[2]
        size = 0
        if kind == 0x8000:
            try:
                size = uos.stat(base + "/" + name)[6]
            except OSError:
                pass
        yield (name, kind, inode, size)
"""


def write_shims(directory: Path) -> None:
    """The shim modules, in a directory on the interpreter's path (never on
    the board's filesystem)."""
    (directory / "machine.py").write_text(MACHINE_SHIM)
    (directory / "os.py").write_text(OS_SHIM)


def launcher(*, main: bool) -> str:
    """The interpreter's -c program: boot.py, then main.py or (main=False)
    the mark after which the supervisor enters the raw REPL."""
    return LAUNCHER % (main, READY_MARK.decode())


class Repl:
    """What the host sees of the board's REPL, across interpreter restarts."""

    def __init__(self) -> None:
        self.raw_mode = False
        self.prompt_seen = 0.0
        self.interrupt_at: float | None = None  # when a Ctrl-C not answered by a prompt gets SIGINT
        self._tail = b""
        self._swallow = False  # relaunching into the raw REPL: hide the interpreter's banner
        self._swallow_buf = bytearray()
        self._sent_ctrl_a = False  # raw-REPL relaunch: Ctrl-A sent to the new interpreter

    def launched(self, *, main: bool) -> None:
        """A new interpreter: without main.py it is a relaunch into the raw REPL."""
        self._swallow = not main
        self._swallow_buf.clear()
        self.interrupt_at = None

    def track_prompts(self, data: bytes) -> None:
        """Board output on its way to the host: the last prompt says the mode."""
        scan = self._tail + data
        r = scan.rfind(RAW_PROMPT)
        f = scan.rfind(FRIENDLY_PROMPT)
        if r >= 0 or f >= 0:
            self.raw_mode = r > f
            self.prompt_seen = time.monotonic()
            self.interrupt_at = None
        self._tail = scan[-32:]

    def host_sent(self, data: bytes) -> None:
        """Host input on its way to the board: a Ctrl-C starts the grace time."""
        if b"\x03" in data and self.interrupt_at is None:
            self.interrupt_at = time.monotonic() + INTERRUPT_GRACE_S

    def interrupt_due(self, now: float) -> bool:
        """The firmware did not answer Ctrl-C in time (said once)."""
        if self.interrupt_at is not None and now >= self.interrupt_at:
            self.interrupt_at = None
            return True
        return False

    def from_process(self, data: bytes, emit: Callable[[bytes], None], to_interpreter: Callable[[bytes], None]) -> None:
        """The interpreter's output: emitted toward the host, but for what a
        relaunch into the raw REPL hides."""
        if not self._swallow:
            emit(data)
            return
        # Relaunched into the raw REPL: boot.py's output goes through; the
        # interpreter's banner and friendly prompt do not; then enter raw
        # mode and hand the host exactly the raw REPL prompt.
        self._swallow_buf += data
        buf = self._swallow_buf
        i = buf.find(READY_MARK)
        if i >= 0 and not self._sent_ctrl_a:
            emit(bytes(buf[:i]))
            del buf[:i + len(READY_MARK)]
            self._sent_ctrl_a = True
            to_interpreter(b"\x01")
        j = buf.find(RAW_PROMPT)
        if j >= 0 and self._sent_ctrl_a:
            rest = bytes(buf[j + len(RAW_PROMPT):])
            buf.clear()
            self._swallow = False
            self._sent_ctrl_a = False
            emit(RAW_PROMPT + rest)
