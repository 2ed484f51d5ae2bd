"""The control channel of a simulated board's plant: a loopback TCP socket
carrying one JSON request a line and one JSON answer a line (set an input,
read the plant's status, stop the board). ControlServer is the board's
side; SimControl reaches a running board from another process (the CLI,
tests, tools). Also load_timeline, a plant timeline from its JSON file.

May import link and plant; never targets or above.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..plant import Timeline
from . import peer
from .controls import PlantControls
from .endpoints import Client, Clients
from .registry import STATE_DIR, find_board

MAX_CONTROL_LINE = 64 << 10  # a control request is one short JSON line
MAX_CONTROL_BACKLOG = 1 << 20  # answers a control client has not read


class ControlledBoard(Protocol):
    """What the control channel works on (a SimBoard)."""

    def set_input(self, name: str, value: float | bool) -> int: ...

    def plant_status(self) -> dict[str, Any]: ...

    def board_now_us(self) -> int: ...


class ControlServer(Clients):
    """The board's side of the control channel; `stop` is set by a 'stop' request."""

    sock: socket.socket
    address: str  # host:port, in the board's state file

    def __init__(self, board: ControlledBoard, stop: threading.Event, log_error: Callable[[str], None]) -> None:
        super().__init__(log_error)
        self._board = board
        self._stop = stop

    def open(self) -> None:
        self.sock = self.listen()
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.close_listener(getattr(self, "sock", None))

    def accept(self) -> None:
        try:
            conn = peer.accept_own(self.sock)
        except OSError:
            return
        if conn is not None:
            conn.setblocking(False)
            self.clients.append(Client(conn))

    def read(self, c: Client) -> None:
        try:
            self._readable(c)
        except Exception as exc:  # one client's trouble ends that client only
            self.drop(c, f"control: {type(exc).__name__}: {exc}")

    def _readable(self, c: Client) -> None:
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:  # reset by the client
            data = b""
        if not data:
            self.hung_up(c)
            return
        c.buf += data
        while b"\n" in c.buf:
            line, _, rest = bytes(c.buf).partition(b"\n")
            c.buf[:] = rest
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a control request is a JSON object")
                op = req.get("op")
                if op == "set":
                    ans: dict[str, Any] = {"ok": True, "t_us": self._board.set_input(str(req["name"]), req["value"])}
                elif op == "status":
                    ans = {"ok": True, **self._board.plant_status()}
                elif op == "now":
                    ans = {"ok": True, "t_us": self._board.board_now_us()}
                elif op == "stop":
                    ans = {"ok": True}
                    self._stop.set()
                else:
                    ans = {"ok": False, "error": f"unknown control op {op!r}"}
            except Exception as exc:  # any bad request gets its answer, the channel stays
                ans = {"ok": False, "error": str(exc) or type(exc).__name__}
            c.out += json.dumps(ans).encode() + b"\n"
            if len(c.out) > MAX_CONTROL_BACKLOG:
                self.drop(c, "control: it left its answers unread")
                return
            self.flush(c)  # at once: after a stop, the loop does not turn again
            if c not in self.clients:
                return
        if len(c.buf) > MAX_CONTROL_LINE:
            self.drop(c, f"control: a request longer than {MAX_CONTROL_LINE >> 10} kB")


def load_timeline(path: str | Path | None) -> Timeline | None:
    """A plant timeline from a JSON file; ValueError with the reason."""
    if path is None:
        return None
    try:
        return Timeline.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise ValueError(f"timeline {path}: {exc}") from None
    except RecursionError:
        raise ValueError(f"timeline {path}: nested too deeply to be a timeline") from None


class SimControl(PlantControls):
    """The simulated hardware of a running board, from another process."""

    def __init__(self, name: str | None = None, state_dir: str | Path = STATE_DIR) -> None:
        self.state = find_board(name, Path(state_dir))
        host, _, port = self.state["control"].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""
        self._lock = threading.Lock()  # a session's thread reads the board's time beside the test's requests

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._ask_locked(req)

    def _ask_locked(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the simulated board closed its control channel")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        ans: dict[str, Any] = json.loads(line)
        if not ans.get("ok"):
            raise ValueError(ans.get("error", "control request failed"))
        return ans

    def set_input(self, name: str, value: float | bool) -> int:
        return int(self._ask({"op": "set", "name": name, "value": value})["t_us"])

    def plant_status(self) -> dict[str, Any]:
        return self._ask({"op": "status"})

    status = plant_status  # (the control channel's own word for it)

    def board_now_us(self) -> int:
        """The board's own time now (what its interpreter ran and asked to wait)."""
        return int(self._ask({"op": "now"})["t_us"])

    def stop(self) -> None:
        self._ask({"op": "stop"})

    def close(self) -> None:
        self.sock.close()
