"""The plant: the simulated hardware behind the firmware's sim HAL, and the
ground truth that tests judge the firmware against.

It wires the generator, the phantom, the detector, the interlocks of the
timeline, the hardware watchdog and the reference dose meter together.
Every random draw comes from the configured seed through keyed sub-streams,
so e.g. the detector's fixed maps never depend on how many pulses came first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..mpcompat import import_firmware
from .detector import DEAD_FRACTION, Detector, DetectorSpec, FrameTruth, Readout, landing_times_us
from .generator import WIDTH_MAX_US, WIDTH_MIN_US, Generator, Waveform, tube_output_ugy_per_mas
from .phantom import Phantom
from .timeline import LEVEL_DEFAULTS, WATER_CM_MAX, WATER_CM_MIN, Timeline

_fwdose = import_firmware("pulsefw.dose")
_hal_sim = import_firmware("pulsefw.boards.sim.hal")

# Sub-stream keys under the seed (SeedSequence spawn keys).
STREAM_GENERATOR = 0  # per-unit accuracy bias
STREAM_FEEDBACK = 1  # measuring-circuit noise, one draw per pulse in order
STREAM_MAPS = 2  # detector fixed maps, keyed by geometry
STREAM_NOISE = 3  # quantum and read noise, keyed by pulse index
STREAM_LINE_LOSS = 4  # which lines a line_loss fault removes, keyed by pulse index
STREAM_DARK = 5  # read noise of dark frames, keyed by dark frame index


@dataclass
class PlantConfig:
    seed: int = 0
    water_cm: float = 20.0  # phantom slab until the timeline says otherwise
    structures: bool = True  # bolus in a tube, advancing catheter, beating vessel
    adc_bits: int = 12  # 12 or 16
    watchdog_timeout_us: int = 100_000  # used when watchdog_start is given no timeout
    field_lines: int = 256  # collimated field (for the kerma-area product) until the detector is armed
    field_pixels: int = 256
    dead_fraction: float = DEAD_FRACTION
    adu_per_photon: float | None = None  # None: the detector default for adc_bits

    def __post_init__(self) -> None:
        if self.adc_bits not in (12, 16):
            raise ValueError(f"adc_bits must be 12 or 16, got {self.adc_bits}")
        if not (math.isfinite(self.water_cm) and WATER_CM_MIN <= self.water_cm <= WATER_CM_MAX):
            raise ValueError(f"water_cm must be within {WATER_CM_MIN:g}..{WATER_CM_MAX:g} cm, got {self.water_cm}")
        if self.watchdog_timeout_us <= 0:
            raise ValueError(f"watchdog timeout must be > 0 us, got {self.watchdog_timeout_us}")

    def detector_spec(self) -> DetectorSpec:
        spec = DetectorSpec.for_bits(self.adc_bits)
        return DetectorSpec(spec.bits, spec.offset_adu, spec.offset_spread_adu, spec.read_noise_adu,
                            spec.adu_per_photon if self.adu_per_photon is None else self.adu_per_photon,
                            spec.gain_spread, self.dead_fraction)


@dataclass(frozen=True)
class InputState:
    switch: bool
    door_closed: bool
    key_on: bool
    generator_ready: bool
    hlc_switch: bool


@dataclass
class PulseTruth:
    index: int
    t_us: int
    width_us: int
    kv_set: float
    ma_set: float
    kv_mean: float  # true delivered means (kV over the gate, mA = charge / width)
    ma_mean: float
    kerma_ref_ugy: float  # reference-point air kerma, by the meter
    kap_ugy_m2: float  # kerma-area product over the collimated field
    water_cm: float  # phantom slab at the time of the pulse
    inputs: InputState  # interlocks and switch at the instant of the pulse
    watchdog_ok: bool  # watchdog started and not expired
    frame: FrameTruth | None  # set when the detector was armed for this pulse
    kv_feedback: float = 0.0  # what the generator reported for this pulse
    ma_feedback: float = 0.0

    @property
    def end_us(self) -> int:
        return self.t_us + self.width_us


class ReferenceMeter:
    """Ground-truth dosimeter: integrates output(kV(t)) * mA(t) over the
    delivered waveform, independently of any per-pulse formula."""

    def __init__(self) -> None:
        self.reference_point_m: float = _fwdose.REFERENCE_POINT_M
        self.source_image_distance_m: float = _fwdose.SOURCE_IMAGE_DISTANCE_M

    @staticmethod
    def kerma_1m_ugy(wave: Waveform) -> float:
        # uGy/mAs * mA * us, and 1 mA * us = 1e-6 mAs.
        return float(wave.weights_us @ (tube_output_ugy_per_mas(wave.kv) * wave.ma)) * 1e-6

    def at_reference_ugy(self, kerma_1m_ugy: float) -> float:
        return kerma_1m_ugy / self.reference_point_m**2  # inverse square, SPEC 3 reference point

    def at_detector_ugy(self, kerma_1m_ugy: float) -> float:
        return kerma_1m_ugy / self.source_image_distance_m**2


def _substream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@dataclass
class _Watchdog:
    started: bool = False
    expired: bool = False
    fed_us: int = 0
    timeout_us: int = 0


class Plant:
    def __init__(self, config: PlantConfig | None = None, timeline: Timeline | None = None) -> None:
        self.config = config if config is not None else PlantConfig()
        self.timeline = timeline if timeline is not None else Timeline()
        if self.timeline.defaults["water_cm"] == LEVEL_DEFAULTS["water_cm"]:
            # The slab before any water_cm event is the plant's (unless the timeline set its own).
            self.timeline.set_default("water_cm", self.config.water_cm)
        seed = self.config.seed
        self.rng = np.random.default_rng(np.random.SeedSequence(seed))  # free for callers; the plant uses sub-streams
        self.generator = Generator(_substream(seed, STREAM_GENERATOR))
        self.phantom = Phantom(self.config.structures)
        self.detector = Detector(self.config.detector_spec(), seed, STREAM_MAPS)
        self.meter = ReferenceMeter()
        self.pulses: list[PulseTruth] = []
        self.refused: list[tuple[int, str]] = []
        self.meter_kerma_ugy = 0.0
        self.meter_kap_ugy_m2 = 0.0
        self._feedback_rng = _substream(seed, STREAM_FEEDBACK)
        self._feedback: tuple[float, float, int] = (0.0, 0.0, 0)
        self._field = (self.config.field_lines, self.config.field_pixels)
        self._field_area_m2: dict[tuple[int, int], float] = {}
        self._line_loss_after_us = -1
        self._wd = _Watchdog()
        self.dark_frames: list[FrameTruth] = []  # readouts with the beam off, in order
        # The generator's enable line: dropped by the firmware on its way out
        # (to the REPL, or a reset), raised only by the board starting again.
        self.emission_enabled = True
        self.emission_offs: list[int] = []  # plant time of each emission_off

    def identity(self) -> tuple[str, str]:
        """(board serial, detector serial): the simulated hardware is drawn
        from the seed, so the seed is its identity."""
        serials: tuple[str, str] = tuple(_hal_sim.sim_identity(self.config.seed & 0xFFFFFFFF))
        return serials

    # -- inputs ------------------------------------------------------------

    def inputs_at(self, t_us: int) -> InputState:
        s = self.timeline.state_at(t_us)
        return InputState(bool(s["switch"]), bool(s["door_closed"]), bool(s["key_on"]),
                          bool(s["generator_ready"]) and not s["generator_fault"], bool(s["hlc_switch"]))

    def next_event_after(self, t_us: int) -> int | None:
        return self.timeline.next_change_after(t_us)

    def water_cm_at(self, t_us: int) -> float:
        return float(self.timeline.value_at("water_cm", t_us))

    def status(self, t_us: int) -> dict[str, Any]:
        """What a simulated board reports of its plant at t_us: pulses, the
        reference meter, the inputs and the phantom."""
        s = self.inputs_at(t_us)
        return {"t_us": t_us, "pulses": len(self.pulses), "meter_kerma_ugy": self.meter_kerma_ugy,
                "meter_kap_ugy_m2": self.meter_kap_ugy_m2, "switch": s.switch, "door_closed": s.door_closed,
                "key_on": s.key_on, "generator_ready": s.generator_ready, "hlc_switch": s.hlc_switch,
                "water_cm": self.water_cm_at(t_us), "structures": bool(self.timeline.value_at("structures", t_us))}

    # -- watchdog ------------------------------------------------------------

    def watchdog_start(self, t_us: int, timeout_us: int | None = None) -> None:
        """(Re)start the hardware watchdog: a board reset clears an expiry."""
        timeout = self.config.watchdog_timeout_us if timeout_us is None else timeout_us
        if timeout <= 0:
            raise ValueError(f"watchdog timeout must be > 0 us, got {timeout}")
        self._wd = _Watchdog(True, False, t_us, timeout)

    def watchdog_stop(self, t_us: int) -> None:
        """The firmware disables the watchdog on its way to the REPL (the
        RP2040's can be, through its control register), so a board at the
        prompt is not reset under mpremote."""
        if not self.watchdog_expired(t_us):
            self._wd = _Watchdog()

    def watchdog_reset(self) -> None:
        """The board was reset (by the watchdog or otherwise): the watchdog
        is off, expiry cleared, until the firmware starts it again."""
        self._wd = _Watchdog()

    def watchdog_feed(self, t_us: int) -> None:
        # A late feed cannot revive an expired watchdog.
        if self._wd.started and not self.watchdog_expired(t_us):
            self._wd.fed_us = max(self._wd.fed_us, t_us)

    @property
    def watchdog_fed_us(self) -> int | None:
        """Plant time of the running watchdog's last feed (None: not running)."""
        return self._wd.fed_us if self._wd.started else None

    def watchdog_expired(self, t_us: int) -> bool:
        wd = self._wd
        if wd.started and not wd.expired and t_us - wd.fed_us > wd.timeout_us:
            wd.expired = True
        return wd.expired

    # -- generator -------------------------------------------------------------

    def generator_set(self, t_us: int, kv: float, ma: float) -> None:
        self.generator.set(t_us, kv, ma)

    def generator_feedback(self) -> tuple[float, float, int]:
        return self._feedback

    def emission_off(self, t_us: int) -> None:
        """The firmware drops the generator's enable: nothing fires until
        the board starts again (board_started)."""
        self.emission_enabled = False
        self.emission_offs.append(t_us)

    def board_started(self) -> None:
        """The board (re)started, its firmware about to run: the enable line
        comes up with it."""
        self.emission_enabled = True

    def _refusals(self, t_us: int, width_us: int) -> list[str]:
        # The hardware interlock chain, in series with the gate whatever the
        # firmware does: the exposure switch (a deadman switch, as wired on a
        # real generator), door, key, generator, watchdog and enable line.
        reasons = []
        if not self.emission_enabled:
            reasons.append("emission_off")
        if not self.generator.has_technique:
            reasons.append("no_technique")
        if not WIDTH_MIN_US <= width_us <= WIDTH_MAX_US:
            reasons.append("width_out_of_range")
        if self.watchdog_expired(t_us):
            reasons.append("watchdog_expired")
        s = self.timeline.state_at(t_us)
        if not s["switch"]:
            reasons.append("switch_released")
        if s["generator_fault"]:
            reasons.append("generator_fault")
        if not s["door_closed"]:
            reasons.append("door_open")
        if not s["key_on"]:
            reasons.append("key_off")
        if self.pulses and t_us < self.pulses[-1].end_us:
            reasons.append("busy")  # the one-shot is still running
        return reasons

    def generator_fire(self, t_us: int, width_us: int, frame: FrameTruth | None = None) -> PulseTruth | None:
        """The hardware one-shot. None (and an entry in `refused`) when the
        interlock chain or the watchdog blocks it; otherwise the pulse truth.
        `frame`: the pulse's frame, read out already (detector_expose)."""
        reasons = self._refusals(t_us, width_us)
        if reasons:
            self.refused.append((t_us, ",".join(reasons)))
            return None
        index = len(self.pulses)
        s = self.timeline.state_at(t_us)
        wave = self.generator.waveform(t_us, width_us, float(s["kv_error"]), float(s["ma_error"]))
        kerma_1m = self.meter.kerma_1m_ugy(wave)
        kerma_ref = self.meter.at_reference_ugy(kerma_1m)
        entrance = self.meter.at_detector_ugy(kerma_1m)
        kv_mean, ma_mean = wave.kv_mean, wave.ma_mean
        kv_fb, ma_fb = Generator.feedback(wave, self._feedback_rng)
        self._feedback = (kv_fb, ma_fb, width_us)
        water_cm = self.water_cm_at(t_us)
        if frame is None and self.detector.armed is not None:
            frame = self._expose(index, t_us, width_us, kv_mean, entrance, water_cm)
        truth = PulseTruth(
            index=index, t_us=t_us, width_us=width_us, kv_set=self.generator.kv_set, ma_set=self.generator.ma_set,
            kv_mean=kv_mean, ma_mean=ma_mean, kerma_ref_ugy=kerma_ref,
            kap_ugy_m2=entrance * self._field_area(), water_cm=water_cm, inputs=self.inputs_at(t_us),
            watchdog_ok=self._wd.started and not self._wd.expired, frame=frame, kv_feedback=kv_fb, ma_feedback=ma_fb)
        self.pulses.append(truth)
        self.meter_kerma_ugy += truth.kerma_ref_ugy
        self.meter_kap_ugy_m2 += truth.kap_ugy_m2
        return truth

    def _field_area(self) -> float:
        # The collimator matches the detector's readout area (SPEC 2.5 KAP).
        if self._field not in self._field_area_m2:
            lines, pixels = self._field
            self._field_area_m2[self._field] = float(_fwdose.Geometry(pixels, lines).field_area_detector_m2)
        return self._field_area_m2[self._field]

    # -- detector ----------------------------------------------------------------

    def detector_arm(self, t_us: int, lines: int, pixels: int, pixel_format: int) -> None:
        """The next emitted pulse is read out into a frame of this geometry."""
        self.detector.arm(lines, pixels, pixel_format)
        self._field = (lines, pixels)

    def _expose(self, index: int, t_us: int, width_us: int, kv_mean: float, entrance_ugy: float,
                water_cm: float) -> FrameTruth:
        assert self.detector.armed is not None
        lines, pixels, pixel_format = self.detector.armed
        self.detector.armed = None
        lost = np.zeros(lines, np.bool_)
        n_lost = int(sum(self.timeline.impulses_between("line_loss", self._line_loss_after_us, t_us)))
        self._line_loss_after_us = t_us
        if n_lost:
            rng = _substream(self.config.seed, STREAM_LINE_LOSS, index)
            lost[rng.choice(lines, size=min(n_lost, lines), replace=False)] = True
        timeout = self.timeline.level_at_many("readout_timeout", landing_times_us(t_us, width_us, lines))
        lost |= timeout > 0.5
        # The scene moves little within a pulse: take it at mid-pulse.
        mid_us = t_us + width_us // 2
        transmission = self.phantom.transmission(lines, pixels, mid_us, kv_mean, water_cm,
                                                 bool(self.timeline.value_at("structures", mid_us)))
        frame = self.detector.render(entrance_ugy, transmission, pixel_format, lost,
                                     _substream(self.config.seed, STREAM_NOISE, index))
        self.detector.readout = Readout(frame, t_us, width_us)
        return frame

    def detector_expose(self, t_us: int, width_us: int) -> FrameTruth | None:
        """The armed frame of a pulse that has begun and is not over: a
        front end that clocks its lines out while the beam is on (the
        emulated Pico's bus) needs its pixels now. It is the pulse as
        planned (width_us from t_us), with the noise the pulse will have;
        generator_fire(t_us, delivered width, frame=) records it with the
        pulse. None (the detector stays armed) when the pulse will be
        refused as it stands, or none is armed."""
        if self.detector.armed is None or self._refusals(t_us, width_us):
            return None
        s = self.timeline.state_at(t_us)
        wave = self.generator.waveform(t_us, width_us, float(s["kv_error"]), float(s["ma_error"]))
        entrance = self.meter.at_detector_ugy(self.meter.kerma_1m_ugy(wave))
        return self._expose(len(self.pulses), t_us, width_us, wave.kv_mean, entrance, self.water_cm_at(t_us))

    def detector_dark(self, t_us: int, width_us: int) -> FrameTruth:
        """Read the armed frame with the beam off (offset and read noise
        only): the line clock runs as for a pulse of width_us."""
        if self.detector.armed is None:
            raise ValueError("the detector is not armed")
        if not 1 <= width_us <= 1_000_000:
            raise ValueError(f"dark readout width {width_us} us outside 1..1000000")
        lines, pixels, pixel_format = self.detector.armed
        self.detector.armed = None
        lost = self.timeline.level_at_many("readout_timeout", landing_times_us(t_us, width_us, lines)) > 0.5
        frame = self.detector.render(0.0, np.zeros((lines, pixels)), pixel_format, lost,
                                     _substream(self.config.seed, STREAM_DARK, len(self.dark_frames)))
        self.dark_frames.append(frame)
        self.detector.readout = Readout(frame, t_us, width_us)
        return frame

    def _readout(self) -> Readout:
        if self.detector.readout is None:
            raise ValueError("no frame has been exposed yet")
        return self.detector.readout

    def detector_lines_landed(self, t_us: int) -> int:
        """Landed (non-lost) lines of the last exposed frame by t_us."""
        r = self.detector.readout
        return 0 if r is None else r.landed_count(t_us)

    def detector_landed_indices(self, t_us: int) -> npt.NDArray[np.intp]:
        r = self.detector.readout
        return np.zeros(0, np.intp) if r is None else r.landed_indices(t_us)

    def detector_done(self, t_us: int) -> bool:
        """The last exposed frame's readout is over (true before any exposure)."""
        r = self.detector.readout
        return True if r is None else r.done(t_us)

    def detector_readout_lines(self) -> int:
        return self._readout().frame.lines

    def detector_line_bytes(self, line_index: int) -> bytes:
        return self._readout().line_bytes(line_index)

    def detector_frame_bytes(self) -> bytes:
        return self._readout().frame_bytes()


__all__ = ["FrameTruth", "InputState", "Plant", "PlantConfig", "PulseTruth", "ReferenceMeter"]
