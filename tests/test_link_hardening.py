"""The link's edge cases from the host's side: an answer meant for an
earlier command or an earlier session is never taken for the current one,
and a packet cut short on the board's side (a host that died mid-write)
leaves the board answering the next session at once."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pulseline.link.protocol import codes, wire
from pulseline.link.session import Session, wait_for_firmware
from pulseline.sim.board import SimBoard
from pulseline.targets.simboard import deploy_files as _deploy


def _answer(seq: int, body: dict) -> bytes:
    return wire.encode(wire.PKT_RESPONSE, 0, wire.response_payload(seq, codes.ERR_OK, json.dumps(body).encode()))


class StaleBoard:
    """A board on a socket:// URL that first answers every command with
    answers meant for others: the handshake with another session's id, then
    every command with an answer to a sequence number never sent (and the
    one sent before, the last session's), then the right one."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        dec = wire.CommandDecoder()
        while True:
            data = conn.recv(4096)
            if not data:
                return
            for _, ptype, seq, payload in dec.feed(data):
                if ptype != wire.PKT_COMMAND or payload is None:
                    continue
                op = payload[0]
                args = json.loads(payload[1:] or b"{}")
                if op == 14:  # ping: the heartbeat
                    conn.sendall(_answer(seq, {"t_us": 0}))
                elif op == 1:  # hello
                    config = {"pixels_per_line": 8, "lines_per_frame": 8, "pixel_format": 2}
                    body = {"protocol": 1, "firmware": "0", "board": "fake", "config": config}
                    conn.sendall(_answer(seq, {**body, "session": "someone else"}))
                    time.sleep(0.05)
                    conn.sendall(_answer(seq, {**body, "session": args["session"]}))
                else:
                    conn.sendall(_answer((seq + 17) & 0xFFFF, {"state": "NOT MINE"}))
                    conn.sendall(_answer((seq - 1) & 0xFFFF, {"state": "THE LAST ONE'S"}))
                    time.sleep(0.05)
                    conn.sendall(_answer(seq, {"state": "IDLE"}))


def test_answers_meant_for_another_command_or_session_are_never_taken():
    board = StaleBoard()
    with Session(board.url, heartbeat=False) as s:
        assert s.board["session"] == s.session_id
        assert s.status() == {"state": "IDLE"}
        assert s.command("dose_report") == {"state": "IDLE"}
        assert s.stale_answers == 5  # one handshake, two per command


def test_a_packet_cut_short_leaves_the_board_answering_the_next_session_at_once(tmp_path: Path):
    _deploy(tmp_path / "fs", None)
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "state") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        # A host that dies mid-write: the header of a 1 kB `arm`, 12 bytes of it.
        cut = wire.stuff(wire.encode(wire.PKT_COMMAND, 5, b"\x04" + b" " * 1000))[:wire.HEADER_SIZE + 12]
        with open(b.pty_path, "wb", buffering=0) as tty:
            tty.write(cut)
        res = subprocess.run([sys.executable, "-m", "pulseline.cli", "info", "--port", b.pty_path, "--json"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["state"] == "IDLE"  # the cut arm never ran
        with Session(b.pty_path, clock=b.clock) as s:
            assert s.status()["rx_partial_dropped"] == 1


@pytest.mark.parametrize("version", [0, 2])
def test_the_board_refuses_a_packet_of_another_protocol_version(tmp_path: Path, version: int):
    _deploy(tmp_path / "fs", None)
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "state") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        with Session(b.pty_path, clock=b.clock) as s:
            pkt = bytearray(wire.encode(wire.PKT_COMMAND, 4242, wire.command_payload(4, b"{}")))  # arm
            pkt[4] = version
            pkt[10:12] = struct.pack("<H", wire.header_check(bytes(pkt[4:10])))
            from binascii import crc32

            pkt[-4:] = struct.pack("<I", crc32(bytes(pkt[4:-4])))
            s.serial.write(wire.stuff(bytes(pkt)))
            deadline = time.monotonic() + 10
            while s.status()["rx_bad_version"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert s.status()["state"] == "IDLE"


class PingCountingBoard:
    """A board on a socket:// URL that answers the handshake and counts the
    host's pings."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.pings = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def wait_for_pings(self, n: int) -> None:
        deadline = time.monotonic() + 60  # (a guard against a hang only)
        while self.pings < n:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        dec = wire.CommandDecoder()
        while data := conn.recv(4096):
            for _, ptype, seq, payload in dec.feed(data):
                if ptype != wire.PKT_COMMAND or payload is None:
                    continue
                if payload[0] == 14:  # ping
                    self.pings += 1
                    conn.sendall(_answer(seq, {"t_us": 0}))
                elif payload[0] == 1:  # hello
                    args = json.loads(payload[1:] or b"{}")
                    config = {"pixels_per_line": 8, "lines_per_frame": 8, "pixel_format": 2}
                    conn.sendall(_answer(seq, {"protocol": 1, "firmware": "0", "board": "fake", "config": config,
                                               "session": args["session"]}))


def test_the_heartbeat_keeps_the_boards_time_not_the_walls():
    # A board whose time runs at an eighth of the wall's (the emulated Pico)
    # gets a ping per 50 ms of its own time, not eight: paced on the wall,
    # the pings took its control loop past its watchdog.
    from pulseline.link.clock import OwnClock
    from pulseline.link.session import HEARTBEAT_S

    board = PingCountingBoard()
    t0 = time.monotonic()
    clock = OwnClock(lambda: int((time.monotonic() - t0) / 8 * 1e6))
    with Session(board.url, clock=clock) as s:
        start_s = clock.now()
        board.wait_for_pings(3)
        time.sleep(0.5)
        board_s = clock.now() - start_s
        pings = board.pings
        assert s.error is None
    # Slowness can only make it fewer.
    assert pings <= board_s / HEARTBEAT_S + 2, (pings, board_s)


def test_a_board_that_disarmed_itself_is_told_apart_from_a_host_that_fell_silent():
    # The board says it disarmed because the host fell silent; the session,
    # on the board's clock, knows when its heartbeats left: a capture then
    # says whether this host was silent or its words came late.
    from types import SimpleNamespace

    from pulseline.exam.capture import _stop_reason
    from pulseline.link.clock import OwnClock
    from pulseline.link.session import Event

    board = PingCountingBoard()
    t0 = time.monotonic()
    clock = OwnClock(lambda: int((time.monotonic() - t0) * 1e6))
    with Session(board.url, clock=clock) as s:
        before_s = clock.now()
        board.wait_for_pings(2)
        time.sleep(0.1)
        now_s = clock.now()
        gap_s = s.heartbeat_before(now_s)
        assert gap_s is not None and 0 <= gap_s <= now_s - before_s
        assert s.heartbeat_before(before_s - 1) is None  # none had left then
    with Session(PingCountingBoard().url, heartbeat=False) as s:
        assert s.heartbeat_before(time.monotonic()) is None  # the host's clock is not the board's

    disarmed = Event(5_000_000, "state", {"state": "IDLE", "from": "EXPOSING", "fault": 0, "why": "host link lost"})
    late = SimpleNamespace(heartbeat_before=lambda t_s: 0.03)
    silent = SimpleNamespace(heartbeat_before=lambda t_s: 0.45)
    assert "last heartbeat left 30 ms before, and reached it late" in _stop_reason([disarmed], 2, late)
    assert "sent no heartbeat for 450 ms before it" in _stop_reason([disarmed], 2, silent)
    commanded = Event(5_000_000, "state", {"state": "IDLE", "from": "EXPOSING", "fault": 0})
    assert _stop_reason([commanded], 2, silent) == "the board was disarmed"


HOLD_LOCK = "import sys, time; sys.stdin.read()"  # holds what it inherited until told to go


def _child_holding(fd: int) -> subprocess.Popen[str]:
    """A child holding a copy of `fd` (as one does between its fork and its
    exec, stretched until its stdin closes)."""
    return subprocess.Popen([sys.executable, "-c", HOLD_LOCK], stdin=subprocess.PIPE, text=True, pass_fds=(fd,))


def test_a_port_closed_and_opened_again_while_a_child_starts_is_not_busy():
    """A process that forks holds the lock of a port this process just
    closed, until it runs exec: a port opened again meanwhile waits that
    out instead of failing as busy (a simulated board that resets in the
    host's own process starts processes at just that moment)."""
    import os
    import pty

    import serial

    from pulseline.link import ports

    master, slave = pty.openpty()
    device = os.ttyname(slave)
    try:
        first = serial.Serial(device, exclusive=True)
        child = _child_holding(first.fd)
        first.close()
        assert ports.lock_holder(device) == os.getpid()  # the lock outlives the close: the child's copy holds it
        with pytest.raises(serial.SerialException, match="exclusively lock"):
            serial.Serial(device, exclusive=True)  # what a plain open meets
        threading.Timer(0.3, child.communicate, args=("",)).start()  # the child execs, as it were
        again = ports.open_exclusive(device, lambda: serial.Serial(device, exclusive=True))
        assert again.is_open and child.wait(timeout=30) == 0
        again.close()
    finally:
        os.close(master)
        os.close(slave)


def test_a_port_another_program_holds_is_busy_at_once_and_says_who(monkeypatch):
    import os
    import pty

    import serial

    from pulseline.link import ports

    master, slave = pty.openpty()
    device = os.ttyname(slave)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", device],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with monkeypatch.context() as m:
            m.setattr(ports.time, "sleep", lambda s: pytest.fail("waited for another program's lock"))
            with pytest.raises(serial.SerialException):
                ports.open_exclusive(device, lambda: serial.Serial(device, exclusive=True))
        assert (ports.held_by(device) or "").startswith(f"process {holder.pid} (python")
        # And as the host tool says it.
        with pytest.raises(Exception, match=f"busy: process {holder.pid} "):
            Session(device)
    finally:
        holder.communicate("")
        os.close(master)
        os.close(slave)
