# The rp2 board's PIO arithmetic (pulsefw/boards/rp2/timing.py): portable, so it runs
# here under CPython and on the MicroPython unix port (tests/test_pio.py
# holds the PIO programs to the same numbers on the emulator).
from pulsefw import controller
from pulsefw.boards.rp2 import timing as t


def _raises(fn, *args):
    try:
        fn(*args)
    except ValueError:
        return True
    return False


def test_gate_words_add_up_to_the_width_and_period_over_the_technique_range():
    for pps in controller.PULSE_RATES:
        period = int(1_000_000 / pps)
        w = int(controller.WIDTH_MIN_MS * 1000)
        while w <= min(controller.WIDTH_MAX_MS * 1000, period // 2):
            hc, hf, lc, lf = t.gate_words(w, period)
            assert t.GATE_HIGH_FIXED + hf + t.GATE_HIGH_COARSE * hc == w
            assert w + t.GATE_LOW_FIXED + lf + t.GATE_LOW_COARSE * lc == period
            assert 0 <= hf < t.GATE_HIGH_COARSE and 0 <= lf < t.GATE_LOW_COARSE
            w += 97


def test_gate_words_refuse_the_impossible():
    assert _raises(t.gate_words, 10, 1000)
    assert _raises(t.gate_words, 1000, 1020)


def test_the_clock_divides_exactly_at_both_system_clocks_or_is_refused():
    assert t.clock_divider(t.SYS_HZ_PICO, t.GATE_SM_HZ) == (125, 0)
    assert t.clock_divider(t.SYS_HZ_PICO2, t.GATE_SM_HZ) == (150, 0)
    assert _raises(t.clock_divider, t.SYS_HZ_PICO, 3_000_000)


def test_readout_geometry():
    assert t.readout_words_per_line(256) == 96 and t.readout_line_word(256) == 127
    assert _raises(t.readout_words_per_line, 100)
    assert t.readout_frame_us(256, 256, t.SYS_HZ_PICO) == 2634
