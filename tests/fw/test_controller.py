# Controller safety rules, scenario by scenario (docs/safety.md). Runs under
# pytest and on the real MicroPython binary; the hypothesis stateful test of
# the same rules is tests/test_controller_rules.py.
from pulsefw import codes, controller, dose, ticks


def test_worked_technique_exposes_at_the_expected_rate_and_holds_on_release():
    g = dose.Geometry(256, 256)
    tech = controller.Technique(80, 20, 10, 15)
    ctl = controller.Controller(g, tech, 0)
    inputs = controller.Inputs()
    assert ctl.arm() is None
    pulses = []
    for ms in range(1, 2001):
        inputs.switch = ms > 100  # pressed at 100 ms, held to 2 s
        ctl.host_seen(ms * 1000)
        if ctl.step(ms * 1000, inputs):
            pulses.append(ms)
    assert ctl.state == codes.EXPOSING
    assert len(pulses) == 29  # 1.9 s at 15 pps: a pulse at the press, then every 66.7 ms
    inputs.switch = False
    assert ctl.step(2_001_000, inputs) is None and ctl.state == codes.HOLD


def test_cap_clamps_a_technique_over_it():
    g = dose.Geometry(256, 256)
    ctl = controller.Controller(g, controller.Technique(80, 80, 10, 15), 0)
    ctl.arm()
    inputs = controller.Inputs()
    ctl.step(1000, inputs)
    inputs.switch = True
    p = ctl.step(2000, inputs)
    assert p is not None and p.capped
    rate = g.rate_mgy_min(p.kv, p.ma, p.pulse_width_ms, 15)
    assert 0.97 * dose.CAP_NORMAL_MGY_MIN <= rate <= dose.CAP_NORMAL_MGY_MIN


def drive(ctl, inputs, start_ms, end_ms, host=True):
    """Run the loop from start_ms to end_ms; returns the ms of each pulse."""
    fired = []
    for ms in range(start_ms, end_ms):
        if host:
            ctl.host_seen(ms * 1000)
        if ctl.step(ms * 1000, inputs) is not None:
            fired.append(ms)
    return fired


def armed_controller(switch=False):
    ctl = controller.Controller(dose.Geometry(256, 256), controller.Technique(80, 20, 10, 15), 0)
    inputs = controller.Inputs(switch=switch)
    return ctl, inputs


def test_switch_held_at_boot_does_not_expose():
    ctl, inputs = armed_controller(switch=True)
    ctl.arm()
    assert drive(ctl, inputs, 1, 500) == []
    assert ctl.block == codes.BLOCK_NEEDS_RELEASE
    inputs.switch = False
    drive(ctl, inputs, 500, 510)
    inputs.switch = True
    assert drive(ctl, inputs, 510, 520) == [510]


def test_switch_pressed_before_arming_does_not_expose_when_armed():
    ctl, inputs = armed_controller()
    drive(ctl, inputs, 1, 10)  # released while disarmed
    inputs.switch = True
    assert drive(ctl, inputs, 10, 100) == []  # disarmed: nothing
    ctl.arm()
    assert drive(ctl, inputs, 100, 600) == []  # armed with the pedal down: still nothing
    inputs.switch = False
    drive(ctl, inputs, 600, 610)
    inputs.switch = True
    assert drive(ctl, inputs, 610, 620) == [610]


def test_interlock_trip_latches_until_a_fresh_release_and_press():
    ctl, inputs = armed_controller()
    ctl.arm()
    drive(ctl, inputs, 1, 10)
    inputs.switch = True
    assert drive(ctl, inputs, 10, 200)  # exposing
    inputs.door_closed = False
    assert drive(ctl, inputs, 200, 201) == []  # the next pulse is withheld at once
    inputs.door_closed = True
    assert drive(ctl, inputs, 201, 2000) == []  # re-closing never restarts X-rays
    inputs.switch = False
    drive(ctl, inputs, 2000, 2010)
    inputs.switch = True
    assert drive(ctl, inputs, 2010, 2020) == [2010]


def test_host_link_loss_stops_emission_within_200_ms():
    ctl, inputs = armed_controller()
    ctl.arm()
    drive(ctl, inputs, 1, 10)
    inputs.switch = True
    drive(ctl, inputs, 10, 1000)
    fired = drive(ctl, inputs, 1000, 3000, host=False)  # host silent from 1.0 s
    assert fired and max(fired) <= 1000 + controller.LINK_TIMEOUT_US // 1000
    # The session that armed it is gone: disarmed, not merely stopped.
    assert ctl.state == codes.IDLE and ctl.block == codes.BLOCK_LINK
    # The link coming back does not restart X-rays either, nor does a fresh
    # press: the next session must arm first.
    assert drive(ctl, inputs, 3000, 4000) == []
    inputs.switch = False
    drive(ctl, inputs, 4000, 4010)
    inputs.switch = True
    assert drive(ctl, inputs, 4010, 4500) == []
    ctl.arm()
    inputs.switch = False
    drive(ctl, inputs, 4500, 4510)
    inputs.switch = True
    assert drive(ctl, inputs, 4510, 4520) == [4510]


def test_a_board_armed_by_a_host_that_went_away_is_disarmed_whatever_else_blocks():
    ctl, inputs = armed_controller()
    ctl.arm()
    drive(ctl, inputs, 1, 10)
    inputs.door_closed = False  # the door's block comes first, the link is lost too
    drive(ctl, inputs, 10, 1000, host=False)
    assert ctl.state == codes.IDLE
    inputs.door_closed = True
    inputs.switch = True  # the host back, a press: nobody armed for it
    assert drive(ctl, inputs, 1000, 2000) == [] and ctl.state == codes.IDLE


def test_fault_latches_until_reset_and_a_fresh_press():
    ctl, inputs = armed_controller()
    ctl.arm()
    drive(ctl, inputs, 1, 10)
    inputs.switch = True
    drive(ctl, inputs, 10, 100)
    ctl.latch_fault(3)
    assert drive(ctl, inputs, 100, 1000) == [] and ctl.state == codes.FAULT
    assert ctl.arm() is not None  # cannot arm over a latched fault
    ctl.fault_reset()
    assert ctl.state == codes.IDLE
    ctl.arm()
    assert drive(ctl, inputs, 1000, 2000) == []  # pedal still down since before the reset
    inputs.switch = False
    drive(ctl, inputs, 2000, 2010)
    inputs.switch = True
    assert drive(ctl, inputs, 2010, 2020) == [2010]


def test_release_stops_emission_at_once():
    ctl, inputs = armed_controller()
    ctl.arm()
    drive(ctl, inputs, 1, 10)
    inputs.switch = True
    fired = drive(ctl, inputs, 10, 1010)
    assert fired[0] == 10 and 1010 - fired[-1] <= 67  # the next pulse is due at 1010 ms exactly
    inputs.switch = False  # ... and the switch is released at that very sample
    assert drive(ctl, inputs, 1010, 3000) == [] and ctl.state == codes.HOLD


def test_press_made_with_the_door_open_does_not_expose_when_it_closes():
    # Found by the stateful test: armed, door open, pedal pressed, door closed.
    ctl, inputs = armed_controller()
    ctl.arm()
    inputs.door_closed = False
    drive(ctl, inputs, 1, 10)
    inputs.switch = True
    assert drive(ctl, inputs, 10, 100) == []
    inputs.door_closed = True
    assert drive(ctl, inputs, 100, 1000) == []
    inputs.switch = False
    drive(ctl, inputs, 1000, 1010)
    inputs.switch = True
    assert drive(ctl, inputs, 1010, 1020) == [1010]


def test_switch_chatter_never_beats_the_pulse_rate():
    # Found by the stateful test: a tap, a release and a tap fired twice in 2 ms.
    ctl, inputs = armed_controller()
    ctl.arm()
    fired = []
    for ms in range(1, 3000):
        inputs.switch = (ms // 3) % 2 == 1  # 3 ms on, 3 ms off
        ctl.host_seen(ms * 1000)
        if ctl.step(ms * 1000, inputs) is not None:
            fired.append(ms)
    assert fired and all(b - a >= 66 for a, b in zip(fired, fired[1:]))


def test_a_pulse_that_left_late_is_not_followed_by_one_too_soon():
    # The loop decides at 1 ms, but setting up the detector and generator took
    # 4 ms: the pulse left at 5 ms, so the next may not leave before 5 + 66.7.
    ctl, inputs = armed_controller()
    ctl.arm()
    fired = []
    for ms in range(1, 400):
        inputs.switch = ms > 2  # a fresh press
        ctl.host_seen(ms * 1000)
        if ctl.step(ms * 1000, inputs) is not None:
            fired.append(ms + 4)  # when it left the board
            ctl.fired(fired[-1] * 1000)
    gaps = [b - a for a, b in zip(fired, fired[1:])]
    assert len(fired) >= 5 and all(g >= 1000 / 15 for g in gaps), gaps


def test_a_pulse_decided_ahead_by_its_set_up_leaves_on_time_and_the_rate_holds():
    # Set-up takes 4 ms; told so, the controller decides that much (and a
    # margin) ahead, and the board holds the pulse until due_us: pulses leave
    # exactly a period apart instead of a set-up late each (a rate that
    # drifts down), and never sooner.
    ctl, inputs = armed_controller()
    ctl.technique.pulses_per_s = 30.0
    ctl.arm()
    left = []
    us = 0
    while us < 1_000_000:
        us += 250  # the loop's step
        inputs.switch = us > 2000
        ctl.host_seen(us)
        p = ctl.step(us, inputs)
        if p is not None:
            leave = us + 4000 if us + 4000 > p.due_us else p.due_us
            left.append(leave)
            ctl.fired(leave, 4000)
            us = leave
    gaps = [b - a for a, b in zip(left[1:], left[2:])]  # after the first pulse taught it the set-up
    assert len(left) >= 29 and all(g == 33_333 for g in gaps), gaps
    assert controller.LEAD_MARGIN_US + 4000 == ctl.lead_us <= controller.LEAD_MAX_US


def test_minutes_of_host_silence_and_of_idling_go_stale_nowhere():
    # The controller gets ticks, which wrap at 2**30 us, and a difference of
    # ticks is right for up to 2**29 us (9 minutes): no time it keeps may go
    # older than that however long the board idles.
    t = ticks.MASK - 1_000_000  # a wrap 1 s in
    ctl = controller.Controller(dose.Geometry(256, 256), controller.Technique(80, 20, 10, 15), t)
    inputs = controller.Inputs(door_closed=False)
    ctl.arm()
    for _ in range(15 * 60 * 20):  # 15 minutes, the loop waking every 50 ms; the host silent
        t = ticks.add(t, 50_000)
        assert ctl.step(t, inputs) is None
        assert ctl.block == codes.BLOCK_DOOR  # (the first reason, but not the only one kept)
    inputs.door_closed = True
    inputs.switch = True
    for _ in range(100):
        t = ticks.add(t, 1000)
        assert ctl.step(t, inputs) is None  # the link is still lost
    assert ctl.block == codes.BLOCK_LINK
    assert ctl.state == codes.IDLE  # the silence disarmed the board
    # The host comes back after 15 minutes, arms, and a fresh press: the
    # first pulse comes at once, not a stale period later.
    inputs.switch = False
    ctl.host_seen(t)
    ctl.arm()
    t = ticks.add(t, 1000)
    ctl.step(t, inputs)
    inputs.switch = True
    ctl.host_seen(t)
    assert ctl.step(t, inputs) is not None
