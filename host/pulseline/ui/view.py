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

Who may drive it (the page arms the board and holds the exposure switch):
only whoever has this launch's secret, as Jupyter does it. `url` carries it
(?token=...); every HTTP request (the page, its script and style, the API)
and the WebSocket handshake must present it (query `token` or header
X-Pulseline-Token), with the view's own Host (no DNS rebinding) and, when a
browser says where it comes from, the view's own Origin (required on POSTs
and the WebSocket). Commands are JSON only: a cross-site form or `text/plain`
"simple request" is refused before it reaches a handler. Every response
forbids framing and inline script (CSP). A refused request is answered 403
(a WebSocket: refused before it is accepted) and changes nothing. Listening
beyond loopback needs allow_remote.

PageServer is that web side on its own (the token, the guard, the server
thread, the browser's redirect file): the live view is one, the review of a
recorded run (review.py) another. view_display.js, window and level on a
canvas, is both pages' too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import ipaddress
import json
import os
import queue
import secrets
import shutil
import socket
import struct
import tempfile
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..link.frames import Frame

PAGE = Path(__file__).with_name("view_page.html")
SCRIPT = PAGE.with_name("view_page.js")  # served as /view_page.js, STYLE as /view_page.css
STYLE = PAGE.with_name("view_page.css")
DISPLAY_SCRIPT = PAGE.with_name("view_display.js")  # window and level: the live view's page and the review's
TOKEN_HEADER = "x-pulseline-token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Sent with every HTTP response, with CSP. Its connect-src names the
# WebSocket's origin as well as 'self': not every browser counts ws:// to the
# same host as 'self'.
SECURITY_HEADERS = (("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
                    ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"))
CSP = ("default-src 'self'; connect-src 'self' ws://{host}; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'none'")
REDIRECT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={url}">
<title>pulseline {what}</title></head>
<body><a href="{url}">the {what}</a></body></html>
"""
# What is around each page's own markup (view_page.html, review_page.html:
# the body), written once for both: the title names the page, the token (put
# in where it says __TOKEN__) is in a meta element for the page's script's
# requests and in the address of each style and script it is served with.
# No inline script or style: the CSP allows none.
PAGE_FRAME = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pulseline {what}</title>
<meta name="pulseline-token" content="__TOKEN__">
{styles}</head>
<body>
{body}{scripts}</body>
</html>
"""
STATUS_EVERY_S = 1.0  # the displays refresh at least this often, exposing or not
RETRY_S = 2.0  # how often a view without a board tries to open it
ACK_TIMEOUT_S = 1.0  # a tab that has not said it drew a frame gets the next one after this long anyway
PAGE_COMMANDS = ("arm", "disarm", "fault_reset", "alarm_reset")  # what the page's console buttons send
SIM_INPUTS = ("switch", "door_closed", "key_on", "generator_ready", "hlc_switch", "water_cm", "structures")


def display_pixels(px: Any) -> Any:
    """Pixels as a page draws them: uint16, corrected (float) ones rounded and
    clipped to the display range, with no-data pixels (lost lines, NaN) at 0."""
    if px.dtype != np.uint16:
        px = np.nan_to_num(px, nan=0.0, posinf=65535.0, neginf=0.0).clip(0, 65535).round().astype(np.uint16)
    return px


def encode_frame(frame: Frame, *, bits: int = 12) -> bytes:
    """One frame as the page receives it (see the module doc)."""
    px = display_pixels(frame.pixels)
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


def is_loopback(host: str) -> bool:
    """Whether serving on `host` keeps the view on this machine: 127.0.0.0/8,
    ::1 or localhost (a name that merely resolves to one is not taken)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, allow_remote: bool, *, what: str = "live view",
                 risk: str = "could drive the board") -> None:
    """ValueError, in one line, for a listen address beyond this machine
    that was not explicitly allowed (`what` is served there; anyone with its
    URL `risk`)."""
    if not is_loopback(host) and not allow_remote:
        raise ValueError(f"--listen {host} is not a loopback address (127.0.0.0/8, ::1, localhost): other machines "
                         f"could reach the {what}, and anyone with its URL {risk}; add "
                         "--allow-remote to open it knowingly")


def _is_wildcard(host: str) -> bool:
    try:
        return host == "" or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _netloc(name: str, port: int) -> str:
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def _split_host(value: str) -> tuple[str, int] | None:
    """A Host header (or an origin's host part) as (name, port): lowercased,
    an IPv6 address without its brackets, port 80 if none; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep:
            return None
    else:
        name = value.partition(":")[0]
        rest = value[len(name):]
    if rest == "":
        port = 80
    elif rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit():
        port = int(rest[1:])
    else:
        return None
    return (name, port) if name else None


def _split_origin(value: str) -> tuple[str, int] | None:
    """An Origin header's (name, port), as _split_host; None for anything
    but http://HOST[:PORT] (the page is plain HTTP; "null" is refused)."""
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme.lower() != "http" or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return _split_host(parts.netloc)


def _is_own_address(name: str) -> bool:
    """Whether `name` is an IP address of this machine: one a socket can be
    bound to (the wildcard is no one's address)."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if ip.is_unspecified or ip.is_multicast:
        return False
    with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(ip), 0))
        except OSError:
            return False
    return True


class _Guard:
    """ASGI middleware in front of every route: refuses (403, before any
    handler runs) a request without this launch's token, with another Host
    or Origin, or a command that is not JSON (see the module doc); puts the
    security headers on every HTTP response."""

    def __init__(self, app: ASGIApp, token: str, names: set[str], any_own_address: bool,
                 what: str = "live view") -> None:
        self.app = app
        self.what = what  # the page's name, in the refusals
        self.token = token.encode()
        self.names = names  # the Host names that are this view's
        self.any_own_address = any_own_address  # listening on every address: any of them too
        self.port: int | None = None  # known once the server listens; until then all is refused

    def _own(self, host: tuple[str, int] | None) -> bool:
        if host is None or host[1] != self.port:
            return False
        return host[0] in self.names or (self.any_own_address and _is_own_address(host[0]))

    def _refusal(self, scope: Scope, headers: dict[str, list[str]]) -> str | None:
        for name in ("host", "origin", TOKEN_HEADER, "content-type"):
            if len(headers.get(name, [])) > 1:
                return f"refused: more than one {name} header"
        host_text = headers.get("host", [""])[0]
        host = _split_host(host_text)
        if not self._own(host):
            return f"refused: Host {host_text!r} is not this {self.what}'s (a page of another site, DNS rebinding?)"
        # A browser names the page a request comes from: it must be this
        # view's own. It always does on a POST and a WebSocket; a GET of its
        # own page's resources may say nothing.
        safe = scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
        origin = headers.get("origin", [None])[0]
        if origin is None:
            if not safe:
                return (f"refused: no Origin header (commands and the WebSocket come from the {self.what}'s own "
                        "page)")
        elif _split_origin(origin) != host:
            return f"refused: a request from {origin!r}: only the {self.what}'s own page may use it"
        # A blank "token=" counts as a (wrong) token, not as none beside a header's.
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = headers.get(TOKEN_HEADER, []) + query.get("token", [])
        # compare_digest on bytes: on str it raises for anything not ASCII.
        if not given or not all(hmac.compare_digest(g.encode("utf-8", "replace"), self.token) for g in given):
            return "refused: missing or wrong token (open the URL pulseline printed, with its ?token=...)"
        if not safe and scope["type"] == "http":
            # Not even with the token: text/plain and forms are what a page
            # of another site can send without asking the browser first.
            media = headers.get("content-type", [""])[0].split(";")[0].strip().lower()
            if media != "application/json":
                return f"refused: commands are application/json only, not {media or 'without a content type'}"
        return None

    def _headers(self, host: tuple[str, int] | None) -> list[tuple[bytes, bytes]]:
        # The WebSocket's origin in the CSP only from a Host already checked:
        # never a header's text echoed into another header.
        ws = _netloc(*host) if host is not None and self._own(host) else "localhost"
        return [(b"content-security-policy", CSP.format(host=ws).encode()),
                *((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        host = _split_host(headers["host"][0]) if len(headers.get("host", [])) == 1 else None
        extra = self._headers(host)
        why = self._refusal(scope, headers)
        if why is None:
            if scope["type"] == "http":
                async def secured(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        ours = {k for k, _ in extra}
                        message["headers"] = [*(h for h in message.get("headers", []) if h[0].lower() not in ours),
                                              *extra]
                    await send(message)
                await self.app(scope, receive, secured)
            else:
                await self.app(scope, receive, send)
            return
        body = json.dumps({"ok": False, "error": why}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 403, "headers": head})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # the handshake (websocket.connect): answered, never accepted
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 403, "headers": head})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})


def page_html(page: Path, files: tuple[Path, ...], what: str) -> str:
    """A page as served, but for the token: `page`'s markup in PAGE_FRAME,
    with the styles among `files` in its head and the scripts after the
    markup, each in the order given."""
    styles = "".join(f'<link rel="stylesheet" href="/{f.name}?token=__TOKEN__">\n' for f in files if f.suffix == ".css")
    scripts = "".join(f'<script src="/{f.name}?token=__TOKEN__"></script>\n' for f in files if f.suffix == ".js")
    return PAGE_FRAME.format(what=html.escape(what), styles=styles, body=page.read_text(), scripts=scripts)


class PageServer(ABC):
    """One of pulseline's pages served on this machine, behind _Guard: at
    http://HOST:PORT/?token=TOKEN (`url`), the token made anew for each
    launch. Subclasses name themselves (`what`, `risk`: what anyone with the
    URL can do) and give their routes (`_routes`); this class serves them
    from a thread of its own (start_server, stop_server), says who can reach
    them (`reach`) and opens them in the browser (open_in_browser). `host`
    must be loopback unless `allow_remote`."""

    what = "page"
    risk = "can use it"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False) -> None:
        if not is_loopback(host) and not allow_remote:
            raise ValueError(f"host {host!r} is not loopback: allow_remote=True opens the {self.what} to other "
                             "machines")
        self.allow_remote = allow_remote
        self.token = secrets.token_urlsafe(32)  # this launch's; in `url`, asked of every request
        self._guard: _Guard | None = None
        self._browser_dir: str | None = None  # the private redirect file open_in_browser wrote
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._host, self._port = host, port
        self.port = 0  # the one it listens on, once started
        self.url = ""
        self.error: str | None = None

    @abstractmethod
    def _routes(self) -> list[BaseRoute]:
        """The page's own routes (its page, scripts and API): each kind of page says them."""

    def _page_routes(self, page: Path, *files: Path) -> list[BaseRoute]:
        """`page` at / (its markup in PAGE_FRAME, which links `files`' styles
        and scripts in their order, the token put in where it says
        __TOKEN__), and each of `files` (scripts, styles) at /NAME."""
        async def serve_page(request: Request) -> HTMLResponse:
            return HTMLResponse(page_html(page, files, self.what).replace("__TOKEN__", self.token))

        def serve_file(path: Path) -> Callable[[Request], Any]:
            media_type = {".js": "text/javascript", ".css": "text/css"}[path.suffix]

            async def serve(request: Request) -> Response:
                return Response(path.read_text(), media_type=media_type)
            return serve

        return [Route("/", serve_page), *(Route(f"/{f.name}", serve_file(f)) for f in files)]

    def _app(self) -> _Guard:
        # (The web stack is imported with this module, not here: a simulated
        # board served from the same process must not wait on a long import.)
        app = Starlette(routes=self._routes())
        names = {*LOOPBACK_NAMES, self._host.lower().strip("[]")}
        if self.allow_remote:  # its names too, as other machines may call it
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self._guard = _Guard(app, self.token, names, any_own_address=self.allow_remote and _is_wildcard(self._host),
                             what=self.what)
        return self._guard

    def start_server(self) -> None:
        """Serve (OSError if it cannot listen); `port` and `url` are known after."""
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

        self._thread = threading.Thread(target=run, name=f"{self.what.replace(' ', '-')}-server", daemon=True)
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
        assert self._guard is not None
        self._guard.port = self.port = port
        # Every address includes loopback: this machine's browser goes there.
        shown = "localhost" if host in ("127.0.0.1", "::1") or _is_wildcard(host) else host
        self.url = f"http://{_netloc(shown, port)}/?token={self.token}"

    def stop_server(self) -> None:
        """Stop serving, and remove the browser's redirect file."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._browser_dir is not None:
            shutil.rmtree(self._browser_dir, ignore_errors=True)
            self._browser_dir = None

    def reach(self) -> str:
        """Who can reach the page, in one line, when it listens beyond this
        machine ("" when it does not)."""
        if is_loopback(self._host):
            return ""
        where = (f"this machine ({socket.gethostname()}) on port {self.port}" if _is_wildcard(self._host)
                 else _netloc(self._host.strip("[]"), self.port))
        return f"the {self.what} is open to every machine that can reach {where}, and anyone with its URL {self.risk}"

    def open_in_browser(self) -> None:
        """Open the page in this machine's browser, as Jupyter does: the
        browser is given a private file that redirects to `url`, not `url`
        itself, whose token would be on the browser's command line (other
        local users read it in /proc). stop_server() removes the file."""
        import webbrowser

        self._browser_dir = tempfile.mkdtemp(prefix="pulseline-view-")  # mode 0700
        path = Path(self._browser_dir) / "open.html"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(REDIRECT_PAGE.format(url=html.escape(self.url, quote=True), what=self.what))
        webbrowser.open(path.as_uri())


class LiveView(PageServer):
    """Serve one board's live view at http://HOST:PORT/?token=TOKEN (`url`).

    `session`: an open Session on the board, shown until it is lost.
    `connect`: instead, how to open one: a callable returning (session,
    controls), raising SessionError while there is no board; the view tries
    every RETRY_S and again after losing the board. `controls`: an object
    with set_input(name, value) (a simulated board's hardware), or None.
    With pump=False the caller feeds frames (show_frame) and the view only
    polls status and reads events: used by `capture --view`, whose capture
    loop owns the frames. `log`: told each change of link in one line.
    `host` must be loopback unless `allow_remote` (then `reach` says who
    can reach it)."""

    what = "live view"
    risk = "can drive the board (arm it, hold the exposure switch)"

    def __init__(self, session: Any = None, *, connect: Callable[[], tuple[Any, Any]] | None = None,
                 where: str = "", host: str = "127.0.0.1", port: int = 0, controls: Any = None,
                 pump: bool = True, recording: bool = False, log: Callable[[str], None] | None = None,
                 allow_remote: bool = False) -> None:
        if (session is None) == (connect is None):
            raise ValueError("a live view needs a session or a way to connect, not both")
        super().__init__(host=host, port=port, allow_remote=allow_remote)
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
        self._pump: threading.Thread | None = None
        self.link_ok: bool | None = None  # None: not yet known
        self._link_error = ""

    # -- the web side -----------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
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
            from ..link.session import SessionError

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

        return [*self._page_routes(PAGE, DISPLAY_SCRIPT, SCRIPT, STYLE), WebSocketRoute("/ws", ws),
                Route("/api/control", control, methods=["POST"]), Route("/api/command", command, methods=["POST"]),
                Route("/api/state", state)]

    def start(self) -> LiveView:
        self.start_server()
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
                # The body's own "event" (an irradiation event's number) is
                # kept as event_number: "event" names the kind, and "type"
                # and "event" come last so no body can overwrite them.
                body = {("event_number" if k == "event" else k): v for k, v in ev.body.items()}
                self.text({**body, "t_us": ev.t_us, "type": "event", "event": ev.name})
                if ev.name == "dose":
                    self.text({**ev.body, "type": "dose"})
                elif ev.name == "fault":
                    self.text({"type": "fault", "name": ev.body.get("name"), "message": ev.body.get("message")})
                elif ev.name == "state":
                    self.text({**ev.body, "type": "state"})
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
        self.stop_server()
        if self._connect is not None and self.session is not None and not self._pump_alive():
            self.session.close()  # one the view opened itself

    def _pump_alive(self) -> bool:
        return self._pump is not None and self._pump.is_alive()

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
