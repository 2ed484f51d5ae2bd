"""A host-side serial proxy that brings the simulated link's seeded faults
to any board: it opens the board's port (a device path or pyserial URL) and
serves it as `socket://127.0.0.1:PORT`, passing the bytes through the same
LinkDirection model the simulated board uses (corruption, dropped,
duplicated and delayed chunks, a disconnect), so a test on hardware meets
the faults a test on the simulator does, with the same ground truth.

    with FaultProxy("/dev/ttyACM0", "corrupt=1e-5,drop=0.01", seed=7) as proxy:
        with Session(proxy.url) as s: ...
        proxy.faults_log              # every fault injected, board -> host

Only the faults are added: the link class is "usb-hs" (the proxy adds no
throughput ceiling of its own worth speaking of), the board's own link
sets the pace. Board -> host by default; `dir=both` in the spec also hits
host -> board traffic.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Any

import numpy as np
import serial

from ..link import ports
from ..sim.link import LinkDirection, parse_link

POLL_S = 0.001


class FaultProxy:
    def __init__(self, port: str, faults: str, *, seed: int = 0) -> None:
        from ..sim.board import parse_board_faults

        self.port = port
        self.spec, self.both_ways = parse_board_faults(faults)
        seq = np.random.SeedSequence(seed, spawn_key=(0x50524F58,))  # "PROX": its own stream
        rng_up, rng_down = (np.random.default_rng(s) for s in seq.spawn(2))
        now = time.monotonic()
        link = parse_link("usb-hs")
        self.to_host = LinkDirection(link, self.spec, rng_up, now)
        no_faults = parse_board_faults("")[0]
        self.to_board = LinkDirection(link, self.spec if self.both_ways else no_faults, rng_down, now)
        self._board: Any = None
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(1)
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    @property
    def faults_log(self) -> list[Any]:
        return list(self.to_host.faults_log)

    def start(self) -> FaultProxy:
        from . import resolve_port

        target = resolve_port(self.port)
        kwargs: dict[str, Any] = {} if "://" in target else {"exclusive": True}
        try:
            self._board = ports.open_exclusive(
                target, lambda: serial.serial_for_url(target, baudrate=115200, timeout=0, **kwargs))
        except (serial.SerialException, ValueError) as exc:
            raise ValueError(f"fault proxy: cannot open port {self.port}: {exc}") from None
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._server.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._pump(conn)

    def _pump(self, conn: socket.socket) -> None:
        board = self._board
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                data = board.read(65536)
            except (serial.SerialException, OSError) as exc:
                self.error = f"board port: {exc}"
                return
            if data:
                self.to_host.push(data, now)
            try:
                if select.select([conn], [], [], 0)[0]:
                    up = conn.recv(65536)
                    if not up:
                        return  # the host closed its end: wait for the next one
                    self.to_board.push(up, now)
                out = self.to_host.pop_ready(now)
                if out:
                    conn.sendall(out)  # blocking: the proxy itself never loses a byte
            except OSError:
                return
            down = self.to_board.pop_ready(now)
            if down:
                board.write(down)
            if not data:
                time.sleep(POLL_S)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self._server.close()
        if self._board is not None:
            with contextlib.suppress(Exception):
                self._board.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
