"""A board's time, as the host sees it: the wall clock for a board that runs
by itself, or virtual time for a board that only moves when the host waits
(the fast simulator). A session, a test and the CLI wait through a Clock,
so the same code means the same on both.

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
        while True:
            value = predicate()
            if value:
                return value
            if self.now() >= deadline:
                raise AssertionError(f"{what} did not hold within {timeout_s:g} s of target time")
            self.sleep(0.02)

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
