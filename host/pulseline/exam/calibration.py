"""Detector calibration: dark frames (beam off), flat frames (open beam),
and the offset, gain and defective-pixel maps made from them.

The maps come from statistics alone, never from a hand list:
  * offset: the mean of the dark frames;
  * gain: the mean of the flat frames minus the offset, relative to its
    median (the assembler applies (raw - dark) / (flat - dark), scaled so
    that a corrected frame reads ADU above offset at the median gain);
  * defective pixels: a pixel is defective when any of these holds
      - its gain is far from the others (beyond GAIN_SIGMAS robust standard
        deviations, and at least GAIN_MIN_DEVIATION): dead, stuck or weak;
      - its dark level is far from the others (OFFSET_SIGMAS): stuck bright;
      - its flat-field noise over time is far below or above what the
        others show (NOISE_LOW, NOISE_HIGH times the median): stuck pixels
        do not fluctuate, flickering ones fluctuate too much.
    The thresholds sit many standard deviations out: with tens of
    thousands of working pixels, none is flagged by chance.

A calibration belongs to one detector (its serial number, from the board)
and one readout geometry; it is stored with its date, and a capture warns
when the one it would use is missing or older than MAX_AGE_DAYS.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import PulselineError
from ..link.frames import Frame
from ..link.session import Session, SessionError

F32 = npt.NDArray[np.float32]

MAX_AGE_DAYS = 7.0  # a gain calibration older than this is stale (offset drift, tube ageing)
GAIN_SIGMAS = 8.0
GAIN_MIN_DEVIATION = 0.10
OFFSET_SIGMAS = 8.0
OFFSET_MIN_DEVIATION_FS = 0.01  # of full scale
NOISE_LOW = 0.25
NOISE_HIGH = 4.0
FLAT_TARGET_FRACTION = 0.5  # flat-field signal: this fraction of the range above offset
MIN_SAMPLES_FRACTION = 0.5  # a pixel needs data in at least this share of the frames
FORMAT_VERSION = 1


class CalibrationError(PulselineError):
    """Calibration could not be made or used: one clear line."""


def calibration_dir() -> Path:
    """Where calibrations live: $PULSELINE_CALIBRATION_DIR, else the user's
    data directory (calibrations belong to the workstation's detectors, not
    to a working directory)."""
    env = os.environ.get("PULSELINE_CALIBRATION_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pulseline" / "calibration"


def file_name(detector_serial: str, pixels_per_line: int, lines_per_frame: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in detector_serial) or "unknown"
    return f"{safe}-{pixels_per_line}x{lines_per_frame}.npz"


def robust_sigma(values: npt.NDArray[Any]) -> float:
    """Standard deviation from the median absolute deviation (outliers do
    not inflate it)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


@dataclass
class Calibration:
    detector_serial: str
    board_serial: str
    pixels_per_line: int
    lines_per_frame: int
    full_scale_adu: int
    created: str  # ISO 8601, UTC
    dark: F32  # mean dark level, ADU
    flat: F32  # mean flat level, ADU
    defects: npt.NDArray[np.uint8]  # 1: defective pixel
    firmware: str = ""
    technique: dict[str, float] = field(default_factory=dict)  # of the flat frames
    dark_frames: int = 0
    flat_frames: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from or saved to

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lines_per_frame, self.pixels_per_line)

    @property
    def defect_count(self) -> int:
        return int(self.defects.sum())

    def age_days(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (now - dt.datetime.fromisoformat(self.created)).total_seconds() / 86400.0

    def corrections(self) -> dict[str, Any]:
        """The assembler's dark, flat and defect maps. The flat is scaled so
        that (raw - dark) / (flat - dark) reads ADU above offset at the
        median gain, the same scale as the raw signal."""
        span = self.flat - self.dark
        median = float(np.median(span[self.defects == 0])) if (self.defects == 0).any() else 1.0
        flat = (self.dark + span / np.float32(median)).astype(np.float32)
        return {"dark": self.dark, "flat": flat, "defect_map": self.defects}

    def describe(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """What a summary records about the calibration used."""
        return {"file": str(self.path) if self.path else None, "detector_serial": self.detector_serial,
                "geometry": [self.pixels_per_line, self.lines_per_frame], "created": self.created,
                "age_days": round(self.age_days(now), 3), "defective_pixels": self.defect_count,
                "dark_frames": self.dark_frames, "flat_frames": self.flat_frames, "technique": self.technique}

    # -- storage ------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "detector_serial": self.detector_serial, "board_serial": self.board_serial,
                "pixels_per_line": self.pixels_per_line, "lines_per_frame": self.lines_per_frame,
                "full_scale_adu": self.full_scale_adu, "created": self.created, "firmware": self.firmware,
                "technique": self.technique, "dark_frames": self.dark_frames, "flat_frames": self.flat_frames,
                "stats": self.stats}

    def save(self, directory: Path | None = None) -> Path:
        """Write atomically (a crash never leaves half a calibration)."""
        directory = directory or calibration_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / file_name(self.detector_serial, self.pixels_per_line, self.lines_per_frame)
        tmp = path.with_suffix(".tmp.npz")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, dark=self.dark, flat=self.flat, defects=self.defects,
                                meta=np.frombuffer(json.dumps(self.meta()).encode(), np.uint8))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            with np.load(path) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                dark, flat, defects = z["dark"], z["flat"], z["defects"]
        except (OSError, ValueError, KeyError) as exc:
            raise CalibrationError(f"cannot read calibration {path}: {exc}") from None
        if meta.get("format") != FORMAT_VERSION:
            raise CalibrationError(f"calibration {path} has format {meta.get('format')}, "
                                   f"this host reads {FORMAT_VERSION}: calibrate again")
        shape = (int(meta["lines_per_frame"]), int(meta["pixels_per_line"]))
        if dark.shape != shape or flat.shape != shape or defects.shape != shape:
            raise CalibrationError(f"calibration {path} is damaged: its maps are not {shape[1]} x {shape[0]}")
        return cls(meta["detector_serial"], meta["board_serial"], shape[1], shape[0], int(meta["full_scale_adu"]),
                   meta["created"], dark.astype(np.float32), flat.astype(np.float32), defects.astype(np.uint8),
                   meta.get("firmware", ""), meta.get("technique", {}), int(meta.get("dark_frames", 0)),
                   int(meta.get("flat_frames", 0)), meta.get("stats", {}), path)


def find(detector_serial: str, pixels_per_line: int, lines_per_frame: int,
         directory: Path | None = None) -> Calibration | None:
    """The stored calibration of this detector and geometry, if any."""
    path = (directory or calibration_dir()) / file_name(detector_serial, pixels_per_line, lines_per_frame)
    return Calibration.load(path) if path.exists() else None


def for_session(session: Session, directory: Path | None = None,
                now: dt.datetime | None = None) -> tuple[Calibration | None, str | None]:
    """The calibration for the board's detector and geometry, and a warning
    when it is missing or stale (a stale one is still returned)."""
    serial = str(session.board.get("detector_serial") or "")
    c = session.config
    pixels, lines = int(c["pixels_per_line"]), int(c["lines_per_frame"])
    if not serial:
        return None, "the board does not report its detector's serial number: frames are not corrected"
    cal = find(serial, pixels, lines, directory)
    if cal is None:
        return None, (f"no calibration for detector {serial} at {pixels} x {lines}: frames are saved uncorrected "
                      "(run: pulseline calibrate)")
    age = cal.age_days(now)
    if age > MAX_AGE_DAYS:
        return cal, (f"the calibration of detector {serial} is {age:.0f} days old (from {cal.created[:10]}; "
                     f"stale after {MAX_AGE_DAYS:g}): run pulseline calibrate")
    if age < -1.0 / 24:
        return cal, f"the calibration of detector {serial} is dated in the future ({cal.created}): check the clock"
    return cal, None


# -- the maps ------------------------------------------------------------------------


def stack(frames: list[Frame]) -> F32:
    """Frames as one float stack; pixels of lines that never arrived are NaN."""
    out = np.stack([np.asarray(f.pixels, np.float32) for f in frames])
    for k, f in enumerate(frames):
        out[k][~f.line_received] = np.nan
    return out


def build(darks: F32, flats: F32, *, full_scale_adu: int) -> tuple[F32, F32, npt.NDArray[np.uint8], dict[str, Any]]:
    """(dark, flat, defects, stats) from stacks of dark and flat frames."""
    if darks.shape[0] < 2 or flats.shape[0] < 2:
        raise CalibrationError("calibration needs at least 2 dark and 2 flat frames")
    for name, s in (("dark", darks), ("flat", flats)):
        samples = np.isfinite(s).sum(axis=0)
        if (samples < max(2, MIN_SAMPLES_FRACTION * s.shape[0])).any():
            raise CalibrationError(f"too many lines were lost during the {name} frames: calibrate again")
    with np.errstate(invalid="ignore"):
        dark = np.nanmean(darks, axis=0).astype(np.float32)
        flat = np.nanmean(flats, axis=0).astype(np.float32)
        flat_noise = np.nanstd(flats, axis=0, ddof=1).astype(np.float32)
    span = flat - dark
    median_span = float(np.median(span))
    if median_span <= 0.02 * full_scale_adu:
        raise CalibrationError(f"the flat frames are hardly brighter than the dark ones ({median_span:.1f} ADU): "
                               "is the beam on and the field open?")
    saturated = float(np.mean(flat >= full_scale_adu - 0.5))
    if saturated > 0.01:
        raise CalibrationError(f"{saturated:.0%} of the flat field is saturated: lower the technique")
    gain = span / np.float32(median_span)
    gain_sigma = robust_sigma(gain)
    gain_limit = max(GAIN_SIGMAS * gain_sigma, GAIN_MIN_DEVIATION)
    bad_gain = ~(np.abs(gain - np.median(gain)) <= gain_limit)
    dark_median = float(np.median(dark))
    offset_limit = max(OFFSET_SIGMAS * robust_sigma(dark), OFFSET_MIN_DEVIATION_FS * full_scale_adu)
    bad_offset = ~(np.abs(dark - dark_median) <= offset_limit)
    noise_median = float(np.median(flat_noise))
    bad_noise = ~((flat_noise >= NOISE_LOW * noise_median) & (flat_noise <= NOISE_HIGH * noise_median))
    defects = (bad_gain | bad_offset | bad_noise).astype(np.uint8)
    stats = {"dark_median_adu": round(dark_median, 3), "flat_signal_median_adu": round(median_span, 3),
             "gain_robust_sigma": round(gain_sigma, 5), "flat_noise_median_adu": round(noise_median, 3),
             "defective": {"gain": int(bad_gain.sum()), "offset": int(bad_offset.sum()),
                           "noise": int(bad_noise.sum()), "total": int(defects.sum())},
             "thresholds": {"gain": round(gain_limit, 5), "offset_adu": round(offset_limit, 3),
                            "noise_low": NOISE_LOW, "noise_high": NOISE_HIGH}}
    return dark, flat, defects, stats


# -- acquisition on a board ---------------------------------------------------------------


def dark_frames(session: Session, n: int, timeout_s: float | None = None) -> list[Frame]:
    """n frames read with the beam off (the board must be disarmed)."""
    pps = float(session.config.get("pulses_per_s", 7.5))
    limit = timeout_s if timeout_s is not None else n / pps * 2.0 + 5.0
    while session.next_frame(0) is not None:
        pass  # leftovers of an earlier exposure are not dark frames
    try:
        session.command("dark_frames", {"frames": n})
    except SessionError as exc:
        raise CalibrationError(f"the board does not read dark frames: {exc}") from None
    got: list[Frame] = []
    deadline = time.monotonic() + limit
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0 or session.error:
            raise CalibrationError(session.error or f"only {len(got)} of {n} dark frames within {limit:.0f} s")
        f = session.next_frame(min(left, 0.25))
        if f is not None and f.trailer is not None and f.trailer.kv == 0 and f.trailer.pulse_id == 0:
            got.append(f)
    return got


Log = Callable[[str], None]


def _median_signal(frames: list[Frame], dark: F32) -> float:
    return float(np.nanmedian(stack(frames) - dark[None]))


def calibrate(session: Session, *, dark_count: int = 16, flat_count: int = 32, kv: float = 60.0,
              pulse_width_ms: float | None = None, expose: Callable[[int], list[Frame]],
              log: Log = lambda m: None, full_scale_adu: int | None = None) -> Calibration:
    """Dark frames, then flat frames at a technique that puts the open field
    at FLAT_TARGET_FRACTION of the range, then the maps. `expose(n)` takes n
    frames with the beam on at the session's technique (it presses and
    releases the switch, or asks the operator to). The board's technique is
    restored afterwards."""
    from ..mpcompat import import_firmware

    controller = import_firmware("pulsefw.controller")
    if dark_count < 2 or flat_count < 2:
        raise CalibrationError("calibration needs at least 2 dark and 2 flat frames")
    width = pulse_width_ms if pulse_width_ms is not None else float(controller.WIDTH_MIN_MS)
    pps = float(session.config.get("pulses_per_s", controller.PULSE_RATES[0]))
    # The flat-field technique is checked as the board would, before the
    # dark frames: a refusal after them would waste them.
    reason = controller.Technique(kv, controller.MA_MIN, width, pps).check()
    if reason:
        raise CalibrationError(f"the flat-field technique {kv:g} kV {width:g} ms at {pps:g} pps: {reason}")
    board = dict(session.board)
    saved = {k: session.config[k] for k in ("kv", "ma", "pulse_width_ms", "abc_enabled", "filter_alpha")
             if k in session.config}
    full = full_scale_adu or (4095 if int(session.config.get("pixel_format", 2)) == 2 else 65535)
    session.set_corrections()  # calibrate from raw frames
    try:
        status = session.status()
        if status["state"] != "IDLE":
            session.disarm()
        if session.config.get("filter_alpha"):
            session.configure(filter_alpha=0.0)  # every frame on its own: no recursive filter
        log(f"reading {dark_count} dark frames (no X-rays)")
        darks = dark_frames(session, dark_count)
        dark_now = np.nanmean(stack(darks), axis=0).astype(np.float32)
        # The lowest technique first: an open field is bright.
        ma = controller.MA_MIN
        session.configure(kv=kv, ma=ma, pulse_width_ms=width, abc_enabled=False)
        probe = expose(2)
        signal = _median_signal(probe, dark_now)
        room = full - float(np.median(dark_now))
        if signal > 0.9 * room:
            raise CalibrationError(f"the open field saturates the detector at the lowest technique ({kv:g} kV, "
                                   f"{ma:g} mA, {width:g} ms): add filtration or shorten the pulse")
        if signal < 0.002 * room:
            raise CalibrationError(f"no signal in the open field ({signal:.1f} ADU at {kv:g} kV {ma:g} mA): "
                                   "is the beam reaching the detector?")
        ma = float(min(controller.MA_MAX, max(controller.MA_MIN, ma * FLAT_TARGET_FRACTION * room / signal)))
        ma = round(ma, 2)
        session.configure(ma=ma)
        log(f"exposing {flat_count} flat frames at {kv:g} kV {ma:g} mA {width:g} ms (open field)")
        flats = expose(flat_count)
        if len(flats) < flat_count:
            raise CalibrationError(f"only {len(flats)} of {flat_count} flat frames arrived")
    finally:
        try:
            if not session.error:
                session.configure(**saved)
        except SessionError:
            pass
    dark, flat, defects, stats = build(stack(darks), stack(flats), full_scale_adu=full)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return Calibration(str(board.get("detector_serial") or "unknown"), str(board.get("serial") or ""),
                       int(session.config["pixels_per_line"]), int(session.config["lines_per_frame"]), full, created,
                       dark, flat, defects, str(board.get("firmware") or ""),
                       {"kv": kv, "ma": ma, "pulse_width_ms": width,
                        "pulses_per_s": float(session.config.get("pulses_per_s", 0))},
                       dark_count, flat_count, stats)
