"""MicroPython's own test suite, unmodified, against a simulated board: a
board to every tool passes what the bare interpreter passes.

`run-tests.py -t port:PTY` runs each test on the board through the raw
REPL, as MicroPython runs it against its own boards; the same suite runs on
the bare unix-port interpreter (the one the board runs). Every test that
passes bare must pass on the board, but for the few in CANNOT, each with
its reason. The suite comes from ../shared/micropython-v1.28.0 (or
$PULSELINE_MICROPYTHON_SUITE) and runs from a copy, so nothing it writes
lands there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pulseline.sim.board import SimBoard

pytestmark = [pytest.mark.micropython, pytest.mark.long_running]

ROOT = Path(__file__).resolve().parents[1]
SUITE = Path(os.environ.get("PULSELINE_MICROPYTHON_SUITE", ROOT.parent / "shared" / "micropython-v1.28.0"))
MICROPYTHON = Path(sys.executable).parent / "micropython"
DIRS = ("basics", "micropython", "float", "extmod", "misc")
UNITTEST = Path("lib") / "micropython-lib" / "unittest"  # (its package is unittest/ in there)

# print under micropython.heap_lock(): a board's print allocates nothing; the
# simulated board's is a Python function (the unix port writes print's text
# and sys.stdout.buffer's bytes to one descriptor, so only a print of its own
# can send text with a board's CRLF and bytes as they are), and calling it
# allocates its arguments.
HEAP_LOCKED_PRINT = "print under heap_lock: the simulated board's print is a Python function (CRLF), which allocates"

# Tests that pass bare and cannot pass on the board, and why: the one list.
CANNOT = {
    "extmod/vfs_posix.py": "tests the unix port's host VfsPosix against the host's directories; a board's / is "
                           "its own filesystem (a Pico has no VfsPosix and skips it)",
    "extmod/vfs_posix_enoent.py": "the same: it removes the host's current directory under the interpreter",
    "extmod/vfs_posix_ilistdir_del.py": "the same: host directories through VfsPosix",
    "extmod/vfs_posix_ilistdir_filter.py": "the same: host directories through VfsPosix",
    "extmod/vfs_posix_paths.py": "the same: host directories through VfsPosix",
    "basics/sys_path.py": "checks that it runs from a file of its name; a program sent to a board's raw REPL has "
                          "no __file__ (every board skips it)",
    "basics/int_big_to_small.py": HEAP_LOCKED_PRINT,
    "basics/int_big_to_small_int29.py": HEAP_LOCKED_PRINT,
    "micropython/heap_lock.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_exc_compressed.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_exc_compressed_emg_exc.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_exc_raise.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_fail_bytearray.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_fail_dict.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_fail_list.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_fail_memoryview.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_fail_set.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_fail_tuple.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_inst_call.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_int_from_bytes.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_iter.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_super.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_traceback.py": HEAP_LOCKED_PRINT,
    "micropython/heapalloc_yield_from.py": HEAP_LOCKED_PRINT,
    "extmod/asyncio_heaplock.py": HEAP_LOCKED_PRINT,
    "extmod/vfs_fat_finaliser.py": HEAP_LOCKED_PRINT,
    "misc/sys_atexit.py": "a board runs sys.atexit's function at soft reset, not when a program sent to the raw "
                          "REPL ends",
    "micropython/meminfo.py": "qstr_info counts the launcher's own qstrs (the board's shims load before the "
                              "REPL), where a fresh board has a handful",
}


def _results(result_dir: Path) -> dict[str, set[str]]:
    data = json.loads((result_dir / "_results.json").read_text())
    by: dict[str, set[str]] = {"pass": set(), "skip": set(), "fail": set()}
    for test, outcome, *_ in data["results"]:
        by.setdefault(outcome, set()).add(str(Path(test).relative_to(Path(test).parents[1])))
    return by


def _run_tests(tests_dir: Path, result_dir: Path, *args: str, env: dict[str, str] | None = None,
               which: tuple[str, ...] = ("-d", *DIRS)) -> dict[str, set[str]]:
    """run-tests.py on `which` (the directories, or --run-failures: what
    failed in result_dir's last run); its results by outcome."""
    res = subprocess.run([sys.executable, "run-tests.py", "--result-dir", str(result_dir), *args, *which],
                         cwd=tests_dir, capture_output=True, text=True, timeout=1200, env=env)
    assert (result_dir / "_results.json").exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return _results(result_dir)


def test_micropythons_own_suite_passes_on_the_board_what_it_passes_bare(tmp_path: Path) -> None:
    if not (SUITE / "tests" / "run-tests.py").exists():
        pytest.fail(f"MicroPython's test suite is not at {SUITE} (../shared/micropython-v1.28.0 beside the "
                    "checkout, or set PULSELINE_MICROPYTHON_SUITE)", pytrace=False)
    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite)
    tests = suite / "tests"
    fs = tmp_path / "board-fs"
    shutil.copytree(suite / UNITTEST / "unittest", fs / "lib" / "unittest")  # as `mpremote mip install unittest`
    with SimBoard(fs, state_dir=tmp_path / "state", link="usb-hs") as board:
        on_board = _run_tests(tests, tmp_path / "board", "-t", f"port:{board.pty_path}")
        if on_board["fail"]:
            # What failed runs once more (run-tests.py's own --run-failures):
            # at the REPL the board's time is the host's, and a timing test
            # (extmod/asyncio_fair.py) can lose to a host starved of CPU.
            again = _run_tests(tests, tmp_path / "board", "-t", f"port:{board.pty_path}", which=("--run-failures",))
            on_board["pass"] |= again["pass"]
            on_board["fail"] = again["fail"]
    env = {**os.environ, "MICROPY_MICROPYTHON": str(MICROPYTHON),
           "MICROPYPATH": os.pathsep.join([".frozen", str(suite / UNITTEST)])}
    bare = _run_tests(tests, tmp_path / "bare", "--keep-path", "-j", "2", env=env)
    figures = {d: {where: {k: sum(t.startswith(d + "/") for t in got[k]) for k in ("pass", "skip", "fail")}
                   for where, got in (("board", on_board), ("bare", bare))} for d in DIRS}
    # Run, pass, skip and fail per directory, board against bare (docs/board.md).
    out = ROOT / "build" / "micropython-suite.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    lost = sorted(bare["pass"] - on_board["pass"] - set(CANNOT))
    assert lost == [], {t: "fail" if t in on_board["fail"] else "skip" for t in lost}
    # The list stays true: each test in it still passes bare and not on the board.
    assert sorted(t for t in CANNOT if t in on_board["pass"] or t not in bare["pass"]) == []
    assert sum(len(v) for v in on_board.values()) > 800  # the whole suite ran


def test_micropythons_serial_test_passes_on_the_board(tmp_path: Path) -> None:
    """tests/serial_test.py, unmodified: the echo test (1 to 520 bytes at a
    time, every byte back as sent) and the read and write throughput tests,
    verified, through the board's pty as through a board's USB CDC."""
    if not (SUITE / "tests" / "serial_test.py").exists():
        pytest.fail(f"MicroPython's test suite is not at {SUITE}", pytrace=False)
    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite)
    with SimBoard(tmp_path / "board-fs", state_dir=tmp_path / "state") as board:
        res = subprocess.run([sys.executable, "serial_test.py", "-t", board.pty_path], cwd=suite / "tests",
                             capture_output=True, text=True, timeout=900)
    lines = [line.rsplit("\r", 1)[-1] for line in res.stdout.splitlines()]  # (progress is redrawn with CR)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert "DATA ECHO: OK for 1-520 bytes at a time" in lines, lines
    verified = [line for line in lines if line.startswith("DATA OUT: verify=1")]
    assert len([line for line in lines if line.startswith("DATA IN:")]) == 7 and len(verified) == 8, lines
