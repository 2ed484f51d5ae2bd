# The rp2 board's portable parts (pulsefw/boards/rp2/wiring.py): debouncing, the
# generator's scaling, the board's own configuration checks. Runs under
# CPython and on the MicroPython unix port.
from pulsefw import wire
from pulsefw.boards.rp2 import timing as rp2_timing
from pulsefw.boards.rp2 import wiring as io


def test_a_safe_value_is_taken_at_once_and_a_permissive_only_when_it_has_held():
    d = io.Debouncer(0)
    all_on = io.IN_ALL
    assert d.update(all_on, 0) == 0
    assert d.update(all_on, io.DEBOUNCE_US - 1) == 0  # not held long enough
    assert d.update(all_on, io.DEBOUNCE_US) == all_on
    # The switch bounces open: released at once...
    assert d.update(all_on & ~io.IN_SWITCH, io.DEBOUNCE_US + 10) == all_on & ~io.IN_SWITCH
    # ...and closed again only after it has held for the debounce time.
    t = io.DEBOUNCE_US + 20
    assert d.update(all_on, t) == all_on & ~io.IN_SWITCH
    assert d.update(all_on, t + io.DEBOUNCE_US - 1) == all_on & ~io.IN_SWITCH
    assert d.update(all_on, t + io.DEBOUNCE_US) == all_on


def test_bouncing_faster_than_the_debounce_never_gives_a_permissive():
    d = io.Debouncer(0)
    t = 0
    for k in range(200):
        t += 1000
        assert d.update(io.IN_DOOR if k % 2 else 0, t) == 0


def test_cut_wires_read_as_the_safe_values():
    # Pull-ups on the active-low switches, pull-downs on the rest: a cut
    # wire leaves the switch inputs high and the others low.
    assert io.raw_bits(1, 0, 0, 0, 1) == 0
    assert io.raw_bits(0, 1, 1, 1, 0) == io.IN_ALL


def test_setpoints_and_monitors_scale_over_the_range():
    for kv in (40.0, 60.0, 80.0, 120.0, 125.0):
        duty = io.setpoint_duty(kv, io.KV_FULL_SCALE)
        assert abs(duty * io.KV_FULL_SCALE / 65535 - kv) < 0.002
    assert io.setpoint_duty(-1.0, io.MA_FULL_SCALE) == 0 and io.setpoint_duty(200.0, io.MA_FULL_SCALE) == 65535
    # A monitor at 10 V reads 3.0 V on the ADC: full scale.
    adc = int(3.0 / 3.3 * 65535 + 0.5)
    assert abs(io.monitor_value(adc, io.KV_FULL_SCALE) - 150.0) < 0.01


def test_the_board_refuses_what_its_pio_and_clock_cannot_do():
    ok = io.config_problem(256, 256, wire.FMT_MONO12P, 10.0, rp2_timing.SYS_HZ_PICO)
    assert ok is None
    assert "Mono12p only" in io.config_problem(256, 256, wire.FMT_MONO16, 10.0, rp2_timing.SYS_HZ_PICO)
    assert "multiple of 8" in io.config_problem(256, 100, wire.FMT_MONO12P, 10.0, rp2_timing.SYS_HZ_PICO)
    # 256 x 256 takes 2.63 ms to read at 125 MHz: a 2 ms pulse is too short, at 150 MHz 2.2 ms still is.
    assert "longer than a 2.0 ms pulse" in io.config_problem(256, 256, wire.FMT_MONO12P, 2.0,
                                                            rp2_timing.SYS_HZ_PICO)
    assert io.config_problem(256, 256, wire.FMT_MONO12P, 2.7, rp2_timing.SYS_HZ_PICO) is None
    assert io.config_problem(256, 256, wire.FMT_MONO12P, 2.2, rp2_timing.SYS_HZ_PICO2) is None


def test_the_frame_budget_leaves_the_firmware_its_reserve():
    assert io.frame_budget_bytes(180_000) == 180_000 - io.HEAP_RESERVE_BYTES
    assert io.frame_budget_bytes(10_000) == 0
