"""Read back an exam directory, as capture.save() writes it: the frames of
frames.tif (T, Y, X: raw uint16, or float32 when a calibration corrected
them), each frame's technique and dose (the ImageJ property
pulseline.frames), the technique asked for, and summary.json. Shared by
`pulseline export` and anything else that replays a recorded run."""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import PulselineError

STACK = "frames.tif"
SUMMARY = "summary.json"
RATE_TOLERANCE = 0.02  # the timestamps confirm the nominal pulse rate within this much


class ExamDirError(PulselineError, ValueError):
    """The directory is not a readable exam: one line saying why."""


@dataclass
class Exam:
    path: Path
    frames: npt.NDArray[Any]  # (T, Y, X); memory-mapped from the TIFF when it can be
    meta: list[dict[str, Any]]  # per frame: frame_id, pulse_id, timestamp_us, lines_lost, kv, ma, ...
    labels: list[str]  # per frame: the slice label ImageJ shows
    technique: dict[str, Any] = field(default_factory=dict)  # asked for: kv, ma, pulses_per_s, ...
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json ({} if there is none)
    frame_interval_s: float | None = None  # the stack's ImageJ finterval

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def pulses_per_s(self) -> float | None:
        """The nominal pulse rate: the stack's technique, else the summary's,
        else its frame interval."""
        for source in (self.technique, self.summary.get("technique") or {}):
            pps = source.get("pulses_per_s")
            if isinstance(pps, int | float) and pps > 0:
                return float(pps)
        if self.frame_interval_s:
            return 1.0 / self.frame_interval_s
        return None

    def frame_rate(self) -> Fraction:
        """The run's true frame rate, exactly (7.5 pps -> 15/2); see frame_rate()."""
        return frame_rate(self.meta, self.pulses_per_s)

    def times_s(self) -> list[float]:
        """Each frame's time from the run's first frame, from the board's
        timestamps (else from its place in the run at the frame rate)."""
        stamps = [m.get("timestamp_us") for m in self.meta]
        if stamps and all(isinstance(t, int) for t in stamps):
            t0 = stamps[0]
            return [(t - t0) / 1e6 for t in stamps]  # type: ignore[operator]
        period = 1 / self.frame_rate()
        return [float(i * period) for i in range(len(self))]

    def cumulative_kerma_ugy(self) -> list[float]:
        """The air kerma delivered up to and including each frame, in this run
        (the sum of the frames' own; a frame without a trailer adds none)."""
        total, out = 0.0, []
        for m in self.meta:
            k = m.get("air_kerma_ugy")
            total += float(k) if isinstance(k, int | float) else 0.0
            out.append(total)
        return out


def frame_rate(meta: list[dict[str, Any]], pulses_per_s: float | None = None) -> Fraction:
    """The frame rate as an exact fraction. The board's timestamps give the
    pulse period (time between frames over the pulses between them, so a
    frame lost on the link does not halve it); when they agree with the
    nominal rate within 2 % the nominal one is taken exactly (7.5 -> 15/2,
    3.75 -> 15/4), else the measured one, to 1/1000. With neither: 7.5."""
    measured: float | None = None
    steps = []
    for a, b in itertools.pairwise(meta):
        try:
            dt = int(b["timestamp_us"]) - int(a["timestamp_us"])
            dp = int(b["pulse_id"]) - int(a["pulse_id"])
        except (KeyError, TypeError, ValueError):
            continue
        if dt > 0 and dp > 0:
            steps.append(dt / dp)
    if steps:
        measured = 1e6 / statistics.median(steps)
    if pulses_per_s and (measured is None or abs(measured / pulses_per_s - 1) <= RATE_TOLERANCE):
        return Fraction(repr(float(pulses_per_s))).limit_denominator(1000)
    if measured is not None:
        return Fraction(measured).limit_denominator(1000)
    return Fraction(15, 2)


def _labels(value: Any, n: int) -> list[str]:
    if isinstance(value, str):  # (one frame: tifffile gives the label itself)
        value = [value]
    labels = [str(v) for v in value] if isinstance(value, list | tuple) else []
    return labels + [""] * (n - len(labels)) if len(labels) <= n else labels[:n]


def _json_property(props: dict[str, Any], name: str, where: Path) -> Any:
    text = props.get(name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise ExamDirError(f"{where}: its property {name} is not JSON") from None


def read_exam(path: Path | str, stack: str = STACK) -> Exam:
    """The exam in directory `path`. ExamDirError (one line) when it is not
    there, is not a directory, has no stack, or its stack or summary cannot
    be read. The frames are memory-mapped when the TIFF allows it (those
    save() writes do), so a long run is not read into memory at once."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise ExamDirError(f"{path}: no such exam directory")
    if not path.is_dir():
        raise ExamDirError(f"{path} is not a directory (an exam directory, as capture -o writes, holds {stack})")
    tif_path = path / stack
    if not tif_path.is_file():
        raise ExamDirError(f"{path} holds no {stack}: not an exam directory, or its frames were never saved")
    try:
        with tifffile.TiffFile(tif_path) as tif:
            series = tif.series[0]
            ij = tif.imagej_metadata or {}
            axes, shape = series.axes, series.shape
            try:
                frames: npt.NDArray[Any] = tifffile.memmap(tif_path, mode="r")
            except ValueError:  # (not contiguous, e.g. compressed: read it whole)
                frames = series.asarray()
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise ExamDirError(f"cannot read {tif_path}: {getattr(exc, 'strerror', None) or exc}") from None
    if frames.ndim == 2 or axes == "YX":  # one frame
        frames = frames.reshape((1, *shape[-2:]))
    if frames.ndim != 3:
        raise ExamDirError(f"{tif_path} is not a stack of frames (T, Y, X): its axes are {axes} {shape}")
    n = int(frames.shape[0])
    props = ij.get("Properties") or {}
    meta = _json_property(props, "pulseline.frames", tif_path) or []
    if not isinstance(meta, list) or not all(isinstance(m, dict) for m in meta):
        raise ExamDirError(f"{tif_path}: its property pulseline.frames is not a list of frames")
    if meta and len(meta) != n:
        raise ExamDirError(f"{tif_path} holds {n} frames but the metadata of {len(meta)}")
    meta = meta or [{} for _ in range(n)]
    technique = _json_property(props, "pulseline.technique", tif_path) or {}
    summary: dict[str, Any] = {}
    summary_path = path / SUMMARY
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except OSError as exc:
            raise ExamDirError(f"cannot read {summary_path}: {exc.strerror or exc}") from None
        except ValueError:
            raise ExamDirError(f"{summary_path} is not JSON") from None
        if not isinstance(summary, dict):
            raise ExamDirError(f"{summary_path} is not a JSON object")
    finterval = ij.get("finterval")
    return Exam(path=path, frames=frames, meta=meta, labels=_labels(ij.get("Labels"), n),
                technique=technique if isinstance(technique, dict) else {}, summary=summary,
                frame_interval_s=float(finterval) if isinstance(finterval, int | float) and finterval > 0 else None)


def display_window(frames: npt.NDArray[Any], sample: int = 64) -> tuple[float, float]:
    """The run's display window: the 1st..99th percentile of its finite
    pixels (as last.png's, but over the run, so that every frame is shown
    alike), from up to `sample` evenly spaced frames (all of a short run)."""
    n = int(frames.shape[0])
    picks = np.unique(np.linspace(0, max(n - 1, 0), min(n, sample)).round().astype(int))
    values = np.asarray(frames[picks], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi)


def to_display(frame: npt.NDArray[Any], window: tuple[float, float]) -> npt.NDArray[np.uint8]:
    """One frame as 8 bits through the window; no-data pixels (NaN: lines
    that never arrived) black, as in last.png (raw frames hold 0 there)."""
    lo, hi = window
    img = np.asarray(frame, dtype=np.float64)
    scaled = np.clip((np.nan_to_num(img, nan=lo, posinf=hi, neginf=lo) - lo) / max(hi - lo, 1e-9), 0, 1) * 255
    return np.rint(scaled).astype(np.uint8)
