"""The fast simulator as a board the host can open: `fastsim://NAME`.

A FastBoard wraps a FastSim (the firmware in process, in virtual time) and
registers it by name; the pyserial URL handler in protocol_fastsim.py opens
it, so a Session, and everything built on one, runs on it unchanged.

Virtual time only moves when the host waits: a session waiting for an
answer, an event or a frame, or a test sleeping on its clock, advances the
board in small steps and takes its output at once, in the waiting thread.
Nothing runs in the background, so a run is a function of its seed and of
what the test does: two runs give the same bytes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import serial

from ..link.clock import VirtualClock
from ..plant import Plant, PlantConfig, Timeline
from .controls import PlantControls
from .fast import FastSim

# The stand-in host's heartbeat (pings every 100 ms of virtual time) uses
# sequence numbers from here up, clear of a session's own.
HEARTBEAT_SEQ_BASE = 0x8000
STEP_US = 2_000  # how far a waiting host advances the board at a time
HEARTBEAT_US = 100_000  # a ping every 100 ms: a host in virtual time is never late (the session's: 50 ms)

# A fast board opens as `fastsim://NAME` (protocol_fastsim.py) in the process
# that made it.
if "pulseline.sim" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("pulseline.sim")

_BOARDS: dict[str, FastBoard] = {}
_LOCK = threading.Lock()
_NAMES = itertools.count()


class FastBoard(PlantControls):
    step_us = STEP_US  # a session waiting on this board advances it this far at a time

    def __init__(self, plant: Plant | None = None, *, seed: int = 0, name: str | None = None,
                 timeline: Timeline | None = None, pixels: bool = True, start_us: int = 0) -> None:
        self.plant = plant if plant is not None else Plant(PlantConfig(seed=seed), timeline)
        self.sim = FastSim(self.plant, pixels=pixels, start_us=start_us)
        self.sim.host_seq = self.sim.host_seq_base = HEARTBEAT_SEQ_BASE
        self.name = name or f"fast{next(_NAMES)}"
        self.url = f"fastsim://{self.name}"
        self.transcript = bytearray()  # every byte the board sent, in order
        self._pending = bytearray()  # sent, not yet taken by the host
        self.opened = False
        self._pumps: list[Callable[[], None]] = []
        self._sessions = itertools.count(1)
        self.clock = VirtualClock(self)  # the board's time, for its sessions and tests
        with _LOCK:
            if self.name in _BOARDS:
                raise ValueError(f"a fast board called {self.name} exists already")
            _BOARDS[self.name] = self

    # -- time ----------------------------------------------------------------------

    @property
    def now_us(self) -> int:
        return self.sim.now_us

    def advance(self, dt_us: int) -> None:
        """Run the board and the plant dt_us of virtual time, then hand what
        the board sent to the host's sessions. The host's heartbeat comes
        while a session has the port open, as a session's own does."""
        self.sim.heartbeat_us = HEARTBEAT_US if self.opened else 0
        self.sim.run_until(self.sim.now_us + max(1, dt_us))
        out = self.sim.take_output()
        self.transcript += out
        self._pending += out
        for pump in list(self._pumps):
            pump()

    def sleep(self, seconds: float) -> None:
        end = self.sim.now_us + round(seconds * 1e6)
        while self.sim.now_us < end:
            self.advance(min(STEP_US * 50, end - self.sim.now_us))

    # -- the host link (protocol_fastsim) ------------------------------------------

    def next_session_id(self) -> str:
        """A host session's id on this board: counted, not drawn, so that a
        run is a function of its seed."""
        return f"session-{next(self._sessions)}"

    def take(self, n: int) -> bytes:
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def put(self, data: bytes) -> None:
        if not self.sim.link_down:
            self.sim.link.to_board += data

    def on_output(self, pump: Callable[[], None]) -> None:
        self._pumps.append(pump)

    def off_output(self, pump: Callable[[], None]) -> None:
        if pump in self._pumps:
            self._pumps.remove(pump)

    # -- the simulated hardware, as SimBoard has it ----------------------------------

    def set_input(self, name: str, value: float | bool, at_us: int | None = None) -> int:
        t = max(self.sim.now_us + 1, at_us or 0)
        self.plant.timeline.add(t, name, value)
        return t

    def plant_status(self) -> dict[str, Any]:
        return {**self.plant.status(self.sim.now_us), "resets": [k for _, k in self.sim.resets]}

    @property
    def stalls(self) -> list[int]:
        """Plant time of each scripted stall so far (in virtual time the
        firmware freezes exactly then)."""
        now = self.sim.now_us
        return [e.t_us for e in self.plant.timeline.events() if e.name == "stall" and e.t_us <= now]

    @property
    def sent_to_host(self) -> bytearray:
        return self.transcript

    def close(self) -> None:
        with _LOCK:
            _BOARDS.pop(self.name, None)

    def __enter__(self) -> FastBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find(name: str) -> FastBoard:
    with _LOCK:
        board = _BOARDS.get(name)
    if board is None:
        raise ValueError(f"no fast board called {name} (it lives in the process that made it)")
    return board
