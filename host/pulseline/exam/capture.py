"""Capture an exposure through a session and save the exam: an ImageJ TIFF
stack with the technique and dose of every frame, a DICOM RF image, the
dose SR, a PNG of the last image and a JSON summary."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import __version__
from ..errors import PulselineError
from ..link.frames import Frame
from ..link.session import Session, SessionError
from ..mpcompat import import_firmware

# The board's own link timeout (the firmware's constant, not a copy of it).
LINK_TIMEOUT_S = import_firmware("pulsefw.controller").LINK_TIMEOUT_US / 1e6

SILENCE_S = 2.0  # the board answers a heartbeat every 50 ms: this much silence is a dead link


@dataclass
class Capture:
    frames: list[Frame] = field(default_factory=list)
    dose_report: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    board: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why the capture ended early, if it did
    wall_s: float = 0.0
    calibration: dict[str, Any] | None = None  # the one applied (Calibration.describe())
    preset: str | None = None
    warnings: list[str] = field(default_factory=list)


def _link_lost_reason(session: Session, t_us: int) -> str:
    """A board that disarmed itself because the host fell silent: and whether
    the silence was this host's (no heartbeat left) or the way's (one left in
    time and came late), where the session's clock is the board's."""
    text = ("the board disarmed itself: it heard nothing from the host for its link timeout "
            f"({LINK_TIMEOUT_S * 1e3:.0f} ms)")
    gap_s = session.heartbeat_before(t_us / 1e6)
    if gap_s is None:
        return text
    if gap_s < LINK_TIMEOUT_S:
        return text + f"; this host's last heartbeat left {gap_s * 1e3:.0f} ms before, and reached it late"
    return text + f"; this host sent no heartbeat for {gap_s * 1e3:.0f} ms before it"


def _stop_reason(events: list[Any], frames: int, session: Session | None = None) -> str | None:
    """Why the board will send no more frames of this press, from the events
    since the capture began: None while it may."""
    for e in events:
        b = e.body
        if e.name == "stopped":
            return f"the pulseline firmware stopped ({b.get('reason', 'no reason given')})"
        if e.name == "boot":
            return (f"the board restarted ({b.get('reset_cause', 'unknown cause')}) during the exposure: the dose "
                    "of the press up to its last checkpoint is in the board's journal, marked interrupted")
        if e.name == "fault":
            return f"a fault latched: {b.get('name', 'fault')}: {b.get('message', '')}".rstrip(": ")
        if e.name == "blocked":
            why = b.get("reason") or "a permissive is missing"
            return f"the board does not expose: {why}" if not frames else f"the exposure stopped: {why}"
        if e.name == "state" and b.get("state") == "IDLE" and b.get("from") in ("READY", "EXPOSING", "HOLD"):
            if b.get("why") == "host link lost" and session is not None:
                return _link_lost_reason(session, e.t_us)
            return "the board was disarmed"
    return None


def capture(session: Session, frames: int, *, press: Callable[[], object] | None = None,
            release: Callable[[], object] | None = None, timeout_s: float | None = None,
            progress: Callable[[Frame], None] | None = None) -> Capture:
    """Arm, expose until `frames` frames have arrived, release, disarm. On
    any failure (a SessionError, the board stopping, Ctrl-C or any other
    KeyboardInterrupt such as the CLI's SIGTERM and SIGHUP) the switch is
    released, the board disarmed, the frames already received are kept and
    `error` says why."""
    out = Capture(config=dict(session.config), board=dict(session.board))
    pps = float(session.config.get("pulses_per_s", 7.5))
    limit = timeout_s if timeout_s is not None else frames / pps * 2.0 + 5.0
    first_event = len(session.events)
    t0 = session.now()  # the target's clock: virtual time on the fast simulator
    interrupted: str | None = None
    try:
        session.arm()
        if press is not None:
            press()
        deadline = session.now() + limit
        while len(out.frames) < frames:
            left = deadline - session.now()
            if left <= 0:
                out.error = f"only {len(out.frames)} of {frames} frames within {limit:.0f} s"
                break
            why = _stop_reason(session.events[first_event:], len(out.frames), session)
            if why is not None:
                out.error = why
                break
            f = session.next_frame(min(left, 0.25))
            if f is not None:
                out.frames.append(f)
                if progress is not None:
                    try:
                        progress(f)
                    except (OSError, ValueError):  # the display's terminal is gone: capture on without it
                        progress = None
            elif session.error:
                out.error = session.error
                break
            elif session.silent_for() > SILENCE_S:
                out.error = (f"nothing from the board for {SILENCE_S:.0f} s after {len(out.frames)} frames: "
                             "the link is down")
                break
    except SessionError as exc:
        out.error = str(exc)
    except KeyboardInterrupt as exc:
        # Ctrl-C, or a signal the CLI turns into one: end the exposure safely
        # (release, below) and keep what came. Counted once everything is in.
        interrupted = str(exc) or "Ctrl-C"
    finally:
        if release is not None:
            try:
                release()
            except (OSError, ValueError) as exc:
                out.error = out.error or f"could not release the switch: {exc}"
    try:
        if not session.error and session.stopped is None and session.silent_for() <= SILENCE_S:
            # The exposure ends here, whatever the switch does (an operator
            # still on a real pedal): disarming stops emission at once. Then
            # the last frame's lines still on their way (for a moment only:
            # nothing new is exposed), and the dose of the irradiation event.
            session.disarm()
            end = session.now() + 2.0
            while session.now() < end and (f := session.next_frame(0.3)) is not None:
                out.frames.append(f)
            out.frames += session.flush_frames()
            session.wait_event("irradiation", 2.0, since=first_event)
            out.dose_report = session.dose_report()
            # When it came, on the host's clock: the events' board times are placed by it.
            out.dose_report["host_time"] = dt.datetime.now().astimezone().isoformat()
        else:
            out.frames += session.flush_frames()
    except SessionError as exc:
        out.error = out.error or str(exc)
    if session.stopped is not None:
        out.error = (out.error or "the pulseline firmware stopped") + f"; the board is at the MicroPython REPL: " \
            f"{session.restart_hint()}"
    if interrupted is not None:
        out.error = f"interrupted ({interrupted}) after {len(out.frames)} frames"
    out.counters = session.counters()
    out.events = [e.as_dict() for e in session.events[first_event:] if e.name != "dose"]
    out.wall_s = session.now() - t0
    return out


def frame_meta(f: Frame) -> dict[str, Any]:
    t = f.trailer
    meta: dict[str, Any] = {"frame_id": f.frame_id, "pulse_id": f.pulse_id, "timestamp_us": f.timestamp_us,
                            "lines_lost": f.lines_lost, "complete": f.complete}
    if t is not None:
        meta.update(kv=round(t.kv, 3), ma=round(t.ma, 4), pulse_width_ms=round(t.pulse_width_ms, 4),
                    air_kerma_ugy=round(t.air_kerma_ugy, 4), kap_ugy_m2=t.kap_ugy_m2)
    return meta


def frame_label(f: Frame) -> str:
    """The slice label ImageJ shows for a frame."""
    t = f.trailer
    text = f"frame {f.frame_id} pulse {f.pulse_id}"
    if t is not None:
        text += (f": {t.kv:.1f} kV {t.ma:.2f} mA {t.pulse_width_ms:g} ms, {t.air_kerma_ugy:.2f} uGy, "
                 f"KAP {t.kap_ugy_m2:.4g} uGy m2")
    return text + (f", {f.lines_lost} lines lost" if f.lines_lost else "")


def write_png(path: Path, pixels: Any) -> None:
    """The last image (last-image hold) as an 8-bit PNG, windowed on the
    1st..99th percentile of its pixels so that the anatomy shows."""
    from PIL import Image

    img = np.asarray(pixels, dtype=np.float64)
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    scaled = np.clip((np.nan_to_num(img, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1) * 255
    Image.fromarray(scaled.astype(np.uint8), mode="L").save(path)


def write_tiff(path: Path, cap: Capture, pixel_pitch_mm: float = 0.4,
               pixels: npt.NDArray[np.uint16] | None = None) -> None:
    """An ImageJ hyperstack (T, Y, X): raw uint16, or float32 when corrected
    (lines that never arrived stay NaN). Each frame's technique and dose is
    its slice label, and all of them as JSON in the property
    pulseline.frames; the capture's technique in pulseline.technique.
    `pixels`: the frames as given instead (frames16.tif: as_stored_pixels)."""
    import tifffile

    data = np.stack([f.pixels for f in cap.frames]) if pixels is None else pixels
    data = data.astype(np.float32 if data.dtype.kind == "f" else np.uint16, copy=False)
    pps = float(cap.config.get("pulses_per_s", 7.5))
    technique = {k: cap.config.get(k) for k in ("kv", "ma", "pulse_width_ms", "pulses_per_s", "abc_enabled",
                                                "filter_alpha")}
    info = (f"pulseline capture: {len(cap.frames)} frames at {pps:g} pps; firmware {cap.board.get('firmware')} "
            f"({str(cap.board.get('firmware_hash', ''))[:16]}); detector {cap.board.get('detector_serial')}; "
            + ("corrected with calibration " + str(cap.calibration.get("created")) if cap.calibration
               else "raw (uncorrected)"))
    if pixels is not None and cap.calibration:
        info += "; 16-bit: rounded and clipped to the detector's range as rf.dcm stores them (no-data pixels 0)"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / pixel_pitch_mm, 1 / pixel_pitch_mm),
                     metadata={"axes": "TYX", "unit": "mm", "finterval": 1 / pps, "Info": info,
                               "Labels": [frame_label(f) for f in cap.frames],
                               "Properties": {"pulseline.frames": json.dumps([frame_meta(f) for f in cap.frames]),
                                              "pulseline.technique": json.dumps(technique)}})


def as_stored_pixels(frames: list[Frame], full_scale: int) -> npt.NDArray[np.uint16]:
    """Frames as unsigned integers for DICOM: raw as they are; corrected ones
    rounded and clipped to the detector's range, with no-data pixels (lost
    lines) at 0."""
    data = np.stack([f.pixels for f in frames])
    if data.dtype.kind == "f":
        data = np.clip(np.rint(np.nan_to_num(data, nan=0.0)), 0, full_scale)
    return np.ascontiguousarray(data, dtype=np.uint16)


class SaveError(PulselineError, OSError):
    """A file of the exam could not be written: `summary` is what is on disk
    (the files that landed whole; its error says which could not)."""

    def __init__(self, name: str, summary: dict[str, Any], cause: OSError) -> None:
        self.message = f"cannot write {name}: {cause.strerror or cause}"
        super().__init__(cause.errno, self.message)
        self.name = name
        self.summary = summary
        self.cause = cause

    def __str__(self) -> str:
        return self.message


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) to a temporary name beside path, flushed to the disk, then
    renamed into place: a full disk, a kill or a power cut leaves the whole
    file or none, never a truncated one (the extension is kept, as some
    writers choose their format by it)."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _events_of_frames(frames: list[Frame], events: list[Any]) -> list[Any]:
    """The irradiation events whose pulses the frames are from (a frame's
    time is its pulse's, on the board's clock, as the events' times)."""
    from .exams import pulse_span

    out = []
    for e in events:
        span = pulse_span(e.record)
        if span is not None and any(span[0] <= f.timestamp_us <= span[1] for f in frames):
            out.append(e)
    return out


def save(cap: Capture, out_dir: Path, port: str, identity: Any = None) -> dict[str, Any]:
    """Write frames.tif, last.png, rf.dcm, dose_sr.dcm, summary.json, and
    frames16.tif for corrected (float) frames;
    returns the summary. Each file lands whole or not at all (write_atomic).
    The summary goes first, listing no file, then again after each file has
    landed: at any instant it lists exactly the files that exist. A file
    that cannot be written (a full disk) stops the writing: SaveError, with
    the summary on disk saying so in its error, if even that fits."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trailers = [f.trailer for f in cap.frames if f.trailer is not None]
    from .dicom_rf import Identity, write_rf

    ident = identity or Identity()  # the RF image and the dose SR belong to one study
    twelve = cap.config.get("pixel_format") == 2
    files: dict[str, str | None] = {"frames": None, "frames16": None, "last_image": None, "dicom_rf": None,
                                    "dose_sr": None, "summary": "summary.json"}
    summary: dict[str, Any] = {
        "pulseline": __version__,
        "port": port,
        "firmware": cap.board.get("firmware"),
        "firmware_hash": cap.board.get("firmware_hash"),
        "board": cap.board.get("board"),
        "board_serial": cap.board.get("serial"),
        "detector_serial": cap.board.get("detector_serial"),
        "preset": cap.preset,
        "technique": {k: cap.config.get(k) for k in ("kv", "ma", "pulse_width_ms", "pulses_per_s",
                                                    "abc_enabled", "abc_target_adu", "filter_alpha")},
        "technique_delivered": {
            "kv_mean": round(float(np.mean([t.kv for t in trailers])), 3) if trailers else None,
            "ma_mean": round(float(np.mean([t.ma for t in trailers])), 4) if trailers else None},
        "detector": {k: cap.config.get(k) for k in ("pixels_per_line", "lines_per_frame", "pixel_format")},
        "calibration": cap.calibration,
        "frames": len(cap.frames),
        "frames_complete": sum(f.complete for f in cap.frames),
        "lines_lost": sum(f.lines_lost for f in cap.frames),
        "kerma_ugy_from_trailers": sum(t.air_kerma_ugy for t in trailers),
        "dose_report": cap.dose_report,
        "link_counters": cap.counters,
        "events": cap.events,
        "warnings": cap.warnings,
        "error": cap.error,
        "files": files,
        "saving": True,  # until every file has landed
        "wall_s": round(cap.wall_s, 3),
    }
    summary_path = out_dir / "summary.json"

    def write_summary() -> None:
        text = json.dumps(summary, indent=1)
        write_atomic(summary_path, lambda p: p.write_text(text))

    plan: list[tuple[str, str, Callable[[Path], object]]] = []
    from .dicom_rdsr import ImageRef, irradiations, write_rdsr

    serial = str(cap.board.get("serial") or "")
    events = irradiations(cap.dose_report, serial) if cap.dose_report else []
    images: dict[str, ImageRef] = {}  # irradiation event UID -> the image its frames are in
    run = _events_of_frames(cap.frames, events)

    def rf(p: Path) -> None:
        ds = write_rf(
            p, as_stored_pixels(cap.frames, 4095 if twelve else 65535), bits_stored=12 if twelve else 16,
            pulses_per_s=float(cap.config.get("pulses_per_s", 7.5)), kv=kv, ma=ma,
            pulse_width_ms=float(cap.config.get("pulse_width_ms", 0.0)),
            kap_dgy_cm2=kap_ugy_m2 * 0.1,  # 1 uGy m^2 = 0.01 Gy cm^2 = 0.1 dGy cm^2
            firmware=str(cap.board.get("firmware", "")), identity=ident, device_serial=serial,
            event_uids=[e.uid for e in run], acquired=run[0].start if run else None)
        images.update({e.uid: ImageRef.of(ds) for e in run})

    if cap.frames:
        kv = float(np.mean([t.kv for t in trailers])) if trailers else float(cap.config.get("kv", 0.0))
        ma = float(np.mean([t.ma for t in trailers])) if trailers else float(cap.config.get("ma", 0.0))
        kap_ugy_m2 = sum(t.kap_ugy_m2 for t in trailers)
        plan += [
            ("frames", "frames.tif", lambda p: write_tiff(p, cap)),
            ("last_image", "last.png", lambda p: write_png(p, cap.frames[-1].pixels)),
            ("dicom_rf", "rf.dcm", rf)]
    if cap.dose_report:
        plan.append(("dose_sr", "dose_sr.dcm", lambda p: write_rdsr(
            p, cap.dose_report, identity=ident, firmware=str(cap.board.get("firmware", "")),
            device_serial=serial, images=images)))
    if cap.frames and cap.frames[0].pixels.dtype.kind == "f":
        # Corrected frames are float: the same in 16 bits as rf.dcm holds them, for viewers that open
        # no float TIFF (raw frames are 16-bit in frames.tif already: no second copy).
        plan.append(("frames16", "frames16.tif", lambda p: write_tiff(
            p, cap, pixels=as_stored_pixels(cap.frames, 4095 if twelve else 65535))))
    write_summary()  # (a failure here: nothing is on disk but what was there)
    for key, name, write in plan:
        try:
            write_atomic(out_dir / name, write)
        except OSError as exc:
            failure = SaveError(name, summary, exc)
            summary["error"] = f"{cap.error}; {failure.message}" if cap.error else failure.message
            summary["saving"] = False
            with contextlib.suppress(OSError):
                write_summary()
            raise failure from None
        files[key] = name
        write_summary()
    summary["saving"] = False
    write_summary()
    return summary
