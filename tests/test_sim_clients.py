"""A simulated board's I/O outlives any client: one that resets the
connection, half-closes it, never reads, or sends a byte a second, on its
`socket://` port or its control channel. After each the board still
answers a new session, and `pulseline sim stop` / `sim list` still work.

The board is a real detached one (`pulseline sim --detach`), driven by
real sockets; every wait is on a condition, with a generous deadline.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pulseline.link.session import Session, wait_for_firmware
from pulseline.sim.board import MAX_CLIENT_BACKLOG, MAX_CONTROL_LINE, SimControl
from pulseline.targets.simboard import deploy_files as _deploy

pytestmark = pytest.mark.micropython


def pulseline(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pulseline", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def wait_for(pred: Any, timeout_s: float = 60.0) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    return None


def start(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    res = pulseline(tmp_path, "sim", "--detach", "--name", name, "--json", *args)
    assert res.returncode == 0, res.stderr
    board: dict[str, Any] = json.loads(res.stdout)
    return board


def stop_and_check(tmp_path: Path, name: str) -> str:
    """`sim stop` answers and the board is gone from `sim list`; its log."""
    res = pulseline(tmp_path, "sim", "stop", "--name", name)
    assert res.returncode == 0 and f"stopped {name}" in res.stdout, res.stderr
    assert json.loads(pulseline(tmp_path, "sim", "list", "--json").stdout) == []
    log = (tmp_path / ".pulseline" / f"{name}.log").read_text()
    assert "I/O loop" not in log, log  # no failure reached the loop itself
    return log


def address(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.removeprefix("socket://").rpartition(":")
    return host, int(port)


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a killed or crashed client's kernel may."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_to_end(sock: socket.socket, timeout_s: float = 60.0) -> bytes:
    """Everything until the other side hangs up (reset counts)."""
    sock.settimeout(timeout_s)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def answers(port: str) -> None:
    """A new session on the port says hello and answers status."""
    with Session(port, answer_timeout_s=10) as s:
        assert s.board["firmware"] and s.status()["state"]


def test_the_socket_port_outlives_any_client(tmp_path):
    fs = tmp_path / "fs"
    _deploy(fs, None)
    board = start(tmp_path, "r", "--fs", str(fs))
    state = tmp_path / ".pulseline"
    log = state / "r.log"
    try:
        wait_for_firmware(board["pty"], timeout_s=120)
        url = board["url"]

        # Resets: right after connecting, and in the middle of a request.
        for k in range(10):
            c = socket.create_connection(address(url), timeout=30)
            if k % 2:
                c.sendall(b"\x7e\x01\x02")
            reset(c)
        answers(url)

        # Half-closed: hung up on (a serial port has no half), then a new session.
        c = socket.create_connection(address(url), timeout=30)
        c.sendall(b"zz")
        c.shutdown(socket.SHUT_WR)
        read_to_end(c)
        c.close()
        answers(url)

        # A byte a second: the board goes on meanwhile, on its other port and
        # its control channel.
        c = socket.create_connection(address(url), timeout=30)
        ctl = SimControl("r", state)
        try:
            for _ in range(4):
                c.sendall(b"z")
                assert ctl.status()["ok"]
                time.sleep(1.0)
            answers(board["pty"])
        finally:
            ctl.close()
            c.close()
        answers(url)

        # Clients that stop reading while the board streams frames (exposed
        # through the pty): one resets with output unread, the other never
        # reads and is dropped past its backlog, as a serial server does.
        ctl = SimControl("r", state)
        try:
            with Session(board["pty"], answer_timeout_s=10) as s:
                def expose() -> None:
                    # (Again, should a heartbeat late on a loaded machine have disarmed it.)
                    if s.status()["state"] == "IDLE":
                        ctl.release()
                        s.arm()  # the firmware sees the release meanwhile: a fresh press exposes
                        ctl.press()

                def output_came(c: socket.socket) -> bool:
                    expose()
                    try:
                        return bool(c.recv(1, socket.MSG_PEEK))
                    except TimeoutError:
                        return False

                c = socket.socket()
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c.connect(address(url))
                c.settimeout(0.5)
                assert wait_for(lambda: output_came(c), 120)
                reset(c)
                never = socket.socket()
                never.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                never.connect(address(url))
                try:
                    dropped = f"it left more than {MAX_CLIENT_BACKLOG >> 20} MB of output unread"
                    assert wait_for(lambda: expose() or dropped in log.read_text(), 300), log.read_text()
                    assert s.status()["state"]  # the pty's host was never held up
                finally:
                    ctl.release()
                    never.close()
                s.disarm()
        finally:
            ctl.close()
        answers(url)
        answers(board["pty"])
    finally:
        text = stop_and_check(tmp_path, "r")
    assert "unread" in text, text


def test_the_control_channel_outlives_any_client(tmp_path):
    board = start(tmp_path, "c")  # no firmware needed: this is the simulator's own channel
    state = tmp_path / ".pulseline"
    ctl_addr = address(board["control"])
    try:
        # Garbage, and requests that are not objects: each answered, and the
        # channel goes on.
        c = socket.create_connection(ctl_addr, timeout=30)
        bad = [b"\xff\xfe{not json", b"[1, 2]", b'"status"', b"{}", b'{"op": "set"}', b'{"op": "set", "name": 1}',
               b"[" * 20000, b'{"op": "frobnicate"}']
        for line in bad:
            c.sendall(line + b"\n")
        f = c.makefile("rb")
        for line in bad:
            ans = json.loads(f.readline())
            assert ans["ok"] is False and ans["error"], (line[:40], ans)
        c.sendall(b'{"op": "status"}\n')
        assert json.loads(f.readline())["ok"] is True
        f.close()
        c.close()

        # No newline, ever: hung up on past one request's worth.
        c = socket.create_connection(ctl_addr, timeout=30)
        try:
            for _ in range(2 * MAX_CONTROL_LINE // 4096 + 4):
                c.sendall(b"x" * 4096)
        except OSError:
            pass  # hung up on while still sending
        assert read_to_end(c) == b""
        c.close()

        # Reset in the middle of a request; half-closed after one.
        c = socket.create_connection(ctl_addr, timeout=30)
        c.sendall(b'{"op": "sta')
        reset(c)
        c = socket.create_connection(ctl_addr, timeout=30)
        c.sendall(b'{"op": "status"}\n')
        c.shutdown(socket.SHUT_WR)
        got = read_to_end(c)
        assert json.loads(got.splitlines()[0])["ok"] is True
        c.close()

        # Never reads its answers: dropped past its backlog, not waited for.
        c = socket.create_connection(ctl_addr, timeout=30)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            for _ in range(40):
                c.sendall(b'{"op": "status"}\n' * 1000)
        except OSError:
            pass
        ctl = SimControl("c", state)
        assert ctl.status()["ok"]
        assert wait_for(lambda: "left its answers unread" in (state / "c.log").read_text(), 120)
        c.close()

        # A byte a second: the others are answered meanwhile, and then it is.
        c = socket.create_connection(ctl_addr, timeout=30)
        request = b'{"op": "status"}\n'
        for byte in request[:4]:
            c.sendall(bytes([byte]))
            assert ctl.status()["ok"]
            time.sleep(1.0)
        c.sendall(request[4:])
        f = c.makefile("rb")
        assert json.loads(f.readline())["ok"] is True
        f.close()
        c.close()
        ctl.close()

        # The CLI's own requests, options anywhere.
        res = pulseline(tmp_path, "sim", "set", "--name", "c", "door_closed", "false")
        assert res.returncode == 0, res.stderr
        res = pulseline(tmp_path, "sim", "--name", "c", "press")
        assert res.returncode == 0, res.stderr
        ctl = SimControl("c", state)
        status = ctl.status()
        ctl.close()
        assert status["door_closed"] is False and status["switch"] is True
    finally:
        text = stop_and_check(tmp_path, "c")
    assert "request longer than" in text and "unread" in text, text


def test_sim_set_takes_its_words_around_the_options_and_refuses_stray_ones(tmp_path):
    res = pulseline(tmp_path, "sim", "press", "now", "--name", "nope")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "takes no 'now'" in res.stderr
    res = pulseline(tmp_path, "sim", "set", "--name", "nope", "door_closed")
    assert res.returncode == 2 and "needs an input and a value" in res.stderr
    res = pulseline(tmp_path, "sim", "set", "--name", "nope", "door_closed", "false")
    assert res.returncode == 2 and "no simulated board named 'nope'" in res.stderr
