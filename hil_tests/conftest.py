"""What the browser tests share (test_live_view.py, test_review.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Debian's headless Chromium, driven by Playwright (its own browser
    downloads are never used). Taken before the board: Chromium's start is
    the busiest moment for the CPUs, and a simulated board that boots
    meanwhile is starved. Not on the fast target: the browser runs in wall
    time, the fast target in virtual time (and make test runs the browser
    tests once, on sim)."""
    if request.config.getoption("--target") == "fast":
        pytest.skip("the browser runs in wall time, the fast target in virtual time")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: `make deps` (as root) installs it", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield b
        finally:
            b.close()
