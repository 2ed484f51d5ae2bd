"""A faulty link, seen from the host: damaged and dropped packets are lost,
counted, and never taken for good data. The faults are the simulated link's
on sim, and a host-side proxy's in front of a real board."""

from __future__ import annotations

import numpy as np
import pytest

from pulseline.exam.capture import capture


@pytest.mark.needs_plant
@pytest.mark.link_faults("corrupt=2e-5,drop=0.004")
def test_a_faulty_link_loses_lines_but_never_accepts_a_bad_one(board, session, plant):
    cap = capture(session, 12, press=plant.press, release=plant.release)
    assert cap.frames, cap.error
    kinds = {f.kind for f in board.link_faults()}
    assert {"corrupt", "drop"} <= kinds, kinds
    lost = 0
    for f in cap.frames:
        truth = plant.model.pulses[f.frame_id - 1].frame
        got = f.line_received
        np.testing.assert_array_equal(f.pixels[got], truth.raw_adu[got])  # no bad line accepted
        lost += int((~got).sum())
    c = session.counters()
    assert lost > 0 and c["lines_lost"] >= lost and c["crc_errors"] > 0
    # The dose is the board's, whatever the link did to the images.
    assert cap.dose_report["pulses"] == len([p for p in plant.model.pulses if p.frame is not None])
