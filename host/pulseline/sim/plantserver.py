"""The plant on a local socket, for a board running on the MicroPython unix
port (firmware/pulsefw/boards/sim/hal.py, PlantClient, is the other side).

Plant time is the board's time. Each request carries the board's own clock
(BoardClock: what its interpreter ran and what it asked to wait), and the
plant acts at that time: inputs are read, pulses fired, lines landed and
the watchdog judged on it. A host that starves the board of CPU, disk or
attention slows the board's time down; it never makes the board look
stalled. While no firmware runs (before its hello, after it stops its
watchdog for the REPL, between interpreters) plant time runs on the wall
clock from where the board left it, so the plant never goes back.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from typing import Any

import numpy as np

from ..mpcompat import import_firmware
from ..plant import Plant
from . import peer

hal_sim = import_firmware("pulsefw.boards.sim.hal")

_ARG_SIZES = {
    hal_sim.OP_HELLO: 0, hal_sim.OP_INPUTS: 0, hal_sim.OP_SET: 8, hal_sim.OP_FIRE: 4, hal_sim.OP_FEEDBACK: 0,
    hal_sim.OP_ARM: 5, hal_sim.OP_POLL: 0, hal_sim.OP_WDT_START: 4, hal_sim.OP_WDT_FEED: 0, hal_sim.OP_CAUSE: 0,
    hal_sim.OP_RESET: 0, hal_sim.OP_WDT_STOP: 0, hal_sim.OP_DARK: 4, hal_sim.OP_IDENT: 0,
    hal_sim.OP_EMISSION_OFF: 0,
}
_CAUSE_CODES = {"power": 0, "watchdog": 1, "soft": 2}


MAX_CONNECTIONS = 4  # the firmware's, a program's machine.WDT, and a reset's overlap


class PlantServer:
    """Serves one board; `address` is what the board connects to."""

    def __init__(self, plant: Plant, host: str = "127.0.0.1", port: int = 0, start_us: int = 0) -> None:
        self.plant = plant
        self.lock = threading.Lock()  # the plant is shared with the host side (tests, CLI)
        # Plant time starts at start_us (a start just before 2**30 us has the
        # board's ticks wrap early on), on the wall clock until a board says.
        self._wall_from = (start_us, time.monotonic_ns())
        self._board_us: int | None = None  # the board's time, while its firmware runs
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(1)
        bound_host, bound_port = self._sock.getsockname()
        self.address = f"{bound_host}:{bound_port}"
        self.reset_cause = "power"
        self.resets_requested = 0
        self.requests = 0  # every request served: the board's sign of life
        self.stalls: list[int] = []  # plant time at which each scripted stall hung the control loop
        self._stall_checked_us = start_us
        self.connections = 0  # accepted so far
        self._open = 0
        self._firmware: socket.socket | None = None  # the connection of the firmware that keeps plant time
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="plant-server", daemon=True)
        self._thread.start()

    # -- the clock -------------------------------------------------------------

    def now_us(self) -> int:
        """Plant time: the board's as its last request gave it while its
        firmware runs, else the wall clock's from where it left off."""
        board = self._board_us
        if board is not None:
            return board
        base_us, since_ns = self._wall_from
        return base_us + (time.monotonic_ns() - since_ns) // 1000

    @property
    def open_connections(self) -> int:
        return self._open

    def board_clocked(self) -> bool:
        """A board's firmware runs and keeps plant time."""
        return self._board_us is not None

    def _to_wall(self) -> None:
        board = self._board_us
        if board is not None:
            self._wall_from = (board, time.monotonic_ns())
            self._board_us = None

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the accept() the thread waits in (close alone does not)
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> PlantServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ---------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            # Only the board's own uid drives the plant (another local user
            # could otherwise fire the generator or hold the watchdog).
            if not peer.is_own(conn):
                conn.close()
                continue
            with self.lock:
                if self._open >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                self._open += 1
                self.connections += 1
            # One thread per connection: the firmware's HAL holds one while it
            # runs, and a program at the REPL (machine.WDT) opens its own.
            threading.Thread(target=self._serve_one, args=(conn,), name="plant-board", daemon=True).start()

    def _said_refusal(self, now_us: int) -> None:
        """A pulse the hardware chain refused is said on the board's log (the
        firmware knows only that it was refused, and latches a fault unless
        it saw the switch released), with the watchdog's last feed."""
        p = self.plant
        why = p.refused[-1][1] if p.refused else "?"
        fed = p.watchdog_fed_us
        text = f"simulated plant: a pulse at {now_us} us refused ({why})"
        if fed is not None:
            text += f"; the watchdog was last fed {now_us - fed} us before"
        with contextlib.suppress(OSError, ValueError):
            print(text, file=sys.stderr, flush=True)

    def _serve_one(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._session(conn)
        except (OSError, ConnectionError):
            pass
        except Exception as exc:  # keep the reason for the test that started us
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self._open -= 1
                if self._firmware is conn:  # the firmware's link is gone: its clock is no longer kept
                    self._firmware = None
                    self._to_wall()
            conn.close()

    @staticmethod
    def _recv_exact(conn: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("board disconnected")
            buf += chunk
        return bytes(buf)

    def _session(self, conn: socket.socket) -> None:
        copied = 0
        frame: bytes = b""
        line_bytes = 0
        while not self._stop.is_set():
            head = self._recv_exact(conn, hal_sim.REQUEST_HEAD)
            op = head[0]
            if op not in _ARG_SIZES:
                raise ValueError(f"unknown plant request {op:#x}")
            (board_us,) = struct.unpack_from("<Q", head, 1)
            args = self._recv_exact(conn, _ARG_SIZES[op]) if _ARG_SIZES[op] else b""
            with self.lock:
                self.requests += 1
                p = self.plant
                if op == hal_sim.OP_HELLO:
                    # A firmware starts: its clock starts at plant time and
                    # keeps it from now on.
                    now = self.now_us()
                    self._board_us = now
                    self._firmware = conn
                elif self._board_us is not None and conn is self._firmware:
                    self._board_us = now = max(self._board_us, board_us)
                else:
                    # A request after the firmware left (the REPL's reset), or
                    # from a program's own connection (machine.WDT): at plant time.
                    now = self.now_us()
                if op == hal_sim.OP_HELLO:
                    out = struct.pack("<Q", now)
                elif op == hal_sim.OP_INPUTS:
                    s = p.inputs_at(now)
                    bits = ((hal_sim.INPUT_SWITCH if s.switch else 0)
                            | (hal_sim.INPUT_DOOR_CLOSED if s.door_closed else 0)
                            | (hal_sim.INPUT_KEY_ON if s.key_on else 0)
                            | (hal_sim.INPUT_GENERATOR_READY if s.generator_ready else 0)
                            | (hal_sim.INPUT_HLC_SWITCH if s.hlc_switch else 0))
                    stalls = p.timeline.impulses_between("stall", self._stall_checked_us, now)
                    self._stall_checked_us = now
                    if stalls:
                        self.stalls.append(now)
                    out = struct.pack("<BI", bits, min(int(sum(stalls)), 0xFFFFFFFF))
                elif op == hal_sim.OP_SET:
                    kv, ma = struct.unpack("<ff", args)
                    p.generator_set(now, float(kv), float(ma))
                    out = b"\x01"
                elif op == hal_sim.OP_FIRE:
                    (width_us,) = struct.unpack("<I", args)
                    ok = p.generator_fire(now, int(width_us)) is not None
                    if ok:
                        copied = 0
                        frame = b""
                    else:
                        self._said_refusal(now)
                    out = b"\x01" if ok else b"\x00"
                elif op == hal_sim.OP_FEEDBACK:
                    kv, ma, _ = p.generator_feedback()
                    out = struct.pack("<ff", kv, ma)
                elif op == hal_sim.OP_EMISSION_OFF:
                    p.emission_off(now)
                    out = b"\x01"
                elif op == hal_sim.OP_ARM:
                    lines, pixels, fmt = struct.unpack("<HHB", args)
                    p.detector_arm(now, lines, pixels, fmt)
                    copied = 0
                    frame = b""
                    line_bytes = 0
                    out = b"\x01"
                elif op == hal_sim.OP_POLL:
                    idx: Any = p.detector_landed_indices(now)
                    done = bool(p.detector_done(now))
                    new = np.asarray(idx[copied:], dtype=np.uint16)
                    if len(new) and not frame:
                        frame = p.detector_frame_bytes()
                        line_bytes = len(frame) // p.detector_readout_lines()
                    parts = [struct.pack("<BH", 1 if done else 0, len(new)), new.astype("<u2").tobytes()]
                    parts += [frame[int(i) * line_bytes:(int(i) + 1) * line_bytes] for i in new]
                    copied += len(new)
                    out = b"".join(parts)
                elif op == hal_sim.OP_WDT_START:
                    (timeout_ms,) = struct.unpack("<I", args)
                    p.watchdog_start(now, int(timeout_ms) * 1000)
                    out = b"\x01"
                elif op == hal_sim.OP_WDT_FEED:
                    p.watchdog_feed(now)
                    out = b"\x01"
                elif op == hal_sim.OP_WDT_STOP:
                    p.watchdog_stop(now)
                    if self._firmware is conn:
                        self._firmware = None
                        self._to_wall()  # the firmware leaves: the board's clock is no longer kept
                    out = b"\x01"
                elif op == hal_sim.OP_DARK:
                    (width_us,) = struct.unpack("<I", args)
                    p.detector_dark(now, int(width_us))
                    copied = 0
                    frame = b""
                    out = b"\x01"
                elif op == hal_sim.OP_IDENT:
                    out = struct.pack("<I", p.config.seed & 0xFFFFFFFF)
                elif op == hal_sim.OP_CAUSE:
                    out = bytes([_CAUSE_CODES.get(self.reset_cause, 0)])
                else:  # OP_RESET
                    self.resets_requested += 1
                    self.reset_cause = "soft"
                    out = b"\x01"
            conn.sendall(out)
