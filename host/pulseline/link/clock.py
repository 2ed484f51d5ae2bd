"""A board's time, as the host sees it: the wall clock for a board that runs
by itself, the board's own time for a board that keeps one (the simulated
board: what its interpreter ran and asked to wait, slower than the wall
clock on a busy host), or virtual time for a board that only moves when the
host waits (the fast simulator). A session, a test and the CLI wait through
a Clock, so the same code means the same on all three.

The session is given its clock (or takes the one its transport offers) and
knows no simulator: a virtual board is anything with the VirtualBoard
shape below.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Clock:
    """Wall time: the board runs by itself; the host reads in a thread."""

    # Whether the board's bytes come only when this clock moves (no reader
    # thread), its own stand-in host sends the heartbeat, and ids are counted
    # (a run is a function of its seed).
    virtual = False
    # Answers to commands from the board's own stand-in host carry sequence
    # numbers from here up; a session's stay below (virtual time only).
    board_seq_base = 0x10000

    def now(self) -> float:
        """Seconds on the board's clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, cond: threading.Condition, ready: Callable[[], Any], timeout_s: float,
             failed: Callable[[], Any] = lambda: False) -> bool:
        """Until ready() (checked under cond) or timeout_s of board time, or
        failed(); whether it became ready."""
        deadline = time.monotonic() + timeout_s
        with cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0 or failed():
                    return bool(ready())
                cond.wait(left)
            return True

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str = "the condition") -> Any:
        """predicate()'s first true value, polled on this clock; AssertionError
        (for tests: it names what did not hold) after timeout_s."""
        deadline = self.now() + timeout_s
        stood_still = self.wall_guard(timeout_s)
        while True:
            value = predicate()
            if value:
                return value
            if self.now() >= deadline:
                raise AssertionError(f"{what} did not hold within {timeout_s:g} s of target time")
            if stood_still():
                raise AssertionError(f"{what} did not hold, and the target's clock stood still for "
                                     f"{self.wall_limit_s(timeout_s):g} s of wall time")
            self.sleep(0.02)

    def wall_limit_s(self, timeout_s: float) -> float:
        """The most wall time a wait of timeout_s on this clock may stand
        without the board's time moving."""
        return timeout_s

    def wall_guard(self, timeout_s: float) -> Callable[[], bool]:
        """For a wait of timeout_s: whether it has taken too long in wall
        time (on the wall clock: its length)."""
        wall_end = time.monotonic() + self.wall_limit_s(timeout_s)
        return lambda: time.monotonic() >= wall_end

    def session_id(self) -> str:
        """A new host session's id: drawn, so that no two sessions share one."""
        return secrets.token_hex(8)

    def first_seq(self) -> int:
        """Where a session's sequence numbers start: anywhere, so that an
        answer to another session's command is not taken for its own."""
        return secrets.randbelow(0x10000)

    def attach(self, pump: Callable[[], None]) -> None:
        """pump() takes the board's bytes whenever this clock moves (virtual
        time only)."""

    def detach(self, pump: Callable[[], None]) -> None:
        pass


class OwnClock(Clock):
    """The time of a board that keeps its own: now_us() gives it. It never
    runs faster than the wall clock (the board counts what it ran and what
    it asked to wait, never what the host took from it), so waiting in wall
    time for what is left of a deadline never passes it. However slowly it
    runs (an emulated Pico at an eighth of real time, slower still on a
    busy host), a wait lasts its length of the board's time; a board whose
    clock stands still (stopped, or blocked on a host that does not read)
    for WALL_FACTOR times the wait's length of wall time ends it, so no
    host hangs."""

    WALL_FACTOR = 10.0
    WALL_EXTRA_S = 5.0

    def __init__(self, now_us: Callable[[], int]) -> None:
        self._now_us = now_us

    def now(self) -> float:
        return self._now_us() / 1e6

    def wall_limit_s(self, timeout_s: float) -> float:
        return timeout_s * self.WALL_FACTOR + self.WALL_EXTRA_S

    def wall_guard(self, timeout_s: float) -> Callable[[], bool]:
        """Whether the board's clock has stood still for wall_limit_s."""
        limit_s = self.wall_limit_s(timeout_s)
        last = [self.now(), time.monotonic()]  # the board's time, and when it last moved

        def stood_still() -> bool:
            t, wall = self.now(), time.monotonic()
            if t != last[0]:
                last[0], last[1] = t, wall
                return False
            return wall - last[1] >= limit_s

        return stood_still

    def sleep(self, seconds: float) -> None:
        end = self.now() + seconds
        stood_still = self.wall_guard(seconds)
        while (left := end - self.now()) > 0 and not stood_still():
            time.sleep(max(left, 0.001))  # the board's clock moves in its loop's steps

    def wait(self, cond: threading.Condition, ready: Callable[[], Any], timeout_s: float,
             failed: Callable[[], Any] = lambda: False) -> bool:
        # The board's time is read outside cond: reading it may ask the board
        # (a round trip) while the reader thread needs cond to deliver.
        end = self.now() + timeout_s
        stood_still = self.wall_guard(timeout_s)
        left = timeout_s
        while True:
            with cond:
                if ready():
                    return True
                if failed():
                    return False
                cond.wait(max(0.0, left))
                if ready():
                    return True
            left = end - self.now()
            if left <= 0 or stood_still():
                with cond:
                    return bool(ready())


class VirtualBoard(Protocol):
    """A board in virtual time, as the clock drives it."""

    step_us: int

    @property
    def now_us(self) -> int: ...

    def advance(self, dt_us: int) -> None: ...

    def sleep(self, seconds: float) -> None: ...

    def next_session_id(self) -> str: ...

    def on_output(self, pump: Callable[[], None]) -> None: ...

    def off_output(self, pump: Callable[[], None]) -> None: ...


class VirtualClock(Clock):
    """The time of a board that runs only while the host waits: every wait
    advances it in small steps, and its bytes are taken in the waiting
    thread (no threads, so a run is a function of its seed)."""

    virtual = True
    board_seq_base = 0x8000

    def __init__(self, board: VirtualBoard) -> None:
        self.board = board

    def now(self) -> float:
        return self.board.now_us / 1e6

    def sleep(self, seconds: float) -> None:
        self.board.sleep(seconds)  # the board runs, the sessions take its output

    def wait(self, cond: threading.Condition, ready: Callable[[], Any], timeout_s: float,
             failed: Callable[[], Any] = lambda: False) -> bool:
        b = self.board
        end_us = b.now_us + round(timeout_s * 1e6)
        while True:
            with cond:
                if ready():
                    return True
            if b.now_us >= end_us or failed():
                return False
            b.advance(min(b.step_us, end_us - b.now_us))  # the virtual board's own step

    def session_id(self) -> str:
        return self.board.next_session_id()  # counted, not drawn

    def first_seq(self) -> int:
        return 0

    def attach(self, pump: Callable[[], None]) -> None:
        self.board.on_output(pump)

    def detach(self, pump: Callable[[], None]) -> None:
        self.board.off_output(pump)


WALL = Clock()
