"""Safety rules of the controller core (SPEC 2.5), as a hypothesis stateful
test over random switch, interlock, link, fault and arming timelines in
virtual time. The judge does not reuse the controller's logic: it checks
every pulse against the recorded timeline of samples.

Rule checked for every pulse at time t (the "fresh, clean press" rule): there
is a sample r < t with the switch released, after the last arming and the
last fault reset, such that at every sample in (r, t] the switch is held, the
door is closed, the key is on, the generator is ready, no fault is latched
and the host was heard within 200 ms. This covers: no pulse without every
permissive; none after release; a trip latches and re-closing never restarts
X-rays; a switch held at boot or at arming does not expose; link loss stops
emission within 200 ms. Besides: pulses keep the period (no bursts) and every
pulse's rate stays under the cap in force.

The controller gets the board's ticks, which wrap at 2**30 us; the judge
keeps whole time. Runs start anywhere, just before a wrap among others, and
may idle for many minutes (longer than the ticks' half period) between
presses, with or without the host.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pulseline.mpcompat import import_firmware

controller = import_firmware("pulsefw.controller")
codes = import_firmware("pulsefw.codes")
dose = import_firmware("pulsefw.dose")
ticks = import_firmware("pulsefw.ticks")

LOOP_US = 1000  # the firmware loop samples inputs every millisecond


@dataclass
class Sample:
    t: int
    switch: bool
    permitted: bool  # door, key, generator, link, no fault
    hlc: bool


class ControllerRules(RuleBasedStateMachine):
    @initialize(switch_at_boot=st.booleans(), pps=st.sampled_from([3.75, 7.5, 15.0, 30.0]),
                kv=st.floats(60, 120), ma=st.floats(1, 80), width=st.floats(2, 20), hlc_enabled=st.booleans(),
                arm_at_boot=st.booleans(),
                start=st.one_of(st.sampled_from([0, (1 << 30) - 300_000, (7 << 30) - 1]), st.integers(0, 1 << 40)))
    def boot(self, switch_at_boot, pps, kv, ma, width, hlc_enabled, arm_at_boot=False, start=0):
        width = min(width, 500.0 / pps)
        self.tech = controller.Technique(kv, ma, width, pps, hlc_enabled)
        assert self.tech.check() is None
        self.geometry = dose.Geometry(256, 256)
        self.now = start
        self.inputs = controller.Inputs(switch=switch_at_boot)
        self.host_alive = True
        self.last_host = start
        self.fault = False
        self.ctl = controller.Controller(self.geometry, self.tech, self.now & ticks.MASK)
        self.samples: list[Sample] = []
        self.reset_marks: list[int] = [start]  # arming and fault resets: a press must start after them
        self.pulses: list[tuple[int, float, bool]] = []
        if arm_at_boot:
            self.arm()

    # -- the world changes ---------------------------------------------------

    @rule(held=st.booleans())
    def switch(self, held):
        self.inputs.switch = held

    # Pressing and releasing with time passing: an operator's actions, so the
    # search reaches exposures (and their interruptions) often.
    @rule(ms=st.integers(1, 600))
    def press(self, ms):
        self.inputs.switch = True
        self._advance(ms)

    @rule(ms=st.integers(1, 300))
    def release(self, ms):
        self.inputs.switch = False
        self._advance(ms)

    @rule(closed=st.booleans())
    def door(self, closed):
        self.inputs.door_closed = closed

    @rule(on=st.booleans())
    def key(self, on):
        self.inputs.key_on = on

    @rule(ready=st.booleans())
    def generator(self, ready):
        self.inputs.generator_ready = ready

    @rule(held=st.booleans())
    def hlc_switch(self, held):
        self.inputs.hlc_switch = held

    @rule(alive=st.booleans())
    def host_link(self, alive):
        self.host_alive = alive

    def _command(self):
        """A command from the host is a packet from it: the link is alive."""
        self.ctl.host_seen(self.now & ticks.MASK)
        self.last_host = self.now

    @rule()
    def arm(self):
        # Arming from IDLE starts a new arming; arming when already armed
        # (or exposing) changes nothing, and a latched fault refuses it.
        self._command()
        was_idle = self.ctl.state == codes.IDLE
        if self.ctl.arm() is None and was_idle:
            self.reset_marks.append(self.now)

    @rule()
    def disarm(self):
        self._command()
        self.ctl.disarm()

    @rule()
    def inject_fault(self):
        self.ctl.latch_fault(7)
        self.fault = True

    @rule()
    def fault_reset(self):
        self._command()
        if self.fault:
            self.ctl.fault_reset()
            self.fault = False
            self.reset_marks.append(self.now)

    # -- time passes -----------------------------------------------------------

    @rule(ms=st.integers(1, 400))
    def run(self, ms):
        self._advance(ms)

    # Minutes pass with the switch released, the loop waking every 50 ms (its
    # longest sleep): past 2**29 us a difference of ticks would wrap if any
    # time went stale.
    @rule(minutes=st.integers(9, 10), host=st.booleans())
    def long_idle(self, minutes, host):
        self.inputs.switch = False  # the operator away
        self.host_alive = host
        self._advance(minutes * 60_000 // 50, step_us=50_000)

    def _advance(self, steps, step_us=LOOP_US):
        for _ in range(steps):
            self.now += step_us
            if self.host_alive:
                self.ctl.host_seen(self.now & ticks.MASK)
                self.last_host = self.now
            i = self.inputs
            permitted = (i.door_closed and i.key_on and i.generator_ready and not self.fault
                         and self.now - self.last_host <= controller.LINK_TIMEOUT_US)
            self.samples.append(Sample(self.now, i.switch, permitted, i.hlc_switch))
            p = self.ctl.step(self.now & ticks.MASK, i)
            if p is not None:
                rate = self.geometry.rate_mgy_min(p.kv, p.ma, p.pulse_width_ms, self.tech.pulses_per_s)
                self.pulses.append((self.now, rate, p.hlc))
                self.judge_pulse(p)

    def judge_pulse(self, p):
        now = self.now
        last_mark = self.reset_marks[-1]
        # Walk back through the press that led here.
        press_start = None
        for s in reversed(self.samples):
            if not s.switch:
                press_start = s.t
                break
            assert s.permitted, f"pulse at {now} us: a permissive was lost at {s.t} us during this press"
        assert press_start is not None, f"pulse at {now} us without a release since boot"
        assert press_start >= last_mark, f"pulse at {now} us: the press began before arming or fault reset"
        # Rate under the cap in force at this pulse.
        hlc = self.tech.hlc_enabled and self.inputs.hlc_switch
        cap = dose.CAP_HIGH_LEVEL_MGY_MIN if hlc else dose.CAP_NORMAL_MGY_MIN
        rate = self.geometry.rate_mgy_min(p.kv, p.ma, p.pulse_width_ms, self.tech.pulses_per_s)
        assert rate <= cap, f"rate {rate:.1f} mGy/min over the {cap} cap"
        assert p.hlc == hlc
        assert p.ma <= self.tech.ma + 1e-9 and p.kv == self.tech.kv

    def teardown(self):
        # Steer the search toward timelines that expose (and so test more).
        target(float(len(getattr(self, "pulses", []))), label="pulses")

    @invariant()
    def pulses_keep_their_period(self):
        if len(self.pulses) >= 2:
            period = 1_000_000 / self.tech.pulses_per_s
            (t0, _, _), (t1, _, _) = self.pulses[-2], self.pulses[-1]
            assert t1 - t0 >= period - LOOP_US, f"pulses {t1 - t0} us apart, period {period:.0f} us"
            p = self.ctl._pulse
            assert p.due_us == t1 & ticks.MASK  # decided when due (no lead: set-up is instant here)

    @precondition(lambda self: len(self.samples) > 0)
    @invariant()
    def state_matches_what_it_does(self):
        if self.fault:
            assert self.ctl.state == codes.FAULT
        if self.now - self.last_host > controller.LINK_TIMEOUT_US:
            # The session that armed the board is gone: never armed for nobody.
            assert self.ctl.state in (codes.IDLE, codes.FAULT), codes.STATE_NAMES[self.ctl.state]


ControllerRules.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestControllerRules = ControllerRules.TestCase
