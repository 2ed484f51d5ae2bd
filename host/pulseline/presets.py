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


class PresetError(ValueError):
    """A preset that does not exist or does not make sense: one clear line."""


def _from_dict(name: str, raw: Any, source: str) -> Preset:
    if not isinstance(raw, dict):
        raise PresetError(f"{source}: preset {name!r} must be a JSON object")
    known = {f.name for f in fields(Preset)} - {"name"}
    for k, v in raw.items():
        if k not in known:
            raise PresetError(f"{source}: preset {name!r}: unknown setting {k!r} (known: {', '.join(sorted(known))})")
        if v is not None and (not isinstance(v, _TYPES[k]) or (isinstance(v, bool) and bool not in _TYPES[k])):
            raise PresetError(f"{source}: preset {name!r}: {k} must be {_TYPES[k][0].__name__}, got {v!r}")
    for k in ("pulses_per_s", "pulse_width_ms"):
        if k not in raw:
            raise PresetError(f"{source}: preset {name!r} needs {k}")
    p = Preset(name=name, **{"description": "", **raw})
    if p.filter_alpha is not None and not 0 < p.filter_alpha <= 1:
        raise PresetError(f"{source}: preset {name!r}: filter_alpha must be in (0, 1], got {p.filter_alpha}")
    if p.frames is not None and p.frames < 1:
        raise PresetError(f"{source}: preset {name!r}: frames must be at least 1")
    if p.duration_s is not None and not p.duration_s > 0:
        raise PresetError(f"{source}: preset {name!r}: duration_s must be > 0")
    if not p.abc and (p.kv is None or p.ma is None):
        raise PresetError(f"{source}: preset {name!r}: without brightness control it needs kv and ma")
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
