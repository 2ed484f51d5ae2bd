"""Brightness control and a capture end to end, from the host."""

from __future__ import annotations

import json
import subprocess

import pytest

from pulseline.capture import capture, save


@pytest.mark.needs_plant
def test_brightness_control_settles_after_a_step_in_thickness(session, plant, clock):
    target = 800.0
    session.configure(abc_enabled=True, abc_target_adu=target, kv=70.0, ma=10.0)
    plant.set("water_cm", 15.0)
    session.arm()
    plant.press()
    signals = []
    for k in range(30):
        f = session.next_frame(2.0)
        assert f is not None, f"frame {k} did not come"
        signals.append(f.centre_mean - 100.0)  # the detector's pedestal
        if k == 12:
            plant.set("water_cm", 25.0)
    plant.release()
    before, after = signals[8:12], signals[-8:]
    assert all(abs(s / target - 1) < 0.05 for s in before), f"not settled at 15 cm: {before}"
    assert all(abs(s / target - 1) < 0.05 for s in after), f"not settled 10 frames after 15 -> 25 cm: {after}"
    assert max(signals[13:]) < target * 1.10, f"overshoot: {max(signals[13:]):.0f} ADU for {target:.0f}"


@pytest.mark.needs_plant
def test_a_capture_writes_an_exam_that_validates(session, plant, tmp_path):
    cap = capture(session, 6, press=plant.press, release=plant.release)
    assert cap.error is None, cap.error
    summary = save(cap, tmp_path / "exam", "test")
    assert summary["frames"] == 6 and summary["lines_lost"] == 0
    assert summary["dose_report"]["pulses"] == 6 and summary["firmware_hash"] == session.board["firmware_hash"]
    for name in ("rf.dcm", "dose_sr.dcm"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "exam" / name)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], name
    assert json.loads((tmp_path / "exam" / "summary.json").read_text())["frames"] == 6
