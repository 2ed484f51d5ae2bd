"""Closing the terminal mid-capture (SIGTERM, SIGHUP, or the terminal
itself going away) ends the capture as Ctrl-C does: the exposure switch
released, the board disarmed, every frame that came saved whole, one line on
stderr (where there is still one) and a non-zero exit."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tifffile

from pulseline.link.session import wait_for_firmware
from pulseline.sim.board import SimBoard
from pulseline.targets.simboard import deploy_files as _deploy

pytestmark = pytest.mark.micropython


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimBoard]:
    tmp = tmp_path_factory.mktemp("signals")
    _deploy(tmp / "fs", None)
    # The CLI finds `sim:sig` in .pulseline/ of its working directory.
    b = SimBoard(tmp / "fs", name="sig", state_dir=tmp / ".pulseline", seed=5).start()
    try:
        wait_for_firmware(b.pty_path, timeout_s=60)
        yield b
    finally:
        b.stop()


def _capture_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "pulseline.cli", "capture", "--port", "sim:sig", "--duration", "120",
            "--no-calibration", "-o", str(out)]


def _wait_pulses(board: SimBoard, n: int, proc: subprocess.Popen) -> None:
    end = time.monotonic() + 60
    while board.plant_status()["pulses"] < n:
        assert proc.poll() is None, "the capture ended on its own"
        assert time.monotonic() < end, "no exposure within 60 s"
        time.sleep(0.05)


def _check_saved_and_safe(board: SimBoard, out: Path, signame: str) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"].startswith(f"interrupted ({signame}) after ")
    assert summary["frames"] >= 5 and summary["saving"] is False
    assert not list(out.glob(".*partial*"))
    assert len(tifffile.imread(out / "frames.tif")) == summary["frames"]
    assert summary["files"]["dicom_rf"] == "rf.dcm" and summary["files"]["dose_sr"] == "dose_sr.dcm"
    # The switch released by the capture, and the board disarmed by it.
    assert board.plant_status()["switch"] is False
    states = [e for e in summary["events"] if e["event"] == "state"]
    assert states[-1]["state"] == "IDLE", states
    assert summary["dose_report"]["pulses"] >= summary["frames"]
    # A press now exposes nobody.
    before = board.plant_status()["pulses"]
    board.press()
    time.sleep(0.6)
    board.release()
    assert board.plant_status()["pulses"] == before
    return summary


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_capture_saves_the_frames_releases_and_disarms(board, tmp_path, sig):
    out = tmp_path / "exam"
    proc = subprocess.Popen(_capture_cmd(out), cwd=board.state_dir.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_pulses(board, board.plant_status()["pulses"] + 8, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pulseline: error: interrupted ({name}) after "), err
    summary = _check_saved_and_safe(board, out, name)
    assert f"the {summary['frames']} frames received are saved" in lines[0]


def test_the_terminal_closing_mid_capture_saves_the_frames_releases_and_disarms(board, tmp_path):
    """The capture on a terminal of its own (a pty as its controlling
    terminal, the live progress display on it); the terminal goes away: the
    kernel sends SIGHUP, and every write to it fails from then on."""
    out = tmp_path / "exam"
    master, slave = os.openpty()

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(_capture_cmd(out), cwd=board.state_dir.parent, stdin=slave, stdout=slave,
                            stderr=slave, preexec_fn=own_terminal, close_fds=True)
    os.close(slave)
    try:
        start = board.plant_status()["pulses"]
        end = time.monotonic() + 60
        while board.plant_status()["pulses"] < start + 8:
            assert proc.poll() is None and time.monotonic() < end
            with contextlib.suppress(OSError):  # keep the terminal's output flowing, as a terminal reads it
                os.read(master, 65536)
            time.sleep(0.02)
        os.close(master)  # the terminal goes away
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1
    _check_saved_and_safe(board, out, "SIGHUP")


def test_a_capture_whose_board_loses_power_says_so_at_once_and_keeps_what_came(board, tmp_path):
    """The board's power cut mid-capture: the capture sees the board start
    again and ends there, with the frames it had and one line saying what
    happened, instead of waiting out its own deadline for frames that will
    never come."""
    out = tmp_path / "exam"
    proc = subprocess.Popen(_capture_cmd(out), cwd=board.state_dir.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_pulses(board, board.plant_status()["pulses"] + 8, proc)
        os.kill(board.proc.pid, signal.SIGKILL)
        # (its own deadline is 2 x 120 s + 5 s away)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "the board restarted (power) during the exposure" in lines[0], err
    assert "marked interrupted" in lines[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] >= 5 and len(tifffile.imread(out / "frames.tif")) == summary["frames"]
    events = summary["dose_report"]["events"]
    # Each frame is a pulse: at most 1 s of them (7.5 pps) is missing from the recovered event.
    assert events and events[-1]["interrupted"] == "power"
    assert summary["frames"] - events[-1]["pulses"] <= 7.5
    assert board.plant_status()["switch"] is False
    wait_for_firmware(board.pty_path, timeout_s=60)  # (the next test's board)
