# The hardware abstraction layer: everything the firmware needs from a board,
# and nothing else. docs/hal.md is the prose of this file. The controller,
# dose, brightness, readout and protocol modules see only this interface; a
# board provides one implementation in its folder, boards/<board>/hal.py (sim: the simulated board; the
# rp2 HAL: the Raspberry Pi Pico). This base class raises for every call, so
# a board that forgets one fails loudly at once.
#
# Rules every implementation keeps:
# - No call blocks longer than stated; none allocates on the hot path
#   (read_inputs, generator_*, detector_poll, link_*, watchdog_feed).
# - Times are microseconds: ticks (ticks_us) that wrap at 2**30, as
#   MicroPython's own do on a 32-bit board, compared and offset only with
#   ticks.diff and ticks.add, so none is ever a long integer.

from . import ticks


class Hal:
    BOARD = "none"
    # Board->host link capacity, bytes/s: configurations above it are refused.
    LINK_BYTES_PER_S = 1_000_000
    # Largest frame buffer this board can hold, bytes.
    MAX_FRAME_BYTES = 100_000

    # -- clock ----------------------------------------------------------------
    def ticks_us(self):
        """Microsecond ticks, 0..ticks.MASK, wrapping at 2**30 (the board's
        time.ticks_us on a Pico). Allocates nothing."""
        raise NotImplementedError

    def clock_us(self):
        """The board's time now, whose low 30 bits are ticks_us(): read once,
        at boot, to start the board time the host sees (ticks.BoardClock).
        A board with no longer clock counts from its ticks."""
        return self.ticks_us()

    def wait_until(self, deadline_us):
        """Sleep until the tick deadline_us, or less: return early when an
        input changes or host bytes arrive (a board may simply poll: the rp2
        HAL returns after at most 1 ms). Never sleeps past the deadline."""
        raise NotImplementedError

    def wait_exactly(self, deadline_us):
        """Return at the tick deadline_us, not before and as little after as
        the board can: a busy wait, for the moment a pulse is due (at most a
        few milliseconds)."""
        while ticks.diff(deadline_us, self.ticks_us()) > 0:
            pass

    # -- operator inputs and interlocks ---------------------------------------
    def read_inputs(self, inputs):
        """Fill a controller.Inputs with the debounced inputs: switch,
        door_closed, key_on, generator_ready, hlc_switch."""
        raise NotImplementedError

    # -- generator ------------------------------------------------------------
    def generator_set(self, kv, ma):
        """Technique setpoints for the next pulse (the generator settles
        between pulses)."""
        raise NotImplementedError

    def generator_fire(self, width_us, period_us):
        """Fire one pulse of width_us now; the hardware ends it. period_us
        is the technique's pulse period: hardware that can (the rp2 board's
        PIO) holds off the next pulse until then. Returns False when the
        hardware interlock chain refused it."""
        raise NotImplementedError

    def emission_off(self):
        """Stop emission now and hold it off until the board restarts: no
        pulse leaves after this returns (the firmware is leaving for the
        REPL or a reset). Not on the hot path."""
        raise NotImplementedError

    def generator_feedback(self, out):
        """Measured mean kV and mA of the last pulse into out[0], out[1]
        (a preallocated array('f', 2)); valid once the pulse has ended."""
        raise NotImplementedError

    # -- detector -------------------------------------------------------------
    def detector_arm(self, frame_buf, landed, lines, pixels, pixel_format):
        """Read the next pulse's frame into frame_buf (lines x line bytes in
        the wire pixel format); set landed[i] = 1 as line i lands."""
        raise NotImplementedError

    def detector_release(self):
        """Let go of the frame buffer and its line flags: a new geometry's
        are about to be made, and a board's heap may not hold both."""

    def between_frames(self):
        """Called once a frame's trailer has gone, before the next pulse is
        decided: a board may tidy its heap here. Not on the per-pass path;
        takes at most a few tens of milliseconds."""

    def frame_buffer(self, nbytes):
        """A new frame buffer of nbytes, made once per geometry (not on the
        hot path): where in the heap is the board's choice."""
        return bytearray(nbytes)

    def detector_dark(self, width_us):
        """Read the armed frame with the beam off (for dark-field
        calibration): the line clock runs as for a pulse of width_us and
        nothing fires. The lines land as after a pulse."""
        raise NotImplementedError

    def detector_poll(self):
        """Move landed lines into the armed buffer. True once the readout is
        over (every line that will land has)."""
        raise NotImplementedError

    def config_problem(self, config):
        """Why this board cannot run a configuration.Config, beyond its
        RAM (MAX_FRAME_BYTES) and link (LINK_BYTES_PER_S), in one line; None
        if it can. The base board has no limits of its own."""
        return None

    # -- identity -------------------------------------------------------------
    def identity(self):
        """(board serial, detector serial) as strings, read once at boot:
        the dose report names the device, a calibration its detector."""
        raise NotImplementedError

    # -- watchdog -------------------------------------------------------------
    def watchdog_start(self, timeout_ms):
        raise NotImplementedError

    def watchdog_feed(self):
        raise NotImplementedError

    def watchdog_stop(self):
        """Only on the way to the REPL (Ctrl-C, exit_to_repl): a board at the
        prompt must not reset under mpremote."""
        raise NotImplementedError

    def reset_cause(self):
        """'power', 'watchdog' or 'soft': why the board last started."""
        raise NotImplementedError

    def reset(self):
        """Restart the board (machine.reset on hardware)."""
        raise NotImplementedError

    # -- storage (the journal's filesystem) -----------------------------------
    # `storage` is an object with read(name) -> bytes, append(name, data)
    # and replace(name, data) (atomic), as journal.FileStore.
    storage = None

    # -- host link ------------------------------------------------------------
    def link_read(self, buf):
        """Copy waiting host bytes into buf; return how many (0: none).
        Never blocks."""
        raise NotImplementedError

    def link_write(self, data):
        """Send all of data to the host."""
        raise NotImplementedError
