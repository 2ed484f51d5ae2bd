"""Line-scan detector: fixed-pattern maps, quantum and read noise, the ADC,
and the slot-scan readout that lands lines during the pulse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..link.protocol import wire
from ..link.streamgen import pack_pixels
from ..mpcompat import import_firmware

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U16 = npt.NDArray[np.uint16]
Bools = npt.NDArray[np.bool_]
Indices = npt.NDArray[np.intp]

PIXEL_PITCH_MM: float = import_firmware("pulsefw.dose").PIXEL_PITCH_MM  # 0.4 mm, SPEC 3
# SPEC 3: ~3.0e4 photons/mm^2 per uGy at 80 kV behind 20 cm water; QE 0.6.
# Held constant over kV (the fluence per kerma of a hardened beam varies
# slowly next to the transmission and tube output, which dominate).
PHOTONS_PER_MM2_PER_UGY = 3.0e4
QUANTUM_EFFICIENCY = 0.6
DETECTED_PHOTONS_PER_UGY = PHOTONS_PER_MM2_PER_UGY * PIXEL_PITCH_MM**2 * QUANTUM_EFFICIENCY  # per pixel

# Analogue chain, in 12-bit ADU; a 16-bit ADC digitises the same range 16x finer.
# 5 ADU per photon: the SPEC 3 worked technique (80 kV, 20 mA, 10 ms, 20 cm
# water: ~0.066 uGy, ~190 detected photons per pixel) reads ~950 ADU above
# offset, about a quarter of full scale, leaving headroom for thin patients.
OFFSET_ADU_12 = 100.0
OFFSET_SPREAD_ADU_12 = 3.0
READ_NOISE_ADU_12 = 2.0
ADU_PER_PHOTON_12 = 5.0
GAIN_SPREAD = 0.03
DEAD_FRACTION = 1e-3  # half stuck dark (at offset), half stuck bright (full scale)

EXACT_POISSON_BELOW = 50.0  # photons; see photon_counts
READOUT_TAIL_US = 200  # readout over this long after the pulse ends


@dataclass(frozen=True)
class DetectorSpec:
    bits: int = 12
    offset_adu: float = OFFSET_ADU_12
    offset_spread_adu: float = OFFSET_SPREAD_ADU_12
    read_noise_adu: float = READ_NOISE_ADU_12
    adu_per_photon: float = ADU_PER_PHOTON_12
    gain_spread: float = GAIN_SPREAD
    dead_fraction: float = DEAD_FRACTION

    def __post_init__(self) -> None:
        if self.bits not in (12, 16):
            raise ValueError(f"ADC bits must be 12 or 16, got {self.bits}")
        if not 0.0 <= self.dead_fraction <= 1.0:
            raise ValueError(f"dead pixel fraction must be within 0..1, got {self.dead_fraction}")

    @classmethod
    def for_bits(cls, bits: int) -> DetectorSpec:
        """Defaults for an ADC of this depth (12-bit values scaled)."""
        scale = 2.0 ** (bits - 12) if bits in (12, 16) else 1.0
        return cls(bits, OFFSET_ADU_12 * scale, OFFSET_SPREAD_ADU_12 * scale, READ_NOISE_ADU_12 * scale,
                   ADU_PER_PHOTON_12 * scale)

    @property
    def full_scale(self) -> int:
        return int(2**self.bits - 1)


@dataclass(frozen=True)
class DetectorMaps:
    """Fixed per-pixel properties of one readout geometry."""

    offset: F32  # ADU
    gain: F32  # relative, ~1
    adu_per_photon: F32  # gain * spec.adu_per_photon
    dead_dark: Bools  # stuck at (rounded) offset
    dead_bright: Bools  # stuck at full scale

    @property
    def dead(self) -> Bools:
        out: Bools = self.dead_dark | self.dead_bright
        return out


@dataclass
class FrameTruth:
    lines: int
    pixels: int
    pixel_format: int  # wire.FMT_MONO16 (1) or wire.FMT_MONO12P (2)
    expected_adu: F32  # noise-free response of working pixels: offset + gain * mean signal
    raw_adu: U16  # what the ADC produced, lost lines included
    lost_lines: Bools  # lines that never landed
    detector_entrance_ugy: float  # air kerma at the detector entrance without phantom
    signal_centre_adu: float  # mean of (expected - offset) over the central quarter


def photon_counts(mean: F32, rng: np.random.Generator) -> F32:
    """Poisson photon counts (as float32) for per-pixel means.

    Exact Poisson below EXACT_POISSON_BELOW photons. Above it, where numpy's
    exact sampler would dominate the frame time, the Cornish-Fisher expansion
    lam + sqrt(lam) z + (z^2 - 1)/6, rounded: mean lam, variance lam + 1/18,
    skewness 1/sqrt(lam) as Poisson's (next terms are O(1/lam))."""
    z = rng.standard_normal(mean.shape, np.float32)
    counts = mean + np.sqrt(mean) * z + (z * z - np.float32(1.0)) * np.float32(1.0 / 6.0)
    np.rint(counts, out=counts)
    np.maximum(counts, 0, out=counts)
    low = mean < EXACT_POISSON_BELOW
    if low.any():
        counts[low] = rng.poisson(mean[low])
    return counts


def landing_times_us(start_us: int, width_us: int, lines: int) -> npt.NDArray[np.int64]:
    """Slot scan: line i lands when its slot, (i+1)/lines of the pulse, is over."""
    return start_us + -(-(np.arange(1, lines + 1, dtype=np.int64) * width_us) // lines)


class Readout:
    """The last exposed frame as it lands, and its wire bytes."""

    def __init__(self, frame: FrameTruth, start_us: int, width_us: int) -> None:
        self.frame = frame
        self.start_us = start_us
        self.width_us = width_us
        kept = ~frame.lost_lines
        self._order: Indices = np.flatnonzero(kept)
        self._order.flags.writeable = False
        self._prefix = np.concatenate([[0], np.cumsum(kept)])
        self._line_size = wire.pixel_bytes(frame.pixels, frame.pixel_format)
        self._packed: bytes | None = None

    def landed_count(self, t_us: int) -> int:
        lines = self.frame.lines
        slots = min(max((t_us - self.start_us) * lines // self.width_us, 0), lines)
        return int(self._prefix[slots])

    def landed_indices(self, t_us: int) -> Indices:
        return self._order[: self.landed_count(t_us)]

    def done(self, t_us: int) -> bool:
        return t_us >= self.start_us + self.width_us + READOUT_TAIL_US

    def frame_bytes(self) -> bytes:
        """All lines in wire format; lost lines zero-filled (they never landed)."""
        if self._packed is None:
            raw = self.frame.raw_adu
            if self.frame.lost_lines.any():
                raw = raw.copy()
                raw[self.frame.lost_lines] = 0
            self._packed = pack_pixels(raw, self.frame.pixel_format)
        return self._packed

    def line_bytes(self, line_index: int) -> bytes:
        if not 0 <= line_index < self.frame.lines:
            raise ValueError(f"line {line_index} outside the frame's {self.frame.lines} lines")
        if self.frame.lost_lines[line_index]:
            raise ValueError(f"line {line_index} was lost: it never landed")
        start = line_index * self._line_size
        return self.frame_bytes()[start:start + self._line_size]


class Detector:
    def __init__(self, spec: DetectorSpec, seed: int, maps_stream: int) -> None:
        self.spec = spec
        self._seed = seed
        self._maps_stream = maps_stream
        self._maps: dict[tuple[int, int], DetectorMaps] = {}
        self.armed: tuple[int, int, int] | None = None  # (lines, pixels, pixel_format)
        self.readout: Readout | None = None

    def maps(self, lines: int, pixels: int) -> DetectorMaps:
        """Fixed maps of a geometry, drawn from their own seed stream so that
        they never depend on what happened before."""
        key = (lines, pixels)
        if key not in self._maps:
            seq = np.random.SeedSequence(self._seed, spawn_key=(self._maps_stream, lines, pixels))
            rng = np.random.default_rng(seq)
            s = self.spec
            shape = (lines, pixels)
            offset = (s.offset_adu + s.offset_spread_adu * rng.standard_normal(shape)).astype(np.float32)
            gain = np.clip(1.0 + s.gain_spread * rng.standard_normal(shape), 0.5, 1.5).astype(np.float32)
            dead = rng.random(shape) < s.dead_fraction
            bright = dead & (rng.random(shape) < 0.5)
            maps = DetectorMaps(offset, gain, (gain * np.float32(s.adu_per_photon)).astype(np.float32),
                                dead & ~bright, bright)
            for arr in (maps.offset, maps.gain, maps.adu_per_photon, maps.dead_dark, maps.dead_bright):
                arr.flags.writeable = False
            self._maps[key] = maps
        return self._maps[key]

    def arm(self, lines: int, pixels: int, pixel_format: int) -> None:
        if not 1 <= lines <= wire.MAX_LINES_PER_FRAME:
            raise ValueError(f"lines {lines} outside 1..{wire.MAX_LINES_PER_FRAME}")
        if not 1 <= pixels <= wire.MAX_PIXELS_PER_LINE:
            raise ValueError(f"pixels {pixels} outside 1..{wire.MAX_PIXELS_PER_LINE}")
        if pixel_format not in (wire.FMT_MONO16, wire.FMT_MONO12P):
            raise ValueError(f"unknown pixel format {pixel_format}")
        if pixel_format == wire.FMT_MONO12P and self.spec.bits > 12:
            raise ValueError(f"Mono12p carries 12 bits; this detector's ADC has {self.spec.bits}")
        self.armed = (lines, pixels, pixel_format)

    def render(self, kerma_entrance_ugy: float, transmission: F64, pixel_format: int, lost_lines: Bools,
               noise_rng: np.random.Generator) -> FrameTruth:
        """One exposed frame: mean photons, quantum noise, gain, offset, read
        noise, rounding, clipping, dead pixels."""
        lines, pixels = transmission.shape
        maps = self.maps(lines, pixels)
        full = self.spec.full_scale
        photons_mean = ((kerma_entrance_ugy * DETECTED_PHOTONS_PER_UGY) * transmission).astype(np.float32)
        signal = maps.adu_per_photon * photons_mean
        expected = maps.offset + signal
        counts = photon_counts(photons_mean, noise_rng)
        adu = maps.offset + maps.adu_per_photon * counts
        adu += np.float32(self.spec.read_noise_adu) * noise_rng.standard_normal(adu.shape, np.float32)
        np.rint(adu, out=adu)
        np.clip(adu, 0, full, out=adu)
        raw = adu.astype(np.uint16)
        raw[maps.dead_dark] = np.rint(maps.offset[maps.dead_dark]).astype(np.uint16)
        raw[maps.dead_bright] = full
        l0, p0 = lines // 4, pixels // 4
        centre = signal[l0:l0 + max(1, lines // 2), p0:p0 + max(1, pixels // 2)]
        return FrameTruth(lines, pixels, pixel_format, expected, raw, lost_lines, kerma_entrance_ugy,
                          float(centre.mean(dtype=np.float64)))
