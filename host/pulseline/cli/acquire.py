"""The commands that acquire: capture (an exam), calibrate (the detector),
exam (the dose report of the board's current or a past exam) and presets
(the protocols capture knows). The acquiring is pulseline.exam.acquire's;
this module turns the options into its plan, checked before a board hears
anything, shows the capture as it comes (the progress display, the live
view) and prints what came."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..exam.acquire import Watcher
from .common import SIGNALS, CliError, attach, board_session, check_can_write, listen_checked, operator, say_error

if TYPE_CHECKING:
    from ..exam.acquire import Plan
    from ..link.frames import Frame


@listen_checked
def cmd_capture(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..exam.acquire import acquire

    plan = _plan(args)  # every value checked, before the board hears anything
    err = Console(stderr=True, highlight=False)
    check_can_write(args.output, directory=True)  # and somewhere to save
    with attach(args.port) as target:
        controls = operator(target)
        if args.water_cm is not None and controls is None:  # a phantom only where there is one
            raise CliError("--water-cm sets the phantom of a simulated board; this port is not one")
        done = acquire(target, plan, _CaptureWatch(args, err), controls=controls)
    cap = done.capture
    if SIGNALS.seen and not cap.error:
        cap.error = f"interrupted ({SIGNALS.seen[0]}) while saving"
    with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): the exam is saved, the status says how
        _print_capture(args, cap, done.summary, err)
    if cap.error:
        say_error(f"{cap.error} (the {len(cap.frames)} frames received are saved)")
        return 1
    if done.failed:
        say_error(f"{done.failed} (the exam is saved in {args.output})")
        return 1
    return 0


def _plan(args: argparse.Namespace) -> Plan:
    """capture's options as an acquisition plan: the preset, the technique
    (options win over the preset), how long, who, and where it goes."""
    from ..exam.acquire import Destination, Plan, technique
    from ..exam.presets import get, load

    preset = None
    if args.preset:
        preset = get(args.preset, args.presets)
    elif args.presets is not None:
        load(args.presets)  # a bad file given is said, even with no --preset to take from it
    settings = technique(preset, kv=args.kv, ma=args.ma, pulses_per_s=args.pps, pulse_width_ms=args.width,
                         abc=args.abc, filter_alpha=args.filter)
    width, pps = settings.get("pulse_width_ms"), settings.get("pulses_per_s")
    if width is not None and pps is not None and width > 500.0 / pps:  # as the firmware's Technique.check
        raise CliError(f"a pulse width of {width:g} ms is more than half the period at {pps:g} pps "
                       f"(--width at most {500.0 / pps:g} ms at --pps {pps:g})")
    identity = _identity(args)
    _check_how_long(args)
    destination = None
    if args.send:
        from ..exam.pacs import parse_destination

        try:
            host, port = parse_destination(args.send)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        destination = Destination(host, port, called_ae=args.called_ae, calling_ae=args.calling_ae)
    water = args.water_cm if args.water_cm is not None else (preset.water_cm if preset is not None else None)
    return Plan(args.output, settings=settings, frames=args.frames, duration_s=args.duration, preset=preset,
                identity=identity, calibration=not args.no_calibration, water_cm=water, pacs=destination)


def _check_how_long(args: argparse.Namespace) -> None:
    from ..exam.acquire import check_length

    try:
        check_length(args.frames, args.duration, "--frames", "--duration")
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _identity(args: argparse.Namespace) -> Any:
    """The exam identity of capture's options, each value checked now by
    the rules of its DICOM value representation (the writer only warns,
    after the exposure, and stores a cut or mangled value)."""
    from ..exam.dicom_rf import Identity

    if args.study_uid and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", args.study_uid or ""):
        raise CliError(f"--study-uid {args.study_uid!r} is not a DICOM UID (digits and dots)")
    fields = {"patient_name": args.patient_name, "patient_id": args.patient_id, "study_id": args.study_id,
              "accession_number": args.accession, "study_uid": args.study_uid, "series_number": args.series_number,
              "institution": args.institution, "study_description": args.study_description,
              "series_description": args.series_description, "body_part": args.body_part,
              "patient_sex": args.patient_sex, "patient_age": args.patient_age,
              "patient_size_m": args.patient_size_m, "patient_weight_kg": args.patient_weight_kg,
              "indication": args.indication}
    if args.patient_age is not None and not re.fullmatch(r"[0-9]{3}[DWMY]", args.patient_age):
        raise CliError(f"--patient-age {args.patient_age!r} is not a DICOM age: three digits and D, W, M or Y "
                       "(e.g. 045Y)")
    for k, v in fields.items():
        if isinstance(v, str):
            _check_dicom_text(k, v)
    return Identity(**{k: v for k, v in fields.items() if v is not None})


_VRS = {"patient_name": "PN", "patient_id": "LO", "study_id": "SH", "accession_number": "SH", "study_uid": "UI",
        "institution": "LO", "study_description": "LO", "series_description": "LO", "indication": "LO",
        "patient_age": "AS", "patient_sex": "CS", "body_part": "CS"}


def _check_dicom_text(key: str, value: str) -> None:
    """One identity value, by pydicom's own rules for its value representation."""
    from pydicom import config as dicom_config
    from pydicom.valuerep import validate_value

    option = "--" + ("accession" if key == "accession_number" else key).replace("_", "-")
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise CliError(f"{option} must not hold backslashes or control characters")
    try:
        value.encode("latin-1")  # the exam files' character set: ISO_IR 100
        validate_value(_VRS[key], value, dicom_config.RAISE)
    except UnicodeEncodeError:
        raise CliError(f"{option} {value!r} has characters outside Latin-1 (ISO_IR 100), the exam files' "
                       "character set") from None
    except ValueError as exc:
        raise CliError(f"{option} {value!r}: {str(exc).split(' Please see')[0]}") from None


class _CaptureWatch(Watcher):
    """capture as the person at the terminal sees it: warnings on stderr,
    the operator asked to press the switch, a progress bar with the live
    displays (on a terminal, not with --json), the live view with --view;
    SIGTERM, SIGHUP and a second Ctrl-C wait while the exam is saved."""

    def __init__(self, args: argparse.Namespace, err: Any) -> None:
        self.args = args
        self.err = err

    def warn(self, text: str) -> None:
        print(f"pulseline: warning: {text}", file=sys.stderr, flush=True)

    def ask(self, text: str) -> None:
        if not self.args.json:
            print(text, flush=True)

    def shielded(self) -> contextlib.AbstractContextManager[object]:
        return SIGNALS.deferred()

    @contextlib.contextmanager
    def watching(self, session: Any, frames: int, controls: Any) -> Iterator[Callable[[Frame], None] | None]:
        from ..ui import display

        view = _capture_view(self.args, session, controls) if self.args.view else None
        try:
            if self.args.json or not self.err.is_terminal:  # the live display is for a person at a terminal
                yield view.show_frame if view is not None else None
                return
            with display.CaptureProgress(session, frames, self.err) as bar:
                def shown(f: Frame) -> None:
                    bar.frame(f)
                    if view is not None:
                        view.show_frame(f)
                yield shown
        finally:
            if view is not None:
                with SIGNALS.deferred():  # a second signal must not cut the clean-up short
                    view.set_recording(False)
                    view.stop()


def _capture_view(args: argparse.Namespace, s: Any, controls: Any) -> Any:
    """`capture --view`: the live view of this capture, marked as recording;
    the capture loop hands it each frame (it reads none itself)."""
    from ..ui.view import LiveView, check_listen

    try:
        check_listen(args.listen, args.allow_remote)
        view = LiveView(s, pump=False, recording=True, controls=controls, host=args.listen, port=args.http_port,
                        allow_remote=args.allow_remote)
        view.start()
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(f"pulseline: live view at {view.url}", file=sys.stderr, flush=True)
    if view.reach():
        print(f"pulseline: warning: {view.reach()}", file=sys.stderr, flush=True)
    if not args.no_browser:
        view.open_in_browser()
    return view


def _print_capture(args: argparse.Namespace, cap: Any, summary: dict[str, Any], err: Any) -> None:
    from rich.console import Console

    from ..ui import display

    if args.json:
        print(json.dumps(summary))
        return
    out = Console(highlight=False)
    if cap.frames and (args.preview or (err.is_terminal and args.preview is None)):
        if args.preview:
            err = Console(stderr=True, highlight=False, force_terminal=True)
        err.print(display.image_text(cap.frames[-1].pixels, title=f"LAST IMAGE HOLD  frame "
                                     f"{cap.frames[-1].frame_id}  ({args.output / 'last.png'})"))
    if not cap.frames:
        print("no frames captured")
    out.print(display.summary_table(summary))
    print(f"exam written to {args.output}/")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..exam import calibration
    from ..exam.acquire import acquire_calibration

    check_can_write(args.dir or calibration.calibration_dir(), directory=True)  # before the board hears anything

    def log(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    with attach(args.port) as target:
        cal, path = acquire_calibration(target, dark=args.dark, flat=args.flat, kv=args.kv,
                                        pulse_width_ms=args.width, directory=args.dir, controls=operator(target),
                                        log=log)
    if args.json:
        print(json.dumps({**cal.meta(), "file": str(path)}))
        return 0
    st = cal.stats
    d = st["defective"]
    t = cal.technique
    print(f"calibrated detector {cal.detector_serial} at {cal.pixels_per_line} x {cal.lines_per_frame}: "
          f"{cal.dark_frames} dark frames, {cal.flat_frames} flat frames at {t['kv']:g} kV {t['ma']:g} mA "
          f"{t['pulse_width_ms']:g} ms")
    print(f"  offset {st['dark_median_adu']:.1f} ADU (median), flat signal {st['flat_signal_median_adu']:.0f} ADU, "
          f"gain spread {st['gain_robust_sigma'] * 100:.1f} % (robust sigma)")
    print(f"  {d['total']} defective pixels (by gain {d['gain']}, by offset {d['offset']}, by noise {d['noise']})")
    print(f"  saved to {path}; captures on this detector now apply it")
    return 0


def cmd_exam(args: argparse.Namespace) -> int:
    from ..exam import exams

    if args.new and args.exam is not None:
        raise CliError("give --new or --exam, not both")
    with board_session(args.port) as s:
        try:
            if args.new:
                s.command("new_exam")
            # The current exam from the board; a past one rebuilt from its journal.
            report = s.dose_report() if args.exam is None else exams.report(exams.read_journal(s), args.exam)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"exam {report['exam']}: {report['kerma_mgy']:.3f} mGy air kerma at the reference point, "
          f"{report['kap_gy_cm2']:.4f} Gy cm2, fluoroscopy {report['fluoro_min']:.1f} min, {report['pulses']} pulses, "
          f"{report['events_total']} irradiation events")
    for e in report["events"]:
        secs = (e["end_us"] - e["start_us"]) / 1e6
        print(f"  event {e['event']:3}: {e['pulses']:5} pulses in {secs:6.1f} s at {e['pulses_per_s']:g} pps, "
              f"{e['kv']:.1f} kV {e['ma']:.2f} mA {e['pulse_width_ms']:g} ms, {e['kerma_ugy'] / 1000:.3f} mGy"
              + (", high-level control" if e.get("hlc") else "") + exams.how_it_ended(e))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..exam.presets import load

    presets = load(args.presets)
    if args.json:
        print(json.dumps({name: p.as_dict() for name, p in presets.items()}))
        return 0
    for name, p in sorted(presets.items()):
        n = p.frame_count()
        how = f"{n} frames" if n else "16 frames"
        tech = "brightness control" if p.abc else f"{p.kv:g} kV {p.ma:g} mA"
        print(f"{name:15} {p.pulses_per_s:g} pps {p.pulse_width_ms:g} ms, {tech}, "
              f"filter {p.filter_alpha if p.filter_alpha else 'off'}, {how}"
              + (f", phantom {p.water_cm:g} cm (sim)" if p.water_cm is not None else ""))
        print(f"{'':15} {p.description}")
    return 0
