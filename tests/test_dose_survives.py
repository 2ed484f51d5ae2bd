"""Nothing delivered goes unrecorded: the firmware on the real MicroPython
unix port, its journal on a real filesystem, judged by the plant's own
record of every pulse.

- A power cut (the interpreter killed, as the board's supply would stop it)
  at random instants during presses: at most 1 s of delivered pulses is
  missing from the journal, none is counted twice, and the event cut short
  comes back marked interrupted with its pulse count.
- A stray Ctrl-C (0x03) on the link mid-exposure, alone or inside random
  line noise: emission stops at once (the generator's enable dropped), the
  open event is committed with every pulse delivered, marked interrupted,
  and no pulse ever leaves without a held switch.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulseline.link.evidence import TO_BOARD
from pulseline.link.session import BoardAtRepl, Session, wait_for_firmware
from pulseline.mpcompat import import_firmware
from pulseline.sim.board import SimBoard
from pulseline.targets.simboard import deploy_files as _deploy

journal = import_firmware("pulsefw.journal")

pytestmark = pytest.mark.micropython

PPS = 30.0  # the fastest rate: the most pulses a second of loss can hold
SEED = 20261206  # the instants of the power cuts: fixed, so a failure replays


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SimBoard]:
    fs = tmp_path / "fs"
    _deploy(fs, None)
    b = SimBoard(fs, state_dir=tmp_path / "state", seed=3).start()
    try:
        wait_for_firmware(b.pty_path, timeout_s=60)
        yield b
    finally:
        b.stop()


def _wait(what, timeout_s: float = 30.0, step_s: float = 0.02):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s")


def _pulses(board: SimBoard) -> int:
    return int(board.plant_status()["pulses"])


def test_a_power_cut_at_any_instant_loses_under_a_second_and_never_counts_twice(board):
    rnd = random.Random(SEED)
    # Instants after the press: before the first pulse, around the first
    # checkpoint, and anywhere in a longer press.
    cuts = [0.02, 0.3, 0.55] + [rnd.uniform(0.05, 2.5) for _ in range(5)]
    with Session(board.pty_path, clock=board.clock, answer_timeout_s=10) as s:
        exam = s.command("new_exam")["exam"]
        recorded = 0  # pulses the journal holds for this exam so far
        for k, cut_s in enumerate(cuts):
            s.configure(pulses_per_s=PPS, pixels_per_line=64, lines_per_frame=64)  # (a restart forgets it)
            seen = len(s.events)
            before = _pulses(board)
            s.arm()
            board.press()
            time.sleep(cut_s)
            os.kill(board.proc.pid, signal.SIGKILL)  # the power goes
            board.release()
            assert s.wait_event("boot", 60, since=seen) is not None, f"cut {k}: the board did not come back"
            report = s.dose_report()
            delivered = _pulses(board) - before
            meter_ugy = [p.kerma_ref_ugy for p in board.plant.pulses[before:]]  # the reference meter, per pulse
            recovered = [e for e in s.events[seen:] if e.name == "irradiation"]
            kept = recovered[-1].body["pulses"] if recovered else 0
            kept_ugy = recovered[-1].body["kerma_ugy"] if recovered else 0.0
            # The journal's dose is the meter's for the pulses it holds (rule 12: within 1 %), never more.
            assert kept_ugy == pytest.approx(sum(meter_ugy[:kept]), rel=0.01, abs=1e-9)
            assert report["exam"] == exam and report["pulses"] == recorded + kept  # counted once
            assert 0 <= delivered - kept <= PPS, f"cut {k} at {cut_s:.2f} s: {delivered} pulses delivered, " \
                                                 f"{kept} in the journal"
            if recovered:  # the event cut short: committed at boot, marked interrupted, with its pulses
                last = report["events"][-1]
                assert recovered[-1].body["interrupted"] == "power" and kept > 0
                assert last["interrupted"] == "power" and last["final"] and last["pulses"] == kept
            else:  # cut before its first pulse was accounted: nothing of it was delivered but that one
                assert delivered <= 1, f"cut {k}: {delivered} pulses delivered and no event recovered"
            recorded += kept
    # The journal file holds every event once, in order, and reads back whole.
    records = journal.decode_records((board.fs_dir / "journal.bin").read_bytes())[0]
    events = [r for _, r in records if r.get("kind") == "event" and r.get("exam") == exam]
    assert [e["event"] for e in events] == sorted({e["event"] for e in events})


def _journal_events(board: SimBoard, exam: int) -> list[dict]:
    records = journal.decode_records((board.fs_dir / "journal.bin").read_bytes())[0]
    return [r for _, r in records if r.get("kind") == "event" and r.get("exam") == exam]


@pytest.mark.parametrize("line", ["ctrl-c", "noise"])
def test_a_stray_ctrl_c_mid_exposure_stops_emission_and_commits_every_pulse(board, line):
    rnd = random.Random(SEED)
    with Session(board.pty_path, clock=board.clock, answer_timeout_s=10, record=True) as s:
        s.configure(pulses_per_s=PPS, pixels_per_line=64, lines_per_frame=64)
        exam = s.command("new_exam")["exam"]
        s.arm()
        board.press()
        _wait(lambda: _pulses(board) >= 5)
        if line == "noise":
            # Line noise first, with no 0x03 in it: the firmware skips it and exposes on.
            noise = bytes(b for b in rnd.randbytes(4000) if b != 0x03)
            s.serial.write(noise)
            at = _pulses(board)
            _wait(lambda: _pulses(board) >= at + 5)
            assert s.status()["state"] == "EXPOSING"
            s.serial.write(rnd.randbytes(50).replace(b"\x03", b"") + b"\x03" + rnd.randbytes(50))
        else:
            s.serial.write(b"\x03")
        stopped = s.wait_event("stopped", 10)
        told = s.now()  # (the session knew it from here on)
        assert stopped is not None and "Ctrl-C" in stopped.body["reason"] and stopped.body["then"] == "REPL"
        fired = _pulses(board)
        time.sleep(1.0)  # the switch still held
        assert _pulses(board) == fired, "a pulse left after the firmware stopped"
        status = board.plant_status()
        assert status["switch"]
        # The session typed nothing at the REPL after the firmware said it
        # stopped: its heartbeat, typed there, could hold a Ctrl-D (a soft
        # reset, and the firmware back under the next host's feet).
        assert s.recorder is not None
        assert [d for direction, t, d in s.recorder.chunks if direction == TO_BOARD and t >= told] == []
        with pytest.raises(BoardAtRepl):
            s.status()
    # The event is committed with every pulse the plant delivered, marked interrupted.
    events = _journal_events(board, exam)
    assert len(events) == 1 and events[0]["final"] and events[0]["interrupted"] == "ctrl-c"
    assert events[0]["pulses"] == fired
    # The hardware chain: nothing fired without the switch, nothing after the stop.
    p = board.plant
    assert all(pulse.inputs.switch for pulse in p.pulses)
    assert p.emission_offs and all(pulse.t_us < p.emission_offs[0] for pulse in p.pulses)
    if line == "ctrl-c":  # (noise after the 0x03 goes on to the REPL, which does what it says)
        # A new session is told where the board is and how to restart it.
        with pytest.raises(BoardAtRepl, match=r"MicroPython REPL.*mpremote connect .* reset"):
            Session(board.pty_path, clock=board.clock, answer_timeout_s=1)
