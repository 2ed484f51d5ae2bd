"""The live view's server against a simulated board, through a real
WebSocket: frames as they come, the displays, the last-image-hold marker
around a release and a fresh press, the simulated hardware's controls, and a
slow tab that loses display frames without costing anyone else one."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from pulseline.link.session import Session, wait_for_firmware
from pulseline.sim.board import SimBoard
from pulseline.targets.simboard import deploy_files as _deploy
from pulseline.ui.view import LiveView, encode_frame

pytestmark = pytest.mark.micropython


def token_of(url: str) -> str:
    """The view's per-launch token, from the URL it prints (?token=...)."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]


def origin_of(url: str) -> str:
    """The view's own origin, as its page's requests name it."""
    return f"http://{urllib.parse.urlsplit(url).netloc}"


class Tab:
    """A browser tab's side of the WebSocket: everything it receives, and
    `shown` after each frame, as the page does."""

    def __init__(self, url: str, *, reads: bool = True) -> None:
        # As the page opens it: the token in the query, its own origin.
        ws_url = f"ws://{urllib.parse.urlsplit(url).netloc}/ws?token={token_of(url)}"
        if reads:
            self.ws = connect(ws_url, origin=origin_of(url), max_size=None, legacy=True)
        else:
            # A tab that never draws: a small receive window and no queue, so
            # what the server sends backs up at once.
            parts = urllib.parse.urlsplit(url)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((parts.hostname, parts.port))
            self.ws = connect(ws_url, sock=sock, origin=origin_of(url), max_size=None, max_queue=1, legacy=True)
        self.texts: list[dict] = []
        self.frames: list[tuple[dict, np.ndarray]] = []
        self.log: list[str] = []  # "frame" and text types, in order
        if reads:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for msg in self.ws:
                if isinstance(msg, bytes):
                    n = struct.unpack_from("<I", msg)[0]
                    head = json.loads(msg[4:4 + n])
                    px = np.frombuffer(msg[4 + n:], "<u2").reshape(head["lines"], head["pixels"])
                    self.frames.append((head, px))
                    self.log.append("frame")
                    self.ws.send(json.dumps({"type": "shown", "frame_id": head["frame_id"]}))
                else:
                    m = json.loads(msg)
                    self.texts.append(m)
                    self.log.append(m["type"] + (":" + str(m.get("on")) if m["type"] == "hold" else ""))
        except Exception:
            pass

    def wait(self, what, timeout_s: float = 10.0):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            got = what()
            if got:
                return got
            time.sleep(0.02)
        raise AssertionError(f"not within {timeout_s} s; last messages: {self.log[-12:]} {self.texts[-8:]}")


def post(url: str, body: dict, path: str = "api/control") -> dict:
    """A POST as the page sends it: JSON, the token in a header, from its own origin."""
    req = urllib.request.Request(f"{origin_of(url)}/{path}", json.dumps(body).encode(),
                                 {"content-type": "application/json", "x-pulseline-token": token_of(url),
                                  "origin": origin_of(url)})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"status": e.code, **json.loads(e.read())}


@pytest.fixture
def live(tmp_path: Path):
    fs = tmp_path / "fs"
    _deploy(fs, None)
    with SimBoard(fs, state_dir=tmp_path / "st", seed=3) as board:
        wait_for_firmware(board.pty_path, timeout_s=60)
        with Session(board.pty_path, clock=board.clock) as s:
            s.configure(pixels_per_line=64, lines_per_frame=64, pulses_per_s=15.0)
            s.arm()
            with LiveView(s, controls=board) as view:
                yield view, board


def test_a_press_shows_live_frames_and_displays_then_the_last_image_held(live):
    view, board = live
    assert view.url.startswith("http://localhost:")
    tab = Tab(view.url)
    tab.wait(lambda: any(m["type"] == "board" and m["controls"] for m in tab.texts))
    assert post(view.url, {"name": "switch", "value": True})["ok"]  # the page's switch button
    tab.wait(lambda: len(tab.frames) >= 5)
    # Frames carry the detector's pixels: the plant's own for that pulse.
    head, px = tab.frames[2]
    truth = board.plant.pulses[head["pulse_id"] - 1]  # the firmware counts pulses from 1, the plant records each
    assert head["complete"] and px.shape == (64, 64)
    assert np.array_equal(px, truth.frame.raw_adu)
    dose = tab.wait(lambda: [m for m in tab.texts if m["type"] == "dose" and m["rate_mgy_min"] > 0])
    assert dose[-1]["kv"] > 0 and dose[-1]["ma"] > 0 and dose[-1]["kerma_mgy"] > 0
    post(view.url, {"name": "switch", "value": False})
    tab.wait(lambda: "hold:True" in tab.log)
    n_held = len(tab.frames)
    time.sleep(0.3)
    assert len(tab.frames) - n_held <= 1  # at most the frame in flight at release
    post(view.url, {"name": "switch", "value": True})

    def live_again() -> list[str] | None:
        after = tab.log[tab.log.index("hold:True"):]
        return after if "hold:False" in after and "frame" in after[after.index("hold:False"):] else None

    after = tab.wait(live_again)
    # The marker is lifted before the first live frame of the new press:
    # before it, at most the frame that was in flight at the release.
    assert after[:after.index("hold:False")].count("frame") <= 1
    post(view.url, {"name": "switch", "value": False})
    status = tab.wait(lambda: [m for m in tab.texts if m["type"] == "status" and m["pulses"] > 0])
    assert status[-1]["kerma_mgy"] > 0
    # Each press is an irradiation event: told as one, with its own number beside the kind.
    irradiations = tab.wait(lambda: [m for m in tab.texts if m["type"] == "event" and m["event"] == "irradiation"])
    assert irradiations[0]["event_number"] >= 1 and irradiations[0]["pulses"] > 0


def test_the_status_refreshes_every_second_and_a_late_tab_gets_the_picture(live):
    view, _ = live
    first = Tab(view.url)
    first.wait(lambda: len([m for m in first.texts if m["type"] == "status"]) >= 3, timeout_s=6)
    late = Tab(view.url)
    late.wait(lambda: {"board", "status"} <= {m["type"] for m in late.texts})
    assert late.wait(lambda: [m for m in late.texts if m["type"] == "tabs" and m["count"] == 2])


def test_a_slow_tab_loses_display_frames_and_no_one_else_does(live):
    view, _ = live
    fast = Tab(view.url)
    slow = Tab(view.url, reads=False)  # a tab that never draws: its socket fills
    post(view.url, {"name": "switch", "value": True})
    fast.wait(lambda: len(fast.frames) >= 40, timeout_s=20)
    post(view.url, {"name": "switch", "value": False})
    state = state_of(view.url)
    tabs = state["tabs"]
    assert len(tabs) == 2
    assert any(t["dropped"] > 0 for t in tabs)  # the slow one
    assert len(fast.frames) >= state["frames_in"] - 2  # the fast one saw them all (bar the one in flight)
    slow.ws.close()


def test_controls_are_checked_and_refused_without_a_simulated_board(live, tmp_path):
    view, _ = live
    assert post(view.url, {"name": "self_destruct", "value": True})["status"] == 400
    assert post(view.url, {"value": True})["status"] == 400
    with LiveView(view.session, controls=None) as other:
        assert post(other.url, {"name": "switch", "value": True})["status"] == 409


def test_encode_frame_clips_corrected_frames_to_the_display_range():
    from pulseline.link.frames import Frame

    px = np.array([[-5.0, np.nan], [70000.0, 1234.4]], np.float32)
    f = Frame(7, px, np.ones(2, bool), "trailer", None, 3, 99, 0.0, 0.0, 0.0, 0.0)
    msg = encode_frame(f)
    n = struct.unpack_from("<I", msg)[0]
    assert json.loads(msg[4:4 + n])["frame_id"] == 7
    assert np.frombuffer(msg[4 + n:], "<u2").tolist() == [0, 0, 65535, 1234]


@contextlib.contextmanager
def deployed_board(tmp_path: Path, name: str):
    """A running simulated board with the firmware on it, in tmp_path's
    state directory (where the CLI run there finds it by name)."""
    fs = tmp_path / "fs"
    _deploy(fs, None)
    with SimBoard(fs, state_dir=tmp_path / ".pulseline", name=name) as board:
        wait_for_firmware(board.pty_path, timeout_s=60)
        yield board


def pulseline_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pulseline", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_view_command_serves_the_page_and_stops_on_ctrl_c(tmp_path):
    import signal

    with deployed_board(tmp_path, "bench") as board:
        p = pulseline_cli("view", "--port", board.pty_path, "--no-browser", "--json", cwd=tmp_path)
        try:
            url = json.loads(p.stdout.readline())["url"]
            assert url.startswith("http://localhost:")
            with urllib.request.urlopen(url, timeout=5) as r:
                assert "pulseline live view" in r.read().decode()
            # The board's pty belongs to a running simulated board: its hardware is on the page.
            end = time.monotonic() + 30
            while not state_of(url).get("link", {}).get("ok") and time.monotonic() < end:
                time.sleep(0.05)
            assert state_of(url)["board"]["controls"]
            assert post(url, {"name": "door_closed", "value": False})["ok"]
            assert board.plant_status()["door_closed"] is False
        finally:
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=10)
        assert p.returncode == 0, err
    res = subprocess.run([sys.executable, "-m", "pulseline", "view", "--port", "nothing://here", "--no-browser"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1 and "nothing://" in res.stderr


def state_of(url: str) -> dict:
    with urllib.request.urlopen(f"{origin_of(url)}/api/state?token={token_of(url)}", timeout=5) as r:
        return json.loads(r.read())


def test_the_view_with_no_board_says_so_then_shows_the_board_when_it_comes_and_goes(tmp_path):
    """Opening the page before the board is there: the page says so, and the
    view shows the board when it answers; losing it is said, and it is shown
    again when it is back."""
    import signal

    fs = tmp_path / "fs"
    _deploy(fs, None)
    p = pulseline_cli("view", "--port", "sim:later", "--no-browser", "--json", cwd=tmp_path)
    try:
        url = json.loads(p.stdout.readline())["url"]
        tab = Tab(url)
        waiting = tab.wait(lambda: [m for m in tab.texts if m["type"] == "link" and not m["ok"]])
        assert "no board" in waiting[0]["error"] and "later" in waiting[0]["error"]
        assert tab.wait(lambda: [m for m in tab.texts if m["type"] == "board" and m["board"] is None])
        assert post(url, {"command": "arm"}, "api/command")["status"] == 409
        with SimBoard(fs, state_dir=tmp_path / ".pulseline", name="later", seed=2) as board:
            tab.wait(lambda: [m for m in tab.texts if m["type"] == "board" and m["board"]], timeout_s=60)
            assert tab.wait(lambda: tab.texts[-1:] and any(m["type"] == "link" and m["ok"] for m in tab.texts))
            assert post(url, {"command": "arm"}, "api/command")["ok"]
            assert post(url, {"name": "switch", "value": True})["ok"]  # its hardware is on the page too
            tab.wait(lambda: tab.frames, timeout_s=20)
            assert board.plant_status()["switch"] is True
            n = len(tab.texts)
        # Gone mid-exposure: said, and waited for.
        lost = tab.wait(lambda: [m for m in tab.texts[n:] if m["type"] == "link" and not m["ok"]])
        assert "board lost" in lost[0]["error"] and "waiting for the board" in lost[0]["error"]
        with SimBoard(fs, state_dir=tmp_path / ".pulseline", name="later", seed=2):
            tab.wait(lambda: [m for m in tab.texts[n:] if m["type"] == "link" and m["ok"]], timeout_s=60)
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    # The terminal was told each change, one line each.
    assert "no board" in err and "showing the board on sim:later" in err and "board lost" in err, err


def test_capture_view_shows_the_capture_marked_as_recording(tmp_path):
    with deployed_board(tmp_path, "cap") as board:
        p = pulseline_cli("capture", "--port", board.pty_path, "--view", "--no-browser", "--no-calibration",
                          "--frames", "16", "-o", str(tmp_path / "exam"), "--json", cwd=tmp_path)
        line = p.stderr.readline()
        assert "live view at http://localhost:" in line, line
        tab = Tab(line.split(" at ")[-1].strip())
        tab.wait(lambda: [m for m in tab.texts if m["type"] == "board" and m["recording"]])
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    summary = json.loads(out)
    # 16 asked for; a pulse that fired before the release landed is kept too (it irradiated).
    assert summary["frames"] >= 16
    # The page saw the capture's frames as they came (those after it connected), in order,
    # and what it showed is what the exam holds.
    import tifffile

    ids = [h["frame_id"] for h, _ in tab.frames]
    assert len(ids) >= 4 and ids == sorted(set(ids)), ids
    saved = tifffile.imread(tmp_path / "exam" / "frames.tif")
    assert saved.shape[0] == summary["frames"]
    for _, px in tab.frames:
        assert any(np.array_equal(px, page) for page in saved)


def test_the_console_buttons_arm_and_disarm_and_say_why_a_command_is_refused(live):
    view, board = live
    assert post(view.url, {"command": "disarm"}, "api/command") == {"ok": True, "answer": {"state": "IDLE"}}
    assert post(view.url, {"command": "arm"}, "api/command")["answer"]["state"] == "READY"
    board.set_input("door_closed", False)
    refused = post(view.url, {"command": "reboot"}, "api/command")
    assert refused["status"] == 400 and "not a command of the page" in refused["error"]
    assert post(view.url, {"command": "disarm"}, "api/command")["ok"]


def test_losing_the_board_mid_exposure_is_said_and_the_last_image_stays(tmp_path):
    fs = tmp_path / "fs"
    _deploy(fs, None)
    board = SimBoard(fs, state_dir=tmp_path / "st", seed=5).start()
    try:
        wait_for_firmware(board.pty_path, timeout_s=60)
        with Session(board.pty_path, clock=board.clock) as s:
            s.configure(pixels_per_line=64, lines_per_frame=64)
            s.arm()
            with LiveView(s, controls=board) as view:
                tab = Tab(view.url)
                board.press()
                tab.wait(lambda: len(tab.frames) >= 3)
                board.stop()  # the board goes away mid-exposure: its pty closes
                lost = tab.wait(lambda: [m for m in tab.texts if m["type"] == "link" and not m["ok"]])
                assert "link lost" in lost[0]["error"]
                # The page is still served, and a tab that opens now is told at once.
                late = Tab(view.url)
                late.wait(lambda: [m for m in late.texts if m["type"] == "link" and not m["ok"]])
                assert late.wait(lambda: late.frames)  # with the last image
    finally:
        board.stop()
