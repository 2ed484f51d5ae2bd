"""The `sim` command group: start a simulated board (in the foreground, or
detached in the background), list and stop the running ones, and work
their hardware (press, release, set an input) by name. The boards and their
registry are pulseline.sim.board's; this module parses and prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .common import CliError


def cmd_sim(args: argparse.Namespace) -> int:
    from ..sim.board import SimBoard
    from ..sim.control_channel import load_timeline

    if args.board == "pico" and args.action == "start":
        return _pico_start(args)
    args.link = args.link or "usb-fs"
    args.faults = args.faults or ""
    if args.values and args.action != "set":
        raise CliError(f"sim {args.action} takes no {' '.join(args.values)!r} "
                       "(only sim set takes an input and a value)")
    actions = {"list": _sim_list, "stop": _sim_stop, "press": _sim_drive, "release": _sim_drive, "set": _sim_drive}
    if args.action in actions:
        try:
            return actions[args.action](args)
        except (ValueError, OSError) as exc:
            raise CliError(str(exc)) from None
    _check_start(args)  # here, so that a detached start fails at once
    if args.detach:
        return _sim_detach(args)
    try:
        board = SimBoard(args.fs, name=args.name, link=args.link, faults=args.faults, seed=args.seed,
                         timeline=load_timeline(args.timeline), water_cm=args.water_cm).start()
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    _print_board(board.describe(), args.json)
    board.serve_until_stopped()
    return 0


# The emulated Pico's link is its USB CDC port and its pins are its own: what
# only the simulated board's plant and link model take is refused, not ignored.
_PICO_REFUSES = {"link": "--link", "faults": "--faults", "timeline": "--timeline", "water_cm": "--water-cm"}


def _pico_start(args: argparse.Namespace) -> int:
    from ..sim.pico.board import PicoBoard
    from ..sim.pico.firmware import find_pico_files

    given = [opt for attr, opt in _PICO_REFUSES.items() if getattr(args, attr) not in (None, "")]
    if given:
        raise CliError(f"the emulated Pico takes no {', '.join(given)} (its link is its own USB port, "
                       "and its pins are not the simulated plant's)")
    if args.values:
        raise CliError(f"sim start takes no {' '.join(args.values)!r}")
    try:
        find_pico_files()  # here, so that a detached start fails at once
    except OSError as exc:
        raise CliError(str(exc)) from None
    if args.detach:
        return _sim_detach(args)
    try:
        board = PicoBoard(args.fs, name=args.name, seed=args.seed).start()
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    _print_board(board.describe(), args.json)
    board.serve_until_stopped()
    return 0


def _sim_list(args: argparse.Namespace) -> int:
    from ..sim.registry import running_boards

    boards = running_boards()
    if args.json:
        print(json.dumps(boards))
    for b in boards if not args.json else []:
        print(f"{b['name']}: {b.get('board', 'sim')}, {b['pty']} ({b['link_path']}), {b['url']}, link {b['link']}, "
              f"fs {b['fs']}")
    if not boards and not args.json:
        print("no simulated board is running")
    return 0


def _sim_stop(args: argparse.Namespace) -> int:
    from ..sim.control_channel import SimControl
    from ..sim.registry import find_board, running_boards, wait_stopped

    boards = running_boards() if args.all else [find_board(args.name)]
    for b in boards:
        SimControl(b["name"]).stop()
        wait_stopped(b)
        print(f"stopped {b['name']}")
    return 0


def _sim_drive(args: argparse.Namespace) -> int:
    """press, release, or set an input of the plant."""
    from ..sim.control_channel import SimControl

    if args.action == "set" and len(args.values) != 2:
        raise CliError("sim set needs an input and a value, e.g.: pulseline sim set door_closed false")
    ctl = SimControl(args.name)
    if args.action == "set":
        name, raw = args.values
        t = ctl.set_input(name, _input_value(raw))
    else:
        t = ctl.press() if args.action == "press" else ctl.release()
    print(json.dumps({"t_us": t}) if args.json else f"{args.action} at plant time {t / 1e6:.3f} s")
    return 0


def _input_value(raw: str) -> float | bool:
    """true, false, or a number."""
    value: float | bool | None = {"true": True, "false": False}.get(raw.lower())
    if value is not None:
        return value
    try:
        return float(raw)
    except ValueError:
        raise CliError(f"{raw!r} is not true, false or a number") from None


def _check_start(args: argparse.Namespace) -> None:
    from ..sim.board import parse_board_faults
    from ..sim.control_channel import load_timeline
    from ..sim.link import parse_link

    try:
        parse_link(args.link)
        parse_board_faults(args.faults)
        load_timeline(args.timeline)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _print_board(desc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(desc), flush=True)
    else:
        what = "emulated Pico" if desc.get("board") == "pico" else "simulated board"
        print(f"{what} {desc['name']}:\n  serial  {desc['pty']}  (linked as {desc['link_path']})\n"
              f"  url     {desc['url']}\n  fs      {desc['fs']}\n  link    {desc['link']}", flush=True)


# -- sim --detach: a board in a process of its own -------------------------------------------------


def _sim_detach(args: argparse.Namespace) -> int:
    import subprocess

    from ..sim import registry

    try:
        name = registry.check_name(args.name) if args.name else registry.next_free_name()
        # Said here, before anything starts; the board's own start decides
        # for good (its locks), should another start meanwhile.
        registry.check_free(name, args.fs)
        registry.private_dir(registry.STATE_DIR)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    log = registry.STATE_DIR / f"{name}.log"
    # Its stderr comes here until it has started (then it goes to its log):
    # the end of that pipe says "started, or failed, and why".
    proc = subprocess.Popen(_board_command(args, name, log), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    said = _until_started(proc, name, args.json)
    if said is None:
        return 0
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise CliError(f"the simulated board did not start within 30 s (log: {log})")
    lines = said.decode(errors="replace").strip().splitlines() or ["no output"]
    if proc.returncode == 2 and len(lines) == 1:  # its one-line reason (a board already runs, say)
        raise CliError(lines[0])
    raise CliError(f"the simulated board did not start: {lines[-1]}")


def _board_command(args: argparse.Namespace, name: str, log: Any) -> list[str]:
    """The command line of `python -m pulseline.sim.board` (or
    pulseline.sim.pico.board) for this start."""
    if args.board == "pico":
        cmd = [sys.executable, "-m", "pulseline.sim.pico.board", "--name", name, "--seed", str(args.seed),
               "--log", str(log)]
        return cmd + (["--fs", str(args.fs)] if args.fs else [])
    cmd = [sys.executable, "-m", "pulseline.sim.board", "--name", name, "--link", args.link, "--faults",
           args.faults, "--seed", str(args.seed), "--log", str(log)]
    if args.fs:
        cmd += ["--fs", str(args.fs)]
    if args.timeline:
        cmd += ["--timeline", str(args.timeline)]
    if args.water_cm is not None:
        cmd += ["--water-cm", str(args.water_cm)]
    return cmd


def _until_started(proc: Any, name: str, as_json: bool) -> bytearray | None:
    """Until the board in `proc` has started (its description printed:
    None), or has ended, or 30 s have passed: what it said on stderr."""
    import select
    import time

    from ..sim.registry import running_boards

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
            mine = [b for b in running_boards() if b.get("name") == name and b.get("pid") == proc.pid]
            if mine:
                _print_board(mine[0], as_json)
                return None
            time.sleep(0.05)
    finally:
        proc.stderr.close()
    return said
