# The board's microsecond ticks: they wrap at 2**30, as MicroPython's
# time.ticks_us does on a 32-bit board (the Pico), so that every time on the
# hot path is a small integer (a long one would be an allocation). Times are
# compared and offset only through diff() and add(), which hold across the
# wrap for intervals under 2**29 us (about 9 minutes); nothing the firmware
# times is that long.
#
# Board time for the host (events, line and trailer timestamps, the journal)
# is the ticks extended past their wraps: BoardClock below.
from micropython import const

MASK = const(0x3FFFFFFF)  # ticks are 0..MASK
HALF = const(0x20000000)  # 2**29: the longest interval diff() tells apart
PERIOD_BITS = const(30)

try:
    from time import ticks_add as _c_add
    from time import ticks_diff as _c_diff

    # A 32-bit port's own (C, allocation-free) functions wrap where ours do;
    # a 64-bit port's wrap at 2**62, so they are not ours.
    if _c_add(MASK, 1) != 0:  # type: ignore[type-var]  # (the stubs' ticks are opaque)
        raise ImportError
    add = _c_add
    diff = _c_diff
except ImportError:
    # CPython, and the 64-bit unix port (where these values are small
    # integers too).

    def add(t, delta):
        """The tick delta microseconds after t (delta may be negative)."""
        return (t + delta) & MASK

    def diff(a, b):
        """a - b in microseconds, across the wrap: signed, |a - b| < 2**29."""
        return ((a - b + HALF) & MASK) - HALF


class BoardClock:
    """The board's time for the host: ticks extended by a count of wraps.

    `seen(tick)` must be called at least once every 2**29 us (the main loop
    calls it every pass); `hi(tick)` and `us(tick)` then place any tick
    within 2**29 us of the last one seen. hi() is a small integer (the
    line packets write board time as hi * 2**30 + tick); us() may be a long
    integer on a 32-bit board, for what is sent rarely (events, journal).
    """

    def __init__(self, clock_us):
        # clock_us: the board's time now (since power-on; the simulated
        # board's is the plant's), whose low 30 bits are the tick now.
        self.wraps = clock_us >> PERIOD_BITS
        self.last = clock_us & MASK

    def seen(self, tick):
        if tick < self.last:
            self.wraps += 1
        self.last = tick

    def hi(self, tick):
        d = diff(tick, self.last)
        if d >= 0:
            return self.wraps + 1 if tick < self.last else self.wraps
        return self.wraps - 1 if tick > self.last else self.wraps

    def us(self, tick):
        return (self.hi(tick) << PERIOD_BITS) + tick
