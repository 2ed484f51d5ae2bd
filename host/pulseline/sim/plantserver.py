"""The plant on a local socket, for a board running on the MicroPython unix
port (firmware/pulsefw/boards/sim/hal.py, PlantClient, is the other side).

Plant time is the host's monotonic clock since the server started (plus
start_us): the
firmware reads the same clock (time.ticks_us on the unix port), offset once
at connection, so both sides agree on "now" without a round trip.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
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
    hal_sim.OP_EMISSION_OFF: 0, hal_sim.OP_STORAGE: 1,
}
# A board writing its filesystem (the host's disk) this long is judged by its
# watchdog again: a write that never ends is the board's hang.
STORAGE_GRACE_US = 5_000_000
_CAUSE_CODES = {"power": 0, "watchdog": 1, "soft": 2}
# Linux: the kernel's receive time of a request (SO_TIMESTAMPNS, which
# Python's socket module does not name), so the time a request waited for
# this server's thread is known too.
_SO_TIMESTAMPNS = 35
_SCM_TIMESTAMPNS = _SO_TIMESTAMPNS


class PlantServer:
    """Serves one board at a time; `address` is what the board connects to."""

    def __init__(self, plant: Plant, host: str = "127.0.0.1", port: int = 0, start_us: int = 0) -> None:
        self.plant = plant
        self.lock = threading.Lock()  # the plant is shared with the host side (tests, CLI)
        # Plant time starts at start_us (a start just before 2**30 us has the
        # board's ticks wrap early on).
        self._t0_ns = time.monotonic_ns() - start_us * 1000
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Receive times on the listener, inherited by the board's connection:
        # the kernel turns timestamping on a moment after it is first asked.
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock.bind((host, port))
        self._sock.listen(1)
        bound_host, bound_port = self._sock.getsockname()
        self.address = f"{bound_host}:{bound_port}"
        self.reset_cause = "power"
        self.resets_requested = 0
        # The interpreter running the firmware (set by the simulated board):
        # the time it waits for a host CPU is credited to its watchdog.
        self.board_pid: int | None = None
        self._run_delay: tuple[int, int] = (0, 0)  # (pid, its run-queue wait so far, ns)
        self.connections = 0
        self._conn: socket.socket | None = None
        self._busy = False  # a request is taken and not yet answered
        self._storage_since: int | None = None  # plant time a write of the board's filesystem began
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="plant-server", daemon=True)
        self._thread.start()

    def now_us(self) -> int:
        return (time.monotonic_ns() - self._t0_ns) // 1000

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
            self.connections += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            try:
                self._session(conn)
            except (OSError, ConnectionError):
                pass
            except Exception as exc:  # keep the reason for the test that started us
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                self._conn, self._busy, self._storage_since = None, False, None
                conn.close()

    def credit_host_starvation(self) -> None:
        """A board's CPU is its own; the host's is shared. Time the
        interpreter was ready to run but waited for a host CPU (its run-queue
        delay, /proc/PID/schedstat) does not run down its watchdog, so a busy
        host cannot make a healthy firmware look stalled. Call under lock."""
        pid = self.board_pid
        if pid is None:
            return
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                delay_ns = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            return
        last_pid, last_ns = self._run_delay
        self._run_delay = (pid, delay_ns)
        if last_pid == pid and delay_ns > last_ns:
            self.plant.watchdog_credit((delay_ns - last_ns) // 1000)

    def board_waiting(self) -> bool:
        """The board is inside a hardware call: a request of its is unread
        or being served. Its control loop is not stalled, whatever the
        watchdog's clock says, until the answer (and the credit) is out."""
        conn = self._conn
        if self._busy:
            return True
        since = self._storage_since
        if since is not None and self.now_us() - since < STORAGE_GRACE_US:
            return True  # writing the host's disk: its time, not the board's
        if conn is None:
            return False
        try:
            return bool(select.select([conn], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def _recv_op(self, conn: socket.socket) -> tuple[int, int]:
        """A request's opcode and when it reached the host (plant us; now,
        if the kernel gave no receive time)."""
        data, anc, _, _ = conn.recvmsg(1, 64)
        if not data:
            raise ConnectionError("board disconnected")
        self._busy = True
        now_us = self.now_us()
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack_from("<qq", payload)
                waited_ns = time.time_ns() - (sec * 1_000_000_000 + nsec)  # wall clock, both
                return data[0], now_us - max(0, min(waited_ns // 1000, 10_000_000))
        return data[0], now_us

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
            op, asked_us = self._recv_op(conn)
            if op not in _ARG_SIZES:
                raise ValueError(f"unknown plant request {op:#x}")
            args = self._recv_exact(conn, _ARG_SIZES[op]) if _ARG_SIZES[op] else b""
            with self.lock:
                now = self.now_us()
                p = self.plant
                # The board has waited since it asked (for this thread, the
                # lock, a CPU): hardware answers at once, so that wait is not
                # the board's and must not run down its watchdog, a feed included.
                p.watchdog_credit(now - asked_us)
                # The hardware acts when the board asks, not when this thread
                # gets to it: an input is read, a setpoint taken and a pulse
                # fired at the request's arrival (so a loaded host, late to
                # one fire and not the next, does not move the pulses the
                # plant records closer together than the board fired them).
                at = asked_us
                if op == hal_sim.OP_HELLO:
                    out = struct.pack("<Q", now)
                elif op == hal_sim.OP_INPUTS:
                    s = p.inputs_at(at)
                    bits = ((hal_sim.INPUT_SWITCH if s.switch else 0)
                            | (hal_sim.INPUT_DOOR_CLOSED if s.door_closed else 0)
                            | (hal_sim.INPUT_KEY_ON if s.key_on else 0)
                            | (hal_sim.INPUT_GENERATOR_READY if s.generator_ready else 0)
                            | (hal_sim.INPUT_HLC_SWITCH if s.hlc_switch else 0))
                    out = bytes([bits])
                elif op == hal_sim.OP_SET:
                    kv, ma = struct.unpack("<ff", args)
                    p.generator_set(at, float(kv), float(ma))
                    out = b"\x01"
                elif op == hal_sim.OP_FIRE:
                    (width_us,) = struct.unpack("<I", args)
                    self.credit_host_starvation()
                    ok = p.generator_fire(at, int(width_us)) is not None
                    if ok:
                        copied = 0
                        frame = b""
                    out = b"\x01" if ok else b"\x00"
                elif op == hal_sim.OP_FEEDBACK:
                    kv, ma, _ = p.generator_feedback()
                    out = struct.pack("<ff", kv, ma)
                elif op == hal_sim.OP_EMISSION_OFF:
                    p.emission_off(now)
                    out = b"\x01"
                elif op == hal_sim.OP_STORAGE:
                    # The write's time (the host's disk) is credited, as a
                    # hardware call's is: from the request saying it began
                    # to the one saying it is over.
                    if args[0]:
                        self._storage_since = asked_us
                    elif self._storage_since is not None:
                        p.watchdog_credit(asked_us - self._storage_since)
                        self._storage_since = None
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
                    self.credit_host_starvation()
                    p.watchdog_feed(now)
                    out = b"\x01"
                elif op == hal_sim.OP_WDT_STOP:
                    p.watchdog_stop(now)
                    out = b"\x01"
                elif op == hal_sim.OP_DARK:
                    (width_us,) = struct.unpack("<I", args)
                    p.detector_dark(at, int(width_us))
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
                # Likewise the time the model took (rendering a frame, say).
                p.watchdog_credit(self.now_us() - now)
            conn.sendall(out)
            self._busy = False
