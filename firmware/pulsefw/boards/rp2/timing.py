# The rp2 board's PIO timing, in plain integers: the words the programs of
# pio.py take and what they come to in cycles. Portable (no rp2
# import), so the host runs the same arithmetic the board does, and the PIO
# emulator tests hold the programs to it.

# System clocks the board runs at: the Pico (RP2040) at 125 MHz, the Pico 2
# (RP2350) at 150 MHz. Both divide to the gate's 1 MHz exactly, so its
# state machine's cycles are whole microseconds with no divider jitter.
SYS_HZ_PICO = 125_000_000
SYS_HZ_PICO2 = 150_000_000
GATE_SM_HZ = 1_000_000

# pulse_gate: high = 35 + fine + 32 * coarse cycles; from one rising edge to
# the next possible one = high + 26 + fine + 16 * coarse.
GATE_HIGH_FIXED = 35
GATE_HIGH_COARSE = 32
GATE_LOW_FIXED = 26
GATE_LOW_COARSE = 16
GATE_INTERLOCK_CYCLES = 33  # the most the gate stays on after INTERLOCK_OK falls
GATE_FIRED = 0xFFFFFFFF  # what the gate reports for a pulse that went out (0: refused)

# line_readout: 5 cycles a pixel, and 6 more a line.
READOUT_CYCLES_PER_PIXEL = 5
READOUT_CYCLES_PER_LINE = 6
READOUT_CLOCK_HIGH = 2  # PIX_CLK high cycles of each pixel's 5
READOUT_SAMPLE_AFTER = 4  # cycles from the rising edge that presents a pixel to its sample


def clock_divider(sys_hz, sm_hz):
    """(integer, fraction/256) dividing sys_hz to sm_hz; ValueError unless
    it is exact (a fractional divider jitters the edges by a cycle)."""
    if sm_hz <= 0 or sys_hz % sm_hz:
        raise ValueError("%d Hz does not divide to %d Hz exactly" % (sys_hz, sm_hz))
    div = sys_hz // sm_hz
    if not 1 <= div <= 65535:
        raise ValueError("clock divider %d out of range" % div)
    return div, 0


def gate_words(width_us, period_us):
    """The four words of one pulse: (high coarse, high fine, low coarse, low
    fine), for a pulse of width_us whose next may rise period_us after it."""
    width_us = int(width_us)
    period_us = int(period_us)
    n = width_us - GATE_HIGH_FIXED
    if n < 0:
        raise ValueError("pulse of %d us is shorter than the gate's %d us" % (width_us, GATE_HIGH_FIXED))
    m = period_us - width_us - GATE_LOW_FIXED
    if m < 0:
        raise ValueError("period %d us leaves no time after a %d us pulse" % (period_us, width_us))
    return n // GATE_HIGH_COARSE, n % GATE_HIGH_COARSE, m // GATE_LOW_COARSE, m % GATE_LOW_COARSE


def readout_line_word(pixels):
    """The word the readout takes for each line: pixel pairs - 1."""
    readout_words_per_line(pixels)
    return pixels // 2 - 1


def readout_words_per_line(pixels):
    """RX words a line of Mono12p comes to; pixels must be a multiple of 8
    (whole 32-bit words)."""
    if pixels <= 0 or pixels % 8:
        raise ValueError("pixels per line must be a positive multiple of 8 on the rp2 board, got %d" % pixels)
    return pixels * 12 // 32


def readout_line_cycles(pixels):
    return READOUT_CYCLES_PER_LINE + READOUT_CYCLES_PER_PIXEL * pixels


def readout_frame_us(lines, pixels, sys_hz):
    """How long the frame's lines take at full speed (the readout state
    machine runs at the system clock), microseconds, rounded up."""
    cycles = lines * readout_line_cycles(pixels)
    return (cycles * 1_000_000 + sys_hz - 1) // sys_hz
