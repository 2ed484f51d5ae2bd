"""The commands on files, no board: decode (a recorded byte stream, or a
test's transcript, into frames), transcript (its packets, decoded) and
export (an exam directory as a video or a contact sheet)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import CliError, check_can_write


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
    from ..link.assembler import FrameAssembler

    if args.output is not None:
        check_can_write(args.output, directory=False)  # said before the work, not after it
    try:
        asm = FrameAssembler(args.pixels, args.lines, args.format, max_frames_in_flight=args.in_flight)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    frames, packets = _decode(args.stream, asm)
    summary = {
        "frames": len(frames),
        "complete_frames": sum(f.complete for f in frames),
        "other_packets": packets,
        "counters": asm.counters,
    }
    if args.output:
        _write_stack(args, frames)
        summary["output"] = str(args.output)
    if args.json:
        print(json.dumps(summary))
        return 0
    c = asm.counters
    print(f"{len(frames)} frames ({summary['complete_frames']} complete), {packets} other packets")
    print(f"lines: {c['lines_ok']} ok, {c['lines_lost']} lost, {c['lines_duplicate']} duplicate, "
          f"{c['lines_late']} late; bytes: {c['bytes_in']} in, {c['bytes_skipped']} skipped; "
          f"crc errors {c['crc_errors']}, header errors {c['header_errors']}")
    if args.output:
        print(f"frames written to {args.output}")
    return 0


def _decode(stream: Path, asm: Any) -> tuple[list[Any], int]:
    """The frames of a recorded board->host byte stream (or of a test's
    transcript, its board->host side), and the count of other packets."""
    from ..link import evidence
    from ..link.frames import Frame

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
        with open(stream, "rb") as fh:
            head = fh.read(len(evidence.MAGIC))
            if head == evidence.MAGIC:  # a test's transcript: its board->host side
                fh.close()
                feed(evidence.stream(evidence.read_transcript(stream), evidence.TO_HOST))
            else:
                feed(head)
                while chunk := fh.read(1 << 20):
                    feed(chunk)
    except OSError as exc:
        raise CliError(f"cannot read {stream}: {exc.strerror}") from None
    frames += [f for f in asm.flush() if isinstance(f, Frame)]
    return frames, packets


def _write_stack(args: argparse.Namespace, frames: list[Any]) -> None:
    import numpy as np

    stack = np.stack([f.pixels for f in frames]) if frames else np.zeros((0, args.lines, args.pixels), np.uint16)
    try:
        with open(args.output, "wb") as out:  # the name given: np.save(name) adds .npy to one without
            np.save(out, stack)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None


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
            check_can_write(out, directory=False)
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
    else:
        _print_export(args, result)
    return 0


def _print_export(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if "mp4" in result:
        m = result["mp4"]
        print(f"{args.mp4}: {m['frames']} frames, {m['width']} x {m['height']}, {m['fps']:g} fps ({m['frame_rate']}), "
              f"{m['duration_s']:.2f} s, {m['codec']}" + (", time and dose burnt in" if m["burn_in"] else ""))
    if "contact_sheet" in result:
        c = result["contact_sheet"]
        print(f"{args.contact_sheet}: {len(c['frames_shown'])} of {c['frames']} frames, {c['cols']} x {c['rows']} "
              f"grid, {c['width']} x {c['height']} px")
