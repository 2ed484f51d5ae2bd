"""Every test keeps its calibrations and presets to itself: nothing is read
from or written to the user's data directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_calibration_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSELINE_CALIBRATION_DIR", str(tmp_path_factory.mktemp("calibration")))
    monkeypatch.delenv("PULSELINE_PRESETS", raising=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The minutes-long tests first: under xdist one worker takes each while
    # the others share the rest, instead of one starting it at the end.
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)
