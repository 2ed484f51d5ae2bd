"""The fast simulator: the firmware, in-process under CPython, against the
plant model in virtual time.

Time only moves when the firmware sleeps (`wait_until`), and then jumps to
the next thing that can matter: the firmware's own deadline, a change on the
plant's timeline, or bytes from the host. So an hour of fluoroscopy runs in
seconds, and the same seed gives the same bytes every time.

The board's output is the same byte stream a real board sends over USB; the
Stage 1 assembler consumes it. A simple host stands in for the session: it
sends a heartbeat (PING) every `heartbeat_us`, except while the timeline
says the link is down, and lets tests send commands.
"""

from __future__ import annotations

import bisect
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PulselineError
from ..mpcompat import import_firmware
from ..plant import Plant, PlantConfig, Timeline

wire = import_firmware("pulsefw.wire")
codes = import_firmware("pulsefw.codes")
app_module = import_firmware("pulsefw.app")
commands = import_firmware("pulsefw.commands")
hal_sim = import_firmware("pulsefw.boards.sim.hal")
fw_journal = import_firmware("pulsefw.journal")


class BoardReset(Exception):
    """The firmware asked for a reset (or the watchdog gave one)."""


class MemoryStore:
    """The board's filesystem for the journal, in memory; it survives board
    resets (as flash does) because the simulator keeps it."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def read(self, name: str) -> bytes:
        return self.files.get(name, b"")

    def append(self, name: str, data: bytes) -> None:
        self.files[name] = self.files.get(name, b"") + bytes(data)

    def replace(self, name: str, data: bytes) -> None:
        self.files[name] = bytes(data)


class PipeLink:
    """Host <-> board bytes, in process. Host->board bytes are stuffed
    packets, as on the wire."""

    def __init__(self, sim: FastSim) -> None:
        self.sim = sim
        self.to_board = bytearray()
        self.from_board = bytearray()
        self.bytes_to_host = 0

    def read(self, buf: bytearray) -> int:
        n = min(len(buf), len(self.to_board))
        cut = self.to_board.find(b"\x03", 0, n)
        if cut >= 0:
            # Ctrl-C: never in stuffed traffic, so the REPL is asked for (or
            # the line is noisy); a board's USB stack raises it, as here.
            del self.to_board[:cut + 1]
            raise KeyboardInterrupt
        if n:
            buf[:n] = self.to_board[:n]
            del self.to_board[:n]
        return n

    def write(self, data: Any) -> None:
        if self.sim.link_down:
            return  # a pulled cable: nothing arrives
        self.from_board += data
        self.bytes_to_host += len(data)


class VirtualPort:
    """The plant port of the sim HAL, in virtual time."""

    def __init__(self, sim: FastSim) -> None:
        self.sim = sim
        self.plant = sim.plant
        self.frame_buf: Any = None
        self.landed: Any = None
        self.line_bytes = 0
        self.copied = 0
        self.wdt_timeout_us = 0
        self.wdt_fed_us = 0

    def ticks_us(self) -> int:
        return self.sim.now_us

    def wait_until(self, deadline_us: int) -> None:
        self.sim.advance(deadline_us)

    def wait_exactly(self, deadline_us: int) -> None:
        # A busy wait: nothing wakes it, time simply passes.
        if deadline_us > self.sim.now_us:
            self.sim.now_us = deadline_us

    def read_inputs(self, inputs: Any) -> None:
        s = self.plant.inputs_at(self.sim.now_us)
        inputs.switch = s.switch
        inputs.door_closed = s.door_closed
        inputs.key_on = s.key_on
        inputs.generator_ready = s.generator_ready
        inputs.hlc_switch = s.hlc_switch

    def generator_set(self, kv: float, ma: float) -> None:
        self.plant.generator_set(self.sim.now_us, kv, ma)

    def generator_fire(self, width_us: int) -> bool:
        truth = self.plant.generator_fire(self.sim.now_us, width_us)
        if truth is not None:
            self.copied = 0
        return truth is not None

    def emission_off(self) -> None:
        self.plant.emission_off(self.sim.now_us)

    def generator_feedback(self, out: Any) -> None:
        kv, ma, _ = self.plant.generator_feedback()
        out[0] = kv
        out[1] = ma

    def detector_arm(self, frame_buf: Any, landed: Any, lines: int, pixels: int, pixel_format: int) -> None:
        self.frame_buf = frame_buf
        self.landed = landed
        self.line_bytes = len(frame_buf) // lines
        self.copied = 0
        if not self.sim.pixels:
            return
        self.plant.detector_arm(self.sim.now_us, lines, pixels, pixel_format)

    def detector_release(self) -> None:
        self.frame_buf = bytearray(0)
        self.landed = bytearray(0)

    def detector_dark(self, width_us: int) -> None:
        self.copied = 0
        if self.sim.pixels:
            self.plant.detector_dark(self.sim.now_us, width_us)

    def identity(self) -> tuple[str, str]:
        return self.plant.identity()

    def detector_poll(self) -> bool:
        if not self.sim.pixels:
            # Control-only: every line lands at once, its pixels left as
            # they are (no detector physics, no image).
            self.landed[:] = b"\x01" * len(self.landed)
            return True
        now = self.sim.now_us
        idx = self.plant.detector_landed_indices(now)
        if len(idx) > self.copied:
            frame = self.plant.detector_frame_bytes()
            lb = self.line_bytes
            for i in idx[self.copied:]:
                i = int(i)
                self.frame_buf[i * lb:(i + 1) * lb] = frame[i * lb:(i + 1) * lb]
                self.landed[i] = 1
            self.copied = len(idx)
        return bool(self.plant.detector_done(now))

    def watchdog_start(self, timeout_ms: int) -> None:
        self.wdt_timeout_us = timeout_ms * 1000
        self.wdt_fed_us = self.sim.now_us
        self.plant.watchdog_start(self.sim.now_us, timeout_ms * 1000)

    def watchdog_feed(self) -> None:
        self.wdt_fed_us = self.sim.now_us
        self.plant.watchdog_feed(self.sim.now_us)

    def watchdog_stop(self) -> None:
        self.wdt_timeout_us = 0
        self.plant.watchdog_stop(self.sim.now_us)

    def reset_cause(self) -> str:
        return self.sim.reset_cause

    def reset(self) -> None:
        raise BoardReset("soft")


@dataclass
class Response:
    seq: int
    status: int
    body: Any


@dataclass
class HostLog:
    """What the stand-in host has read from the board, parsed."""

    responses: dict[int, Response] = field(default_factory=dict)
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # (t_us, name, body)
    logs: list[tuple[int, str]] = field(default_factory=list)

    def feed(self, data: bytes | bytearray, pos: int, now_us: int = 0) -> int:
        """Parse the clean board stream `data` from `pos`; returns where the
        next call starts (a packet still arriving waits for its bytes)."""
        n = len(data)
        while pos + wire.HEADER_SIZE <= n:
            if data[pos:pos + 4] != wire.SYNC:
                nxt = data.find(wire.SYNC, pos + 1)
                pos = nxt if nxt >= 0 else n
                continue
            _, ptype, _, length = struct.unpack_from(wire.PACKET_HEADER_FORMAT, data, pos + 4)
            end = pos + wire.HEADER_SIZE + length + wire.CRC_SIZE
            if end > n:
                break
            payload = bytes(data[pos + wire.HEADER_SIZE:end - wire.CRC_SIZE])
            if ptype == wire.PKT_RESPONSE:
                cseq, status = struct.unpack_from(wire.RESPONSE_HEAD_FORMAT, payload)
                body_raw = payload[wire.RESPONSE_HEAD_SIZE:].decode()
                body = json.loads(body_raw) if status == codes.ERR_OK else body_raw
                self.responses[cseq] = Response(cseq, status, body)
            elif ptype == wire.PKT_EVENT:
                code, ts = struct.unpack_from(wire.EVENT_HEAD_FORMAT, payload)
                self.events.append((ts, _event_name(code), json.loads(payload[wire.EVENT_HEAD_SIZE:])))
            elif ptype == wire.PKT_LOG:
                self.logs.append((now_us, payload[wire.LOG_HEAD_SIZE:].decode(errors="replace")))
            pos = end
        return pos


class FastSim:
    """The firmware and the plant in one process, in virtual time.

    >>> sim = FastSim(Plant(PlantConfig(seed=1), Timeline().press(1_000_000, 2_000_000)))
    >>> sim.command("arm")
    >>> sim.run_until(4_000_000)
    >>> stream = sim.take_output()        # the board's bytes, for the assembler
    """

    def __init__(self, plant: Plant, *, pixels: bool = True, heartbeat_us: int = 100_000,
                 store: MemoryStore | None = None, start_us: int = 0) -> None:
        self.plant = plant
        self.pixels = pixels
        self.heartbeat_us = heartbeat_us
        # Plant time at the start (and the board's time at power-on): a
        # start just before 2**30 us has the board's ticks wrap early on.
        self.now_us = start_us
        self.store = store if store is not None else MemoryStore()
        self.link = PipeLink(self)
        self.port = VirtualPort(self)
        self.reset_cause = "power"
        self.at_repl = False
        self.resets: list[tuple[int, str]] = []
        self.host_seq = 0
        self.host_seq_base = 0
        self.next_heartbeat_us = start_us
        self.link_down = False
        self._end_us = 0
        self.host = HostLog()
        self._pending = bytearray()  # board bytes not yet parsed by the host log
        self._decoder_offset = 0
        self._stalls: list[tuple[int, int]] = []
        self._stall_times: list[int] = []
        self._timeline_len = -1
        self._boot()

    # -- the board ------------------------------------------------------------

    def _boot(self) -> None:
        self.plant.board_started()
        hal = hal_sim.SimHal(self.port, self.link, self.store)
        self.app = app_module.App(hal)

    def reboot(self, cause: str) -> None:
        self.at_repl = False
        self.resets.append((self.now_us, cause))
        self.reset_cause = cause
        self._boot()
        self.reset_cause = "power"

    # -- time -----------------------------------------------------------------

    def _next_stall_after(self, t_us: int) -> int | None:
        tl = self.plant.timeline
        if len(tl) != self._timeline_len:  # the timeline may grow while running
            self._timeline_len = len(tl)
            self._stalls = [(e.t_us, int(e.value)) for e in tl.events() if e.name == "stall"]
            self._stall_times = [t for t, _ in self._stalls]
        i = bisect.bisect_left(self._stall_times, t_us)
        return self._stall_times[i] if i < len(self._stall_times) else None

    def advance(self, deadline_us: int) -> None:
        """The firmware sleeps until deadline_us; wake it earlier for a
        timeline change or host bytes."""
        now = self.now_us
        if deadline_us <= now or self.link.to_board:
            return  # host bytes are waiting: a board's loop wakes for them
        t = min(deadline_us, self._end_us)
        ev = self.plant.next_event_after(now)
        if ev is not None and ev < t:
            t = ev
        if self.heartbeat_us and self.next_heartbeat_us < t:
            t = max(self.next_heartbeat_us, now)
        self.now_us = t

    def _host_tick(self) -> None:
        """The stand-in host's duties at the current time."""
        self.link_down = bool(self.plant.timeline.value_at("link_down", self.now_us))
        if self.heartbeat_us and self.now_us >= self.next_heartbeat_us:
            self.next_heartbeat_us = self.now_us + self.heartbeat_us
            self.send_command("ping")

    def run_until(self, t_us: int) -> None:
        """Run the board and the plant until virtual time t_us."""
        self._end_us = t_us
        spins = 0
        while self.now_us < t_us:
            if self.at_repl:
                self.now_us = t_us
                break
            self._host_tick()
            stall = self._next_stall_after(self.now_us)
            if stall is not None and stall == self.now_us:
                self._stall(stall)
                continue
            if stall is not None and stall < self._end_us:
                self._end_us = stall  # wake the loop at the stall
            before = self.now_us
            left = False
            try:
                self.app.poll()
            except BoardReset as exc:
                self.reboot(str(exc))
            except KeyboardInterrupt:
                # Ctrl-C on the link (PipeLink.read, as a board's USB stack):
                # the firmware leaves for the REPL, as App.run has it do.
                self.app.leave("ctrl-c", "Ctrl-C on the host link")
                left = True
            if left or not self.app.running:
                if not left:  # exit_to_repl: App.run leaves once its loop ends
                    self.app.leave("exit_to_repl", "the host asked for the REPL")
                # The board idles at its prompt: the firmware no longer runs.
                self.at_repl = True
                self.now_us = t_us
                break
            if self.now_us == before:
                spins += 1
                if spins > 1000:  # a firmware defect, not a simulator state
                    raise RuntimeError(f"the firmware loop spins at t = {self.now_us} us without sleeping")
            else:
                spins = 0
            self._end_us = t_us
        self._end_us = t_us

    def _stall(self, t_us: int) -> None:
        """The firmware stops running for the stall's duration; the plant's
        watchdog resets the board if the stall outlasts it."""
        duration = next(d for t, d in self._stalls if t == t_us)
        end = t_us + duration
        port = self.port
        expiry = port.wdt_fed_us + port.wdt_timeout_us if port.wdt_timeout_us else None
        if expiry is not None and expiry < end:
            self.now_us = max(expiry, t_us)
            self.plant.watchdog_expired(self.now_us)
            self.reboot("watchdog")
        else:
            self.now_us = end

    # -- the host side --------------------------------------------------------

    def send_command(self, name: str, args: dict[str, Any] | None = None) -> int:
        """Queue a command to the board; returns its seq."""
        op = {v: k for k, v in codes.OP_NAMES.items()}[name]
        seq = self.host_seq
        # Sequence numbers cycle within [host_seq_base, 0xFFFF]: a host
        # sharing the link keeps the numbers below the base.
        self.host_seq = self.host_seq + 1 if self.host_seq < 0xFFFF else self.host_seq_base
        payload = wire.command_payload(op, json.dumps(args or {}).encode())
        if not self.link_down:
            self.link.to_board += wire.stuff(wire.encode(wire.PKT_COMMAND, seq, payload))
        return seq

    def command(self, name: str, args: dict[str, Any] | None = None, *, timeout_us: int = 50_000) -> Any:
        """Send a command, run until it is answered, return the body; raise
        CommandError on an error response."""
        seq = self.send_command(name, args)
        end = self.now_us + timeout_us
        while self.now_us < end:
            self.run_until(min(end, self.now_us + 1000))
            self.parse_output()
            r = self.host.responses.pop(seq, None)
            if r is not None:
                if r.status != codes.ERR_OK:
                    raise CommandError(r.status, r.body)
                return r.body
        raise TimeoutError(f"no answer to {name} within {timeout_us} us")

    def take_output(self) -> bytes:
        """The board's bytes since the last call (for the assembler)."""
        self.parse_output()
        out = bytes(self.link.from_board)
        self.link.from_board.clear()
        self._decoder_offset = 0
        return out

    def parse_output(self) -> None:
        """Read responses, events and logs out of the board's stream (lines
        and trailers are left for the assembler)."""
        self._decoder_offset = self.host.feed(self.link.from_board, self._decoder_offset, self.now_us)

    def events(self, name: str) -> list[dict[str, Any]]:
        self.parse_output()
        return [b for _, n, b in self.host.events if n == name]


class CommandError(PulselineError):
    """The simulated board refused a command (its status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{codes.ERROR_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message


def _event_name(code: int) -> str:
    return str(codes.EVENT_NAMES.get(code, f"event{code}"))


__all__ = ["BoardReset", "CommandError", "FastSim", "MemoryStore", "Plant", "PlantConfig", "Timeline", "np"]
