"""The plant (simulated hardware and ground truth): physics against SPEC 3,
determinism, noise statistics, interlocks, watchdog, faults, slot-scan
readout and the wire bytes of its lines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulseline.link.assembler_ref import unpack_line
from pulseline.link.protocol import wire
from pulseline.mpcompat import import_firmware
from pulseline.plant import EVENT_NAMES, Event, Plant, PlantConfig, Timeline
from pulseline.plant.detector import DETECTED_PHOTONS_PER_UGY, photon_counts
from pulseline.plant.generator import BIAS_LIMIT, FEEDBACK_NOISE, tube_output_ugy_per_mas
from pulseline.plant.phantom import iodine_mu_cm2_per_g, water_mu_per_cm, water_transmission
from pulseline.plant.timeline import BOOL_SIGNALS, LEVEL_DEFAULTS, LEVEL_SIGNALS

fwdose = import_firmware("pulsefw.dose")

SETTLED_US = 200_000  # after the first setpoint the HV has slewed up (20 kV/ms)


def pedal_down(tl: Timeline | None = None) -> Timeline:
    """The exposure switch held throughout: it is in the hardware chain (a
    deadman switch), and these tests are about what lies behind it."""
    return (tl if tl is not None else Timeline()).add(0, "switch", True)


def ready_plant(kv: float = 80.0, ma: float = 20.0, **config: object) -> Plant:
    plant = Plant(PlantConfig(**config), pedal_down())
    plant.generator_set(0, kv, ma)
    return plant


def frame_at(plant: Plant, t_us: int, lines: int = 64, pixels: int = 64, fmt: int = wire.FMT_MONO12P,
             width_us: int = 10_000):
    plant.detector_arm(t_us, lines, pixels, fmt)
    pulse = plant.generator_fire(t_us, width_us)
    assert pulse is not None and pulse.frame is not None
    return pulse.frame


# -- physics against SPEC 3 ---------------------------------------------------


def test_water_transmission_matches_spec():
    assert water_mu_per_cm(80.0) == pytest.approx(0.268)  # 40 keV effective
    assert water_mu_per_cm(120.0) == pytest.approx(0.206)  # 60 keV
    assert 4.7e-3 <= water_transmission(80.0, 20.0) <= 4.9e-3
    # Harder beams get through more water; iodine contrast falls with kV.
    assert water_transmission(100.0, 20.0) > water_transmission(80.0, 20.0) > water_transmission(60.0, 20.0)
    assert iodine_mu_cm2_per_g(100.0) < iodine_mu_cm2_per_g(80.0) == pytest.approx(22.10)
    assert iodine_mu_cm2_per_g(80.0) > 50 * water_mu_per_cm(80.0)


def test_tube_output_is_the_firmware_table():
    kvs = np.linspace(40.0, 125.0, 173)
    ours = tube_output_ugy_per_mas(kvs)
    theirs = [fwdose.tube_output_ugy_per_mas(float(kv)) for kv in kvs]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert tube_output_ugy_per_mas(0.0) == 0.0


def test_worked_check_through_the_meter():
    # SPEC 3: 80 kV, 20 mA, 10 ms at the reference point (0.60 m) -> 39 uGy.
    for seed in range(5):
        plant = ready_plant(seed=seed)
        pulse = plant.generator_fire(SETTLED_US, 10_000)
        assert pulse is not None
        assert pulse.kerma_ref_ugy == pytest.approx(39.0, rel=0.01)
        # The integral agrees with the per-pulse formula at the delivered means
        # (the ripple and the current edges average out).
        formula = fwdose.Geometry(256, 256).pulse_kerma_ugy(pulse.kv_mean, pulse.ma_mean, 10.0)
        assert pulse.kerma_ref_ugy == pytest.approx(formula, rel=5e-4)
        area = fwdose.Geometry(256, 256).field_area_detector_m2
        assert pulse.kap_ugy_m2 == pytest.approx(pulse.kerma_ref_ugy * 0.6**2 * area, rel=1e-9)
        assert plant.meter_kerma_ugy == pulse.kerma_ref_ugy
        assert plant.meter_kap_ugy_m2 == pulse.kap_ugy_m2


def test_detector_signal_of_the_worked_technique():
    plant = ready_plant(structures=False)
    frame = frame_at(plant, SETTLED_US, 64, 64)
    assert frame.detector_entrance_ugy == pytest.approx(14.04, rel=0.01)
    photons = frame.detector_entrance_ugy * water_transmission(80.0, 20.0) * DETECTED_PHOTONS_PER_UGY
    assert 180 < photons < 200
    # Roughly a quarter of the 12-bit full scale.
    assert 0.2 * 4095 < frame.signal_centre_adu < 0.3 * 4095


def test_meter_is_linear_in_current_and_width():
    def kerma(ma: float, width_us: int) -> float:
        plant = ready_plant(ma=ma, seed=3)
        pulse = plant.generator_fire(SETTLED_US, width_us)
        assert pulse is not None
        return pulse.kerma_ref_ugy

    assert kerma(40.0, 10_000) / kerma(10.0, 10_000) == pytest.approx(4.0, rel=1e-9)
    assert kerma(20.0, 20_000) / kerma(20.0, 5_000) == pytest.approx(4.0, rel=1e-3)
    assert kerma(0.0, 10_000) == 0.0


def test_kv_step_right_before_a_pulse_delivers_less():
    plant = ready_plant(kv=60.0, seed=1)
    plant.generator_set(SETTLED_US - 200, 120.0, 20.0)  # 60 kV to climb at 20 kV/ms: 3 ms, the pulse is 2
    pulse = plant.generator_fire(SETTLED_US, 2_000)
    assert pulse is not None
    assert 80.0 < pulse.kv_mean < 110.0
    kv_fb, _, _ = plant.generator_feedback()
    assert kv_fb == pytest.approx(pulse.kv_mean, rel=FEEDBACK_NOISE)
    at_setpoint = fwdose.Geometry(256, 256).pulse_kerma_ugy(120.0, 20.0, 2.0)
    assert pulse.kerma_ref_ugy < 0.9 * at_setpoint


def test_generator_bias_feedback_and_injected_errors():
    for seed in range(40):
        plant = ready_plant(seed=seed)
        assert abs(plant.generator.kv_bias) <= BIAS_LIMIT and abs(plant.generator.ma_bias) <= BIAS_LIMIT
        pulse = plant.generator_fire(SETTLED_US, 10_000)
        assert pulse is not None
        assert abs(pulse.kv_mean / 80.0 - 1) <= BIAS_LIMIT + 2e-4  # ripple residual over 10 ms
        assert abs(pulse.ma_mean / 20.0 - 1) <= BIAS_LIMIT + 1e-5
        kv_fb, ma_fb, width = plant.generator_feedback()
        assert width == 10_000
        assert abs(kv_fb / pulse.kv_mean - 1) <= FEEDBACK_NOISE
        assert abs(ma_fb / pulse.ma_mean - 1) <= FEEDBACK_NOISE
    tl = Timeline().add(0, "kv_error", 0.15).add(0, "ma_error", -0.10).add(SETTLED_US + 50_000, "kv_error", 0.0)
    tl.add(SETTLED_US + 50_000, "ma_error", 0.0)
    plant = Plant(PlantConfig(seed=2), pedal_down(tl))
    assert plant.generator_feedback() == (0.0, 0.0, 0)
    plant.generator_set(0, 80.0, 20.0)
    bad = plant.generator_fire(SETTLED_US, 10_000)
    good = plant.generator_fire(SETTLED_US + 100_000, 10_000)
    assert bad is not None and good is not None
    assert bad.kv_mean / good.kv_mean == pytest.approx(1.15, rel=1e-3)
    assert bad.ma_mean / good.ma_mean == pytest.approx(0.90, rel=1e-6)
    assert bad.kv_set == good.kv_set == 80.0


def test_generator_setpoint_range():
    plant = Plant(timeline=pedal_down())
    for kv, ma in [(39.9, 10.0), (125.1, 10.0), (80.0, -1.0), (80.0, 100.5), (math.nan, 10.0)]:
        with pytest.raises(ValueError, match="outside"):
            plant.generator_set(0, kv, ma)
    plant.generator_set(0, 40.0, 0.0)
    plant.generator_set(0, 125.0, 100.0)


# -- determinism and noise ------------------------------------------------------


def test_same_seed_same_frames_other_seed_differs():
    a, b, c = (ready_plant(seed=s) for s in (7, 7, 8))
    for t in (SETTLED_US, SETTLED_US + 133_333):
        fa, fb, fc = (frame_at(p, t) for p in (a, b, c))
        np.testing.assert_array_equal(fa.raw_adu, fb.raw_adu)
        np.testing.assert_array_equal(fa.expected_adu, fb.expected_adu)
        assert not np.array_equal(fa.raw_adu, fc.raw_adu)


def test_a_frame_read_out_while_its_pulse_is_on_is_that_pulses_frame():
    # A front end that clocks lines out under the beam (the emulated Pico's
    # bus) has the frame before the pulse ends: it is the frame the pulse
    # would have had, noise and all, and the pulse keeps it.
    whole = frame_at(ready_plant(seed=3), 1_000, width_us=8_000)
    plant = ready_plant(seed=3)
    plant.detector_arm(1_000, 64, 64, wire.FMT_MONO12P)
    early = plant.detector_expose(1_000, 8_000)
    assert early is not None and plant.detector_expose(1_000, 8_000) is None  # (read out once)
    np.testing.assert_array_equal(early.raw_adu, whole.raw_adu)
    pulse = plant.generator_fire(1_000, 6_000, frame=early)  # the interlock cut it at 6 ms
    assert pulse is not None and pulse.frame is early and pulse.width_us == 6_000
    # A pulse the interlock will refuse as things stand exposes nothing: the detector stays armed.
    released = Plant(PlantConfig(seed=3), Timeline())
    released.generator_set(0, 80.0, 20.0)
    released.detector_arm(1_000, 64, 64, wire.FMT_MONO12P)
    assert released.detector_expose(1_000, 8_000) is None and released.detector.armed is not None


def test_fixed_maps_do_not_depend_on_history():
    a, b = ready_plant(seed=5), ready_plant(seed=5)
    for k in range(3):
        b.generator_fire(SETTLED_US + k * 100_000, 5_000)  # control-only pulses first
    fa, fb = frame_at(a, 1_000_000), frame_at(b, 1_000_000)
    ma, mb = a.detector.maps(64, 64), b.detector.maps(64, 64)
    np.testing.assert_array_equal(ma.offset, mb.offset)
    np.testing.assert_array_equal(ma.dead, mb.dead)
    np.testing.assert_array_equal(fa.expected_adu, fb.expected_adu)


def test_quantum_and_read_noise_statistics():
    plant = ready_plant(structures=False, seed=11)
    maps = plant.detector.maps(16, 64)
    raw = np.stack([frame_at(plant, SETTLED_US + k * 100_000, 16, 64).raw_adu for k in range(60)]).astype(float)
    expected = plant.pulses[0].frame.expected_adu
    good = ~maps.dead
    signal = (expected - maps.offset)[good]  # flat: the same every pulse (bias fixed, ripple averaged)
    variance = (raw - maps.offset).var(axis=0, ddof=1)[good]
    predicted = maps.adu_per_photon[good] * signal + 2.0**2
    assert variance.mean() / predicted.mean() == pytest.approx(1.0, abs=0.1)
    assert (raw.mean(axis=0) - expected)[good].mean() == pytest.approx(0.0, abs=1.0)


@pytest.mark.parametrize("lam", [0.5, 3.0, 40.0, 190.0, 3000.0])
def test_photon_counts_are_poisson(lam):
    rng = np.random.default_rng(4)
    counts = photon_counts(np.full(200_000, lam, np.float32), rng).astype(float)
    assert np.all(counts == np.rint(counts)) and counts.min() >= 0
    assert counts.mean() == pytest.approx(lam, rel=0.01, abs=0.01)
    assert counts.var() == pytest.approx(lam, rel=0.03)
    skew = ((counts - counts.mean()) ** 3).mean() / counts.std() ** 3
    assert skew == pytest.approx(1 / math.sqrt(lam), abs=0.03)


def test_dead_pixels():
    plant = ready_plant(structures=False)
    maps = plant.detector.maps(512, 512)
    n_dead = int(maps.dead.sum())
    assert abs(n_dead - 262) < 4 * math.sqrt(262)  # 1e-3 of 512*512
    assert maps.dead_dark.any() and maps.dead_bright.any()
    frame = frame_at(plant, SETTLED_US, 512, 512)
    np.testing.assert_array_equal(frame.raw_adu[maps.dead_bright], 4095)
    np.testing.assert_array_equal(frame.raw_adu[maps.dead_dark], np.rint(maps.offset[maps.dead_dark]))


@pytest.mark.parametrize("bits, fmt", [(12, wire.FMT_MONO12P), (16, wire.FMT_MONO16)])
def test_saturation_clips_at_full_scale(bits, fmt):
    tl = Timeline().add(0, "water_cm", 2.0)
    plant = Plant(PlantConfig(adc_bits=bits, dead_fraction=0.0), pedal_down(tl))
    plant.generator_set(0, 120.0, 80.0)
    frame = frame_at(plant, SETTLED_US, 32, 32, fmt, width_us=20_000)
    full = 2**bits - 1
    assert frame.expected_adu.min() > full  # the noise-free signal is far beyond the ADC
    assert np.all(frame.raw_adu == full)
    # A normal exposure stays well inside the range at both depths.
    normal = frame_at(ready_plant(adc_bits=bits, structures=False), SETTLED_US, 32, 32, fmt)
    assert 0.2 * full < normal.signal_centre_adu < 0.3 * full


def test_mono12p_needs_a_12_bit_adc():
    plant = Plant(PlantConfig(adc_bits=16), pedal_down())
    with pytest.raises(ValueError, match="Mono12p"):
        plant.detector_arm(0, 16, 16, wire.FMT_MONO12P)


def test_structures_are_visible_but_leave_the_centre_to_the_slab():
    with_s, without = ready_plant(seed=1), ready_plant(seed=1, structures=False)
    for t in range(SETTLED_US, 40_000_000, 1_300_000):  # bolus passes, catheter advances, vessel beats
        a, b = frame_at(with_s, t, 256, 256), frame_at(without, t, 256, 256)
        assert a.signal_centre_adu == pytest.approx(b.signal_centre_adu, rel=0.03)
        seen = with_s.phantom.transmission(256, 256, t + 5_000, 80.0, 20.0) / water_transmission(80.0, 20.0)
        assert seen.min() < 0.9  # at least a 10 % dip (several noise sigmas over a structure)


def test_slab_thickness_from_the_timeline():
    tl = Timeline().add(SETTLED_US + 50_000, "water_cm", 10.0)
    plant = Plant(PlantConfig(water_cm=20.0, structures=False), pedal_down(tl))
    plant.generator_set(0, 80.0, 20.0)
    thick, thin = frame_at(plant, SETTLED_US), frame_at(plant, SETTLED_US + 100_000)
    assert plant.pulses[0].water_cm == 20.0 and plant.pulses[1].water_cm == 10.0
    assert Plant(PlantConfig(water_cm=15.0), pedal_down()).timeline.state_at(0)["water_cm"] == 15.0
    ratio = thin.signal_centre_adu / thick.signal_centre_adu
    assert ratio == pytest.approx(math.exp(0.268 * 10.0), rel=0.01)


# -- interlocks and watchdog -------------------------------------------------------


@pytest.mark.parametrize("name, value, reason", [
    ("door_closed", False, "door_open"),
    ("key_on", False, "key_off"),
    ("generator_fault", True, "generator_fault"),
])
def test_hardware_interlocks_refuse(name, value, reason):
    tl = Timeline().add(SETTLED_US, name, value).add(SETTLED_US + 1_000, name, not value)
    plant = Plant(PlantConfig(), pedal_down(tl))
    plant.generator_set(0, 80.0, 20.0)
    plant.detector_arm(SETTLED_US, 16, 16, wire.FMT_MONO16)
    assert plant.generator_fire(SETTLED_US, 10_000) is None
    assert plant.refused == [(SETTLED_US, reason)] and plant.pulses == []
    assert plant.detector.armed is not None  # a refused pulse leaves the detector armed
    if name == "generator_fault":
        assert not plant.inputs_at(SETTLED_US).generator_ready
    pulse = plant.generator_fire(SETTLED_US + 1_000, 10_000)
    assert pulse is not None and pulse.frame is not None


def test_other_refusals_and_what_hardware_does_not_check():
    plant = Plant(timeline=pedal_down())
    assert plant.generator_fire(0, 10_000) is None
    plant.generator_set(0, 80.0, 20.0)
    assert plant.generator_fire(SETTLED_US, 999) is None
    assert plant.generator_fire(SETTLED_US, 25_001) is None
    first = plant.generator_fire(SETTLED_US, 10_000)
    assert plant.generator_fire(SETTLED_US + 5_000, 10_000) is None
    assert [r for _, r in plant.refused] == ["no_technique", "width_out_of_range", "width_out_of_range", "busy"]
    assert first is not None and first.inputs.switch
    assert not first.watchdog_ok  # never started: the watchdog only refuses once expired


def test_the_exposure_switch_and_the_enable_line_are_in_the_hardware_chain():
    # A deadman switch: no pulse without it, whatever the firmware asks.
    tl = Timeline().add(SETTLED_US + 1_000, "switch", True).add(SETTLED_US + 50_000, "switch", False)
    plant = Plant(PlantConfig(), tl)
    plant.generator_set(0, 80.0, 20.0)
    assert plant.generator_fire(SETTLED_US, 10_000) is None
    assert plant.generator_fire(SETTLED_US + 2_000, 10_000) is not None
    assert plant.generator_fire(SETTLED_US + 60_000, 10_000) is None
    # The firmware leaving for the REPL drops the enable line: nothing fires,
    # switch held or not, until the board starts again.
    plant.timeline.add(SETTLED_US + 70_000, "switch", True)
    plant.emission_off(SETTLED_US + 71_000)
    assert plant.generator_fire(SETTLED_US + 80_000, 10_000) is None
    plant.board_started()
    assert plant.generator_fire(SETTLED_US + 100_000, 10_000) is not None
    assert [r for _, r in plant.refused] == ["switch_released", "switch_released", "emission_off"]
    assert plant.emission_offs == [SETTLED_US + 71_000] and len(plant.pulses) == 2


def test_watchdog_expiry_latches_until_restart():
    plant = ready_plant()
    plant.watchdog_start(0, 100_000)
    assert not plant.watchdog_expired(100_000)
    plant.watchdog_feed(90_000)
    assert not plant.watchdog_expired(190_000)
    assert plant.watchdog_expired(190_001)
    plant.watchdog_feed(190_002)  # too late: stays expired
    assert plant.watchdog_expired(190_003)
    assert plant.generator_fire(SETTLED_US, 10_000) is None
    assert plant.refused == [(SETTLED_US, "watchdog_expired")]
    plant.watchdog_start(SETTLED_US + 1_000)  # board reset; config timeout
    assert not plant.watchdog_expired(SETTLED_US + 100_000)
    pulse = plant.generator_fire(SETTLED_US + 2_000, 10_000)
    assert pulse is not None and pulse.watchdog_ok
    assert plant.watchdog_expired(SETTLED_US + 101_001)


# -- detector readout --------------------------------------------------------------


def test_line_loss_removes_exactly_n_lines_of_the_next_frame():
    tl = Timeline().add(0, "line_loss", 7)
    plant = Plant(PlantConfig(seed=9), pedal_down(tl))
    plant.generator_set(0, 80.0, 20.0)
    assert plant.generator_fire(SETTLED_US, 10_000) is not None  # no frame: nothing consumed
    t0 = SETTLED_US + 100_000
    frame = frame_at(plant, t0, 64, 32)
    assert int(frame.lost_lines.sum()) == 7
    lost = set(np.flatnonzero(frame.lost_lines).tolist())
    seen: list[int] = []
    for t in range(t0 - 10, t0 + 10_300, 37):
        idx = plant.detector_landed_indices(t).tolist()
        assert plant.detector_lines_landed(t) == len(idx)
        assert not lost & set(idx)
        assert idx[: len(seen)] == seen
        seen = idx
    assert seen == sorted(set(range(64)) - lost)
    for i in lost:
        with pytest.raises(ValueError, match="lost"):
            plant.detector_line_bytes(i)
    assert frame_at(plant, t0 + 100_000, 64, 32).lost_lines.sum() == 0


def test_readout_timeout_lands_nothing():
    t0 = SETTLED_US
    tl = Timeline().add(t0 - 1, "readout_timeout", True).add(t0 + 20_000, "readout_timeout", False)
    plant = Plant(PlantConfig(), pedal_down(tl))
    plant.generator_set(0, 80.0, 20.0)
    frame = frame_at(plant, t0, 32, 32)
    assert frame.lost_lines.all()
    assert plant.detector_lines_landed(t0 + 10_000) == 0
    assert plant.detector_done(t0 + 10_200)
    assert not frame_at(plant, t0 + 100_000, 32, 32).lost_lines.any()


def test_timeout_in_the_middle_of_a_pulse_loses_the_lines_it_covers():
    t0 = SETTLED_US
    tl = Timeline().add(t0 + 2_500, "readout_timeout", True).add(t0 + 5_000, "readout_timeout", False)
    plant = Plant(PlantConfig(), pedal_down(tl))
    plant.generator_set(0, 80.0, 20.0)
    frame = frame_at(plant, t0, 40, 8)  # a line every 250 us
    np.testing.assert_array_equal(np.flatnonzero(frame.lost_lines), np.arange(9, 19))


def test_slot_scan_is_monotonic_and_complete_at_pulse_end():
    plant = ready_plant()
    assert plant.detector_done(0) and plant.detector_lines_landed(0) == 0
    t0, width, lines = SETTLED_US, 7_000, 96
    frame_at(plant, t0, lines, 24, width_us=width)
    counts = [plant.detector_lines_landed(t) for t in range(t0 - 100, t0 + width + 300, 13)]
    assert counts == sorted(counts) and counts[0] == 0
    assert plant.detector_lines_landed(t0) == 0
    assert plant.detector_lines_landed(t0 + width // 2) == lines // 2
    assert plant.detector_lines_landed(t0 + width - 1) == lines - 1
    assert plant.detector_lines_landed(t0 + width) == lines
    assert not plant.detector_done(t0 + width + 199) and plant.detector_done(t0 + width + 200)


@pytest.mark.parametrize("fmt", [wire.FMT_MONO12P, wire.FMT_MONO16])
@pytest.mark.parametrize("pixels", [32, 33])
def test_line_bytes_round_trip(fmt, pixels):
    plant = ready_plant()
    frame = frame_at(plant, SETTLED_US, 6, pixels, fmt)
    size = wire.pixel_bytes(pixels, fmt)
    whole = plant.detector_frame_bytes()
    assert len(whole) == 6 * size
    for i in range(6):
        data = plant.detector_line_bytes(i)
        assert data == whole[i * size:(i + 1) * size]
        assert unpack_line(data, pixels, fmt) == frame.raw_adu[i].tolist()


# -- timeline ------------------------------------------------------------------------


@pytest.mark.parametrize("args, match", [
    ((0, "swtich", True), "unknown timeline event"),
    ((0, "switch", 1), "True or False"),
    ((0, "water_cm", True), "number"),
    ((-1, "switch", True), ">= 0"),
    ((1.5, "switch", True), "integer"),
    ((0, "line_loss", 2.5), "whole number"),
    ((0, "water_cm", -3.0), "0..100"),
    ((0, "kv_error", math.inf), "finite"),
    ((0, "stall", -5.0), ">= 0"),
])
def test_timeline_validation(args, match):
    with pytest.raises(ValueError, match=match) as info:
        Timeline().add(*args)
    assert "\n" not in str(info.value)


def test_timeline_builders_and_json():
    tl = Timeline().press(1_000, 500).chatter(5_000, 10, 4)
    assert [(e.t_us, e.value) for e in tl.events()] == [
        (1_000, True), (1_500, False), (5_000, True), (5_002, False), (5_004, True), (5_006, False),
        (5_008, True), (5_010, False)]
    with pytest.raises(ValueError):
        tl.press(0, 0)
    with pytest.raises(ValueError, match="Event"):
        Timeline([("not", "an", "event")])
    again = Timeline.from_json(json.loads(json.dumps(tl.to_json())))
    assert again.events() == tl.events()
    assert Timeline.from_json([[3, "line_loss", 2]]).events() == [Event(3, "line_loss", 2.0)]
    with pytest.raises(ValueError, match="lacks"):
        Timeline.from_json([{"t_us": 1, "name": "switch"}])


def test_random_timeline_is_seeded_and_valid():
    a = Timeline.random(np.random.default_rng(1), 60_000_000)
    b = Timeline.random(np.random.default_rng(1), 60_000_000)
    calm = Timeline.random(np.random.default_rng(1), 60_000_000, faults=False)
    assert a.events() == b.events() and len(a) > 50
    names = {e.name for e in a.events()}
    assert {"switch", "door_closed", "hlc_switch", "line_loss", "stall", "kv_error"} <= names <= EVENT_NAMES
    assert not {"generator_fault", "line_loss", "stall", "link_down"} & {e.name for e in calm.events()}
    Timeline.from_json(a.to_json())  # everything it makes passes validation


_VALUES = {name: st.booleans() if name in BOOL_SIGNALS else st.integers(0, 40).map(float) for name in EVENT_NAMES}
_VALUES["kv_error"] = _VALUES["ma_error"] = st.sampled_from([0.0, 0.15, -0.2])
EVENTS = st.lists(st.sampled_from(sorted(EVENT_NAMES)).flatmap(
    lambda n: st.tuples(st.integers(0, 300), st.just(n), _VALUES[n])), max_size=40)


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.lists(st.integers(-5, 320), min_size=1, max_size=20))
def test_state_lookups_agree_with_a_naive_scan(events, queries):
    tl = Timeline()
    for t, name, value in events:
        tl.add(t, name, value)
    ordered = sorted(events, key=lambda e: e[0])  # stable: ties in insertion order
    for q in queries:
        naive = dict(LEVEL_DEFAULTS)
        for t, name, value in ordered:
            if t <= q and name in LEVEL_SIGNALS:
                naive[name] = value
        assert tl.state_at(q) == naive
        later = [t for t, _, _ in events if t > q]
        assert tl.next_change_after(q) == (min(later) if later else None)
        for name in ("switch", "water_cm"):
            assert tl.value_at(name, q) == naive[name]
            assert tl.level_at_many(name, np.array([q]))[0] == float(naive[name])
