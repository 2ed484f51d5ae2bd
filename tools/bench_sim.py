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
(F) the host at the USB high-speed ceiling: a board stream (1024-pixel Mono16
    lines) sent through the link emulation at usb-hs into a pty, as the
    simulated board does, read with pyserial and assembled as the session
    does. Bar: the host takes >= 95 % of the link's 25 MB/s with zero lines
    lost.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

import numpy as np
import serial

from pulseline.link.assembler import FrameAssembler
from pulseline.link.protocol import wire
from pulseline.link.streamgen import StreamWriter, random_frames
from pulseline.plant import Plant, PlantConfig, Timeline
from pulseline.sim.fast import FastSim
from pulseline.sim.link import LinkDirection, parse_faults, parse_link

PIXELS_BAR = 20.0
HS_BAR = 0.95
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
    firmware = Path(__file__).resolve().parents[1] / "firmware"
    if not exe.exists() or not firmware.is_dir():
        return None
    res = subprocess.run([str(exe), "-c", MPY_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={"MICROPYPATH": str(firmware)})
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip() or res.stdout.strip())
    n, dt_us = (int(x) for x in res.stdout.split())
    return n / (dt_us / 1e6)


def host_at_usb_hs(seconds: float = 3.0) -> tuple[float, int, int, int]:
    """(MB/s the host took, frames, lines lost, crc errors) over `seconds`."""
    link = parse_link("usb-hs")
    pixels, lines, per_block = 1024, 256, 8
    images = random_frames(np.random.default_rng(1), per_block, lines, pixels, wire.FMT_MONO16)
    writer = StreamWriter(pixels, lines, wire.FMT_MONO16)

    def block(first_id: int) -> bytes:  # the board's next frames, with new ids
        return b"".join(p.data for i in range(per_block) for p in writer.frame(first_id + i, images[i]))

    master, slave = pty.openpty()
    tty.setraw(slave)
    port = serial.Serial(os.ttyname(slave), timeout=0.05)
    asm = FrameAssembler(pixels, lines, "mono16", max_frames_in_flight=8)
    got = {"bytes": 0, "frames": 0}
    stop = threading.Event()

    def host() -> None:  # what the session's reader does
        while not stop.is_set():
            data = port.read(1 << 20)
            if data:
                got["bytes"] += len(data)
                got["frames"] += sum(1 for item in asm.feed(data) if hasattr(item, "pixels"))

    reader = threading.Thread(target=host, daemon=True)
    reader.start()
    t0 = time.monotonic()
    d = LinkDirection(link, parse_faults(""), np.random.default_rng(0), t0)
    sent = 0
    pending = bytearray()
    next_id = 0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        ready = d.next_ready_s()
        if ready is None or ready < now + 0.01:  # the board writes as fast as the link lets it
            d.push(block(next_id), now)
            next_id += per_block
        pending += d.pop_ready(now)
        while pending:
            try:
                n = os.write(master, pending)
            except BlockingIOError:
                break
            del pending[:n]
            sent += n
        time.sleep(0.0005)
    elapsed = time.monotonic() - t0
    deadline = time.monotonic() + 2.0
    while got["bytes"] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    reader.join(timeout=1)
    port.close()
    os.close(master)
    os.close(slave)
    c = asm.counters
    return got["bytes"] / elapsed / 1e6, got["frames"], c["lines_lost"], c["crc_errors"]


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
    mbps, frames, lost, crc = host_at_usb_hs()
    print("(F) host at the USB high-speed ceiling (1024-px Mono16 lines through a pty, pyserial, assembler)")
    r.figure("host took MB/s", f"{mbps:.1f}", f"link ceiling {parse_link('usb-hs').bytes_per_s / 1e6:.0f} MB/s, "
             f"{frames} frames")
    r.ratio("of the ceiling", mbps * 1e6 / parse_link("usb-hs").bytes_per_s, HS_BAR)
    r.check(f"zero lines lost ({lost}), zero CRC errors ({crc})", lost == 0 and crc == 0)
