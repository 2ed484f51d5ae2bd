"""The command line's grammar: every command's options and examples, the
table of commands (_COMMANDS: name -> help, argument builder, handler), and
the parser made of them. Each numeric option is read by Number within the
firmware's, the native assembler's or the plant's own limits; usage errors
are one line (Parser)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ..exam.sr_templates import ANATOMIC_REGIONS
from ..link.protocol import PIXEL_FORMATS
from . import acquire, boards, files, pages, simulated
from .common import Handler

# The top-level help's description.
DESCRIPTION = """The `pulseline` command: simulated boards, board information, capture,
and stream decoding. Every board command takes --port: a device path, a
pyserial URL, or a simulated board ("sim", "sim:NAME")."""

EXAMPLES = {
    "sim": """examples:
  pulseline sim --detach                       start a simulated board in the background
  pulseline sim --detach --link usb-hs --faults corrupt=1e-5,drop=0.001 --seed 7
  pulseline sim --board pico --detach          an emulated Raspberry Pi Pico, running its own MicroPython
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


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (SPEC 2.6), naming the
    command and where its options are told, exit status 2; argparse's own
    prints the whole usage first. Subparsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        text = " ".join(message.splitlines())
        self.exit(2, f"pulseline: error: {command + ': ' if command else ''}{text} (see: {self.prog} --help)\n")


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


class Limits:
    """What the options are checked against: the limits of the firmware, the
    native assembler and the plant, their own (the host refuses what they
    would, before anything is sent)."""

    def __init__(self) -> None:
        from .._native import lib as native
        from ..exam.presets import MAX_DURATION_S, MAX_FRAMES
        from ..mpcompat import import_firmware
        from ..plant.timeline import WATER_CM_MAX, WATER_CM_MIN

        self.native: Any = native
        self.max_duration_s, self.max_frames = MAX_DURATION_S, MAX_FRAMES
        self.controller: Any = import_firmware("pulsefw.controller")
        self.fields: Any = import_firmware("pulsefw.config").FIELDS
        # Statistics need 2 frames at least; the board reads at most MAX_DARK_FRAMES
        # dark frames, and flat frames (held in memory like them) are capped alike.
        self.max_dark_frames = import_firmware("pulsefw.commands").MAX_DARK_FRAMES
        c = self.controller
        self.kv = Number(c.KV_MIN, c.KV_MAX, "kV")
        self.width = Number(c.WIDTH_MIN_MS, c.WIDTH_MAX_MS, "ms")
        self.water = Number(WATER_CM_MIN, WATER_CM_MAX, "cm")
        self.http_port = Number(0, 65535, whole=True)


Builder = Callable[[argparse.ArgumentParser, Limits], None]


# -- the options of each command ---------------------------------------------------------


def _port_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="device path, pyserial URL, or sim[:NAME]")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _json_only(p: argparse.ArgumentParser, lim: Limits) -> None:
    """A command with no options but --json."""
    _json_arg(p)


def _port_and_json(p: argparse.ArgumentParser, lim: Limits) -> None:
    """A board's command with no options but --port and --json."""
    _port_arg(p)
    _json_arg(p)


def _decode_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    native = lim.native
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


def _page_args(p: argparse.ArgumentParser, lim: Limits, who: str) -> None:
    p.add_argument("--listen", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 for every "
                        "interface, with --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help=f"allow a --listen beyond loopback: every machine that reaches it, and anyone with the "
                        f"URL, {who}")
    p.add_argument("--http-port", type=lim.http_port, default=0, help="web server port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the address, do not open a browser")
    _json_arg(p)


def _view_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    p.add_argument("exam", nargs="?", type=Path, metavar="EXAM_DIR",
                   help="instead of --port, an exam directory (capture -o): its review (see: pulseline review)")
    p.add_argument("--port", help="device path, pyserial URL, or sim[:NAME]")
    _page_args(p, lim, "can drive the board")


def _review_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    p.add_argument("exam", type=Path, metavar="EXAM_DIR", help="an exam directory (as capture -o writes it)")
    _page_args(p, lim, "can see the exam")


def _transcript_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    p.add_argument("transcript", type=Path)
    p.add_argument("--lines", action="store_true", help="every line packet (default: one per frame's run of lines)")
    p.add_argument("--heartbeat", action="store_true", help="include the heartbeat (pings and their answers)")
    _json_arg(p)


def _sim_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    p.__class__ = _IntermixedParser  # "sim set --name a door_closed false"
    p.add_argument("action", nargs="?", default="start", choices=["start", "stop", "list", "press", "release", "set"])
    p.add_argument("values", nargs="*", help="for set: an input (switch, door_closed, key_on, generator_ready, "
                   "hlc_switch, water_cm, structures, ...) and its value")
    p.add_argument("--name", help="board name (default: the next free ttyACM<n>; for other actions: the first)")
    p.add_argument("--fs", type=Path, help="the board's filesystem directory (default .pulseline/<name>.fs)")
    p.add_argument("--board", choices=["sim", "pico"], default="sim",
                   help="sim: the firmware on MicroPython's unix port beside the plant (default); pico: an emulated "
                   "Raspberry Pi Pico running its own MicroPython (../shared/pico or $PULSELINE_PICO_DIR)")
    p.add_argument("--link", help="usb-fs, usb-hs or uart:BAUD (default usb-fs)")
    p.add_argument("--faults", help="seeded link faults, e.g. corrupt=1e-5,drop=0.01,disconnect=30")
    # numpy seeds are whole and not negative; 32 bits are plenty of boards
    p.add_argument("--seed", type=Number(0, 2**32 - 1, whole=True), default=0,
                   help="the plant's seed: detector maps, noise, serial numbers")
    p.add_argument("--timeline", type=Path, help="plant timeline (JSON) to load")
    p.add_argument("--water-cm", type=lim.water, help="phantom: water slab thickness, cm (default 20)")
    p.add_argument("--detach", action="store_true", help="run in the background and return")
    p.add_argument("--all", action="store_true", help="stop: every running simulated board")
    _json_arg(p)


def _flash_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    p.add_argument("--port", help="device path, pyserial URL, or sim[:NAME] (not needed for --dry-run --board)")
    p.add_argument("--board", choices=["rp2", "sim"],
                   help="the kind of board: with --dry-run and no --port, list the bundle it would get")
    p.add_argument("--dry-run", action="store_true", help="show the bundle and what would change")
    _json_arg(p)


def _exam_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    _port_arg(p)
    p.add_argument("--new", action="store_true", help="start a new exam (resets the cumulative values)")
    # The board counts exams from 0 up; none gets near 2**31.
    p.add_argument("--exam", type=Number(0, 2**31 - 1, whole=True),
                   help="the report of this exam (a past one) from the journal")
    _json_arg(p)


def _calibrate_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    _port_arg(p)
    frames = Number(2, lim.max_dark_frames, whole=True)
    p.add_argument("--dark", type=frames, default=16, help="dark frames (beam off), default 16")
    p.add_argument("--flat", type=frames, default=32, help="flat frames (open field), default 32")
    p.add_argument("--kv", type=lim.kv, default=60.0, help="flat-field kV (default 60; mA is chosen for half range)")
    p.add_argument("--width", type=lim.width, help="flat-field pulse width, ms (default the shortest, 2)")
    p.add_argument("--dir", type=Path, help="where calibrations are kept (default $PULSELINE_CALIBRATION_DIR "
                   "or ~/.local/share/pulseline/calibration)")
    _json_arg(p)


def _capture_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    _port_arg(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory (one per capture)")
    _technique_args(p.add_argument_group("technique (options win over the preset)"), lim)
    _identity_args(p.add_argument_group("exam identity (anonymous by default)"))
    g = p.add_argument_group("PACS")
    g.add_argument("--send", metavar="HOST:PORT", help="store the exam on a PACS (DICOM C-STORE)")
    g.add_argument("--called-ae", default="ANY-SCP", help="the PACS's AE title (default ANY-SCP)")
    g.add_argument("--calling-ae", default="PULSELINE", help="our AE title (default PULSELINE)")
    g = p.add_argument_group("live view (see: pulseline view)")
    g.add_argument("--view", action="store_true", help="show the capture in the browser as it comes, marked REC")
    g.add_argument("--listen", default="127.0.0.1", help="with --view: the address to serve on (default loopback)")
    g.add_argument("--allow-remote", action="store_true",
                   help="with --view: allow a --listen beyond loopback (anyone with the URL can drive the board)")
    g.add_argument("--http-port", type=lim.http_port, default=0,
                   help="with --view: web server port (default: a free one)")
    g.add_argument("--no-browser", action="store_true", help="with --view: print the address, open no browser")
    p.add_argument("--preview", action=argparse.BooleanOptionalAction, default=None,
                   help="show the last image in the terminal (default: when it is a terminal)")
    _json_arg(p)


def _technique_args(g: Any, lim: Limits) -> None:
    controller, kv, width = lim.controller, lim.kv, lim.width
    g.add_argument("--preset", help="a named protocol (see: pulseline presets)")
    g.add_argument("--presets", type=Path, help="a JSON file of more presets (or $PULSELINE_PRESETS)")
    how_long = g.add_mutually_exclusive_group()
    how_long.add_argument("--frames", type=Number(1, lim.max_frames, whole=True),
                          help="frames to capture (default: the preset's, else 16)")
    how_long.add_argument("--duration", type=Number(0, lim.max_duration_s, "s", above=True),
                          help="seconds of exposure instead of --frames")
    g.add_argument("--kv", type=kv, help=f"tube voltage, kV ({kv.lo:g}..{kv.hi:g}): a manual technique")
    g.add_argument("--ma", type=Number(controller.MA_MIN, controller.MA_MAX, "mA"),
                   help=f"tube current, mA ({controller.MA_MIN:g}..{controller.MA_MAX:g})")
    rates = controller.PULSE_RATES
    g.add_argument("--pps", type=Number(min(rates), max(rates), "pps", choices=rates),
                   help="pulses per second: " + ", ".join(map(_num, rates)))
    g.add_argument("--width", type=width, help=f"pulse width, ms ({width.lo:g}..{width.hi:g}, at most half the period)")
    g.add_argument("--abc", action=argparse.BooleanOptionalAction, default=None, help="brightness control")
    g.add_argument("--filter", type=Number(*lim.fields["filter_alpha"][1:]),
                   help="recursive noise filter alpha (0..1; 0 off)")
    g.add_argument("--water-cm", type=lim.water, help="simulated board: the phantom's water thickness, cm")
    g.add_argument("--no-calibration", action="store_true", help="save raw frames even if a calibration exists")


def _identity_args(g: Any) -> None:
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


def _monitor_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    _port_arg(p)
    p.add_argument("--duration", type=Number(0, lim.max_duration_s, "s", above=True),
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--dose", action=argparse.BooleanOptionalAction, default=True,
                   help="show the dose displays (twice a second while exposing)")
    _json_arg(p)


def _presets_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    p.add_argument("--presets", type=Path, help="a JSON file of more presets (or $PULSELINE_PRESETS)")
    _json_arg(p)


def _export_args(p: argparse.ArgumentParser, lim: Limits) -> None:
    p.add_argument("exam_dir", type=Path, metavar="EXAM_DIR", help="an exam directory (as capture -o writes)")
    p.add_argument("--mp4", type=Path, metavar="FILE", help="write the run as an H.264 MP4 at its frame rate")
    p.add_argument("--burn-in", action="store_true",
                   help="with --mp4: each frame's time, kV, mA, air kerma and the run's cumulative in the picture")
    p.add_argument("--contact-sheet", type=Path, metavar="FILE.png", help="write a grid of the run's frames (PNG)")
    p.add_argument("--sheet-frames", type=Number(1, 400, whole=True), default=36,
                   help="the contact sheet's frames at most, evenly spaced over the run (default 36)")
    _json_arg(p)


# -- the commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Builder
    run: Handler


# In the order `pulseline --help` lists them.
_COMMANDS: dict[str, Command] = {
    "version": Command("versions of the host, its protocol and its CRC backend", _json_only, boards.cmd_version),
    "decode": Command("assemble frames from a recorded board->host byte stream (or a test's transcript)",
                      _decode_args, files.cmd_decode),
    "view": Command("the live view in a browser: frames, technique, dose displays, alarms, last image hold",
                    _view_args, pages.cmd_view),
    "review": Command("a recorded run in a browser: cine loop at its frame time, each frame's technique and "
                      "dose, the exam's irradiation events", _review_args, pages.cmd_review),
    "transcript": Command("the packets of a test's protocol transcript (evidence bundle), in order, decoded",
                          _transcript_args, files.cmd_transcript),
    "sim": Command("start, list, stop or drive simulated boards", _sim_args, simulated.cmd_sim),
    "ports": Command("serial ports (with USB ids) and running simulated boards", _json_only, boards.cmd_ports),
    "flash": Command("compile, copy what differs, verify by hash, restart, handshake", _flash_args,
                     boards.cmd_flash),
    "exam": Command("the dose report of the current or a past exam (from the board's journal); --new starts one",
                    _exam_args, acquire.cmd_exam),
    "fault-reset": Command("clear a latched fault (the board comes back disarmed; arm again to expose)",
                           _port_and_json, boards.cmd_fault_reset),
    "disarm": Command("disarm the board: no press exposes until it is armed again", _port_and_json,
                      boards.cmd_disarm),
    "info": Command("firmware, serials, state and configuration of a board", _port_and_json, boards.cmd_info),
    "calibrate": Command("dark and flat frames -> offset, gain and defective-pixel maps for the detector",
                         _calibrate_args, acquire.cmd_calibrate),
    "capture": Command("expose and save an exam: DICOM RF + dose SR, TIFF stack, PNG, JSON summary",
                       _capture_args, acquire.cmd_capture),
    "monitor": Command("state, events, alarms and firmware logs as they come (until Ctrl-C)", _monitor_args,
                       boards.cmd_monitor),
    "presets": Command("the named protocol presets capture knows", _presets_args, acquire.cmd_presets),
    "export": Command("a recorded run (an exam directory) as an H.264 MP4 and/or a contact sheet PNG",
                      _export_args, files.cmd_export),
}


def handler(name: str) -> Handler:
    """The function that runs the command `name`."""
    return _COMMANDS[name].run


def build_parser() -> argparse.ArgumentParser:
    limits = Limits()
    parser = Parser(prog="pulseline", description=DESCRIPTION, epilog=ALL_EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)  # subcommands: Parser too (parser_class)
    for name, command in _COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(p, limits)
        p.set_defaults(func=command.run)
    return parser
