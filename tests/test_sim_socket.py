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


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="the kernel keeps no run-queue delays")
def test_time_the_interpreter_waits_for_a_host_cpu_is_credited_to_its_watchdog():
    """A board's CPU is its own: run-queue delay on a shared host is not a
    stalled control loop. Pinned to one CPU beside a busy process, this
    process waits for the CPU; the watchdog gets exactly that wait back."""
    plant = Plant(PlantConfig(seed=1), Timeline())
    server = PlantServer(plant)
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        os.sched_setaffinity(0, {cpu})
        with server.lock:
            plant.watchdog_start(0, 100_000)
            server.board_pid = os.getpid()
            server.credit_host_starvation()  # the baseline
        with open(f"/proc/{os.getpid()}/schedstat") as fh:
            before_ns = int(fh.read().split()[1])
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # compete for the CPU
            sum(range(1000))
        with open(f"/proc/{os.getpid()}/schedstat") as fh:
            waited_us = (int(fh.read().split()[1]) - before_ns) // 1000
        fed_before = plant._wd.fed_us
        with server.lock:
            server.credit_host_starvation()
        credited = plant._wd.fed_us - fed_before
    finally:
        os.sched_setaffinity(0, saved)
        hog.kill()
        hog.wait()
        server.close()
    assert waited_us > 50_000  # the hog really took the CPU
    assert waited_us <= credited <= waited_us + 20_000


def test_time_a_request_waits_for_the_plant_server_is_credited_and_not_judged_meanwhile():
    """The plant server's thread can be slow to pick a request up (the GIL,
    a busy host): the board is inside a hardware call all that while, so
    its watchdog is not judged then, and a feed that waited is not late."""
    import select
    import socket
    import struct

    hal_sim = import_firmware("pulsefw.boards.sim.hal")

    class SlowServer(PlantServer):
        delay_s = 0.0

        def _recv_op(self, conn: Any) -> tuple[int, int]:
            select.select([conn], [], [])
            if self.delay_s and conn.recv(1, socket.MSG_PEEK) == bytes([hal_sim.OP_WDT_FEED]):
                time.sleep(self.delay_s)  # the feed is there; this thread gets to it late
                self.delay_s = 0.0
            return super()._recv_op(conn)

    plant = Plant(PlantConfig(seed=1), Timeline())
    server = SlowServer(plant)
    time.sleep(0.1)  # as a board takes to boot: the kernel's timestamping is on by then
    host, port = server.address.split(":")
    board = socket.create_connection((host, int(port)))
    try:
        server.delay_s = 0.3
        board.sendall(bytes([hal_sim.OP_WDT_START]) + struct.pack("<I", 100))  # a 100 ms watchdog
        assert board.recv(1) == b"\x01"
        board.sendall(bytes([hal_sim.OP_WDT_FEED]))
        time.sleep(0.15)
        assert server.board_waiting()  # the supervisor leaves the watchdog alone now
        assert board.recv(1) == b"\x01"
        with server.lock:
            assert not plant.watchdog_expired(server.now_us()), "a feed that waited for the server counted late"
        # The same 0.3 s spent by the board itself, not waiting on the plant: expired.
        time.sleep(0.3)
        assert not server.board_waiting()
        board.sendall(bytes([hal_sim.OP_WDT_FEED]))
        assert board.recv(1) == b"\x01"
        with server.lock:
            assert plant.watchdog_expired(server.now_us())
    finally:
        board.close()
        server.close()


def test_a_write_of_the_boards_filesystem_is_the_hosts_time_not_the_boards():
    """The simulated board's filesystem is the host's disk, whose writeback
    can hold a 450-byte write for 170 ms (measured under load): the board
    says when a write begins and ends, its watchdog is not judged meanwhile
    and the time is credited. A write that never ends is judged again."""
    import socket
    import struct

    from pulseline.sim import plantserver

    hal_sim = import_firmware("pulsefw.boards.sim.hal")
    plant = Plant(PlantConfig(seed=1), Timeline())
    server = PlantServer(plant)
    time.sleep(0.1)  # as a board takes to boot: the kernel's timestamping is on by then
    host, port = server.address.split(":")
    board = socket.create_connection((host, int(port)))

    def ask(op: int, args: bytes = b"") -> None:
        board.sendall(bytes([op]) + args)
        assert board.recv(1) == b"\x01"

    try:
        ask(hal_sim.OP_WDT_START, struct.pack("<I", 100))  # a 100 ms watchdog
        ask(hal_sim.OP_STORAGE, b"\x01")
        time.sleep(0.3)  # the host's disk holds the write
        assert server.board_waiting()  # the supervisor leaves the watchdog alone now
        ask(hal_sim.OP_STORAGE, b"\x00")
        end = time.monotonic() + 5  # (the server marks the request done just after answering it)
        while server.board_waiting():
            assert time.monotonic() < end, "the write is over, the board still taken as waiting"
            time.sleep(0.005)
        with server.lock:
            assert not plant.watchdog_expired(server.now_us()), "the host's disk time ran down the watchdog"
        ask(hal_sim.OP_WDT_FEED)
        # The same 0.3 s spent by the board itself: expired.
        time.sleep(0.3)
        with server.lock:
            assert plant.watchdog_expired(server.now_us())
        # A write that never ends is the board's hang: judged after the grace.
        plantserver_grace = plantserver.STORAGE_GRACE_US
        plantserver.STORAGE_GRACE_US = 200_000
        try:
            with server.lock:
                plant.watchdog_start(server.now_us(), 100_000)
            ask(hal_sim.OP_STORAGE, b"\x01")
            time.sleep(0.3)
            assert not server.board_waiting()
        finally:
            plantserver.STORAGE_GRACE_US = plantserver_grace
    finally:
        board.close()
        server.close()
