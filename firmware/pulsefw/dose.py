# Dose physics and accounting: air kerma per pulse at the reference point,
# kerma-area product, the dose-rate caps, cumulative totals. Board-neutral:
# no hardware, no allocation per pulse.
#
# Tube output at 1 m for 3.0 mm Al filtration, in uGy per mAs (SPEC 3, after
# the usual published tables; about 0.0242 * kV**1.82). Between and beyond
# the points the output follows the local power law (log-log interpolation).
from math import exp, log

from micropython import const

TUBE_OUTPUT_KV = (60.0, 70.0, 80.0, 90.0, 100.0, 120.0)
TUBE_OUTPUT_UGY_PER_MAS = (40.3, 54.6, 70.2, 86.9, 104.6, 142.3)

# Geometry defaults (SPEC 3), metres.
SOURCE_IMAGE_DISTANCE_M = 1.00
SOURCE_ISOCENTRE_M = 0.75
REFERENCE_POINT_M = 0.60  # 15 cm from the isocentre toward the source
PIXEL_PITCH_MM = 0.4

# Dose-rate caps at the reference point, mGy/min.
CAP_NORMAL_MGY_MIN = 88.0
CAP_HIGH_LEVEL_MGY_MIN = 176.0

FLUORO_ALARM_S = const(300)  # 5 minutes of switch time
NOTIFY_FIRST_UGY = 3_000_000.0  # optional notifications: 3 Gy, then every 1 Gy
NOTIFY_STEP_UGY = 1_000_000.0


def loglog(xs, ys, x):
    """y at x on a table of positive points, by the power law through the
    two bracketing points (the end segments extrapolate)."""
    i = 0
    while i < len(xs) - 2 and x > xs[i + 1]:
        i += 1
    slope = log(ys[i + 1] / ys[i]) / log(xs[i + 1] / xs[i])
    return ys[i] * exp(slope * log(x / xs[i]))


def tube_output_ugy_per_mas(kv):
    """Air kerma per mAs at 1 m for tube voltage kv."""
    return loglog(TUBE_OUTPUT_KV, TUBE_OUTPUT_UGY_PER_MAS, kv)


class Geometry:
    """Where dose is reported, and the field the detector sees."""

    def __init__(self, pixels_per_line, lines_per_frame, pixel_pitch_mm=PIXEL_PITCH_MM,
                 reference_point_m=REFERENCE_POINT_M, source_image_distance_m=SOURCE_IMAGE_DISTANCE_M):
        if not 0.1 <= reference_point_m <= source_image_distance_m:
            raise ValueError("reference point must lie between the source and the detector")
        self.reference_point_m = reference_point_m
        self.source_image_distance_m = source_image_distance_m
        # Field area at the detector, m^2; the kerma-area product is the same
        # at every distance (area grows as kerma falls, both with d^2).
        self.field_area_detector_m2 = (pixels_per_line * pixel_pitch_mm / 1000.0) * (
            lines_per_frame * pixel_pitch_mm / 1000.0)
        self._inv_sq_ref = 1.0 / (reference_point_m * reference_point_m)
        sid = source_image_distance_m
        self._kap_per_ugy_1m = self.field_area_detector_m2 / (sid * sid)

    def pulse_kerma_ugy(self, kv, ma, pulse_width_ms):
        """Air kerma of one pulse at the reference point, uGy."""
        return tube_output_ugy_per_mas(kv) * ma * pulse_width_ms * 0.001 * self._inv_sq_ref

    def pulse_kap_ugy_m2(self, kerma_ref_ugy):
        """Kerma-area product of a pulse whose reference-point kerma is given."""
        kerma_1m = kerma_ref_ugy * self.reference_point_m * self.reference_point_m
        return kerma_1m * self._kap_per_ugy_1m

    def rate_mgy_min(self, kv, ma, pulse_width_ms, pulses_per_s):
        """Air kerma rate at the reference point of a pulsed technique."""
        return self.pulse_kerma_ugy(kv, ma, pulse_width_ms) * pulses_per_s * 60.0 / 1000.0

    def max_ma(self, kv, pulse_width_ms, pulses_per_s, cap_mgy_min):
        """Largest tube current whose rate stays at or below cap_mgy_min."""
        per_ma = self.rate_mgy_min(kv, 1.0, pulse_width_ms, pulses_per_s)
        return cap_mgy_min / per_ma


class Accumulator:
    """A sum of many small positive floats that stays exact to well below
    1e-6 relative on a board whose floats are single precision: whole units
    go to an int, only the fraction stays a float."""

    def __init__(self):
        self.whole = 0
        self.frac = 0.0

    def add(self, x):
        f = self.frac + x
        w = int(f)
        self.whole += w
        self.frac = f - w

    def value(self):
        return self.whole + self.frac

    def reset(self):
        self.whole = 0
        self.frac = 0.0


class DoseAccount:
    """Cumulative exam values: air kerma (uGy), kerma-area product (uGy m^2),
    pulses, fluoroscopy (switch) time, the 5-minute alarm and the optional
    reference-air-kerma notifications."""

    def __init__(self, notify=False):
        self.kerma = Accumulator()
        self.kap = Accumulator()
        self.pulses = 0
        self.switch_s = 0
        self.switch_us = 0  # below one second; whole seconds in switch_s
        self.notify = notify
        self.reset()

    def reset(self):
        self.kerma.reset()
        self.kap.reset()
        self.pulses = 0
        # Switch time as seconds plus microseconds: an hour in microseconds
        # would not fit a 32-bit board's small int.
        self.switch_s = 0
        self.switch_us = 0
        self.next_alarm_s = FLUORO_ALARM_S
        self.next_notify_ugy = NOTIFY_FIRST_UGY

    def add_pulse(self, kerma_ugy, kap_ugy_m2):
        """Account one delivered pulse. Returns True when a dose notification
        level was crossed (only with notify on)."""
        self.kerma.add(kerma_ugy)
        self.kap.add(kap_ugy_m2)
        self.pulses += 1
        if self.notify and self.kerma.value() >= self.next_notify_ugy:
            while self.kerma.value() >= self.next_notify_ugy:
                self.next_notify_ugy += NOTIFY_STEP_UGY
            return True
        return False

    def add_switch_time(self, us):
        """Account switch-held time. Returns True when the 5-minute alarm is
        due (again every further 5 minutes of switch time)."""
        us += self.switch_us
        self.switch_s += us // 1_000_000
        self.switch_us = us % 1_000_000
        if self.switch_s >= self.next_alarm_s:
            while self.switch_s >= self.next_alarm_s:
                self.next_alarm_s += FLUORO_ALARM_S
            return True
        return False

    def fluoro_time_min_tenths(self):
        """Fluoroscopy time in tenths of a minute, as displayed (floor): the
        tenth-minute boundaries fall on whole 6-second marks."""
        return self.switch_s // 6

    def kerma_mgy(self):
        return self.kerma.value() / 1000.0
