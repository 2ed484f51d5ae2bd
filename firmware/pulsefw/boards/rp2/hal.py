# The HAL of the Raspberry Pi Pico (RP2040, 125 MHz) and Pico 2 (RP2350,
# 150 MHz). Pins, wiring and the timing of the PIO programs are in
# docs/board.md; the arithmetic is in wiring.py and timing.py (portable,
# tested on the host), the PIO programs in pio.py (run on an emulator in
# tests/test_pio.py). Everything here is the thin layer onto machine and rp2.
import gc
import sys
import time
from array import array

import machine
import rp2
from micropython import const

from pulsefw import journal, ticks
from pulsefw.boards.rp2 import pio, timing, wiring
from pulsefw.hal import Hal

_GATE_SM = const(0)  # PIO0, state machine 0
_READOUT_SM = const(4)  # PIO1, state machine 0
_PIO1_BASE = const(0x50300000)  # the same on the RP2040 and the RP2350
_PIO1_TXF0 = const(_PIO1_BASE + 0x10)
_PIO1_RXF0 = const(_PIO1_BASE + 0x20)
_DREQ_PIO1_TX0 = const(8)
_DREQ_PIO1_RX0 = const(12)
# The watchdog's control register (ENABLE is bit 30): machine.WDT cannot be
# stopped, but a board at the REPL must not reset under mpremote.
_WATCHDOG_CTRL = {"RP2040": 0x40058000, "RP2350": 0x400D8000}
# Its REASON register (CTRL + 8): TIMER (bit 0) when it expired, FORCE (bit 1)
# when a reset was asked for. machine.reset() resets through the watchdog
# too, and machine.reset_cause() says WDT_RESET for both.
_WATCHDOG_REASON_OFFSET = const(8)
_REASON_TIMER = const(1)
# frame_buffer(): the room let go at the top is at least the buffer and
# this much; the fill stops at pieces this small (the holes left are for
# what the placing itself needs), or this many.
_TOP_SLACK_BYTES = const(256)
_GC_FLOOR_BYTES = const(32_000)  # between_frames(): collect when less is free
_PIECE_GAP_BYTES = const(64)  # pieces this close are one room (an object's header between)
_PLACED_WITHIN_BYTES = const(1024)  # a buffer ending this close to its room's top is where it was meant to be
_FILL_MIN_BYTES = const(256)
_FILL_PIECES = const(1024)


class Rp2Hal(Hal):
    BOARD = "rp2"
    LINK_BYTES_PER_S = wiring.LINK_BYTES_PER_S

    def __init__(self):
        chip = "RP2350" if "RP2350" in sys.implementation._machine else "RP2040"
        self.chip = chip
        self.sys_hz = timing.SYS_HZ_PICO2 if chip == "RP2350" else timing.SYS_HZ_PICO
        machine.freq(self.sys_hz)
        P = machine.Pin
        self._inputs = (P(wiring.PIN_SWITCH, P.IN, P.PULL_UP), P(wiring.PIN_DOOR_CLOSED, P.IN, P.PULL_DOWN),
                        P(wiring.PIN_KEY_ON, P.IN, P.PULL_DOWN), P(wiring.PIN_GENERATOR_READY, P.IN, P.PULL_DOWN),
                        P(wiring.PIN_HLC_SWITCH, P.IN, P.PULL_UP))
        self._debounce = wiring.Debouncer(self.ticks_us())
        self._kv_set = machine.PWM(P(wiring.PIN_KV_SET), freq=wiring.PWM_FREQ_HZ, duty_u16=0)
        self._ma_set = machine.PWM(P(wiring.PIN_MA_SET), freq=wiring.PWM_FREQ_HZ, duty_u16=0)
        self._kv_mon = machine.ADC(wiring.PIN_KV_MON)
        self._ma_mon = machine.ADC(wiring.PIN_MA_MON)
        self._gate_pin = P(wiring.PIN_GATE, P.OUT, value=0)
        # Monitor samples taken while the gate is on (detector_poll): the
        # mean of the last pulse. Plain ints: no allocation.
        self._kv_sum = 0
        self._ma_sum = 0
        self._samples = 0
        self._kv = 0.0
        self._ma = 0.0
        self._gate = rp2.StateMachine(_GATE_SM, pio.pulse_gate, freq=timing.GATE_SM_HZ,
                                      sideset_base=self._gate_pin, jmp_pin=P(wiring.PIN_INTERLOCK_OK, P.IN,
                                                                             P.PULL_DOWN))
        self._gate.active(1)
        for n in range(12):
            P(wiring.PIN_DATA0 + n, P.IN)
        self._readout = rp2.StateMachine(_READOUT_SM, pio.line_readout, freq=self.sys_hz,
                                         in_base=P(wiring.PIN_DATA0), sideset_base=P(wiring.PIN_LINE_SYNC))
        self._readout.active(1)
        self._rx_dma = rp2.DMA()
        self._tx_dma = rp2.DMA()
        self._rx_ctrl = self._rx_dma.pack_ctrl(size=2, inc_read=False, inc_write=True, treq_sel=_DREQ_PIO1_RX0)
        self._tx_ctrl = self._tx_dma.pack_ctrl(size=2, inc_read=False, inc_write=False, treq_sel=_DREQ_PIO1_TX0)
        self._line_word = array("I", [0])
        self._buf = None
        self._landed = bytearray(0)
        self._lines = 0
        self._words_per_line = 0
        self._words = 0
        self._marked = 0
        self._wdt = None
        self.storage = journal.FileStore("")  # type: ignore[assignment]  # (the base class says None)
        # The frame buffer's budget: what the heap has now, less the firmware's reserve.
        gc.collect()
        self.MAX_FRAME_BYTES = wiring.frame_budget_bytes(gc.mem_free())
        self._stdin = sys.stdin.buffer
        self._stdout = sys.stdout.buffer
        import select

        self._poller = select.poll()
        self._poller.register(sys.stdin, select.POLLIN)
        self._one = bytearray(1)

    # -- clock ------------------------------------------------------------------------
    def ticks_us(self):
        # The port's own: they wrap at 2**30, the HAL's period (ticks.py).
        # Board time counts from them at boot (the base clock_us).
        return time.ticks_us()

    def wait_until(self, deadline_us):
        # A 1 ms loop: sleep at most 1 ms, and not at all with host bytes waiting.
        dt = ticks.diff(deadline_us, time.ticks_us())
        if dt > 1000:
            dt = 1000
        if dt > 0 and not self._host_waiting():
            time.sleep_us(dt)

    def _host_waiting(self):
        for _ in self._poller.ipoll(0):  # ipoll: no list allocated, unlike poll
            return True
        return False

    # -- inputs -----------------------------------------------------------------------
    def read_inputs(self, inputs):
        s, d, k, g, h = self._inputs
        bits = self._debounce.update(wiring.raw_bits(s.value(), d.value(), k.value(), g.value(), h.value()),
                                     self.ticks_us())
        inputs.switch = bool(bits & wiring.IN_SWITCH)
        inputs.door_closed = bool(bits & wiring.IN_DOOR)
        inputs.key_on = bool(bits & wiring.IN_KEY)
        inputs.generator_ready = bool(bits & wiring.IN_READY)
        inputs.hlc_switch = bool(bits & wiring.IN_HLC)

    # -- generator --------------------------------------------------------------------
    def generator_set(self, kv, ma):
        self._kv_set.duty_u16(wiring.setpoint_duty(kv, wiring.KV_FULL_SCALE))
        self._ma_set.duty_u16(wiring.setpoint_duty(ma, wiring.MA_FULL_SCALE))
        self._kv = kv
        self._ma = ma

    def generator_fire(self, width_us, period_us):
        hc, hf, lc, lf = timing.gate_words(width_us, period_us)
        self._kv_sum = self._ma_sum = self._samples = 0
        g = self._gate
        g.put(hc)
        g.put(hf)
        g.put(lc)
        g.put(lf)
        fired = g.get() != 0  # the gate says at once whether the interlock let it fire
        # The readout starts with the pulse (slot scan): once the gate is on,
        # so that its first line is clocked out under the beam (the gate may
        # rise later than asked: it holds the pulse rate itself).
        if self._buf is not None:
            self._tx_dma.config(read=self._line_word, write=_PIO1_TXF0, count=self._lines, ctrl=self._tx_ctrl,
                                trigger=True)
        return fired

    def emission_off(self):
        # The gate's state machine stopped, its pin taken back from the PIO
        # and driven low: no pulse until the board restarts.
        self._gate.active(0)
        self._gate_pin.init(machine.Pin.OUT, value=0)

    def generator_feedback(self, out):
        n = self._samples
        if n:
            out[0] = wiring.monitor_value(self._kv_sum // n, wiring.KV_FULL_SCALE)
            out[1] = wiring.monitor_value(self._ma_sum // n, wiring.MA_FULL_SCALE)
        else:  # a pulse shorter than the loop: no sample; the setpoints stand in
            out[0] = self._kv
            out[1] = self._ma

    # -- detector ---------------------------------------------------------------------
    def detector_arm(self, frame_buf, landed, lines, pixels, pixel_format):
        self._buf = frame_buf
        self._landed = landed
        self._lines = lines
        self._words_per_line = timing.readout_words_per_line(pixels)
        self._words = lines * self._words_per_line
        self._marked = 0
        self._line_word[0] = timing.readout_line_word(pixels)
        # A frame given up on (lines that never landed) leaves nothing behind.
        self._tx_dma.active(0)
        self._rx_dma.active(0)
        sm = self._readout
        while sm.rx_fifo():
            sm.get()
        self._rx_dma.config(read=_PIO1_RXF0, write=frame_buf, count=self._words, ctrl=self._rx_ctrl, trigger=True)

    def detector_release(self):
        # (The DMA stopped first: it must never write into a buffer let go.)
        self._tx_dma.active(0)
        self._rx_dma.active(0)
        self._buf = None
        self._landed = bytearray(0)

    def between_frames(self):
        # A collection between frames, while the heap still has room: as
        # it fills, each call's frame (from the heap, see frame_buffer) is
        # searched for further up a table full of small holes, and the
        # last tenth of a cycle costs more than the collection. Here it
        # comes at a known moment, not inside an allocation mid-frame.
        if gc.mem_free() < _GC_FLOOR_BYTES:
            gc.collect()

    def frame_buffer(self, nbytes):
        """The frame buffer at the top of the heap. MicroPython on a Pico
        takes a function call's frame from the heap (most of the firmware's
        functions: more than 44 bytes of state) and gives it back on return;
        each such allocation searches the allocation table from its lowest
        free block on. With the frame buffer above free blocks, the search
        crosses its table (tens of thousands of instructions) on every call,
        and the control loop outruns its watchdog. Placed at the top, it
        lies beyond every search but the last before a collection."""
        import uctypes

        # Plug every hole of the heap with pieces (large first: each goes to
        # the lowest hole it fits). The highest run of pieces that holds the
        # buffer is the highest free room it can have: those pieces go, a
        # filler takes the bottom of the room and the buffer the rest, up to
        # its top. Then the filler and the plugs go.
        gc.collect()
        fill: list = [None] * _FILL_PIECES  # (made first: a growing list would land among the pieces)
        made: list = [None, None]  # (the filler and the buffer, let go by name)
        n = 0
        try:
            size = gc.mem_free()
            while size >= _FILL_MIN_BYTES and n < _FILL_PIECES:
                self.watchdog_feed()  # (a failed try collects first: each is a pass over the heap)
                try:
                    fill[n] = bytearray(size)
                except MemoryError:
                    size >>= 1
                    continue
                n += 1
            # (Only holes under _FILL_MIN_BYTES are left: little may be made from here on.)
            del fill[n:]
            fill.sort(key=uctypes.addressof)
            addr = uctypes.addressof
            # The highest room (a run of pieces, each next to the last) that
            # holds the buffer: pieces fill[k..j].
            j = n - 1
            lead = -1
            while j >= 0:
                k = j
                while k > 0 and addr(fill[k]) - addr(fill[k - 1]) - len(fill[k - 1]) <= _PIECE_GAP_BYTES:
                    k -= 1
                top = addr(fill[j]) + len(fill[j])
                lead = top - addr(fill[k]) - nbytes - _TOP_SLACK_BYTES
                if lead >= 0:
                    break
                j = k - 1
            if lead >= 0:
                while j >= k:
                    fill.pop(j)
                    j -= 1
                for _ in range(4):
                    # (A piece let go may still be held a while: a stale
                    # pointer the collector cannot tell from a live one. And
                    # the room may have grown below, as objects there went:
                    # the filler goes where it fits first, and is sized again
                    # from there. The buffer is kept only where it was meant
                    # to be.)
                    gc.collect()
                    try:
                        made[0] = bytearray(lead)
                        made[1] = bytearray(nbytes)
                    except MemoryError:
                        made[0] = made[1] = None
                        continue
                    buf = made[1]
                    start = addr(made[0])
                    made[0] = made[1] = None
                    if addr(buf) + nbytes + _PLACED_WITHIN_BYTES >= top:
                        return buf
                    buf = None
                    lead = top - start - nbytes - _TOP_SLACK_BYTES
                    if lead < 0:
                        break
        except MemoryError:
            pass  # anywhere, as before
        finally:
            fill = []
            gc.collect()
        return bytearray(nbytes)

    def detector_dark(self, width_us):
        self._tx_dma.config(read=self._line_word, write=_PIO1_TXF0, count=self._lines, ctrl=self._tx_ctrl,
                            trigger=True)

    def detector_poll(self):
        if self._gate_pin.value():
            self._kv_sum += self._kv_mon.read_u16()
            self._ma_sum += self._ma_mon.read_u16()
            self._samples += 1
        if self._buf is None:
            return True
        done_words = self._words - self._rx_dma.count  # type: ignore[attr-defined]  # the stubs lack DMA.count
        lines = done_words // self._words_per_line
        landed = self._landed
        while self._marked < lines:
            landed[self._marked] = 1
            self._marked += 1
        return self._marked >= self._lines

    def config_problem(self, config):
        return wiring.config_problem(config.lines_per_frame, config.pixels_per_line, config.pixel_format,
                                     config.pulse_width_ms, self.sys_hz)

    # -- identity ---------------------------------------------------------------------
    def identity(self):
        import binascii

        uid = binascii.hexlify(machine.unique_id()).decode().upper()
        # The detector's own serial needs its front end's ID line (a later
        # board revision); until then it is named after the board it is wired to.
        return "PICO-" + uid, "DET-" + uid

    # -- watchdog and reset -----------------------------------------------------------
    def watchdog_start(self, timeout_ms):
        self._wdt = machine.WDT(timeout=timeout_ms)

    def watchdog_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def watchdog_stop(self):
        ctrl = _WATCHDOG_CTRL[self.chip]
        machine.mem32[ctrl] &= ~(1 << 30)
        self._wdt = None

    def reset_cause(self):
        cause = machine.reset_cause()
        if cause == machine.WDT_RESET:
            # Only an expiry is a stall; machine.reset() (the flash tool's,
            # mpremote's, the reboot command's) is a reset asked for.
            reason = machine.mem32[_WATCHDOG_CTRL[self.chip] + _WATCHDOG_REASON_OFFSET]
            return "watchdog" if reason & _REASON_TIMER else "soft"
        if cause == machine.PWRON_RESET:
            return "power"
        return "soft"

    def reset(self):
        machine.reset()

    # -- host link (USB CDC) ------------------------------------------------------------
    def link_read(self, buf):
        n = 0
        one = self._one
        while n < len(buf) and self._host_waiting():
            if self._stdin.readinto(one) != 1:
                break
            if one[0] == 0x03:
                # Ctrl-C read as data: the USB stack's own interrupt is off
                # while the firmware runs (app.run). Ordinary traffic never
                # holds it (byte stuffing): the REPL is asked for, here, where
                # nothing is half done.
                raise KeyboardInterrupt
            buf[n] = one[0]
            n += 1
        return n

    def link_write(self, data):
        self._stdout.write(data)
