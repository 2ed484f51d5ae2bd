"""The `pulseline` command: simulated boards, board information, capture,
and stream decoding. Every board command takes --port: a device path, a
pyserial URL, or a simulated board ("sim", "sim:NAME").

The CLI parses and prints; the work is the library's. In here:

    parser.py     the grammar: each command's options and examples, the
                  table of commands (_COMMANDS) and the parser made of it
    common.py     CliError (the one error type, caught once: main), the
                  signals a command ends on, the one place a --port
                  becomes a board (attach), checks made before any board
    boards.py     version, ports, info, disarm, fault-reset, flash, monitor
    simulated.py  sim: start, list, stop and drive simulated boards
    acquire.py    capture (pulseline.exam.acquire), calibrate, exam, presets
    files.py      decode, transcript, export
    pages.py      view, review (pages in the browser)
"""

from __future__ import annotations

import sys

from ..errors import PulselineError
from .acquire import _identity
from .common import SIGNALS, CliError, Signals, say_error
from .parser import ALL_EXAMPLES, EXAMPLES, Number, Parser, build_parser, handler

__all__ = ["ALL_EXAMPLES", "EXAMPLES", "SIGNALS", "CliError", "Number", "Parser", "Signals", "_identity",
           "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already said in one line: its status, as for a command
        return exc.code if isinstance(exc.code, int) else 2
    with SIGNALS.installed():
        try:
            return int(handler(args.command)(args))
        except PulselineError as exc:  # CliError and every library error: one line, status 2
            say_error(str(exc))
            return 2
        except KeyboardInterrupt as exc:
            say_error(f"interrupted ({exc or 'Ctrl-C'})")
            return 130
        except BrokenPipeError:  # the reader of our output went away (e.g. | head)
            sys.stderr.close()
            return 0
