"""Scripted operator inputs, interlocks, scene changes and faults for the plant.

A timeline is a list of timed events. Level signals (the switch, the door,
the kV error...) hold their value from their event on; impulses (`line_loss`,
`stall`) act once. The simulator asks for the state on every loop iteration,
so lookups bisect over change points that are precomputed once per edit.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Value = float | bool

BOOL_SIGNALS = frozenset({"switch", "door_closed", "key_on", "generator_ready", "hlc_switch",
                          "generator_fault", "readout_timeout", "link_down", "structures"})
FLOAT_LEVELS = frozenset({"water_cm", "kv_error", "ma_error"})
IMPULSES = frozenset({"line_loss", "stall"})
LEVEL_SIGNALS = BOOL_SIGNALS | FLOAT_LEVELS
EVENT_NAMES = LEVEL_SIGNALS | IMPULSES
WATER_CM_MIN, WATER_CM_MAX = 0.0, 100.0  # the phantom's slab: an open field up to far beyond any patient

# State before any event. water_cm is the SPEC 3 default slab; the plant
# overrides it with its own configuration.
LEVEL_DEFAULTS: dict[str, Value] = {
    "switch": False,
    "door_closed": True,
    "key_on": True,
    "generator_ready": True,
    "hlc_switch": False,
    "water_cm": 20.0,
    "generator_fault": False,
    "kv_error": 0.0,
    "ma_error": 0.0,
    "readout_timeout": False,
    "link_down": False,
    "structures": True,  # the phantom's moving structures; off with water_cm 0: an open field
}


@dataclass(frozen=True, order=True)
class Event:
    t_us: int
    name: str
    value: Value


def _check(t_us: Any, name: Any, value: Any) -> Event:
    """A validated event, values normalised to bool / float; ValueError otherwise."""
    if not isinstance(name, str) or name not in EVENT_NAMES:
        raise ValueError(f"unknown timeline event {name!r}; known: {', '.join(sorted(EVENT_NAMES))}")
    if isinstance(t_us, bool | np.bool_) or not isinstance(t_us, int | np.integer):
        raise ValueError(f"{name}: t_us must be an integer number of microseconds, got {t_us!r}")
    if t_us < 0:
        raise ValueError(f"{name}: t_us must be >= 0, got {t_us}")
    if name in BOOL_SIGNALS:
        if not isinstance(value, bool | np.bool_):
            raise ValueError(f"{name} at {t_us} us takes True or False, got {value!r}")
        return Event(int(t_us), name, bool(value))
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} at {t_us} us takes a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} at {t_us} us must be finite, got {v}")
    if name == "water_cm" and not WATER_CM_MIN <= v <= WATER_CM_MAX:
        raise ValueError(f"water_cm at {t_us} us must be within {WATER_CM_MIN:g}..{WATER_CM_MAX:g} cm, got {v}")
    if name in ("kv_error", "ma_error") and not -1.0 < v <= 1.0:
        raise ValueError(f"{name} at {t_us} us is a fraction of the setpoint within (-1, 1], got {v}")
    if name == "line_loss" and (v < 0 or not v.is_integer()):
        raise ValueError(f"line_loss at {t_us} us is a whole number of lines >= 0, got {v}")
    if name == "stall" and v < 0:
        raise ValueError(f"stall at {t_us} us is a duration >= 0 us, got {v}")
    return Event(int(t_us), name, v)


class _Index:
    """Change points of one immutable event list."""

    def __init__(self, events: list[Event], defaults: Mapping[str, Value]) -> None:
        self.events = events
        self.times: list[int] = []  # distinct event times, ascending
        self.snapshots: list[dict[str, Value]] = []  # level state after all events at times[i]
        level_t: dict[str, list[int]] = {n: [] for n in LEVEL_SIGNALS}
        level_v: dict[str, list[float]] = {n: [] for n in LEVEL_SIGNALS}
        self.impulse_t: dict[str, list[int]] = {n: [] for n in IMPULSES}
        self.impulse_v: dict[str, list[float]] = {n: [] for n in IMPULSES}
        state = dict(defaults)
        for ev in events:  # sorted by time; ties in insertion order, so the last one wins
            if not self.times or self.times[-1] != ev.t_us:
                self.times.append(ev.t_us)
                self.snapshots.append({})
            if ev.name in IMPULSES:
                self.impulse_t[ev.name].append(ev.t_us)
                self.impulse_v[ev.name].append(float(ev.value))
            else:
                state[ev.name] = ev.value
                ts, vs = level_t[ev.name], level_v[ev.name]
                if ts and ts[-1] == ev.t_us:
                    vs[-1] = float(ev.value)
                else:
                    ts.append(ev.t_us)
                    vs.append(float(ev.value))
            self.snapshots[-1] = dict(state)
        self.level_t_list = level_t  # for scalar lookups: bisect beats numpy on one value
        self.level_v_list = level_v
        self.level_t = {n: np.asarray(level_t[n], np.int64) for n in LEVEL_SIGNALS}
        self.level_v = {n: np.asarray(level_v[n], np.float64) for n in LEVEL_SIGNALS}


class Timeline:
    """Timed events; chainable builders; O(log n) state lookups."""

    def __init__(self, events: Iterable[Event] = (), *, defaults: Mapping[str, Value] | None = None) -> None:
        self.defaults: dict[str, Value] = dict(LEVEL_DEFAULTS)
        self._events: list[Event] = []
        self._index: _Index | None = None
        for name, value in (defaults or {}).items():
            self.set_default(name, value)
        for ev in events:
            if not isinstance(ev, Event):
                raise ValueError(f"timeline entries must be Event, got {ev!r}")
            self.add(ev.t_us, ev.name, ev.value)

    # -- building ------------------------------------------------------------

    def set_default(self, name: str, value: Value) -> Timeline:
        """A level signal's value before its first event."""
        if name not in LEVEL_SIGNALS:
            raise ValueError(f"no default for {name!r}: only level signals have one")
        self.defaults[name] = _check(0, name, value).value
        self._index = None
        return self

    def add(self, t_us: int, name: str, value: Value) -> Timeline:
        self._events.append(_check(t_us, name, value))
        self._index = None
        return self

    def press(self, t_us: int, duration_us: int) -> Timeline:
        """Exposure switch held from t_us for duration_us."""
        if duration_us <= 0:
            raise ValueError(f"press duration must be > 0 us, got {duration_us}")
        return self.add(t_us, "switch", True).add(t_us + duration_us, "switch", False)

    def chatter(self, t_us: int, duration_us: int, period_us: int) -> Timeline:
        """Contact bounce: the switch toggles every period/2 from t_us (starting
        closed) and rests open at t_us + duration_us."""
        if duration_us <= 0 or period_us < 2:
            raise ValueError(f"chatter needs duration > 0 and period >= 2 us, got {duration_us}, {period_us}")
        half = period_us // 2
        closed = True
        for t in range(t_us, t_us + duration_us, half):
            self.add(t, "switch", closed)
            closed = not closed
        return self.add(t_us + duration_us, "switch", False)

    @classmethod
    def random(cls, rng: np.random.Generator, duration_us: int, *, faults: bool = True) -> Timeline:
        """A plausible random session: presses (some with bounce), interlock
        blips, high-level control, slab changes and, optionally, faults."""
        if duration_us <= 0:
            raise ValueError(f"duration must be > 0 us, got {duration_us}")
        tl = cls()
        t = int(rng.integers(0, 300_000))
        while t < duration_us:
            if rng.random() < 0.2:
                bounce_us = int(rng.integers(2_000, 20_000))
                tl.chatter(t, bounce_us, int(rng.integers(1_000, 5_000)))
                t += bounce_us
            hold_us = 1_000 + int(rng.exponential(1_500_000))
            tl.press(t, hold_us)
            t += hold_us + 1_000 + int(rng.exponential(800_000))

        def blips(name: str, active: bool, per_s: float, mean_us: float) -> None:
            for start in np.sort(rng.integers(0, duration_us, rng.poisson(per_s * duration_us / 1e6))):
                tl.add(int(start), name, active)
                tl.add(int(start) + 1_000 + int(rng.exponential(mean_us)), name, not active)

        def steps(name: str, per_s: float, draw: Any, mean_us: float, rest: float) -> None:
            for start in np.sort(rng.integers(0, duration_us, rng.poisson(per_s * duration_us / 1e6))):
                tl.add(int(start), name, draw())
                if mean_us > 0:
                    tl.add(int(start) + 1_000 + int(rng.exponential(mean_us)), name, rest)

        blips("door_closed", False, 0.1, 500_000)
        blips("key_on", False, 0.03, 1_000_000)
        blips("generator_ready", False, 0.05, 200_000)
        blips("hlc_switch", True, 0.1, 2_000_000)
        steps("water_cm", 0.1, lambda: round(float(rng.uniform(10.0, 30.0)), 1), 0, 0.0)
        if faults:
            def error() -> float:
                return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.3))

            blips("generator_fault", True, 0.05, 300_000)
            blips("readout_timeout", True, 0.05, 100_000)
            blips("link_down", True, 0.03, 400_000)
            steps("kv_error", 0.03, error, 1_000_000, 0.0)
            steps("ma_error", 0.03, error, 1_000_000, 0.0)
            steps("line_loss", 0.2, lambda: float(rng.integers(1, 33)), 0, 0.0)
            steps("stall", 0.05, lambda: float(rng.integers(20_000, 400_000)), 0, 0.0)
        return tl

    # -- queries ---------------------------------------------------------------

    def _idx(self) -> _Index:
        if self._index is None:
            order = sorted(range(len(self._events)), key=lambda i: self._events[i].t_us)  # stable: ties keep order
            self._index = _Index([self._events[i] for i in order], self.defaults)
        return self._index

    def __len__(self) -> int:
        return len(self._events)

    def events(self) -> list[Event]:
        """All events by time (simultaneous ones in the order they were added)."""
        return list(self._idx().events)

    def state_at(self, t_us: int) -> dict[str, Value]:
        """Every level signal's value at t_us (events at exactly t_us included)."""
        idx = self._idx()
        i = bisect.bisect_right(idx.times, t_us) - 1
        return dict(idx.snapshots[i]) if i >= 0 else dict(self.defaults)

    def value_at(self, name: str, t_us: int, default: Value | None = None) -> Value:
        """One level signal at t_us; `default` (or the timeline's) before its first event."""
        if name not in LEVEL_SIGNALS:
            raise ValueError(f"{name!r} is not a level signal")
        idx = self._idx()
        i = bisect.bisect_right(idx.level_t_list[name], t_us) - 1
        if i < 0:
            return self.defaults[name] if default is None else default
        v = idx.level_v_list[name][i]
        return bool(v) if name in BOOL_SIGNALS else v

    def level_at_many(self, name: str, times_us: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """One level signal at many times (bools as 0.0 / 1.0), vectorised."""
        if name not in LEVEL_SIGNALS:
            raise ValueError(f"{name!r} is not a level signal")
        idx = self._idx()
        ts, vs = idx.level_t[name], idx.level_v[name]
        i = np.searchsorted(ts, times_us, side="right") - 1
        out = np.full(np.shape(times_us), float(self.defaults[name]), np.float64)
        seen = i >= 0
        out[seen] = vs[i[seen]]
        return out

    def impulses_between(self, name: str, after_us: int, upto_us: int) -> list[float]:
        """Values of impulse events with after_us < t <= upto_us."""
        if name not in IMPULSES:
            raise ValueError(f"{name!r} is not an impulse event")
        idx = self._idx()
        ts = idx.impulse_t[name]
        lo, hi = bisect.bisect_right(ts, after_us), bisect.bisect_right(ts, upto_us)
        return idx.impulse_v[name][lo:hi]

    def next_change_after(self, t_us: int) -> int | None:
        """Time of the first event strictly after t_us, None when there is none."""
        times = self._idx().times
        i = bisect.bisect_right(times, t_us)
        return times[i] if i < len(times) else None

    # -- files -----------------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        """Events as JSON-ready dicts (defaults other than the standard ones are not included)."""
        return [{"t_us": e.t_us, "name": e.name, "value": e.value} for e in self.events()]

    @classmethod
    def from_json(cls, data: Iterable[Any]) -> Timeline:
        """From to_json's dicts, or [t_us, name, value] triples."""
        tl = cls()
        for item in data:
            if isinstance(item, Mapping):
                missing = {"t_us", "name", "value"} - set(item)
                if missing:
                    raise ValueError(f"timeline entry {item!r} lacks {', '.join(sorted(missing))}")
                tl.add(item["t_us"], item["name"], item["value"])
            elif isinstance(item, list | tuple) and len(item) == 3:
                tl.add(item[0], item[1], item[2])
            else:
                raise ValueError(f"timeline entry must be {{t_us, name, value}} or a triple, got {item!r}")
        return tl
