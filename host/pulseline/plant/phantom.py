"""The phantom: a water slab plus moving iodine-filled structures.

Attenuation is modelled at one effective energy, kV/2 keV (80 kV -> 40 keV),
which reproduces the SPEC 3 primary transmission through 20 cm of water.
The scene is laid out in millimetres at the detector plane, centred on the
beam axis; the detector sees whatever part of it its field covers.

Structures (all iodine in water; a radiopaque catheter is modelled as its
iodine-equivalent areal density):
  * a tube crossing the field with a bolus of contrast flowing down it,
  * a catheter whose tip advances from the left edge,
  * a vessel whose diameter beats at 1.2 Hz.
They are narrow, so the central-quarter mean signal (what brightness control
reads) stays within a few per cent of the bare slab's.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..mpcompat import import_firmware

F64 = npt.NDArray[np.float64]

PIXEL_PITCH_MM: float = import_firmware("pulsefw.dose").PIXEL_PITCH_MM

# Linear attenuation of water, cm^-1. 40, 60, 80 keV: SPEC 3. 30 and 50 keV:
# NIST XCOM (mu/rho 0.3756 and 0.2269 cm^2/g, density 1 g/cm^3).
WATER_KEV = (30.0, 40.0, 50.0, 60.0, 80.0)
WATER_MU_PER_CM = (0.376, 0.268, 0.227, 0.206, 0.184)

# Mass attenuation of iodine, cm^2/g, NIST XCOM, above the K edge (33.2 keV).
# Below 40 keV effective energy (kV < 80) it is held at the 40 keV value: a
# polychromatic beam's contrast comes mostly from its photons above the K
# edge, so the monoenergetic dip below the edge would understate it.
IODINE_KEV = (40.0, 50.0, 60.0, 80.0)
IODINE_MU_CM2_PER_G = (22.10, 12.32, 7.579, 3.510)

# Contrast bolus in a tube: 4 mm bore crossing the field at 25 degrees; a
# 20 mg I/ml bolus (gamma-variate profile, peak 15 mm behind its front)
# flows at 50 mm/s, injected 1 s after start and every 6 s after that.
TUBE_POINT_MM = (-6.0, 8.0)
TUBE_ANGLE_DEG = 25.0
TUBE_RADIUS_MM = 2.0
BOLUS_START_MM = -90.0  # along the tube from TUBE_POINT_MM, outside any field up to 180 mm
BOLUS_SPEED_MM_S = 50.0
BOLUS_PEAK_BEHIND_MM = 15.0
BOLUS_PEAK_G_CM3 = 0.020
BOLUS_DELAY_S = 1.0
BOLUS_PERIOD_S = 6.0

# Catheter: 1 mm lumen filled with 150 mg I/ml flush, horizontal at y = -14 mm;
# the tip advances at 4 mm/s from x = -70 mm and is pulled back every 35 s.
CATHETER_Y_MM = -14.0
CATHETER_RADIUS_MM = 0.5
CATHETER_G_CM3 = 0.150
CATHETER_START_MM = -70.0
CATHETER_SPEED_MM_S = 4.0
CATHETER_PERIOD_S = 35.0

# Beating vessel: 4 mm mean diameter +-15 % at 1.2 Hz, 15 mg I/ml, near
# vertical at x = +32 mm (outside the central quarter of the default field).
VESSEL_POINT_MM = (32.0, 0.0)
VESSEL_ANGLE_DEG = 100.0
VESSEL_RADIUS_MM = 2.0
VESSEL_PULSATION = 0.15
VESSEL_HZ = 1.2
VESSEL_G_CM3 = 0.015


def _loglog(x: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    """Power law between table points; the end segments extrapolated."""
    lx = math.log(x)
    i = min(max(bisect.bisect_left(xs, x) - 1, 0), len(xs) - 2)
    slope = math.log(ys[i + 1] / ys[i]) / math.log(xs[i + 1] / xs[i])
    return math.exp(math.log(ys[i]) + slope * (lx - math.log(xs[i])))


def effective_energy_kev(kv: float) -> float:
    return kv / 2.0


def water_mu_per_cm(kv: float) -> float:
    return _loglog(effective_energy_kev(kv), WATER_KEV, WATER_MU_PER_CM)


def iodine_mu_cm2_per_g(kv: float) -> float:
    return _loglog(max(effective_energy_kev(kv), IODINE_KEV[0]), IODINE_KEV, IODINE_MU_CM2_PER_G)


def water_transmission(kv: float, water_cm: float) -> float:
    """Primary transmission through the slab alone."""
    return math.exp(-water_mu_per_cm(kv) * water_cm)


@dataclass(frozen=True)
class _Band:
    """Pixels near one straight structure: flat indices and their coordinates
    along and across the structure's axis, mm."""

    index: npt.NDArray[np.intp]
    along_mm: F64
    across_mm: F64


def _band(x_mm: F64, y_mm: F64, point: tuple[float, float], angle_deg: float, half_width_mm: float) -> _Band:
    ux, uy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    dx, dy = x_mm - point[0], y_mm - point[1]
    across = (dx * uy - dy * ux).ravel()
    index = np.flatnonzero(np.abs(across) < half_width_mm)
    return _Band(index, (dx * ux + dy * uy).ravel()[index], across[index])


def _chord_cm(across_mm: F64, radius_mm: float) -> F64:
    """Path length through a cylinder at a distance from its axis, cm."""
    return 0.2 * np.sqrt(np.maximum(radius_mm * radius_mm - across_mm * across_mm, 0.0))


class _Layout:
    """Per-geometry precomputation: pixel coordinates and the structures' bands."""

    def __init__(self, lines: int, pixels: int) -> None:
        x = (np.arange(pixels) - (pixels - 1) / 2.0) * PIXEL_PITCH_MM
        y = (np.arange(lines) - (lines - 1) / 2.0) * PIXEL_PITCH_MM
        xg, yg = np.meshgrid(x, y)
        self.shape = (lines, pixels)
        self.tube = _band(xg, yg, TUBE_POINT_MM, TUBE_ANGLE_DEG, TUBE_RADIUS_MM)
        self.tube_chord_cm = _chord_cm(self.tube.across_mm, TUBE_RADIUS_MM)
        self.catheter = _band(xg, yg, (0.0, CATHETER_Y_MM), 0.0, CATHETER_RADIUS_MM)
        self.catheter_chord_cm = _chord_cm(self.catheter.across_mm, CATHETER_RADIUS_MM)
        self.vessel = _band(xg, yg, VESSEL_POINT_MM, VESSEL_ANGLE_DEG, VESSEL_RADIUS_MM * (1 + VESSEL_PULSATION))
        # Pixels any structure can reach: only these need the exponential.
        self.any_index = np.union1d(np.union1d(self.tube.index, self.catheter.index), self.vessel.index)


def bolus_g_cm3(along_mm: F64, t_s: float) -> F64:
    """Iodine concentration in the tube at positions along it, at time t_s."""
    if t_s < BOLUS_DELAY_S:
        return np.zeros_like(along_mm)
    front_mm = BOLUS_START_MM + BOLUS_SPEED_MM_S * ((t_s - BOLUS_DELAY_S) % BOLUS_PERIOD_S)
    q = np.maximum(front_mm - along_mm, 0.0) / BOLUS_PEAK_BEHIND_MM
    # Gamma-variate (shape 2) normalised to 1 at its peak.
    return BOLUS_PEAK_G_CM3 * q * q * np.exp(2.0 * (1.0 - q))


def catheter_tip_mm(t_s: float) -> float:
    return CATHETER_START_MM + CATHETER_SPEED_MM_S * (t_s % CATHETER_PERIOD_S)


def vessel_radius_mm(t_s: float) -> float:
    return VESSEL_RADIUS_MM * (1.0 + VESSEL_PULSATION * math.sin(2.0 * math.pi * VESSEL_HZ * t_s))


class Phantom:
    def __init__(self, structures: bool = True) -> None:
        self.structures = structures
        self._layouts: dict[tuple[int, int], _Layout] = {}

    def _layout(self, lines: int, pixels: int) -> _Layout:
        key = (lines, pixels)
        if key not in self._layouts:
            self._layouts[key] = _Layout(lines, pixels)
        return self._layouts[key]

    def iodine_g_per_cm2(self, lines: int, pixels: int, t_us: int) -> F64:
        """Iodine areal density map at time t_us (zero with structures off)."""
        areal = np.zeros(lines * pixels)
        if self.structures:
            lay = self._layout(lines, pixels)
            t_s = t_us * 1e-6
            areal[lay.tube.index] += lay.tube_chord_cm * bolus_g_cm3(lay.tube.along_mm, t_s)
            inserted = lay.catheter.along_mm <= catheter_tip_mm(t_s)
            areal[lay.catheter.index[inserted]] += CATHETER_G_CM3 * lay.catheter_chord_cm[inserted]
            areal[lay.vessel.index] += VESSEL_G_CM3 * _chord_cm(lay.vessel.across_mm, vessel_radius_mm(t_s))
        return areal.reshape(lines, pixels)

    def transmission(self, lines: int, pixels: int, t_us: int, kv: float, water_cm: float,
                     structures: bool = True) -> F64:
        """Primary transmission map (lines, pixels) at time t_us for beam kv
        (`structures` False takes them out of the beam for now)."""
        slab = water_transmission(kv, water_cm)
        if not (self.structures and structures):
            return np.full((lines, pixels), slab)
        areal = self.iodine_g_per_cm2(lines, pixels, t_us).ravel()
        out = np.full(lines * pixels, slab)
        near = self._layout(lines, pixels).any_index
        out[near] *= np.exp(-iodine_mu_cm2_per_g(kv) * areal[near])
        return out.reshape(lines, pixels)
