"""Dose and timer displays and the journal, against the plant's reference
meter and its record of the switch."""

from __future__ import annotations

import pytest

from pulseline.exam.capture import capture


@pytest.mark.needs_plant
def test_the_dose_report_agrees_with_the_reference_meter(session, plant):
    before = plant.model.meter_kerma_ugy
    cap = capture(session, 10, press=plant.press, release=plant.release)
    assert cap.error is None, cap.error
    meter_mgy = (plant.model.meter_kerma_ugy - before) / 1000
    assert cap.dose_report["kerma_mgy"] == pytest.approx(meter_mgy, rel=0.01)
    assert sum(e["pulses"] for e in cap.dose_report["events"]) == cap.dose_report["pulses"] == len(cap.frames)


@pytest.mark.needs_plant
def test_the_journal_survives_a_reset(board, plant):

    with board.dut.open_session() as s:
        cap = capture(s, 4, press=plant.press, release=plant.release)
        assert cap.error is None, cap.error
        report = s.dose_report()
    board.reset()
    with board.dut.open_session() as s:
        after = s.dose_report()
    # Everything but the board's time now is as it was.
    after.pop("board_us")
    report.pop("board_us")
    assert after == report


@pytest.mark.needs_plant
def test_the_fluoroscopy_timer_counts_the_switch_time(session, plant, clock):
    session.configure(pixels_per_line=64, lines_per_frame=64)
    session.arm()
    t_press = plant.press()
    t_release = plant.at(2.5, "switch", False)  # a press of exactly 2.5 s of plant time
    clock.wait_for(lambda: session.wait_event("irradiation", 0), 5, "the end of the irradiation event")
    event = session.dose_report()["events"][-1]
    shown_s = event["fluoro_s"] + event["fluoro_us"] / 1e6
    # The timer runs while the board exposes: from the pass that sees the
    # press to the one that sees the release (1 ms loop, and the link's
    # latency on a simulated board).
    assert shown_s == pytest.approx((t_release - t_press) / 1e6, abs=0.03)
    assert session.status()["fluoro_min"] == 0.0  # minutes and tenths: 2.5 s shows as 0.0
    dose = [e for e in session.events if e.name == "dose"]
    assert dose and dose[-1].body["fluoro_min"] == 0.0
