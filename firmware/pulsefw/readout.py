# Detector readout and line packetiser: one frame buffer, allocated when the
# geometry is set (at boot or by a configuration change, never per frame);
# the detector lands a pulse's lines in it during the pulse (slot scan) and
# this module sends each landed line as a LINE packet, in line order,
# straight from the buffer (no copy).
import gc
from struct import pack_into

from micropython import const

from . import ticks, wire

# A readout that is not over this long after the pulse has ended has failed.
READOUT_TIMEOUT_US = const(50_000)
# The line views in lists of 32 (configure).
_VIEWS_SHIFT = const(5)
_VIEWS_PER_LIST = const(1 << _VIEWS_SHIFT)
_VIEWS_MASK = const(_VIEWS_PER_LIST - 1)


class Readout:
    def __init__(self, hal, tx, lines, pixels, pixel_format):
        self.hal = hal
        # Bound once: taking hal.link_write in pump() would make a new bound
        # method object (an allocation) on every loop pass.
        self._write = hal.link_write
        self.tx = tx
        self.busy = False
        self.lines_sent_total = 0
        self.lines_lost_total = 0
        self.frames_total = 0
        self.configure(lines, pixels, pixel_format)

    def configure(self, lines, pixels, pixel_format):
        """Allocate for a new geometry (only while no frame is in flight)."""
        self.enc = wire.LineEncoder(pixels, lines, pixel_format)
        self.lines = lines
        self.pixels = pixels
        self.pixel_format = pixel_format
        # Every reference to the old buffer goes before the new one is made
        # (its line views, the HAL's, the DMA's): a Pico's heap cannot hold a
        # 256 x 256 frame and a 128 x 128 one at once.
        if getattr(self, "frame_buf", None) is not None:
            self.line_views = []
            self.frame_buf = bytearray(0)
            self.landed = bytearray(0)
            self.hal.detector_release()
            gc.collect()
        pb = self.enc.pixel_bytes
        self.frame_buf = self.hal.frame_buffer(lines * pb)
        self.landed = bytearray(lines)
        self._zeros = bytes(lines)
        mv = memoryview(self.frame_buf)
        # One view per line, made once: sending a line allocates nothing.
        # Kept in lists of _VIEWS_PER_LIST: MicroPython's collector marks
        # an object's children from a stack of 64, and a list of more
        # overflows it, which costs a pass over the whole heap (on a Pico,
        # 12 ms of each collection for one list of 256).
        self.line_views = [[mv[i * pb:(i + 1) * pb] for i in range(k, min(k + _VIEWS_PER_LIST, lines))]
                           for k in range(0, lines, _VIEWS_PER_LIST)]

    def arm(self, frame_id, pulse_id, t_us, t_hi, width_us):
        """Read the next frame: the pulse starts at the tick t_us, in the
        t_hi'th wrap of the ticks (board time t_hi * 2**30 + t_us)."""
        self.landed[:] = self._zeros
        self.frame_id = frame_id
        self.pulse_id = pulse_id
        self.t_us = t_us
        self.t_hi = t_hi
        self.width_us = width_us
        self.deadline_us = ticks.add(t_us, width_us + READOUT_TIMEOUT_US)
        self.next_line = 0
        self.lines_sent = 0
        self.over = False
        self.busy = True
        self.hal.detector_arm(self.frame_buf, self.landed, self.lines, self.pixels, self.pixel_format)

    def started(self, t_us, t_hi):
        """The pulse left at t_us (in the t_hi'th wrap), a moment after the
        time arm() was given: its lines are stamped from then."""
        self.t_us = t_us
        self.t_hi = t_hi
        self.deadline_us = ticks.add(t_us, self.width_us + READOUT_TIMEOUT_US)

    def cancel(self):
        self.busy = False

    def pump(self, now_us, max_lines):
        """Send up to max_lines landed lines. True when the frame is over:
        every line that landed has been sent and no more will land."""
        if not self.busy:
            return False
        if not self.over:
            self.over = self.hal.detector_poll() or ticks.diff(now_us, self.deadline_us) >= 0
        landed = self.landed
        n = self.next_line
        sent = 0
        write = self._write
        tx = self.tx
        t0 = self.t_us
        hi = self.t_hi
        step = self.width_us // self.lines  # slot scan: line i is read at t0 + i * step
        enc = self.enc
        head = enc.head
        crc = enc.crc
        frame_id = self.frame_id
        pulse_id = self.pulse_id
        views = self.line_views
        while n < self.lines and sent < max_lines:
            if landed[n]:
                ts = ticks.add(t0, n * step)
                pixels = views[n >> _VIEWS_SHIFT][n & _VIEWS_MASK]
                # LineEncoder.write_line, written out: on a Pico a call's
                # frame this large is a heap allocation (more than 44 bytes
                # of state), which searches the heap's table; two calls a
                # line were most of a frame's time there.
                wire.put_seq_and_check(head, tx.next_seq(), enc.check_part, enc.check_scratch)
                pack_into("<IH", head, wire.HEADER_SIZE, frame_id, n)
                pack_into("<I", head, wire.HEADER_SIZE + 12, pulse_id)
                wire.put_u64(head, wire.HEADER_SIZE + 16, hi + 1 if ts < t0 else hi, ts)
                wire.crc32_into(crc, 0, enc.crc_part, pixels)
                write(head)
                write(pixels)
                write(crc)
                sent += 1
            elif not self.over:
                break  # not landed yet
            else:
                self.lines_lost_total += 1  # never landed: the host sees it missing
            n += 1
        self.next_line = n
        self.lines_sent += sent
        self.lines_sent_total += sent
        if n >= self.lines and self.over:
            self.busy = False
            self.frames_total += 1
            return True
        return False
