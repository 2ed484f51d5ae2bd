"""The live view as an operator uses it: a real browser (Debian's headless
Chromium, driven by Playwright) on `pulseline view`'s page, the exposure
switch held on the page's keyboard shortcut. A screenshot of each state is
kept with the test's evidence."""

from __future__ import annotations

from typing import Any

import pytest

from pulseline.ui.view import LiveView

pytestmark = [pytest.mark.needs_plant, pytest.mark.browser]


def number(page: Any, test_id: str) -> float:
    text = page.get_by_test_id(test_id).inner_text()
    assert text != "—", f"{test_id} shows nothing"
    return float(text)


def shown(page: Any) -> list[dict[str, Any]]:
    """What the page has put on screen: frame_id, pulse_id, delay_ms, lih."""
    return page.evaluate("window.pulseline.shown")


def until(clock: Any, page: Any, condition: str, seconds: float, what: str) -> Any:
    """A condition of the page (a function, "() => ...": the page's CSP
    forbids the eval Playwright polls a bare expression with), within
    `seconds` of the board's time: what the page waits for, the board makes
    in its own time, and a board slower than the wall (the emulated Pico)
    takes longer in the wall's."""
    return clock.wait_for(lambda: page.evaluate(condition), seconds, what)


def until_shown(clock: Any, locator: Any, seconds: float, what: str, *, visible: bool = True) -> None:
    """A part of the page shown (or gone), within `seconds` of the board's time."""
    clock.wait_for(lambda: (locator.count() > 0 and locator.first.is_visible()) == visible, seconds, what)


def test_the_monitor_shows_live_frames_the_displays_and_the_last_image_held(browser, session, plant, board,
                                                                            evidence_dir, clock):
    session.configure(pulses_per_s=7.5)  # the default detector, 256 x 256
    session.arm()
    with LiveView(session, controls=board.sim) as view:
        page = browser.new_page(viewport={"width": 1180, "height": 840})
        page.goto(view.url)
        until_shown(clock, page.get_by_test_id("state").filter(has_text="READY"), 10, "READY on the page")
        assert page.get_by_test_id("switch").is_visible()  # the simulated board's hardware is on the page
        assert "board" in page.get_by_test_id("board").inner_text()
        page.screenshot(path=evidence_dir / "1-ready.png")

        # Press: the switch is held while Space is held, as a pedal.
        page.keyboard.down("Space")
        until(clock, page, "() => window.pulseline.shown.length >= 6", 20, "six frames shown")
        assert plant.status()["switch"] is True
        assert number(page, "kv") > 0 and number(page, "ma") > 0
        until(clock, page, "() => Number(document.getElementById('rate').textContent) > 0", 10, "a dose rate")
        kerma_before = number(page, "kerma")
        until(clock, page, f"() => Number(document.getElementById('kerma').textContent) > {kerma_before}", 10,
              "the air kerma growing")
        assert number(page, "kap") > 0
        frames = shown(page)
        assert not any(f["lih"] for f in frames), "the hold marker over a live frame"
        assert [f["pulse_id"] for f in frames] == sorted({f["pulse_id"] for f in frames})
        assert not page.get_by_test_id("lih").is_visible()
        page.screenshot(path=evidence_dir / "2-exposing.png")

        # Release: the last image stays, marked as held.
        page.keyboard.up("Space")
        until_shown(clock, page.get_by_test_id("lih"), 10, "the last-image-hold marker")
        assert plant.status()["switch"] is False
        until_shown(clock, page.get_by_test_id("state").filter(has_text="HOLD"), 10, "HOLD on the page")
        # No exposure, no rate: the board's last dose display says so (right after the state).
        until(clock, page, "() => Number(document.getElementById('rate').textContent) === 0", 5, "no dose rate")
        last_held = shown(page)[-1]
        page.screenshot(path=evidence_dir / "3-last-image-hold.png")

        # Press again: the marker goes with the first live frame, not before.
        page.keyboard.down("Space")
        until(clock, page, f"() => window.pulseline.shown.some(f => f.pulse_id > {last_held['pulse_id']})", 20,
              "a frame of the new press")
        after = [f for f in shown(page) if f["pulse_id"] > last_held["pulse_id"]]
        assert after[0]["lih"] is False, "the first live frame of the new press still marked as held"
        assert not page.get_by_test_id("lih").is_visible()
        page.screenshot(path=evidence_dir / "4-live-again.png")

        # A second tab: both show the board's frames, and each says two are watching.
        other = browser.new_page(viewport={"width": 1180, "height": 840})
        other.goto(view.url)
        until(clock, other, "() => window.pulseline.shown.length >= 3", 20, "three frames in the second tab")
        for p in (page, other):
            until_shown(clock, p.get_by_test_id("tabs").filter(has_text="2 tabs are showing this board"), 10,
                        "two tabs said")
        other.screenshot(path=evidence_dir / "5-second-tab.png")
        page.keyboard.up("Space")
        other.close()
        until_shown(clock, page.get_by_test_id("tabs").filter(has_text="2 tabs"), 10, "one tab said", visible=False)
        # (The page's release is a request of its own: it lands when it lands.)
        clock.wait_for(lambda: plant.status()["switch"] is False, 10, "the release from the page")
