"""The `pulseline` command: simulated boards, board information, capture,
and stream decoding. Every board command takes --port: a device path, a
pyserial URL, or a simulated board ("sim", "sim:NAME")."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .protocol import PIXEL_FORMATS, wire

EXAMPLES = """examples:
  pulseline sim --detach                       start a simulated board in the background
  pulseline ports                              serial ports and simulated boards
  pulseline flash --port sim --dry-run          what would change on the board
  pulseline flash --port /dev/ttyACM0
  pulseline info --port sim
  pulseline exam --port sim                    dose report of the current exam; --new starts one
  pulseline capture --port sim --frames 16 -o exam
  pulseline capture --port /dev/ttyACM0 --frames 30 --kv 70 --pps 15 -o exam
  pulseline sim press; pulseline sim release   the simulated exposure switch
  pulseline sim stop --all
  pulseline version
  pulseline decode stream.bin --pixels 256 --lines 256 --format mono12p -o frames.npy
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def cmd_version(args: argparse.Namespace) -> int:
    from .assembler import crc_backend

    info = {"pulseline": __version__, "protocol": wire.PROTOCOL_VERSION, "crc": crc_backend()}
    print(json.dumps(info) if args.json else "  ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .assembler import FrameAssembler
    from .frames import Frame

    try:
        asm = FrameAssembler(args.pixels, args.lines, args.format, max_frames_in_flight=args.in_flight)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    frames: list[Frame] = []
    packets = 0
    try:
        with open(args.stream, "rb") as fh:
            while chunk := fh.read(1 << 20):
                for item in asm.feed(chunk):
                    if isinstance(item, Frame):
                        frames.append(item)
                    else:
                        packets += 1
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
    from .session import SessionError

    s = _session(args.port)
    try:
        if args.new:
            s.command("new_exam")
        report = s.dose_report()
    except SessionError as exc:
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
                "board": s.board.get("board"), "state": status["state"], "block": status["block"],
                "exam": status["exam"], "kerma_mgy": status["kerma_mgy"], "fluoro_min": status["fluoro_min"],
                "config": s.config}
    finally:
        s.close()
    if args.json:
        print(json.dumps(info))
    else:
        c = info["config"]
        print(f"{args.port}: pulseline firmware {info['firmware']} (protocol {info['protocol']}) on a "
              f"{info['board']} board")
        print(f"  state {info['state']} ({info['block']}), exam {info['exam']}: {info['kerma_mgy']:.3f} mGy, "
              f"{info['fluoro_min']:.1f} min")
        print(f"  technique {c['kv']:g} kV {c['ma']:g} mA {c['pulse_width_ms']:g} ms at {c['pulses_per_s']:g} pps;"
              f" detector {c['pixels_per_line']} x {c['lines_per_frame']} "
              f"{'Mono12p' if c['pixel_format'] == 2 else 'Mono16'}")
    return 0


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pulseline-write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"cannot write to {out}: {exc.strerror or exc}") from None


def cmd_capture(args: argparse.Namespace) -> int:
    from .capture import capture, save
    from .session import SessionError
    from .sim import board as simboard

    if args.frames < 1:
        raise CliError("--frames must be at least 1")
    settings = {k: v for k, v in (("kv", args.kv), ("ma", args.ma), ("pulses_per_s", args.pps),
                                  ("pulse_width_ms", args.width), ("abc_enabled", args.abc)) if v is not None}
    s = _session(args.port)
    press = release = None
    try:
        _check_writable(args.output)  # before any X-rays: a capture must have somewhere to go
        if settings:
            try:
                s.configure(**settings)
            except SessionError as exc:
                raise CliError(str(exc)) from None
        sim = _sim_of_port(args.port)
        if sim is not None:
            ctl = simboard.SimControl(sim)
            press, release = ctl.press, ctl.release
        else:
            if not args.json:
                print("press and hold the exposure switch", flush=True)

        def progress(f: Any) -> None:
            if not args.json:
                t = f.trailer
                dose = f"{t.air_kerma_ugy:7.2f} uGy" if t is not None else "   (no trailer)"
                print(f"\rframe {f.frame_id:4}  {dose}  lines lost {f.lines_lost}", end="", flush=True)

        cap = capture(s, args.frames, press=press, release=release, progress=progress)
    finally:
        s.close()
    if not args.json and cap.frames:
        print()
    try:
        summary = save(cap, args.output, args.port)
    except OSError as exc:
        # Disk full or the like: the frames are still here; keep them as raw
        # arrays in the working directory rather than lose them.
        where = ""
        if cap.frames:
            rescue = Path(f"pulseline-rescue-{os.getpid()}.npy")
            try:
                np.save(rescue, np.stack([f.pixels for f in cap.frames]))
                where = f"; the {len(cap.frames)} frames are in {rescue}"
            except OSError:
                where = f"; the {len(cap.frames)} frames could not be saved anywhere"
        raise CliError(f"cannot write the exam to {args.output}: {exc.strerror or exc}{where}") from None
    if args.json:
        print(json.dumps(summary))
    else:
        d = cap.dose_report
        if cap.frames:
            print(f"{summary['frames']} frames ({summary['frames_complete']} complete, {summary['lines_lost']} lines "
                  f"lost) written to {args.output / 'frames.tif'}")
        else:
            print("no frames captured")
        if d:
            print(f"dose: {d['kerma_mgy']:.3f} mGy air kerma at the reference point, {d['kap_gy_cm2']:.4f} Gy cm2, "
                  f"{d['pulses']} pulses, fluoroscopy {d['fluoro_min']:.1f} min (exam {d['exam']})")
        print(f"summary: {args.output / 'summary.json'}")
    if cap.error:
        print(f"pulseline: error: {cap.error} (the {len(cap.frames)} frames received are saved)", file=sys.stderr)
        return 1
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from .flash import FlashError, flash, handshake

    try:
        plan = flash(args.port, dry_run=args.dry_run, log=(lambda m: None) if args.json else print)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulseline", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("version", help="versions of the host, its protocol and its CRC backend")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_version)
    p = sub.add_parser("decode", help="assemble frames from a recorded board->host byte stream",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stream", type=Path)
    p.add_argument("--pixels", type=int, default=256, help="pixels per line (default 256)")
    p.add_argument("--lines", type=int, default=256, help="lines per frame (default 256)")
    p.add_argument("--format", choices=sorted(PIXEL_FORMATS), default="mono12p")
    p.add_argument("--in-flight", type=int, default=4, help="frames assembled at once (default 4)")
    p.add_argument("-o", "--output", type=Path, help="write the frames as one .npy stack")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("sim", help="start, list, stop or drive simulated boards", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", default="start", choices=["start", "stop", "list", "press", "release", "set"])
    p.add_argument("values", nargs="*", help="for set: an input (switch, door_closed, key_on, generator_ready, "
                   "hlc_switch, water_cm, ...) and its value")
    p.add_argument("--name", help="board name (default: the next free ttyACM<n>; for other actions: the first)")
    p.add_argument("--fs", type=Path, help="the board's filesystem directory (default .pulseline/<name>.fs)")
    p.add_argument("--link", default="usb-fs", help="usb-fs, usb-hs or uart:BAUD (default usb-fs)")
    p.add_argument("--faults", default="", help="seeded link faults, e.g. corrupt=1e-5,drop=0.01,disconnect=30")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeline", type=Path, help="plant timeline (JSON) to load")
    p.add_argument("--water-cm", type=float, help="phantom: water slab thickness, cm (default 20)")
    p.add_argument("--detach", action="store_true", help="run in the background and return")
    p.add_argument("--all", action="store_true", help="stop: every running simulated board")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("ports", help="serial ports (with USB ids) and running simulated boards")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ports)

    p = sub.add_parser("flash", help="compile, copy what differs, verify by hash, restart, handshake",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", required=True, help="device path, pyserial URL, or sim[:NAME]")
    p.add_argument("--dry-run", action="store_true", help="show the bundle and what would change")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("exam", help="the dose report of the current exam (from the board's journal); --new starts one")
    p.add_argument("--port", required=True, help="device path, pyserial URL, or sim[:NAME]")
    p.add_argument("--new", action="store_true", help="start a new exam (resets the cumulative values)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_exam)

    p = sub.add_parser("info", help="firmware, state and configuration of a board")
    p.add_argument("--port", required=True, help="device path, pyserial URL, or sim[:NAME]")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("capture", help="expose and save frames (TIFF stack + JSON summary)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", required=True, help="device path, pyserial URL, or sim[:NAME]")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.add_argument("--kv", type=float)
    p.add_argument("--ma", type=float)
    p.add_argument("--pps", type=float, help="pulses per second: 3.75, 7.5, 15 or 30")
    p.add_argument("--width", type=float, help="pulse width, ms")
    p.add_argument("--abc", action=argparse.BooleanOptionalAction, default=None, help="brightness control")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_capture)
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
