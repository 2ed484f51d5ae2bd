"""Named protocol presets for `pulseline capture`: a technique (pulse rate,
pulse width, kV/mA or brightness control), the recursive noise filter, how
long to expose, the detector readout, and on a simulated board the phantom.

Built-in presets are below; a JSON file of more (`--presets FILE` or
$PULSELINE_PRESETS) adds to them or replaces them by name:

    {"my-peds": {"description": "...", "pulses_per_s": 3.75, "pulse_width_ms": 4,
                 "abc": true, "filter_alpha": 0.25, "duration_s": 10, "water_cm": 12}}

Options given on the command line win over the preset's values.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import PulselineError
from ..mpcompat import import_firmware
from ..plant.timeline import WATER_CM_MAX, WATER_CM_MIN

_controller = import_firmware("pulsefw.controller")
_config = import_firmware("pulsefw.config")

# The longest exposure a preset or `capture --duration` asks for. No
# procedure comes near a day: more is a slip (ms for s, a digit too many),
# and the frame count made of it must stay an ordinary number (1e308 s at
# any rate overflows). MAX_FRAMES: that day at the fastest rate.
MAX_DURATION_S = 24 * 3600.0
MAX_FRAMES = int(MAX_DURATION_S * max(_controller.PULSE_RATES))


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    pulses_per_s: float
    pulse_width_ms: float
    abc: bool = True  # brightness control; False: the manual kv/ma below
    kv: float | None = None
    ma: float | None = None
    filter_alpha: float | None = None  # recursive filter y = a*x + (1-a)*y_prev; None: off
    frames: int | None = None
    duration_s: float | None = None
    lines_per_frame: int | None = None  # None: the board's current readout
    pixels_per_line: int | None = None
    water_cm: float | None = None  # the phantom, on a simulated board only

    def settings(self) -> dict[str, Any]:
        """The board settings (set_config) this preset asks for."""
        out: dict[str, Any] = {"pulses_per_s": self.pulses_per_s, "pulse_width_ms": self.pulse_width_ms,
                               "abc_enabled": self.abc}
        for k in ("kv", "ma", "lines_per_frame", "pixels_per_line"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out

    def frame_count(self) -> int | None:
        if self.frames is not None:
            return self.frames
        if self.duration_s is not None:
            return max(1, round(self.duration_s * self.pulses_per_s))
        return None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# Pulse widths and rates follow common fluoroscopy protocols: low rates
# and short pulses for children and long procedures, higher rates where
# motion matters (cardiac), manual technique for phantoms and QA. Every
# one fits USB full speed at its readout (SPEC 3: ~1.1 MB/s).
BUILTIN: dict[str, Preset] = {p.name: p for p in (
    Preset("fluoro-low", "low-dose fluoroscopy: 3.75 pps, brightness control, strong noise filter",
           3.75, 8.0, filter_alpha=0.25, duration_s=8.0),
    Preset("fluoro-normal", "general fluoroscopy: 7.5 pps, brightness control, moderate noise filter",
           7.5, 10.0, filter_alpha=0.5, duration_s=4.0),
    Preset("paediatric", "children: 3.75 pps, 4 ms pulses, brightness control, 12 cm phantom",
           3.75, 4.0, filter_alpha=0.25, duration_s=8.0, water_cm=12.0),
    Preset("cardiac", "cardiac motion: 15 pps, 5 ms pulses, 256 x 128 readout (fits USB full speed)",
           15.0, 5.0, filter_alpha=0.75, duration_s=4.0, lines_per_frame=128),
    Preset("bolus-chase", "contrast run: 7.5 pps, brightness control, no filter (no lag on moving contrast)",
           7.5, 8.0, duration_s=8.0),
    Preset("qa-80kv", "quality assurance: manual 80 kV 20 mA 10 ms at 7.5 pps, SPEC worked check, 20 cm water",
           7.5, 10.0, abc=False, kv=80.0, ma=20.0, frames=16, water_cm=20.0),
)}

_TYPES: dict[str, tuple[type, ...]] = {
    "description": (str,), "pulses_per_s": (int, float), "pulse_width_ms": (int, float), "abc": (bool,),
    "kv": (int, float), "ma": (int, float), "filter_alpha": (int, float), "frames": (int,),
    "duration_s": (int, float), "lines_per_frame": (int,), "pixels_per_line": (int,), "water_cm": (int, float),
}
_KINDS = {(str,): "text", (bool,): "true or false", (int,): "a whole number", (int, float): "a number"}
# Allowed values, lowest..highest: the firmware's and the plant's own limits.
# JSON numbers can be 1e999 (inf) and json also reads NaN and Infinity: no
# such value is within any of these. filter_alpha and duration_s must be
# above their lowest (an "off" filter is no filter_alpha; no exposure is none).
_RANGES: dict[str, tuple[float, float]] = {
    "pulse_width_ms": (_controller.WIDTH_MIN_MS, _controller.WIDTH_MAX_MS),
    "kv": (_controller.KV_MIN, _controller.KV_MAX), "ma": (_controller.MA_MIN, _controller.MA_MAX),
    "filter_alpha": _config.FIELDS["filter_alpha"][1:], "frames": (1, MAX_FRAMES), "duration_s": (0, MAX_DURATION_S),
    "lines_per_frame": _config.FIELDS["lines_per_frame"][1:], "pixels_per_line": _config.FIELDS["pixels_per_line"][1:],
    "water_cm": (WATER_CM_MIN, WATER_CM_MAX),
}
_ABOVE_LOWEST = frozenset({"filter_alpha", "duration_s"})


class PresetError(PulselineError, ValueError):
    """A preset that does not exist or does not make sense: one clear line."""


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _is_kind(v: Any, types: tuple[type, ...]) -> bool:
    return isinstance(v, types) and not (isinstance(v, bool) and bool not in types)  # JSON true is no number


def _check_value(k: str, v: Any) -> str | None:
    """Why `v` is no good for setting `k` (its type, its range), or None."""
    types = _TYPES[k]
    if not _is_kind(v, types):
        return f"must be {_KINDS[types]}"
    if k == "pulses_per_s":
        rates = _controller.PULSE_RATES
        return None if v in rates else f"must be one of {', '.join(map(_n, rates))} pps"
    if k in _RANGES:
        lo, hi = _RANGES[k]
        above = k in _ABOVE_LOWEST
        # A nan fails every comparison; a whole number is compared as it is
        # (float(10**400) would overflow).
        if not ((lo < v if above else lo <= v) and v <= hi):
            return f"must be more than {_n(lo)} and at most {_n(hi)}" if above else f"must be within {_n(lo)}..{_n(hi)}"
    return None


def _shown(v: Any) -> str:
    """A value as the file has it, short."""
    if isinstance(v, dict | list):
        return "an object" if isinstance(v, dict) else "a list"
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_dict(name: str, raw: Any, source: str) -> Preset:
    where = f"{source}: preset {name!r}"
    if not isinstance(raw, dict):
        raise PresetError(f"{where} must be a JSON object")
    known = {f.name for f in fields(Preset)} - {"name"}
    optional = {f.name for f in fields(Preset) if f.default is None}  # null: not set
    for k, v in raw.items():
        if k not in known:
            raise PresetError(f"{where}: unknown setting {k!r} (known: {', '.join(sorted(known))})")
        if v is None and k in optional:
            continue
        why = _check_value(k, v)
        if why:
            raise PresetError(f"{where}: {k} {why}, got {_shown(v)}")
    for k in ("pulses_per_s", "pulse_width_ms"):
        if k not in raw:
            raise PresetError(f"{where} needs {k}")
    p = Preset(name=name, **{"description": "", **raw})
    if p.pulse_width_ms > 500.0 / p.pulses_per_s:  # as the firmware's Technique.check
        raise PresetError(f"{where}: pulse_width_ms {_n(p.pulse_width_ms)} is more than half the period at "
                          f"{_n(p.pulses_per_s)} pps (at most {_n(500.0 / p.pulses_per_s)})")
    if not p.abc and (p.kv is None or p.ma is None):
        raise PresetError(f"{where}: without brightness control it needs kv and ma")
    return p


def load(path: Path | None = None) -> dict[str, Preset]:
    """Built-in presets plus those of `path` (or $PULSELINE_PRESETS)."""
    out = dict(BUILTIN)
    if path is None and os.environ.get("PULSELINE_PRESETS"):
        path = Path(os.environ["PULSELINE_PRESETS"])
    if path is None:
        return out
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise PresetError(f"cannot read presets file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PresetError(f"presets file {path} is not valid JSON: {exc}") from None
    except RecursionError:  # nested deeper than the interpreter recurses
        raise PresetError(f"presets file {path} is nested too deeply to be presets") from None
    if not isinstance(raw, dict):
        raise PresetError(f"presets file {path} must hold a JSON object of named presets")
    for name, body in raw.items():
        out[name] = _from_dict(name, body, str(path))
    return out


def get(name: str, path: Path | None = None) -> Preset:
    presets = load(path)
    if name not in presets:
        raise PresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(presets))}")
    return presets[name]
