"""The simulated board: the firmware on the real MicroPython unix port behind
a pty, driven by the real mpremote and by the host session, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pulseline.exam.capture import capture
from pulseline.link.clock import OwnClock
from pulseline.link.evidence import TO_HOST
from pulseline.link.frames import Frame
from pulseline.link.session import Session, SessionError, wait_for_firmware
from pulseline.plant import Plant, PlantConfig, Timeline
from pulseline.sim.board import SimBoard
from pulseline.targets.flash import copy_source

pytestmark = pytest.mark.micropython

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def deploy(fs: Path) -> None:
    """What `mpremote fs cp` does, done directly (test_mpremote covers mpremote)."""
    copy_source(fs)


def mpremote(board: SimBoard, *args: str, cwd: Path | None = None) -> str:
    res = subprocess.run([MPREMOTE, "connect", board.pty_path, *args], capture_output=True, text=True, timeout=60,
                         cwd=cwd)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def wait_for(pred, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_mpremote_works_unmodified_against_the_simulated_board(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hello.py").write_text("print('hello from', 'the board')\n")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "state") as board:
        # Deploy the firmware as one would to a Pico, and list it.
        out = mpremote(board, "fs", "cp", "-r", "boot.py", "main.py", "pulsefw", ":", cwd=FIRMWARE)
        assert "cp main.py :" in out
        listing = mpremote(board, "fs", "ls", ":pulsefw")
        for src in (FIRMWARE / "pulsefw").glob("*.py"):
            assert f"{src.stat().st_size:>12} {src.name}" in listing
        assert (tmp_path / "fs" / "pulsefw" / "app.py").read_bytes() == (FIRMWARE / "pulsefw" / "app.py").read_bytes()
        assert mpremote(board, "fs", "cat", ":boot.py") == (FIRMWARE / "boot.py").read_text()
        assert mpremote(board, "exec", "print(6 * 7)").strip() == "42"
        assert mpremote(board, "run", str(tmp_path / "src" / "hello.py")).strip() == "hello from the board"
        mpremote(board, "fs", "cp", str(tmp_path / "src" / "hello.py"), ":hello.py")
        mpremote(board, "fs", "rm", ":hello.py")
        assert "hello.py" not in mpremote(board, "fs", "ls")
        # A hard reset reloads everything from the filesystem: boot.py, then
        # main.py, so the firmware answers.
        mpremote(board, "reset")
        with Session(board.pty_path, clock=board.clock) as s:
            assert s.board["firmware"] and s.status()["state"] == "IDLE"
        # Ctrl-C reaches the REPL from the running firmware (mpremote sends
        # it first), and a soft reset says "soft reboot" as a board does.
        assert mpremote(board, "exec", "import sys; print(sys.platform)").strip() == "linux"
        n = len(board.resets)
        mpremote(board, "soft-reset")
        assert [k for _, k in board.resets[n:]].count("soft") >= 1
        # The firmware is not running after a raw-REPL soft reset (as on a
        # board), and a hard reset brings it back.
        mpremote(board, "reset")
        with Session(board.pty_path, clock=board.clock) as s:
            assert s.status()["state"] == "IDLE"


def wait_until_answering(b: SimBoard) -> None:
    """Until the firmware on a freshly started board answers (it compiles
    its modules at boot, which takes a while on a loaded machine)."""
    wait_for_firmware(b.pty_path, timeout_s=60)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("board")
    deploy(tmp / "fs")
    plant = Plant(PlantConfig(seed=21), Timeline())
    with SimBoard(tmp / "fs", state_dir=tmp / "state", plant=plant) as b:
        wait_until_answering(b)
        yield b


def test_capture_through_the_pty_matches_the_plant(board):
    with Session(board.pty_path, clock=board.clock) as s:
        before = len(board.plant.pulses)
        meter_before = board.plant.meter_kerma_ugy
        report_before = s.dose_report()["kerma_mgy"]
        cap = capture(s, 12, press=board.press, release=board.release)
    assert cap.error is None, cap.error
    pulses = board.plant.pulses[before:]
    frames = [f for f in cap.frames if isinstance(f, Frame)]
    assert len(frames) == len(pulses) >= 12
    assert cap.counters["lines_lost"] == 0 and cap.counters["crc_errors"] == 0
    assert all(f.complete for f in frames)
    # Images against the plant's noise-free truth: the residual, scaled by
    # the noise the detector model predicts (quantum + read), has mean ~0
    # and unit spread. A statistical check, not a pixel-equal one.
    det = board.plant.detector
    for f, p in zip(frames, pulses, strict=True):
        truth = p.frame
        assert truth is not None
        expected = truth.expected_adu.astype(np.float64)
        maps = det.maps(truth.lines, truth.pixels)
        live = ~maps.dead & (expected < 4000)
        signal = expected - maps.offset
        # Quantum noise: var(ADU) = (ADU per photon) x mean signal in ADU.
        variance = np.maximum(maps.adu_per_photon * signal, 0) + det.spec.read_noise_adu ** 2 + 1 / 12
        z = (f.pixels.astype(np.float64) - expected)[live] / np.sqrt(variance[live])
        assert abs(z.mean()) < 0.05, z.mean()
        assert 0.9 < z.std() < 1.1, z.std()
    # Dose: the firmware's account, and the last dose display event of the
    # exposure, against the plant's meter.
    delivered = (board.plant.meter_kerma_ugy - meter_before) / 1000
    assert cap.dose_report["kerma_mgy"] - report_before == pytest.approx(delivered, rel=0.01)
    shown = [e for e in s.events if e.name == "dose"]
    assert len(shown) >= 2
    assert shown[-1].body["kerma_mgy"] - report_before == pytest.approx(delivered, rel=0.01)
    assert shown[-1].body["pulses"] == cap.dose_report["pulses"]


def test_a_configuration_over_the_link_is_refused_with_the_numbers(board):
    with Session(board.pty_path, clock=board.clock) as s:
        with pytest.raises(SessionError, match=r"needs \d+ bytes/s; the link carries 1100000"):
            s.configure(pixels_per_line=1024, lines_per_frame=512, pixel_format=1, pulses_per_s=30)
        assert s.command("get_config")["pixels_per_line"] == 256


def test_an_unknown_port_is_a_clear_error(tmp_path):
    with pytest.raises(SessionError, match="cannot open port"):
        Session(str(tmp_path / "ttyNOPE"))


def test_two_simulated_boards_side_by_side(tmp_path):
    deploy(tmp_path / "a")
    deploy(tmp_path / "b")
    with SimBoard(tmp_path / "a", state_dir=tmp_path / "st") as a, \
            SimBoard(tmp_path / "b", state_dir=tmp_path / "st") as b:
        wait_until_answering(a)
        wait_until_answering(b)
        sa, sb = Session(a.pty_path), Session(b.url)
        try:
            assert a.name != b.name and a.pty_path != b.pty_path and a.url != b.url
            sa.command("new_exam")
            assert sa.status()["exam"] == 1 and sb.status()["exam"] == 0
        finally:
            sa.close()
            sb.close()


def _line_packets(stream: bytes) -> list[tuple[int, int, bytes]]:
    """(frame_id, line_index, packet bytes) of every LINE packet in a clean stream."""
    from pulseline.link.protocol import wire

    out = []
    pos = stream.find(wire.SYNC)
    while pos >= 0 and pos + wire.HEADER_SIZE <= len(stream):
        ptype = stream[pos + 5]
        length = stream[pos + 8] | (stream[pos + 9] << 8)
        end = pos + wire.HEADER_SIZE + length + wire.CRC_SIZE
        if end > len(stream):
            break
        if ptype == wire.PKT_LINE:
            frame_id = int.from_bytes(stream[pos + 12:pos + 16], "little")
            line = int.from_bytes(stream[pos + 16:pos + 18], "little")
            out.append((frame_id, line, stream[pos:end]))
        pos = stream.find(wire.SYNC, end)
    return out


def _bad_candidates(stream: bytes, start: int) -> int:
    """Sync markers after `start` that do not begin an intact packet and do
    not lie inside one (a receiver skips over packets it accepts)."""
    import zlib

    from pulseline.link.protocol import wire

    bad = 0
    pos = start
    while (i := stream.find(wire.SYNC, pos)) >= 0 and i + wire.HEADER_SIZE <= len(stream):
        head = stream[i + 4:i + 10]
        length = head[4] | (head[5] << 8)
        end = i + wire.HEADER_SIZE + length + wire.CRC_SIZE
        header_ok = zlib.crc32(head) & 0xFFFF == int.from_bytes(stream[i + 10:i + 12], "little")
        if header_ok and end > len(stream):
            break  # still arriving when the capture ended
        if header_ok and zlib.crc32(stream[i + 4:end - 4]) == int.from_bytes(stream[end - 4:end], "little"):
            pos = end
        else:
            bad += 1
            pos = i + 1
    return bad


@pytest.mark.parametrize("seed", [5, 8])
def test_with_seeded_link_faults_lost_lines_are_exactly_the_damaged_ones(tmp_path, seed):
    deploy(tmp_path / "fs")
    faults = "corrupt=2e-5,drop=0.003,dup=0.003,delay=0.01:3ms"
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "st", faults=faults, seed=seed, record=True,
                  plant=Plant(PlantConfig(seed=seed), Timeline())) as board:
        wait_until_answering(board)
        time.sleep(0.3)
        with Session(board.pty_path, clock=board.clock, record=True) as s:
            cap = capture(s, 12, press=board.press, release=board.release)
            time.sleep(0.3)
        # Closed: its reader has fed the assembler all it recorded.
        assert s.recorder is not None
        seen = b"".join(data for direction, _, data in s.recorder.chunks if direction == TO_HOST)
        counters = s.counters()
        sent, got = bytes(board.sent_to_host), bytes(board.delivered_to_host)
        log = board.link_faults()
    assert cap.error is None, cap.error
    assert log, "the seed injected no fault: choose another"
    frames = {f.frame_id: f for f in cap.frames}
    truth = {p.index + 1: p.frame for p in board.plant.pulses}  # frame ids count pulses from 1
    damaged = 0
    sent_lines = set()
    for frame_id, line, packet in _line_packets(sent):
        if frame_id not in frames:
            continue
        # Each line once: a line id seen twice would mean the board restarted (its frame ids with it).
        assert (frame_id, line) not in sent_lines, f"line {line} of frame {frame_id} sent twice: {board.resets}"
        sent_lines.add((frame_id, line))
        intact = packet in got
        damaged += not intact
        f = frames[frame_id]
        # The host has the line if and only if it crossed the link intact.
        assert bool(f.line_received[line]) == intact, (frame_id, line)
    assert damaged > 0
    # A line the board never sent (its readout gave up on it: a host too
    # busy to run the simulated board's interpreter in time) is lost too,
    # and is not the link's doing.
    never_sent = [(i, n) for i, f in frames.items() for n in range(f.line_received.size) if (i, n) not in sent_lines]
    assert not any(frames[i].line_received[n] for i, n in never_sent)
    assert sum(f.lines_lost for f in frames.values()) == damaged + len(never_sent)
    # Bad packets: every place in what arrived that starts like a packet but
    # is not one (a damaged header, or a payload that fails its CRC), as an
    # independent walk over the very bytes the session's assembler was fed
    # counts them (the session replaces its assembler when the hello names
    # the geometry; bytes after the capture's own count still came).
    assert got.find(seen) >= 0, "the session read bytes the board never delivered"
    fed = seen[len(seen) - counters["bytes_in"]:]
    bad = _bad_candidates(fed, 0)
    assert bad > 0 and counters["crc_errors"] + counters["header_errors"] == bad
    # No damaged line is ever delivered as good: every line the host has is
    # the detector's own.
    for f in frames.values():
        t = truth[f.frame_id]
        assert t is not None
        assert np.array_equal(f.pixels[f.line_received], t.raw_adu[f.line_received])


def test_a_disconnect_mid_capture_is_reported_and_what_came_is_kept(tmp_path):
    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "st", faults="disconnect=8", seed=2) as board:
        wait_until_answering(board)
        with Session(board.pty_path, clock=board.clock) as s:
            cap = capture(s, 1000, press=board.press, release=board.release)
    assert cap.error is not None and "link is down" in cap.error
    assert len(cap.frames) > 0


def test_flash_deploys_changes_only_what_differs_and_catches_a_corrupted_file(tmp_path):
    from pulseline.targets.flash import flash, handshake

    fs = tmp_path / "fs"
    fs.mkdir()
    with SimBoard(fs, state_dir=tmp_path / "st") as board:
        port = board.pty_path
        plan = flash(port, build_dir=tmp_path / "build", log=lambda m: None)
        assert len(plan.copy) == len(plan.bundle) >= 10
        # The firmware names the exact bundle it runs.
        assert handshake(port, expect_hash=plan.firmware_hash)["firmware_hash"] == plan.firmware_hash
        assert (fs / "pulsefw" / "app.mpy").exists() and not (fs / "pulsefw" / "app.py").exists()
        # A second run changes nothing.
        again = flash(port, dry_run=True, build_dir=tmp_path / "build")
        assert again.copy == [] and again.remove == []
        # Looking stopped the firmware at the REPL; the dry run restarts it.
        assert handshake(port, timeout_s=20, expect_hash=plan.firmware_hash)
        # One corrupted byte on the board, and a stale source file: found,
        # fixed, verified.
        target = fs / "pulsefw" / "dose.mpy"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        (fs / "pulsefw" / "wire.py").write_text("# stale\n")
        dry = flash(port, dry_run=True, build_dir=tmp_path / "build")
        assert [f.path for f in dry.copy] == ["pulsefw/dose.mpy"] and dry.remove == ["pulsefw/wire.py"]
        fixed = flash(port, build_dir=tmp_path / "build", log=lambda m: None)
        assert [f.path for f in fixed.copy] == ["pulsefw/dose.mpy"]
        assert not (fs / "pulsefw" / "wire.py").exists()
        assert handshake(port, expect_hash=fixed.firmware_hash)["firmware"]


def test_a_capture_saves_a_valid_dicom_rf_image(board, tmp_path):
    import pydicom

    from pulseline.exam.capture import save

    with Session(board.pty_path, clock=board.clock) as s:
        cap = capture(s, 5, press=board.press, release=board.release)
    assert cap.frames, (cap.error, [(e.name, e.body) for e in s.events])
    summary = save(cap, tmp_path / "exam", board.pty_path)
    dcm = tmp_path / "exam" / summary["files"]["dicom_rf"]
    res = subprocess.run(["dciodvfy", str(dcm)], capture_output=True, text=True)
    assert "Error" not in res.stdout + res.stderr, res.stdout + res.stderr
    ds = pydicom.dcmread(dcm)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.2" and ds.RadiationMode == "PULSED"
    assert int(ds.NumberOfFrames) == len(cap.frames) and float(ds.FrameTime) == pytest.approx(1000 / 7.5, rel=1e-4)
    assert float(ds.KVP) == pytest.approx(80.0, rel=0.01) and float(ds.AveragePulseWidth) == pytest.approx(10.0)
    assert np.array_equal(ds.pixel_array, np.stack([f.pixels for f in cap.frames]))
    # The dose SR: valid, one irradiation event per press, totals = sum of events.
    sr_path = tmp_path / "exam" / summary["files"]["dose_sr"]
    res = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True)
    assert "Error" not in res.stdout + res.stderr, res.stdout + res.stderr
    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.67" and sr.StudyInstanceUID == ds.StudyInstanceUID
    from pulseline.exam.sr_templates import walk


    def num(container, meaning):
        return [float(i.MeasuredValueSequence[0].NumericValue) for i in container.ContentSequence
                if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeMeaning == meaning]

    events = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning ==
              "Irradiation Event X-Ray Data"]
    totals = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning ==
                  "Accumulated X-Ray Dose Data")
    assert len(events) == len(cap.dose_report["events"]) >= 1 and walk(sr) == []
    assert num(totals, "Dose (RP) Total")[0] == pytest.approx(sum(num(e, "Dose (RP)")[0] for e in events), rel=1e-5)
    assert num(totals, "Dose Area Product Total")[0] == pytest.approx(
        sum(num(e, "Dose Area Product")[0] for e in events), rel=1e-5)
    assert sum(num(e, "Number of Pulses")[0] for e in events) == cap.dose_report["pulses"]
    from PIL import Image

    png = Image.open(tmp_path / "exam" / summary["files"]["last_image"])
    assert png.size == (256, 256) and png.mode == "L" and np.asarray(png).std() > 5


def test_a_stalled_firmware_is_reset_once_by_the_watchdog_within_its_timeout_of_board_time(tmp_path):
    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "st") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        b.set_input("stall", 2_000_000)  # the control loop hangs, spinning, for 2 s of its time
        assert wait_for(lambda: [k for _, k in b.resets] == ["watchdog"], 10)
        (stalled_at,) = b.stalls
        ((reset_at, _),) = b.resets
        # The plant's 100 ms watchdog, judged on the board's own clock, from its last feed.
        assert 80_000 < reset_at - stalled_at < 150_000, (stalled_at, reset_at)  # (fed a loop pass before)
        with Session(b.pty_path, clock=b.clock, answer_timeout_s=5) as s:
            status = s.status()
        assert status["state"] == "FAULT" and status["fault"] == 6  # FAULT_WATCHDOG_RESET, latched
        time.sleep(1.0)
        assert [k for _, k in b.resets] == ["watchdog"]  # once: the new firmware runs on


def test_time_the_host_takes_from_the_board_is_not_the_boards(tmp_path):
    """A board's time is its own: an interpreter the host does not run (a
    starved machine; here SIGSTOP for 0.4 s, four watchdog timeouts) is no
    stalled firmware. Its clock and the plant's stand meanwhile."""
    import os
    import signal

    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "st") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        assert b.proc is not None
        before = b.server.now_us()
        wall = time.monotonic()
        os.kill(b.proc.pid, signal.SIGSTOP)
        time.sleep(0.4)
        during = b.server.now_us()
        os.kill(b.proc.pid, signal.SIGCONT)
        time.sleep(0.3)
        after, wall_after = b.server.now_us(), time.monotonic()
        assert during - before < 50_000  # (what it ran before the stop took)
        assert after - before < (wall_after - wall) * 1e6 - 350_000
        assert b.resets == []
        # A session that waits on the board's clock waits as long as the
        # board took: stopped for 1.5 s of wall time, it answers within 0.5 s
        # of its own.
        with Session(b.pty_path, answer_timeout_s=0.5, clock=OwnClock(b.board_now_us)) as s:
            assert s.status()["state"] != "FAULT"
            stopped_at = b.board_now_us()
            os.kill(b.proc.pid, signal.SIGSTOP)
            threading.Timer(1.5, os.kill, (b.proc.pid, signal.SIGCONT)).start()
            wall = time.monotonic()
            assert s.status()["state"] != "FAULT"
            assert time.monotonic() - wall >= 1.5
            assert b.board_now_us() - stopped_at < 500_000


SPIN_THROUGH_A_STOP = """
import select, sys, time
from pulsefw.boards.sim.hal import BoardClock
c = BoardClock(time)
p = select.poll()
p.register(sys.stdin, select.POLLIN)
w0 = time.ticks_us()
b0 = c.now()
print("spinning")
while not p.poll(0):
    c.now()
print("S", c._stat is not None, c.now() - b0, time.ticks_diff(time.ticks_us(), w0))
"""


def test_a_board_stopped_while_it_runs_does_not_count_the_stop(tmp_path):
    """The board's clock tells a stop outside any wait or host call (SIGSTOP
    while its code runs, or waits for a host CPU) from running, by the
    kernel's account of what the interpreter ran and queued for. Its "/" is
    its own filesystem: the account is read by its host path."""
    import os
    import signal

    from mpremote.transport_serial import SerialTransport

    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "st") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        t = SerialTransport(b.pty_path, baudrate=115200)
        try:
            t.enter_raw_repl(soft_reset=False)
            t.exec_raw_no_follow(SPIN_THROUGH_A_STOP)
            t.read_until(1, b"spinning\r\n", timeout=60)
            assert b.proc is not None
            os.kill(b.proc.pid, signal.SIGSTOP)  # the program spins: the stop lands in running code
            time.sleep(1.0)
            os.kill(b.proc.pid, signal.SIGCONT)
            t.serial.write(b"x")  # the spin ends (only after the stop: it cannot end before)
            out = t.read_until(1, b"\x04", timeout=60)
        finally:
            t.close()
    kernel_account, board_us, wall_us = out.split(b"S ")[1].split(b"\r\n")[0].decode().split(" ")
    assert kernel_account == "True"
    # The wall saw the stop; the board did not (EXEC_SLACK_US aside).
    assert int(board_us) < int(wall_us) - 900_000, (board_us, wall_us)


def test_flash_dry_run_for_the_pico_lists_its_exact_bundle_and_a_board_of_another_kind_is_refused(tmp_path):
    import subprocess
    import sys

    from pulseline.targets.flash import FlashError, build_bundle, bundle_hash, flash

    res = subprocess.run([sys.executable, "-m", "pulseline", "flash", "--dry-run", "--board", "rp2", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    paths = {f["path"]: f["size"] for f in out["bundle"]}
    # The Pico's own modules, not the simulated board's; every file with its size.
    assert {"pulsefw/boards/rp2/hal.mpy", "pulsefw/boards/rp2/pio.mpy", "pulsefw/boards/rp2/wiring.mpy", "boot.py",
            "main.py"} <= set(paths)
    assert "pulsefw/boards/sim/hal.mpy" not in paths and all(size > 0 for size in paths.values())
    # Exactly what a flash builds for a board that says it is rp2, and the hash the firmware will report.
    built = build_bundle("rp2", tmp_path / "again")
    assert [(f.path, f.sha256) for f in built] == [(f["path"], f["sha256"]) for f in out["bundle"]]
    assert out["firmware_hash"] == bundle_hash(built)
    text = subprocess.run([sys.executable, "-m", "pulseline", "flash", "--dry-run", "--board", "rp2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120).stdout
    assert "rp2 bundle for MicroPython" in text and "pulsefw/boards/rp2/hal.mpy" in text and "bytes" in text
    # Without --dry-run, or with a board of the other kind: refused in one line.
    res = subprocess.run([sys.executable, "-m", "pulseline", "flash", "--board", "rp2"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1 and "--port" in res.stderr
    fs = tmp_path / "fs"
    fs.mkdir()
    with SimBoard(fs, state_dir=tmp_path / "st") as board, pytest.raises(FlashError, match="a linux board, not rp2"):
        flash(board.pty_path, dry_run=True, board="rp2", build_dir=tmp_path / "build")


def test_a_board_running_elsewhere_gives_its_own_time_over_its_control_channel(board):
    from pulseline.targets.simboard import SimBoardTarget, running_board_of

    record = running_board_of(board.pty_path, board.state_dir)
    assert record is not None
    target = SimBoardTarget.attach(board.pty_path, record, board.state_dir)
    try:
        assert isinstance(target.clock, OwnClock)
        before = board.board_now_us()
        seen = round(target.clock.now() * 1e6)
        assert before <= seen <= board.board_now_us()  # the same clock, read through the channel
        with target.open_session() as s:
            assert s.clock is target.clock and s.status()["state"]
    finally:
        target.close()
