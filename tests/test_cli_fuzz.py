"""Generated command lines through pulseline.cli.main, in process: every
subcommand (walked from the parser, so commands added later are covered),
its numeric options given nan, inf, huge, negative, empty or non-numeric
values and its paths files, directories, missing or under a file. Whatever
the input: exit status 0, 1 or 2, no traceback, no exception out of main,
and a failure is one line on stderr. A bad value is refused before anything
reaches a board (a fast in-process board records what it was sent)."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from recording_board import RecordingBoard  # tests/

from pulseline import cli
from pulseline.link import evidence
from pulseline.link.protocol import wire
from pulseline.link.session import Session
from pulseline.link.streamgen import clean_stream, random_frames

PARSER = cli.build_parser()
COMMANDS: dict[str, argparse.ArgumentParser] = PARSER._subparsers._group_actions[0].choices  # type: ignore[union-attr]
# Past their checks these serve until stopped (or start a board): only refusals are run.
FOREVER = {"view", "sim"}
NO_BOARD_PORTS = ["sim:nosuch", "", "bogus://x", "@missing-tty", "@adir", "@junk.bin"]
PATH_KINDS = ["fresh", "missing", "file", "empty", "dir", "under_file", "deep_json", "inf_presets", "stream",
              "transcript"]

NUMBERS = st.one_of(
    st.sampled_from(["inf", "-inf", "+inf", "Infinity", "nan", "NaN", "-nan", "1e308", "-1e308", "1e999", "-1e999",
                     "0", "-0", "0.0", "-1", "1", "2", "3", "", " ", "abc", "1e3", "0x10", "1_0", "3.75", "7.5", "15",
                     "30", "10", "60", "120", "121", "80", "100", "100.5", "65535", "65536", "86400", "86400.5",
                     "99999", "100000", "16384", "16385", "16", "17", "256", "257", "2592000", "2592001",
                     "4294967295", "4294967296", "9" * 5000]),
    st.integers(-(10**6), 10**7).map(str),
    st.floats().map(repr),  # 'inf', 'nan', '1e+308', '-0.0', '5e-324', ...
    st.text(max_size=8),
)


def materialise(root: Path) -> dict[str, Path]:
    """Fresh inputs for one example (a command may write over one)."""
    root.mkdir()
    (root / "adir").mkdir()
    (root / "junk.bin").write_bytes(b"\x00garbage\xff" * 8)
    (root / "empty").write_bytes(b"")
    (root / "deep.json").write_text("[" * 20000 + "]" * 20000)
    (root / "inf.json").write_text('{"x": {"pulses_per_s": 7.5, "pulse_width_ms": 1e999, "kv": Infinity}}')
    frames = random_frames(np.random.default_rng(1), 2, 4, 6, wire.FMT_MONO12P)
    (root / "s.bin").write_bytes(clean_stream(frames, wire.FMT_MONO12P))
    deep = b"[" * 20000 + b"]" * 20000
    records = [(evidence.TO_BOARD, wire.stuff(wire.encode(wire.PKT_COMMAND, 1, wire.command_payload(2, deep)))),
               (evidence.TO_HOST, wire.encode(wire.PKT_RESPONSE, 0, struct.pack("<HB", 1, 0) + deep))]
    with open(root / "t.bin", "wb") as fh:
        fh.write(evidence.MAGIC)
        for k, (direction, data) in enumerate(records):
            fh.write(struct.pack("<BdI", direction, k * 0.1, len(data)) + data)
    return {"fresh": root / "fresh", "missing": root / "missing" / "x", "file": root / "junk.bin",
            "empty": root / "empty", "dir": root / "adir", "under_file": root / "junk.bin" / "x",
            "deep_json": root / "deep.json", "inf_presets": root / "inf.json", "stream": root / "s.bin",
            "transcript": root / "t.bin"}


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except BaseException as exc:  # nothing may escape main: say which did
            pytest.fail(f"{argv!r}: {type(exc).__name__} escaped main: {exc}\n{err.getvalue()}")
    return code, out.getvalue(), err.getvalue()


def check_outcome(argv: list[str], code: int, err: str) -> None:
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pulseline: error:"), (argv, err)


def bad_anywhere(text: str) -> bool:
    """A value no numeric option takes, whatever its limits (judged here,
    not by the parser under test): not a number, not finite, negative, or
    beyond any limit (the largest, --seed's, is 2**32 - 1)."""
    try:
        value = float(text)
    except ValueError:
        return True
    return not (math.isfinite(value) and 0 <= value < 1e15)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fuzz")
    # Simulated boards are looked up in ./.pulseline: here there are none.
    with contextlib.chdir(root):
        yield root, itertools.count()


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]], dict[str, str], str]:
    """(command, [(numeric option, value)], {path dest: kind}, port kind)."""
    name = draw(st.sampled_from(sorted(COMMANDS)))
    sub = COMMANDS[name]
    numeric = [a for a in sub._actions if isinstance(a.type, cli.Number)]
    chosen = draw(st.lists(st.sampled_from(numeric), unique_by=id, max_size=3)) if numeric else []
    values = [(a.option_strings[-1], draw(NUMBERS)) for a in chosen]
    paths = {}
    for a in sub._actions:
        if a.type is Path and (not a.option_strings or a.required or draw(st.booleans())):
            paths[a.dest] = draw(st.sampled_from(PATH_KINDS))
    refused = any(bad_anywhere(v) for _, v in values)  # one bad value: the whole command is refused
    if name in FOREVER:
        assume(refused)
    has_port = any(a.dest == "port" for a in sub._actions)
    port = "board" if refused and has_port and draw(st.booleans()) else draw(st.sampled_from(NO_BOARD_PORTS))
    return name, values, paths, port


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines(), st.booleans())
def test_any_command_line_ends_cleanly(workdir, line, as_json):
    root, counter = workdir
    name, values, path_kinds, port_kind = line
    files = materialise(root / f"ex{next(counter)}")
    sub = COMMANDS[name]
    argv = [name]
    for action in sub._actions:
        if action.type is Path and action.dest in path_kinds:
            where = str(files[path_kinds[action.dest]])
            argv += [where] if not action.option_strings else [f"{action.option_strings[-1]}={where}"]
    argv += [f"{option}={value}" for option, value in values]  # "--kv=-inf": a value, not an option
    if as_json and any("--json" in a.option_strings for a in sub._actions):
        argv.append("--json")
    board = RecordingBoard() if port_kind == "board" else None
    if any(a.dest == "port" for a in sub._actions):
        port = board.board.url if board else port_kind
        argv.append(f"--port={files['fresh'].parent / port[1:] if port.startswith('@') else port}")
    try:
        code, _, err = run(argv)
        check_outcome(argv, code, err)
        if board is not None:  # a value was refused: the board heard nothing at all
            assert code == 2 and not board.sent and not board.board.opened, (argv, board.commands())
        if code != 0:
            assert not files["fresh"].exists(), (argv, "a failed command left its output behind")
    finally:
        if board is not None:
            board.close()


def test_every_numeric_option_is_checked():
    """A plain type=int or type=float would take nan, inf or any size:
    every numeric option goes through cli.Number (its limits, one line)."""
    loose = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in COMMANDS.items()
             for a in sub._actions if a.type in (int, float)]
    assert not loose, loose
    assert sum(isinstance(a.type, cli.Number) for sub in COMMANDS.values() for a in sub._actions) >= 20


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kv=st.floats(60, 120), ma=st.floats(1, 80), pps=st.sampled_from([3.75, 7.5, 15.0, 30.0]),
       width=st.floats(2, 20), frames=st.integers(1, 3))
def test_small_captures_on_a_fast_board(workdir, kv, ma, pps, width, frames):
    """Past the checks, a capture runs (in virtual time, 16 x 16 pixels),
    or is refused on the host before the board hears of it."""
    root, counter = workdir
    out = root / f"cap{next(counter)}"
    board = RecordingBoard()
    try:
        with Session(board.board.url) as s:
            before = s.configure(pixels_per_line=16, lines_per_frame=16)
        board.sent.clear()
        fb = board.board
        # The operator: presses once the board is armed, lets go after the frames.
        fb.set_input("switch", True, at_us=fb.now_us + 300_000)
        fb.set_input("switch", False, at_us=fb.now_us + 300_000 + int(frames / pps * 1e6) + 1_000_000)
        argv = ["capture", f"--port={fb.url}", f"--kv={kv!r}", f"--ma={ma!r}", f"--pps={pps!r}",
                f"--width={width!r}", f"--frames={frames}", "--no-calibration", "--json", "-o", str(out)]
        code, stdout, err = run(argv)
        check_outcome(argv, code, err)
        if width > 500 / pps:  # more than half the period: refused on the host
            assert code == 2 and "half the period" in err and not board.sent, err
            with Session(fb.url) as s:
                assert s.config == before
            return
        assert code == 0, err
        summary = json.loads(stdout)
        assert summary["frames"] >= frames and summary["technique"]["kv"] == pytest.approx(kv)
        assert (out / "summary.json").exists()
    finally:
        board.close()
