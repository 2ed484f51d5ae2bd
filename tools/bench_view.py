"""`make bench`, live view part: what an operator's screen keeps up with.

(G) a simulated board on the USB high-speed link (256 x 256 Mono12p frames,
    the default phantom; in its own process, as `pulseline sim start` runs
    it), its frames through the live view into a page in headless Chromium
    (Debian's), the switch held for a few seconds at 30 pps
    and at 15 pps. Figures: frames in (assembled by the host) and displayed
    per second, display frames dropped (a frame replaced before the tab drew
    the one before it), and the delay from a frame's arrival at the host (the
    assembler handing it out) to its display (the browser's next rendering
    step after drawing it; one machine clock, read on both sides).
    Bars, at 15 pps: no display frame dropped, and the 95th percentile of the
    delay under one frame period (66.7 ms); the frames shown keep up with the
    pulses, and no line is lost. The maximum is reported: a shared machine
    can pause any program now and then. At 30 pps on two cores the board,
    the host and the browser share the CPUs: the figures are reported, and
    the pulse rate the simulated board kept is one of them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SECONDS = 6.0  # of switch time per rate
RATES = (30.0, 15.0)
BAR_RATE = 15.0


def _measure(session: Any, board: Any, view: Any, page: Any, pps: float) -> dict[str, Any]:
    session.configure(pulses_per_s=pps)
    session.arm()
    before_shown = page.evaluate("window.pulseline.shown.length")
    before_in = view.hub.frames_in
    before_dropped = sum(c.frames_dropped for c in view.hub.clients)
    lost0 = session.counters().get("lines_lost", 0)
    board.press()
    # From the first frame displayed: the press's start-up is not the display's.
    # (A function, not an expression: the page's CSP forbids the eval Playwright polls an expression with.)
    page.wait_for_function(f"() => window.pulseline.shown.length > {before_shown}", timeout=20_000)
    status0 = board.status()
    t0, in0, fired0, board0 = time.monotonic(), view.hub.frames_in, status0["pulses"], status0["t_us"]
    shown0 = page.evaluate("window.pulseline.shown.length")
    time.sleep(SECONDS)
    status1 = board.status()
    t1, in1, fired1, board1 = time.monotonic(), view.hub.frames_in, status1["pulses"], status1["t_us"]
    log = page.evaluate("window.pulseline.shown")
    board.release()
    dropped = sum(c.frames_dropped for c in view.hub.clients) - before_dropped
    window = log[shown0:]
    delays = np.array([f["delay_ms"] for f in window], float)
    time.sleep(0.5)
    session.disarm()
    dt = t1 - t0
    # The board's own time (what its interpreter ran and asked to wait) is
    # the rate's measure; wall time also holds what the host took from it.
    return {"pps": pps, "fired_per_s": (fired1 - fired0) / dt, "in_per_s": (in1 - in0) / dt,
            "fired_per_board_s": (fired1 - fired0) / max(1e-6, (board1 - board0) / 1e6),
            "board_s_per_s": (board1 - board0) / 1e6 / dt,
            "shown_per_s": len(window) / dt, "dropped": dropped, "frames_in": view.hub.frames_in - before_in,
            "delays": delays, "lines_lost": session.counters().get("lines_lost", 0) - lost0}


def run(r: Any) -> None:
    from pulseline.link.session import Session, wait_for_firmware
    from pulseline.sim.board import SimControl, find_board, wait_stopped
    from pulseline.targets.simboard import deploy_files as _deploy
    from pulseline.ui.view import LiveView

    print("(G) live view in headless Chromium: 256x256 Mono12p over usb-hs, "
          f"{SECONDS:g} s of switch time at each rate")
    chromium = shutil.which("chromium")
    if chromium is None:
        r.check("Debian's chromium is installed (`make deps` as root)", False)
        return
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="pulseline-bench-view-") as tmp:
        fs = Path(tmp) / "fs"
        _deploy(fs, None)
        # The browser first: its start-up is the busiest moment for the CPUs.
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            board_proc = subprocess.Popen([sys.executable, "-m", "pulseline.sim.board", "--name", "bench-view",
                                           "--fs", str(fs), "--link", "usb-hs", "--seed", "1"], cwd=tmp,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            state_dir = Path(tmp) / ".pulseline"
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        pty = find_board("bench-view", state_dir)["pty"]
                        break
                    except ValueError:
                        if time.monotonic() > deadline or board_proc.poll() is not None:
                            raise RuntimeError("the simulated board did not start") from None
                        time.sleep(0.1)
                board = SimControl("bench-view", state_dir)
                wait_for_firmware(pty, timeout_s=60)
                with Session(pty) as s:
                    s.configure(pixels_per_line=256, lines_per_frame=256)
                    with LiveView(s, controls=board) as view:
                        page = browser.new_page(viewport={"width": 1180, "height": 760})
                        page.goto(view.url)
                        page.get_by_test_id("state").filter(has_text="IDLE").wait_for()
                        results = [_measure(s, board, view, page, pps) for pps in RATES]
            finally:
                browser.close()
                if board_proc.poll() is None:
                    with contextlib.suppress(OSError, ValueError):
                        SimControl("bench-view", state_dir).stop()
                    with contextlib.suppress(ValueError):
                        wait_stopped(find_board("bench-view", state_dir))
                    board_proc.terminate()
                board_proc.wait(timeout=10)
    for m in results:
        d = m["delays"]
        period_ms = 1000.0 / m["pps"]
        p50, p95 = (float(np.percentile(d, q)) for q in (50, 95)) if len(d) else (float("nan"),) * 2
        print(f"  at {m['pps']:g} pps")
        r.figure("pulses / frames in / shown per s",
                 f"{m['fired_per_s']:.1f} / {m['in_per_s']:.1f} / {m['shown_per_s']:.1f}",
                 f"{m['frames_in']} frames in, {m['dropped']} display frames dropped, "
                 f"{m['lines_lost']} lines lost")
        r.figure("pulses per s of board time", f"{m['fired_per_board_s']:.1f}",
                 f"the board's clock ran {m['board_s_per_s']:.2f} s a second of wall time")
        r.check(f"pulses at the pulse rate in board time ({m['fired_per_board_s']:.1f}/s at {m['pps']:g} pps)",
                abs(m["fired_per_board_s"] - m["pps"]) <= 0.05 * m["pps"])
        r.figure("arrival to display, ms", f"{p50:.1f} / {p95:.1f} / {d.max() if len(d) else float('nan'):.1f}",
                 f"median / 95th percentile / max; one frame period is {period_ms:.1f} ms")
        if m["pps"] == BAR_RATE:
            r.check(f"no display frame dropped at {m['pps']:g} pps ({m['dropped']})", m["dropped"] == 0)
            r.check(f"95th percentile delay {p95:.1f} ms < one frame period ({period_ms:.1f} ms)", p95 < period_ms)
            # Both in wall time: the screen keeps up with the pulses the board fired
            # (the board's own rate is the check above, in its time).
            r.check(f"frames displayed keep up with the pulses ({m['shown_per_s']:.1f}/s shown, "
                    f"{m['fired_per_s']:.1f}/s fired)", m["shown_per_s"] >= 0.95 * m["fired_per_s"])
            r.check(f"no line lost on the link ({m['lines_lost']})", m["lines_lost"] == 0)
