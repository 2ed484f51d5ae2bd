"""The host-side fault proxy: seeded link faults between the host and any
port (here a simulated board's pty standing in for hardware), with the
same accounting the simulated link gives."""

from __future__ import annotations

import numpy as np
import pytest

from pulseline.exam.capture import capture
from pulseline.link.frames import Frame
from pulseline.link.session import Session, wait_for_firmware
from pulseline.sim.board import SimBoard
from pulseline.targets.faultproxy import FaultProxy
from pulseline.targets.simboard import deploy_files as _deploy

pytestmark = pytest.mark.micropython


def test_faults_through_the_proxy_are_accounted_and_no_bad_line_is_accepted(tmp_path):
    _deploy(tmp_path / "fs", None)
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "st", seed=2) as board:
        wait_for_firmware(board.pty_path, timeout_s=60)
        with FaultProxy(board.pty_path, "corrupt=2e-5,drop=0.004", seed=9) as proxy, \
                Session(proxy.url) as s:
            cap = capture(s, 12, press=board.press, release=board.release)
            counters = s.counters()
        faults = proxy.faults_log
    frames = [f for f in cap.frames if isinstance(f, Frame)]
    assert len(frames) >= 10
    kinds = {f.kind for f in faults}
    assert {"corrupt", "drop"} <= kinds, kinds
    # Every line the host took is the plant's, bit for bit; what it lost it counted.
    lost = 0
    for f in frames:
        truth = board.plant.pulses[f.frame_id - 1].frame
        assert truth is not None
        got = f.line_received
        np.testing.assert_array_equal(f.pixels[got], truth.raw_adu[got])
        lost += int((~got).sum())
    assert lost > 0 and counters["lines_lost"] >= lost
    assert counters["crc_errors"] > 0  # corrupted packets were refused, not accepted


def test_a_bad_spec_or_port_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="probability"):
        FaultProxy("/dev/null", "drop=7")
    with pytest.raises(ValueError, match="fault proxy: cannot open port /dev/ttyNOPE"):
        FaultProxy("/dev/ttyNOPE", "drop=0.1").start()
