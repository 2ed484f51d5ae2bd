"""(H) the emulated Pico's speed: board time (the emulator's cycle count)
against wall time, on the Pico's own MicroPython, through unmodified
mpremote's transport.

- busy: a loop of integer additions (the core never sleeps);
- idle: time.sleep(10) at the REPL (the core sleeps until its timer alarm,
  and the emulator jumps to it);
- exposing and reading out: the flashed firmware, pressed at the default
  geometry (256 x 256 Mono16), every pixel on the PIO's bus and every line
  out over the emulated USB.

Each ratio is board seconds over wall seconds: between the program's first
and last line reaching the host, or between the first and the last of the
frames counted (board time from the frames' own timestamps).

    python tools/bench_pico.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mpremote.transport_serial import SerialTransport

from pulseline.link.session import Session
from pulseline.sim.pico.board import PicoBoard
from pulseline.targets.pico import PicoTarget, flash_image

BUSY = "x = 0\nfor i in range(100000):\n    x += i\n"
IDLE = "time.sleep(10)\n"
EXPOSING_FRAMES = 16
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
    exposing(r)


def exposing(r: Any) -> None:
    """The firmware flashed and pressed: frames at the default geometry,
    timed by their own board timestamps against the wall."""
    with tempfile.TemporaryDirectory(prefix="pulseline-bench-pico-") as tmp:
        image = flash_image(Path(tmp) / "image", state_dir=Path(tmp) / "state")
        target = PicoTarget.start(Path(tmp) / "fs", image=image, state_dir=Path(tmp) / "state")
        try:
            with Session(target.port, clock=target.clock) as s:
                settings = s.configure()
                s.arm()
                target.board.set_input("switch", True)
                stamps: list[tuple[int, float, bool]] = []
                while len(stamps) < EXPOSING_FRAMES + 1:
                    f = s.next_frame(10.0)
                    if f is None:
                        raise RuntimeError(f"frame {len(stamps)} did not come within 10 s of board time")
                    stamps.append((f.timestamp_us, time.monotonic(), f.complete))
                target.board.set_input("switch", False)
                s.disarm()
        finally:
            target.close()
    # From the first frame's arrival to the last's: whole frame periods.
    board_s = (stamps[-1][0] - stamps[0][0]) / 1e6
    wall_s = stamps[-1][1] - stamps[0][1]
    frames = len(stamps) - 1
    geometry = f"{settings['lines_per_frame']} x {settings['pixels_per_line']}"
    r.figure(f"exposing, reading out ({geometry})", f"{board_s / max(wall_s, 1e-3):.3f}{TIMES}",
             f"{frames} frames in {board_s:.2f} s of board time, {wall_s:.1f} s of wall time; "
             f"{frames / board_s:.2f} of {settings['pulses_per_s']} pulses/s asked, "
             f"{sum(c for *_, c in stamps)} of {len(stamps)} complete")

if __name__ == "__main__":
    from bench import Report

    report = Report()
    run(report)
    sys.exit(0 if report.ok else 1)
