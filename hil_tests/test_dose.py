"""Dose displays and the journal, against the plant's reference meter."""

from __future__ import annotations

import pytest

from pulseline.capture import capture


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
    from pulseline.session import Session

    with Session(board.port) as s:
        cap = capture(s, 4, press=plant.press, release=plant.release)
        assert cap.error is None, cap.error
        report = s.dose_report()
    board.reset()
    with Session(board.port) as s:
        assert s.dose_report() == report
