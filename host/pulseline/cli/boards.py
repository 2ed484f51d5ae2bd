"""The board commands: ports, info, disarm, fault-reset, flash, monitor (and
the host's own version). Each opens the board behind --port (common.attach),
asks, and prints."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from ..link.clock import WALL, Clock
from .common import CliError, board_session


def cmd_version(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..link.assembler import crc_backend
    from ..link.protocol import wire

    info = {"pulseline": __version__, "protocol": wire.PROTOCOL_VERSION, "crc": crc_backend()}
    print(json.dumps(info) if args.json else "  ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def cmd_ports(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    from ..sim.registry import running_boards

    boards = running_boards()
    sim_devices = {b.get("device") for b in boards}  # (a simulated board's /dev/ttyACMsim<N> is listed below)
    real = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        if p.device in sim_devices:
            continue
        usb = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None
        real.append({"port": p.device, "description": p.description, "usb": usb,
                     "serial_number": p.serial_number})
    sims = [{"port": f"sim:{b['name']}", "device": b["pty"], "url": b["url"], "link": b["link"],
             "usb_cdc": b.get("device")} for b in boards]
    if args.json:
        print(json.dumps({"serial": real, "simulated": sims}))
        return 0
    for r in real:
        print(f"{r['port']:20} {r['description']}" + (f"  (USB {r['usb']})" if r["usb"] else ""))
    for b in sims:
        also = f" ({b['usb_cdc']})" if b["usb_cdc"] else ""
        print(f"{b['port']:20} simulated board on {b['device']}{also}, {b['url']}, link {b['link']}")
    if not real and not sims:
        print("no serial ports and no simulated boards (start one with: pulseline sim --detach)")
    return 0


def cmd_fault_reset(args: argparse.Namespace) -> int:
    with board_session(args.port) as s:
        body = s.command("fault_reset")
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
    with board_session(args.port) as s:
        body = s.command("disarm")
        status = s.status()
    if args.json:
        print(json.dumps({**body, "block": status.get("block")}))
        return 0
    note = " (a fault is latched: pulseline fault-reset clears it)" if body["state"] == "FAULT" else ""
    print(f"{args.port}: disarmed; state {body['state']}{note}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with board_session(args.port) as s:
        status = s.status()
        info = {"port": args.port, "firmware": s.board.get("firmware"), "protocol": s.board.get("protocol"),
                "firmware_hash": s.board.get("firmware_hash"), "board": s.board.get("board"),
                "serial": s.board.get("serial"), "detector_serial": s.board.get("detector_serial"),
                "state": status["state"], "block": status["block"],
                "exam": status["exam"], "kerma_mgy": status["kerma_mgy"], "fluoro_min": status["fluoro_min"],
                "config": s.config, "max_frame_bytes": s.board.get("max_frame_bytes"),
                "link_bytes_per_s": s.board.get("link_bytes_per_s")}
    if args.json:
        print(json.dumps(info))
    else:
        _print_info(info)
    return 0


def _print_info(info: dict[str, Any]) -> None:
    c = info["config"]
    print(f"{info['port']}: pulseline firmware {info['firmware']} (protocol {info['protocol']}, "
          f"{str(info['firmware_hash'])[:16]}) on a {info['board']} board, serial {info['serial']}, "
          f"detector {info['detector_serial']}")
    print(f"  state {info['state']} ({info['block']}), exam {info['exam']}: {info['kerma_mgy']:.3f} mGy, "
          f"{info['fluoro_min']:.1f} min")
    print(f"  technique {c['kv']:g} kV {c['ma']:g} mA {c['pulse_width_ms']:g} ms at {c['pulses_per_s']:g} pps;"
          f" detector {c['pixels_per_line']} x {c['lines_per_frame']} "
          f"{'Mono12p' if c['pixel_format'] == 2 else 'Mono16'}")
    print(f"  budget: a frame of up to {info['max_frame_bytes']} bytes, {info['link_bytes_per_s']} bytes/s on "
          "the link")


def cmd_monitor(args: argparse.Namespace) -> int:
    from ..ui.monitor import monitor

    def write(line: str) -> None:
        print(line, flush=True)

    # (--duration is checked by its type; Ctrl-C is how one stops watching)
    with board_session(args.port) as s, contextlib.suppress(KeyboardInterrupt):
        monitor(s, write=write, as_json=args.json, duration_s=args.duration, dose=args.dose)
    return 0


def _board_clock(port: str) -> Clock:
    """The board's own clock when it keeps one (a running simulated or
    emulated board: it may run slower than the wall), else the wall's."""
    from ..targets import attach

    try:
        target = attach(port)
    except (ValueError, OSError):
        return WALL
    return target.clock


def cmd_flash(args: argparse.Namespace) -> int:
    from ..targets.flash import flash, handshake, plan_offline

    if args.port is None:
        if not (args.dry_run and args.board):
            raise CliError("flash needs --port (or --dry-run --board rp2 to list the bundle a board would get)")
        _print_offline(args, plan_offline(args.board))
        return 0
    # (flash names the port as given in its messages, and finds a simulated board's pty itself)
    plan = flash(args.port, dry_run=args.dry_run, board=args.board, log=(lambda m: None) if args.json else print)
    board = None if args.dry_run else handshake(_device(args.port), expect_hash=plan.firmware_hash,
                                                 clock=_board_clock(args.port))
    if args.json:
        print(json.dumps({**plan.as_dict(), "dry_run": args.dry_run, "firmware": board and board.get("firmware")}))
    else:
        _print_flash(args, plan, board)
    return 0


def _device(port: str) -> str:
    """What a session opens for `port` (a simulated board's pty)."""
    from ..targets import resolve_port

    try:
        return resolve_port(port)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _print_offline(args: argparse.Namespace, plan: Any) -> None:
    from ..targets.flash import mpy_cross_version

    (major, minor), (mpy, sub) = mpy_cross_version()
    if args.json:
        print(json.dumps({**plan.as_dict(), "dry_run": True, "firmware": None}))
        return
    total = sum(f.size for f in plan.bundle)
    print(f"{args.board} bundle for MicroPython {major}.{minor} (mpy v{mpy}.{sub}): {len(plan.bundle)} files, "
          f"{total} bytes; the firmware will report hash {plan.firmware_hash[:16]}")
    width = max(len(f.path) for f in plan.bundle)
    for f in plan.bundle:
        print(f"  {f.path:{width}} {f.size:7} bytes  sha256 {f.sha256[:16]}")
    print("(dry run, no board: nothing changed)")


def _print_flash(args: argparse.Namespace, plan: Any, board: dict[str, Any] | None) -> None:
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
