"""The review station as an operator uses it: a run captured from the board
and saved, then `pulseline review` on its exam directory in a real browser
(Debian's headless Chromium, driven by Playwright). It plays at the run's
true frame rate, steps, scrubs, and shows each frame's own technique and
dose: what the TIFF holds for that frame. Screenshots go with the test's
evidence.

Timing is measured, not slept on: the page logs each step of playback with
its own clock (performance.now()), and the rate is the slope of frames
advanced against that time over at least PLAY_S seconds, so neither a
delayed animation frame nor a slow round trip to the page on a loaded
machine moves it (a late step catches up: playback follows the clock)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from pulseline.exam.capture import capture, save

pytestmark = [pytest.mark.needs_plant, pytest.mark.browser]

FRAMES = 24  # 3.2 s at the default 7.5 pps
PLAY_S = 3.0  # each rate is measured over at least this much of the page's time
RATE_TOLERANCE = 0.05
FIELDS = {"f-frame": "frame_id", "f-pulse": "pulse_id", "f-kv": "kv", "f-ma": "ma", "f-width": "pulse_width_ms",
          "f-kerma": "air_kerma_ugy", "f-kap": "kap_ugy_m2", "f-lost": "lines_lost"}
# How the page rounds each one it shows (the exact value is in the element's data-value).
DIGITS = {"f-kv": 2, "f-ma": 3, "f-width": 2, "f-kerma": 3, "f-kap": 5}


@pytest.fixture
def exam(browser: Any, session: Any, plant: Any, tmp_path: Path) -> Path:
    cap = capture(session, FRAMES, press=plant.press, release=plant.release)
    assert cap.error is None, cap.error
    save(cap, tmp_path / "exam", session.port)
    session.close()  # the board is not needed any more: its heartbeat's CPU goes to the browser
    return tmp_path / "exam"


@pytest.fixture
def review_url(exam: Path) -> Iterator[str]:
    """`pulseline review EXAM --no-browser`: its URL, until the test ends (then Ctrl-C)."""
    p = subprocess.Popen([sys.executable, "-m", "pulseline", "review", str(exam), "--no-browser", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline() if p.stdout is not None else ""
        assert line, f"pulseline review said nothing: {p.communicate(timeout=10)[1]}"
        yield json.loads(line)["url"]
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
        assert p.returncode == 0, err


def shown(page: Any) -> dict[str, Any]:
    """The frame the page shows: its index and, for each field, the value
    (data-value, exact) and the text."""
    return page.evaluate("""(fields) => ({
        index: window.pulseline.index,
        lih: !document.getElementById("lih").classList.contains("hidden"),
        fields: Object.fromEntries(fields.map((id) => {
            const el = document.getElementById(id);
            return [id, [el.dataset.value ? JSON.parse(el.dataset.value) : null, el.textContent]];
        })),
        event: [...document.querySelectorAll("#event-rows tr.cur:not(.note)")].map((r) => +r.dataset.event),
    })""", list(FIELDS))


def check_frame(page: Any, meta: list[dict[str, Any]], events: list[dict[str, Any]], index: int) -> None:
    got = shown(page)
    assert got["index"] == index
    for test_id, key in FIELDS.items():
        value, text = got["fields"][test_id]
        assert value == meta[index][key], (index, key, value, meta[index][key])
        digits = DIGITS.get(test_id)
        assert (float(text) == pytest.approx(value, abs=0.51 * 10 ** -digits) if digits is not None
                else text == str(value)), (index, key, text, value)
    assert got["lih"] == (index == len(meta) - 1), f"frame {index}: the hold marker is not where the last image is"
    # Its irradiation event is marked: the one whose time holds the frame's.
    ts = meta[index]["timestamp_us"]
    assert got["event"] == [e["event"] for e in events if e["start_us"] <= ts <= e["end_us"]], (index, got["event"])


def play_rate(page: Any, seconds: float) -> float:
    """Frames per second the page advances while playing, over at least
    `seconds` of its own clock (from its log of steps): the slope of frames
    advanced against time, least squares."""
    start = page.evaluate("window.pulseline.steps.length")
    page.get_by_test_id("play").click()
    page.wait_for_function("""([start, ms]) => {
        const s = window.pulseline.steps;
        return s.length > start + 2 && s[s.length - 1][0] - s[start][0] >= ms;
    }""", arg=[start, seconds * 1000], timeout=int(seconds * 1000) + 60_000)
    page.get_by_test_id("play").click()  # pause
    assert page.evaluate("window.pulseline.playing") is False
    steps = np.array(page.evaluate("window.pulseline.steps")[start:], float)
    t_s, advanced = steps[:, 0] / 1000, steps[:, 1]
    return float(np.polyfit(t_s, advanced, 1)[0])


def test_the_review_plays_the_run_at_its_frame_rate_and_shows_each_frame_s_technique_and_dose(
        browser, exam, review_url, evidence_dir):
    with tifffile.TiffFile(exam / "frames.tif") as tif:
        meta = json.loads(tif.imagej_metadata["Properties"]["pulseline.frames"])
    n = len(meta)
    summary = json.loads((exam / "summary.json").read_text())
    events = summary["dose_report"]["events"]
    assert n == summary["frames"] >= FRAMES
    # The run's true frame rate, from the board's timestamps of its frames. (A
    # simulated board starved of a CPU fires some pulses late: the median
    # interval may be a little longer than the period asked for. The review
    # takes the nominal rate when the timestamps agree with it within 2 %.)
    true_fps = 1e6 / float(np.median(np.diff([m["timestamp_us"] for m in meta])))

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(review_url)
    # (Waits are functions, "() => ...": the page's CSP forbids the eval Playwright polls a bare expression with.)
    page.wait_for_function(f"() => window.pulseline.ready && window.pulseline.loaded === {n}", timeout=30_000)
    check_frame(page, meta, events, 0)
    assert float(page.get_by_test_id("frame-rate").inner_text()) == pytest.approx(true_fps, rel=0.021)

    # The dose report: each irradiation event, and the exam's totals.
    report = summary["dose_report"]
    rows = page.evaluate("[...document.querySelectorAll('#event-rows tr:not(.note)')].map((r) => +r.dataset.event)")
    assert rows == [e["event"] for e in report["events"]] and rows
    for test_id, key in (("t-kerma", "kerma_mgy"), ("t-kap", "kap_gy_cm2"), ("t-pulses", "pulses"),
                         ("t-events", "events_total"), ("t-fluoro", "fluoro_s")):
        assert json.loads(page.get_by_test_id(test_id).get_attribute("data-value")) == report[key], key

    # Playing: at the true frame rate, at 1x and at 2x.
    rate = play_rate(page, PLAY_S)
    assert rate == pytest.approx(true_fps, rel=RATE_TOLERANCE), f"plays at {rate:.3f} fps, the run's is {true_fps:.3f}"
    page.screenshot(path=evidence_dir / "1-paused-after-playing.png")
    page.get_by_test_id("speed").select_option("2")
    rate2 = play_rate(page, PLAY_S / 2)
    assert rate2 == pytest.approx(2 * true_fps, rel=RATE_TOLERANCE), f"2x plays at {rate2:.3f} fps"
    page.get_by_test_id("speed").select_option("1")
    # Paused, it stays (two frame times and more).
    held = page.evaluate("[window.pulseline.index, window.pulseline.advanced]")
    page.wait_for_timeout(2.5 * 1000 / true_fps)
    assert page.evaluate("[window.pulseline.index, window.pulseline.advanced]") == held

    # The scrubber goes to a chosen frame; step goes one on and one back.
    chosen = n // 2 + 1
    page.get_by_test_id("scrub").fill(str(chosen))
    check_frame(page, meta, events, chosen)
    page.get_by_test_id("fwd").click()
    check_frame(page, meta, events, chosen + 1)
    page.get_by_test_id("back").click()
    page.get_by_test_id("back").click()
    check_frame(page, meta, events, chosen - 1)
    page.screenshot(path=evidence_dir / "2-a-chosen-frame.png")

    # Every frame shows its own technique and dose, the last one as the image held.
    for k in range(n):
        page.get_by_test_id("scrub").fill(str(k))
        check_frame(page, meta, events, k)
    page.get_by_test_id("first").click()
    check_frame(page, meta, events, 0)
    page.get_by_test_id("last").click()
    check_frame(page, meta, events, n - 1)
    assert page.get_by_test_id("lih").is_visible()
    page.screenshot(path=evidence_dir / "3-last-image-hold.png")
    assert errors == []
