"""The board's own clock as the host waits on it (link.clock.OwnClock): a
wait ends when the board's time passes its deadline, never on the wall
clock's, and a board whose clock stands still cannot hang the host."""

from __future__ import annotations

import threading
import time

from pulseline.link.clock import OwnClock


class SlowBoard:
    """A board clock that runs at `rate` of wall time (0: stands still; the
    waits below give up after 3 times their length of wall time)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()

    def now_us(self) -> int:
        return int((time.monotonic() - self.t0) * self.rate * 1e6)


class QuickClock(OwnClock):
    WALL_FACTOR = 3.0
    WALL_EXTRA_S = 0.0


def test_a_wait_on_a_slow_board_lasts_its_time_not_the_walls():
    board = SlowBoard(0.5)
    clock = QuickClock(board.now_us)
    cond = threading.Condition()
    start = clock.now()
    assert clock.wait(cond, lambda: False, 0.1) is False
    assert clock.now() - start >= 0.1  # the board's deadline passed before the wait gave up


def test_sleep_and_wait_for_count_the_boards_seconds():
    board = SlowBoard(0.5)
    clock = QuickClock(board.now_us)
    start = clock.now()
    clock.sleep(0.05)
    assert clock.now() - start >= 0.05
    calls = []
    try:
        clock.wait_for(lambda: calls.append(1) and False, 0.05, "nothing")
    except AssertionError as exc:
        assert "within 0.05 s of target time" in str(exc)
    else:
        raise AssertionError("wait_for returned on a predicate never true")
    assert clock.now() - start >= 0.1 and len(calls) > 1


def test_a_board_whose_clock_stands_still_ends_the_wait_on_the_wall_limit():
    clock = QuickClock(SlowBoard(0.0).now_us)
    cond = threading.Condition()
    wall = time.monotonic()
    assert clock.wait(cond, lambda: False, 0.05) is False
    assert time.monotonic() - wall >= 0.15  # (3 times the wait, of wall time)
    try:
        clock.wait_for(lambda: False, 0.05, "the answer")
    except AssertionError as exc:
        assert "the target's clock stood still" in str(exc)
    else:
        raise AssertionError("wait_for returned on a clock that stands still")


def test_a_wait_returns_as_soon_as_it_is_ready():
    clock = QuickClock(SlowBoard(0.0).now_us)  # (a wait that needs no time at all)
    cond = threading.Condition()
    box: list[int] = []

    def deliver() -> None:
        with cond:
            box.append(1)
            cond.notify_all()

    threading.Timer(0.02, deliver).start()
    assert clock.wait(cond, lambda: box, 1.0) is True
    assert clock.wait(cond, lambda: False, 1.0, failed=lambda: True) is False  # a failed link ends it at once


def test_a_board_far_slower_than_the_wall_is_waited_for_while_its_clock_moves():
    # An emulated Pico runs at an eighth of real time, slower on a busy
    # host: a wait lasts its length of the board's time however long that
    # takes of the wall's, as long as the board's clock moves.
    board = SlowBoard(0.02)  # 0.05 s of board time is 2.5 s of wall time, past 3 times 0.05 s
    clock = QuickClock(board.now_us)
    cond = threading.Condition()
    start = clock.now()
    assert clock.wait(cond, lambda: False, 0.05) is False
    assert clock.now() - start >= 0.05
    assert clock.wait_for(lambda: clock.now() - start >= 0.08, 0.05, "the board's time")
