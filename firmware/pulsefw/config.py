# The board's configuration: technique, detector geometry and pixel format,
# brightness control, high-level control, the host's filter setting, and
# the checks that keep every combination safe and within the link. A change
# is validated as a whole and applied only when all of it is good.
from . import codes, controller, wire

FIELDS = {
    # name: (type, minimum, maximum); None bounds are checked elsewhere
    "kv": (float, controller.KV_MIN, controller.KV_MAX),
    "ma": (float, controller.MA_MIN, controller.MA_MAX),
    "pulse_width_ms": (float, controller.WIDTH_MIN_MS, controller.WIDTH_MAX_MS),
    "pulses_per_s": (float, None, None),
    "pixels_per_line": (int, 16, 4096),
    "lines_per_frame": (int, 16, 4096),
    "pixel_format": (int, wire.FMT_MONO16, wire.FMT_MONO12P),
    "abc_enabled": (bool, None, None),
    "abc_target_adu": (float, 50.0, 60000.0),
    "hlc_enabled": (bool, None, None),
    "filter_alpha": (float, 0.0, 1.0),
    "dose_notify": (bool, None, None),
}


class Config:
    def __init__(self):
        self.kv = 80.0
        self.ma = 20.0
        self.pulse_width_ms = 10.0
        self.pulses_per_s = 7.5
        self.pixels_per_line = 256
        self.lines_per_frame = 256
        self.pixel_format = wire.FMT_MONO12P
        self.abc_enabled = False
        self.abc_target_adu = 800.0  # detector signal above the pedestal, centre region
        self.hlc_enabled = False
        self.filter_alpha = 0.0  # recursive filter on the host; 0 = off
        self.dose_notify = False

    def as_dict(self):
        return {name: getattr(self, name) for name in FIELDS}

    def copy(self):
        c = Config()
        for name in FIELDS:
            setattr(c, name, getattr(self, name))
        return c

    def technique(self):
        return controller.Technique(self.kv, self.ma, self.pulse_width_ms, self.pulses_per_s, self.hlc_enabled)

    def data_rate_bytes_per_s(self):
        """Board->host bytes per second of image data at this configuration."""
        line = wire.HEADER_SIZE + wire.LINE_HEADER_SIZE + wire.pixel_bytes(
            self.pixels_per_line, self.pixel_format) + wire.CRC_SIZE
        frame = line * self.lines_per_frame + wire.HEADER_SIZE + wire.TRAILER_SIZE + wire.CRC_SIZE
        return frame * self.pulses_per_s


def _coerce(name, value):
    """The value as the field's type, or raise (code, message)."""
    kind, lo, hi = FIELDS[name]
    if kind is bool:
        if value is not True and value is not False:
            raise ValueError((codes.ERR_BAD_ARGUMENT, name + " must be true or false"))
        return value
    # JSON numbers; a bool is not a number here.
    if value is True or value is False or not isinstance(value, (int, float)):
        raise ValueError((codes.ERR_BAD_ARGUMENT, name + " must be a number"))
    if kind is int:
        if isinstance(value, float):
            if value != int(value):
                raise ValueError((codes.ERR_BAD_ARGUMENT, name + " must be a whole number"))
            value = int(value)
    else:
        value = float(value)
    if lo is not None and not lo <= value <= hi:
        raise ValueError((codes.ERR_OUT_OF_RANGE, "%s must be %s..%s (got %s)" % (name, lo, hi, value)))
    return value


def updated(config, changes, link_bytes_per_s, max_frame_bytes):
    """A new Config with `changes` (a dict from the host) applied, or raise
    ValueError((code, message)). `config` itself is never modified."""
    if not isinstance(changes, dict):
        raise ValueError((codes.ERR_BAD_ARGUMENT, "arguments must be a JSON object"))
    new = config.copy()
    for name in changes:
        if name not in FIELDS:
            raise ValueError((codes.ERR_BAD_ARGUMENT, "unknown setting " + str(name)))
        setattr(new, name, _coerce(name, changes[name]))
    reason = new.technique().check()
    if reason:
        raise ValueError((codes.ERR_OUT_OF_RANGE, reason))
    frame_bytes = new.lines_per_frame * wire.pixel_bytes(new.pixels_per_line, new.pixel_format)
    if frame_bytes > max_frame_bytes:
        raise ValueError((codes.ERR_OUT_OF_RANGE, "a %d x %d frame needs %d bytes; this board holds %d" % (
            new.pixels_per_line, new.lines_per_frame, frame_bytes, max_frame_bytes)))
    rate = new.data_rate_bytes_per_s()
    if rate > link_bytes_per_s:
        raise ValueError((codes.ERR_LINK_BUDGET, "%d x %d px at %s pps needs %d bytes/s; the link carries %d" % (
            new.pixels_per_line, new.lines_per_frame, new.pulses_per_s, int(rate), int(link_bytes_per_s))))
    return new
