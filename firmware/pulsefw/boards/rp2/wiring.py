# The rp2 board's input and generator arithmetic, portable (no machine or
# rp2 import), so it runs under CPython and on the MicroPython unix port in
# the unit suite: the pin map, debouncing, the generator's setpoint and
# monitor scaling, and the board's budget for a configuration.
# docs/board.md has the wiring these numbers assume.
from micropython import const

from pulsefw import ticks, wire
from pulsefw.boards.rp2 import timing

# -- pins (GPIO numbers) -------------------------------------------------------
PIN_DATA0 = const(0)  # DATA0..DATA11 on GP0..GP11: the front end's 12-bit pixel
PIN_LINE_SYNC = const(12)  # out, readout side-set bit 0
PIN_PIX_CLK = const(13)  # out, readout side-set bit 1
PIN_INTERLOCK_OK = const(14)  # in: door, key, generator ready in series; the gate's JMP pin
PIN_GATE = const(15)  # out: X-ray on
PIN_SWITCH = const(16)  # in, active low (pull-up): the exposure switch
PIN_DOOR_CLOSED = const(17)  # in, active high (pull-down)
PIN_KEY_ON = const(18)  # in, active high (pull-down)
PIN_GENERATOR_READY = const(19)  # in, active high (pull-down)
PIN_HLC_SWITCH = const(20)  # in, active low (pull-up): high-level control
PIN_KV_SET = const(21)  # PWM -> RC filter -> x3.03 amplifier -> 0..10 V
PIN_MA_SET = const(22)  # PWM, as kV
PIN_KV_MON = const(26)  # ADC0: the generator's 0..10 V kV monitor through a 10:3 divider
PIN_MA_MON = const(27)  # ADC1: mA monitor, as kV

# Input bits, in the order read_inputs fills controller.Inputs.
IN_SWITCH = const(1)
IN_DOOR = const(2)
IN_KEY = const(4)
IN_READY = const(8)
IN_HLC = const(16)
IN_ALL = const(31)

# -- debouncing ---------------------------------------------------------------
DEBOUNCE_US = const(5_000)


class Debouncer:
    """Every input's safe value (switch and HLC released, door open, key
    off, generator not ready) is 0 here and is taken at once; a permissive
    (1) only once the raw input has held it for DEBOUNCE_US. So a bouncing
    contact can delay an exposure by milliseconds, never lengthen one."""

    def __init__(self, now_us):
        self.state = 0
        self._raw = 0
        self._since = now_us

    def update(self, raw, now_us):
        """raw: the bits as read (1 = permissive); returns the debounced bits."""
        raw &= IN_ALL
        if raw != self._raw:
            self._raw = raw
            self._since = now_us
        self.state &= raw  # every drop to the safe value at once
        # (Compared only while a rise waits: the ticks wrap, and a level
        # held for minutes is long settled.)
        if self.state != raw and ticks.diff(now_us, self._since) >= DEBOUNCE_US:
            self.state = raw  # held long enough: the rises too
        return self.state


def raw_bits(switch_level, door_level, key_level, ready_level, hlc_level):
    """Pin levels (0/1) to permissive bits: the two switches are active low,
    the rest active high; each pulls to its safe value when its wire is cut."""
    return ((IN_SWITCH if not switch_level else 0) | (IN_DOOR if door_level else 0) | (IN_KEY if key_level else 0)
            | (IN_READY if ready_level else 0) | (IN_HLC if not hlc_level else 0))


# -- the generator's analog interface ----------------------------------------
# 0..10 V is 0..150 kV and 0..100 mA on both the setpoint and the monitor.
KV_FULL_SCALE = 150.0
MA_FULL_SCALE = 100.0
PWM_FREQ_HZ = const(50_000)
ADC_MONITOR_VOLTS = 3.0  # 10 V through the 10:3 divider
ADC_REF_VOLTS = 3.3


def setpoint_duty(value, full_scale):
    """A setpoint (kV or mA) as a PWM duty for duty_u16, clamped to the range."""
    if value <= 0:
        return 0
    if value >= full_scale:
        return 65535
    return int(value * 65535 / full_scale + 0.5)


def monitor_value(adc_u16, full_scale):
    """An ADC reading (read_u16) of a monitor as kV or mA."""
    volts = adc_u16 * ADC_REF_VOLTS / 65535
    return volts / ADC_MONITOR_VOLTS * full_scale


# -- the board's budget -------------------------------------------------------
HEAP_RESERVE_BYTES = const(48_000)  # left to the firmware's own objects, buffers and the GC
LINK_BYTES_PER_S = const(1_000_000)  # USB full speed, CDC, what the firmware can count on


def frame_budget_bytes(mem_free):
    """The largest frame buffer the heap can give, measured at boot."""
    n = mem_free - HEAP_RESERVE_BYTES
    return n if n > 0 else 0


def config_problem(lines, pixels, pixel_format, pulse_width_ms, sys_hz):
    """Why this board cannot run a configuration, in one line; None if it
    can. The frame's size against the RAM and its rate against the link are
    config.updated's checks (MAX_FRAME_BYTES, LINK_BYTES_PER_S); these are
    the rp2 board's own."""
    if pixel_format != wire.FMT_MONO12P:
        return "the rp2 board reads Mono12p only (its PIO packs it)"
    if pixels % 8:
        return "pixels per line must be a multiple of 8 on the rp2 board, not %d" % pixels
    readout_us = timing.readout_frame_us(lines, pixels, sys_hz)
    if readout_us > pulse_width_ms * 1000:
        return "reading %d lines of %d pixels takes %d us at %d MHz, longer than a %s ms pulse" % (
            lines, pixels, readout_us, sys_hz // 1_000_000, pulse_width_ms)
    return None
