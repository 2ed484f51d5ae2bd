"""The simulated board's socket path on the real MicroPython interpreter.

The unmodified firmware (firmware/main.py: `hal_sim.connect(...)`, then
`app.App(hal).run()`) runs on the MicroPython unix port, talks to the plant
server over a local TCP socket, and to the host over its stdin/stdout, as a
Pico does over USB. The host side here is a minimal stand-in session:
hello, a bad and a good configuration request, arm, a heartbeat every 50 ms,
one press of the switch, a dose report. The plant's own record is the judge.

Timing is deliberately not under test (the machine may be slow and shared):
the press is scheduled only once the board has answered `arm`, and every
wait is generous.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pulseline.link.assembler import FrameAssembler
from pulseline.link.frames import Frame
from pulseline.mpcompat import import_firmware
from pulseline.plant import Plant, PlantConfig, Timeline
from pulseline.sim.fast import HostLog, Response
from pulseline.sim.plantserver import PlantServer

wire = import_firmware("pulsefw.wire")
codes = import_firmware("pulsefw.codes")

pytestmark = pytest.mark.micropython

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
BIN = Path(sys.executable).parent

SEED = 11
PRESS_AT_US = 1_500_000  # plant time (the server's clock since it started), at the earliest
PRESS_US = 1_500_000
PING_S = 0.05  # the board blocks exposure after 200 ms of host silence
BOOT_TIMEOUT_S = 20.0  # first answer from a cold interpreter on a busy machine
ANSWER_TIMEOUT_S = 5.0


def _micropython() -> str:
    path = BIN / "micropython"
    if path.exists():
        return str(path)
    found = shutil.which("micropython")
    if not found:
        pytest.skip("micropython is not installed (make installs it into .venv)")
    return found


@dataclass
class BoardRun:
    """Everything one session produced, for the tests to judge."""

    plant: Plant
    stdout: bytes
    stderr: bytes
    alive_at_kill: bool
    server_errors: list[str]
    server_connections: int
    responses: dict[int, Response]
    events: list[tuple[int, str, dict[str, Any]]]  # (board time us, name, body)
    seqs: dict[str, int] = field(default_factory=dict)  # command label -> seq
    press: tuple[int, int] = (0, 0)  # (start, end) plant time

    def answer(self, label: str) -> Response:
        return self.responses[self.seqs[label]]

    def event_bodies(self, name: str) -> list[dict[str, Any]]:
        return [b for _, n, b in self.events if n == name]


class StreamParser(HostLog):
    """Responses and events out of the board's byte stream, incrementally
    (the fast simulator's host log; lines and trailers are left to the
    assembler)."""

    pos = 0

    def parse(self, data: bytes | bytearray) -> None:
        self.pos = self.feed(data, self.pos)


class Board:
    """The firmware on MicroPython, its plant server, and the host's end of
    its link (a reader thread per output pipe, a heartbeat thread)."""

    def __init__(self, board_dir: Path, plant: Plant) -> None:
        self.plant = plant
        self.server = PlantServer(plant)
        shutil.copytree(FIRMWARE, board_dir)
        env = {
            "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
            "MICROPYPATH": str(board_dir),
            "PULSELINE_PLANT": self.server.address,
            "PULSELINE_BOARD_FS": str(board_dir),
        }
        self.proc = subprocess.Popen([_micropython(), "-X", "heapsize=8M", "main.py"], cwd=board_dir, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = bytearray()
        self.out_lock = threading.Lock()
        self.in_lock = threading.Lock()
        self.seq = 0
        self.parser = StreamParser()
        self.stop = threading.Event()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self.threads:
            t.start()
        self.heartbeat = threading.Thread(target=self._ping, daemon=True)

    def _collect(self, pipe: Any, buf: bytearray) -> None:
        while True:
            chunk = pipe.read1(1 << 16)
            if not chunk:
                return
            with self.out_lock:
                buf += chunk

    def _ping(self) -> None:
        while not self.stop.wait(PING_S):
            try:
                self.send("ping")
            except OSError:
                return  # the board is gone; the test that cares will see it

    def send(self, name: str, args: dict[str, Any] | None = None) -> int:
        op = {v: k for k, v in codes.OP_NAMES.items()}[name]
        payload = wire.command_payload(op, json.dumps(args or {}).encode())
        assert self.proc.stdin is not None
        with self.in_lock:
            seq = self.seq
            self.seq = (seq + 1) & 0xFFFF
            self.proc.stdin.write(wire.stuff(wire.encode(wire.PKT_COMMAND, seq, payload)))
            self.proc.stdin.flush()
        return seq

    def poll_output(self) -> None:
        with self.out_lock:
            self.parser.parse(self.out)

    def wait_answer(self, seq: int, timeout_s: float = ANSWER_TIMEOUT_S) -> Response:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.poll_output()
            if seq in self.parser.responses:
                return self.parser.responses[seq]
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError(f"no answer to command {seq} (board exit code {self.proc.poll()}); "
                             f"stderr: {bytes(self.err).decode(errors='replace')}")

    def command(self, name: str, args: dict[str, Any] | None = None, timeout_s: float = ANSWER_TIMEOUT_S) -> int:
        seq = self.send(name, args)
        self.wait_answer(seq, timeout_s)
        return seq

    def close(self) -> bool:
        """Stop everything; True if the firmware was still running."""
        self.stop.set()
        alive = self.proc.poll() is None
        self.proc.kill()
        self.proc.wait(timeout=10)
        for t in self.threads:
            t.join(timeout=5)
        if self.heartbeat.is_alive():
            self.heartbeat.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin of a killed process: a broken pipe on flush
                    pipe.close()
        self.server.close()
        return alive


def run_board(board_dir: Path) -> BoardRun:
    """One session: boot, commands, one press, a dose report, kill."""
    plant = Plant(PlantConfig(seed=SEED), Timeline())
    board = Board(board_dir, plant)
    seqs: dict[str, int] = {}
    try:
        seqs["hello"] = board.command("hello", {"protocol": 1}, timeout_s=BOOT_TIMEOUT_S)
        board.heartbeat.start()
        seqs["bad_set_config"] = board.command("set_config", {"kv": 500})
        seqs["get_config"] = board.command("get_config")
        seqs["arm"] = board.command("arm")
        # The switch goes down only now that the board is armed (it needs to
        # see the switch released first), however slowly it came up.
        with board.server.lock:
            start = max(PRESS_AT_US, board.server.now_us() + 300_000)
            plant.timeline.press(start, PRESS_US)
        end = start + PRESS_US
        # After the release: the last frame, the journal commit, the HOLD state.
        deadline = time.monotonic() + (end - board.server.now_us()) / 1e6 + 10.0
        while time.monotonic() < deadline:
            board.poll_output()
            if board.server.now_us() > end + 500_000 and any(
                    n == "irradiation" for _, n, _ in board.parser.events):
                break
            if board.proc.poll() is not None:
                break
            time.sleep(0.02)
        seqs["dose_report"] = board.command("dose_report")
    finally:
        alive = board.close()
    board.poll_output()
    with board.server.lock:
        server_errors = list(board.server.errors)
    return BoardRun(plant=plant, stdout=bytes(board.out), stderr=bytes(board.err), alive_at_kill=alive,
                    server_errors=server_errors, server_connections=board.server.connections,
                    responses=dict(board.parser.responses), events=list(board.parser.events), seqs=seqs,
                    press=(start, end))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> BoardRun:
    return run_board(tmp_path_factory.mktemp("sim_socket") / "board")


@pytest.fixture(scope="module")
def frames(run: BoardRun) -> tuple[list[Frame], dict[str, int]]:
    asm = FrameAssembler(256, 256, "mono12p")
    out = [o for o in asm.feed(run.stdout) + asm.flush() if isinstance(o, Frame)]
    return out, asm.counters


def test_frames_arrive_and_carry_the_detector_bytes_unchanged(run, frames):
    got, counters = frames
    pulses = run.plant.pulses
    assert len(pulses) >= 5, f"only {len(pulses)} pulses in a {PRESS_US / 1e6} s press at 7.5 pps"
    assert not run.plant.refused
    assert len(got) == len(pulses)
    for k in ("lines_lost", "crc_errors", "header_errors", "bytes_skipped", "malformed", "geometry_mismatch",
              "lines_duplicate", "lines_late", "trailers_late", "frames_incomplete", "frames_overflowed"):
        assert counters[k] == 0, (k, counters)
    assert counters["frames_complete"] == len(pulses)
    ids = [f.trailer.frame_id for f in got if f.trailer is not None]
    pulse_ids = [f.trailer.pulse_id for f in got if f.trailer is not None]
    assert len(ids) == len(got)
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert pulse_ids == list(range(pulse_ids[0], pulse_ids[0] + len(pulse_ids)))
    for frame, pulse in zip(got, pulses, strict=True):
        assert frame.complete and frame.lines_received == 256
        assert frame.trailer is not None and frame.trailer.lines_sent == 256
        assert frame.frame_id == frame.trailer.frame_id
        truth = pulse.frame
        assert truth is not None and not truth.lost_lines.any()
        assert frame.pixels.dtype == np.uint16
        np.testing.assert_array_equal(frame.pixels, truth.raw_adu)
        # Board time is plant time (offset once at connection): the pulse's
        # timestamps agree, give or take a scheduling delay on a busy machine.
        assert abs(frame.trailer.timestamp_us - pulse.t_us) < 250_000


def test_dose_agrees_with_the_reference_meter(run, frames):
    report = run.answer("dose_report")
    assert report.status == codes.ERR_OK, report.body
    pulses = run.plant.pulses
    assert report.body["pulses"] == len(pulses)
    assert report.body["kerma_mgy"] == pytest.approx(run.plant.meter_kerma_ugy / 1000, rel=0.01)
    assert report.body["kap_gy_cm2"] == pytest.approx(run.plant.meter_kap_ugy_m2 * 0.01, rel=0.01)
    assert report.body["events_total"] == 1
    (event,) = report.body["events"]
    assert event["pulses"] == len(pulses)
    for frame, pulse in zip(frames[0], pulses, strict=True):
        assert frame.trailer is not None
        assert frame.trailer.air_kerma_ugy == pytest.approx(pulse.kerma_ref_ugy, rel=0.01)
        assert frame.trailer.kap_ugy_m2 == pytest.approx(pulse.kap_ugy_m2, rel=0.01)


def test_events_and_command_errors(run):
    assert run.events, "no event from the board"
    assert run.events[0][1] == "boot"
    boot = run.events[0][2]
    assert boot["board"] == "sim" and boot["reset_cause"] == "power" and boot["protocol"] == wire.PROTOCOL_VERSION
    states = [(t, b["state"]) for t, n, b in run.events if n == "state"]
    assert [s for _, s in states] == ["IDLE", "READY", "EXPOSING", "HOLD"]
    t_exposing, t_hold = states[2][0], states[3][0]
    assert any(t_exposing <= t <= t_hold for t, n, _ in run.events if n == "dose")
    assert not run.event_bodies("fault")
    (irradiation,) = run.event_bodies("irradiation")
    assert irradiation["pulses"] == len(run.plant.pulses)

    hello = run.answer("hello")
    assert hello.status == codes.ERR_OK, hello.body
    bad = run.answer("bad_set_config")
    assert bad.status == codes.ERR_OUT_OF_RANGE, bad
    after = run.answer("get_config")
    assert after.status == codes.ERR_OK
    assert after.body == hello.body["config"]
    assert run.answer("arm").body == {"state": "READY"}
    # Every other answer (the heartbeats' among them) is a success.
    assert all(r.status == codes.ERR_OK for r in run.responses.values() if r.seq != bad.seq)


def test_board_runs_cleanly(run):
    assert run.stderr == b"", run.stderr.decode(errors="replace")
    assert run.alive_at_kill, "the firmware left its main loop"
    assert run.server_errors == []
    assert run.server_connections == 1


def _plant_board(server: PlantServer) -> Any:
    """A raw plant-socket client: ask(op, board_us, args) -> answer bytes."""
    import socket
    import struct

    hal_sim = import_firmware("pulsefw.boards.sim.hal")
    host, port = server.address.split(":")
    conn = socket.create_connection((host, int(port)))

    def ask(op: int, board_us: int, args: bytes = b"", answer: int = 1) -> bytes:
        conn.sendall(bytes([op]) + struct.pack("<Q", board_us) + args)
        got = b""
        while len(got) < answer:
            got += conn.recv(answer - len(got))
        return got

    return conn, ask, hal_sim


def test_the_plant_acts_at_the_boards_time_and_judges_its_watchdog_on_it():
    """Each request carries the board's own clock, and the plant's time is
    the board's while its firmware runs: 0.3 s of wall time in which the
    board counted 50 ms (a starved host) is 50 ms to the plant and to the
    watchdog; 150 ms of the board's own without a feed is a stall."""
    import struct

    plant = Plant(PlantConfig(seed=1), Timeline())
    server = PlantServer(plant)
    conn, ask, hal = _plant_board(server)
    try:
        (t0,) = struct.unpack("<Q", ask(hal.OP_HELLO, 0, answer=8))
        assert server.board_clocked() and server.now_us() == t0
        ask(hal.OP_WDT_START, t0, struct.pack("<I", 100))  # a 100 ms watchdog
        time.sleep(0.3)
        assert server.now_us() == t0  # the board has said nothing since: its time stands
        ask(hal.OP_WDT_FEED, t0 + 50_000)
        assert server.now_us() == t0 + 50_000
        with server.lock:
            assert not plant.watchdog_expired(server.now_us())
        ask(hal.OP_INPUTS, t0 + 40_000, answer=5)  # (an earlier time never moves the plant back)
        assert server.now_us() == t0 + 50_000
        ask(hal.OP_INPUTS, t0 + 200_000, answer=5)
        with server.lock:
            assert plant.watchdog_expired(server.now_us())
    finally:
        conn.close()
        server.close()


def test_plant_time_runs_on_the_wall_clock_while_no_firmware_keeps_it():
    """Before a firmware's hello, after it stops its watchdog for the REPL,
    and once its interpreter is gone, plant time runs on the wall clock
    from where the board left it, and never goes back."""
    import struct

    plant = Plant(PlantConfig(seed=1), Timeline())
    server = PlantServer(plant, start_us=1_000)
    a = server.now_us()
    time.sleep(0.05)
    assert server.now_us() - a >= 50_000 and not server.board_clocked()
    conn, ask, hal = _plant_board(server)
    try:
        (t0,) = struct.unpack("<Q", ask(hal.OP_HELLO, 0, answer=8))
        ask(hal.OP_WDT_START, t0 + 10, struct.pack("<I", 100))
        ask(hal.OP_WDT_STOP, t0 + 20_000)  # the firmware leaves for the REPL
        assert not server.board_clocked()
        b = server.now_us()
        assert b >= t0 + 20_000
        time.sleep(0.05)
        assert server.now_us() - b >= 50_000
    finally:
        conn.close()
    (t1,) = struct.unpack("<Q", _plant_board(server)[1](hal.OP_HELLO, 0, answer=8))
    assert t1 >= b + 50_000  # a new firmware's clock starts where the plant is
    server.close()


def test_a_programs_own_plant_connection_feeds_the_watchdog_but_never_keeps_board_time():
    """machine.WDT in a program opens its own connection beside the
    firmware's: its requests act at plant time, never move the board's
    clock, and its leaving does not end the firmware's."""
    import struct

    plant = Plant(PlantConfig(seed=1), Timeline())
    server = PlantServer(plant)
    conn, ask, hal = _plant_board(server)
    other, ask_other, _ = _plant_board(server)
    try:
        (t0,) = struct.unpack("<Q", ask(hal.OP_HELLO, 0, answer=8))
        ask(hal.OP_WDT_START, t0 + 1_000, struct.pack("<I", 100))
        ask_other(hal.OP_WDT_FEED, t0 + 10_000_000)  # (a time it has no say in)
        assert server.board_clocked() and server.now_us() == t0 + 1_000
        other.close()
        deadline = time.monotonic() + 10
        while server.open_connections > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.open_connections == 1 and server.board_clocked()  # the firmware's still keeps plant time
        ask(hal.OP_WDT_FEED, t0 + 50_000)
        with server.lock:
            assert server.now_us() == t0 + 50_000 and not plant.watchdog_expired(t0 + 140_000)
    finally:
        conn.close()
        server.close()


def test_a_scripted_stall_hangs_the_control_loop_in_its_next_input_read():
    import struct

    plant = Plant(PlantConfig(seed=1), Timeline())
    server = PlantServer(plant)
    conn, ask, hal = _plant_board(server)
    try:
        (t0,) = struct.unpack("<Q", ask(hal.OP_HELLO, 0, answer=8))
        plant.timeline.add(t0 + 1_000, "stall", 250_000)
        assert struct.unpack("<BI", ask(hal.OP_INPUTS, t0 + 500, answer=5))[1] == 0
        assert struct.unpack("<BI", ask(hal.OP_INPUTS, t0 + 1_500, answer=5))[1] == 250_000
        assert struct.unpack("<BI", ask(hal.OP_INPUTS, t0 + 2_500, answer=5))[1] == 0  # once
        assert server.stalls == [t0 + 1_500]
    finally:
        conn.close()
        server.close()


_CLOCK_SCRIPT = """
import sys, time
sys.path.insert(0, %r)
from pulsefw.boards.sim.hal import BoardClock
c = BoardClock(time)
stat = open("/proc/self/schedstat")
def sched_us(field):
    stat.seek(0)
    return int(stat.read().split()[field]) // 1000
def cpu_us():
    # (exact once the process has been switched out: the sleep before it)
    time.sleep_ms(1)
    return sched_us(0)
def measure(fn):
    c0 = cpu_us()
    q0, b0, w0 = sched_us(1), c.now(), time.ticks_us()
    fn()
    b1, w1, q1 = c.now(), time.ticks_us(), sched_us(1)
    return b1 - b0, time.ticks_diff(w1, w0), cpu_us() - c0, q1 - q0
def spin():
    end = time.ticks_add(time.ticks_us(), 600000)
    while time.ticks_diff(end, time.ticks_us()) > 0:
        c.now()
def held():
    c.hold(); time.sleep_ms(200); c.release()
def asked():
    since = c.now(); time.sleep_ms(100); c.waited(since, 20000)
print("spin", *measure(spin))
print("held", *measure(held))
print("asked", *measure(asked))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="the kernel keeps no run-queue delays")
def test_the_boards_clock_counts_what_it_ran_and_asked_to_wait_not_what_the_host_took():
    """BoardClock on MicroPython, pinned to one CPU beside a busy process
    pinned there too (and whatever else the machine runs): a 0.6 s spin of
    wall time is its wall time less its run-queue delay (the host's), and at
    least the CPU time the kernel says it ran; a host call (a 200 ms hold) is none of
    its time; a wait it asked 20 ms of, that the host made last 100 ms, is
    20 ms (and the slack) of it. Each figure is the kernel's, so a busier
    machine changes the shares, never the verdict."""
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.2)  # (the hog is up)
        res = subprocess.run(["taskset", "-c", str(cpu), _micropython(), "-c", _CLOCK_SCRIPT % str(FIRMWARE)],
                             capture_output=True, text=True, timeout=120)
    finally:
        hog.kill()
        hog.wait()
    assert res.returncode == 0, res.stderr + res.stdout
    got = {line.split()[0]: tuple(int(v) for v in line.split()[1:]) for line in res.stdout.splitlines()}
    board, wall, ran, queued = got["spin"]
    # Its wall time less its run-queue delay, to the clock's 200 us re-read;
    # at least the CPU the kernel says it ran (which moves in scheduler
    # ticks, and leaves out a hypervisor's steal, which the board counts
    # unless a single steal is a stop: BoardClock.GAP_US).
    assert board <= wall - queued + 2_000, got
    assert board >= ran - 12_000, got
    assert queued >= 100_000, got  # the hog had its share, and the board does not count it
    board, wall, _, _ = got["held"]
    assert wall >= 190_000 and board < 5_000, got
    board, wall, _, _ = got["asked"]
    assert wall >= 90_000 and 20_000 <= board <= 20_000 + BOARD_WAIT_SLACK_US + 5_000, got


_STOPPED_SCRIPT = """
import sys, time
sys.path.insert(0, %r)
from pulsefw.boards.sim.hal import BoardClock
c = BoardClock(time)
stat = open("/proc/self/schedstat")
def queued_us():
    stat.seek(0)
    return int(stat.read().split()[1]) // 1000
q0, b0, w0 = queued_us(), c.now(), time.ticks_us()
print("ready")
end = time.ticks_add(w0, 1200000)
while time.ticks_diff(end, time.ticks_us()) > 0:
    c.now()
b1, w1 = c.now(), time.ticks_us()
print(b1 - b0, time.ticks_diff(w1, w0), queued_us() - q0)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="the kernel keeps no run-queue delays")
def test_a_board_the_host_stops_while_it_runs_loses_the_stop_from_its_clock():
    """Stopped in the middle of a spin (SIGSTOP: neither running nor
    queued, as a page fault from a slow disk), the board's clock does not
    count the 0.5 s it was stopped; it counts the rest of its spin."""
    p = subprocess.Popen([_micropython(), "-c", _STOPPED_SCRIPT % str(FIRMWARE)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        p.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        p.send_signal(signal.SIGCONT)
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    board, wall, queued = (int(v) for v in out.split())
    assert wall >= 1_200_000
    # Less the stop (and what it queued), to a scheduler tick's slack.
    assert wall - queued - 700_000 <= board <= wall - 500_000 + 20_000, (board, wall, queued)


BOARD_WAIT_SLACK_US = 1_000
