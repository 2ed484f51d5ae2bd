"""How an exam is acquired: from a board (a Target) and a plan (what to
acquire) to an exam directory, and how a detector calibration is.

    from pulseline import targets
    from pulseline.exam.acquire import Plan, acquire, technique

    plan = Plan(Path("exam"), settings=technique(kv=70, ma=10), frames=32)
    with targets.attach("sim") as board:
        exam = acquire(board, plan)       # exam.capture, exam.summary, exam.failed

In order: a session on the board; the output directory made and probed
(before any X-rays); the technique configured; the frame count (frames, a
duration, or the preset's, at the board's pulse rate); the detector's
calibration applied (a warning when it is missing or stale); on a simulated
board the phantom set (and put back afterwards) and the switch pressed and
released by its hardware, elsewhere the operator asked to press it; the
capture (capture.capture), which keeps whatever came; the exam saved whole
(capture.save), even when the capture ended early; then sent to a PACS. A
disk too full for the exam keeps the frames as one raw array where there is
room, and says where.

What the caller shows of it comes through a Watcher: warnings, what the
operator must do, a progress display or live view around the capture, and a
shield that keeps the caller's interruptions (the CLI's signals) off the
clean-up and the saving. The exam layer imports no ui: the CLI builds the
watcher from ui.display and ui.view.

May import link, plant, sim, targets and exam; never ui or cli.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import PulselineError

if TYPE_CHECKING:
    from ..link.frames import Frame
    from ..link.session import Session
    from ..sim.controls import PlantControls
    from ..targets.base import Target
    from .calibration import Calibration
    from .capture import Capture
    from .dicom_rf import Identity
    from .presets import Preset

DEFAULT_FRAMES = 16  # with no frame count, duration or preset's
OPERATOR = "press and hold the exposure switch"  # asked of a person where no simulated hardware presses it
TargetControls = Literal["target"]  # controls=: the target's own simulated hardware (the default)


class AcquireError(PulselineError):
    """An exam that could not be acquired or saved, in one line (saying
    where its frames were kept, when they could be)."""


# -- what to acquire -----------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """A PACS to store the exam on (DICOM C-STORE)."""

    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "PULSELINE"


def check_length(frames: int | None, duration_s: float | None, frames_word: str = "a frame count",
                 duration_word: str = "a duration") -> None:
    """ValueError, in the caller's words, for an exam length that cannot be."""
    if frames is not None and duration_s is not None:
        raise ValueError(f"give {frames_word} or {duration_word}, not both")
    if frames is not None and frames < 1:
        raise ValueError(f"{frames_word} must be at least 1")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"{duration_word} must be more than 0 s")


@dataclass
class Plan:
    """What to acquire and where it goes.

    settings: the board settings (Session.configure's keys) to apply first;
    empty, the board's own (see `technique`). frames or duration_s: how
    long (neither: the preset's, else DEFAULT_FRAMES). identity: the
    patient and study (anonymous by default; a preset's name is its
    protocol name). calibration: apply the detector's calibration if one
    is kept (in calibration_dir; default calibration.calibration_dir()).
    water_cm: on a simulated board, the phantom's water during the capture.
    pacs: where to send the exam once saved."""

    output: Path
    settings: dict[str, Any] = field(default_factory=dict)
    frames: int | None = None
    duration_s: float | None = None
    preset: Preset | None = None
    identity: Identity | None = None
    calibration: bool = True
    calibration_dir: Path | None = None
    water_cm: float | None = None
    pacs: Destination | None = None

    def __post_init__(self) -> None:
        check_length(self.frames, self.duration_s)
        if self.identity is None:
            from .dicom_rf import Identity

            self.identity = Identity()
        if self.preset is not None and not self.identity.protocol_name:
            self.identity.protocol_name = str(self.preset.name)[:64]

    def frame_count(self, pulses_per_s: float) -> int:
        """The frames to capture at the board's pulse rate."""
        p = self.preset
        if self.frames is not None:
            return int(self.frames)
        if self.duration_s is not None:
            return max(1, round(float(self.duration_s) * pulses_per_s))
        if p is not None and p.duration_s is not None and p.frames is None:
            return max(1, round(float(p.duration_s) * pulses_per_s))
        if p is not None and p.frames is not None:
            return int(p.frames)
        return DEFAULT_FRAMES


def technique(preset: Preset | None = None, *, kv: float | None = None, ma: float | None = None,
              pulses_per_s: float | None = None, pulse_width_ms: float | None = None, abc: bool | None = None,
              filter_alpha: float | None = None) -> dict[str, Any]:
    """The board settings of a capture: the preset's, with the values given
    winning over them. kV or mA given is a manual technique (brightness
    control off, unless `abc` asks for it); a preset without a filter turns
    the filter off."""
    settings: dict[str, Any] = preset.settings() if preset is not None else {}
    alpha = (preset.filter_alpha or 0.0) if preset is not None else None
    settings.update({k: v for k, v in (("kv", kv), ("ma", ma), ("pulses_per_s", pulses_per_s),
                                       ("pulse_width_ms", pulse_width_ms), ("abc_enabled", abc)) if v is not None})
    if (kv is not None or ma is not None) and abc is None:
        settings["abc_enabled"] = False
    if filter_alpha is not None:
        alpha = filter_alpha
    if alpha is not None:
        settings["filter_alpha"] = alpha
    return settings


# -- what the caller sees ------------------------------------------------------------


class Watcher:
    """What the caller shows of an acquisition. Each hook does nothing here;
    the CLI's says it on the terminal and in the live view."""

    def warn(self, text: str) -> None:
        """Something the exam's summary keeps among its warnings."""

    def ask(self, text: str) -> None:
        """What the operator must do (no simulated hardware does it)."""

    def watching(self, session: Session, frames: int,
                 controls: PlantControls | None) -> AbstractContextManager[Callable[[Frame], None] | None]:
        """Around the capture: what is given each frame as it comes (None:
        nothing). Its exit ends any display of it."""
        return contextlib.nullcontext()

    def shielded(self) -> AbstractContextManager[object]:
        """A context the clean-up and the saving run in: the caller's
        interruptions wait until it ends."""
        return contextlib.nullcontext()


@dataclass
class Acquired:
    """An exam acquired and saved: its capture (capture.error: why it ended
    early, if it did), the summary saved with it, and `failed`: what went
    wrong after the exam was saved (the PACS, the summary's update)."""

    capture: Capture
    summary: dict[str, Any]
    failed: str | None = None


# -- the acquisition -----------------------------------------------------------------


def acquire(target: Target, plan: Plan, watcher: Watcher | None = None, *,
            controls: PlantControls | TargetControls | None = "target") -> Acquired:
    """Acquire an exam on `target` as `plan` says, and save it (see the
    module's docstring). `controls`: the simulated hardware that presses
    the switch and holds the phantom (the target's own by default; None: a
    person, or whoever made the board, works the switch). What fails
    before the capture raises (SessionError, AcquireError: one line each);
    a capture that ends early (a signal, the board) is saved with what
    came, capture.error saying why; a PACS that fails is `failed`."""
    from .capture import capture

    w = watcher or Watcher()
    hardware = target.controls if isinstance(controls, str) else controls
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        w.warn(text)

    session = target.open_session()
    scene: dict[str, Any] = {}
    cap: Capture | None = None
    applied = None
    try:
        make_writable(plan.output)  # before any X-rays: a capture must have somewhere to go
        if plan.settings:
            session.configure(**plan.settings)
        frames = plan.frame_count(float(session.config["pulses_per_s"]))
        if plan.calibration:
            applied = apply_calibration(session, warn, plan.calibration_dir)
        if hardware is not None and plan.water_cm is not None:
            scene = {"water_cm": hardware.plant_status().get("water_cm")}
            hardware.set_input("water_cm", float(plan.water_cm))
        elif hardware is None:
            w.ask(OPERATOR)
        with w.watching(session, frames, hardware) as on_frame:
            cap = capture(session, frames, press=hardware.press if hardware is not None else None,
                          release=hardware.release if hardware is not None else None, progress=on_frame)
    except KeyboardInterrupt:
        if cap is None:
            raise
        # (an interruption as the display closed, the capture over: what came is saved below)
    finally:
        with w.shielded():  # the clean-up is not cut short
            session.close()
            if hardware is not None and scene.get("water_cm") is not None:
                with contextlib.suppress(OSError, ValueError):
                    hardware.set_input("water_cm", float(scene["water_cm"]))
    assert cap is not None  # (else its exception went up)
    cap.calibration = applied
    cap.preset = plan.preset.name if plan.preset is not None else None
    cap.warnings = warnings
    with w.shielded():  # what came is saved whole
        return store(cap, plan, target.name)


def make_writable(out: Path) -> None:
    """The output directory, made, and a file written and removed in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pulseline-write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise AcquireError(f"cannot write to {out}: {exc.strerror or exc}") from None


def apply_calibration(session: Session, warn: Callable[[str], None],
                      directory: Path | None = None) -> dict[str, Any] | None:
    """The detector's calibration set on the board's frames, if one is kept
    (in `directory`, default calibration.calibration_dir()); what it is
    (Calibration.describe()), or None. Missing or stale: warned."""
    from . import calibration

    try:
        cal, why = calibration.for_session(session, directory)
    except calibration.CalibrationError as exc:
        cal, why = None, str(exc)
    if why:
        warn(why)
    if cal is None:
        return None
    session.set_corrections(**cal.corrections())
    return cal.describe()


def store(cap: Capture, plan: Plan, port: str) -> Acquired:
    """Save the capture in plan.output, then send it to plan.pacs. A disk
    too full for the exam: AcquireError, the frames kept elsewhere."""
    from .capture import SaveError, save, write_atomic

    try:
        summary = save(cap, plan.output, port, plan.identity)
    except SaveError as exc:
        raise AcquireError(f"cannot write the exam to {plan.output}: {exc.name}: "
                           f"{write_failure(exc.cause, plan.output)}{rescue(cap)}") from None
    except OSError as exc:
        raise AcquireError(f"cannot write the exam to {plan.output}: {write_failure(exc, plan.output)}"
                           f"{rescue(cap)}") from None
    failed = None
    if plan.pacs is not None:
        summary["pacs"] = send_exam(plan.output, summary, plan.pacs)
        text = json.dumps(summary, indent=1)
        try:
            write_atomic(plan.output / "summary.json", lambda p: p.write_text(text))
        except OSError as exc:
            failed = f"cannot update summary.json with the PACS result: {exc.strerror or exc}"
        failed = failed or summary["pacs"].get("error")
    return Acquired(cap, summary, failed)


def write_failure(exc: OSError, where: Path) -> str:
    """Why a write failed, in words: a full disk is said so even when the
    writer reports only a short write."""
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT or (free is not None and free < 1 << 20):
        return "no space left on the device" + (f" ({free // 1024} kB free)" if free is not None else "")
    return str(exc.strerror or exc)


def rescue(cap: Capture) -> str:
    """Disk full or the like: the frames are still in memory. Keep them as
    one raw array where there is room (the working directory, else the
    temporary directory) rather than lose them; say where."""
    if not cap.frames:
        return ""
    import numpy as np

    from .capture import write_atomic

    stack = np.stack([f.pixels for f in cap.frames])
    for where in (Path.cwd(), Path(tempfile.gettempdir())):
        kept = where / f"pulseline-rescue-{os.getpid()}.npy"
        try:
            write_atomic(kept, lambda p: np.save(p, stack))
            return f"; the {len(cap.frames)} frames are in {kept}"
        except OSError:
            continue
    return f"; the {len(cap.frames)} frames could not be saved anywhere"


def send_exam(out: Path, summary: dict[str, Any], to: Destination) -> dict[str, Any]:
    """The exam's DICOM files (the RF image, the dose SR) stored on a PACS;
    what happened, for the summary (its error, if one came)."""
    from .pacs import PacsError, send

    files = [out / summary["files"][k] for k in ("dicom_rf", "dose_sr") if summary["files"].get(k)]
    result: dict[str, Any] = {"destination": f"{to.host}:{to.port}", "called_ae": to.called_ae,
                              "calling_ae": to.calling_ae, "files": len(files), "stored": 0}
    try:
        done = send(files, to.host, to.port, called_ae=to.called_ae, calling_ae=to.calling_ae)
        result["stored"] = sum(r.ok for r in done)
    except PacsError as exc:
        result["stored"] = sum(r.ok for r in (exc.results or []))
        result["error"] = f"PACS: {exc}"
    return result


# -- a calibration ---------------------------------------------------------------------


def acquire_calibration(target: Target, *, dark: int = 16, flat: int = 32, kv: float = 60.0,
                        pulse_width_ms: float | None = None, directory: Path | None = None,
                        controls: PlantControls | TargetControls | None = "target",
                        log: Callable[[str], None] = lambda m: None) -> tuple[Calibration, Path]:
    """Dark and flat frames from `target`, the maps made of them
    (calibration.calibrate), stored for the detector in `directory` (default
    calibration.calibration_dir()); the calibration and its file. On a
    simulated board its hardware makes the open field (no water, no
    structures: the scene is put back afterwards) and works the switch;
    elsewhere `log` asks the operator. CalibrationError on any failure."""
    from . import calibration

    hardware = target.controls if isinstance(controls, str) else controls
    session = target.open_session()
    scene: dict[str, Any] = {}
    try:
        if hardware is not None:
            st = hardware.plant_status()
            scene = {"water_cm": st.get("water_cm"), "structures": st.get("structures")}
        else:
            log("take everything out of the beam (open field); press and hold the exposure switch when asked")
        cal = calibration.calibrate(session, dark_count=dark, flat_count=flat, kv=kv, pulse_width_ms=pulse_width_ms,
                                    expose=_flat_field(session, hardware, log), log=log)
    finally:
        session.close()
        if hardware is not None and scene.get("water_cm") is not None:
            with contextlib.suppress(OSError, ValueError):
                hardware.set_input("water_cm", float(scene["water_cm"]))
                hardware.set_input("structures", bool(scene["structures"]))
    try:
        return cal, cal.save(directory)
    except OSError as exc:
        where = directory or calibration.calibration_dir()
        raise calibration.CalibrationError(f"cannot store the calibration in {where}: {exc.strerror or exc}") from None


def _flat_field(session: Session, hardware: PlantControls | None,
                log: Callable[[str], None]) -> Callable[[int], list[Frame]]:
    """calibrate's `expose`: n frames of the open field, the beam on."""
    from . import calibration
    from .capture import capture

    def expose(n: int) -> list[Frame]:
        if hardware is not None:
            hardware.set_input("water_cm", 0.0)  # the simulated open field
            hardware.set_input("structures", False)
        else:
            log(f"press and hold the exposure switch for {n} frames")
        cap = capture(session, n, press=hardware.press if hardware is not None else None,
                      release=hardware.release if hardware is not None else None)
        if cap.error:
            raise calibration.CalibrationError(f"flat frames: {cap.error}")
        return cap.frames
    return expose

