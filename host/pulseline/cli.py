"""The `pulseline` command. Stage 1 offers `version` and `decode`; the
board commands (sim, flash, info, capture, ...) arrive with later stages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .protocol import PIXEL_FORMATS, wire

EXAMPLES = """examples:
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


if __name__ == "__main__":
    sys.exit(main())
