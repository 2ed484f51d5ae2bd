# Automatic brightness / dose-rate control: choose kV and mA for the next
# pulse from the detector signal of the last frame.
#
# The signal model is s = S * output(kV) * mAs * exp(-mu(kV) * T): the tube
# output table of dose.py, water attenuation at an effective energy of half
# the kV, and the detector's sensitivity S (ADU per uGy at its entrance,
# a detector calibration constant). Each frame gives the patient's
# water-equivalent thickness T; the controller then solves for the technique
# that hits the target on the usual curve: lowest kV (best contrast) first,
# mA up to its limit, then kV up with mA at the limit. A model that is wrong
# by a constant factor still converges, as T is re-measured every frame.
#
# The dose-rate guard in controller.py clamps every pulse on its own; this
# loop also plans under the cap so that it does not ask for what it cannot
# have, but it is not what holds the cap.
from math import exp, log

from . import dose

# Water, cm^-1, at 30..80 keV (40, 60, 80 keV: SPEC 3; 30, 50 keV: NIST XCOM).
WATER_KEV = (30.0, 40.0, 50.0, 60.0, 80.0)
WATER_MU_PER_CM = (0.376, 0.268, 0.227, 0.206, 0.184)

KV_MAX_ABC = 120.0
T_MAX_CM = 60.0


def water_mu_per_cm(kv):
    # At the effective energy of the filtered beam, about half the kV.
    return dose.loglog(WATER_KEV, WATER_MU_PER_CM, kv * 0.5)


class Brightness:
    def __init__(self, geometry, sensitivity_adu_per_ugy):
        self.geometry = geometry
        self.sensitivity = sensitivity_adu_per_ugy
        self.thickness_cm = -1.0  # last estimate (-1: none yet)

    def _per_mas(self, kv, thickness_cm):
        """Predicted signal per mAs at kv through thickness_cm of water."""
        sid = self.geometry.source_image_distance_m
        return self.sensitivity * dose.tube_output_ugy_per_mas(kv) / (sid * sid) * exp(
            -water_mu_per_cm(kv) * thickness_cm)

    def ma_limit(self, kv, technique, cap_mgy_min, ma_max):
        lim = self.geometry.max_ma(kv, technique.pulse_width_ms, technique.pulses_per_s, cap_mgy_min)
        return lim if lim < ma_max else ma_max

    def update(self, signal_adu, kv, ma, technique, kv_floor, target_adu, cap_mgy_min, ma_min, ma_max):
        """From the signal of a pulse delivered at (kv, ma), set technique.kv
        and technique.ma for the next one."""
        if signal_adu < 1.0:
            signal_adu = 1.0  # no signal at all: assume very thick, go up hard
        mas = ma * technique.pulse_width_ms * 0.001
        t = -log(signal_adu / (self._per_mas(kv, 0.0) * mas)) / water_mu_per_cm(kv)
        t = 0.0 if t < 0.0 else (T_MAX_CM if t > T_MAX_CM else t)
        self.thickness_cm = t
        w = technique.pulse_width_ms * 0.001
        # Lowest kV first.
        ma_req = target_adu / (self._per_mas(kv_floor, t) * w)
        lim = self.ma_limit(kv_floor, technique, cap_mgy_min, ma_max)
        if ma_req <= lim:
            technique.kv = kv_floor
            technique.ma = ma_req if ma_req > ma_min else ma_min
            return
        # Then kV up with mA at its limit: bisect for the target.
        lo, hi = kv_floor, KV_MAX_ABC
        if self._per_mas(hi, t) * self.ma_limit(hi, technique, cap_mgy_min, ma_max) * w < target_adu:
            technique.kv = hi  # too thick: capped, noisier, never a higher rate
            technique.ma = self.ma_limit(hi, technique, cap_mgy_min, ma_max)
            return
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            if self._per_mas(mid, t) * self.ma_limit(mid, technique, cap_mgy_min, ma_max) * w < target_adu:
                lo = mid
            else:
                hi = mid
        technique.kv = hi
        technique.ma = self.ma_limit(hi, technique, cap_mgy_min, ma_max)


def centre_signal(frame_buf, landed, lines, pixels, pixel_format, pedestal_adu):
    """Mean pixel value above the pedestal over the central half of the
    frame in each direction, sampled on a 16 x 16 grid (cheap enough for
    every frame); lines that did not land are left out. None if none did."""
    line_bytes = len(frame_buf) // lines
    total = 0
    n = 0
    for gy in range(16):
        y = lines // 4 + (gy * (lines // 2)) // 16
        if not landed[y]:
            continue
        base = y * line_bytes
        for gx in range(16):
            x = pixels // 4 + (gx * (pixels // 2)) // 16
            if pixel_format == 1:  # Mono16
                o = base + 2 * x
                v = frame_buf[o] | (frame_buf[o + 1] << 8)
            else:  # Mono12p: two pixels in three bytes
                o = base + 3 * (x >> 1)
                if x & 1:
                    v = (frame_buf[o + 1] >> 4) | (frame_buf[o + 2] << 4)
                else:
                    v = frame_buf[o] | ((frame_buf[o + 1] & 0x0F) << 8)
            total += v
            n += 1
    if n == 0:
        return None
    return total / n - pedestal_adu
