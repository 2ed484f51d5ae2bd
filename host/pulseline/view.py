"""The live monitor: a local web page that shows a board's frames as they
come, with the technique and dose displays the regulation asks for, and the
last image held when the pedal is released.

    LiveView(session)            one board's session -> one page, many tabs

A pump thread reads the session (frames, events, a status poll each second)
and hands what it read to the web server's event loop (Starlette on uvicorn,
in its own thread). Every browser tab is a WebSocket client with a one-frame
slot: a tab that draws slower than the board sends has its older display
frames replaced (counted and shown), never delays the session, and never
costs a capture frame. Text messages (state, dose, alarms, faults) are never
dropped.

Frame message (binary): u32 little-endian n, n bytes of JSON header
(frame_id, pulse_id, t_us, lines, pixels, lines_lost, complete, bits,
arrived_ms: the wall-clock time the host had it assembled), then
lines x pixels u16 little-endian pixel values. A tab answers each frame
with {"type": "shown", "frame_id": n, "delay_ms": d} once it is on screen
(the next animation frame after drawing): d is the arrival-to-display delay.

Without a board (none yet, or the one shown went away) the page stays up and
says so; given how to open one (`connect`), the view keeps trying and shows
the board when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from .frames import Frame

PAGE = Path(__file__).with_name("view_page.html")
STATUS_EVERY_S = 1.0  # the displays refresh at least this often, exposing or not
RETRY_S = 2.0  # how often a view without a board tries to open it
ACK_TIMEOUT_S = 1.0  # a tab that has not said it drew a frame gets the next one after this long anyway
PAGE_COMMANDS = ("arm", "disarm", "fault_reset", "alarm_reset")  # what the page's console buttons send
SIM_INPUTS = ("switch", "door_closed", "key_on", "generator_ready", "hlc_switch", "water_cm", "structures")


def encode_frame(frame: Frame, *, bits: int = 12) -> bytes:
    """One frame as the page receives it (see the module doc)."""
    px = frame.pixels
    if px.dtype != np.uint16:  # corrected frames are float: clip to the display range
        px = np.nan_to_num(px, nan=0.0, posinf=65535.0, neginf=0.0).clip(0, 65535).round().astype(np.uint16)
    lines, pixels = px.shape
    head = json.dumps({"frame_id": frame.frame_id, "pulse_id": frame.pulse_id, "t_us": frame.timestamp_us,
                       "lines": lines, "pixels": pixels, "lines_lost": frame.lines_lost,
                       "complete": frame.complete, "bits": bits,
                       "arrived_ms": round(frame.arrived_s * 1000.0, 3)}).encode()
    return struct.pack("<I", len(head)) + head + np.ascontiguousarray(px, dtype="<u2").tobytes()


@dataclass
class _Client:
    ws: Any
    texts: list[str] = field(default_factory=list)
    frame: bytes | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    frames_sent: int = 0
    frames_dropped: int = 0
    frames_shown: int = 0  # acknowledged by the tab as on screen
    unacked_since: float | None = None  # a frame is out and the tab has not said it drew it


class Hub:
    """The tabs and what each is owed; lives on the server's event loop."""

    def __init__(self) -> None:
        self.clients: list[_Client] = []
        self.snapshot: dict[str, Any] = {}  # the latest of each text kind, for a tab that joins late
        self.last_frame: bytes | None = None
        self.frames_in = 0

    def text(self, message: dict[str, Any]) -> None:
        if message.get("type") in ("status", "dose", "state", "link", "board", "hold", "fault"):
            self.snapshot[str(message["type"])] = message
        data = json.dumps(message)
        for c in self.clients:
            c.texts.append(data)
            c.wake.set()

    def frame(self, data: bytes) -> None:
        self.frames_in += 1
        self.last_frame = data
        for c in self.clients:
            if c.frame is not None:
                c.frames_dropped += 1  # the tab has not taken the last one: it sees this one instead
            c.frame = data
            c.wake.set()

    async def serve(self, ws: Any) -> None:
        c = _Client(ws)
        c.texts = [json.dumps(m) for m in self.snapshot.values()]
        c.frame = self.last_frame
        self.clients.append(c)
        c.texts.append(json.dumps({"type": "tabs", "count": len(self.clients)}))
        for other in self.clients[:-1]:
            other.texts.append(json.dumps({"type": "tabs", "count": len(self.clients)}))
            other.wake.set()
        c.wake.set()
        receiver = asyncio.ensure_future(self._receive(c))
        try:
            while not receiver.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.wake.wait(), ACK_TIMEOUT_S)
                c.wake.clear()
                while c.texts:
                    await ws.send_text(c.texts.pop(0))
                # One frame in flight per tab: the next goes when the tab has
                # drawn this one (or has not said so for ACK_TIMEOUT_S), so a
                # slow tab is shown the newest frame, not a backlog.
                waiting = c.unacked_since is not None and time.monotonic() - c.unacked_since < ACK_TIMEOUT_S
                if c.frame is not None and not waiting:
                    frame, c.frame = c.frame, None
                    c.unacked_since = time.monotonic()
                    await ws.send_bytes(frame)
                    c.frames_sent += 1
        except Exception:  # the tab went away mid-send
            pass
        finally:
            receiver.cancel()
            self.clients.remove(c)
            for other in self.clients:
                other.texts.append(json.dumps({"type": "tabs", "count": len(self.clients)}))
                other.wake.set()

    async def _receive(self, c: _Client) -> None:
        """What a tab says: `{"shown": n}` after drawing (for the counters)."""
        with contextlib.suppress(Exception):
            while True:
                msg = json.loads(await c.ws.receive_text())
                if msg.get("type") == "shown":
                    c.unacked_since = None
                    c.frames_shown += 1
                    c.texts.append(json.dumps({"type": "display", "sent": c.frames_sent,
                                               "dropped": c.frames_dropped}))
                    c.wake.set()
        c.wake.set()  # ends the sender


class LiveView:
    """Serve one board's live view at http://HOST:PORT/.

    `session`: an open Session on the board, shown until it is lost.
    `connect`: instead, how to open one: a callable returning (session,
    controls), raising SessionError while there is no board; the view tries
    every RETRY_S and again after losing the board. `controls`: an object
    with set_input(name, value) (a simulated board's hardware), or None.
    With pump=False the caller feeds frames (show_frame) and the view only
    polls status and reads events: used by `capture --view`, whose capture
    loop owns the frames. `log`: told each change of link in one line."""

    def __init__(self, session: Any = None, *, connect: Callable[[], tuple[Any, Any]] | None = None,
                 where: str = "", host: str = "127.0.0.1", port: int = 0, controls: Any = None,
                 pump: bool = True, recording: bool = False, log: Callable[[str], None] | None = None) -> None:
        if (session is None) == (connect is None):
            raise ValueError("a live view needs a session or a way to connect, not both")
        self.session = session
        self._connect = connect
        self.where = where or getattr(session, "port", "")
        self.controls = controls
        self.hub = Hub()
        self.recording = recording
        self._pump_frames = pump
        self._fed: queue.Queue[Frame] = queue.Queue()
        self._log = log or (lambda line: None)
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._pump: threading.Thread | None = None
        self._host, self._port = host, port
        self.url = ""
        self.error: str | None = None
        self.link_ok: bool | None = None  # None: not yet known
        self._link_error = ""

    # -- the web side -----------------------------------------------------------------

    def _app(self) -> Any:
        # (The web stack is imported with this module, not here: a simulated
        # board served from the same process must not wait on a long import.)
        async def page(request: Request) -> HTMLResponse:
            return HTMLResponse(PAGE.read_text())

        async def ws(socket: WebSocket) -> None:
            await socket.accept()
            await self.hub.serve(socket)

        async def control(request: Request) -> JSONResponse:
            if self.session is None:
                return JSONResponse({"ok": False, "error": f"no board on {self.where}"}, status_code=409)
            if self.controls is None:
                return JSONResponse({"ok": False, "error": "this board has no simulated hardware"}, status_code=409)
            try:
                req = await request.json()
                name, value = str(req["name"]), req["value"]
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"ok": False, "error": "expected {\"name\": INPUT, \"value\": V}"},
                                    status_code=400)
            if name not in SIM_INPUTS:
                return JSONResponse({"ok": False, "error": f"unknown input {name!r}"}, status_code=400)
            try:
                t_us = await asyncio.get_running_loop().run_in_executor(None, self.controls.set_input, name, value)
            except (OSError, ValueError) as exc:
                return JSONResponse({"ok": False, "error": str(exc)}, status_code=502)
            return JSONResponse({"ok": True, "t_us": t_us})

        async def command(request: Request) -> JSONResponse:
            try:
                name = str((await request.json())["command"])
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"ok": False, "error": "expected {\"command\": NAME}"}, status_code=400)
            if name not in PAGE_COMMANDS:
                return JSONResponse({"ok": False, "error": f"not a command of the page: {name!r} "
                                     f"(one of {', '.join(PAGE_COMMANDS)})"}, status_code=400)
            from .session import SessionError

            session = self.session
            if session is None:
                return JSONResponse({"ok": False, "error": f"no board on {self.where}"}, status_code=409)
            try:
                body = await asyncio.get_running_loop().run_in_executor(None, session.command, name)
            except SessionError as exc:  # BoardError included: the board's refusal, in its words
                return JSONResponse({"ok": False, "error": str(exc)}, status_code=409)
            return JSONResponse({"ok": True, "answer": body})

        async def state(request: Request) -> JSONResponse:
            return JSONResponse({**self.hub.snapshot, "frames_in": self.hub.frames_in,
                                 "tabs": [{"sent": c.frames_sent, "dropped": c.frames_dropped,
                                           "shown": c.frames_shown} for c in self.hub.clients]})

        return Starlette(routes=[Route("/", page), WebSocketRoute("/ws", ws),
                                 Route("/api/control", control, methods=["POST"]),
                                 Route("/api/command", command, methods=["POST"]), Route("/api/state", state)])

    def start(self) -> LiveView:
        config = uvicorn.Config(self._app(), host=self._host, port=self._port, log_level="warning",
                                lifespan="off", ws="websockets-sansio")
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            try:
                loop.run_until_complete(self._server.serve())
            except (OSError, SystemExit) as exc:
                self.error = f"cannot listen on {self._host}:{self._port}: {exc}"

        self._thread = threading.Thread(target=run, name="view-server", daemon=True)
        self._thread.start()
        ready.wait()
        deadline = time.monotonic() + 10
        while not self._server.started and self.error is None and self._thread.is_alive():
            if time.monotonic() > deadline:
                self.error = "the web server did not start within 10 s"
                break
            time.sleep(0.01)
        if self.error is not None or not self._server.started:
            raise OSError(self.error or f"cannot listen on {self._host}:{self._port}")
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        shown = "localhost" if host in ("127.0.0.1", "::1") else host
        self.url = f"http://{shown}:{port}/"
        self._say_board()
        self._pump = threading.Thread(target=self._pump_loop, name="view-pump", daemon=True)
        self._pump.start()
        return self

    # -- from the board -----------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def text(self, message: dict[str, Any]) -> None:
        self._call(self.hub.text, message)

    def show_frame(self, frame: Frame) -> None:
        """Show a frame the caller has (with pump=False: capture --view). It
        goes out after the events that came before it, as pumped ones do."""
        self._fed.put(frame)

    def _send_frame(self, frame: Frame) -> None:
        session = self.session
        bits = 12 if session is not None and session.config.get("pixel_format") == 2 else 16
        self._call(self.hub.frame, encode_frame(frame, bits=bits))

    def set_recording(self, on: bool) -> None:
        self.recording = on
        self._say_board()

    def _say_board(self) -> None:
        s = self.session
        self.text({"type": "board", "board": s.board if s is not None else None, "where": self.where,
                   "controls": s is not None and self.controls is not None, "recording": self.recording})

    def _say_link(self, ok: bool, error: str = "") -> None:
        if ok == self.link_ok and (ok or error == self._link_error):
            return
        self.link_ok, self._link_error = ok, error
        self.text({"type": "link", "ok": ok, "error": error})
        self._log(f"showing the board on {self.where}" if ok else error)

    def _pump_loop(self) -> None:
        while not self._stop.is_set():
            if self.session is None:
                try:
                    session, controls = self._connect()  # type: ignore[misc]
                except Exception as exc:  # SessionError, OSError: no board (yet)
                    self._say_link(False, f"no board: {exc} (trying again every "
                                          f"{RETRY_S:g} s)")
                    self._stop.wait(RETRY_S)
                    continue
                if self._stop.is_set():
                    session.close()
                    return
                self.session, self.controls = session, controls
                self._say_board()
                self._say_link(True)
            elif self.link_ok is None:
                self._say_link(True)
            lost = self._pump_session(self.session)
            if self._stop.is_set():
                return
            if self._connect is None:  # a session the caller gave: lost for good
                self._say_link(False, f"board lost: {lost} (the last image and displays are as they were)")
                return
            self._say_link(False, f"board lost: {lost} (the last image and displays are as they were; "
                                  "waiting for the board to come back)")
            with contextlib.suppress(Exception):
                self.session.close()
            self.session, self.controls = None, None
            self._say_board()
            self._stop.wait(RETRY_S)

    def _pump_session(self, s: Any) -> str:
        """Frames, events and status from one session until it is lost (the
        reason) or the view stops ("")."""
        seen = 0
        next_status = 0.0
        while not self._stop.is_set():
            if self._pump_frames:
                frame = s.next_frame(0.02)
            else:  # capture --view: the capture loop hands its frames over (show_frame)
                try:
                    frame = self._fed.get(timeout=0.02)
                except queue.Empty:
                    frame = None
            # Events first: the session reads the stream in order, so every
            # event the board sent before this frame (a new press's EXPOSING,
            # which lifts the hold marker) is already here and goes out first.
            while seen < len(s.events):
                ev = s.events[seen]
                seen += 1
                self.text({"type": "event", "event": ev.name, "t_us": ev.t_us, **ev.body})
                if ev.name == "dose":
                    self.text({"type": "dose", **ev.body})
                elif ev.name == "fault":
                    self.text({"type": "fault", "name": ev.body.get("name"), "message": ev.body.get("message")})
                elif ev.name == "state":
                    self.text({"type": "state", **ev.body})
                    if ev.body.get("state") != "FAULT":
                        self.text({"type": "fault", "name": None})  # a tab that joins later sees none
                    if ev.body.get("state") == "HOLD":
                        self.text({"type": "hold", "on": True})
                    elif ev.body.get("state") == "EXPOSING":
                        self.text({"type": "hold", "on": False})
            if frame is not None:
                self._send_frame(frame)
            if s.error:
                return str(s.error)
            now = time.monotonic()
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                try:
                    status = s.status()
                except Exception as exc:  # no answer: say so, keep the page up
                    if s.error:
                        continue  # lost: said above, on the next turn
                    self._say_link(False, f"the board on {self.where} does not answer: {exc}")
                    continue
                self._say_link(True)
                self.text({"type": "status", **status, "lines_lost_host": s.counters().get("lines_lost", 0)})
        return ""

    def stop(self) -> None:
        self._stop.set()
        if self._pump is not None:
            self._pump.join(timeout=2)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._connect is not None and self.session is not None and not self._pump_alive():
            self.session.close()  # one the view opened itself

    def _pump_alive(self) -> bool:
        return self._pump is not None and self._pump.is_alive()

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
