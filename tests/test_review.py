"""`pulseline review` (and `view EXAM_DIR`): the review station's server,
without a browser (hil_tests/test_review.py drives the page in one).

On an exam captured from the fast simulated board (two presses: the
exam's dose report has two irradiation events, the frames are the second's)
and a corrected copy of it (float frames, a lost line as NaN). The API
says what the TIFF holds, frame by frame; the server refuses what the live
view refuses (no token, another Origin or Host, not JSON; 403, before any
handler); a bad exam directory is one line and exit status 2."""

from __future__ import annotations

import dataclasses
import html
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from test_security import EVIL, SECURITY_HEADERS, what_the_browser_saw  # tests/
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pulseline.cli import main
from pulseline.exam.capture import capture, save
from pulseline.exam.exam_dir import read_exam
from pulseline.link.session import Session
from pulseline.sim.fastboard import FastBoard
from pulseline.ui.review import CHUNK_FRAMES, ReviewView

FRAMES = 12


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """"raw": as captured; "corrected": the same frames as float32, frame 2
    with lines 5 and 6 lost (NaN)."""
    out = tmp_path_factory.mktemp("review")
    board = FastBoard(seed=2)
    try:
        with Session(board.url) as s:
            first = capture(s, 3, press=board.press, release=board.release)
            cap = capture(s, FRAMES, press=board.press, release=board.release)
    finally:
        board.close()
    assert first.error is None and cap.error is None, (first.error, cap.error)
    save(cap, out / "raw", "fastsim")
    frames = []
    for k, f in enumerate(cap.frames):
        px, received = f.pixels.astype(np.float32) * 1.25 - 0.3, f.line_received.copy()
        if k == 2:
            received[[5, 6]] = False
            px[[5, 6]] = np.nan
        frames.append(dataclasses.replace(f, pixels=px, line_received=received))
    save(dataclasses.replace(cap, frames=frames), out / "corrected", "fastsim")
    return {"raw": out / "raw", "corrected": out / "corrected"}


@pytest.fixture(scope="module")
def review(exams: dict[str, Path]) -> Iterator[ReviewView]:
    with ReviewView(read_exam(exams["raw"])) as view:
        yield view


def own(view: ReviewView) -> str:
    return urllib.parse.urlsplit(view.url).netloc


def ask(view: ReviewView, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request, with exactly these headers (Host: the view's own unless given)."""
    c = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    try:
        c.request(method, path, body, {"Host": own(view), **(headers or {})})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def api(view: ReviewView, path: str) -> Any:
    status, headers, body = ask(view, path, {"X-Pulseline-Token": view.token})
    assert status == 200, (status, body)
    return json.loads(body) if headers["content-type"].startswith("application/json") else body


def tiff(path: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    with tifffile.TiffFile(path / "frames.tif") as t:
        return t.asarray(), json.loads(t.imagej_metadata["Properties"]["pulseline.frames"])


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(list(args))
    got = capsys.readouterr()
    return status, got.out, got.err


# -- what the page is told ---------------------------------------------------------------


def test_each_frame_s_technique_and_dose_is_the_tiff_s(review, exams):
    exam = api(review, "/api/exam")
    pixels, meta = tiff(exams["raw"])
    assert exam["frames"] == len(meta) == pixels.shape[0] >= FRAMES
    assert (exam["lines"], exam["pixels"]) == pixels.shape[1:] == (256, 256)
    for shown, truth in zip(exam["meta"], meta, strict=True):
        assert {k: shown[k] for k in truth} == truth  # every key, to the digit
        for key in ("kv", "ma", "pulse_width_ms", "air_kerma_ugy", "kap_ugy_m2", "lines_lost"):
            assert key in shown
    # The true frame time: the board's timestamps (7.5 pps: 133.3 ms).
    stamps = [m["timestamp_us"] for m in meta]
    assert exam["frame_time_from"] == "the frames' timestamps"
    assert exam["frame_time_ms"] == pytest.approx(np.median(np.diff(stamps)) / 1000, rel=0.01)
    assert exam["frame_time_ms"] == pytest.approx(1000 / 7.5)
    assert [m["t_s"] for m in exam["meta"]] == pytest.approx([(t - stamps[0]) / 1e6 for t in stamps])


def test_the_dose_report_is_the_exam_s_with_each_frame_in_its_irradiation_event(review, exams):
    exam = api(review, "/api/exam")
    report = json.loads((exams["raw"] / "summary.json").read_text())["dose_report"]
    assert [e["event"] for e in exam["dose_report"]["events"]] == [1, 2]  # two presses in this exam
    for shown, truth in zip(exam["dose_report"]["events"], report["events"], strict=True):
        assert {k: shown[k] for k in truth} == truth
        assert shown["ended"] == ""  # each ended with its release
    for key in ("kerma_mgy", "kap_gy_cm2", "fluoro_s", "pulses", "events_total"):
        assert exam["dose_report"][key] == report[key]
    assert {m["event"] for m in exam["meta"]} == {2}  # the frames saved are the second press's
    assert exam["dose_report"]["events"][1]["t_s"] == pytest.approx(0.0, abs=0.01)  # it began with the first frame
    assert exam["dose_report"]["events"][0]["t_s"] < 0  # the first press, before the run
    assert exam["warnings"] == []


def test_frames_are_served_as_the_tiff_s_16_bit_pixels_in_chunks(review, exams):
    pixels, _ = tiff(exams["raw"])
    n = pixels.shape[0]
    body = api(review, f"/api/frames?start=0&count={CHUNK_FRAMES}")
    got = np.frombuffer(body, "<u2").reshape(-1, 256, 256)
    assert got.shape[0] == min(n, CHUNK_FRAMES) and np.array_equal(got, pixels[:CHUNK_FRAMES])
    one = np.frombuffer(api(review, f"/api/frames?start={n - 1}&count=1"), "<u2").reshape(256, 256)
    assert np.array_equal(one, pixels[-1])
    for query in ("start=-1", f"start={n}", "count=0", f"count={CHUNK_FRAMES + 1}", "start=x"):
        status, _, body = ask(review, f"/api/frames?{query}", {"X-Pulseline-Token": review.token})
        assert status == 400 and json.loads(body)["error"], query


def test_corrected_frames_are_rounded_and_clipped_with_lost_lines_at_0(exams):
    pixels, meta = tiff(exams["corrected"])
    assert pixels.dtype == np.float32 and np.isnan(pixels[2, 5:7]).all() and meta[2]["lines_lost"] == 2
    with ReviewView(read_exam(exams["corrected"])) as view:
        exam = api(view, "/api/exam")
        got = np.frombuffer(api(view, "/api/frames?start=0&count=4"), "<u2").reshape(4, 256, 256)
    assert exam["corrected"] and exam["meta"][2]["lines_lost"] == 2
    assert (got[2, 5:7] == 0).all()
    want = np.clip(np.rint(np.nan_to_num(pixels[:4], nan=0.0)), 0, 65535)
    assert np.array_equal(got, want)
    lo, hi = exam["window"]["lo"], exam["window"]["hi"]
    assert 0 < lo < hi < 65535


# -- the live view's protections -------------------------------------------------------------

PATHS = ["/", "/review_page.js", "/review_page.css", "/view_display.js", "/view_page.css", "/api/exam",
         "/api/frames?start=0&count=1"]


@pytest.mark.parametrize("path", PATHS)
def test_nothing_is_served_without_the_token_or_to_another_site(review, path):
    sep = "&" if "?" in path else "?"
    for query in ("", f"{sep}token=", f"{sep}token=" + "x" * 43):
        status, _, body = ask(review, path + query)
        assert status == 403 and "token" in json.loads(body)["error"], (path, query)
        assert b"SIM-" not in body and b"kv" not in body
    mine = f"{path}{sep}token={review.token}"
    assert ask(review, mine)[0] == 200
    # With the token, but from another site's page, or to a rebound name (DNS rebinding).
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Host": f"evil.example:{review.port}"},
                    {"Host": f"evil.example:{review.port}", "Origin": f"http://evil.example:{review.port}"}):
        status, _, body = ask(review, mine, headers)
        assert status == 403 and json.loads(body)["error"].startswith("refused: "), headers
    assert "only the review's own page" in json.loads(ask(review, mine, {"Origin": EVIL})[2])["error"]


def test_it_takes_no_commands_and_nothing_that_is_not_json(review):
    page = {"Origin": f"http://{own(review)}", "X-Pulseline-Token": review.token}
    assert ask(review, "/api/exam", {**page, "Content-Type": "text/plain"}, "POST", b"{}")[0] == 403
    assert ask(review, "/api/exam", {"X-Pulseline-Token": review.token, "Content-Type": "application/json"},
               "POST", b"{}")[0] == 403  # no Origin
    assert ask(review, "/api/exam", {**page, "Content-Type": "application/json"}, "POST", b"{}")[0] == 405


def test_a_websocket_without_the_token_or_from_another_origin_is_refused(review):
    for query, origin in (("", f"http://{own(review)}"), (f"?token={review.token}", EVIL)):
        sock = socket.create_connection(("127.0.0.1", review.port), timeout=10)
        with pytest.raises(InvalidStatus) as refusal:
            connect(f"ws://{own(review)}/ws{query}", sock=sock, origin=origin, proxy=None, open_timeout=10)
        assert refusal.value.response.status_code == 403


def test_every_response_forbids_framing_and_inline_script(review):
    t = review.token
    responses = [ask(review, f"/?token={t}"), ask(review, f"/review_page.js?token={t}"),
                 ask(review, f"/review_page.css?token={t}"), ask(review, f"/api/exam?token={t}"),
                 ask(review, f"/api/frames?token={t}&count=0"), ask(review, f"/nothing?token={t}"), ask(review, "/")]
    assert [r[0] for r in responses] == [200, 200, 200, 200, 400, 404, 403]
    for status, headers, _ in responses:
        for name, value in SECURITY_HEADERS.items():
            assert name in headers and (value is None or headers[name] == value), (status, name)
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
    page = responses[0][2].decode()
    assert "<style" not in page and "style=" not in page and "<script>" not in page
    assert f'src="/review_page.js?token={t}"' in page and f'<meta name="pulseline-token" content="{t}">' in page
    assert responses[1][1]["content-type"].startswith("text/javascript")
    assert responses[2][1]["content-type"].startswith("text/css")


def test_a_library_review_beyond_loopback_needs_allow_remote(exams):
    with pytest.raises(ValueError, match="allow_remote"):
        ReviewView(read_exam(exams["raw"]), host="0.0.0.0")


# -- the command line -------------------------------------------------------------------------


def refused(status: int, out: str, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and out == "" and len(lines) == 1 and lines[0].startswith("pulseline: error: "), (status, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_bad_exam_directories_are_one_line_and_exit_2(tmp_path, exams, capsys):
    file = tmp_path / "a-file"
    file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "frames.tif").write_bytes(b"II*\x00 not a tiff at all")
    bad_summary = tmp_path / "bad-summary"
    shutil.copytree(exams["raw"], bad_summary)
    (bad_summary / "summary.json").write_text('{"frames": 12,')
    cases = {tmp_path / "nothing": "no such exam directory", file: "not a directory", empty: "frames.tif",
             garbage: "cannot read", bad_summary: "summary.json"}
    for path, needle in cases.items():
        refused(*cli("review", str(path), "--no-browser", capsys=capsys), str(path), needle)
    # view with a directory that is not there: perhaps a port was meant.
    refused(*cli("view", str(tmp_path / "nothing"), "--no-browser", capsys=capsys), "not an exam directory",
            "--port")
    refused(*cli("view", str(exams["raw"]), "--port", "sim", capsys=capsys), "not both")
    refused(*cli("view", "--no-browser", capsys=capsys), "--port", "exam directory")
    # Beyond loopback, refused before the exam is read, in the review's words.
    line = refused(*cli("review", str(tmp_path / "nothing"), "--listen", "0.0.0.0", capsys=capsys),
                   "--allow-remote", "0.0.0.0", "review")
    assert "drive the board" not in line


@pytest.mark.parametrize("command", [["review"], ["view"]])
def test_review_and_view_of_an_exam_directory_serve_it_until_ctrl_c(exams, command):
    p = subprocess.Popen([sys.executable, "-m", "pulseline", *command, str(exams["raw"]), "--no-browser", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = json.loads(p.stdout.readline())
        assert said["frames"] >= FRAMES and said["exam"] == str(exams["raw"])
        parts = urllib.parse.urlsplit(said["url"])
        assert parts.hostname == "localhost"
        c = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
        c.request("GET", f"/?{parts.query}", headers={"Host": parts.netloc})
        r = c.getresponse()
        assert r.status == 200 and "pulseline review" in r.read().decode()
        c.close()
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err


def test_the_browser_gets_a_private_file_not_the_token(exams, tmp_path):
    url, saw = what_the_browser_saw(tmp_path, "review", str(exams["raw"]))
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
    assert saw["argv"][0].startswith("file://") and token not in " ".join(saw["argv"])
    assert saw["mode"] == 0o600 and saw["dir_mode"] == 0o700
    assert html.escape(url) in saw["text"] and "pulseline review" in saw["text"]
    assert not Path(saw["path"]).exists()
