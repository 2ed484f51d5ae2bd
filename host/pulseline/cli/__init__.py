"""The `pulseline` command: simulated boards, board information, capture,
and stream decoding. Every board command takes --port: a device path, a
pyserial URL, or a simulated board ("sim", "sim:NAME")."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .. import __version__
from ..errors import PulselineError
from ..exam.sr_templates import ANATOMIC_REGIONS
from ..link.protocol import PIXEL_FORMATS, wire

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
    "fault-reset": """examples:
  pulseline fault-reset --port sim             clear the latched fault; the board comes back disarmed
  pulseline fault-reset --port /dev/ttyACM0 --json
""",
    "disarm": """examples:
  pulseline disarm --port sim
  pulseline disarm --port /dev/ttyACM0 --json
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
  pulseline view --port sim --listen 0.0.0.0 --allow-remote   reachable from other machines (not only this one)
  pulseline view exam3                         an exam directory instead of a port: its review (pulseline review)
""",
    "review": """examples:
  pulseline review exam3                       the recorded run in the browser: cine loop, technique and dose per frame
  pulseline review exam3 --no-browser --http-port 8080
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
    "export": """examples:
  pulseline export exam --mp4 exam.mp4             H.264 at the run's frame rate, windowed for display
  pulseline export exam --mp4 exam.mp4 --burn-in   each frame's time, kV, mA and air kerma in the picture
  pulseline export exam --contact-sheet sheet.png  a grid of the run's frames (up to 36), for reports
""",
}
ALL_EXAMPLES = "examples:\n" + "".join(
    line + "\n" for text in EXAMPLES.values() for line in text.splitlines()[1:])


class CliError(PulselineError):
    """A user-facing error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (SPEC 2.6), naming the
    command and where its options are told, exit status 2; argparse's own
    prints the whole usage first. Subparsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        text = " ".join(message.splitlines())
        self.exit(2, f"pulseline: error: {command + ': ' if command else ''}{text} (see: {self.prog} --help)\n")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class Number:
    """An argparse type: a finite number (a whole one with `whole`) within
    lo..hi (above lo, not at it, with `above`; or one of `choices`), else
    one line naming the value and what is allowed. The one place every
    numeric option is read: float() takes "nan", "inf" and "1e999" (inf),
    a nan passes no range check (every comparison is false) and an inf
    breaks the arithmetic after it (round(inf * pps))."""

    def __init__(self, lo: float, hi: float, unit: str = "", *, whole: bool = False, above: bool = False,
                 choices: tuple[float, ...] = ()) -> None:
        self.lo, self.hi, self.whole, self.above, self.choices = lo, hi, whole, above, choices
        unit = f" {unit}" if unit else ""
        if choices:
            self.allowed = f"one of {', '.join(map(_num, choices[:-1]))} or {_num(choices[-1])}{unit}"
        elif above:
            self.allowed = f"a number more than {_num(lo)} and at most {_num(hi)}{unit}"
        else:
            self.allowed = f"{'a whole number' if whole else 'a number'} within {_num(lo)}..{_num(hi)}{unit}"

    def __call__(self, text: str) -> float:
        try:
            value: float = int(text) if self.whole else float(text)
        except ValueError:
            value = float("nan")
        ok = ((value in self.choices) if self.choices else
              (self.lo < value if self.above else self.lo <= value) and value <= self.hi)
        if not ok:  # a nan (not a number, or "nan") fails every comparison
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.allowed}")
        return value


class Signals:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal) end a command the same
    way: a KeyboardInterrupt naming the signal, so a capture releases the
    switch, disarms and saves what came. Only the first one interrupts, and
    none inside `deferred()` (the clean-up and the saving): a second signal
    must not cut those short. main() installs it for the command's life."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._deferred = 0

    def _handler(self, signum: int, frame: Any) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.seen.append(name)
        if len(self.seen) == 1 and not self._deferred:
            raise KeyboardInterrupt(name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import threading

        self.seen = []
        if threading.current_thread() is not threading.main_thread():
            yield  # (signals reach the main thread only: called in-process from another, leave them be)
            return
        before = {sig: signal.signal(sig, self._handler) for sig in self.HANDLED}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


SIGNALS = Signals()


def _say_error(text: str) -> None:
    """The one line of an error, if there is still somewhere to say it (a
    closed terminal has gone: the exit status says it)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"pulseline: error: {text}", file=sys.stderr, flush=True)


class _IntermixedParser(Parser):
    """Positionals anywhere among the options: argparse otherwise takes
    them only up to the first option ("sim set --name a door_closed false"
    would leave "door_closed false" unrecognized)."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:  # parse_known_intermixed_args calls back here, twice
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def cmd_version(args: argparse.Namespace) -> int:
    from ..link.assembler import crc_backend

    info = {"pulseline": __version__, "protocol": wire.PROTOCOL_VERSION, "crc": crc_backend()}
    print(json.dumps(info) if args.json else "  ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def cmd_transcript(args: argparse.Namespace) -> int:
    from ..link import evidence

    records = evidence.read_transcript(args.transcript)
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
    from ..link import evidence
    from ..link.assembler import FrameAssembler
    from ..link.frames import Frame

    if args.output is not None:
        _check_can_write(args.output, directory=False)  # said before the work, not after it
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
                feed(evidence.stream(evidence.read_transcript(args.stream), evidence.TO_HOST))
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
            with open(args.output, "wb") as out:  # the name given: np.save(name) adds .npy to one without
                np.save(out, stack)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
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
    from ..sim.board import running_boards

    for b in running_boards():
        if port in ("sim", f"sim:{b['name']}", b["pty"], b["url"], b["link_path"]):
            return str(b["name"])
    return None


def _session(port: str) -> Any:
    from ..link.session import Session

    try:
        return Session(port)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def cmd_sim(args: argparse.Namespace) -> int:
    from ..sim import board as simboard

    if args.values and args.action != "set":
        raise CliError(f"sim {args.action} takes no {' '.join(args.values)!r} "
                       "(only sim set takes an input and a value)")
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
            if args.action == "set" and len(args.values) != 2:
                raise CliError("sim set needs an input and a value, e.g.: pulseline sim set door_closed false")
            ctl = simboard.SimControl(args.name)
            if args.action == "set":
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
    from ..sim.link import parse_link

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
    import select
    import subprocess
    import time

    from ..sim import board as simboard

    try:
        name = simboard.check_name(args.name) if args.name else simboard.next_free_name()
        # Said here, before anything starts; the board's own start decides
        # for good (its locks), should another start meanwhile.
        simboard.check_free(name, args.fs)
        simboard.private_dir(simboard.STATE_DIR)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    log = simboard.STATE_DIR / f"{name}.log"
    cmd = [sys.executable, "-m", "pulseline.sim.board", "--name", name, "--link", args.link, "--faults",
           args.faults, "--seed", str(args.seed), "--log", str(log)]
    if args.fs:
        cmd += ["--fs", str(args.fs)]
    if args.timeline:
        cmd += ["--timeline", str(args.timeline)]
    if args.water_cm is not None:
        cmd += ["--water-cm", str(args.water_cm)]
    # Its stderr comes here until it has started (then it goes to its log):
    # the end of that pipe says "started, or failed, and why".
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stderr is not None
    said = bytearray()
    ended = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and not (ended and proc.poll() is not None):
            if not ended:
                if select.select([proc.stderr], [], [], 0.1)[0]:
                    chunk = os.read(proc.stderr.fileno(), 65536)
                    said += chunk[:65536 - len(said)]
                    ended = not chunk
                continue
            # Its state file with its own pid: this board, not another of that name.
            mine = [b for b in simboard.running_boards() if b.get("name") == name and b.get("pid") == proc.pid]
            if mine:
                _print_board(mine[0], args.json)
                return 0
            time.sleep(0.05)
    finally:
        proc.stderr.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise CliError(f"the simulated board did not start within 30 s (log: {log})")
    lines = said.decode(errors="replace").strip().splitlines() or ["no output"]
    if proc.returncode == 2 and len(lines) == 1:  # its one-line reason (a board already runs, say)
        raise CliError(lines[0])
    raise CliError(f"the simulated board did not start: {lines[-1]}")


def cmd_ports(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    from ..sim.board import running_boards

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
    from ..exam import exams

    if args.new and args.exam is not None:
        raise CliError("give --new or --exam, not both")
    s = _session(args.port)
    try:
        if args.new:
            s.command("new_exam")
        # The current exam from the board; a past one rebuilt from its journal.
        report = s.dose_report() if args.exam is None else exams.report(exams.read_journal(s), args.exam)
    except ValueError as exc:
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
              + (", high-level control" if e.get("hlc") else "") + exams.how_it_ended(e))
    return 0


def cmd_fault_reset(args: argparse.Namespace) -> int:

    s = _session(args.port)
    try:
        body = s.command("fault_reset")
    finally:
        s.close()
    if args.json:
        print(json.dumps(body))
        return 0
    cleared = body.get("cleared")
    if cleared:
        print(f"{args.port}: cleared fault {cleared['code']} ({cleared['name']}): {cleared['message']}; "
              f"state {body['state']} (arm again to expose)")
    else:
        print(f"{args.port}: no fault was latched; state {body['state']}")
    return 0


def cmd_disarm(args: argparse.Namespace) -> int:

    s = _session(args.port)
    try:
        body = s.command("disarm")
        status = s.status()
    finally:
        s.close()
    if args.json:
        print(json.dumps({**body, "block": status.get("block")}))
        return 0
    note = " (a fault is latched: pulseline fault-reset clears it)" if body["state"] == "FAULT" else ""
    print(f"{args.port}: disarmed; state {body['state']}{note}")
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


def _check_can_write(path: Path, *, directory: bool) -> None:
    """Before a board is opened (or a stream decoded): `path` can be
    written, as a directory that is there or can be made (directory), or
    as a file in a directory that is there. Nothing is left behind: a
    command that fails later has created nothing. The probe is a nameless
    temporary file, so a read-only filesystem says so even to root."""
    import tempfile

    try:
        if directory:
            base = path
            while not base.exists() and base.parent != base:  # the nearest existing ancestor: mkdir makes the rest
                base = base.parent
        elif path.is_dir():
            raise CliError(f"cannot write to {path}: it is a directory")
        else:
            base = path.parent
        if not base.is_dir():
            raise CliError(f"cannot write to {path}: {base} " + ("is not a directory" if base.exists() else
                                                                  "does not exist"))
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise CliError(f"cannot write to {path}: {exc.strerror or exc}") from None


def _identity(args: argparse.Namespace) -> Any:
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
    # Checked now, by pydicom's own rules for each value representation: the
    # writer only warns (after the exposure) and stores a cut or mangled value.
    from pydicom import config as dicom_config
    from pydicom.valuerep import validate_value

    vrs = {"patient_name": "PN", "patient_id": "LO", "study_id": "SH", "accession_number": "SH", "study_uid": "UI",
           "institution": "LO", "study_description": "LO", "series_description": "LO", "indication": "LO",
           "patient_age": "AS", "patient_sex": "CS", "body_part": "CS"}
    for k, v in fields.items():
        if not isinstance(v, str):
            continue
        option = "--" + ("accession" if k == "accession_number" else k).replace("_", "-")
        if "\\" in v or any(ord(c) < 32 for c in v):
            raise CliError(f"{option} must not hold backslashes or control characters")
        try:
            v.encode("latin-1")  # the exam files' character set: ISO_IR 100
            validate_value(vrs[k], v, dicom_config.RAISE)
        except UnicodeEncodeError:
            raise CliError(f"{option} {v!r} has characters outside Latin-1 (ISO_IR 100), the exam files' "
                           "character set") from None
        except ValueError as exc:
            raise CliError(f"{option} {v!r}: {str(exc).split(' Please see')[0]}") from None
    return Identity(**{k: v for k, v in fields.items() if v is not None})


def _capture_plan(args: argparse.Namespace) -> tuple[Any, dict[str, Any], float | None, float | None]:
    """(preset, settings, filter_alpha, water_cm) from the preset and the options (options win)."""
    from ..exam.presets import get, load

    preset = None
    settings: dict[str, Any] = {}
    filter_alpha = water = None
    if args.preset:
        preset = get(args.preset, args.presets)
    elif args.presets is not None:
        load(args.presets)  # a bad file given is said, even with no --preset to take from it
    if preset is not None:
        settings = preset.settings()
        filter_alpha, water = preset.filter_alpha or 0.0, preset.water_cm  # a preset without a filter: off
    settings.update({k: v for k, v in (("kv", args.kv), ("ma", args.ma), ("pulses_per_s", args.pps),
                                       ("pulse_width_ms", args.width), ("abc_enabled", args.abc)) if v is not None})
    if args.kv is not None or args.ma is not None:
        settings.setdefault("abc_enabled", False)  # a technique given by hand is a manual technique
        if args.abc is None:
            settings["abc_enabled"] = False
    width, pps = settings.get("pulse_width_ms"), settings.get("pulses_per_s")
    if width is not None and pps is not None and width > 500.0 / pps:  # as the firmware's Technique.check
        raise CliError(f"a pulse width of {width:g} ms is more than half the period at {pps:g} pps "
                       f"(--width at most {500.0 / pps:g} ms at --pps {pps:g})")
    if args.filter is not None:
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

    from ..exam import calibration
    from ..exam.capture import SaveError, capture, save, write_atomic
    from ..sim import board as simboard
    from ..ui import display

    preset, settings, _, water = _capture_plan(args)
    identity = _identity(args)
    if preset is not None and not identity.protocol_name:
        identity.protocol_name = str(getattr(preset, "name", preset))[:64]
    destination = None
    if args.send:
        from ..exam.pacs import parse_destination

        try:
            destination = parse_destination(args.send)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    err = Console(stderr=True, highlight=False)
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        print(f"pulseline: warning: {text}", file=sys.stderr, flush=True)

    # Before the board hears anything: somewhere to save, and a phantom only
    # where there is one (a sim: port whose board is not running: the session says so).
    _check_can_write(args.output, directory=True)
    sim = _sim_of_port(args.port)
    if args.water_cm is not None and sim is None and args.port.split(":")[0] != "sim":
        raise CliError("--water-cm sets the phantom of a simulated board; this port is not one")
    s = _session(args.port)
    press = release = None
    scene_before: dict[str, Any] = {}
    ctl = None
    view = None
    cap = None
    try:
        _check_writable(args.output)  # before any X-rays: a capture must have somewhere to go
        if settings:
            s.configure(**settings)
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
    except KeyboardInterrupt:
        if cap is None:
            raise
        # (a signal as the display closed, the capture over: what came is saved below)
    finally:
        with SIGNALS.deferred():  # a second signal must not cut the clean-up short
            if view is not None:
                view.set_recording(False)
                view.stop()
            s.close()
            if ctl is not None and scene_before.get("water_cm") is not None:
                with contextlib.suppress(OSError, ValueError):
                    ctl.set_input("water_cm", float(scene_before["water_cm"]))
    assert cap is not None  # (else its exception went up)
    cap.calibration = cal_info
    cap.preset = preset.name if preset is not None else None
    cap.warnings = warnings
    with SIGNALS.deferred():  # what came is saved whole, whatever signal comes now
        try:
            summary = save(cap, args.output, args.port, identity)
        except SaveError as exc:
            raise CliError(f"cannot write the exam to {args.output}: {exc.name}: "
                           f"{_write_failure(exc.cause, args.output)}{_rescue(cap)}") from None
        except OSError as exc:
            raise CliError(f"cannot write the exam to {args.output}: {_write_failure(exc, args.output)}"
                           f"{_rescue(cap)}") from None
        failed = cap.error
        if destination is not None:
            summary["pacs"] = _send(args, summary, destination)
            text = json.dumps(summary, indent=1)
            try:
                write_atomic(args.output / "summary.json", lambda p: p.write_text(text))
            except OSError as exc:
                failed = failed or f"cannot update summary.json with the PACS result: {exc.strerror or exc}"
            failed = failed or summary["pacs"].get("error")
    if SIGNALS.seen and not cap.error:
        cap.error = f"interrupted ({SIGNALS.seen[0]}) while saving"
    with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): the exam is saved, the status says how
        _print_capture(args, cap, summary, err)
    if cap.error:
        _say_error(f"{cap.error} (the {len(cap.frames)} frames received are saved)")
        return 1
    if failed:
        _say_error(f"{failed} (the exam is saved in {args.output})")
        return 1
    return 0


def _print_capture(args: argparse.Namespace, cap: Any, summary: dict[str, Any], err: Any) -> None:
    from rich.console import Console

    from ..ui import display

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


def _listen_checked(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`cmd`, refusing first (before any board is opened) a live view's
    --listen beyond this machine without --allow-remote."""
    def checked(args: argparse.Namespace) -> int:
        from ..ui.view import check_listen

        # capture: only with --view; view EXAM (a review) says its own
        if getattr(args, "view", True) and getattr(args, "exam", None) is None:
            try:
                check_listen(args.listen, args.allow_remote)
            except ValueError as exc:
                raise CliError(str(exc)) from None
        return cmd(args)
    return checked


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
    from ..exam.capture import write_atomic

    stack = np.stack([f.pixels for f in cap.frames])
    for where in (Path.cwd(), Path(tempfile.gettempdir())):
        rescue = where / f"pulseline-rescue-{os.getpid()}.npy"
        try:
            write_atomic(rescue, lambda p: np.save(p, stack))
            return f"; the {len(cap.frames)} frames are in {rescue}"
        except OSError:
            continue
    return f"; the {len(cap.frames)} frames could not be saved anywhere"


def _send(args: argparse.Namespace, summary: dict[str, Any], destination: tuple[str, int]) -> dict[str, Any]:
    from ..exam.pacs import PacsError, send

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
    from ..exam import calibration
    from ..exam.capture import capture
    from ..sim import board as simboard

    _check_can_write(args.dir or calibration.calibration_dir(), directory=True)  # before the board hears anything
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

        cal = calibration.calibrate(s, dark_count=args.dark, flat_count=args.flat, kv=args.kv,
                                    pulse_width_ms=args.width, expose=expose, log=log)
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
    from ..ui.monitor import monitor

    s = _session(args.port)  # (--duration is checked by its type)

    def write(line: str) -> None:
        print(line, flush=True)

    try:
        monitor(s, write=write, as_json=args.json, duration_s=args.duration, dose=args.dose)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops watching
    finally:
        s.close()
    return 0


def _sim_controls(port: str) -> Any:
    """The simulated hardware behind `port`, if it is a running simulated
    board (by name, pty, link or URL); None for anything else."""
    from ..sim.board import SimControl, running_boards

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


def _serve_page(view: Any, args: argparse.Namespace, log: Callable[[str], None], line: str,
                info: dict[str, Any]) -> int:
    """Serve a page (a LiveView or a ReviewView) until Ctrl-C: its address
    on stdout (`line`, or with --json `info` and the url), who else can reach
    it, and the browser opened on it unless --no-browser."""
    import time

    try:
        try:
            view.start()
        except OSError as exc:
            raise CliError(str(exc)) from None
        if args.json:
            print(json.dumps({"url": view.url, **info}), flush=True)
        else:
            print(f"{line} at {view.url} (Ctrl-C to stop)", flush=True)
        if view.reach():
            log(f"warning: {view.reach()}")
        if not args.no_browser:
            view.open_in_browser()  # the URL's token kept off the browser's command line
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()  # (a live view closes the session it opened)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """A recorded run (an exam directory) in the browser: the review."""
    from ..exam.exam_dir import read_exam
    from ..ui.review import RISK, WHAT, ReviewView
    from ..ui.view import check_listen

    try:
        check_listen(args.listen, args.allow_remote, what=WHAT, risk=RISK)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    exam = read_exam(args.exam)
    try:
        view = ReviewView(exam, host=args.listen, port=args.http_port, allow_remote=args.allow_remote)
    except ValueError as exc:
        raise CliError(str(exc)) from None

    def log(line: str) -> None:
        print(f"pulseline review: {line}", file=sys.stderr, flush=True)

    return _serve_page(view, args, log, f"review of {args.exam} ({len(exam)} frames)",
                       {"exam": str(args.exam), "frames": len(exam)})


def cmd_view(args: argparse.Namespace) -> int:
    from ..link import ports
    from ..link.session import Session
    from ..ui.view import LiveView

    if args.exam is not None:  # an exam directory, not a board: its review
        if args.port is not None:
            raise CliError("view: give --port (a board's live view) or an exam directory (its review), not both")
        if not args.exam.is_dir():
            raise CliError(f"{args.exam} is not an exam directory (for a board's live view: pulseline view "
                           f"--port {args.exam})")
        return cmd_review(args)
    if args.port is None:
        raise CliError("view needs --port (a board's live view) or an exam directory (the review of a recorded run)")
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
    try:
        view = LiveView(connect=connect, where=args.port, host=args.listen, port=args.http_port, log=log,
                        allow_remote=args.allow_remote)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return _serve_page(view, args, log, f"live view of {args.port}", {"port": args.port})


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


def cmd_flash(args: argparse.Namespace) -> int:
    from ..targets.flash import flash, handshake, mpy_cross_version, plan_offline

    if args.port is None:
        if not (args.dry_run and args.board):
            raise CliError("flash needs --port (or --dry-run --board rp2 to list the bundle a board would get)")
        plan = plan_offline(args.board)
        (major, minor), (mpy, sub) = mpy_cross_version()
        if args.json:
            print(json.dumps({**plan.as_dict(), "dry_run": True, "firmware": None}))
            return 0
        total = sum(f.size for f in plan.bundle)
        print(f"{args.board} bundle for MicroPython {major}.{minor} (mpy v{mpy}.{sub}): {len(plan.bundle)} files, "
              f"{total} bytes; the firmware will report hash {plan.firmware_hash[:16]}")
        width = max(len(f.path) for f in plan.bundle)
        for f in plan.bundle:
            print(f"  {f.path:{width}} {f.size:7} bytes  sha256 {f.sha256[:16]}")
        print("(dry run, no board: nothing changed)")
        return 0
    plan = flash(args.port, dry_run=args.dry_run, board=args.board,
                 log=(lambda m: None) if args.json else print)
    board = None if args.dry_run else handshake(args.port, expect_hash=plan.firmware_hash)
    if args.json:
        print(json.dumps({**plan.as_dict(), "dry_run": args.dry_run, "firmware": board and board.get("firmware")}))
        return 0
    b = plan.board
    total = sum(f.size for f in plan.bundle)
    print(f"{args.port}: MicroPython {'.'.join(map(str, b['version']))} on {b['platform']}; bundle of "
          f"{len(plan.bundle)} files, {total} bytes")
    if args.dry_run:
        width = max(len(f.path) for f in plan.bundle)
        for f in plan.bundle:
            mark = "copy" if f in plan.copy else "same"
            print(f"  {mark:5} {f.path:{width}} {f.size:7} bytes  sha256 {f.sha256[:16]}")
        for path in plan.remove:
            print(f"  remove {path}")
        print(f"{len(plan.copy)} to copy, {len(plan.remove)} to remove (dry run: nothing changed)")
    else:
        print(f"{len(plan.copy)} copied, {len(plan.remove)} removed, {len(plan.bundle) - len(plan.copy)} unchanged; "
              f"firmware {board and board.get('firmware')} ({plan.firmware_hash[:16]}) answers the handshake")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A recorded run (an exam directory) as an MP4 and/or a contact sheet."""
    if not args.mp4 and not args.contact_sheet:
        raise CliError("export needs --mp4 FILE, --contact-sheet FILE.png, or both")
    if args.burn_in and not args.mp4:
        raise CliError("--burn-in goes with --mp4 (it burns the time and dose into the video's frames)")
    from ..exam.exam_dir import read_exam
    from ..exam.export import ExportError, export_contact_sheet, export_mp4

    for out in (args.mp4, args.contact_sheet):
        if out is not None:
            _check_can_write(out, directory=False)
    exam = read_exam(args.exam_dir)
    result: dict[str, Any] = {"exam": str(args.exam_dir), "frames": len(exam)}
    jobs: list[tuple[str, Path | None, Callable[[Path], dict[str, Any]]]] = [
        ("mp4", args.mp4, lambda p: export_mp4(exam, p, burn_in=args.burn_in)),
        ("contact_sheet", args.contact_sheet,
         lambda p: export_contact_sheet(exam, p, max_frames=int(args.sheet_frames)))]
    for key, out, export in jobs:
        if out is None:
            continue
        try:
            result[key] = export(out)
        except (OSError, ValueError, ExportError) as exc:
            raise CliError(f"cannot write {out}: {getattr(exc, 'strerror', None) or exc}") from None
    if args.json:
        print(json.dumps(result))
        return 0
    if "mp4" in result:
        m = result["mp4"]
        print(f"{args.mp4}: {m['frames']} frames, {m['width']} x {m['height']}, {m['fps']:g} fps ({m['frame_rate']}), "
              f"{m['duration_s']:.2f} s, {m['codec']}" + (", time and dose burnt in" if m["burn_in"] else ""))
    if "contact_sheet" in result:
        c = result["contact_sheet"]
        print(f"{args.contact_sheet}: {len(c['frames_shown'])} of {c['frames']} frames, {c['cols']} x {c['rows']} "
              f"grid, {c['width']} x {c['height']} px")
    return 0


def _port_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="device path, pyserial URL, or sim[:NAME]")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def build_parser() -> argparse.ArgumentParser:
    from .._native import lib as native
    from ..exam.presets import MAX_DURATION_S, MAX_FRAMES
    from ..mpcompat import import_firmware
    from ..plant.timeline import WATER_CM_MAX, WATER_CM_MIN

    # The limits are the firmware's, the native assembler's and the plant's
    # own: the host refuses what they would, before anything is sent.
    controller = import_firmware("pulsefw.controller")
    fields = import_firmware("pulsefw.config").FIELDS
    kv = Number(controller.KV_MIN, controller.KV_MAX, "kV")
    width = Number(controller.WIDTH_MIN_MS, controller.WIDTH_MAX_MS, "ms")
    water = Number(WATER_CM_MIN, WATER_CM_MAX, "cm")
    http_port = Number(0, 65535, whole=True)
    parser = Parser(prog="pulseline", description=__doc__, epilog=ALL_EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)  # subcommands: Parser too (parser_class)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def plain_command(name: str, help_text: str, func: Callable[[argparse.Namespace], int], *, port: bool) -> None:
        """A command with no options but --json (and --port, for a board's)."""
        p = command(name, help_text)
        if port:
            _port_arg(p)
        _json_arg(p)
        p.set_defaults(func=func)

    plain_command("version", "versions of the host, its protocol and its CRC backend", cmd_version, port=False)
    p = command("decode", "assemble frames from a recorded board->host byte stream (or a test's transcript)")
    p.add_argument("stream", type=Path)
    p.add_argument("--pixels", type=Number(1, native.PL_MAX_PIXELS_PER_LINE, whole=True), default=256,
                   help="pixels per line (default 256)")
    p.add_argument("--lines", type=Number(1, native.PL_MAX_LINES_PER_FRAME, whole=True), default=256,
                   help="lines per frame (default 256)")
    p.add_argument("--format", choices=sorted(PIXEL_FORMATS), default="mono12p")
    p.add_argument("--in-flight", type=Number(1, native.PL_MAX_FRAMES_IN_FLIGHT, whole=True), default=4,
                   help="frames assembled at once (default 4)")
    p.add_argument("-o", "--output", type=Path, help="write the frames as one .npy stack")
    _json_arg(p)
    p.set_defaults(func=cmd_decode)

    def page_args(p: argparse.ArgumentParser, who: str) -> None:
        p.add_argument("--listen", default="127.0.0.1",
                       help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 for every "
                            "interface, with --allow-remote)")
        p.add_argument("--allow-remote", action="store_true",
                       help=f"allow a --listen beyond loopback: every machine that reaches it, and anyone with the "
                            f"URL, {who}")
        p.add_argument("--http-port", type=http_port, default=0, help="web server port (default: a free one)")
        p.add_argument("--no-browser", action="store_true", help="print the address, do not open a browser")
        _json_arg(p)

    p = command("view", "the live view in a browser: frames, technique, dose displays, alarms, last image hold")
    p.add_argument("exam", nargs="?", type=Path, metavar="EXAM_DIR",
                   help="instead of --port, an exam directory (capture -o): its review (see: pulseline review)")
    p.add_argument("--port", help="device path, pyserial URL, or sim[:NAME]")
    page_args(p, "can drive the board")
    p.set_defaults(func=_listen_checked(cmd_view))

    p = command("review", "a recorded run in a browser: cine loop at its frame time, each frame's technique and "
                          "dose, the exam's irradiation events")
    p.add_argument("exam", type=Path, metavar="EXAM_DIR", help="an exam directory (as capture -o writes it)")
    page_args(p, "can see the exam")
    p.set_defaults(func=cmd_review)

    p = command("transcript", "the packets of a test's protocol transcript (evidence bundle), in order, decoded")
    p.add_argument("transcript", type=Path)
    p.add_argument("--lines", action="store_true", help="every line packet (default: one per frame's run of lines)")
    p.add_argument("--heartbeat", action="store_true", help="include the heartbeat (pings and their answers)")
    _json_arg(p)
    p.set_defaults(func=cmd_transcript)

    p = command("sim", "start, list, stop or drive simulated boards")
    p.__class__ = _IntermixedParser  # "sim set --name a door_closed false"
    p.add_argument("action", nargs="?", default="start", choices=["start", "stop", "list", "press", "release", "set"])
    p.add_argument("values", nargs="*", help="for set: an input (switch, door_closed, key_on, generator_ready, "
                   "hlc_switch, water_cm, structures, ...) and its value")
    p.add_argument("--name", help="board name (default: the next free ttyACM<n>; for other actions: the first)")
    p.add_argument("--fs", type=Path, help="the board's filesystem directory (default .pulseline/<name>.fs)")
    p.add_argument("--link", default="usb-fs", help="usb-fs, usb-hs or uart:BAUD (default usb-fs)")
    p.add_argument("--faults", default="", help="seeded link faults, e.g. corrupt=1e-5,drop=0.01,disconnect=30")
    # numpy seeds are whole and not negative; 32 bits are plenty of boards
    p.add_argument("--seed", type=Number(0, 2**32 - 1, whole=True), default=0,
                   help="the plant's seed: detector maps, noise, serial numbers")
    p.add_argument("--timeline", type=Path, help="plant timeline (JSON) to load")
    p.add_argument("--water-cm", type=water, help="phantom: water slab thickness, cm (default 20)")
    p.add_argument("--detach", action="store_true", help="run in the background and return")
    p.add_argument("--all", action="store_true", help="stop: every running simulated board")
    _json_arg(p)
    p.set_defaults(func=cmd_sim)

    plain_command("ports", "serial ports (with USB ids) and running simulated boards", cmd_ports, port=False)

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
    # The board counts exams from 0 up; none gets near 2**31.
    p.add_argument("--exam", type=Number(0, 2**31 - 1, whole=True),
                   help="the report of this exam (a past one) from the journal")
    _json_arg(p)
    p.set_defaults(func=cmd_exam)

    plain_command("fault-reset", "clear a latched fault (the board comes back disarmed; arm again to expose)",
                  cmd_fault_reset, port=True)

    plain_command("disarm", "disarm the board: no press exposes until it is armed again", cmd_disarm, port=True)

    plain_command("info", "firmware, serials, state and configuration of a board", cmd_info, port=True)

    p = command("calibrate", "dark and flat frames -> offset, gain and defective-pixel maps for the detector")
    _port_arg(p)
    # Statistics need 2 frames at least; the board reads at most MAX_DARK_FRAMES
    # dark frames, and flat frames (held in memory like them) are capped alike.
    frames = Number(2, import_firmware("pulsefw.commands").MAX_DARK_FRAMES, whole=True)
    p.add_argument("--dark", type=frames, default=16, help="dark frames (beam off), default 16")
    p.add_argument("--flat", type=frames, default=32, help="flat frames (open field), default 32")
    p.add_argument("--kv", type=kv, default=60.0, help="flat-field kV (default 60; mA is chosen for half range)")
    p.add_argument("--width", type=width, help="flat-field pulse width, ms (default the shortest, 2)")
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
    how_long = g.add_mutually_exclusive_group()
    how_long.add_argument("--frames", type=Number(1, MAX_FRAMES, whole=True),
                          help="frames to capture (default: the preset's, else 16)")
    how_long.add_argument("--duration", type=Number(0, MAX_DURATION_S, "s", above=True),
                          help="seconds of exposure instead of --frames")
    g.add_argument("--kv", type=kv, help=f"tube voltage, kV ({kv.lo:g}..{kv.hi:g}): a manual technique")
    g.add_argument("--ma", type=Number(controller.MA_MIN, controller.MA_MAX, "mA"),
                   help=f"tube current, mA ({controller.MA_MIN:g}..{controller.MA_MAX:g})")
    rates = controller.PULSE_RATES
    g.add_argument("--pps", type=Number(min(rates), max(rates), "pps", choices=rates),
                   help="pulses per second: " + ", ".join(map(_num, rates)))
    g.add_argument("--width", type=width, help=f"pulse width, ms ({width.lo:g}..{width.hi:g}, at most half the period)")
    g.add_argument("--abc", action=argparse.BooleanOptionalAction, default=None, help="brightness control")
    g.add_argument("--filter", type=Number(*fields["filter_alpha"][1:]),
                   help="recursive noise filter alpha (0..1; 0 off)")
    g.add_argument("--water-cm", type=water, help="simulated board: the phantom's water thickness, cm")
    g.add_argument("--no-calibration", action="store_true", help="save raw frames even if a calibration exists")
    g = p.add_argument_group("exam identity (anonymous by default)")
    g.add_argument("--patient-name", help="DICOM person name, e.g. DOE^JANE")
    g.add_argument("--patient-id")
    g.add_argument("--study-id")
    g.add_argument("--study-uid", help="add to an existing study (default: a new one)")
    g.add_argument("--accession")
    g.add_argument("--series-number", type=Number(1, 99999, whole=True))
    g.add_argument("--study-description")
    g.add_argument("--series-description")
    g.add_argument("--institution")
    g.add_argument("--body-part", choices=sorted(ANATOMIC_REGIONS), help="the region imaged (default ABDOMEN)")
    g.add_argument("--patient-sex", choices=("M", "F", "O"), help="M, F or O (other; the default: a phantom)")
    g.add_argument("--patient-age", help="e.g. 045Y (the IHE REM profile asks for age, sex, size and weight)")
    g.add_argument("--patient-size-m", type=Number(0.2, 2.8, "m"), help="patient height, m")
    g.add_argument("--patient-weight-kg", type=Number(0.3, 500.0, "kg"), help="patient weight, kg")
    g.add_argument("--indication", help="admitting diagnosis (default: phantom exposure, no patient)")
    g = p.add_argument_group("PACS")
    g.add_argument("--send", metavar="HOST:PORT", help="store the exam on a PACS (DICOM C-STORE)")
    g.add_argument("--called-ae", default="ANY-SCP", help="the PACS's AE title (default ANY-SCP)")
    g.add_argument("--calling-ae", default="PULSELINE", help="our AE title (default PULSELINE)")
    g = p.add_argument_group("live view (see: pulseline view)")
    g.add_argument("--view", action="store_true", help="show the capture in the browser as it comes, marked REC")
    g.add_argument("--listen", default="127.0.0.1", help="with --view: the address to serve on (default loopback)")
    g.add_argument("--allow-remote", action="store_true",
                   help="with --view: allow a --listen beyond loopback (anyone with the URL can drive the board)")
    g.add_argument("--http-port", type=http_port, default=0, help="with --view: web server port (default: a free one)")
    g.add_argument("--no-browser", action="store_true", help="with --view: print the address, open no browser")
    p.add_argument("--preview", action=argparse.BooleanOptionalAction, default=None,
                   help="show the last image in the terminal (default: when it is a terminal)")
    _json_arg(p)
    p.set_defaults(func=_listen_checked(cmd_capture))

    p = command("monitor", "state, events, alarms and firmware logs as they come (until Ctrl-C)")
    _port_arg(p)
    p.add_argument("--duration", type=Number(0, MAX_DURATION_S, "s", above=True),
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--dose", action=argparse.BooleanOptionalAction, default=True,
                   help="show the dose displays (twice a second while exposing)")
    _json_arg(p)
    p.set_defaults(func=cmd_monitor)

    p = command("presets", "the named protocol presets capture knows")
    p.add_argument("--presets", type=Path, help="a JSON file of more presets (or $PULSELINE_PRESETS)")
    _json_arg(p)
    p.set_defaults(func=cmd_presets)

    p = command("export", "a recorded run (an exam directory) as an H.264 MP4 and/or a contact sheet PNG")
    p.add_argument("exam_dir", type=Path, metavar="EXAM_DIR", help="an exam directory (as capture -o writes)")
    p.add_argument("--mp4", type=Path, metavar="FILE", help="write the run as an H.264 MP4 at its frame rate")
    p.add_argument("--burn-in", action="store_true",
                   help="with --mp4: each frame's time, kV, mA, air kerma and the run's cumulative in the picture")
    p.add_argument("--contact-sheet", type=Path, metavar="FILE.png", help="write a grid of the run's frames (PNG)")
    p.add_argument("--sheet-frames", type=Number(1, 400, whole=True), default=36,
                   help="the contact sheet's frames at most, evenly spaced over the run (default 36)")
    _json_arg(p)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already said in one line: its status, as for a command
        return exc.code if isinstance(exc.code, int) else 2
    with SIGNALS.installed():
        try:
            return int(args.func(args))
        except PulselineError as exc:  # CliError and every library error: one line, status 2
            _say_error(str(exc))
            return 2
        except KeyboardInterrupt as exc:
            _say_error(f"interrupted ({exc or 'Ctrl-C'})")
            return 130
        except BrokenPipeError:  # the reader of our output went away (e.g. | head)
            sys.stderr.close()
            return 0
