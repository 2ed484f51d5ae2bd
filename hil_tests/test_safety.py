"""Safety rules of docs/safety.md, observed from outside the board: what
the host sees, judged against the plant's record of what was emitted."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.needs_plant


def pulses_between(plant, t0_us, t1_us):
    return [p for p in plant.model.pulses if t0_us <= p.t_us < t1_us]


def rule(n, text):
    """An assertion message that names the rule of docs/safety.md broken."""
    return f"safety rule {n} broken: {text}"


def test_no_exposure_without_arming(session, plant, clock):
    t0 = plant.press()
    ev = clock.wait_for(lambda: next((e for e in session.events if e.name == "blocked"), None), 2,
                        "the board saying why it does not expose")
    assert ev.body["reason"] == "not armed"
    clock.sleep(0.5)
    assert pulses_between(plant, t0, 10**15) == [], rule(1, "pulses while the board was not armed")


def test_release_stops_emission(session, plant, clock):
    session.arm()
    plant.press()
    clock.wait_for(lambda: len(plant.model.pulses) >= 3, 5, "three pulses")
    t_release = plant.release()
    clock.wait_for(lambda: session.wait_event("state", 0, state="HOLD"), 2, "HOLD after release")
    clock.sleep(0.3)
    late = pulses_between(plant, t_release, 10**15)
    assert late == [], rule(2, f"{len(late)} pulses after the switch was released")


def test_an_interlock_trip_latches_until_a_fresh_press(session, plant, clock):
    session.arm()
    plant.press()
    clock.wait_for(lambda: len(plant.model.pulses) >= 2, 5, "two pulses")
    t_open = plant.set("door_closed", False)
    clock.sleep(0.3)
    t_close = plant.set("door_closed", True)  # re-closing, switch still held
    clock.sleep(0.5)
    late = pulses_between(plant, t_open, 10**15)
    assert late == [], rule(3, f"{len(late)} pulses after the door opened (re-closing it restarted X-rays?)")
    refused = plant.model.refused
    assert refused == [], rule(1, f"the firmware fired with the door open: the hardware interlock chain refused "
                                  f"{len(refused)} pulses")
    # The host is told why the exposure stopped, then why it does not restart.
    reasons = [e.body["reason"] for e in session.events if e.name == "blocked"]
    assert reasons[:2] == ["door open", "release the switch first"], rule(3, f"the host was told {reasons}")
    plant.release()
    assert t_close > t_open


def test_a_switch_held_at_arming_does_not_expose(session, plant, clock):
    t0 = plant.press()
    clock.sleep(0.2)
    session.arm()
    clock.sleep(0.5)
    assert pulses_between(plant, t0, 10**15) == [], rule(4, "a switch held while arming started exposure")
    plant.release()
    clock.sleep(0.1)
    t1 = plant.press()  # a fresh press does
    clock.wait_for(lambda: pulses_between(plant, t1, 10**15), 3, "a pulse after a fresh press")
    plant.release()
