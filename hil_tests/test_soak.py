"""Long runs on the fast target (virtual time): an hour of switch time in
one press. `make soak` runs the hour; `make test` a short smoke of the same
test (PULSELINE_SOAK_MINUTES)."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.needs_plant]

MINUTES = float(os.environ.get("PULSELINE_SOAK_MINUTES", "60"))


def test_an_hour_of_fluoroscopy(board, session, plant, clock):
    if board.target != "fast":
        pytest.skip("an hour of switch time runs in virtual time (--target fast)")
    # Small frames: the soak is about control, dose and the link, not images.
    session.configure(pixels_per_line=32, lines_per_frame=32, pulses_per_s=7.5, kv=80, ma=20, pulse_width_ms=10)
    session.arm()
    t0 = plant.press()
    frames = lost = 0
    for _ in range(round(MINUTES)):
        clock.sleep(60.0)
        while (f := session.next_frame(0)) is not None:
            frames += 1
            lost += f.lines_lost
    plant.release()
    assert session.wait_event("irradiation", 2.0) is not None
    while (f := session.next_frame(0.5)) is not None:  # the last frame's lines may still be on their way
        frames += 1
        lost += f.lines_lost
    report = session.dose_report()
    pulses = [p for p in plant.model.pulses if p.t_us >= t0]
    assert len(pulses) == report["pulses"] == frames  # every pulse accounted and imaged
    assert lost == 0 and session.counters()["crc_errors"] == 0
    assert report["kerma_mgy"] == pytest.approx(plant.model.meter_kerma_ugy / 1000, rel=0.01)
    assert report["fluoro_min"] == pytest.approx(round(MINUTES, 1), abs=0.1)
    # The 5-minute alarm at every 5 minutes of switch time.
    alarms = [e for e in session.events if e.name == "alarm" and e.body.get("alarm") == "fluoro_5min"
              and e.body.get("active")]
    assert len(alarms) == int(MINUTES // 5)
    assert [a.body["fluoro_min"] for a in alarms] == [5.0 * (k + 1) for k in range(len(alarms))]
    rates = [e.body["rate_mgy_min"] for e in session.events if e.name == "dose" and e.body["rate_mgy_min"] > 0]
    assert max(rates) <= 88.0  # the cap holds over the hour
