# The controller's safety core: states, permissives, the pulse scheduler and
# the dose-rate guard. Pure logic, board-neutral: the main loop samples the
# HAL's inputs, calls step(), and fires the pulse step() returns (if any).
# docs/safety.md lists the rules this enforces and the tests that show it.
from micropython import const

from . import codes, dose, ticks

LINK_TIMEOUT_US = const(200_000)  # host silent this long: emission stops
LEAD_MARGIN_US = const(1_000)  # on top of the last set-up: the loop's own step
LEAD_MAX_US = const(5_000)  # never decided earlier than this (the switch is read at the decision)
PULSE_RATES = (3.75, 7.5, 15.0, 30.0)
KV_MIN, KV_MAX = 60.0, 120.0
MA_MIN, MA_MAX = 1.0, 80.0
WIDTH_MIN_MS, WIDTH_MAX_MS = 2.0, 20.0
# The guard aims this far below a cap, so generator tolerance cannot carry a
# pulse over it.
GUARD_MARGIN = 0.98



class Inputs:
    """One sample of the operator and interlock inputs."""

    def __init__(self, switch=False, door_closed=True, key_on=True, generator_ready=True, hlc_switch=False):
        self.switch = switch
        self.door_closed = door_closed
        self.key_on = key_on
        self.generator_ready = generator_ready
        self.hlc_switch = hlc_switch


class Technique:
    def __init__(self, kv=80.0, ma=20.0, pulse_width_ms=10.0, pulses_per_s=15.0, hlc_enabled=False):
        self.kv = kv
        self.ma = ma
        self.pulse_width_ms = pulse_width_ms
        self.pulses_per_s = pulses_per_s
        self.hlc_enabled = hlc_enabled

    def period_us(self):
        """The time from one pulse to the next, whole microseconds."""
        return int(1_000_000 / self.pulses_per_s)

    def check(self):
        """None if the technique is allowed, else a one-line reason."""
        if self.pulses_per_s not in PULSE_RATES:
            return "pulse rate must be one of 3.75, 7.5, 15, 30 pps"
        if not KV_MIN <= self.kv <= KV_MAX:
            return "kV must be 60..120"
        if not MA_MIN <= self.ma <= MA_MAX:
            return "mA must be 1..80"
        if not WIDTH_MIN_MS <= self.pulse_width_ms <= WIDTH_MAX_MS:
            return "pulse width must be 2..20 ms"
        if self.pulse_width_ms > 500.0 / self.pulses_per_s:
            return "pulse width must be at most half the pulse period"
        return None


class Pulse:
    """What step() asks the generator to deliver now (valid until the next
    step: the controller reuses one object)."""

    def __init__(self, pulse_id, kv, ma, pulse_width_ms, capped, hlc):
        self.pulse_id = pulse_id
        self.kv = kv
        self.ma = ma
        self.pulse_width_ms = pulse_width_ms
        self.capped = capped  # the guard lowered mA to hold the cap
        self.hlc = hlc  # delivered under high-level control
        self.due_us = 0  # the pulse may not leave before this


class Controller:
    def __init__(self, geometry, technique, now_us):
        self.geometry = geometry
        self.technique = technique
        # BOOT belongs to the main loop's start-up checks; the core itself
        # starts disarmed (set last, below).
        self.fault_code = 0
        self.last_host_us = now_us
        # A press counts only after the switch has been seen released: so a
        # switch held at boot, at arming, or through a trip never exposes.
        self.released_seen = False
        self.next_pulse_us = now_us
        # A pulse is decided this long before it is due (the set-up the last
        # one took, from the loop's clock reading to ready-to-fire), then
        # leaves on time: lateness would move the cadence for good, since
        # no pulse may come sooner than a period after the one before.
        self.lead_us = 0
        self.pulse_id = 0
        self.block = codes.BLOCK_NOT_ARMED
        # Why the board last left armed for IDLE by itself (BLOCK_LINK: the
        # host fell silent), 0 when a command disarmed it: said in the state
        # event, so a host can tell its own lateness from an operator's act.
        self.disarm_cause = 0
        self._pulse = Pulse(0, 0.0, 0.0, 0.0, False, False)  # reused: no allocation per pulse
        self.state = codes.IDLE

    # -- commands (the protocol layer validates arguments first) ------------

    def arm(self):
        if self.state == codes.FAULT:
            return "a fault is latched: reset it first"
        if self.state == codes.IDLE:
            self.state = codes.READY
            self.disarm_cause = 0
            # A pedal already down when arming does not expose.
            self.released_seen = False
        return None

    def disarm(self):
        if self.state != codes.FAULT:
            self.state = codes.IDLE
            self.disarm_cause = 0

    def latch_fault(self, code):
        self.fault_code = code
        self.state = codes.FAULT

    def fault_reset(self):
        if self.state == codes.FAULT:
            self.fault_code = 0
            self.released_seen = False
            self.disarm_cause = 0
            self.state = codes.IDLE

    def host_seen(self, now_us):
        """Any good packet from the host keeps the link alive."""
        self.last_host_us = now_us

    # -- the loop -----------------------------------------------------------

    def _keep_fresh(self, now_us):
        """Ticks wrap, and a difference of two is right only within 2**29 us
        (9 minutes): the times kept here are moved along so that none is
        ever older than that, however long the board idles, whatever else
        blocks it. The next pulse is never earlier than now (a press may come
        an hour after the last pulse); the host's last word is kept just
        past the link timeout (a silence of minutes stays a silence)."""
        if ticks.diff(self.next_pulse_us, now_us) < 0:
            self.next_pulse_us = now_us
        if ticks.diff(now_us, self.last_host_us) > LINK_TIMEOUT_US:
            self.last_host_us = ticks.add(now_us, -LINK_TIMEOUT_US - 1)

    def blocked_by(self, now_us, inputs):
        """The first permissive that is not met (BLOCK_NONE if all are)."""
        self._keep_fresh(now_us)
        if self.state == codes.FAULT:
            return codes.BLOCK_FAULT
        if not inputs.door_closed:
            return codes.BLOCK_DOOR
        if not inputs.key_on:
            return codes.BLOCK_KEY
        if not inputs.generator_ready:
            return codes.BLOCK_GENERATOR
        if ticks.diff(now_us, self.last_host_us) > LINK_TIMEOUT_US:
            return codes.BLOCK_LINK
        if self.state == codes.IDLE:
            return codes.BLOCK_NOT_ARMED
        return codes.BLOCK_NONE

    def fired(self, t_us, setup_us=0):
        """The pulse step() asked for went out at t_us (read just before the
        hardware fired it, no sooner than its due_us), setup_us after the
        clock reading step() decided on: the next pulse comes a whole period
        after it, so a pulse that left late cannot be followed by one too
        soon, and is decided that much ahead of its time."""
        after = ticks.add(t_us, self.technique.period_us())
        if ticks.diff(after, self.next_pulse_us) > 0:
            self.next_pulse_us = after
        lead = setup_us + LEAD_MARGIN_US if setup_us > 0 else 0
        self.lead_us = lead if lead < LEAD_MAX_US else LEAD_MAX_US

    def step(self, now_us, inputs, detector_ready=True):
        """Advance to now_us with the inputs just sampled; returns the Pulse
        to fire now, or None. Called at least once per millisecond, and at
        once when an input changes. A pulse due while the detector is still
        busy with the last frame waits for it (never a pulse without its
        frame)."""
        block = self.blocked_by(now_us, inputs)
        self.block = block
        s = self.state  # (compared one by one: a tuple of codes.* would be built, allocated, each pass)
        armed = s == codes.READY or s == codes.EXPOSING or s == codes.HOLD
        if armed and ticks.diff(now_us, self.last_host_us) > LINK_TIMEOUT_US:
            # The session that armed the board is gone: disarm, so that a
            # later press never exposes for nobody (whatever else blocks).
            self.state = codes.IDLE
            self.disarm_cause = codes.BLOCK_LINK
            self.released_seen = False
            return None
        if not inputs.switch:
            self.released_seen = True
        if self.state == codes.EXPOSING:
            if not inputs.switch:
                self.state = codes.HOLD
                return None
            if block != codes.BLOCK_NONE:
                # A trip latches: back to armed, and only a fresh release
                # and press can expose again, whatever re-closes.
                self.state = codes.READY
                self.released_seen = False
                return None
        elif self.state == codes.READY or self.state == codes.HOLD:
            if inputs.switch and block != codes.BLOCK_NONE:
                # A press made while a permissive is missing is spoiled:
                # closing the door (or the like) must not start X-rays.
                self.released_seen = False
            if not (inputs.switch and self.released_seen and block == codes.BLOCK_NONE):
                if inputs.switch and not self.released_seen and block == codes.BLOCK_NONE:
                    # Only when nothing else stands in the way: the operator
                    # is told the first real reason (door open, ...) first.
                    self.block = codes.BLOCK_NEEDS_RELEASE
                return None
            self.state = codes.EXPOSING
            # The period holds across presses too (next_pulse_us is kept,
            # _keep_fresh): a chattering switch must not fire faster than the
            # pulse rate (the cap assumes it).
            self.released_seen = False
        else:
            return None
        if ticks.diff(self.next_pulse_us, now_us) > self.lead_us or not detector_ready:
            return None
        t = self.technique
        period = t.period_us()
        # Decided early, it leaves when due. A pulse late (the loop stalled,
        # the detector was still busy) moves the cadence: the next one comes
        # a whole period after this one, never sooner, and there is no burst
        # to catch up.
        due = self.next_pulse_us  # (not before now: _keep_fresh)
        self.next_pulse_us = ticks.add(due, period)
        hlc = t.hlc_enabled and inputs.hlc_switch
        cap = dose.CAP_HIGH_LEVEL_MGY_MIN if hlc else dose.CAP_NORMAL_MGY_MIN
        ma_max = self.geometry.max_ma(t.kv, t.pulse_width_ms, t.pulses_per_s, cap * GUARD_MARGIN)
        ma = t.ma if t.ma <= ma_max else ma_max
        self.pulse_id += 1
        p = self._pulse
        p.pulse_id = self.pulse_id
        p.kv = t.kv
        p.ma = ma
        p.pulse_width_ms = t.pulse_width_ms
        p.capped = ma < t.ma
        p.hlc = hlc
        p.due_us = due
        return p
