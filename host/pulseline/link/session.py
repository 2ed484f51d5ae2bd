"""A host session with a board: open any port, check the firmware's
protocol, configure, arm, and receive frames (assembled by the native
assembler), their trailers, and the board's events.

    with Session("/dev/ttyACM0") as s:   # or "socket://...", or a target's open_session()
        s.configure(pulses_per_s=7.5)
        s.arm()
        ...                              # the operator presses the switch
        frame = s.next_frame(timeout_s=2)

A reader thread takes the bytes off the port and feeds the assembler; a
heartbeat keeps the board's link alive (it stops exposure after 200 ms of
silence). Responses are matched to commands by sequence number.

The session is given a port (a device path or pyserial URL: a simulated
board's name is resolved by pulseline.targets) and a clock (or takes the one
its transport offers). On a board in virtual time (link.clock.VirtualClock:
the fast simulator) there are no threads: every wait (an answer, an event,
a frame, `sleep`) advances the board and takes its bytes in the waiting
thread, and times are the board's.

May import only the base and the link layer: no simulator, no plant.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import serial

from ..errors import PulselineError
from . import ports
from .assembler import FrameAssembler
from .clock import WALL, Clock
from .evidence import TO_BOARD, TO_HOST, Recorder
from .frames import Frame
from .protocol import Packet, codes, wire

OPCODES = {name: op for op, name in codes.OP_NAMES.items()}
# The board stops emission after 200 ms without a word from the host. A
# loaded host is late now and then (its scheduler, other threads holding the
# GIL: 110 ms measured beside a browser), so the heartbeat comes every 50 ms,
# on a fixed schedule: the link survives a stall of 150 ms. The schedule is
# the board's clock: the board judges the silence in its own time, and a
# board whose time runs slower than the wall (an emulated Pico at an eighth
# of real time, a simulated board on a starved host) would otherwise get
# its pings that many times as often as a board does, and spend its loop on
# them (an emulated Pico's loop passed its 100 ms watchdog that way).
HEARTBEAT_S = 0.05
# Asks a REPL to show itself without ever running code: End (twice: the
# first may only end an escape sequence our packets left half typed), then
# kill the line (what the REPL took our packets for), then Ctrl-B, which at
# an empty friendly prompt (or anywhere in the raw REPL) prints the banner.
# The firmware takes all of it for line noise.
REPL_PROBE = b"\x1b[F\x1b[F\x15\x02"
# What a MicroPython REPL prints (its banner, its prompts): a board that shows
# these is not running the pulseline firmware.
# Its line editor answers the probe with "erase to the end of the line"
# (ESC [ K): the firmware sends nothing but packets. Our own packets, typed
# at a REPL, can take it into any of its modes (0x05 is Ctrl-E, paste mode;
# 0x01 Ctrl-A, the raw REPL): paste mode shows its banner and echoes what it
# is sent, the probe included, as it is.
REPL_MARKS = (b'Type "help()" for more information.', b">>> ", b"... ", b"raw REPL; CTRL-B to exit",
              b"Traceback (most recent call last)", b"\x1b[K", b"paste mode; Ctrl-C to cancel", b"\r\n=== ",
              REPL_PROBE)
# A hello may reach a board at its REPL, which takes it for typing. It
# begins with printable bytes ("ZPL"), so its version, type and opcode bytes
# (0x01, Ctrl-A) only move the cursor home. The bytes that vary (sequence
# number, checks) are kept clear of CR and LF (they would run the line typed
# so far, and leave an empty one, where the next 0x01 enters the raw REPL,
# whose soft reset skips main.py), Ctrl-B, Ctrl-D (a soft reset at an empty
# line) and Ctrl-E (paste mode), so asking never changes the board.
REPL_ACTS_ON = frozenset(b"\x02\x04\x05\r\n")
# Doing these twice is the same as once: safe to ask again on a lost answer.
IDEMPOTENT = frozenset({"hello", "get_config", "set_config", "arm", "disarm", "status", "dose_report",
                        "read_journal", "fault_reset", "ping", "alarm_reset", "self_test"})


class SessionError(PulselineError):
    """A one-line reason the session cannot go on."""


class BoardAtRepl(SessionError):
    """The board is at the MicroPython REPL: its firmware has stopped."""


class BoardError(SessionError):
    """The board refused a command: an error code and its one-line message."""

    def __init__(self, command: str, status: int, message: str) -> None:
        super().__init__(f"{command}: {codes.ERROR_NAMES.get(status, status)}: {message}")
        self.command = command
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Event:
    t_us: int
    name: str
    body: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """As the summary and evidence keep it: the name under "event", the
        time under "t_us", the body's own keys beside them, never over them
        (an irradiation event's number, also "event", is "irradiation_event")."""
        entry: dict[str, Any] = {"t_us": self.t_us, "event": self.name}
        for k, v in self.body.items():
            entry[f"{self.name}_{k}" if k in entry else k] = v
        return entry


class Session:
    def __init__(self, port: str, *, answer_timeout_s: float = 2.0, heartbeat: bool = True,
                 handshake: bool = True, record: bool = False, clock: Clock | None = None,
                 label: str | None = None) -> None:
        # What messages call the board (what the user gave: "sim:a", say),
        # and the device or URL opened.
        self.port = label or port
        self.device = port
        # With record: every byte both ways and the last frames, for a test's
        # evidence (pulseline.link.evidence).
        self.recorder: Recorder | None = Recorder() if record else None
        self.answer_timeout_s = answer_timeout_s
        if not port:
            raise SessionError("no port given (a device path, a pyserial URL, or 'sim')")
        try:
            # Exclusive on a device: a second program on the same board would
            # steal its bytes (pyserial takes a lock on POSIX).
            kwargs: dict[str, Any] = {} if "://" in port else {"exclusive": True}
            self.serial = ports.open_exclusive(port, lambda: serial.serial_for_url(
                port, baudrate=115200, timeout=0.02, write_timeout=2, **kwargs))
        except (serial.SerialException, ValueError) as exc:
            text = str(exc)
            if "exclusively lock" in text or "Resource temporarily unavailable" in text:
                raise SessionError(f"port {self.port} is busy: {ports.held_by(port) or 'another program'} "
                                   "has it open") from None
            code = getattr(exc, "errno", None)
            if isinstance(code, int) and code > 0:  # pyserial repeats the port and errno: say it once
                raise SessionError(f"cannot open port {self.port}: {os.strerror(code)}") from None
            raise SessionError(f"cannot open port {self.port}: {exc}") from None
        # The board's time: given, or the transport's own (a board in virtual
        # time offers one), or the wall clock.
        self.clock: Clock = clock or getattr(self.serial, "clock", None) or WALL
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._responses: dict[int, tuple[int, Any]] = {}
        # Answers are taken only for commands this session sent and still
        # waits for (an answer meant for an earlier command, or for an
        # earlier session's, is never taken for the current one), and the
        # handshake's answer must carry this session's id. Sequence numbers
        # start anywhere (in virtual time at 0: its runs are a function of
        # the seed, so their ids are counted).
        self.session_id = self.clock.session_id()
        self._seq = self.clock.first_seq()
        self._pending: set[int] = set()
        self._ignore: set[int] = set()
        self.stale_answers = 0
        # Why the firmware stopped running, if it said so ("stopped" event),
        # and whether the board is at the REPL.
        self.stopped: dict[str, Any] | None = None
        self.events: list[Event] = []
        self.logs: list[tuple[int, int, str]] = []
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.frames_received = 0
        self.bytes_received = 0
        # The first bytes, as they came: a serial server that refuses a
        # second client says so in text before it hangs up.
        self._greeting = bytearray()
        self._recent = bytearray()  # the last bytes, as they came (a REPL's banner, say)
        self.last_rx = self.now()
        self.error: str | None = None
        self.board: dict[str, Any] = {}
        # The firmware's default geometry until the board says otherwise; the
        # assembler (and its counters) is only replaced when that changes.
        self.config: dict[str, Any] = {"pixels_per_line": 256, "lines_per_frame": 256,
                                       "pixel_format": wire.FMT_MONO12P}
        self._asm_lock = threading.Lock()
        # Corrections the assembler applies (dark, flat, defect_map,
        # filter_alpha): kept while the geometry they were made for holds.
        self.corrections: dict[str, Any] = {}
        self.asm = FrameAssembler(256, 256, "mono12p")
        self._closed = threading.Event()
        self._reader: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        # When the last heartbeats left, on the session's clock (the board's
        # time when it keeps its own): a board that disarmed itself for the
        # host's silence can then be told whether the host was late or its
        # words were (see heartbeat_before).
        self._pings_sent_s: collections.deque[float] = collections.deque(maxlen=256)
        if self.clock.virtual:
            # The board's own stand-in host sends the heartbeat in virtual time.
            heartbeat = False
            self.clock.attach(self._pump)
        else:
            self._reader = threading.Thread(target=self._read_loop, name="session-reader", daemon=True)
            self._reader.start()
        if handshake:
            try:
                self.hello()
            except SessionError:
                self.close()
                raise
        if heartbeat:
            self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="session-heartbeat", daemon=True)
            self._heartbeat.start()

    # -- plumbing --------------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.serial.read(65536)
            except (serial.SerialException, OSError) as exc:
                if not self._closed.is_set():
                    self.error = f"link lost: {exc}"
                    with self._cond:
                        self._cond.notify_all()
                return
            if data:
                self._receive(data)

    def _receive(self, data: bytes) -> None:
        if len(self._greeting) < 256:
            self._greeting += data[:256 - len(self._greeting)]
        self._recent += data[-1024:]
        del self._recent[:-1024]
        self.bytes_received += len(data)
        self.last_rx = self.now()
        rec = self.recorder
        if rec is not None:
            rec.chunk(TO_HOST, self.last_rx, data)
        with self._asm_lock:
            items = self.asm.feed(data)
        for item in items:
            if isinstance(item, Frame):
                item.arrived_s = time.time()
                self.frames_received += 1
                if rec is not None:
                    rec.frame(item)
                self.frames.put(item)
                with self._cond:  # (a wait on the board's clock, next_frame, is woken by it)
                    self._cond.notify_all()
            else:
                self._packet(item)

    def _pump(self) -> None:
        """Virtual time: take what the board has sent, in this thread."""
        data = self.serial.read(1 << 30)
        if data:
            self._receive(data)

    # -- time: the board's clock -----------------------------------------------------------

    def now(self) -> float:
        """Seconds on the target's clock."""
        return self.clock.now()

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    def _wait(self, ready: Any, timeout_s: float) -> bool:
        """Until ready() (checked under the session's lock) or timeout_s of
        target time, or the link is lost; whether it became ready."""
        try:
            return self.clock.wait(self._cond, ready, timeout_s, lambda: self.error)
        except (OSError, ValueError):
            # The board's clock can no longer be read (a simulated board that
            # is gone takes its control channel with it): the host's time.
            return WALL.wait(self._cond, ready, timeout_s, lambda: self.error)

    def _packet(self, p: Packet) -> None:
        if p.type == wire.PKT_RESPONSE and len(p.payload) >= wire.RESPONSE_HEAD_SIZE:
            cseq, status = struct.unpack_from(wire.RESPONSE_HEAD_FORMAT, p.payload)
            text = p.payload[wire.RESPONSE_HEAD_SIZE:].decode(errors="replace")
            body: Any = text
            if status == codes.ERR_OK:
                try:
                    body = json.loads(text)
                except ValueError:
                    body = text
            if cseq >= self.clock.board_seq_base:
                return  # the virtual board's own heartbeat, answered
            with self._cond:
                if cseq in self._ignore:
                    self._ignore.discard(cseq)
                    return
                if cseq not in self._pending:
                    self.stale_answers += 1  # not for a command this session waits on
                    return
                self._pending.discard(cseq)
                self._responses[cseq] = (status, body)
                self._cond.notify_all()
        elif p.type == wire.PKT_EVENT and len(p.payload) >= wire.EVENT_HEAD_SIZE:
            code, ts = struct.unpack_from(wire.EVENT_HEAD_FORMAT, p.payload)
            try:
                body = json.loads(p.payload[wire.EVENT_HEAD_SIZE:])
            except ValueError:
                body = {"raw": p.payload[wire.EVENT_HEAD_SIZE:].decode(errors="replace")}
            ev = Event(ts, str(codes.EVENT_NAMES.get(code, f"event{code}")), body)
            with self._cond:
                self.events.append(ev)
                if ev.name == "stopped" and body.get("then") == "REPL":
                    self.stopped = dict(body)
                elif ev.name == "boot":
                    self.stopped = None
                self._cond.notify_all()
        elif p.type == wire.PKT_LOG and len(p.payload) >= wire.LOG_HEAD_SIZE:
            level, ts = struct.unpack_from(wire.LOG_HEAD_FORMAT, p.payload)
            self.logs.append((ts, level, p.payload[wire.LOG_HEAD_SIZE:].decode(errors="replace")))

    def _send(self, name: str, args: dict[str, Any] | None, ignore_answer: bool = False,
              repl_safe: bool = False) -> int:
        op = OPCODES.get(name)
        if op is None:
            raise ValueError(f"unknown command {name!r}")
        try:
            text = json.dumps(args or {}, allow_nan=False)  # (nan and inf are no JSON: the board would refuse them)
        except ValueError:
            bad = {k: v for k, v in (args or {}).items() if isinstance(v, float) and not math.isfinite(v)}
            raise ValueError(f"{name}: {', '.join(f'{k} {v}' for k, v in bad.items()) or 'an argument'} "
                             "is not a finite number") from None
        return self._send_raw(op, text.encode(), ignore_answer, repl_safe)

    def _send_raw(self, op: int, raw_args: bytes, ignore_answer: bool = False, repl_safe: bool = False) -> int:
        if not repl_safe and self.stopped is not None:
            # The firmware said it stopped and left the board at its REPL:
            # a packet would be typed there, and its bytes acted on (a Ctrl-D
            # among them soft-resets the board into the firmware again).
            # Nothing but a repl-safe hello goes to it.
            raise BoardAtRepl(self.stopped_message())
        with self._write_lock:
            # repl_safe: the next sequence number until the packet holds no
            # byte a REPL acts on beyond the raw REPL's Ctrl-A (see
            # REPL_ACTS_ON); arguments that hold one themselves go as they are
            # after one pass over the sequence numbers.
            for _ in range(self.clock.board_seq_base if repl_safe else 1):
                seq = self._seq
                # On a virtual board the stand-in host's heartbeat has the upper half.
                self._seq = (self._seq + 1) % self.clock.board_seq_base
                packet = wire.stuff(wire.encode(wire.PKT_COMMAND, seq, wire.command_payload(op, raw_args)))
                if not any(b in REPL_ACTS_ON for b in packet):
                    break
            with self._cond:
                if ignore_answer:
                    self._ignore.add(seq)
                else:
                    self._pending.add(seq)
                self._responses.pop(seq, None)  # (one kept from 65536 commands ago)
            if self.recorder is not None:
                self.recorder.chunk(TO_BOARD, self.now(), packet)
            try:
                self.serial.write(packet)
            except (serial.SerialException, OSError) as exc:
                self.error = f"link lost: {exc}"
                raise SessionError(f"{self.port}: {self.error}") from None
        return seq

    def _heartbeat_loop(self) -> None:
        clock = self.clock
        try:
            due = clock.now()
        except (OSError, ValueError):  # a clock the board can no longer tell (its channel gone): the wall's
            clock = WALL
            due = clock.now()
        while True:
            due += HEARTBEAT_S  # a late ping does not push the next one later
            # A board's time never runs faster than the wall: waiting in wall
            # time for what is left of its due never passes it.
            while True:
                try:
                    now = clock.now()
                except (OSError, ValueError):
                    clock = WALL
                    now = due = clock.now()
                if due - now <= 0:
                    break
                if self._closed.wait(min(due - now, HEARTBEAT_S)):
                    return
            if self._closed.is_set():
                return
            due = max(due, now - HEARTBEAT_S)  # far behind: on from now, no burst
            try:
                self._send("ping", None, ignore_answer=True)
                self._pings_sent_s.append(now)
            except BoardAtRepl:
                continue  # none typed at the REPL; on again if the firmware comes back (its boot event)
            except SessionError:
                return

    # -- commands ----------------------------------------------------------------------

    def command(self, name: str, args: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        """Send a command and wait for its answer; BoardError if refused.
        A command that does the same when done twice is asked again when its
        answer does not come (a damaged packet on a noisy link)."""
        total = timeout_s if timeout_s is not None else self.answer_timeout_s
        attempts = 3 if name in IDEMPOTENT else 1
        for k in range(attempts):
            try:
                return self._command_once(name, args, total)
            except BoardError:
                raise
            except SessionError:
                if k == attempts - 1 or self.error:
                    raise
        raise AssertionError("unreachable")

    def _answer(self, seq: int, what: str, timeout_s: float) -> tuple[int, Any]:
        """The board's (status, body) for command seq; SessionError if none
        comes within timeout_s or the link is lost (a late answer is then
        dropped, never taken for another command's)."""
        if not self._wait(lambda: seq in self._responses or self.error or self.stopped, timeout_s) \
                or seq not in self._responses:
            with self._cond:
                self._pending.discard(seq)
            if self.error:
                raise SessionError(f"{self.port}: {self.error}")
            if self.stopped is not None:
                raise BoardAtRepl(self.stopped_message())
            raise SessionError(f"{self.port}: no answer to {what}: is the pulseline firmware running "
                               "on the board? (flash it, or reset the board)")
        with self._cond:
            return self._responses.pop(seq)

    def restart_hint(self) -> str:
        """How to start the firmware again on this board."""
        return (f"restart it with: mpremote connect {self.device} reset (or flash it, if it has no firmware yet: "
                f"pulseline flash --port {self.port})")

    def stopped_message(self) -> str:
        why = (self.stopped or {}).get("reason", "")
        return (f"{self.port}: the pulseline firmware stopped" + (f" ({why})" if why else "")
                + "; the board is at the MicroPython REPL: " + self.restart_hint())

    def _command_once(self, name: str, args: dict[str, Any] | None, timeout_s: float) -> Any:
        status, body = self._answer(self._send(name, args), name, timeout_s)
        if status != codes.ERR_OK:
            raise BoardError(name, status, str(body))
        return body

    def request(self, op: int, raw_args: bytes, timeout_s: float | None = None) -> tuple[int, Any]:
        """Any opcode with any argument bytes, for conformance tests: the
        board's (status, body or message), whatever the status."""
        return self._answer(self._send_raw(op, raw_args), f"opcode {op}",
                            timeout_s if timeout_s is not None else self.answer_timeout_s)

    def _hello_once(self, timeout_s: float) -> Any:
        """One handshake: the answer that carries this session's id (one
        meant for an earlier session's hello is passed over)."""
        seq = self._send("hello", {"protocol": wire.PROTOCOL_VERSION, "session": self.session_id}, repl_safe=True)
        deadline = self.now() + timeout_s
        while True:
            status, body = self._answer(seq, "hello", max(0.0, deadline - self.now()))
            if status != codes.ERR_OK:
                raise BoardError("hello", status, str(body))
            if isinstance(body, dict) and body.get("session") == self.session_id:
                return body
            with self._cond:  # another session's: wait on for ours
                self.stale_answers += 1
                self._pending.add(seq)

    def _at_repl(self) -> bool:
        """Whether the board shows a MicroPython REPL (REPL_PROBE)."""
        def shown() -> bool:
            return any(m in self._recent for m in REPL_MARKS)

        seen = shown()
        with self._cond:
            self._recent.clear()
        # Sent even to a REPL that has shown itself: it leaves the line our
        # packets typed empty, at the friendly prompt, as it was found.
        with contextlib.suppress(serial.SerialException, OSError), self._write_lock:
            self.serial.write(REPL_PROBE)
        return seen or self._wait(shown, 1.0)

    def hello(self, attempts: int = 6) -> dict[str, Any]:
        """The version handshake. Asked again a few times: a board that has
        just been reset is still booting and misses the first."""
        body: Any = None
        try:
            for k in range(attempts):
                try:
                    body = self._hello_once(self.answer_timeout_s if k == attempts - 1 else 0.5)
                    break
                except BoardError:
                    raise
                except BoardAtRepl:
                    raise
                except SessionError:
                    other = self.asm.last_bad_version
                    if other is not None:
                        # It answers, in another protocol generation.
                        raise SessionError(f"{self.port}: incompatible firmware: the board speaks protocol {other}, "
                                           f"this host {wire.PROTOCOL_VERSION}; flash a matching firmware") from None
                    text = bytes(self._greeting).lower()
                    if self.error and (b"busy" in text or b"in use" in text):
                        raise SessionError(f"port {self.port} is busy: another program has it open") from None
                    if not self.error and self._at_repl():
                        raise BoardAtRepl(f"{self.port}: the board is at the MicroPython REPL, not running the "
                                          f"pulseline firmware: {self.restart_hint()}") from None
                    if k == attempts - 1 or self.error:
                        raise
        except BoardError as exc:
            if exc.status == codes.ERR_VERSION:
                raise SessionError(f"{self.port}: incompatible firmware: {exc.message}; "
                                   "flash a firmware that speaks this host's protocol") from None
            raise
        self.board = body
        self._reconfigure(body["config"])
        return dict(body)

    def _reconfigure(self, config: dict[str, Any]) -> None:
        old = self.config
        self.config = dict(config)
        geometry = ("pixels_per_line", "lines_per_frame", "pixel_format", "filter_alpha")
        if any(old.get(k) != config.get(k) for k in geometry):
            if old.get("pixels_per_line") != config.get("pixels_per_line") or \
                    old.get("lines_per_frame") != config.get("lines_per_frame"):
                self.corrections = {}  # made for another geometry
            self._new_assembler()

    def _new_assembler(self) -> None:
        c = self.config
        kw = dict(self.corrections)
        # The recursive filter is a board setting the host applies (the
        # board only stores it with the technique).
        if float(c.get("filter_alpha") or 0) > 0:
            kw.setdefault("filter_alpha", float(c["filter_alpha"]))
        asm = FrameAssembler(int(c["pixels_per_line"]), int(c["lines_per_frame"]), int(c["pixel_format"]), **kw)
        with self._asm_lock:
            self.asm = asm

    def set_corrections(self, *, dark: Any = None, flat: Any = None, defect_map: Any = None,
                        filter_alpha: float | None = None) -> None:
        """Corrections for the frames from now on (the assembler's: offset,
        two-point gain, defective-pixel replacement, recursive filter); none
        given: raw frames. ValueError if a map does not fit the geometry.
        Call between exposures: frames in flight are dropped."""
        corrections = {k: v for k, v in (("dark", dark), ("flat", flat), ("defect_map", defect_map),
                                         ("filter_alpha", filter_alpha)) if v is not None}
        old = self.corrections
        self.corrections = corrections
        try:
            self._new_assembler()
        except (ValueError, TypeError):
            self.corrections = old
            raise

    def configure(self, **settings: Any) -> dict[str, Any]:
        body = self.command("set_config", settings)
        self._reconfigure(body)
        return dict(body)

    def arm(self) -> None:
        self.command("arm")

    def disarm(self) -> None:
        self.command("disarm")

    def status(self) -> dict[str, Any]:
        return dict(self.command("status"))

    def dose_report(self) -> dict[str, Any]:
        return dict(self.command("dose_report"))

    # -- what comes in -----------------------------------------------------------------

    def next_frame(self, timeout_s: float) -> Frame | None:
        """The next frame within timeout_s of the target's time (a board
        that keeps its own waits as long as it took, however slowly it ran)."""
        try:
            if self.clock is not WALL:
                self._wait(lambda: not self.frames.empty(), timeout_s)
                return self.frames.get_nowait()
            return self.frames.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def wait_event(self, name: str, timeout_s: float, since: int = 0, **match: Any) -> Event | None:
        """The first event called `name` (after index `since` in `events`)
        whose body has the given values."""
        found: list[Event] = []

        def ready() -> bool:
            for ev in self.events[since:]:
                if ev.name == name and all(ev.body.get(k) == v for k, v in match.items()):
                    found.append(ev)
                    return True
            return False

        return found[0] if self._wait(ready, timeout_s) and found else None

    def silent_for(self) -> float:
        """Seconds since the last byte from the board (it sends at least a
        heartbeat answer every 50 ms, so silence means the link is down)."""
        return self.now() - self.last_rx

    def heartbeat_before(self, t_s: float) -> float | None:
        """How long before t_s (a board time, in s) this session's last
        heartbeat left; None where the session cannot tell (no heartbeat
        before it, or a clock that is the host's and not the board's)."""
        if self.clock is WALL:
            return None
        sent = [s for s in list(self._pings_sent_s) if s <= t_s]
        return t_s - sent[-1] if sent else None

    def counters(self) -> dict[str, int]:
        with self._asm_lock:
            return dict(self.asm.counters)

    def flush_frames(self) -> list[Frame]:
        """End of a capture: frames still in flight come out (incomplete ones
        with their lost lines marked)."""
        with self._asm_lock:
            items = self.asm.flush()
        out = []
        for item in items:
            if isinstance(item, Frame):
                item.arrived_s = time.time()
                self.frames_received += 1
                if self.recorder is not None:
                    self.recorder.frame(item)
                out.append(item)
        return out

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1)
        if self._reader is not None:
            self._reader.join(timeout=1)
        self.clock.detach(self._pump)
        self.serial.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_firmware(port: str, timeout_s: float = 30.0, clock: Clock = WALL) -> dict[str, Any]:
    """Until the firmware on a board that has just started (or been reset)
    answers the handshake; its hello body. SessionError after timeout_s of
    the board's time (`clock`: a board that keeps its own boots in its own
    time, however slowly it runs on this host)."""
    deadline = clock.now() + timeout_s
    stood_still = clock.wall_guard(timeout_s)
    while True:
        try:
            with Session(port, heartbeat=False, clock=clock) as s:
                return dict(s.board)
        except BoardError:
            raise
        except SessionError:
            if clock.now() > deadline or stood_still():
                raise
            clock.sleep(0.2)
