"""Brightness control and a capture end to end, from the host."""

from __future__ import annotations

import itertools
import json
import subprocess

import numpy as np
import pytest

from pulseline.exam.capture import capture, save


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
    fired_before = len(plant.model.pulses)
    cap = capture(session, 6, press=plant.press, release=plant.release)
    assert cap.error is None, cap.error
    summary = save(cap, tmp_path / "exam", "test")
    # Six frames asked for; a pulse that left before the release reached the
    # switch (a frame takes most of a period to arrive) is kept, as it was
    # delivered: the exam holds exactly what the plant fired.
    frames = summary["frames"]
    assert 6 <= frames == len(plant.model.pulses) - fired_before and summary["lines_lost"] == 0
    assert summary["dose_report"]["pulses"] == frames and summary["firmware_hash"] == session.board["firmware_hash"]
    for name in ("rf.dcm", "dose_sr.dcm"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "exam" / name)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], name
    assert json.loads((tmp_path / "exam" / "summary.json").read_text())["frames"] == frames


@pytest.mark.needs_plant
def test_frames_keep_their_cadence_in_board_time_across_a_wrap_of_the_ticks(session, plant, clock):
    # The firmware's ticks wrap at 2**30 us (17.9 minutes on a Pico).
    # Simulated boards power on 2 s before the first wrap: this press runs
    # across it, and board time (the plant's, on a simulated board) goes on.
    wrap = 1 << 30
    now = plant.status()["t_us"]
    if now > wrap - 700_000:
        pytest.skip(f"the board was {now - wrap + 2_000_000} us old at the test's start: past its first wrap")
    if now < wrap - 3_000_000:  # (an emulated Pico's ticks start at its power-on, as a Pico's do)
        pytest.skip(f"the board's first wrap is {(wrap - now) / 1e6:.0f} s of its time away: it powers on at 0")
    period_us = 1e6 / session.configure()["pulses_per_s"]
    session.arm()
    clock.wait_for(lambda: plant.status()["t_us"] >= wrap - 600_000, 3.0, "the last 0.6 s before the wrap")
    plant.press()
    frames = []
    for k in range(12):
        f = session.next_frame(2.0)
        assert f is not None, f"frame {k} did not come"
        frames.append(f)
    plant.release()
    stamps = [f.timestamp_us for f in frames]
    assert stamps[0] < wrap < stamps[-1]
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    # A period apart, give or take the loop's decision: no burst, no skew at the wrap.
    assert gaps[0] > period_us - 6_000 and abs(gaps[len(gaps) // 2] - period_us) < 1_000, gaps
    # Each frame's time is its pulse's, on the plant's clock: read as the
    # pulse leaves, a request's way from the plant's record of it.
    fired = [p.t_us for p in plant.model.pulses]
    assert all(min(abs(t - ts) for t in fired) < 10_000 for ts in stamps)
    assert all(f.lines_lost == 0 for f in frames)


@pytest.mark.needs_plant
def test_an_exam_of_two_presses_files_as_fluoroscopy_with_its_times(session, plant, clock, tmp_path):
    import pydicom

    from pulseline.exam import sr_templates as T
    from pulseline.exam.dicom_rf import Identity

    session.command("new_exam")
    presses = []
    for _ in range(2):
        before = len(plant.model.pulses)
        cap = capture(session, 3, press=plant.press, release=plant.release)
        assert cap.error is None, cap.error
        presses.append(plant.model.pulses[before:])
        clock.sleep(0.3)  # a moment between the presses
    ident = Identity(patient_age="045Y", patient_size_m=1.72, patient_weight_kg=71.0, patient_sex="F")
    summary = save(cap, tmp_path / "exam", "test", identity=ident)
    sr_path, rf_path = tmp_path / "exam" / "dose_sr.dcm", tmp_path / "exam" / "rf.dcm"
    sr, rf = pydicom.dcmread(sr_path), pydicom.dcmread(rf_path)
    # What the tools nobody here wrote say of it.
    for argv in (["dsrdump", str(sr_path)], ["dciodvfy", str(sr_path)],
                 ["dciodvfy", "-profile", "IHEREM", str(sr_path)], ["dciodvfy", str(rf_path)]):
        out = subprocess.run(argv, capture_output=True, text=True)
        text = out.stdout + out.stderr
        bad = ("E:", "F:", "W:") if argv[0] == "dsrdump" else ("Error", "Warning") if argv[-1] == str(rf_path) \
            else ("Error",)
        assert [line for line in text.splitlines() if line.startswith(bad)] == [], argv
    assert T.walk(sr) == []
    # One event per press, each timed by its own pulses (the plant's record).
    records = summary["dose_report"]["events"][-2:]
    events = [it for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "113706"]
    assert len(events) == 2
    for rec, fired, event in zip(records, presses, events, strict=True):
        assert rec["pulses"] == len(fired)
        assert abs(rec["pulse_start_us"] - fired[0].t_us) < 10_000
        assert abs(rec["pulse_end_us"] - (fired[-1].t_us + fired[-1].width_us)) < 10_000
        duration = next(float(it.MeasuredValueSequence[0].NumericValue) for it in event.ContentSequence
                        if it.ConceptNameCodeSequence[0].CodeValue == "113742")
        assert duration == pytest.approx((rec["pulse_end_us"] - rec["pulse_start_us"]) / 1e6, abs=1e-6)
    started = [next(it.DateTime for it in e.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "111526")
               for e in events]
    assert started[0] < started[1]
    # The image belongs to the second press's event, and the report says so.
    uids = [next(it.UID for it in e.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "113769")
            for e in events]
    assert str(rf.IrradiationEventUID) == uids[1]


@pytest.mark.needs_plant
def test_every_pixel_is_the_detectors_output(session, plant):
    # The image is the detector's digital output, bit for bit, dark and
    # exposed. On the emulated Pico it crosses the front end's bus first
    # (GP0-GP11, clocked by the readout's state machine, DMA'd as Mono12p).
    session.configure(pixels_per_line=64, lines_per_frame=64, pixel_format=2, pulses_per_s=7.5,
                      abc_enabled=False)
    first = session.command("dark_frames", {"frames": 1})["first_frame"]
    dark = session.next_frame(5)
    assert dark is not None and dark.frame_id == first and dark.complete
    np.testing.assert_array_equal(dark.pixels, plant.model.dark_frames[-1].raw_adu)
    cap = capture(session, 3, press=plant.press, release=plant.release)
    assert len(cap.frames) >= 3, cap.error
    for f in cap.frames:
        assert f.complete, f
        # Its pulse: the plant's, fired as the firmware stamped it.
        pulse = min(plant.model.pulses, key=lambda p: abs(p.t_us - f.timestamp_us))
        assert abs(pulse.t_us - f.timestamp_us) < 1000 and pulse.frame is not None
        np.testing.assert_array_equal(f.pixels, pulse.frame.raw_adu)
    assert len({f.pixels.tobytes() for f in cap.frames}) == len(cap.frames)  # each its own noise
