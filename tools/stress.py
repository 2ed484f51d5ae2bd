"""Run a command (by default `make test`) beside a busy machine, several
times, and judge the simulated boards' watchdogs in its evidence.

The load is two CPU hogs and a disk writer (fsync'd 16 MB files), bounded
in time, stopped when each run ends. After each run the hil evidence
bundles are read: no watchdog fault (FAULT_WATCHDOG_RESET) may appear in
any of them but the test that stalls its firmware on purpose, which must
have passed (it asserts the reset within the watchdog's timeout).

    python tools/stress.py --runs 10                # make test, ten times
    python tools/stress.py --runs 1 -- make unit    # another command

One line per run, then a summary; the figures for docs/ci.md. Exit status
0 only when every run passed and no bundle showed a watchdog fault.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULT_WATCHDOG_RESET = 6
# The one test that stalls its firmware on purpose: its reset is the point.
STALL_TEST = "test_a_stalled_control_loop_stops_emission_and_the_watchdog_resets_the_board"

_HOG = "while True: pass"
_WRITER = """
import os, sys, time
where, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
block = os.urandom(1 << 20)
while time.monotonic() < end:
    try:  # (whatever happens to the directory, the load goes on)
        os.makedirs(where, exist_ok=True)
        path = os.path.join(where, "stress.bin")
        with open(path, "wb") as fh:
            for _ in range(16):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        os.remove(path)
    except OSError:
        time.sleep(0.1)
"""


def start_load(hogs: int, seconds: float, scratch: str) -> list[subprocess.Popen[bytes]]:
    """The neighbours: `hogs` busy loops and one disk writer, each ending
    by itself after `seconds` if nobody stops it first."""
    bounded = ["timeout", "--signal=KILL", str(int(seconds))]
    # Each in a session of its own: stop_load ends the whole group (the
    # timeout wrapper killed alone would leave its child running).
    procs = [subprocess.Popen([*bounded, sys.executable, "-c", _HOG], start_new_session=True) for _ in range(hogs)]
    procs.append(subprocess.Popen([*bounded, sys.executable, "-c", _WRITER, scratch, str(seconds)],
                                  start_new_session=True))
    return procs


def stop_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


def watchdog_faults(evidence: Path) -> tuple[list[str], str | None]:
    """Bundles whose events show a watchdog fault (the stall test apart),
    and the stall test's outcome (None when it did not run)."""
    faulty: list[str] = []
    stall_outcome: str | None = None
    for bundle in sorted(p for p in evidence.rglob("evidence.json")):
        meta = json.loads(bundle.read_text())
        test = str(meta.get("test", bundle.parent.name))
        if test.endswith(STALL_TEST):
            stall_outcome = str(meta.get("outcome"))
            continue
        events = bundle.parent / "events.jsonl"
        if not events.exists():
            continue
        for line in events.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("fault") == FAULT_WATCHDOG_RESET or (
                        event.get("event") == "fault" and event.get("code") == FAULT_WATCHDOG_RESET):
                    faulty.append(test)
                    break
    return faulty, stall_outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="how many runs (default 10)")
    parser.add_argument("--hogs", type=int, default=2, help="CPU hogs beside the command (default 2)")
    parser.add_argument("--limit-s", type=float, default=1800, help="the load ends by itself after this (default 1800)")
    parser.add_argument("--evidence", type=Path, default=ROOT / "build" / "evidence",
                        help="where the command leaves its hil evidence (default build/evidence)")
    parser.add_argument("--logs", type=Path, default=ROOT / "build" / "stress",
                        help="each run's output goes to run-N.log here (default build/stress)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command (default: make test)")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] or ["make", "test"]
    if args.runs < 1 or args.hogs < 0 or args.limit_s <= 0:
        parser.error("--runs must be >= 1, --hogs >= 0, --limit-s > 0")
    if not shutil.which("timeout"):
        parser.error("coreutils' timeout is needed to bound the load")
    # Stopped (SIGTERM, SIGHUP): the finally below still stops the load.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    failures = 0
    args.logs.mkdir(parents=True, exist_ok=True)
    print(f"stress: {' '.join(command)} x{args.runs} beside {args.hogs} CPU hogs and a disk writer "
          f"on {os.cpu_count()} CPUs", flush=True)
    for run in range(1, args.runs + 1):
        log = args.logs / f"run-{run}.log"
        with tempfile.TemporaryDirectory(prefix="stress-load-") as scratch, log.open("w") as out:
            load = start_load(args.hogs, args.limit_s, scratch)
            t0 = time.monotonic()
            try:
                res = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            finally:
                stop_load(load)
            took = time.monotonic() - t0
        faulty, stall = watchdog_faults(args.evidence)
        ok = res.returncode == 0 and not faulty and stall == "passed"
        failures += not ok
        failed = [line.split()[1] for line in log.read_text(errors="replace").splitlines()
                  if line.startswith("FAILED ")]
        print(f"run {run}: {'pass' if ok else 'FAIL'}, exit {res.returncode}, {took / 60:.1f} min, "
              f"watchdog faults in {len(faulty)} bundles{': ' + ', '.join(faulty) if faulty else ''}, "
              f"stall test {stall}{'; failed: ' + ', '.join(failed) if failed else ''} ({log})", flush=True)
    print(f"stress: {args.runs - failures} of {args.runs} runs passed", flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
