"""`make bench`, simulator part: how much faster than real time the fast
simulator runs the firmware against the plant, and how many lines per second
the firmware packetises on the real MicroPython interpreter.

(C) the default technique (80 kV, 20 mA, 10 ms, 7.5 pps; 256 x 256 Mono12p
    frames of the default phantom), switch held: firmware + plant + detector
    images, in virtual time, against wall time. The host's assembler consumes
    the stream too (figure given separately). Bar: >= 20x real time.
(D) control only (16 x 16 frames, no detector physics), the same technique,
    ten minutes of switch time. Bar: >= 500x real time.
(E) the firmware's LineEncoder on the MicroPython unix port: 256-pixel
    Mono12p lines packetised per second (CRC-32 and header), with the frame
    rate that allows. Reported; the Pico's own figure comes with Stage 7.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .assembler import FrameAssembler
from .plant import Plant, PlantConfig, Timeline
from .sim.fast import FastSim

PIXELS_BAR = 20.0
CONTROL_BAR = 500.0
S = 1_000_000

MPY_SCRIPT = """
import time
from pulsefw import wire
enc = wire.LineEncoder(256, 256, wire.FMT_MONO12P)
pixels = bytearray(enc.pixel_bytes)
n = 0
def sink(b):
    pass
t0 = time.ticks_us()
while n < 20000:
    enc.write_line(sink, n & 0xFFFF, 1, n & 0xFF, 1, 0, n, pixels)
    n += 1
dt = time.ticks_diff(time.ticks_us(), t0)
print(n, dt)
"""


def _run_exposure(pixels: bool, seconds: float, assemble: bool) -> tuple[float, float, int, int]:
    """(wall s of the simulator, wall s of the assembler, pulses, frames)."""
    tl = Timeline().press(100_000, int(seconds * S))
    cfg = PlantConfig(seed=1) if pixels else PlantConfig(seed=1, structures=False, field_lines=16, field_pixels=16)
    sim = FastSim(Plant(cfg, tl), pixels=pixels)
    sim.run_until(5_000)
    if not pixels:
        sim.command("set_config", {"pixels_per_line": 16, "lines_per_frame": 16})
    sim.command("arm")
    asm = FrameAssembler(256, 256, "mono12p") if assemble else None
    end = int((seconds + 0.2) * S)
    sim_wall = 0.0
    asm_wall = 0.0
    frames = 0
    while sim.now_us < end:
        t0 = time.perf_counter()
        sim.run_until(min(end, sim.now_us + S))
        data = sim.take_output()
        t1 = time.perf_counter()
        sim_wall += t1 - t0
        if asm is not None:
            frames += sum(1 for item in asm.feed(data) if hasattr(item, "pixels"))
            asm_wall += time.perf_counter() - t1
    return sim_wall, asm_wall, len(sim.plant.pulses), frames


def micropython_lines_per_s() -> float | None:
    exe = Path(sys.executable).parent / "micropython"
    firmware = Path(__file__).resolve().parents[2] / "firmware"
    if not exe.exists() or not firmware.is_dir():
        return None
    res = subprocess.run([str(exe), "-c", MPY_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={"MICROPYPATH": str(firmware)})
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip() or res.stdout.strip())
    n, dt_us = (int(x) for x in res.stdout.split())
    return n / (dt_us / 1e6)


def run(r: Any) -> None:
    _run_exposure(True, 0.5, assemble=True)  # warm up: imports, caches
    _run_exposure(False, 0.5, assemble=False)
    secs = 20.0
    sim_wall, asm_wall, pulses, frames = _run_exposure(True, secs, assemble=True)
    print(f"(C) fast simulator, default technique with pixels: {secs:g} s of switch time, {pulses} pulses")
    r.ratio("simulator vs real time", (secs + 0.2) / sim_wall, PIXELS_BAR, digits=1)
    r.ratio("simulator + host assembler", (secs + 0.2) / (sim_wall + asm_wall), digits=1)
    r.check(f"every pulse assembled into a frame ({frames}/{pulses})", frames == pulses)
    secs = 600.0
    sim_wall, _, pulses, _ = _run_exposure(False, secs, assemble=False)
    print(f"(D) fast simulator, control only (16x16 frames, no detector physics): {secs:g} s, {pulses} pulses")
    r.ratio("simulator vs real time", (secs + 0.2) / sim_wall, CONTROL_BAR, digits=0)
    lines_s = micropython_lines_per_s()
    print("(E) firmware line packetiser on the MicroPython unix port (256 px Mono12p)")
    if lines_s is None:
        r.figure("lines/s", "n/a", "micropython not installed")
    else:
        r.figure("lines/s", f"{lines_s:,.0f}", f"= {lines_s / 256:.0f} frames/s of 256 lines (7.5 pps needs 1,920)")
