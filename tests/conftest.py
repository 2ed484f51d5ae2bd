"""Every test keeps its calibrations and presets to itself: nothing is read
from or written to the user's data directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_calibration_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSELINE_CALIBRATION_DIR", str(tmp_path_factory.mktemp("calibration")))
    monkeypatch.delenv("PULSELINE_PRESETS", raising=False)
