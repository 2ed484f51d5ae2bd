"""`pulseline monitor`, the library side: a simulated board's state changes,
dose displays, irradiation events and refusals as human lines and as JSON
lines, while the board is driven through the same session; and a lost link."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pulseline.link.session import Event, Session, wait_for_firmware
from pulseline.plant import Plant, PlantConfig, Timeline
from pulseline.sim.board import SimBoard
from pulseline.targets.flash import copy_source
from pulseline.ui.monitor import MonitorError, format_event, format_log, monitor

pytestmark = pytest.mark.micropython

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
EVENT_LINE = re.compile(r"^ *\d+\.\d{3} s  (\S+) +(.*)$")


def deploy(fs: Path) -> None:
    copy_source(fs)


def wait_for(pred, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


class Runner:
    """monitor() in a thread, its lines collected."""

    def __init__(self, session: Session, stop: threading.Event, **kwargs: Any) -> None:
        self.lines: list[str] = []
        self.result: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(session, stop, kwargs), daemon=True)
        self.thread.start()

    def _run(self, session: Session, stop: threading.Event, kwargs: dict[str, Any]) -> None:
        try:
            self.result = monitor(session, write=self.lines.append, stop=stop, **kwargs)
        except BaseException as exc:  # handed to the test
            self.error = exc

    def join(self) -> None:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def parsed(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        m = EVENT_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def warm_plant() -> Plant:
    """A plant whose first pulse costs no more than the next ones. The
    first pulse in a process imports part of numpy lazily and draws the
    detector maps, in the plant server, while the firmware waits for it: on
    a loaded machine that has stalled the board past its 100 ms watchdog
    (and the simulated board then kept resetting)."""
    scratch = Plant(PlantConfig(seed=0), Timeline())
    scratch.timeline.add(0, "switch", True)
    scratch.watchdog_start(0, 10**9)
    scratch.generator_set(0, 80.0, 20.0)
    scratch.detector_arm(0, 256, 256, 2)
    scratch.generator_fire(100_000, 10_000)
    plant = Plant(PlantConfig(seed=0), Timeline())
    plant.detector.maps(256, 256)
    return plant


def start_board(tmp_path: Path) -> SimBoard:
    deploy(tmp_path / "fs")
    b = SimBoard(tmp_path / "fs", state_dir=tmp_path / "state", plant=warm_plant()).start()
    try:
        wait_for_firmware(b.pty_path, timeout_s=60)
    except BaseException:
        b.stop()
        raise
    return b


@pytest.fixture
def board(tmp_path):
    b = start_board(tmp_path)
    yield b
    b.stop()


def test_monitor_follows_an_exposure_and_a_refused_press(board):
    stop = threading.Event()
    with Session(board.pty_path, clock=board.clock) as s:
        human = Runner(s, stop)
        as_json = Runner(s, stop, as_json=True)
        assert wait_for(lambda: human.lines and as_json.lines)

        # Arm (a command through the monitored session), press, hold for
        # two dose displays, release.
        s.arm()
        assert s.wait_event("state", 5, state="READY")
        board.press()
        assert s.wait_event("state", 5, state="EXPOSING")
        exposed = wait_for(lambda: sum(e.name == "dose" and e.body["pulses"] > 0 for e in s.events) >= 2)
        resets = [k for _, k in board.resets]  # a stalled board is reset by its watchdog
        assert exposed, f"no dose displays; events {s.events}; board resets {resets[:5]} ({len(resets)})"
        board.release()
        irradiation = s.wait_event("irradiation", 5)
        assert irradiation is not None
        # The door opens and the switch is pressed: refused, and said why.
        mark = len(s.events)
        board.set_input("door_closed", False)
        board.press()
        assert s.wait_event("blocked", 5, since=mark, reason="door open")
        board.release()
        board.set_input("door_closed", True)
        assert wait_for(lambda: any(re.search(r"blocked +door open$", line) for line in human.lines))
        stop.set()
        human.join()
        as_json.join()
        events = list(s.events)
        frames_received = s.frames_received
        assert s.frames.empty()  # drained

    assert human.error is None and as_json.error is None
    # The header: the board and its state.
    assert human.lines[0].startswith("board sim serial SIM-") and "firmware 0.2.0" in human.lines[0]
    assert human.lines[0].endswith("state IDLE (not armed)")

    items = parsed(human.lines[1:])
    states = [text for name, text in items if name == "state"]
    assert states[-3:] == ["IDLE -> READY", "READY -> EXPOSING", "EXPOSING -> HOLD"], states
    assert [name for name, _ in items] == [e.name for e in events]  # every event, in order
    assert human.result == len(events)
    exposing = items.index(("state", "READY -> EXPOSING"))
    hold = items.index(("state", "EXPOSING -> HOLD"))
    doses = [text for name, text in items[exposing:hold] if name == "dose"]
    assert len(doses) >= 2
    assert all(re.fullmatch(r"\d+\.\d mGy/min  \d+\.\d+ mGy  \d+\.\d min  80 kV 20\.0 mA  \d+ pulses", d)
               for d in doses), doses
    assert float(doses[-1].split()[0]) > 1  # a dose rate while exposing
    irr = [(i, text) for i, (name, text) in enumerate(items) if name == "irradiation"]
    pulses = irradiation.body["pulses"]
    assert len(irr) == 1 and irr[0][0] > hold
    assert re.fullmatch(rf"event 1 of exam 0: {pulses} pulses  \d+\.\d+ mGy  \d\.\d{{4}} Gy cm2", irr[0][1]), irr
    assert ("blocked", "door open") in items
    # Frames kept coming while monitoring: drained and counted (between the
    # two monitors, which share the session's queue).
    assert pulses >= 8 and frames_received == pulses

    def frame_total(lines: list[str]) -> int:
        totals = [int(m.group(1)) for line in lines if (m := re.search(r"\((\d+) in all\)", line))]
        return totals[-1] if totals else 0

    frame_lines = [json.loads(line) for line in as_json.lines if '"kind":"frames"' in line]
    assert frame_total(human.lines) + (frame_lines[-1]["total"] if frame_lines else 0) == frames_received

    # JSON: one object a line, the same events.
    objs = [json.loads(line) for line in as_json.lines]
    assert objs[0]["kind"] == "status" and objs[0]["state"] == "IDLE" and objs[0]["serial"].startswith("SIM-")
    got = [(o["t_us"], o["name"], o["body"]) for o in objs if o["kind"] == "event"]
    assert got == [(e.t_us, e.name, e.body) for e in events]
    assert {o["kind"] for o in objs} <= {"status", "event", "frames"}
    assert as_json.result == len(events)


def test_a_lost_link_ends_the_monitor_after_what_came_before(tmp_path):
    board = start_board(tmp_path)
    stopped = False
    try:
        with Session(board.pty_path) as s:
            run = Runner(s, threading.Event())
            assert wait_for(lambda: len(run.lines) >= 1)
            s.arm()
            assert wait_for(lambda: any(line.endswith("IDLE -> READY") for line in run.lines))
            board.stop()  # the board goes away: its pty closes
            stopped = True
            t0 = time.monotonic()
            run.join()
            assert time.monotonic() - t0 < 3
            assert isinstance(run.error, MonitorError), run.error
            assert str(run.error).startswith("link lost: ")
            assert s.error is not None
    finally:
        if not stopped:
            board.stop()
    assert run.lines[-1].endswith("IDLE -> READY")  # what came before, and nothing after


# -- without a board: logs, merging, options, silence --------------------------------------


class FakeSession:
    """What monitor() uses of a Session."""

    def __init__(self) -> None:
        self.board = {"board": "fake", "serial": "F-1", "firmware": "9.9", "detector_serial": "D-1"}
        self.events: list[Event] = []
        self.logs: list[tuple[int, int, str]] = []
        self.frames: queue.Queue[Any] = queue.Queue()
        self.error: str | None = None
        self.last_rx = time.monotonic()

    def status(self) -> dict[str, Any]:
        return {"state": "HOLD", "block": "none", "fault": 0}

    def silent_for(self) -> float:
        return time.monotonic() - self.last_rx


def test_events_and_logs_are_merged_in_board_order_and_dose_can_be_left_out():
    s = FakeSession()
    s.events += [Event(1_000_000, "state", {"state": "READY", "from": "IDLE", "fault": 0}),
                 Event(3_000_000, "dose", {"rate_mgy_min": 1, "kerma_mgy": 2, "fluoro_min": 0.1, "kv": 80,
                                           "ma": 20, "pulses": 3, "hlc": False}),
                 Event(4_000_000, "mystery", {"b": [1, 2]})]
    s.logs += [(2_000_000, 30, "hot\ntube"), (5_000_000, 20, "done")]
    lines: list[str] = []
    assert monitor(s, write=lines.append, duration_s=0.1) == 5  # type: ignore[arg-type]
    assert lines == ["board fake serial F-1, firmware 9.9, detector D-1: state HOLD",
                     "    1.000 s  state       IDLE -> READY",
                     "    2.000 s  WARNING     hot | tube",
                     "    3.000 s  dose        1.0 mGy/min  2.000 mGy  0.1 min  80 kV 20.0 mA  3 pulses",
                     '    4.000 s  mystery     {"b":[1,2]}',
                     "    5.000 s  INFO        done"]
    lines.clear()
    assert monitor(s, write=lines.append, duration_s=0.1, dose=False, as_json=True) == 4  # type: ignore[arg-type]
    objs = [json.loads(line) for line in lines]
    assert [o["kind"] for o in objs] == ["status", "event", "log", "event", "log"]
    assert objs[2] == {"kind": "log", "t_us": 2_000_000, "level": 30, "level_name": "warning", "text": "hot\ntube"}


def test_silence_is_a_lost_link_and_frames_are_counted():
    s = FakeSession()
    s.frames.put(type("F", (), {"timestamp_us": 7_500_000})())
    s.last_rx = time.monotonic() - 3
    s.events.append(Event(7_000_000, "blocked", {"reason": "key off"}))
    lines: list[str] = []
    with pytest.raises(MonitorError, match=r"link lost: nothing from the board for \d\.\d s"):
        monitor(s, write=lines.append)  # type: ignore[arg-type]
    assert lines[-1] == "    7.000 s  blocked     key off"  # what came before; no frame line after the loss
    s.last_rx = time.monotonic()
    s.frames.put(type("F", (), {"timestamp_us": 8_000_000})())
    lines.clear()
    monitor(s, write=lines.append, duration_s=0.05)  # type: ignore[arg-type]
    assert lines[-1].endswith("frames      1 received (1 in all), the last at 8.000 s")


def test_formats_of_every_event():
    def f(name: str, body: dict[str, Any]) -> str:
        m = EVENT_LINE.match(format_event(Event(12_345_000, name, body)))
        assert m is not None and m.group(1) == name
        return m.group(2)

    assert format_event(Event(12_345_000, "state", {"state": "EXPOSING", "from": "READY", "fault": 0})) == \
        "   12.345 s  state       READY -> EXPOSING"
    assert f("state", {"state": "FAULT", "from": "EXPOSING", "fault": 1}) == "EXPOSING -> FAULT (fault 1)"
    assert f("fault", {"code": 1, "name": "kV out of tolerance", "message": "pulse 3 delivered 70 kV"}) == \
        "kV out of tolerance: pulse 3 delivered 70 kV (fault 1)"
    assert f("alarm", {"alarm": "fluoro_5min", "active": True, "fluoro_min": 5.0}) == "fluoro_5min ON (5.0 min)"
    assert f("alarm", {"alarm": "hlc_tone", "active": False}) == "hlc_tone OFF"
    assert f("alarm", {"alarm": "dose_notify", "active": True, "kerma_mgy": 3000}) == "dose_notify ON (3000.0 mGy)"
    assert f("blocked", {"reason": "door open"}) == "door open"
    assert f("irradiation", {"exam": 2, "event": 3, "pulses": 12, "kerma_ugy": 470.2, "kap_ugy_m2": 1.77}) == \
        "event 3 of exam 2: 12 pulses  0.4702 mGy  0.0177 Gy cm2"
    assert f("boot", {"firmware": "0.2.0", "protocol": 1, "board": "sim", "serial": "S", "reset_cause": "watchdog",
                      "exam": 4}) == "firmware 0.2.0 on sim (serial S), reset: watchdog, exam 4"
    assert f("exam", {"exam": 5}) == "new exam 5"
    assert f("state", {"unexpected": 1}) == '{"unexpected":1}'  # a body this host does not know
    assert f("dose", {"rate_mgy_min": 35.12, "kerma_mgy": 1.2344, "fluoro_min": 0.1, "kv": 80.0, "ma": 20.0,
                      "pulses": 9, "hlc": True}) == "35.1 mGy/min  1.234 mGy  0.1 min  80 kV 20.0 mA  9 pulses  HLC"
    assert format_log(1_600, 40, "journal full") == "    0.002 s  ERROR       journal full"
    assert format_log(0, 25, "x") == "    0.000 s  LEVEL25     x"
