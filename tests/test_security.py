"""Security (docs/security.md, SPEC 2.8): who may drive a board.

Sections:

- TestLiveViewRefusesOthers: `pulseline view` (and `capture --view`) against
  a real LiveView on loopback, in front of a real simulated board. Each
  attack a web page or another local program could make (a cross-site
  "simple request", a forged Origin, DNS rebinding, no or a wrong token, a
  foreign WebSocket) is refused with 403 (a WebSocket: before it is
  accepted), and nothing reaches the board or its plant: no command, no
  input, no pulse. The page's own way (token, JSON, own Origin) still works.
- TestLiveViewCommandLine: the CLI keeps the view on loopback unless told,
  and opens the browser without putting the token on a command line.
- A simulated board belongs to the user who started it, and there is one
  board per filesystem (the functions after the view's classes). Another
  uid gets nothing from any of its endpoints: the pty (owner-only),
  the `socket://` port, the control channel and the plant server (loopback
  TCP, each connection's owner looked up and another uid's closed unread).
  The attacker here is a real process of `nobody`, run with the system's
  python (the venv lives where `nobody` cannot read) from a script given on
  its command line; it needs root to become `nobody`, so those tests skip
  without it. The same user's unmodified tools keep working.
"""

from __future__ import annotations

import errno
import html
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pulseline.link.session import Session, wait_for_firmware
from pulseline.plant import Plant, PlantConfig, Timeline
from pulseline.sim.board import BoardInUse, SimBoard, SimControl, running_boards
from pulseline.sim.plantserver import PlantServer, hal_sim
from pulseline.targets.simboard import deploy_files as _deploy
from pulseline.ui.view import LiveView

# -- the live view -----------------------------------------------------------------------------

EVIL = "http://evil.example"
SECURITY_HEADERS = {
    "content-security-policy": None,  # checked on its own: it names the view's own ws:// origin
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
# What the two command endpoints would do if an attack got through: disarm
# the (armed) board, hold the exposure switch of its plant.
COMMANDS = {"api/command": {"command": "disarm"}, "api/control": {"name": "switch", "value": True}}


class CommandRecorder:
    """The board's real Session, handed to the view, with each command the
    view sends through it written down (status polls go past it: the view
    calls those on the session itself)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.sent: list[str] = []

    def command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(name)
        return self._session.command(name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@dataclass
class Rig:
    view: LiveView
    board: SimBoard
    session: Session
    commands: CommandRecorder

    @property
    def own(self) -> str:
        """The view's own host:port, as its page's requests name it."""
        return urllib.parse.urlsplit(self.view.url).netloc

    @property
    def token(self) -> str:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.view.url).query)["token"][0]

    def picture(self) -> dict[str, Any]:
        """What an attack that got through would change: the board's state,
        the commands sent to it, the plant's inputs (every one set is an
        entry of its timeline) and its pulses, and the tabs being served."""
        plant = self.board.plant_status()
        return {"state": self.session.status()["state"], "commands": list(self.commands.sent),
                "inputs_set": len(self.board.plant.timeline), "pulses": plant["pulses"], "switch": plant["switch"],
                "tabs": len(self.view.hub.clients)}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One armed simulated board behind one live view, for the whole class:
    an attack that got through would fire it."""
    tmp = tmp_path_factory.mktemp("view-security")
    _deploy(tmp / "fs", None)
    with SimBoard(tmp / "fs", state_dir=tmp / "st", seed=4) as board:
        wait_for_firmware(board.pty_path, timeout_s=60)
        with Session(board.pty_path, clock=board.clock) as s:
            s.configure(pixels_per_line=64, lines_per_frame=64, pulses_per_s=15.0)
            s.arm()
            recorder = CommandRecorder(s)
            with LiveView(recorder, controls=board) as view:
                yield Rig(view, board, s, recorder)


def ask(rig: Rig, method: str, path: str, headers: dict[str, str], body: bytes | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request to the view, with exactly these headers (Host
    included: http.client adds none when it is given)."""
    c = http.client.HTTPConnection("127.0.0.1", rig.view.port, timeout=10)
    try:
        c.request(method, path, body, {"Host": rig.own, **headers})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def as_page(rig: Rig, **changes: str | None) -> dict[str, str]:
    """The headers of the page's own command request, with some changed
    (None: left out)."""
    headers = {"Host": rig.own, "Origin": f"http://{rig.own}", "Content-Type": "application/json",
               "X-Pulseline-Token": rig.token}
    for name, value in changes.items():
        key = name.replace("_", "-").title()
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


def refused(status: int, body: bytes) -> str:
    assert status == 403, (status, body)
    error = json.loads(body)["error"]
    assert error.startswith("refused: ") and "\n" not in error
    return str(error)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, f"not within {timeout_s} s: {what}"
        time.sleep(0.02)


def open_tab(rig: Rig, *, host: str | None = None, origin: str | None = "own", token: str | None = "own") -> Any:
    """A WebSocket to the view as a tab opens it, or with a changed Host,
    Origin or token (None: left out)."""
    host = host or rig.own
    query = "" if token is None else "?token=" + urllib.parse.quote(rig.token if token == "own" else token)
    sock = socket.create_connection(("127.0.0.1", rig.view.port), timeout=10)
    return connect(f"ws://{host}/ws{query}", sock=sock, origin=f"http://{rig.own}" if origin == "own" else origin,
                   proxy=None, open_timeout=10)


@pytest.mark.micropython
class TestLiveViewRefusesOthers:
    """The attacks reproduced against the view before it had a token and
    its checks: each now refused, with the board and plant untouched."""

    @pytest.mark.parametrize("path", COMMANDS)
    def test_a_cross_site_simple_request_without_the_token_reaches_nothing(self, rig, path):
        # What any web page can send without the browser asking first.
        before = rig.picture()
        status, _, body = ask(rig, "POST", "/" + path, {"Origin": EVIL, "Content-Type": "text/plain"},
                              json.dumps(COMMANDS[path]).encode())
        refused(status, body)
        assert rig.picture() == before

    @pytest.mark.parametrize("path", COMMANDS)
    @pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost:1", "https://{own}", "http://{own}.evil"])
    def test_a_command_from_another_origin_is_refused_even_with_the_token(self, rig, path, origin):
        # Another site, a sandboxed frame or file ("null"), another local
        # server's page, the same host over another scheme or a look-alike.
        before = rig.picture()
        status, _, body = ask(rig, "POST", "/" + path, as_page(rig, origin=origin.format(own=rig.own)),
                              json.dumps(COMMANDS[path]).encode())
        assert "only the live view's own page" in refused(status, body)
        assert rig.picture() == before

    @pytest.mark.parametrize("path", COMMANDS)
    def test_a_command_that_does_not_say_where_it_comes_from_is_refused(self, rig, path):
        before = rig.picture()
        status, _, body = ask(rig, "POST", "/" + path, as_page(rig, origin=None), json.dumps(COMMANDS[path]).encode())
        assert "no Origin" in refused(status, body)
        assert rig.picture() == before

    @pytest.mark.parametrize("path", COMMANDS)
    def test_dns_rebinding_another_host_is_refused(self, rig, path):
        # A page of evil.example whose name now points at 127.0.0.1: to the
        # browser the view is evil.example's own, Origin and all.
        evil_host = f"evil.example:{rig.view.port}"
        before = rig.picture()
        status, _, body = ask(rig, "POST", "/" + path, as_page(rig, host=evil_host, origin=f"http://{evil_host}"),
                              json.dumps(COMMANDS[path]).encode())
        assert "Host" in refused(status, body)
        status, _, body = ask(rig, "GET", f"/?token={rig.token}", {"Host": evil_host})
        refused(status, body)
        assert rig.picture() == before

    @pytest.mark.parametrize("path", COMMANDS)
    @pytest.mark.parametrize("token", [None, "", "x" * 43, "é" * 43], ids=["none", "blank", "wrong", "not-ascii"])
    def test_a_command_without_the_right_token_is_refused(self, rig, path, token):
        before = rig.picture()
        wrong = None if token is None else token.encode("utf-8").decode("latin-1")  # a header's bytes as sent
        status, _, body = ask(rig, "POST", "/" + path, as_page(rig, x_pulseline_token=wrong),
                              json.dumps(COMMANDS[path]).encode())
        assert "token" in refused(status, body)
        # Nor in the query, nor a wrong one beside the right one.
        status, _, body = ask(rig, "POST", f"/{path}?token={urllib.parse.quote(token or '')}",
                              as_page(rig), json.dumps(COMMANDS[path]).encode())
        refused(status, body)
        assert rig.picture() == before

    @pytest.mark.parametrize("path", COMMANDS)
    @pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8",
                                              "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                                              None])
    def test_a_command_that_is_not_json_is_refused_even_with_the_token_and_origin(self, rig, path, content_type):
        before = rig.picture()
        status, _, body = ask(rig, "POST", "/" + path, as_page(rig, content_type=content_type),
                              json.dumps(COMMANDS[path]).encode())
        assert "application/json only" in refused(status, body)
        assert rig.picture() == before

    @pytest.mark.parametrize("path", ["/", "/view_page.js", "/view_page.css", "/api/state", "/nothing"])
    def test_nothing_is_served_without_the_token(self, rig, path):
        # /api/state would tell the board's serial numbers and dose.
        for query in ("", "?token=", "?token=" + "x" * 43):
            status, _, body = ask(rig, "GET", path + query, {})
            assert "token" in refused(status, body)
            assert b"serial" not in body
        # With the token, but asked for by another site's page.
        status, _, body = ask(rig, "GET", f"{path}?token={rig.token}", {"Origin": EVIL})
        refused(status, body)

    def test_a_websocket_from_another_origin_or_without_one_is_refused_before_it_is_accepted(self, rig):
        before = rig.picture()
        for origin in (EVIL, "null", f"http://localhost:{rig.view.port + 1}", None):
            with pytest.raises(InvalidStatus) as refusal:
                open_tab(rig, origin=origin)
            assert refusal.value.response.status_code == 403
            # The refusal carries the same headers as every response.
            assert refusal.value.response.headers["X-Frame-Options"] == "DENY"
        assert rig.picture() == before

    @pytest.mark.parametrize("token", [None, "", "x" * 43, "é"], ids=["none", "blank", "wrong", "not-ascii"])
    def test_a_websocket_without_the_right_token_is_refused(self, rig, token):
        before = rig.picture()
        with pytest.raises(InvalidStatus) as refusal:
            open_tab(rig, token=token)
        assert refusal.value.response.status_code == 403
        assert rig.picture() == before

    def test_a_websocket_to_a_rebound_name_is_refused(self, rig):
        evil_host = f"evil.example:{rig.view.port}"
        before = rig.picture()
        with pytest.raises(InvalidStatus) as refusal:
            open_tab(rig, host=evil_host, origin=f"http://{evil_host}")
        assert refusal.value.response.status_code == 403
        assert rig.picture() == before

    def test_every_response_forbids_framing_and_inline_script(self, rig):
        own = {"Origin": f"http://{rig.own}"}
        responses = [
            ask(rig, "GET", f"/?token={rig.token}", {}),
            ask(rig, "GET", f"/view_page.js?token={rig.token}", {}),
            ask(rig, "GET", f"/view_page.css?token={rig.token}", {}),
            ask(rig, "GET", f"/api/state?token={rig.token}", {}),
            ask(rig, "GET", f"/nothing?token={rig.token}", {}),  # 404
            ask(rig, "GET", f"/api/command?token={rig.token}", {}),  # 405: only POST
            ask(rig, "POST", "/api/command", as_page(rig), b'{"command": "self_destruct"}'),  # 400
            ask(rig, "GET", "/", {}),  # 403
            ask(rig, "GET", f"/?token={rig.token}", {"Host": "evil.example"}),  # 403
            ask(rig, "POST", "/api/control", {**own, "Content-Type": "text/plain"}, b"{}"),  # 403
        ]
        assert [status for status, _, _ in responses] == [200, 200, 200, 200, 404, 405, 400, 403, 403, 403]
        for status, headers, _ in responses:
            for name, value in SECURITY_HEADERS.items():
                assert name in headers, (status, name)
                if value is not None:
                    assert headers[name] == value, (status, name)
            csp = [d.strip() for d in headers["content-security-policy"].split(";")]
            assert {"default-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"} <= set(csp)
            assert "unsafe-inline" not in headers["content-security-policy"]
        # The page's script and style are files of their own (no inline
        # one would run under that policy), served as what they are.
        page = responses[0][2].decode()
        assert "<style" not in page and "style=" not in page
        assert "<script>" not in page and f'src="/view_page.js?token={rig.token}"' in page
        assert responses[1][1]["content-type"].startswith("text/javascript")
        assert responses[2][1]["content-type"].startswith("text/css")

    def test_the_page_s_own_requests_still_work(self, rig):
        """The good path: the token, JSON, the view's own Origin (localhost or
        127.0.0.1), and a tab over the WebSocket."""
        status, _, page = ask(rig, "GET", f"/?token={rig.token}", {})
        assert status == 200 and f'<meta name="pulseline-token" content="{rig.token}">' in page.decode()
        loopback = f"127.0.0.1:{rig.view.port}"
        status, _, _ = ask(rig, "GET", f"/?token={rig.token}", {"Host": loopback, "Origin": f"http://{loopback}"})
        assert status == 200

        n = len(rig.commands.sent)
        status, _, body = ask(rig, "POST", "/api/command", as_page(rig), b'{"command": "disarm"}')
        assert status == 200 and json.loads(body)["answer"]["state"] == "IDLE"
        assert rig.session.status()["state"] == "IDLE"
        # The token may come in the query too (as the page's own address has it).
        status, _, body = ask(rig, "POST", f"/api/command?token={rig.token}", as_page(rig, x_pulseline_token=None),
                              b'{"command": "arm"}')
        assert status == 200 and rig.session.status()["state"] == "READY"
        assert rig.commands.sent[n:] == ["disarm", "arm"]

        water = rig.board.plant_status()["water_cm"]
        status, _, body = ask(rig, "POST", "/api/control", as_page(rig, content_type="application/json; charset=utf-8"),
                              json.dumps({"name": "water_cm", "value": water + 5}).encode())
        assert status == 200 and json.loads(body)["ok"]
        assert rig.board.plant_status()["water_cm"] == water + 5
        ask(rig, "POST", "/api/control", as_page(rig), json.dumps({"name": "water_cm", "value": water}).encode())

        tabs = len(rig.view.hub.clients)
        with open_tab(rig) as tab:
            first = json.loads(tab.recv(timeout=10))
            assert first["type"] in ("board", "status", "link", "state", "dose", "hold", "fault", "tabs")
            wait_for(lambda: len(rig.view.hub.clients) == tabs + 1, "the tab served")
        wait_for(lambda: len(rig.view.hub.clients) == tabs, "the tab gone")  # as the other tests found it


# -- the view's command line -------------------------------------------------------------------


def pulseline(*args: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pulseline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)


def what_the_browser_saw(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """`pulseline ARGS --json` (a view or a review, in tmp_path) with a
    $BROWSER (how Python's webbrowser picks one) that writes down what it was
    given (argv) and what it found there (the file's path, mode, its
    directory's mode, its text); ended with Ctrl-C once the browser has
    opened, which must exit 0. The URL it printed, and what the browser saw."""
    seen = tmp_path / "browser-saw.json"
    browser = tmp_path / "browser"
    browser.write_text(f"""#!{sys.executable}
import json, os, sys, urllib.parse
path = urllib.parse.unquote(urllib.parse.urlsplit(sys.argv[1]).path)
json.dump({{"argv": sys.argv[1:], "path": path, "mode": os.stat(path).st_mode & 0o777,
           "dir_mode": os.stat(os.path.dirname(path)).st_mode & 0o777, "text": open(path).read()}},
          open({str(seen)!r}, "w"))
""")
    browser.chmod(0o700)
    p = subprocess.Popen([sys.executable, "-m", "pulseline", *args, "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env={**os.environ, "BROWSER": str(browser)})
    try:
        url = json.loads(p.stdout.readline())["url"]
        wait_for(lambda: seen.exists() and seen.stat().st_size > 0, "the browser opened")
        saw = json.loads(seen.read_text())
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=15)
    assert p.returncode == 0
    return url, saw


class TestLiveViewCommandLine:
    """Loopback unless told: a view beyond this machine is refused at once,
    before any board is opened, unless --allow-remote says so. The browser
    is opened on a private file, not on the tokened URL."""

    @pytest.mark.parametrize("listen", ["0.0.0.0", "::", "192.0.2.1", "example.org"])
    def test_view_beyond_loopback_without_allow_remote_is_refused_in_one_line(self, tmp_path, listen):
        res = pulseline("view", "--port", "sim:absent", "--listen", listen, "--no-browser", cwd=tmp_path)
        assert res.returncode != 0 and res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "--allow-remote" in lines[0] and listen in lines[0], res.stderr

    def test_capture_view_beyond_loopback_without_allow_remote_is_refused_before_anything(self, tmp_path):
        res = pulseline("capture", "--port", "sim:absent", "--frames", "4", "--view", "--listen", "0.0.0.0",
                        "--no-browser", "-o", str(tmp_path / "exam"), cwd=tmp_path)
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "--allow-remote" in lines[0], res.stderr
        assert not (tmp_path / "exam").exists()

    def test_a_library_view_beyond_loopback_needs_allow_remote(self):
        with pytest.raises(ValueError, match="allow_remote"):
            LiveView(connect=lambda: (None, None), host="0.0.0.0")

    def test_view_allowed_beyond_loopback_says_who_can_reach_it_and_still_checks_every_request(self, tmp_path):
        # No board (it waits for one): only the web side is looked at. Open
        # to the network for a moment, behind its token.
        p = subprocess.Popen([sys.executable, "-m", "pulseline", "view", "--port", "sim:absent", "--listen", "0.0.0.0",
                              "--allow-remote", "--no-browser", "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        err: list[str] = []  # its terminal lines; the one saying "no board" may come first
        threading.Thread(target=lambda: err.extend(iter(p.stderr.readline, "")), daemon=True).start()
        try:
            url = json.loads(p.stdout.readline())["url"]
            parts = urllib.parse.urlsplit(url)
            token = urllib.parse.parse_qs(parts.query)["token"][0]
            wait_for(lambda: any("every machine" in line for line in err), f"the warning (stderr: {err})")
            warning = next(line for line in err if "every machine" in line)
            assert "every machine that can reach" in warning and f"port {parts.port}" in warning, warning
            assert "anyone with its URL can drive the board" in warning

            def get(host: str, query: str) -> int:
                c = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
                try:
                    c.request("GET", "/" + query, headers={"Host": host})
                    return c.getresponse().status
                finally:
                    c.close()

            assert get(parts.netloc, f"?token={token}") == 200
            assert get(f"127.0.0.2:{parts.port}", f"?token={token}") == 200  # one of this machine's addresses
            assert get(f"{socket.gethostname()}:{parts.port}", f"?token={token}") == 200
            assert get(parts.netloc, "") == 403
            assert get(f"evil.example:{parts.port}", f"?token={token}") == 403
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=15)
        assert p.returncode == 0, err

    def test_the_browser_gets_a_private_file_not_the_token_and_the_file_goes_with_the_view(self, tmp_path):
        url, saw = what_the_browser_saw(tmp_path, "view", "--port", "sim:absent")
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        assert saw["argv"][0].startswith("file://") and token not in " ".join(saw["argv"])
        assert saw["mode"] == 0o600 and saw["dir_mode"] == 0o700
        assert html.escape(url) in saw["text"]  # it leads to the view
        assert not Path(saw["path"]).exists() and not Path(saw["path"]).parent.exists()


# -- a simulated board belongs to its user ------------------------------------------------

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
SETPRIV = shutil.which("setpriv")
SYSTEM_PYTHON = "/usr/bin/python3"


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


def _why_no_other_user() -> str:
    if os.geteuid() != 0:
        return "needs root, to run the attacker as nobody"
    if SETPRIV is None:
        return "needs setpriv (util-linux)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"needs {SYSTEM_PYTHON} (the attacker's interpreter: nobody cannot read the venv)"
    if _nobody() is None:
        return "needs a user named nobody"
    return ""


needs_other_user = pytest.mark.skipif(bool(_why_no_other_user()), reason=_why_no_other_user() or "-")

# Run as nobody. "pty PATH": open the board's serial device. "tcp HOST:PORT
# HEX": connect, send the bytes, and say what came back before the hang-up
# (or that none came within the wait: not closed).
ATTACKER = r"""
import json, os, socket, sys
what, target = sys.argv[1], sys.argv[2]
out = {}
if what == "pty":
    try:
        os.close(os.open(target, os.O_RDWR | os.O_NOCTTY))
        out["opened"] = True
    except OSError as exc:
        out["errno"] = exc.errno
else:
    host, _, port = target.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=float(sys.argv[4]))
    got = b""
    try:
        s.sendall(bytes.fromhex(sys.argv[3]))
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        out["closed"] = True
    except socket.timeout:
        out["closed"] = False
    except OSError:  # reset: closed with our bytes unread
        out["closed"] = True
    out["got"] = got.hex()
print(json.dumps(out))
"""


def as_nobody(what: str, target: str, payload: bytes = b"", wait_s: float = 30.0) -> dict[str, Any]:
    nobody = _nobody()
    assert nobody is not None and SETPRIV is not None
    res = subprocess.run([SETPRIV, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                          SYSTEM_PYTHON, "-I", "-c", ATTACKER, what, target, payload.hex(), str(wait_s)],
                         capture_output=True, text=True, timeout=wait_s + 60, cwd="/")
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def gone(pid: int) -> bool:
    """Dead (a zombie's files are closed: its locks are gone with them)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@needs_other_user
@pytest.mark.micropython
def test_another_user_reaches_none_of_the_boards_endpoints_and_its_owner_all(tmp_path):
    fs = tmp_path / "fs"
    _deploy(fs, None)
    state = tmp_path / ".pulseline"
    with SimBoard(fs, state_dir=state, seed=3) as board:
        wait_for_firmware(board.url, timeout_s=90)
        # Its state is the owner's alone: the directory, the files, the pty.
        assert mode(state) == 0o700
        assert mode(board.files.state_file) == 0o600 and mode(board.files.lock) == 0o600
        assert os.stat(board.pty_path).st_uid == os.getuid() and mode(board.pty_path) == 0o600
        to_board = board.link_counters()["to_board"]["bytes_in"]
        plant_connections = board.server.connections

        assert as_nobody("pty", board.pty_path) == {"errno": errno.EACCES}
        # Ctrl-C twice and Ctrl-B, mpremote's way to the friendly REPL (and
        # to os.system): closed before a byte was read or answered.
        took = as_nobody("tcp", board.url.removeprefix("socket://"), b"\r\x03\x03\x02")
        assert took == {"closed": True, "got": ""}
        for request in ({"op": "set", "name": "switch", "value": True}, {"op": "stop"}):
            took = as_nobody("tcp", board.control, json.dumps(request).encode() + b"\n")
            assert took == {"closed": True, "got": ""}, request
        # The plant server serves one board connection at a time, so another
        # connection waits unserved while the board's is open: not a byte.
        assert as_nobody("tcp", board.server.address, bytes([hal_sim.OP_HELLO]), wait_s=3)["got"] == ""

        # Nothing reached the board, its hardware or its control.
        assert board.link_counters()["to_board"]["bytes_in"] == to_board
        assert board.plant_status()["switch"] is False
        assert board.server.connections == plant_connections
        assert [k for _, k in board.resets] == []

        # The owner's tools: sessions on both ports (the firmware still
        # runs: no one took it to the REPL), the control channel, and last
        # (its Ctrl-C leaves the firmware for the REPL) unmodified mpremote.
        with Session(board.url) as s:
            assert s.status()["state"] == "IDLE"
        with Session(board.pty_path, clock=board.clock) as s:
            assert s.status()["state"] == "IDLE"
        ctl = SimControl(board.name, state)
        try:
            ctl.press()
            assert board.plant_status()["switch"] is True
            ctl.release()
        finally:
            ctl.close()
        res = subprocess.run([MPREMOTE, "connect", board.pty_path, "exec", "print(1 + 1)"], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0 and res.stdout.strip() == "2", res.stdout + res.stderr


@needs_other_user
@pytest.mark.micropython
def test_another_user_is_refused_by_the_plant_server_and_its_owner_served():
    with PlantServer(Plant(PlantConfig(seed=1), Timeline())) as server:
        assert as_nobody("tcp", server.address, bytes([hal_sim.OP_HELLO])) == {"closed": True, "got": ""}
        assert server.connections == 0
        host, _, port = server.address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=30) as own:
            own.sendall(bytes([hal_sim.OP_HELLO]) + bytes(8))  # (op, the board's time)
            answer = b""
            while len(answer) < 8:  # the plant's time, 8 bytes
                chunk = own.recv(8 - len(answer))
                assert chunk, "the plant server closed its owner's connection"
                answer += chunk
        assert server.connections == 1


# -- the owner of a loopback connection (pulseline.sim.peer) -----------------------------


def _hex(ip: str, port: int) -> str:
    """An endpoint as /proc/net/tcp shows it: the address's 32-bit words in host byte order."""
    raw = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    words = "".join(f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}" for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"


def _row(local: tuple[str, int], remote: tuple[str, int], uid: int, st: str = "01") -> str:
    return (f"   0: {_hex(*local)} {_hex(*remote)} {st} 00000000:00000000 00:00000000 00000000 {uid:5d}        0 "
            "12345 1 0000000000000000 20 4 30 10 -1")


@pytest.fixture
def loopback() -> Any:
    """An accepted loopback connection, its client end, and the two endpoints."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        yield conn, client, client.getsockname(), conn.getsockname()
        conn.close()
        client.close()


@pytest.mark.micropython
def test_the_owner_of_a_connection_is_read_from_the_kernels_table(loopback):
    from pulseline.sim import peer

    conn = loopback[0]
    assert peer.peer_uid(conn) == os.getuid() and peer.is_own(conn)
    # An IPv6 socket that reached our IPv4 listener (a v4-mapped address, in tcp6).
    with socket.create_server(("127.0.0.1", 0)) as server, socket.socket(socket.AF_INET6) as six:
        six.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
        mapped, _ = server.accept()
        with mapped:
            assert peer.peer_uid(mapped) == os.getuid()
    # A client gone before it was looked up (reset): not found, refused.
    with socket.create_server(("127.0.0.1", 0)) as server:
        gone = socket.create_connection(server.getsockname())
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        late, _ = server.accept()
        with late:
            assert peer.peer_uid(late) is None and not peer.is_own(late)


@pytest.mark.micropython
def test_the_owner_lookup_reads_the_right_row_and_fails_closed(loopback, tmp_path):
    from pulseline.sim import peer

    conn, _, theirs, ours = loopback
    table = tmp_path / "tcp"
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"

    def owner(*rows: str) -> int | None:
        table.write_text("\n".join([header, *rows]) + "\n")
        return peer.peer_uid(conn, (str(table),))

    other_port = (theirs[0], theirs[1] + 1 if theirs[1] < 65535 else theirs[1] - 1)
    assert owner(_row(theirs, ours, 1234)) == 1234
    # Our own end (the reverse row), another connection, a listener: not the peer.
    assert owner(_row(ours, theirs, 1234), _row(other_port, ours, 1234), _row(theirs, ("0.0.0.0", 0), 1234,
                                                                               "0A")) is None
    assert owner(_row(ours, theirs, 0), _row(theirs, ours, 1234)) == 1234
    # A closed connection's leftover shows uid 0: never taken for the owner.
    assert owner(_row(theirs, ours, 0, "06"), _row(theirs, ours, 1234)) == 1234
    assert owner(_row(theirs, ours, 0, "06")) is None
    # Two owners for one endpoint, a bad uid, garbage, no table: refused, not guessed.
    assert owner(_row(theirs, ours, 1234), _row(theirs, ours, 4321)) is None
    assert owner(_row(theirs, ours, 1234).replace(" 1234 ", " x ")) is None
    assert owner("garbage", "   0: zz:zz", "") is None
    assert peer.peer_uid(conn, (str(tmp_path / "missing"),)) is None
    # The v4-mapped spelling of the same endpoint, as tcp6 shows it.
    assert owner(_row((f"::ffff:{theirs[0]}", theirs[1]), (f"::ffff:{ours[0]}", ours[1]), 1234)) == 1234


# -- one board per filesystem, and per name ----------------------------------------------


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pulseline: error: "), res.stderr
    return lines[0]


@pytest.mark.micropython
def test_a_second_board_on_a_running_boards_filesystem_or_name_is_refused(tmp_path):
    fs, state = tmp_path / "fs", tmp_path / ".pulseline"
    (tmp_path / "fs-link").symlink_to(fs, target_is_directory=True)
    with SimBoard(fs, name="a", state_dir=state) as a:
        running = json.loads(a.files.state_file.read_text())
        pid = str(os.getpid())
        for kwargs in ({"name": "a"}, {"name": "b"}, {"name": "c", "fs_dir": tmp_path / "fs-link"},
                       {"name": "a", "fs_dir": tmp_path / "other"}, {"fs_dir": fs}):
            kwargs = {"fs_dir": fs, **kwargs}
            with pytest.raises(BoardInUse) as refused:
                SimBoard(state_dir=state, **kwargs).start()
            msg = str(refused.value)
            assert "\n" not in msg and "'a'" in msg and pid in msg, msg
            assert str(fs.resolve()) in msg or kwargs.get("name") == "a", msg
        # The running board is untouched: its state, its link, its lock.
        assert json.loads(a.files.state_file.read_text()) == running
        assert os.readlink(a.files.link) == a.pty_path
        assert [b["name"] for b in running_boards(state)] == ["a"]
        # A name picked for us steps past the taken one.
        with SimBoard(tmp_path / "auto", state_dir=state) as auto:
            assert auto.name == "ttyACM0"
            with SimBoard(state_dir=state) as next_one:
                assert next_one.name == "ttyACM1" and next_one.fs_dir == state / "ttyACM1.fs"
    # Stopped: the name and the filesystem are free again.
    with SimBoard(fs, name="b", state_dir=state):
        pass
    with SimBoard(fs, name="a", state_dir=state):
        assert [b["name"] for b in running_boards(state)] == ["a"]


@pytest.mark.micropython
def test_the_cli_refuses_a_second_board_in_one_line_and_leaves_the_first_alone(tmp_path):
    fs, state = tmp_path / "fs", tmp_path / ".pulseline"
    with SimBoard(fs, name="a", state_dir=state) as a:
        running = a.files.state_file.read_text()
        pid = str(os.getpid())
        refused = [
            pulseline("sim", "--detach", "--name", "a", cwd=tmp_path),
            pulseline("sim", "--detach", "--name", "b", "--fs", str(fs), cwd=tmp_path),
            pulseline("sim", "--name", "a", timeout_s=60, cwd=tmp_path),  # in the foreground too
            pulseline("sim", "--name", "b", "--fs", str(fs), timeout_s=60, cwd=tmp_path),
        ]
        for res in refused:
            line = one_line_error(res)
            assert "'a'" in line and pid in line and "already" in line, line
        assert str(fs.resolve()) in one_line_error(refused[0])
        # The board process itself (what --detach starts) says it the same way.
        res = subprocess.run([sys.executable, "-m", "pulseline.sim.board", "--name", "a", "--state-dir", str(state)],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and pid in res.stderr
        assert a.files.state_file.read_text() == running and not (state / "a.log").exists()
        listed = json.loads(pulseline("sim", "list", "--json", cwd=tmp_path).stdout)
        assert [(b["name"], b["pid"]) for b in listed] == [("a", os.getpid())]


@pytest.mark.micropython
def test_starting_one_name_at_once_from_many_processes_starts_one_board(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "pulseline", "sim", "--detach", "--name", "x", "--json"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    try:
        started = [json.loads(out) for code, out, _ in results if code == 0]
        assert len(started) == 1, results
        pid = started[0]["pid"]
        for code, _, err in results:
            if code != 0:
                assert code == 2 and len(err.strip().splitlines()) == 1 and "'x'" in err and str(pid) in err, err
        listed = json.loads(pulseline("sim", "list", "--json", cwd=tmp_path).stdout)
        assert [(b["name"], b["pid"]) for b in listed] == [("x", pid)]
    finally:
        res = pulseline("sim", "stop", "--all", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(pulseline("sim", "list", "--json", cwd=tmp_path).stdout) == []


@pytest.mark.micropython
def test_a_dead_boards_leftovers_do_not_block_or_list(tmp_path):
    state = tmp_path / ".pulseline"
    state.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # What a board killed with SIGKILL leaves: its state file, link and lock file.
    (state / "a.json").write_text(json.dumps({"name": "a", "pid": dead.pid, "fs": str(tmp_path / "fs")}))
    (state / "a.lock").touch()
    (state / "a").symlink_to("/dev/null")
    assert running_boards(state) == []
    # A live process's pid in a stale file (a pid reused): still not a board.
    (state / "a.json").write_text(json.dumps({"name": "a", "pid": os.getpid(), "fs": str(tmp_path / "fs")}))
    assert running_boards(state) == []
    assert json.loads(pulseline("sim", "list", "--json", cwd=tmp_path).stdout) == []
    with SimBoard(tmp_path / "fs", name="a", state_dir=state) as a:
        assert [b["pid"] for b in running_boards(state)] == [os.getpid()] and os.readlink(a.files.link) == a.pty_path


@pytest.mark.micropython
def test_a_killed_boards_name_and_filesystem_are_free_at_once(tmp_path):
    res = pulseline("sim", "--detach", "--name", "k", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pid = json.loads(res.stdout)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), f"process {pid} gone", timeout_s=30)
    res = pulseline("sim", "--detach", "--name", "k", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pid"] != pid
    assert pulseline("sim", "stop", "--name", "k", cwd=tmp_path).returncode == 0
    assert json.loads(pulseline("sim", "list", "--json", cwd=tmp_path).stdout) == []
