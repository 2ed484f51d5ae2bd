"""The `pulseline` command: simulated boards, board information, capture,
and stream decoding. Every board command takes --port: a device path, a
pyserial URL, or a simulated board ("sim", "sim:NAME")."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .protocol import PIXEL_FORMATS, wire

EXAMPLES = {
    "sim": """examples:
  pulseline sim --detach                       start a simulated board in the background
  pulseline sim --detach --link usb-hs --faults corrupt=1e-5,drop=0.001 --seed 7
  pulseline sim list
  pulseline sim press; pulseline sim release   the simulated exposure switch
  pulseline sim set door_closed false          any plant input (door_closed, key_on, water_cm, ...)
  pulseline sim stop --all
""",
    "ports": """examples:
  pulseline ports
  pulseline ports --json
""",
    "flash": """examples:
  pulseline flash --port sim --dry-run         what would change on the board
  pulseline flash --port /dev/ttyACM0          compile, copy what differs, verify, restart
  pulseline flash --port socket://127.0.0.1:7301 --json
""",
    "info": """examples:
  pulseline info --port sim
  pulseline info --port /dev/ttyACM0 --json
""",
    "exam": """examples:
  pulseline exam --port sim                    dose report of the current exam
  pulseline exam --port sim --new              start a new exam (cumulative values back to 0)
  pulseline exam --port sim --exam 3           a past exam, from the board's journal
""",
    "calibrate": """examples:
  pulseline calibrate --port sim               dark and open-field frames, maps, stored per detector
  pulseline calibrate --port /dev/ttyACM0 --dark 32 --flat 64 --kv 70
""",
    "capture": """examples:
  pulseline capture --port sim -o exam                       16 frames at the board's technique
  pulseline capture --port sim --preset fluoro-low -o exam   a named protocol (pulseline presets)
  pulseline capture --port sim --kv 70 --ma 10 --pps 15 --duration 5 -o exam
  pulseline capture --port sim --water-cm 30 --abc --filter 0.25 -o exam
  pulseline capture --port sim --duration 10 --view -o exam      watched in the browser as it comes
  pulseline capture --port /dev/ttyACM0 --patient-name DOE^JANE --patient-id 1234 -o exam \\
      --send pacs.example.org:104 --called-ae PACS
""",
    "presets": """examples:
  pulseline presets
  pulseline presets --presets my-presets.json --json
""",
    "monitor": """examples:
  pulseline monitor --port sim                 state, events, alarms and logs until Ctrl-C
  pulseline monitor --port sim --duration 30 --no-dose --json
""",
    "view": """examples:
  pulseline view --port sim                    the live view of a simulated board, in the browser
  pulseline view --port /dev/ttyACM0 --no-browser --http-port 8080
  pulseline view --port sim --listen 0.0.0.0   reachable from other machines (not only this one)
""",
    "version": """examples:
  pulseline version --json
""",
    "decode": """examples:
  pulseline decode stream.bin --pixels 256 --lines 256 --format mono12p -o frames.npy
  pulseline decode evidence/<test>/transcript.bin      the board->host side of a test's transcript
""",
    "transcript": """examples:
  pulseline transcript evidence/<test>/transcript.bin             commands, answers, events, frames
  pulseline transcript evidence/<test>/transcript.bin --lines --heartbeat
  pulseline transcript evidence/<test>/transcript.bin --json
""",
}
ALL_EXAMPLES = "examples:\n" + "".join(
    line + "\n" for text in EXAMPLES.values() for line in text.splitlines()[1:])


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def cmd_version(args: argparse.Namespace) -> int:
    from .assembler import crc_backend

    info = {"pulseline": __version__, "protocol": wire.PROTOCOL_VERSION, "crc": crc_backend()}
    print(json.dumps(info) if args.json else "  ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def cmd_transcript(args: argparse.Namespace) -> int:
    from . import evidence

    try:
        records = evidence.read_transcript(args.transcript)
    except evidence.TranscriptError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        t0 = records[0][1] if records else 0.0
        for e in evidence.entries(records):
            if e.kind == "line" and not args.lines:
                continue
            print(json.dumps({"t_s": round(e.t_s - t0, 6), "direction": evidence.DIRECTIONS[e.direction],
                              "kind": e.kind, "seq": e.seq, "body": e.body}))
        return 0
    for line in evidence.describe(records, lines=args.lines, heartbeat=args.heartbeat):
        print(line)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from . import evidence
    from .assembler import FrameAssembler
    from .frames import Frame

    try:
        asm = FrameAssembler(args.pixels, args.lines, args.format, max_frames_in_flight=args.in_flight)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    frames: list[Frame] = []
    packets = 0
    def feed(chunk: bytes) -> None:
        nonlocal packets
        for item in asm.feed(chunk):
            if isinstance(item, Frame):
                frames.append(item)
            else:
                packets += 1

    try:
        with open(args.stream, "rb") as fh:
            head = fh.read(len(evidence.MAGIC))
            if head == evidence.MAGIC:  # a test's transcript: its board->host side
                fh.close()
                try:
                    feed(evidence.stream(evidence.read_transcript(args.stream), evidence.TO_HOST))
                except evidence.TranscriptError as exc:
                    raise CliError(str(exc)) from None
            else:
                feed(head)
                while chunk := fh.read(1 << 20):
                    feed(chunk)
    except OSError as exc:
        raise CliError(f"cannot read {args.stream}: {exc.strerror}") from None
    frames += [f for f in asm.flush() if isinstance(f, Frame)]
    summary = {
        "frames": len(frames),
        "complete_frames": sum(f.complete for f in frames),
        "other_packets": packets,
        "counters": asm.counters,
    }
    if args.output:
        stack = np.stack([f.pixels for f in frames]) if frames else np.zeros((0, args.lines, args.pixels), np.uint16)
        try:
            np.save(args.output, stack)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
        summary["output"] = str(args.output)
    if args.json:
        print(json.dumps(summary))
    else:
        c = asm.counters
        print(f"{len(frames)} frames ({summary['complete_frames']} complete), {packets} other packets")
        print(f"lines: {c['lines_ok']} ok, {c['lines_lost']} lost, {c['lines_duplicate']} duplicate, "
              f"{c['lines_late']} late; bytes: {c['bytes_in']} in, {c['bytes_skipped']} skipped; "
              f"crc errors {c['crc_errors']}, header errors {c['header_errors']}")
        if args.output:
            print(f"frames written to {args.output}")
    return 0


def _sim_of_port(port: str) -> str | None:
    """The name of the running simulated board behind `port`, if any."""
    from .sim.board import running_boards

    for b in running_boards():
        if port in ("sim", f"sim:{b['name']}", b["pty"], b["url"], b["link_path"]):
            return str(b["name"])
    return None


def _session(port: str) -> Any:
    from .session import Session, SessionError

    try:
        return Session(port)
    except (SessionError, ValueError) as exc:
        raise CliError(str(exc)) from None


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim import board as simboard

    try:
        if args.action == "list":
            boards = simboard.running_boards()
            if args.json:
                print(json.dumps(boards))
            for b in boards if not args.json else []:
                print(f"{b['name']}: {b['pty']} ({b['link_path']}), {b['url']}, link {b['link']}, fs {b['fs']}")
            if not boards and not args.json:
                print("no simulated board is running")
            return 0
        if args.action == "stop":
            boards = simboard.running_boards() if args.all else [simboard.find_board(args.name)]
            for b in boards:
                simboard.SimControl(b["name"]).stop()
                simboard.wait_stopped(b)
                print(f"stopped {b['name']}")
            return 0
        if args.action in ("press", "release", "set"):
            ctl = simboard.SimControl(args.name)
            if args.action == "set":
                if len(args.values) != 2:
                    raise CliError("sim set needs an input and a value, e.g.: pulseline sim set door_closed false")
                name, raw = args.values
                value: float | bool = {"true": True, "false": False}.get(raw.lower())  # type: ignore[assignment]
                if value is None:
                    try:
                        value = float(raw)
                    except ValueError:
                        raise CliError(f"{raw!r} is not true, false or a number") from None
                t = ctl.set_input(name, value)
            else:
                t = ctl.press() if args.action == "press" else ctl.release()
            print(json.dumps({"t_us": t}) if args.json else f"{args.action} at plant time {t / 1e6:.3f} s")
            return 0
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    # start: check the options here, so that a detached start fails at once
    from .sim.link import parse_link

    try:
        parse_link(args.link)
        simboard.parse_board_faults(args.faults)
        simboard.load_timeline(args.timeline)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.detach:
        return _sim_detach(args)
    try:
        board = simboard.SimBoard(args.fs, name=args.name, link=args.link, faults=args.faults, seed=args.seed,
                                  timeline=simboard.load_timeline(args.timeline), water_cm=args.water_cm).start()
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    _print_board(board.describe(), args.json)
    board.serve_until_stopped()
    return 0


def _print_board(desc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(desc), flush=True)
    else:
        print(f"simulated board {desc['name']}:\n  serial  {desc['pty']}  (linked as {desc['link_path']})\n"
              f"  url     {desc['url']}\n  fs      {desc['fs']}\n  link    {desc['link']}", flush=True)


def _sim_detach(args: argparse.Namespace) -> int:
    import subprocess
    import time

    from .sim import board as simboard

    name = args.name or simboard.next_free_name()
    cmd = [sys.executable, "-m", "pulseline.sim.board", "--name", name, "--link", args.link, "--faults",
           args.faults, "--seed", str(args.seed)]
    if args.fs:
        cmd += ["--fs", str(args.fs)]
    if args.timeline:
        cmd += ["--timeline", str(args.timeline)]
    if args.water_cm is not None:
        cmd += ["--water-cm", str(args.water_cm)]
    log = simboard.STATE_DIR / f"{name}.log"
    simboard.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            desc = simboard.find_board(name)
            _print_board(desc, args.json)
            return 0
        except ValueError:
            pass
        if proc.poll() is not None:
            last = (log.read_text().strip().splitlines() or ["no output"])[-1]
            raise CliError(f"the simulated board did not start: {last} (log: {log})")
        time.sleep(0.05)
    proc.kill()
    raise CliError(f"the simulated board did not start within 15 s (log: {log})")


def cmd_ports(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    from .sim.board import running_boards

    real = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        usb = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None
        real.append({"port": p.device, "description": p.description, "usb": usb,
                     "serial_number": p.serial_number})
    sims = [{"port": f"sim:{b['name']}", "device": b["pty"], "url": b["url"], "link": b["link"]}
            for b in running_boards()]
    if args.json:
        print(json.dumps({"serial": real, "simulated": sims}))
        return 0
    for r in real:
        print(f"{r['port']:20} {r['description']}" + (f"  (USB {r['usb']})" if r["usb"] else ""))
    for b in sims:
        print(f"{b['port']:20} simulated board on {b['device']}, {b['url']}, link {b['link']}")
    if not real and not sims:
        print("no serial ports and no simulated boards (start one with: pulseline sim --detach)")
    return 0


def cmd_exam(args: argparse.Namespace) -> int:
    from . import exams
    from .session import SessionError

    if args.new and args.exam is not None:
        raise CliError("give --new or --exam, not both")
    s = _session(args.port)
    try:
        if args.new:
            s.command("new_exam")
        # The current exam from the board; a past one rebuilt from its journal.
        report = s.dose_report() if args.exam is None else exams.report(exams.read_journal(s), args.exam)
    except (SessionError, ValueError) as exc:
        raise CliError(str(exc)) from None
    finally:
        s.close()
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
              + (", high-level control" if e.get("hlc") else "") + ("" if e.get("final", True) else " (cut short)"))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    s = _session(args.port)
    try:
        status = s.status()
        info = {"port": args.port, "firmware": s.board.get("firmware"), "protocol": s.board.get("protocol"),
                "firmware_hash": s.board.get("firmware_hash"), "board": s.board.get("board"),
                "serial": s.board.get("serial"), "detector_serial": s.board.get("detector_serial"),
                "state": status["state"], "block": status["block"],
                "exam": status["exam"], "kerma_mgy": status["kerma_mgy"], "fluoro_min": status["fluoro_min"],
                "config": s.config, "max_frame_bytes": s.board.get("max_frame_bytes"),
                "link_bytes_per_s": s.board.get("link_bytes_per_s")}
    finally:
        s.close()
    if args.json:
        print(json.dumps(info))
    else:
        c = info["config"]
        print(f"{args.port}: pulseline firmware {info['firmware']} (protocol {info['protocol']}, "
              f"{str(info['firmware_hash'])[:16]}) on a {info['board']} board, serial {info['serial']}, "
              f"detector {info['detector_serial']}")
        print(f"  state {info['state']} ({info['block']}), exam {info['exam']}: {info['kerma_mgy']:.3f} mGy, "
              f"{info['fluoro_min']:.1f} min")
        print(f"  technique {c['kv']:g} kV {c['ma']:g} mA {c['pulse_width_ms']:g} ms at {c['pulses_per_s']:g} pps;"
              f" detector {c['pixels_per_line']} x {c['lines_per_frame']} "
              f"{'Mono12p' if c['pixel_format'] == 2 else 'Mono16'}")
        print(f"  budget: a frame of up to {info['max_frame_bytes']} bytes, {info['link_bytes_per_s']} bytes/s on "
              "the link")
    return 0


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pulseline-write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"cannot write to {out}: {exc.strerror or exc}") from None


def _identity(args: argparse.Namespace) -> Any:
    from .dicom_rf import Identity

    if args.series_number is not None and not 1 <= args.series_number <= 99999:
        raise CliError("--series-number must be 1..99999")
    if args.study_uid and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", args.study_uid or ""):
        raise CliError(f"--study-uid {args.study_uid!r} is not a DICOM UID (digits and dots)")
    fields = {"patient_name": args.patient_name, "patient_id": args.patient_id, "study_id": args.study_id,
              "accession_number": args.accession, "study_uid": args.study_uid, "series_number": args.series_number,
              "institution": args.institution, "study_description": args.study_description,
              "series_description": args.series_description}
    for k, v in fields.items():
        if isinstance(v, str) and ("\\" in v or any(ord(c) < 32 for c in v)):
            raise CliError(f"--{k.replace('_', '-')} must not hold backslashes or control characters")
    return Identity(**{k: v for k, v in fields.items() if v is not None})


def _capture_plan(args: argparse.Namespace) -> tuple[Any, dict[str, Any], float | None, float | None]:
    """(preset, settings, filter_alpha, water_cm) from the preset and the options (options win)."""
    from .presets import PresetError, get

    preset = None
    settings: dict[str, Any] = {}
    filter_alpha = water = None
    if args.preset:
        try:
            preset = get(args.preset, args.presets)
        except PresetError as exc:
            raise CliError(str(exc)) from None
        settings = preset.settings()
        filter_alpha, water = preset.filter_alpha or 0.0, preset.water_cm  # a preset without a filter: off
    settings.update({k: v for k, v in (("kv", args.kv), ("ma", args.ma), ("pulses_per_s", args.pps),
                                       ("pulse_width_ms", args.width), ("abc_enabled", args.abc)) if v is not None})
    if args.kv is not None or args.ma is not None:
        settings.setdefault("abc_enabled", False)  # a technique given by hand is a manual technique
        if args.abc is None:
            settings["abc_enabled"] = False
    if args.filter is not None:
        if not 0 <= args.filter <= 1:
            raise CliError(f"--filter must be within 0..1 (0: off), got {args.filter:g}")
        filter_alpha = args.filter
    if filter_alpha is not None:
        settings["filter_alpha"] = filter_alpha
    if args.water_cm is not None:
        water = args.water_cm
    return preset, settings, filter_alpha, water


def _frame_count(args: argparse.Namespace, preset: Any, pps: float) -> int:
    if args.frames is not None and args.duration is not None:
        raise CliError("give --frames or --duration, not both")
    if args.frames is not None:
        if args.frames < 1:
            raise CliError("--frames must be at least 1")
        return int(args.frames)
    if args.duration is not None:
        if not args.duration > 0:
            raise CliError("--duration must be more than 0 s")
        return max(1, round(float(args.duration) * pps))
    if preset is not None and preset.duration_s is not None and preset.frames is None:
        return max(1, round(float(preset.duration_s) * pps))
    if preset is not None and preset.frames is not None:
        return int(preset.frames)
    return 16


def cmd_capture(args: argparse.Namespace) -> int:
    from rich.console import Console

    from . import calibration, display
    from .capture import capture, save
    from .session import SessionError
    from .sim import board as simboard

    preset, settings, _, water = _capture_plan(args)
    identity = _identity(args)
    destination = None
    if args.send:
        from .pacs import parse_destination

        try:
            destination = parse_destination(args.send)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    err = Console(stderr=True, highlight=False)
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        print(f"pulseline: warning: {text}", file=sys.stderr, flush=True)

    s = _session(args.port)
    press = release = None
    sim = _sim_of_port(args.port)
    scene_before: dict[str, Any] = {}
    ctl = None
    view = None
    try:
        _check_writable(args.output)  # before any X-rays: a capture must have somewhere to go
        if settings:
            try:
                s.configure(**settings)
            except SessionError as exc:
                raise CliError(str(exc)) from None
        frames = _frame_count(args, preset, float(s.config["pulses_per_s"]))
        cal_info = None
        if not args.no_calibration:
            try:
                cal, why = calibration.for_session(s)
            except calibration.CalibrationError as exc:
                cal, why = None, str(exc)
            if why:
                warn(why)
            if cal is not None:
                s.set_corrections(**cal.corrections())
                cal_info = cal.describe()
        if sim is not None:
            ctl = simboard.SimControl(sim)
            press, release = ctl.press, ctl.release
            if water is not None:
                scene_before = {"water_cm": ctl.status().get("water_cm")}
                ctl.set_input("water_cm", float(water))
        elif args.water_cm is not None:
            raise CliError("--water-cm sets the phantom of a simulated board; this port is not one")
        elif not args.json:
            print("press and hold the exposure switch", flush=True)
        if args.view:
            view = _capture_view(args, s, ctl)
        if args.json or not err.is_terminal:  # the live display is for a person at a terminal
            cap = capture(s, frames, press=press, release=release,
                          progress=view.show_frame if view is not None else None)
        else:
            with display.CaptureProgress(s, frames, err) as bar:
                def shown(f: Any) -> None:
                    bar.frame(f)
                    if view is not None:
                        view.show_frame(f)
                cap = capture(s, frames, press=press, release=release, progress=shown)
    finally:
        if view is not None:
            view.set_recording(False)
            view.stop()
        s.close()
        if ctl is not None and scene_before.get("water_cm") is not None:
            with contextlib.suppress(OSError, ValueError):
                ctl.set_input("water_cm", float(scene_before["water_cm"]))
    cap.calibration = cal_info
    cap.preset = preset.name if preset is not None else None
    cap.warnings = warnings
    try:
        summary = save(cap, args.output, args.port, identity)
    except OSError as exc:
        raise CliError(f"cannot write the exam to {args.output}: {_write_failure(exc, args.output)}"
                       f"{_rescue(cap)}") from None
    failed = cap.error
    if destination is not None:
        summary["pacs"] = _send(args, summary, destination)
        (args.output / "summary.json").write_text(json.dumps(summary, indent=1))
        failed = failed or summary["pacs"].get("error")
    if args.json:
        print(json.dumps(summary))
    else:
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
    if cap.error:
        print(f"pulseline: error: {cap.error} (the {len(cap.frames)} frames received are saved)", file=sys.stderr)
        return 1
    if failed:
        print(f"pulseline: error: {failed} (the exam is saved in {args.output})", file=sys.stderr)
        return 1
    return 0


def _capture_view(args: argparse.Namespace, s: Any, controls: Any) -> Any:
    """`capture --view`: the live view of this capture, marked as recording;
    the capture loop hands it each frame (it reads none itself)."""
    import webbrowser

    from .view import LiveView

    view = LiveView(s, pump=False, recording=True, controls=controls, host=args.listen, port=args.http_port)
    try:
        view.start()
    except OSError as exc:
        raise CliError(str(exc)) from None
    print(f"pulseline: live view at {view.url}", file=sys.stderr, flush=True)
    if not args.no_browser:
        webbrowser.open(view.url)
    return view


def _write_failure(exc: OSError, where: Path) -> str:
    """Why a write failed, in words: a full disk is said so even when the
    writer reports only a short write."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT or (free is not None and free < 1 << 20):
        return "no space left on the device" + (f" ({free // 1024} kB free)" if free is not None else "")
    return str(exc.strerror or exc)


def _rescue(cap: Any) -> str:
    """Disk full or the like: the frames are still in memory. Keep them as
    one raw array where there is room (the working directory, else the
    temporary directory) rather than lose them; say where."""
    import tempfile

    if not cap.frames:
        return ""
    for where in (Path.cwd(), Path(tempfile.gettempdir())):
        rescue = where / f"pulseline-rescue-{os.getpid()}.npy"
        try:
            np.save(rescue, np.stack([f.pixels for f in cap.frames]))
            return f"; the {len(cap.frames)} frames are in {rescue}"
        except OSError:
            with contextlib.suppress(OSError):
                rescue.unlink()
    return f"; the {len(cap.frames)} frames could not be saved anywhere"


def _send(args: argparse.Namespace, summary: dict[str, Any], destination: tuple[str, int]) -> dict[str, Any]:
    from .pacs import PacsError, send

    host, port = destination
    files = [args.output / summary["files"][k] for k in ("dicom_rf", "dose_sr") if summary["files"].get(k)]
    result: dict[str, Any] = {"destination": f"{host}:{port}", "called_ae": args.called_ae,
                              "calling_ae": args.calling_ae, "files": len(files), "stored": 0}
    try:
        done = send(files, host, port, called_ae=args.called_ae, calling_ae=args.calling_ae)
        result["stored"] = sum(r.ok for r in done)
    except PacsError as exc:
        result["stored"] = sum(r.ok for r in (exc.results or []))
        result["error"] = f"PACS: {exc}"
    return result


def cmd_calibrate(args: argparse.Namespace) -> int:
    from . import calibration
    from .capture import capture
    from .session import SessionError
    from .sim import board as simboard

    if args.dark < 2 or args.flat < 2:
        raise CliError("--dark and --flat need at least 2 frames each")
    s = _session(args.port)
    sim = _sim_of_port(args.port)
    ctl = simboard.SimControl(sim) if sim is not None else None
    def log(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    scene: dict[str, Any] = {}
    try:
        if ctl is not None:
            st = ctl.status()
            scene = {"water_cm": st.get("water_cm"), "structures": st.get("structures")}
        else:
            log("take everything out of the beam (open field); press and hold the exposure switch when asked")

        def expose(n: int) -> list[Any]:
            if ctl is not None:
                ctl.set_input("water_cm", 0.0)  # the simulated open field
                ctl.set_input("structures", False)
            else:
                log(f"press and hold the exposure switch for {n} frames")
            cap = capture(s, n, press=ctl.press if ctl else None, release=ctl.release if ctl else None)
            if cap.error:
                raise calibration.CalibrationError(f"flat frames: {cap.error}")
            return cap.frames

        try:
            cal = calibration.calibrate(s, dark_count=args.dark, flat_count=args.flat, kv=args.kv,
                                        pulse_width_ms=args.width, expose=expose, log=log)
        except (calibration.CalibrationError, SessionError) as exc:
            raise CliError(str(exc)) from None
    finally:
        s.close()
        if ctl is not None and scene.get("water_cm") is not None:
            with contextlib.suppress(OSError, ValueError):
                ctl.set_input("water_cm", float(scene["water_cm"]))
                ctl.set_input("structures", bool(scene["structures"]))
    try:
        path = cal.save(args.dir)
    except OSError as exc:
        raise CliError(f"cannot store the calibration in {args.dir or calibration.calibration_dir()}: "
                       f"{exc.strerror or exc}") from None
    out = {**cal.meta(), "file": str(path)}
    if args.json:
        print(json.dumps(out))
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


def cmd_monitor(args: argparse.Namespace) -> int:
    from .monitor import MonitorError, monitor

    if args.duration is not None and not args.duration > 0:
        raise CliError("--duration must be more than 0 s")
    s = _session(args.port)

    def write(line: str) -> None:
        print(line, flush=True)

    try:
        monitor(s, write=write, as_json=args.json, duration_s=args.duration, dose=args.dose)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops watching
    except MonitorError as exc:
        raise CliError(str(exc)) from None
    finally:
        s.close()
    return 0


def _sim_controls(port: str) -> Any:
    """The simulated hardware behind `port`, if it is a running simulated
    board (by name, pty, link or URL); None for anything else."""
    from .sim.board import SimControl, running_boards

    name = None
    if port == "sim" or port.startswith("sim:"):
        name = port[4:] or None
    else:
        for b in running_boards():
            if port in (b.get("pty"), b.get("url"), b.get("link_path")):
                name = b["name"]
    if name is None and not (port == "sim" or port.startswith("sim:")):
        return None
    try:
        return SimControl(name)
    except (OSError, ValueError):
        return None


def cmd_view(args: argparse.Namespace) -> int:
    import sys
    import time
    import webbrowser

    from . import ports
    from .session import Session
    from .view import LiveView

    try:
        ports.check(args.port)
    except ValueError as exc:
        raise CliError(str(exc)) from None

    def connect() -> tuple[Any, Any]:
        return Session(args.port), _sim_controls(args.port)

    def log(line: str) -> None:
        print(f"pulseline view: {line}", file=sys.stderr, flush=True)

    # No board yet is not an error for a monitor: the page says so, and
    # shows the board when it answers (likewise after losing it).
    view = LiveView(connect=connect, where=args.port, host=args.listen, port=args.http_port, log=log)
    try:
        try:
            view.start()
        except OSError as exc:
            raise CliError(str(exc)) from None
        if args.json:
            print(json.dumps({"url": view.url, "port": args.port}), flush=True)
        else:
            print(f"live view of {args.port} at {view.url} (Ctrl-C to stop)", flush=True)
        if not args.no_browser:
            webbrowser.open(view.url)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()  # closes the session it opened
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import PresetError, load

    try:
        presets = load(args.presets)
    except PresetError as exc:
        raise CliError(str(exc)) from None
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


def cmd_flash(args: argparse.Namespace) -> int:
    from .flash import FlashError, flash, handshake, mpy_cross_version, plan_offline

    if args.port is None:
        if not (args.dry_run and args.board):
            raise CliError("flash needs --port (or --dry-run --board rp2 to list the bundle a board would get)")
        try:
            plan = plan_offline(args.board)
            (major, minor), (mpy, sub) = mpy_cross_version()
        except FlashError as exc:
            raise CliError(str(exc)) from None
        if args.json:
            print(json.dumps({**plan.as_dict(), "dry_run": True, "firmware": None}))
            return 0
        total = sum(f.size for f in plan.bundle)
        print(f"{args.board} bundle for MicroPython {major}.{minor} (mpy v{mpy}.{sub}): {len(plan.bundle)} files, "
              f"{total} bytes; the firmware will report hash {plan.firmware_hash[:16]}")
        for f in plan.bundle:
            print(f"  {f.path:28} {f.size:7} bytes  sha256 {f.sha256[:16]}")
        print("(dry run, no board: nothing changed)")
        return 0
    try:
        plan = flash(args.port, dry_run=args.dry_run, board=args.board,
                     log=(lambda m: None) if args.json else print)
        board = None if args.dry_run else handshake(args.port, expect_hash=plan.firmware_hash)
    except FlashError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps({**plan.as_dict(), "dry_run": args.dry_run, "firmware": board and board.get("firmware")}))
        return 0
    b = plan.board
    total = sum(f.size for f in plan.bundle)
    print(f"{args.port}: MicroPython {'.'.join(map(str, b['version']))} on {b['platform']}; bundle of "
          f"{len(plan.bundle)} files, {total} bytes")
    if args.dry_run:
        for f in plan.bundle:
            mark = "copy" if f in plan.copy else "same"
            print(f"  {mark:5} {f.path:28} {f.size:7} bytes  sha256 {f.sha256[:16]}")
        for path in plan.remove:
            print(f"  remove {path}")
        print(f"{len(plan.copy)} to copy, {len(plan.remove)} to remove (dry run: nothing changed)")
    else:
        print(f"{len(plan.copy)} copied, {len(plan.remove)} removed, {len(plan.bundle) - len(plan.copy)} unchanged; "
              f"firmware {board and board.get('firmware')} ({plan.firmware_hash[:16]}) answers the handshake")
    return 0


def _port_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="device path, pyserial URL, or sim[:NAME]")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulseline", description=__doc__, epilog=ALL_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("version", "versions of the host, its protocol and its CRC backend")
    _json_arg(p)
    p.set_defaults(func=cmd_version)
    p = command("decode", "assemble frames from a recorded board->host byte stream (or a test's transcript)")
    p.add_argument("stream", type=Path)
    p.add_argument("--pixels", type=int, default=256, help="pixels per line (default 256)")
    p.add_argument("--lines", type=int, default=256, help="lines per frame (default 256)")
    p.add_argument("--format", choices=sorted(PIXEL_FORMATS), default="mono12p")
    p.add_argument("--in-flight", type=int, default=4, help="frames assembled at once (default 4)")
    p.add_argument("-o", "--output", type=Path, help="write the frames as one .npy stack")
    _json_arg(p)
    p.set_defaults(func=cmd_decode)

    p = command("view", "the live view in a browser: frames, technique, dose displays, alarms, last image hold")
    _port_arg(p)
    p.add_argument("--listen", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--http-port", type=int, default=0, help="web server port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the address, do not open a browser")
    _json_arg(p)
    p.set_defaults(func=cmd_view)

    p = command("transcript", "the packets of a test's protocol transcript (evidence bundle), in order, decoded")
    p.add_argument("transcript", type=Path)
    p.add_argument("--lines", action="store_true", help="every line packet (default: one per frame's run of lines)")
    p.add_argument("--heartbeat", action="store_true", help="include the heartbeat (pings and their answers)")
    _json_arg(p)
    p.set_defaults(func=cmd_transcript)

    p = command("sim", "start, list, stop or drive simulated boards")
    p.add_argument("action", nargs="?", default="start", choices=["start", "stop", "list", "press", "release", "set"])
    p.add_argument("values", nargs="*", help="for set: an input (switch, door_closed, key_on, generator_ready, "
                   "hlc_switch, water_cm, structures, ...) and its value")
    p.add_argument("--name", help="board name (default: the next free ttyACM<n>; for other actions: the first)")
    p.add_argument("--fs", type=Path, help="the board's filesystem directory (default .pulseline/<name>.fs)")
    p.add_argument("--link", default="usb-fs", help="usb-fs, usb-hs or uart:BAUD (default usb-fs)")
    p.add_argument("--faults", default="", help="seeded link faults, e.g. corrupt=1e-5,drop=0.01,disconnect=30")
    p.add_argument("--seed", type=int, default=0, help="the plant's seed: detector maps, noise, serial numbers")
    p.add_argument("--timeline", type=Path, help="plant timeline (JSON) to load")
    p.add_argument("--water-cm", type=float, help="phantom: water slab thickness, cm (default 20)")
    p.add_argument("--detach", action="store_true", help="run in the background and return")
    p.add_argument("--all", action="store_true", help="stop: every running simulated board")
    _json_arg(p)
    p.set_defaults(func=cmd_sim)

    p = command("ports", "serial ports (with USB ids) and running simulated boards")
    _json_arg(p)
    p.set_defaults(func=cmd_ports)

    p = command("flash", "compile, copy what differs, verify by hash, restart, handshake")
    p.add_argument("--port", help="device path, pyserial URL, or sim[:NAME] (not needed for --dry-run --board)")
    p.add_argument("--board", choices=["rp2", "sim"],
                   help="the kind of board: with --dry-run and no --port, list the bundle it would get")
    p.add_argument("--dry-run", action="store_true", help="show the bundle and what would change")
    _json_arg(p)
    p.set_defaults(func=cmd_flash)

    p = command("exam", "the dose report of the current or a past exam (from the board's journal); --new starts one")
    _port_arg(p)
    p.add_argument("--new", action="store_true", help="start a new exam (resets the cumulative values)")
    p.add_argument("--exam", type=int, help="the report of this exam (a past one) from the journal")
    _json_arg(p)
    p.set_defaults(func=cmd_exam)

    p = command("info", "firmware, serials, state and configuration of a board")
    _port_arg(p)
    _json_arg(p)
    p.set_defaults(func=cmd_info)

    p = command("calibrate", "dark and flat frames -> offset, gain and defective-pixel maps for the detector")
    _port_arg(p)
    p.add_argument("--dark", type=int, default=16, help="dark frames (beam off), default 16")
    p.add_argument("--flat", type=int, default=32, help="flat frames (open field), default 32")
    p.add_argument("--kv", type=float, default=60.0, help="flat-field kV (default 60; mA is chosen for half range)")
    p.add_argument("--width", type=float, help="flat-field pulse width, ms (default the shortest, 2)")
    p.add_argument("--dir", type=Path, help="where calibrations are kept (default $PULSELINE_CALIBRATION_DIR "
                   "or ~/.local/share/pulseline/calibration)")
    _json_arg(p)
    p.set_defaults(func=cmd_calibrate)

    p = command("capture", "expose and save an exam: DICOM RF + dose SR, TIFF stack, PNG, JSON summary")
    _port_arg(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory (one per capture)")
    g = p.add_argument_group("technique (options win over the preset)")
    g.add_argument("--preset", help="a named protocol (see: pulseline presets)")
    g.add_argument("--presets", type=Path, help="a JSON file of more presets (or $PULSELINE_PRESETS)")
    g.add_argument("--frames", type=int, help="frames to capture (default: the preset's, else 16)")
    g.add_argument("--duration", type=float, help="seconds of exposure instead of --frames")
    g.add_argument("--kv", type=float, help="tube voltage, kV (60..120): a manual technique")
    g.add_argument("--ma", type=float, help="tube current, mA (1..80)")
    g.add_argument("--pps", type=float, help="pulses per second: 3.75, 7.5, 15 or 30")
    g.add_argument("--width", type=float, help="pulse width, ms (2..20, at most half the period)")
    g.add_argument("--abc", action=argparse.BooleanOptionalAction, default=None, help="brightness control")
    g.add_argument("--filter", type=float, help="recursive noise filter alpha (0..1; 0 off)")
    g.add_argument("--water-cm", type=float, help="simulated board: the phantom's water thickness, cm")
    g.add_argument("--no-calibration", action="store_true", help="save raw frames even if a calibration exists")
    g = p.add_argument_group("exam identity (anonymous by default)")
    g.add_argument("--patient-name", help="DICOM person name, e.g. DOE^JANE")
    g.add_argument("--patient-id")
    g.add_argument("--study-id")
    g.add_argument("--study-uid", help="add to an existing study (default: a new one)")
    g.add_argument("--accession")
    g.add_argument("--series-number", type=int)
    g.add_argument("--study-description")
    g.add_argument("--series-description")
    g.add_argument("--institution")
    g = p.add_argument_group("PACS")
    g.add_argument("--send", metavar="HOST:PORT", help="store the exam on a PACS (DICOM C-STORE)")
    g.add_argument("--called-ae", default="ANY-SCP", help="the PACS's AE title (default ANY-SCP)")
    g.add_argument("--calling-ae", default="PULSELINE", help="our AE title (default PULSELINE)")
    g = p.add_argument_group("live view (see: pulseline view)")
    g.add_argument("--view", action="store_true", help="show the capture in the browser as it comes, marked REC")
    g.add_argument("--listen", default="127.0.0.1", help="with --view: the address to serve on (default loopback)")
    g.add_argument("--http-port", type=int, default=0, help="with --view: web server port (default: a free one)")
    g.add_argument("--no-browser", action="store_true", help="with --view: print the address, open no browser")
    p.add_argument("--preview", action=argparse.BooleanOptionalAction, default=None,
                   help="show the last image in the terminal (default: when it is a terminal)")
    _json_arg(p)
    p.set_defaults(func=cmd_capture)

    p = command("monitor", "state, events, alarms and firmware logs as they come (until Ctrl-C)")
    _port_arg(p)
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--dose", action=argparse.BooleanOptionalAction, default=True,
                   help="show the dose displays (twice a second while exposing)")
    _json_arg(p)
    p.set_defaults(func=cmd_monitor)

    p = command("presets", "the named protocol presets capture knows")
    p.add_argument("--presets", type=Path, help="a JSON file of more presets (or $PULSELINE_PRESETS)")
    _json_arg(p)
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"pulseline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pulseline: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (e.g. | head)
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
