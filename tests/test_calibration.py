"""Detector calibration: dark readout on the board, the maps from
statistics, and corrected frames against the plant's ground truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from pulseline.exam import calibration
from pulseline.exam.calibration import Calibration, CalibrationError, build
from pulseline.exam.capture import capture
from pulseline.link.assembler import FrameAssembler
from pulseline.link.frames import Frame
from pulseline.link.session import BoardError, Session
from pulseline.plant import Plant, PlantConfig
from pulseline.plant.detector import Detector, DetectorSpec
from pulseline.plant.plant import STREAM_MAPS
from pulseline.sim.board import SimBoard
from pulseline.sim.fast import CommandError, FastSim
from pulseline.targets.flash import copy_source

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"


def deploy(fs: Path) -> None:
    copy_source(fs)


# -- the firmware's dark readout (fast simulator, in process) ---------------------------


def test_dark_frames_are_read_with_the_beam_off():
    plant = Plant(PlantConfig(seed=3))
    sim = FastSim(plant)
    sim.run_until(200_000)
    sim.command("set_config", {"pixels_per_line": 64, "lines_per_frame": 32})
    ans = sim.command("dark_frames", {"frames": 3})
    assert ans["frames"] == 3
    sim.run_until(sim.now_us + 1_000_000)
    assert plant.pulses == [] and len(plant.dark_frames) == 3  # nothing fired
    frames = [f for f in FrameAssembler(64, 32, "mono12p").feed(sim.take_output()) if isinstance(f, Frame)]
    trailers = [f.trailer for f in frames if f.trailer is not None]
    assert len(frames) == len(trailers) == 3
    assert all(t.kv == 0 and t.ma == 0 and t.air_kerma_ugy == 0 and t.lines_sent == 32 for t in trailers)
    ids = [t.frame_id for t in trailers]
    assert ids == list(range(ans["first_frame"], ans["first_frame"] + 3))
    # One frame per pulse period (7.5 pps by default).
    gaps = np.diff([t.timestamp_us for t in trailers])
    assert np.all(np.abs(gaps - 133_333) <= 1_000), gaps
    # The dark frames are the plant's: offset, read noise, dead pixels.
    maps = plant.detector.maps(32, 64)
    for f, truth in zip(frames, plant.dark_frames, strict=True):
        np.testing.assert_array_equal(f.pixels, truth.raw_adu)
        assert abs(float(np.median(truth.raw_adu)) - 100) < 3
        assert np.all(truth.raw_adu[maps.dead_bright] == 4095)
    assert sim.command("status")["kerma_mgy"] == 0


def test_dark_frames_are_refused_unless_disarmed_and_block_arming():
    sim = FastSim(Plant(PlantConfig(seed=4)))
    sim.run_until(200_000)
    with pytest.raises(CommandError, match="frames must be"):
        sim.command("dark_frames", {"frames": 0})
    with pytest.raises(CommandError, match="whole number"):
        sim.command("dark_frames", {})
    sim.command("arm")
    with pytest.raises(CommandError, match="only while disarmed"):
        sim.command("dark_frames", {"frames": 2})
    sim.command("disarm")
    sim.command("dark_frames", {"frames": 4})
    with pytest.raises(CommandError, match="dark frames are being read"):
        sim.command("arm")
    with pytest.raises(CommandError, match="dark frames"):
        sim.command("set_config", {"kv": 70})
    sim.run_until(sim.now_us + 1_000_000)
    sim.command("arm")  # all read: arming works again


def test_the_board_reports_its_serials():
    sim = FastSim(Plant(PlantConfig(seed=0x2A)))
    sim.run_until(100_000)
    hello = sim.command("hello", {"protocol": 1})
    assert hello["serial"] == "SIM-0000002A" and hello["detector_serial"] == "SIMDET-0000002A"


# -- the maps from statistics (generated detectors) -------------------------------------


def synthetic(seed: int, frames: int, lines: int = 64, pixels: int = 96, signal_adu: float = 2000.0):
    """Dark and flat stacks from the plant's detector model."""
    det = Detector(DetectorSpec(), seed, STREAM_MAPS)
    maps = det.maps(lines, pixels)
    rng = np.random.default_rng(seed)
    lost = np.zeros(lines, bool)
    darks = np.stack([det.render(0.0, np.zeros((lines, pixels)), 2, lost, rng).raw_adu for _ in range(frames)])
    kerma = signal_adu / (5.0 * 0.4**2 * 3.0e4 * 0.6)
    flats = np.stack([det.render(kerma, np.ones((lines, pixels)), 2, lost, rng).raw_adu for _ in range(frames)])
    return darks.astype(np.float32), flats.astype(np.float32), maps


@pytest.mark.parametrize("seed", [1, 2, 3, 5, 8])
def test_the_defect_map_is_exactly_the_dead_pixels(seed):
    darks, flats, maps = synthetic(seed, 16, lines=128, pixels=256)
    dark, flat, defects, stats = build(darks, flats, full_scale_adu=4095)
    assert maps.dead.sum() > 10
    np.testing.assert_array_equal(defects.astype(bool), maps.dead)
    assert stats["defective"]["total"] == int(maps.dead.sum())
    # The gain map is the detector's, within the noise of 16 frames.
    good = ~maps.dead
    rel = (flat - dark)[good] / np.median((flat - dark)[good])
    truth = maps.gain[good] / np.median(maps.gain[good])
    assert np.std(rel - truth) < 0.02


def test_a_saturated_or_dark_flat_field_is_refused():
    darks, flats, _ = synthetic(1, 4)
    with pytest.raises(CalibrationError, match="saturated"):
        build(darks, np.full_like(flats, 4095), full_scale_adu=4095)
    with pytest.raises(CalibrationError, match="hardly brighter"):
        build(darks, darks + 1, full_scale_adu=4095)
    lost = flats.copy()
    lost[:, 3, :] = np.nan
    with pytest.raises(CalibrationError, match="lines were lost"):
        build(darks, lost, full_scale_adu=4095)


def test_a_calibration_is_stored_with_its_detector_geometry_and_date(tmp_path):
    darks, flats, _ = synthetic(2, 4)
    dark, flat, defects, stats = build(darks, flats, full_scale_adu=4095)
    created = (dt.datetime.now(dt.UTC) - dt.timedelta(days=10)).replace(microsecond=0).isoformat()
    cal = Calibration("DET/7", "B1", 96, 64, 4095, created, dark, flat, defects, "0.2.0",
                      {"kv": 60.0}, 4, 4, stats)
    path = cal.save(tmp_path)
    assert path.name == "DET_7-96x64.npz" and not list(tmp_path.glob("*.tmp*"))
    back = calibration.find("DET/7", 96, 64, tmp_path)
    assert back is not None and back.created == created and back.technique == {"kv": 60.0}
    np.testing.assert_array_equal(back.defects, defects)
    np.testing.assert_array_equal(back.dark, dark)
    assert calibration.find("DET/7", 64, 64, tmp_path) is None
    assert back.age_days() > 9.9
    path.write_bytes(b"not a calibration")
    with pytest.raises(CalibrationError, match="cannot read calibration"):
        calibration.find("DET/7", 96, 64, tmp_path)


# -- calibrate, then capture, on the simulated board (acceptance 3) ------------------------


@pytest.mark.micropython
def test_calibrate_then_capture_gives_flat_frames_and_the_planted_dead_pixels(tmp_path):
    seed = 11
    fs = tmp_path / "fs"
    deploy(fs)
    plant = Plant(PlantConfig(seed=seed))
    with SimBoard(fs, state_dir=tmp_path / "st", plant=plant, seed=seed) as board, \
            Session(board.pty_path, clock=board.clock) as s:

        def expose(n):
            cap = capture(s, n, press=board.press, release=board.release)
            assert cap.error is None, cap.error
            return cap.frames

        board.set_input("water_cm", 0.0)  # the open field
        board.set_input("structures", False)
        cal = calibration.calibrate(s, dark_count=16, flat_count=32, expose=expose)
        truth = plant.detector.maps(256, 256)
        np.testing.assert_array_equal(cal.defects.astype(bool), truth.dead)
        assert cal.detector_serial == f"SIMDET-{seed:08X}" and cal.shape == (256, 256)
        path = cal.save(tmp_path / "cal")
        assert path.exists()

        # Capture the open field with the calibration applied, and without.
        s.configure(abc_enabled=False, **{k: cal.technique[k] for k in ("kv", "ma", "pulse_width_ms")})
        raw = expose(16)
        s.set_corrections(**cal.corrections())
        corrected = expose(16)
    good = ~truth.dead
    raw_stack = np.stack([f.pixels for f in raw]).astype(np.float64)
    cor_stack = np.stack([f.pixels for f in corrected]).astype(np.float64)
    assert cor_stack.dtype == np.float64 and np.isfinite(cor_stack).all()  # dead pixels replaced
    # Fixed pattern: the spatial spread of the temporal mean. What noise
    # alone leaves in it: the frames' own noise over 16 frames, plus the
    # noise the 32 flat frames froze into the gain map.
    temporal = float(np.sqrt(np.mean(np.var(cor_stack, axis=0, ddof=1)[good])))
    expected = temporal * np.sqrt(1 / 16 + 1 / 32)
    cor_fixed = float(np.std(cor_stack.mean(axis=0)[good]))
    raw_fixed = float(np.std(raw_stack.mean(axis=0)[good]))
    print(f"fixed pattern over 16 frames: corrected {cor_fixed:.1f} ADU, noise alone {expected:.1f}, "
          f"raw {raw_fixed:.1f}")
    assert cor_fixed < 1.15 * expected, (cor_fixed, expected)
    assert raw_fixed > 1.5 * expected, (raw_fixed, expected)
    # Corrected frames read ADU above offset: the same level as raw - dark.
    assert abs(np.median(cor_stack) - np.median(raw_stack - cal.dark)) < 0.02 * np.median(cor_stack)


def test_a_board_without_dark_readout_is_a_clear_error():
    class Old:
        config = {"pulses_per_s": 7.5}
        error = None

        def next_frame(self, timeout_s):
            return None

        def command(self, name, args=None):
            raise BoardError(name, 2, "unknown command 16")

    with pytest.raises(CalibrationError, match="does not read dark frames"):
        calibration.dark_frames(Old(), 4)  # type: ignore[arg-type]


@pytest.mark.micropython
def test_the_recursive_filter_is_applied_from_the_board_setting_and_off_for_calibration(tmp_path):
    fs = tmp_path / "fs"
    deploy(fs)
    with SimBoard(fs, state_dir=tmp_path / "st", seed=2) as board, Session(board.pty_path, clock=board.clock) as s:
        s.configure(filter_alpha=0.25, pixels_per_line=64, lines_per_frame=64)
        assert s.asm.config.filter_alpha == 0.25

        def expose(n):
            assert s.asm.config.filter_alpha == 0.0  # calibration frames are not filtered
            return capture(s, n, press=board.press, release=board.release).frames

        board.set_input("water_cm", 0.0)
        board.set_input("structures", False)
        cal = calibration.calibrate(s, dark_count=4, flat_count=4, expose=expose)
        assert s.config["filter_alpha"] == 0.25 and s.asm.config.filter_alpha == 0.25  # restored
        s.set_corrections(**cal.corrections())
        assert s.asm.config.filter_alpha == 0.25 and s.asm.config.gain is not None
        s.configure(filter_alpha=0.0)
        assert s.asm.config.filter_alpha == 0.0 and s.asm.config.gain is not None  # calibration kept


def test_a_capture_is_warned_of_a_missing_or_stale_calibration(tmp_path):
    class Board:
        board = {"detector_serial": "SIMDET-00000001"}
        config = {"pixels_per_line": 96, "lines_per_frame": 64}

    cal, why = calibration.for_session(Board(), tmp_path)  # type: ignore[arg-type]
    assert cal is None and "no calibration for detector SIMDET-00000001 at 96 x 64" in why
    darks, flats, _ = synthetic(1, 4)
    dark, flat, defects, _ = build(darks, flats, full_scale_adu=4095)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for age_days, stale in ((1, False), (10, True)):
        Calibration("SIMDET-00000001", "", 96, 64, 4095, (now - dt.timedelta(days=age_days)).isoformat(), dark,
                    flat, defects).save(tmp_path)
        cal, why = calibration.for_session(Board(), tmp_path)  # type: ignore[arg-type]
        assert cal is not None  # a stale calibration is still applied, with the warning
        assert (why is not None and "10 days old" in why and "run pulseline calibrate" in why) == stale, why
    Board.board = {}
    assert "does not report its detector's serial" in calibration.for_session(Board(), tmp_path)[1]
