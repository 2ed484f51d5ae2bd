"""Bad input to the board commands, against a running simulated board: each
gives one clear line on stderr and a non-zero exit, and nothing captured is
lost."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pulseline.link.session import BoardAtRepl, Session, SessionError, wait_for_firmware
from pulseline.sim.board import SimBoard
from pulseline.targets.flash import copy_source

pytestmark = pytest.mark.micropython

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"


def deploy(fs: Path, protocol: int | None = None) -> None:
    copy_source(fs)
    if protocol is not None:  # a firmware from another protocol generation
        wire = fs / "pulsefw" / "wire.py"
        text = wire.read_text().replace("PROTOCOL_VERSION = const(1)", f"PROTOCOL_VERSION = const({protocol})")
        wire.write_text(text)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pulseline.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A non-zero exit, and on stderr exactly one error line, the last one;
    anything before it is a warning line."""
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("pulseline: error:"), res.stderr
    assert all(line.startswith("pulseline: warning:") for line in lines[:-1]), res.stderr
    err = lines[-1]
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    deploy(tmp / "good")
    deploy(tmp / "old", protocol=2)
    (tmp / "bare").mkdir()  # MicroPython, but no pulseline firmware
    # State where the CLI looks for simulated boards (run in tmp), so that
    # it can press their switches.
    with SimBoard(tmp / "good", state_dir=tmp / ".pulseline") as good, \
            SimBoard(tmp / "old", state_dir=tmp / ".pulseline") as old, \
            SimBoard(tmp / "bare", state_dir=tmp / ".pulseline") as bare:
        wait_for_firmware(good.pty_path, timeout_s=60)
        yield {"good": good, "old": old, "bare": bare, "tmp": tmp}


def test_unknown_port(tmp_path):
    one_line_error(cli("info", "--port", "/dev/ttyNOPE0", cwd=tmp_path), "cannot open port /dev/ttyNOPE0")


def test_busy_port(boards):
    port = boards["good"].pty_path
    with Session(port):
        one_line_error(cli("info", "--port", port, cwd=boards["tmp"]), "is busy")


def test_not_a_pulseline_board(boards):
    # (MicroPython with no pulseline firmware: it sits at its REPL, and says so when asked)
    one_line_error(cli("info", "--port", boards["bare"].pty_path, cwd=boards["tmp"]),
                   "the board is at the MicroPython REPL, not running the pulseline firmware",
                   "pulseline flash --port")


def test_incompatible_firmware(boards):
    one_line_error(cli("info", "--port", boards["old"].pty_path, cwd=boards["tmp"]),
                   "incompatible firmware", "the board speaks protocol 2, this host 1")


def test_out_of_range_technique(boards, tmp_path):
    # The host refuses what the firmware's limits forbid, before sending it.
    res = cli("capture", "--port", boards["good"].pty_path, "--kv", "150", "-o", str(tmp_path / "x"),
              cwd=boards["tmp"])
    one_line_error(res, "argument --kv: '150' is not a number within 60..120 kV")
    res = cli("capture", "--port", boards["good"].pty_path, "--pps", "10", "-o", str(tmp_path / "y"),
              cwd=boards["tmp"])
    one_line_error(res, "argument --pps: '10' is not one of 3.75, 7.5, 15 or 30 pps")
    # What only the board knows (its link) it refuses, with the numbers.
    res = cli("capture", "--port", boards["good"].pty_path, "--pps", "30", "-o", str(tmp_path / "z"),
              cwd=boards["tmp"])
    one_line_error(res, "256 x 256 px at 30.0 pps needs", "the link carries")


def in_private_mount(mount_opts: str, where: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI with a fresh tmpfs (mount_opts) on `where`, in a private
    mount namespace: a read-only or tiny filesystem that even root meets."""
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]
    script = f'mount -t tmpfs -o {mount_opts} tmpfs "$1" && shift && exec "$@"'
    return subprocess.run([*unshare, "sh", "-c", script, "sh", str(where), sys.executable, "-m", "pulseline.cli",
                           *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_a_full_disk_leaves_whole_files_or_none_and_a_summary_that_says_so(boards, tmp_path):
    """The exam goes to a 1.2 MB filesystem: the TIFF stack (0.8 MB) and the
    PNG fit, the DICOM RF image after them does not. What is on the disk
    afterwards: whole files, no partial one, and a summary that names the
    failure and lists only the files that exist."""

    small = tmp_path / "small"
    small.mkdir()
    seen = tmp_path / "seen"
    seen.mkdir()
    script = ('mount -t tmpfs -o size=1200k tmpfs "$1" || exit 99; where="$1"; out="$2"; shift 2; "$@"; '
              'status=$?; (cd "$where" && find . -type f | sort > "$out/listing.txt"; '
              'cp exam/summary.json "$out/" 2>/dev/null); exit $status')
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]
    res = subprocess.run([*unshare, "sh", "-c", script, "sh", str(small), str(seen), sys.executable, "-m",
                          "pulseline.cli", "capture", "--port", boards["good"].pty_path, "--frames", "6",
                          "--no-calibration", "-o", str(small / "exam")],
                         capture_output=True, text=True, cwd=boards["tmp"], timeout=120)
    assert res.returncode != 99, res.stderr  # (the tmpfs was mounted)
    one_line_error(res, f"cannot write the exam to {small / 'exam'}", "rf.dcm", "no space left on the device")
    files = (seen / "listing.txt").read_text().split()
    assert files == ["./exam/frames.tif", "./exam/last.png", "./exam/summary.json"], files
    summary = json.loads((seen / "summary.json").read_text())
    assert summary["files"] == {"frames": "frames.tif", "frames16": None, "last_image": "last.png", "dicom_rf": None,
                                "dose_sr": None, "summary": "summary.json"}
    assert "cannot write rf.dcm" in summary["error"] and summary["saving"] is False
    for f in list(tmp_path.glob("pulseline-rescue-*.npy")) + list(boards["tmp"].glob("pulseline-rescue-*.npy")):
        f.unlink()  # (the frames kept where there was room: the other test checks those)


def test_output_not_writable(boards, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    res = in_private_mount("ro", ro, "capture", "--port", boards["good"].pty_path, "-o", str(ro / "exam"),
                           cwd=boards["tmp"])
    one_line_error(res, f"cannot write to {ro / 'exam'}", "Read-only file system")


def test_output_not_a_directory(boards, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = cli("capture", "--port", boards["good"].pty_path, "-o", str(f / "exam"), cwd=boards["tmp"])
    one_line_error(res, "cannot write to")


def test_link_lost_mid_capture_keeps_the_frames(tmp_path):
    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / ".pulseline", faults="disconnect=8") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        res = cli("capture", "--port", b.pty_path, "--frames", "500", "-o", str(tmp_path / "exam"), cwd=tmp_path)
    one_line_error(res, "the link is down", "frames received are saved")

    summary = json.loads((tmp_path / "exam" / "summary.json").read_text())
    assert summary["frames"] > 0 and summary["error"]


def test_a_board_at_the_repl_is_not_taken_for_a_dead_link(boards):
    with pytest.raises(SessionError, match="the board is at the MicroPython REPL") as err:
        Session(boards["bare"].pty_path, answer_timeout_s=0.5)
    assert isinstance(err.value, BoardAtRepl)


@pytest.mark.parametrize("mode", [b"\x05", b"\x01", b"if 1:\r"], ids=["paste", "raw", "continuation"])
def test_a_board_at_the_repl_is_known_in_every_mode_our_packets_can_put_it_in(boards, mode):
    # A host packet typed at a REPL is text with control characters in it:
    # Ctrl-E (paste mode) and Ctrl-A (the raw REPL) among them.
    import serial

    with serial.Serial(boards["bare"].pty_path, timeout=0.2) as port:
        port.write(b"\x03\x02" + mode)
        port.read(4096)
    try:
        with pytest.raises(BoardAtRepl, match="the board is at the MicroPython REPL"):
            Session(boards["bare"].pty_path, answer_timeout_s=0.5)
        # Out of the raw REPL, where it was found (which Ctrl-C cannot
        # leave, and where a soft reset would not start the firmware): a
        # Ctrl-C ends the rest, as mpremote sends it, and the REPL runs code.
        with serial.Serial(boards["bare"].pty_path, timeout=0.2) as port:
            port.read(4096)
            port.write(b"\x03" + b"6*7\r")
            seen = bytearray()
            deadline = time.monotonic() + 10
            while b"42" not in seen and time.monotonic() < deadline:
                seen += port.read(4096)
            assert b"\r\n42\r\n" in seen, bytes(seen)
    finally:
        with serial.Serial(boards["bare"].pty_path, timeout=0.2) as port:
            port.write(b"\x03\x02")  # back to the friendly prompt
            port.read(4096)


def test_asking_a_board_at_the_repl_never_changes_it():
    """A hello typed at a REPL: whatever its drawn session id and sequence
    number, it never holds the bytes that would run what it typed, soft
    reset the board or start paste mode (REPL_ACTS_ON)."""
    from pulseline.link import session as session_module
    from pulseline.link.protocol import wire
    from pulseline.link.session import OPCODES, REPL_ACTS_ON

    class Wire:
        def __init__(self) -> None:
            self.sent = bytearray()

        def write(self, data: bytes) -> None:
            self.sent += data

    for _ in range(300):
        s = Session.__new__(Session)
        s.__dict__.update(_write_lock=threading.Lock(), _cond=threading.Condition(), _pending=set(), _ignore=set(),
                          _responses={}, recorder=None, serial=Wire(), clock=session_module.WALL,
                          _seq=secrets.randbelow(0x10000))
        s._send("hello", {"protocol": 1, "session": secrets.token_hex(8)}, repl_safe=True)
        assert not REPL_ACTS_ON & set(s.serial.sent), bytes(s.serial.sent)
        # (Not even CR or LF: a line run at the REPL, then 0x01 at the empty
        # one, is the raw REPL, whose soft reset does not start the firmware.)
        assert not set(b"\r\n") & set(s.serial.sent), bytes(s.serial.sent)
    # Arguments that hold such a byte themselves: no sequence number helps;
    # after one pass over them the packet goes as it is.
    s.serial = Wire()
    s._send_raw(OPCODES["hello"], b'{"x": "\x04"}', repl_safe=True)
    assert s.serial.sent.count(wire.SYNC) == 1 and b"\x04" in s.serial.sent


def test_ctrl_c_mid_capture_ends_the_exposure_and_keeps_the_frames(tmp_path):
    import signal

    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / ".pulseline") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        proc = subprocess.Popen([sys.executable, "-m", "pulseline.cli", "capture", "--port", b.pty_path, "--frames",
                                 "1000", "-o", str(tmp_path / "exam")], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while len(b.plant.pulses) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert not b.plant.inputs_at(b.server.now_us()).switch  # the pedal was let go
        wait_for_firmware(b.pty_path, timeout_s=60)
        emitted = len(b.plant.pulses)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    one_line_error(res, "interrupted (Ctrl-C)", "frames received are saved")
    summary = json.loads((tmp_path / "exam" / "summary.json").read_text())
    assert 5 <= summary["frames"] <= emitted


def test_a_press_that_cannot_expose_says_why(tmp_path):
    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / ".pulseline") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        b.set_input("door_closed", False)
        res = cli("capture", "--port", b.pty_path, "--frames", "4", "-o", str(tmp_path / "exam"), cwd=tmp_path)
        assert b.plant.pulses == []
    one_line_error(res, "the board does not expose: door open")


def test_exam_shows_the_journal_and_starts_a_new_one(tmp_path):

    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / ".pulseline") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        for k in range(2):
            assert cli("capture", "--port", b.pty_path, "--frames", "3", "-o", str(tmp_path / f"e{k}"),
                       cwd=tmp_path).returncode == 0
        report = json.loads(cli("exam", "--port", b.pty_path, "--json", cwd=tmp_path).stdout)
        assert report["events_total"] == 2 and report["pulses"] == sum(e["pulses"] for e in report["events"])
        assert report["kerma_mgy"] * 1000 == pytest.approx(sum(e["kerma_ugy"] for e in report["events"]), rel=1e-6)
        text = cli("exam", "--port", b.pty_path, cwd=tmp_path).stdout
        assert "2 irradiation events" in text and "event   2:" in text
        fresh = json.loads(cli("exam", "--port", b.pty_path, "--new", "--json", cwd=tmp_path).stdout)
        assert fresh["exam"] == report["exam"] + 1 and fresh["pulses"] == 0 and fresh["events"] == []
        # The past exam, rebuilt from the journal, is the report the board gave while it was current.
        past = json.loads(cli("exam", "--port", b.pty_path, "--exam", str(report["exam"]), "--json",
                              cwd=tmp_path).stdout)
        report.pop("board_us")  # (when the board gave it: not part of the exam)
        assert past == report
        one_line_error(cli("exam", "--port", b.pty_path, "--exam", "9", cwd=tmp_path), "no exam 9")


def test_unknown_preset_and_bad_presets_file(boards, tmp_path):
    port = boards["good"].pty_path
    one_line_error(cli("capture", "--port", port, "--preset", "cardiak", "-o", str(tmp_path / "x"), cwd=tmp_path),
                   "unknown preset 'cardiak'", "known presets:", "cardiac")
    bad = tmp_path / "presets.json"
    bad.write_text('{"mine": {"pulses_per_s": 7.5, "pulse_width_ms": 8, "colour": "blue"}}')
    one_line_error(cli("capture", "--port", port, "--presets", str(bad), "--preset", "mine", "-o",
                       str(tmp_path / "y"), cwd=tmp_path), "unknown setting 'colour'")
    bad.write_text("{not json")
    one_line_error(cli("presets", "--presets", str(bad), cwd=tmp_path), "not valid JSON")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before anything


def test_no_pacs_answering_and_a_full_disk_keep_what_was_captured(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    deploy(tmp_path / "fs")
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / ".pulseline") as b:
        wait_for_firmware(b.pty_path, timeout_s=60)
        res = cli("capture", "--port", b.pty_path, "--frames", "2", "-o", str(tmp_path / "exam"),
                  "--send", f"127.0.0.1:{port}", cwd=tmp_path)
        one_line_error(res, "PACS:", "no PACS answers", "the exam is saved in")
        summary = json.loads((tmp_path / "exam" / "summary.json").read_text())
        assert summary["frames"] >= 2 and summary["pacs"]["stored"] == 0
        assert (tmp_path / "exam" / "rf.dcm").exists() and (tmp_path / "exam" / "dose_sr.dcm").exists()
        one_line_error(cli("capture", "--port", b.pty_path, "-o", str(tmp_path / "e2"), "--send", "pacs",
                           cwd=tmp_path), "bad PACS destination")

        # Disk full: the exam goes to a 64 kB filesystem (a tmpfs in a
        # private mount namespace): the summary fits, the frames do not. One
        # error line, and the frames are kept in the working directory.
        import numpy as np

        small = tmp_path / "small"
        small.mkdir()
        res = in_private_mount("size=64k", small, "capture", "--port", b.pty_path, "--frames", "6", "-o",
                               str(small / "exam"), cwd=tmp_path)
    one_line_error(res, f"cannot write the exam to {small / 'exam'}", "no space left on the device", "frames are in")
    rescued = list(tmp_path.glob("pulseline-rescue-*.npy"))
    assert len(rescued) == 1
    frames = np.load(rescued[0])
    assert frames.shape[0] >= 6 and frames.shape[1:] == (256, 256) and frames.any()
