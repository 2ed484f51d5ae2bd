"""An emulated Raspberry Pi Pico as a board on the host: the emulator
(emulator.mjs, in Node) runs the RP2040's boot ROM and the Pico's own
MicroPython; this side gives its USB CDC port the endpoints a simulated
board has (a raw pty linked as .pulseline/<name>, a socket:// URL, one
host at a time, another uid refused), its control channel, and its place
in the registry, so every tool finds it as it finds a simulated board.

The board keeps its flash in <fs>/flash.bin: created from the uf2 on the
first start, programmed and erased by the firmware (littlefs), kept
across machine.reset(), the watchdog, power cycles and restarts.

May import link and plant; never targets or above.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import PulselineError
from ...link.clock import OwnClock
from ...link.protocol import wire
from ...mpcompat import import_firmware
from ...plant import InputState, Plant, PlantConfig, Timeline
from ...plant.detector import FrameTruth
from ...plant.generator import WIDTH_MAX_US
from ..control_channel import ControlServer
from ..controls import PlantControls, ServedBoard
from ..endpoints import Client, Clients, HostEndpoints
from ..registry import (
    STATE_DIR,
    BoardFiles,
    check_name,
    fs_in_use,
    lock_dir,
    lock_file,
    name_in_use,
    next_free_name,
    private_dir,
    publish,
    withdraw,
)
from .firmware import PicoFiles, find_pico_files

wiring = import_firmware("pulsefw.boards.rp2.wiring")
timing = import_firmware("pulsefw.boards.rp2.timing")

FLASH_IMAGE = "flash.bin"
# Host bytes held for the emulator before the host's reads stop (its writes
# then block, as a USB host's do when the board takes nothing).
TO_BOARD_HIGH_WATER = 64 * 1024
BOOT_TIMEOUT_S = 30.0


class NotWired(PulselineError, ValueError):
    """A plant input or fault the emulated Pico's wiring does not carry yet."""


class PicoBoard(PlantControls, ServedBoard):
    """One emulated Pico. start() returns once its endpoints exist and the
    chip has come out of its first reset."""

    kind = "pico"

    def __init__(self, fs_dir: str | Path | None = None, *, name: str | None = None, seed: int = 0,
                 state_dir: str | Path = STATE_DIR, pico_dir: str | Path | None = None, tcp_port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.name = check_name(name) if name is not None else next_free_name(self.state_dir)
        self.files = BoardFiles(self.name, self.state_dir)
        self.fs_dir = Path(fs_dir) if fs_dir is not None else self.files.default_fs
        self.seed = seed
        self.pico: PicoFiles = find_pico_files(pico_dir)
        # The flash's unique ID (machine.unique_id()), the board's own from its seed.
        self.unique_id = (0xE660_0000_0000_0000 | (seed & 0xFFFF_FFFF_FFFF)).to_bytes(8, "big")
        self._tcp_port = tcp_port
        self._locks: list[int] = []
        self._started = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self.errors: list[str] = []
        self.boots: list[tuple[int, str]] = []  # (board time us, cause) of each chip reset
        self._stalls: list[int] = []  # board time (us) at which each scripted stall hung the core
        self.edges: list[tuple[int, int, int]] = []  # (board time ns, GPIO, level) of watched outputs
        self._board_us = 0  # the emulator's latest report of board time
        self._to_emulator = bytearray()  # host bytes not yet taken by the emulator's socket
        self._events_buf = bytearray()
        self.proc: subprocess.Popen[bytes] | None = None
        self._usb: socket.socket | None = None  # our end of the emulator's USB CDC socket
        self.host = HostEndpoints(self._from_host, self._log_error)
        self.ctl = ControlServer(self, self._stop, self._log_error)
        # The plant its pins are wired to (docs/board.md's pin map): so far
        # its inputs (switch, door, key, generator ready, HLC switch and the
        # interlock chain); plant time is board time.
        self.plant = Plant(PlantConfig(seed=seed), Timeline())
        self._plant_lock = threading.Lock()
        self._setting = threading.Lock()
        self._held_ns: int | None = None
        self._gate_rise_ns: int | None = None
        self._planned_width_us: int | None = None  # the pulse the gate's state machine holds, from its rise
        self._pulse_frame: FrameTruth | None = None  # the pulse's frame, served on the bus before its fall
        self.frames_served = 0  # frames put on the pixel bus (pulse and dark)
        self._pwm_duty = {"kv": 0.0, "ma": 0.0}  # the setpoints' duty (0..1), from their PWM slices

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> PicoBoard:
        private_dir(self.state_dir)
        self._take_locks()
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _take_locks(self) -> None:
        fd = lock_file(self.files.lock)
        if fd is None:
            raise name_in_use(self.files)
        self.fs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fs_fd = lock_dir(self.fs_dir)
        if fs_fd is None:
            with contextlib.suppress(FileNotFoundError):
                self.files.lock.unlink()
            os.close(fd)
            raise fs_in_use(self.fs_dir, self.state_dir)
        self._locks = [fd, fs_fd]

    def _start(self) -> None:
        self.host.open(self._tcp_port)
        self.pty_path = self.host.pty_path
        self.url = self.host.url
        self.ctl.open()
        self.control = self.ctl.address
        self._launch()
        self._thread = threading.Thread(target=self._io_loop, name=f"pico-{self.name}", daemon=True)
        self._thread.start()
        self._until(lambda: self.boots, BOOT_TIMEOUT_S, "the emulated Pico's first boot")
        with self._plant_lock:
            self.set_pins(input_levels(self.plant.inputs_at(0)))  # (held from power-on, as wires are)
        # GATE's rise holds the chip until the monitors' waveform is on the ADC.
        self._command({"op": "watch", "pins": [wiring.PIN_GATE], "hold_on_rise": True})
        # The front end on GP0-GP11: each frame's first line holds the chip until the plant's frame is on it.
        self._command({"op": "bus", "on": True})
        publish(self.files, self.pty_path, self.describe())

    def _launch(self) -> None:
        board_end, self._usb = socket.socketpair()
        cmd = [self.pico.node, str(self.pico.emulator), "--bootrom", str(self.pico.bootrom), "--uf2",
               str(self.pico.uf2), "--flash", str((self.fs_dir / FLASH_IMAGE).resolve()),
               "--usb-fd", str(board_end.fileno()), "--unique-id", self.unique_id.hex()]
        try:
            # (Its stderr is read and said as the board's own: a detached
            # board's starter waits for the end of the board's stderr.)
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         pass_fds=[board_end.fileno()])
        finally:
            board_end.close()
        self._usb.setblocking(False)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        os.set_blocking(self.proc.stderr.fileno(), False)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "board": self.kind, "pid": os.getpid(), "pty": self.pty_path,
                "link_path": str(self.files.link), "url": self.url, "control": self.control,
                "fs": str(self.fs_dir.resolve()), "link": "usb-cdc", "faults": False, "seed": self.seed,
                "device": None}

    def stop(self) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=3)
        p = self.proc
        if p is not None:
            with contextlib.suppress(OSError, ValueError):
                self._command({"op": "quit"})
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        if self._usb is not None:
            self._usb.close()
            self._usb = None
        self.host.close()
        self.ctl.close()
        if self._started:
            withdraw(self.files)
            self._started = False
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    def __enter__(self) -> PicoBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the board's hardware --------------------------------------------------

    def power_cycle(self, off_s: float = 0.0) -> None:
        """Power off (the chip stops where it is: a power cut), wait, power
        on: the boot ROM runs again from a cold chip; the flash keeps what
        was programmed."""
        n = len(self.boots)
        self._command({"op": "power", "on": False})
        if off_s:
            time.sleep(off_s)
        self._command({"op": "power", "on": True})
        self._until(lambda: len(self.boots) > n, BOOT_TIMEOUT_S, "the boot after a power cycle")

    def set_pins(self, levels: dict[int, bool], at_us: int | None = None) -> None:
        """Drive input GPIOs from outside (a wire's level), at board time
        at_us (its cycle) or as soon as the emulator reads the request."""
        msg: dict[str, Any] = {"op": "pins", "levels": {str(p): int(bool(v)) for p, v in levels.items()}}
        if at_us is not None:
            msg["at_ns"] = at_us * 1000
        self._command(msg)

    def set_adc(self, values: dict[int, int], at_us: int | None = None) -> None:
        """ADC channels' 12-bit readings (0..4095) from at_us on."""
        msg: dict[str, Any] = {"op": "adc", "values": {str(c): int(v) for c, v in values.items()}}
        if at_us is not None:
            msg["at_ns"] = at_us * 1000
        self._command(msg)

    def watch(self, *pins: int) -> None:
        """Report these GPIOs' output edges in `edges`, timed to the cycle."""
        self._command({"op": "watch", "pins": list(pins)})

    def set_input(self, name: str, value: float | bool, at_us: int | None = None) -> int:
        """Change a plant input now, or at board time at_us (scripted ahead);
        returns the board time it takes effect at. The chip is held while
        the wiring changes, so the plant's record and the pins agree to the
        cycle."""
        if name in NOT_WIRED:
            raise NotWired(f"the emulated Pico has no {name!r}: {NOT_WIRED[name]}")
        if name not in WIRED_INPUTS:
            raise NotWired(f"the emulated Pico's {name!r} is not wired to the plant yet "
                             f"(wired: {', '.join(sorted(WIRED_INPUTS))})")
        with self._setting:  # (one change at a time; the I/O thread takes the plant lock for the gate)
            t_ns = self._hold()
            try:
                now_us = -(-t_ns // 1000)  # (the next whole microsecond: the timeline's unit)
                t_us = max(now_us, at_us or 0)
                with self._plant_lock:
                    self.plant.timeline.add(t_us, name, value)
                    # The wires from now on, at every change the timeline
                    # has not reached yet (one scripted earlier may come
                    # after this; one set just before, for the next
                    # microsecond, may not have been reached either).
                    times = sorted({t_us, *(e.t_us for e in self.plant.timeline.events() if e.t_us * 1000 >= t_ns)})
                    points = [[t * 1000, {str(pin): int(level) for pin, level in
                                          input_levels(self.plant.inputs_at(t)).items()}] for t in times]
                self._command({"op": "pins_schedule", "points": points})
                if name == "stall":
                    # The control loop hangs: the core stops where it is, the rest of the chip runs on.
                    self._command({"op": "stall", "at_ns": t_us * 1000, "for_ns": int(value) * 1000})
            finally:
                self._command({"op": "release"})
        return t_us

    def _hold(self) -> int:
        """Stop the chip where it is; its board time (ns)."""
        with self._cond:
            self._held_ns = None
        self._command({"op": "hold"})
        if threading.current_thread() is getattr(self, "_thread", None):
            # Asked on the I/O thread (the control channel's set): it reads
            # the emulator's answer itself, nobody else would.
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            p = self.proc
            assert p is not None and p.stdout is not None
            while self._held_ns is None:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise TimeoutError("no answer to the emulator's hold")
                if select.select([p.stdout], [], [], 0.1)[0]:
                    self._read_events()
        else:
            self._until(lambda: self._held_ns is not None, BOOT_TIMEOUT_S, "the emulator's hold")
        assert self._held_ns is not None
        return self._held_ns

    @property
    def stalls(self) -> list[int]:
        """Board time (us) at which each scripted stall hung the core."""
        with self._cond:
            return list(self._stalls)

    def plant_status(self) -> dict[str, Any]:
        t_us = self.board_now_us()
        with self._plant_lock:
            return {**self.plant.status(t_us), "boots": [list(b) for b in self.boots]}

    def board_now_us(self) -> int:
        """Board time (the emulator's cycle count), as the emulator last
        reported it (every 50 ms of wall time, and at each boot)."""
        with self._cond:
            return self._board_us

    @property
    def clock(self) -> OwnClock:
        """Waits in the board's time, for sessions on this board."""
        return OwnClock(self.board_now_us)

    # -- I/O -------------------------------------------------------------------

    def _command(self, msg: dict[str, Any]) -> None:
        p = self.proc
        if p is None or p.stdin is None or p.poll() is not None:
            raise OSError("the emulated Pico is not running")
        p.stdin.write(json.dumps(msg).encode() + b"\n")
        p.stdin.flush()

    def _until(self, ready: Callable[[], Any], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                p = self.proc
                if p is not None and p.poll() is not None:
                    raise OSError(f"the emulated Pico stopped (status {p.returncode}) before {what}")
                if left <= 0:
                    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
                self._cond.wait(min(left, 0.1))

    def _pwm(self, pwm_slice: int, cc: int, top: int, t_ns: int) -> None:
        """A setpoint's PWM written: the generator's kV or mA setpoint, its
        duty of full scale (the RC filter and amplifier are linear)."""
        for name, pin in (("kv", wiring.PIN_KV_SET), ("ma", wiring.PIN_MA_SET)):
            if pwm_slice != (pin >> 1) & 7:  # (GPIO n is slice n/2 mod 8, channel A or B by its last bit)
                continue
            level = (cc >> 16) if pin & 1 else (cc & 0xFFFF)
            duty = min(1.0, level / (top + 1))
            if duty != self._pwm_duty[name]:
                self._pwm_duty[name] = duty
                with self._plant_lock:
                    self.plant.generator_set(t_ns // 1000, self._pwm_duty["kv"] * wiring.KV_FULL_SCALE,
                                             self._pwm_duty["ma"] * wiring.MA_FULL_SCALE)

    def _gate(self, level: int, t_ns: int, sm: dict[str, int] | None = None) -> None:
        """GATE's edges: the generator's exposure request, as long as it was
        held (the plant's interlock chain refuses what the hardware would).
        `sm`: at a rise, the gate's state machine's counts, which say how
        long it will hold the pin unless the interlock opens."""
        if level:
            self._gate_rise_ns = t_ns
            self._planned_width_us = (timing.GATE_HIGH_FIXED + int(sm["y"]) + timing.GATE_HIGH_COARSE * int(sm["x"])
                                      if sm is not None else None)
            self._pulse_frame = None
            try:
                self._command({"op": "adc_schedule", "points": self._monitor_points(t_ns)})
            finally:
                self._command({"op": "release_rise"})
            return
        rise, self._gate_rise_ns = self._gate_rise_ns, None
        frame, self._pulse_frame = self._pulse_frame, None
        # The request ends: the monitors fall with the tube's current (read
        # as 0: the firmware samples them only while GATE is high).
        self._command({"op": "adc_schedule", "points": [[t_ns, {str(MON_KV): 0, str(MON_MA): 0}]]})
        if rise is not None:
            with self._plant_lock:
                self.plant.generator_fire(rise // 1000, max(1, round((t_ns - rise) / 1000)), frame=frame)

    def _frame(self, lines: int, pixels: int, t_ns: int) -> None:
        """The front end's next frame, asked for at its first line (the chip
        held meanwhile): the pulse's, if the gate is on (the plant exposes
        it as the gate will hold it), else a dark one (offset and read
        noise). Its 12-bit pixels go on GP0-GP11 as the PIO clocks them:
        the frame the plant's record keeps is the one served."""
        t_us = t_ns // 1000
        try:
            with self._plant_lock:
                self.plant.detector_arm(t_us, lines, pixels, wire.FMT_MONO12P)
                frame = None
                if self._gate_rise_ns is not None and self._planned_width_us is not None:
                    frame = self.plant.detector_expose(self._gate_rise_ns // 1000, self._planned_width_us)
                    self._pulse_frame = frame
                if frame is None:
                    width_us = timing.readout_frame_us(lines, pixels, timing.SYS_HZ_PICO)
                    frame = self.plant.detector_dark(t_us, max(1, width_us))
            data = np.ascontiguousarray(frame.raw_adu, dtype="<u2").tobytes()
        except Exception as exc:  # (any: the chip is held until it has a frame)
            # The chip waits at the frame's first line: a frame the plant
            # cannot make must still release it, or the board stops dead.
            # The front end reads zeros (a frame the host sees is blank),
            # and the reason is logged.
            self._log_error(f"frame at {t_us} us ({lines} x {pixels}): the plant could not make it "
                            f"({type(exc).__name__}: {exc}); zeros served")
            self._pulse_frame = None
            data = bytes(lines * pixels * 2)
        self.frames_served += 1
        self._command({"op": "frame", "lines": lines, "pixels": pixels, "data": base64.b64encode(data).decode()})

    def _monitor_points(self, rise_ns: int) -> list[list[Any]]:
        """The generator's kV and mA monitors from GATE's rise, as the ADC
        reads them (12 bits through the 10:3 dividers): the plant's waveform
        of the longest pulse, whose shape up to any width is that width's."""
        t_us = rise_ns // 1000
        with self._plant_lock:
            s = self.plant.timeline.state_at(t_us)
            wave = self.plant.generator.waveform(t_us, WIDTH_MAX_US, float(s["kv_error"]), float(s["ma_error"]))
        kv_code = monitor_codes(wave.kv, wiring.KV_FULL_SCALE)
        ma_code = monitor_codes(wave.ma, wiring.MA_FULL_SCALE)
        return [[rise_ns + int((t - t_us) * 1000), {str(MON_KV): int(k), str(MON_MA): int(m)}]
                for t, k, m in zip(wave.t_us, kv_code, ma_code, strict=True) if t - t_us <= WIDTH_MAX_US]

    def _log_error(self, text: str) -> None:
        if self.errors and self.errors[-1] == text:
            return
        self.errors.append(text)
        del self.errors[:-100]
        with contextlib.suppress(OSError, ValueError):
            print(f"emulated Pico {self.name}: {text}", file=sys.stderr, flush=True)

    def _from_host(self, data: bytes) -> None:
        self._to_emulator += data

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("ev")
        if kind == "pwm":
            self._pwm(int(ev["slice"]), int(ev["cc"]), int(ev["top"]), int(ev["ns"]))
        elif kind == "pin" and int(ev["pin"]) == wiring.PIN_GATE:
            self._gate(int(ev["level"]), int(ev["ns"]), ev.get("sm"))
        elif kind == "frame":
            self._frame(int(ev["lines"]), int(ev["pixels"]), int(ev["ns"]))
        with self._cond:
            if "us" in ev:
                self._board_us = max(self._board_us, int(ev["us"]))
            if kind == "boot":
                self.boots.append((int(ev["us"]), str(ev["cause"])))
            elif kind == "stall":
                self._stalls.append(int(ev["ns"]) // 1000)
            elif kind == "held":
                self._held_ns = int(ev["ns"])
            elif kind == "pin":
                self.edges.append((int(ev["ns"]), int(ev["pin"]), int(ev["level"])))
            elif kind == "error":
                self._log_error(f"emulator: {ev.get('error')}")
            self._cond.notify_all()

    def _io_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._io_step():
                    return
            except Exception as exc:  # the board outlives any one failure; it is logged
                self._log_error(f"I/O loop: {type(exc).__name__}: {exc}")
                self._stop.wait(0.01)

    def _clients(self) -> list[tuple[Clients, Client]]:
        return [(group, c) for group in (self.host, self.ctl) for c in group.clients]

    def _io_step(self) -> bool:
        p, usb = self.proc, self._usb
        if p is None or usb is None or p.stdout is None:
            return False
        if p.poll() is not None:
            self._log_error(f"the emulator ended (status {p.returncode})")
            with self._cond:
                self._cond.notify_all()
            self._stop.wait(0.1)
            return not self._stop.is_set()
        now = time.monotonic()
        poller = select.poll()
        objs: dict[int, Any] = {}
        clients = self._clients()
        taking_host = len(self._to_emulator) < TO_BOARD_HIGH_WATER
        holding = self.host.holding(now)  # a slow host reader: the emulator's output waits (and then the chip)
        watched: list[tuple[Any, int, int]] = [(self.host.tcp, self.host.tcp.fileno(), select.POLLIN),
                                               (self.ctl.sock, self.ctl.sock.fileno(), select.POLLIN),
                                               (p.stdout, p.stdout.fileno(), select.POLLIN)]
        if p.stderr is not None and not p.stderr.closed:
            watched.append((p.stderr, p.stderr.fileno(), select.POLLIN))
        if taking_host:
            watched.append((self.host.master, self.host.master, select.POLLIN))
        usb_events = (0 if holding else select.POLLIN) | (select.POLLOUT if self._to_emulator else 0)
        if usb_events:
            watched.append((usb, usb.fileno(), usb_events))
        for group, c in clients:
            wants = (select.POLLIN if taking_host or group is self.ctl else 0) | (select.POLLOUT if c.out else 0)
            if wants and c.sock.fileno() >= 0:
                watched.append((c.sock, c.sock.fileno(), wants))
        for obj, fileno, wants in watched:
            objs[fileno] = obj
            poller.register(fileno, wants)
        timeout_ms = 1 if self.host.pending_out or holding else 20
        for fileno, ev in poller.poll(timeout_ms):
            obj = objs[fileno]
            if ev & select.POLLOUT:
                if obj is usb:
                    self._to_usb()
                else:
                    for group, c in self._clients():
                        if c.sock is obj:
                            group.flush(c)
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._readable(obj)
        self.host.send(b"")  # what the pty can take of what waits for it
        self.host.refused_clients()
        return True

    def _to_usb(self) -> None:
        assert self._usb is not None
        try:
            n = self._usb.send(self._to_emulator)
        except BlockingIOError:
            return
        del self._to_emulator[:n]

    def _readable(self, obj: Any) -> None:
        p = self.proc
        assert p is not None and p.stdout is not None
        if obj is self.host.tcp:
            self.host.accept()
        elif obj is self.ctl.sock:
            self.ctl.accept()
        elif obj == self.host.master:
            self.host.read_pty()
        elif obj is self._usb:
            try:
                data = self._usb.recv(65536)
            except BlockingIOError:
                return
            if data:
                self.host.send(data)
        elif obj is p.stdout:
            self._read_events()
        elif obj is p.stderr:
            try:
                said = os.read(p.stderr.fileno(), 65536)
            except BlockingIOError:
                return
            if not said:
                p.stderr.close()
            for text in said.decode(errors="replace").splitlines():
                if text.strip():
                    self._log_error(f"emulator: {text.strip()}")
        else:
            for group, c in self._clients():
                if c.sock is obj:
                    group.read(c)

    def _read_events(self) -> None:
        """The emulator's events that have come, each handled in order."""
        p = self.proc
        assert p is not None and p.stdout is not None
        try:
            chunk = os.read(p.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        self._events_buf += chunk
        while b"\n" in self._events_buf:
            line, _, rest = bytes(self._events_buf).partition(b"\n")
            self._events_buf[:] = rest
            with contextlib.suppress(ValueError):
                self._on_event(json.loads(line))


MON_KV, MON_MA = wiring.PIN_KV_MON - 26, wiring.PIN_MA_MON - 26  # ADC channels (GP26 is ADC0)
ADC_FULL_CODE = 4095


def monitor_codes(values: Any, full_scale: float) -> Any:
    """A monitor's readings as the RP2040's 12-bit ADC gives them: 0..10 V
    for 0..full scale, through the 10:3 divider, against 3.3 V."""
    volts = np.asarray(values) / full_scale * wiring.ADC_MONITOR_VOLTS
    return np.clip(np.rint(volts / wiring.ADC_REF_VOLTS * ADC_FULL_CODE), 0, ADC_FULL_CODE)


# The plant's inputs the Pico's wiring carries: the pins' (switch, door,
# key, generator ready and fault, HLC switch), what the plant's generator
# and detector make of the gate and the bus (the slab, structures, the
# generator's errors), and a hung control loop (the core stopped).
WIRED_INPUTS = frozenset({"switch", "door_closed", "key_on", "generator_ready", "generator_fault", "hlc_switch",
                          "water_cm", "structures", "kv_error", "ma_error", "stall"})
# What a Pico cannot have, and why.
NOT_WIRED = {
    "readout_timeout": "it clocks its front end itself (LINE_SYNC, PIX_CLK), so every line it asks for comes",
    "line_loss": "it clocks its front end itself (LINE_SYNC, PIX_CLK), so every line it asks for comes",
    "link_down": "its link is its USB port; cut it with a link fault (the fault proxy's disconnect=)",
}


def input_levels(s: InputState) -> dict[int, bool]:
    """The plant's inputs as the board's pins see them (docs/board.md's pin
    map): the two switches pull their pin low when pressed, the rest drive
    theirs high when permissive, and the interlock chain (the switch's
    second contact, door, key and generator ready in series) is high only
    when every one of them is."""
    return {wiring.PIN_SWITCH: not s.switch, wiring.PIN_DOOR_CLOSED: s.door_closed, wiring.PIN_KEY_ON: s.key_on,
            wiring.PIN_GENERATOR_READY: s.generator_ready, wiring.PIN_HLC_SWITCH: not s.hlc_switch,
            wiring.PIN_INTERLOCK_OK: s.switch and s.door_closed and s.key_on and s.generator_ready}


def serve(args: list[str] | None = None) -> int:
    """`python -m pulseline.sim.pico.board`: one emulated Pico in the
    foreground (what `pulseline sim --board pico --detach` starts)."""
    import argparse

    ap = argparse.ArgumentParser(prog="pulseline-pico-board")
    ap.add_argument("--name")
    ap.add_argument("--fs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state-dir", default=str(STATE_DIR))
    ap.add_argument("--log", help="once started, output goes here (until then: stderr, for the starter to read)")
    ns = ap.parse_args(args)
    try:
        board = PicoBoard(ns.fs, name=ns.name, seed=ns.seed, state_dir=ns.state_dir).start()
    except (ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if ns.log:
        fd = os.open(ns.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        for std in (1, 2):
            os.dup2(fd, std)
        os.close(fd)
    board.serve_until_stopped()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
