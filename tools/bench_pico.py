"""(H) the emulated Pico's speed: board time (the emulator's cycle count)
against wall time, on the Pico's own MicroPython, through unmodified
mpremote's transport.

- busy: a loop of integer additions (the core never sleeps);
- idle: time.sleep(10) at the REPL (the core sleeps until its timer alarm,
  and the emulator jumps to it).

Each ratio is board seconds over the wall seconds between the program's
first and last line reaching the host. Exposing and reading out need the
detector's pixel bus wired (not yet: docs/board.md, "The emulated Pico").

    python tools/bench_pico.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mpremote.transport_serial import SerialTransport

from pulseline.sim.pico.board import PicoBoard

BUSY = "x = 0\nfor i in range(100000):\n    x += i\n"
IDLE = "time.sleep(10)\n"
TIMES = "\N{MULTIPLICATION SIGN}"


def timed(t: SerialTransport, body: str) -> tuple[float, float]:
    """(board seconds, wall seconds) of `body` run on the board."""
    program = ("import time\nprint('S')\nt0 = time.ticks_us()\n" + body +
               "print('E', time.ticks_diff(time.ticks_us(), t0))\n")
    seen: dict[str, float] = {}
    text = bytearray()

    def consumer(data: bytes) -> None:
        text.extend(data)
        now = time.monotonic()
        if b"S" in text and "S" not in seen:
            seen["S"] = now
        if b"E " in text and "E" not in seen:
            seen["E"] = now

    t.exec(program, data_consumer=consumer)
    board_us = int(bytes(text).split(b"E ")[1].split()[0])
    return board_us / 1e6, seen["E"] - seen["S"]


def run(r: Any) -> None:
    print("(H) the emulated Pico: board time against wall time (MicroPython 1.28 on rp2040js)")
    with tempfile.TemporaryDirectory(prefix="pulseline-bench-pico-") as tmp, \
            PicoBoard(Path(tmp) / "fs", name="bench", state_dir=Path(tmp) / "state") as board:
        t = SerialTransport(board.pty_path, baudrate=115200)
        try:
            t.enter_raw_repl(soft_reset=False)
            for label, body in (("busy (integer loop)", BUSY), ("idle (time.sleep)", IDLE)):
                board_s, wall_s = timed(t, body)
                r.figure(label, f"{board_s / max(wall_s, 1e-3):.3f}{TIMES}",
                         f"{board_s:.2f} s of board time in {wall_s:.2f} s of wall time")
            t.exit_raw_repl()
        finally:
            t.close()
    r.figure("exposing, reading out", "not yet", "the detector's pixel bus is not wired")


if __name__ == "__main__":
    from bench import Report

    report = Report()
    run(report)
    sys.exit(0 if report.ok else 1)
