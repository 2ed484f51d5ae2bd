# The firmware's ticks (ticks.py): differences and offsets across the wrap at
# 2**30, and board time extended past it. Runs on CPython, the 64-bit unix
# port (Python fallbacks) and the 32-bit webassembly port (time's own C
# functions, as on the Pico).
from pulsefw import ticks

WRAP = ticks.MASK + 1


def test_differences_and_offsets_hold_across_the_wrap():
    for a in (0, 1, 12345, ticks.HALF - 1, ticks.HALF, ticks.MASK - 10, ticks.MASK):
        for d in (0, 1, -1, 999, -999, 50_000_000, -50_000_000, ticks.HALF - 1, -(ticks.HALF - 1)):
            b = ticks.add(a, d)
            assert 0 <= b <= ticks.MASK
            assert ticks.diff(b, a) == d, (a, d)
    assert ticks.add(ticks.MASK, 1) == 0
    assert ticks.diff(0, ticks.MASK) == 1
    assert ticks.diff(ticks.MASK, 0) == -1


def test_the_port_s_own_functions_are_used_only_where_they_wrap_as_ours():
    try:
        import time

        own = time.ticks_add(ticks.MASK, 1) == 0
    except (ImportError, AttributeError):
        own = False  # CPython
    assert (ticks.add is getattr(__import__("time"), "ticks_add", None)) == own


def test_board_time_counts_the_wraps():
    start = 3 * WRAP - 1000  # board time 1 ms before the third wrap
    c = ticks.BoardClock(start)
    t0 = start & ticks.MASK
    assert c.us(t0) == start
    later = ticks.add(t0, 2500)  # after the wrap, not yet seen by the loop
    assert later < t0 and c.hi(later) == 3 and c.us(later) == start + 2500
    c.seen(later)
    assert c.wraps == 3 and c.us(later) == start + 2500
    # A tick from before the wrap still belongs to the wrap before it.
    assert c.hi(t0) == 2 and c.us(t0) == start
    # The loop sees the ticks often: a whole day of 1 s passes.
    t = later
    for _ in range(86_400):
        t = ticks.add(t, 1_000_000)
        c.seen(t)
    assert c.us(t) == start + 2500 + 86_400 * 1_000_000


def test_a_board_clock_from_a_small_time_starts_with_no_wraps():
    c = ticks.BoardClock(5)
    assert c.wraps == 0 and c.us(5) == 5 and c.hi(ticks.add(5, -10)) == -1
