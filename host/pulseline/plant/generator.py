"""X-ray generator with a grid-controlled tube: what it actually delivers.

The high voltage stays on between pulses; the grid gates the tube current.
So kV follows its setpoint with a slew (and a small ripple), the current rises
and falls with a short time constant, and each unit has a small fixed
accuracy bias. The waveform of every pulse is sampled so that the reference
meter can integrate it, and the generator's own measuring circuit reports the
pulse means with a little noise (the feedback the firmware sees).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..mpcompat import import_firmware

F64 = npt.NDArray[np.float64]

_fwdose = import_firmware("pulsefw.dose")

# Hardware limits (SPEC 2.5: technique kV 60..120 within hardware 40..125;
# the one-shot takes 1..25 ms, wider than the firmware's 2..20 ms).
KV_MIN, KV_MAX = 40.0, 125.0
MA_MIN, MA_MAX = 0.0, 100.0
WIDTH_MIN_US, WIDTH_MAX_US = 1_000, 25_000

TUBE_TAU_US = 20.0  # grid switching: tube current rise/fall time constant
KV_SLEW_KV_PER_US = 20.0e-3  # 20 kV/ms: a high-frequency generator charging the HV cable and tank
RIPPLE_FRACTION = 0.005  # +-0.5 % sinusoidal ripple of a high-frequency generator
RIPPLE_HZ = 3_000.0
BIAS_LIMIT = 0.003  # fixed per-unit accuracy bias on kV and mA, within +-0.3 %
FEEDBACK_NOISE = 0.002  # measuring circuit: uniform within +-0.2 %

# Integration grid: dense on the current's edges, a dozen samples per ripple
# period in between; the tail runs 12 time constants (e**-12 of the charge left).
_EDGE_SAMPLES = 49
_EDGE_US = 12.0 * TUBE_TAU_US
_STEP_US = 1e6 / RIPPLE_HZ / 12.0

_TABLE_LOG_KV = np.log(np.asarray(_fwdose.TUBE_OUTPUT_KV, np.float64))
_TABLE_LOG_OUT = np.log(np.asarray(_fwdose.TUBE_OUTPUT_UGY_PER_MAS, np.float64))
_TABLE_SLOPE = np.diff(_TABLE_LOG_OUT) / np.diff(_TABLE_LOG_KV)


def tube_output_ugy_per_mas(kv: npt.ArrayLike) -> F64:
    """Air kerma per mAs at 1 m (SPEC 3 table, the firmware's), vectorised.

    Same rule as pulsefw.dose: the power law through the two bracketing table
    points, the end segments extrapolated. No output at or below 0 kV."""
    kv_arr = np.asarray(kv, np.float64)
    log_kv = np.log(np.maximum(kv_arr, 1e-9))
    seg = np.clip(np.searchsorted(_TABLE_LOG_KV, log_kv, side="left") - 1, 0, len(_TABLE_SLOPE) - 1)
    out: F64 = np.exp(_TABLE_LOG_OUT[seg] + _TABLE_SLOPE[seg] * (log_kv - _TABLE_LOG_KV[seg]))
    return np.where(kv_arr > 0.0, out, 0.0)


@dataclass(frozen=True)
class _Grid:
    t_rel_us: F64  # sample times from the gate opening
    weights_us: F64  # trapezoid weights over the whole waveform (gate + tail)
    gate_weights_us: F64  # trapezoid weights over the gate only [0, width]
    current_shape: F64  # tube current per mA of setpoint


@functools.lru_cache(maxsize=64)
def _grid(width_us: int) -> _Grid:
    w = float(width_us)
    edge = min(w, _EDGE_US)
    rise = np.linspace(0.0, edge, _EDGE_SAMPLES)
    mid = np.linspace(edge, w, max(2, math.ceil((w - edge) / _STEP_US) + 1))
    tail = w + np.linspace(0.0, _EDGE_US, _EDGE_SAMPLES)
    t = np.unique(np.concatenate([rise, mid, tail]))
    dt = np.diff(t)
    weights = np.zeros_like(t)
    weights[:-1] += dt / 2
    weights[1:] += dt / 2
    n_gate = int(np.searchsorted(t, w, side="right"))
    gate = np.zeros_like(t)
    gate[: n_gate - 1] += dt[: n_gate - 1] / 2
    gate[1:n_gate] += dt[: n_gate - 1] / 2
    # First-order grid switching: rises to the setpoint, then decays from
    # wherever it got to; over rise + tail the charge equals setpoint * width.
    peak = 1.0 - math.exp(-w / TUBE_TAU_US)
    rising = 1.0 - np.exp(-np.minimum(t, w) / TUBE_TAU_US)
    shape = np.where(t <= w, rising, peak * np.exp(-np.maximum(t - w, 0.0) / TUBE_TAU_US))
    for arr in (t, weights, gate, shape):
        arr.flags.writeable = False
    return _Grid(t, weights, gate, shape)


@dataclass(frozen=True)
class Waveform:
    """One pulse as delivered: sampled kV(t) and mA(t) with integration weights."""

    start_us: int
    width_us: int
    t_us: F64  # absolute sample times
    kv: F64
    ma: F64
    weights_us: F64
    gate_weights_us: F64

    @property
    def kv_mean(self) -> float:
        """Time-mean tube voltage while the gate is open."""
        return float(self.gate_weights_us @ self.kv) / self.width_us

    @property
    def ma_mean(self) -> float:
        """Charge (tail included) over the width: mean mA * width = delivered mAs."""
        return float(self.weights_us @ self.ma) / self.width_us


class Generator:
    """Setpoints, HV slew, accuracy bias and the pulse waveform."""

    def __init__(self, bias_rng: np.random.Generator) -> None:
        kv_bias, ma_bias = bias_rng.uniform(-BIAS_LIMIT, BIAS_LIMIT, 2)
        self.kv_bias = float(kv_bias)
        self.ma_bias = float(ma_bias)
        self.kv_set = 0.0
        self.ma_set = 0.0
        self.has_technique = False
        # HV off at power-up; each setpoint slews from wherever the HV is.
        self._t_set_us = 0
        self._hv_from_kv = 0.0
        self._hv_to_kv = 0.0

    def set(self, t_us: int, kv: float, ma: float) -> None:
        if not (math.isfinite(kv) and KV_MIN <= kv <= KV_MAX):
            raise ValueError(f"kV setpoint {kv} outside the generator's {KV_MIN:g}..{KV_MAX:g} kV")
        if not (math.isfinite(ma) and MA_MIN <= ma <= MA_MAX):
            raise ValueError(f"mA setpoint {ma} outside the generator's {MA_MIN:g}..{MA_MAX:g} mA")
        self._hv_from_kv = float(self.hv_kv(np.asarray(float(t_us))))
        self._t_set_us = t_us
        self._hv_to_kv = kv * (1.0 + self.kv_bias)
        self.kv_set, self.ma_set = float(kv), float(ma)
        self.has_technique = True

    def hv_kv(self, t_us: F64) -> F64:
        """High voltage (bias included, ripple and faults not) at absolute times."""
        elapsed = np.maximum(t_us - self._t_set_us, 0.0)
        step = self._hv_to_kv - self._hv_from_kv
        return self._hv_from_kv + math.copysign(1.0, step) * np.minimum(abs(step), KV_SLEW_KV_PER_US * elapsed)

    def waveform(self, t_us: int, width_us: int, kv_error: float = 0.0, ma_error: float = 0.0) -> Waveform:
        """The pulse gated at t_us for width_us; kv/ma_error are injected faults
        (fractional error of the delivered value)."""
        grid = _grid(width_us)
        t_abs = t_us + grid.t_rel_us
        ripple = 1.0 + RIPPLE_FRACTION * np.sin((2.0 * math.pi * RIPPLE_HZ * 1e-6) * t_abs)
        kv = self.hv_kv(t_abs) * (1.0 + kv_error) * ripple
        ma = (self.ma_set * (1.0 + self.ma_bias) * (1.0 + ma_error)) * grid.current_shape
        return Waveform(t_us, width_us, t_abs, kv, ma, grid.weights_us, grid.gate_weights_us)

    @staticmethod
    def feedback(wave: Waveform, noise_rng: np.random.Generator) -> tuple[float, float]:
        """(kV, mA) means of a pulse as the generator's measuring circuit reports them."""
        e_kv, e_ma = noise_rng.uniform(-FEEDBACK_NOISE, FEEDBACK_NOISE, 2)
        return wave.kv_mean * (1.0 + float(e_kv)), wave.ma_mean * (1.0 + float(e_ma))
