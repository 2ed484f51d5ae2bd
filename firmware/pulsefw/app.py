# The firmware's main loop: samples the HAL, runs the controller, fires the
# pulses it returns, sends the lines and trailers, accounts the dose, keeps
# the displays, alarms and journal, and answers the host. Board-neutral: the
# board's HAL is passed in (main.py picks it).
from array import array

import micropython
from micropython import const

from . import brightness, codes, commands, config, controller, dose, ident, journal, readout, ticks, tx, wire

WATCHDOG_MS = const(100)
MAX_SLEEP_US = const(50_000)  # the loop runs at least this often: half the watchdog timeout
READOUT_POLL_US = const(1_000)  # while lines are landing
DOSE_DISPLAY_US = const(500_000)  # dose displays twice a second while exposing
# The open event's record is checkpointed this often while exposing: a power
# cut at any instant loses at most this much of its dose (SPEC 2.5: 1 s).
CHECKPOINT_US = const(500_000)
# A packet whose bytes stop coming this long (the link timeout) never ends:
# it is dropped, so that a host that died mid-write cannot leave the board
# deaf, nor have its later bytes taken for the rest of that packet.
RX_GAP_US = const(200_000)
LINES_PER_PUMP = const(32)  # lines sent per loop pass: the loop stays within ~1 ms on a board
# Host bytes taken per loop pass. A burst is answered over several passes,
# each of which feeds the watchdog: the 21 heartbeats (400 bytes) a host sent
# while a Pico booted after a watchdog reset, answered in its first pass,
# took that pass past the 100 ms watchdog, and the board reset again, for
# ever. A command of 1 kB (the decoder's most) takes 16 passes.
RX_PER_PASS = const(64)

# Delivered technique must stay this close to the setpoint, or a fault latches.
KV_TOLERANCE = 0.05
MA_TOLERANCE = 0.10
# Detector sensitivity for brightness control, ADU per uGy at the detector
# entrance: the simulated detector's nominal value; a real detector's comes
# from its calibration.
DETECTOR_ADU_PER_UGY = 14400.0
DETECTOR_PEDESTAL_ADU = 100.0

# What the readout holds while the configuration is over the board's budget:
# nothing exposes then, and the firmware still answers.
_IDLE_LINES = const(8)
_IDLE_PIXELS = const(8)


# Why an irradiation event ended before its release ("interrupted" in its
# journal record): the firmware left for the REPL, or the board was reset or
# lost power mid-press (found at the next boot, by its reset cause).
INTERRUPTED_BY_CAUSE = {"power": "power", "watchdog": "watchdog", "soft": "reset"}


class Press:
    """The irradiation event in progress: one press of the switch. Its start
    and end are board time (the journal's); the checkpoint is a tick."""

    def __init__(self, event_id, now_us, board_us, t):
        self.event_id = event_id
        self.start_us = board_us
        self.end_us = board_us
        # The irradiation itself: the first pulse's start to the last
        # pulse's trailing edge (board time; 0 until a pulse is accounted).
        self.pulse_start_us = 0
        self.pulse_end_us = 0
        self.pulses = 0
        self.capped = 0
        self.hlc = False
        self.kerma = dose.Accumulator()
        self.kap = dose.Accumulator()
        self.kv_sum = 0.0
        self.ma_sum = 0.0
        self.pulse_width_ms = t.pulse_width_ms
        self.pulses_per_s = t.pulses_per_s
        self.next_checkpoint_us = now_us  # the first, as soon as a pulse is accounted; then every CHECKPOINT_US
        self.interrupted = None  # why it ended before its release, if it did


class App:
    def __init__(self, hal):
        self.hal = hal
        # Board time for the host: the ticks extended past their wraps.
        self.clock = ticks.BoardClock(hal.clock_us())
        now = hal.ticks_us()
        self.clock.seen(now)
        self.boot_us = self.clock.us(now)
        self.last_us = now
        self.running = True
        self.tx = tx.Tx(hal.link_write, self.clock)
        self.config = config.Config()
        c = self.config
        self.geometry = dose.Geometry(c.pixels_per_line, c.lines_per_frame)
        self.ctl = controller.Controller(self.geometry, c.technique(), now)
        self.ctl.state = codes.BOOT
        self.account = dose.DoseAccount(c.dose_notify)
        self.decoder = wire.CommandDecoder(1024)
        self.rxbuf = bytearray(RX_PER_PASS)
        self._on_packet_bound = self._on_packet  # (bound once: a bound method per pass would allocate)
        self._rx_now = now
        self.rx_last_us = now  # when the host's last byte came (RX_GAP_US)
        self.packets_bad_version = 0
        # The host session this board answers (hello's "session"): a hello
        # from another one disarms, as the session that armed is gone.
        self.session = None
        # The board's budget first: a frame buffer the RAM cannot give is
        # never asked for. The fault says why, and a configure that fits
        # (then fault_reset) brings the board back.
        budget = self.budget_problem(c)
        if budget:
            self.readout = readout.Readout(hal, self.tx, _IDLE_LINES, _IDLE_PIXELS, c.pixel_format)
        else:
            self.readout = readout.Readout(hal, self.tx, c.lines_per_frame, c.pixels_per_line, c.pixel_format)
        self.abc = brightness.Brightness(self.geometry, DETECTOR_ADU_PER_UGY)
        self.feedback = array("f", [0.0, 0.0])
        self.inputs = controller.Inputs()
        self.switch_before = False
        self.frame_id = 0
        # Dark frames (beam off) still to read for a calibration, when the
        # next is due, and whether the frame in flight is one.
        self.dark_left = 0
        self.next_dark_us = 0
        self.frame_dark = False
        self.serial, self.detector_serial = hal.identity()
        self._firmware_hash = None
        self.press = None  # the irradiation event in progress
        # Events that have ended, until their last pulse is accounted and
        # they are committed (a new press may already have started).
        self.closing = []
        self.pend_press = None  # the event the pulse in flight belongs to
        # The pulse in flight, until accounted (pulse_id, frame_id, t0, t1,
        # kv, ma, width_ms, capped, hlc), then what it delivered (kv, ma,
        # kerma, kap): filled in place (see _keep_pend).
        self.pend = [0, 0, 0, 0, 0.0, 0.0, 0.0, False, False]
        self.pend_dose = [0.0, 0.0, 0.0, 0.0]
        self.pend_done = True
        self.trailer_due = False
        self.rate_mgy_min = 0.0
        self.next_display_us = 0
        self.alarm_5min = False
        self.hlc_tone = False
        self.pulses_refused = 0
        self.pulses_withheld = 0  # refused by the hardware as the switch was released
        self.commands_bad = 0
        self.fault_message = ""
        self.state_sent = -1
        self.exam_id = 0
        self.event_id = 0
        # Hashed now, before the watchdog runs: every file of the firmware
        # read and hashed takes a Pico longer than the watchdog's timeout,
        # which the first hello (that reports it) used to meet.
        self.firmware_hash()
        # The high voltage settles long before the first pulse can be asked for.
        hal.generator_set(c.kv, c.ma)
        self.journal = None
        journal_error = None
        cause = hal.reset_cause()
        recovered = None
        # The journal is read whole and an interrupted event committed before
        # the watchdog runs: on a Pico a long journal takes longer than its
        # timeout, and a watchdog reset there came back to the same read, for
        # ever. (Nothing can emit before the loop runs: the watchdog guards
        # the loop.)
        try:
            j = journal.Journal(hal.storage)
            self.journal = j
            recovered = self._recover(j, cause)
            self._restore()
        except (OSError, ValueError, KeyError) as exc:
            self.journal = None
            journal_error = "journal unreadable: %s" % exc
        hal.watchdog_start(WATCHDOG_MS)
        self.tx.event(codes.EV_BOOT, now, {"firmware": ident.FIRMWARE_VERSION, "protocol": wire.PROTOCOL_VERSION,
                                        "board": hal.BOARD, "serial": self.serial, "reset_cause": cause,
                                        "exam": self.exam_id})
        if recovered is not None:
            self._irradiation_event(recovered, now)
        # Boot checks done: disarmed. A switch held now does not expose
        # (the controller needs to see it released first).
        self.ctl.state = codes.IDLE
        self._state_event(now)
        if budget:
            self.fault(codes.FAULT_CONFIG, now, "the %d x %d configuration does not fit this %s board: %s" % (
                c.pixels_per_line, c.lines_per_frame, hal.BOARD, budget))
        elif journal_error:
            self.fault(codes.FAULT_STORAGE, now, journal_error)
        elif cause == "watchdog":
            self.fault(codes.FAULT_WATCHDOG_RESET, now, "the control loop stalled")

    # -- configuration and checks -----------------------------------------------

    def apply_config(self, new):
        """Take a validated configuration (never while a frame is in flight)."""
        old = self.config
        self.config = new
        if new.pixels_per_line != old.pixels_per_line or new.lines_per_frame != old.lines_per_frame:
            self.geometry = dose.Geometry(new.pixels_per_line, new.lines_per_frame)
            self.ctl.geometry = self.geometry
            self.abc.geometry = self.geometry
        r = self.readout  # (it may hold a stand-in geometry: see budget_problem)
        if (new.pixels_per_line != r.pixels or new.lines_per_frame != r.lines
                or new.pixel_format != r.pixel_format):
            r.configure(new.lines_per_frame, new.pixels_per_line, new.pixel_format)
        # Brightness control starts again from the operator's technique.
        self.ctl.technique = new.technique()
        self.account.notify = new.dose_notify
        self.hal.generator_set(new.kv, new.ma)

    def budget_problem(self, c):
        """Why this board cannot run configuration c (its RAM, its link, or
        limits of its own), in one line; None if it can."""
        try:
            config.updated(c, {}, self.hal.LINK_BYTES_PER_S, self.hal.MAX_FRAME_BYTES)
        except ValueError as exc:
            return exc.args[0][1]
        return self.hal.config_problem(c)

    def firmware_hash(self):
        if self._firmware_hash is None:
            try:
                self._firmware_hash = ident.firmware_hash()
            except OSError as exc:
                self._firmware_hash = "unknown (%s)" % exc
        return self._firmware_hash

    def block_name(self):
        return codes.BLOCK_NAMES[self.ctl.block]

    def storage_writable(self):
        """Whether the journal's filesystem takes a write now (checked at
        arming: an exposure whose dose cannot be recorded must not start)."""
        try:
            self.hal.storage.replace("selftest.bin", b"pulseline self-test")
            return self.hal.storage.read("selftest.bin") == b"pulseline self-test"
        except OSError:
            return False

    def self_test(self, now):
        """Checks that need no X-rays. Latches FAULT_SELF_TEST on a failure."""
        checks = {"clock": ticks.diff(self.hal.ticks_us(), now) >= 0}
        j = self.journal
        ok = j is not None
        if j is not None and j.last is not None:
            got = j.read(j.last[0], 1)
            ok = len(got) == 1 and got[0] == j.last
        checks["journal"] = ok
        checks["storage"] = self.storage_writable()
        r = self.readout
        checks["frame_buffer"] = len(r.frame_buf) == r.lines * r.enc.pixel_bytes
        checks["technique"] = self.config.technique().check() is None
        checks["budget"] = self.budget_problem(self.config) is None
        failed = [k for k in checks if not checks[k]]
        if failed:
            self.fault(codes.FAULT_SELF_TEST, now, "self-test failed: " + ", ".join(failed))
        return checks

    # -- journal --------------------------------------------------------------

    def _recover(self, j, cause):
        """An event cut short by a reset or power loss: its last checkpoint
        committed to journal j, marked interrupted (the record, or None)."""
        rec = j.unfinished()
        if rec is None:
            return None
        rec["final"] = True
        rec["interrupted"] = INTERRUPTED_BY_CAUSE.get(cause, cause)
        j.append(rec)
        return rec

    def _restore(self):
        """Cumulative exam values from the last committed record."""
        last = self.journal.last if self.journal is not None else None
        if last is None:
            return
        rec = last[1]
        self.exam_id = rec.get("exam", 0)
        self.event_id = rec.get("event", 0)
        if rec.get("kind") == "exam":
            return
        a = self.account
        a.kerma.add(rec["total_kerma_ugy"])
        a.kap.add(rec["total_kap_ugy_m2"])
        a.pulses = rec["total_pulses"]
        a.add_switch_time(rec["fluoro_s"] * 1_000_000 + rec.get("fluoro_us", 0))
        a.next_alarm_s = (a.switch_s // dose.FLUORO_ALARM_S + 1) * dose.FLUORO_ALARM_S

    def commit(self, record, now_us):
        if self.journal is None:
            self.fault(codes.FAULT_STORAGE, now_us, "no journal")
            return False
        self.hal.watchdog_feed()  # a board's flash write (an erase: tens of ms) starts with a fresh watchdog
        try:
            self.journal.append(record)
            return True
        except OSError as exc:
            self.fault(codes.FAULT_STORAGE, now_us, str(exc))
            return False

    def new_exam(self, now_us):
        self.exam_id += 1
        self.event_id = 0
        self.account.reset()
        self.alarm_5min = False
        ok = self.commit({"kind": "exam", "exam": self.exam_id}, now_us)
        self.tx.event(codes.EV_EXAM, now_us, {"exam": self.exam_id})
        return ok

    def _press_record(self, p, final):
        a = self.account
        n = p.pulses if p.pulses else 1
        rec = {"kind": "event", "exam": self.exam_id, "event": p.event_id, "final": final,
               "start_us": p.start_us, "end_us": p.end_us, "pulse_start_us": p.pulse_start_us,
               "pulse_end_us": p.pulse_end_us, "pulses": p.pulses, "capped_pulses": p.capped,
               "kv": round(p.kv_sum / n, 2), "ma": round(p.ma_sum / n, 3), "pulse_width_ms": p.pulse_width_ms,
               "pulses_per_s": p.pulses_per_s, "hlc": p.hlc, "kerma_ugy": p.kerma.value(),
               "kap_ugy_m2": p.kap.value(), "total_kerma_ugy": a.kerma.value(),
               "total_kap_ugy_m2": a.kap.value(), "total_pulses": a.pulses, "fluoro_s": a.switch_s,
               "fluoro_us": a.switch_us}
        if p.interrupted:
            rec["interrupted"] = p.interrupted
        return rec

    def _irradiation_event(self, rec, now_us):
        """Tell the host an event is committed (its journal record)."""
        body = {"exam": rec["exam"], "event": rec["event"], "pulses": rec["pulses"],
                "kerma_ugy": rec["kerma_ugy"], "kap_ugy_m2": rec["kap_ugy_m2"]}
        if rec.get("interrupted"):
            body["interrupted"] = rec["interrupted"]
        self.tx.event(codes.EV_IRRADIATION, now_us, body)

    # -- events ---------------------------------------------------------------

    def fault_name(self, code):
        return codes.FAULT_NAMES.get(code, "fault")

    def fault(self, code, now_us, message):
        prev = self.ctl.state
        if prev == codes.FAULT:
            return  # the first fault stays the one reported
        self.ctl.latch_fault(code)
        self.fault_message = message
        self.tx.event(codes.EV_FAULT, now_us, {"code": code, "name": codes.FAULT_NAMES.get(code, "fault"),
                                            "message": message})
        self.state_changed(prev, now_us)

    def host_back(self, now_us):
        """The host speaks after a silence longer than the link timeout: what
        it may have missed (events are not repeated on a live link) is said
        again, so that a latched fault is never news only to the board."""
        if self.ctl.state == codes.FAULT:
            code = self.ctl.fault_code
            self.tx.event(codes.EV_FAULT, now_us, {"code": code, "name": codes.FAULT_NAMES.get(code, "fault"),
                                                "message": self.fault_message, "again": True})

    def _state_event(self, now_us):
        s = self.ctl.state
        if s != self.state_sent:
            prev = self.state_sent
            self.state_sent = s
            body = {"state": codes.STATE_NAMES[s], "from": codes.STATE_NAMES[prev] if prev >= 0 else None,
                    "fault": self.ctl.fault_code}
            if s == codes.IDLE and self.ctl.disarm_cause:
                body["why"] = codes.BLOCK_NAMES[self.ctl.disarm_cause]
            self.tx.event(codes.EV_STATE, now_us, body)

    def alarm(self, kind, active, now_us, extra=None):
        body = {"alarm": kind, "active": active}
        if extra:
            body.update(extra)
        self.tx.event(codes.EV_ALARM, now_us, body)

    def dose_display(self, now_us):
        a = self.account
        t = self.ctl.technique
        self.tx.event(codes.EV_DOSE, now_us, {
            "rate_mgy_min": round(self.rate_mgy_min, 3),
            "kerma_mgy": round(a.kerma_mgy(), 4),
            "kap_gy_cm2": round(a.kap.value() * 0.01, 5),  # 1 uGy m^2 = 1e-6 Gy * 1e4 cm^2
            "fluoro_min": a.fluoro_time_min_tenths() / 10,
            "pulses": a.pulses, "kv": round(t.kv, 2), "ma": round(t.ma, 3),
            "hlc": self.hlc_tone})

    # -- the loop -------------------------------------------------------------

    def run(self):
        # Ctrl-C is taken where it is safe: the link reads it (a 0x03 never
        # comes in ordinary traffic) at the top of a loop pass, and the HALs
        # raise KeyboardInterrupt there. Raised anywhere else by a board's
        # USB stack, it could land between a pulse leaving and its dose
        # being accounted, or inside an event's commit: it is off while the
        # firmware runs, and leave() turns it back on for the REPL.
        micropython.kbd_intr(-1)
        try:
            while self.running:
                self.poll()
        except KeyboardInterrupt:
            # Ctrl-C from the host (mpremote, or a stray 0x03 on the line):
            # to the REPL, where the board must stay (to be re-flashed).
            self.leave("ctrl-c", "Ctrl-C on the host link")
            raise
        except BaseException as exc:  # a firmware defect: its traceback goes to the REPL
            self.leave("error", "firmware error: %s %s" % (type(exc).__name__, exc))
            raise
        self.leave("exit_to_repl", "the host asked for the REPL")

    def leave(self, why, text, then="REPL"):
        """The firmware stops running (to the REPL, or before a reset):
        emission off first, then every irradiation event committed (the
        open one with the dose of its last pulse, marked interrupted by
        `why`), the host told, and the watchdog stopped (a board at the
        prompt must not reset under mpremote). Each step is tried on its
        own: one that fails (perhaps the reason for leaving) must not stop
        the rest. A second Ctrl-C must not cut this short either."""
        micropython.kbd_intr(-1)
        hal = self.hal
        try:
            hal.emission_off()
        except Exception:
            pass
        now = self.last_us
        try:
            now = hal.ticks_us()
            self.clock.seen(now)
            if not self.pend_done:  # the pulse in flight: its dose once it has ended
                hal.wait_exactly(self.pend[3])
                now = hal.ticks_us()
                self.clock.seen(now)
                self._pulse_end(now)
        except Exception:
            pass
        try:
            prev = self.ctl.state
            if self.press is not None:
                self.press.interrupted = why
            self.ctl.disarm()
            self.state_changed(prev, now)
            self.pend_done = True
            self._commit_closing(now)
            self.tx.event(codes.EV_STOPPED, now, {"reason": text, "then": then})
        except Exception:
            pass
        try:
            hal.watchdog_stop()
        except Exception:
            pass
        micropython.kbd_intr(3)

    def poll(self):
        """One pass of the main loop."""
        hal = self.hal
        now = hal.ticks_us()
        self.clock.seen(now)
        ctl = self.ctl
        if ctl.state == codes.EXPOSING and ticks.diff(now, self.last_us) > 0:
            if self.account.add_switch_time(ticks.diff(now, self.last_us)):
                self.alarm_5min = True
                self.alarm("fluoro_5min", True, now, {"fluoro_min": self.account.fluoro_time_min_tenths() / 10})
        self.last_us = now
        hal.read_inputs(self.inputs)
        n = hal.link_read(self.rxbuf)
        if n:
            self.rx_last_us = now
            self._rx_now = now
            self.decoder.feed_into(self.rxbuf, n, self._on_packet_bound)
        elif self.decoder.partial() and ticks.diff(now, self.rx_last_us) > RX_GAP_US:
            self.decoder.drop_partial()
        prev = ctl.state
        block_before = ctl.block
        pressed_before = self.switch_before
        self.switch_before = self.inputs.switch
        pulse = ctl.step(now, self.inputs, not self.readout.busy)
        if ctl.state != prev:
            self.state_changed(prev, now)
            if prev == codes.EXPOSING and self.inputs.switch and ctl.block != codes.BLOCK_NONE:
                # Exposure stopped under a held switch: say why.
                self.tx.event(codes.EV_BLOCKED, now, {"reason": codes.BLOCK_NAMES[ctl.block]})
        elif (self.inputs.switch and ctl.block != codes.BLOCK_NONE
              and (ctl.block != block_before or not pressed_before)
              and ctl.state != codes.EXPOSING and ctl.state != codes.BOOT):  # (READY, HOLD, IDLE or FAULT)
            # A press that does not expose, or a new reason while held: say why.
            self.tx.event(codes.EV_BLOCKED, now, {"reason": codes.BLOCK_NAMES[ctl.block]})
        if pulse is not None:
            self._fire(pulse, now)
        self._pulse_end(now)
        if (self.dark_left and ticks.diff(now, self.next_dark_us) >= 0 and not self.readout.busy
                and not self.trailer_due):
            self._dark(now)
        if self.readout.pump(now, LINES_PER_PUMP):
            self.trailer_due = True
        if self.trailer_due and self.pend_done:
            self._frame_done(now)
            hal.between_frames()
        self._timers(now)
        hal.watchdog_feed()
        hal.wait_until(self._next_wake(now))

    def _on_packet(self, version, ptype, seq, length):
        """One packet from the host, its payload in the decoder's buffer
        during the call (length -1: one announced too long)."""
        now = self._rx_now
        ctl = self.ctl
        if version != wire.PROTOCOL_VERSION:
            # Not this board's protocol: never run, never taken for a live host.
            self.packets_bad_version += 1
            if ptype == wire.PKT_COMMAND:
                self.tx.response(seq, codes.ERR_VERSION, "board speaks protocol %d, the packet %d"
                                 % (wire.PROTOCOL_VERSION, version))
            return
        if length < 0:
            if ptype == wire.PKT_COMMAND:
                self.commands_bad += 1
                self.tx.response(seq, codes.ERR_MALFORMED, "command longer than %d bytes"
                                 % self.decoder.max_payload)
            return
        if ticks.diff(now, ctl.last_host_us) > controller.LINK_TIMEOUT_US:
            self.host_back(now)
        ctl.host_seen(now)
        if ptype == wire.PKT_COMMAND:
            b = self.decoder.buf
            at = wire.HEADER_SIZE
            if length and b[at] == codes.OP_PING and (length == 1 or (length == 3 and b[at + 1] == 0x7B
                                                                      and b[at + 2] == 0x7D)):
                self.tx.ping_answer(seq, now)  # the heartbeat ("{}" or no arguments): from a packet made once
            else:
                commands.handle(self, seq, self.decoder.payload(length), now)

    def state_changed(self, prev, now):
        """Bookkeeping after any state change (loop, command or fault)."""
        s = self.ctl.state
        if s == prev:
            return
        if s == codes.EXPOSING:
            self.event_id += 1
            self.press = Press(self.event_id, now, self.clock.us(now), self.ctl.technique)
            self.next_display_us = now
        elif prev == codes.EXPOSING:
            if self.press is not None:
                self.press.end_us = self.clock.us(now)
                self.closing.append(self.press)
                self.press = None
            self.rate_mgy_min = 0.0
            if self.hlc_tone:
                self.hlc_tone = False
                self.alarm("hlc_tone", False, now)
        self._state_event(now)

    def _fire(self, p, now):
        hal = self.hal
        self.frame_id += 1
        width_us = int(p.pulse_width_ms * 1000)
        self.readout.arm(self.frame_id, p.pulse_id, now, self.clock.hi(now), width_us)
        hal.generator_set(p.kv, p.ma)
        t_fire = hal.ticks_us()
        setup_us = ticks.diff(t_fire, now)
        if ticks.diff(p.due_us, t_fire) > 0:  # decided ahead (ctl.lead_us): leave on time, never early
            hal.wait_exactly(p.due_us)
            t_fire = hal.ticks_us()
        # (Ctrl-C is off while the firmware runs: see run().)
        if not hal.generator_fire(width_us, self.ctl.technique.period_us()):
            self.readout.cancel()
            # The hardware chain holds the exposure switch too: a release in
            # the moment between reading it and firing is no fault (the next
            # pass sees it). Any other refusal is: an interlock the firmware
            # did not see open (or did not look at) latches, as before.
            inputs = self.inputs
            hal.read_inputs(inputs)
            if not inputs.switch:
                self.pulses_withheld += 1
                return
            self.pulses_refused += 1
            self.fault(codes.FAULT_PULSE_REFUSED, now, "pulse %d refused by the hardware interlocks" % p.pulse_id)
            return
        self.ctl.fired(t_fire, setup_us)
        # The frame's time is its pulse's, as it left (not when it was decided).
        self.readout.started(t_fire, self.clock.hi(t_fire))
        # Keep what the trailer and the dose need (p is reused by step()).
        self._keep_pend(p.pulse_id, self.frame_id, t_fire, ticks.add(t_fire, width_us), p.kv, p.ma, p.pulse_width_ms,
                        p.capped, p.hlc)
        self.pend_done = False
        self.pend_press = self.press
        if p.hlc and not self.hlc_tone:
            self.hlc_tone = True
            self.alarm("hlc_tone", True, now)

    def start_dark(self, frames, now):
        """Read `frames` frames with the beam off, one per pulse period."""
        self.dark_left = frames
        self.next_dark_us = now

    def _dark(self, now):
        c = self.config
        self.dark_left -= 1
        self.next_dark_us = ticks.add(now, int(1_000_000 / c.pulses_per_s))
        self.frame_id += 1
        width_us = int(c.pulse_width_ms * 1000)
        self.readout.arm(self.frame_id, 0, now, self.clock.hi(now), width_us)
        self.hal.detector_dark(width_us)
        # Its trailer: pulse 0, no kV, no mA, no dose (nothing was fired).
        self._keep_pend(0, self.frame_id, now, ticks.add(now, width_us), 0.0, 0.0, c.pulse_width_ms, False, False)
        self._keep_dose(0.0, 0.0, 0.0, 0.0)
        self.pend_done = True
        self.frame_dark = True

    def _keep_pend(self, pulse_id, frame_id, t0, t1, kv, ma, width_ms, capped, hlc):
        # In place, so no tuple is left for the collector each pulse. (On a
        # Pico this call's own frame, over 44 bytes, is still a heap
        # allocation, freed on return: the search remains, the garbage not.)
        e = self.pend
        e[0] = pulse_id
        e[1] = frame_id
        e[2] = t0
        e[3] = t1
        e[4] = kv
        e[5] = ma
        e[6] = width_ms
        e[7] = capped
        e[8] = hlc

    def _keep_dose(self, kv, ma, kerma, kap):
        e = self.pend_dose
        e[0] = kv
        e[1] = ma
        e[2] = kerma
        e[3] = kap

    def _pulse_end(self, now):
        """Once the pulse in flight has ended: read what was delivered,
        account its dose, check the generator's tolerance."""
        if self.pend_done or ticks.diff(now, self.pend[3]) < 0:
            return
        self.pend_done = True
        pulse_id, frame_id, t0, t1, kv_set, ma_set, width_ms, capped, hlc = self.pend
        fb = self.feedback
        self.hal.generator_feedback(fb)
        kv, ma = fb[0], fb[1]
        kerma = self.geometry.pulse_kerma_ugy(kv, ma, width_ms)
        kap = self.geometry.pulse_kap_ugy_m2(kerma)
        self._keep_dose(kv, ma, kerma, kap)
        self.rate_mgy_min = kerma * self.ctl.technique.pulses_per_s * 0.06
        if self.account.add_pulse(kerma, kap):
            self.alarm("dose_notify", True, now, {"kerma_mgy": round(self.account.kerma_mgy(), 1)})
        p = self.pend_press  # the event that fired it, even if another has started since
        if p is not None:
            if not p.pulses:
                p.pulse_start_us = self.clock.us(t0)
            p.pulse_end_us = self.clock.us(t1)
            p.pulses += 1
            p.kerma.add(kerma)
            p.kap.add(kap)
            p.kv_sum += kv
            p.ma_sum += ma
            if capped:
                p.capped += 1
            if hlc:
                p.hlc = True
        if abs(kv - kv_set) > KV_TOLERANCE * kv_set:
            self.fault(codes.FAULT_KV_TOLERANCE, now, "pulse %d delivered %.1f kV for %.1f kV" % (pulse_id, kv, kv_set))
        elif abs(ma - ma_set) > MA_TOLERANCE * ma_set:
            self.fault(codes.FAULT_MA_TOLERANCE, now, "pulse %d delivered %.2f mA for %.2f mA" % (pulse_id, ma, ma_set))

    def _frame_done(self, now):
        self.trailer_due = False
        dark = self.frame_dark
        self.frame_dark = False
        pulse_id, frame_id, t0, t1, kv_set, ma_set, width_ms, capped, hlc = self.pend
        kv, ma, kerma, kap = self.pend_dose
        r = self.readout
        self.tx.trailer(frame_id, pulse_id, t0, r.lines, r.lines_sent, kv, ma, width_ms, kerma, kap)
        if r.lines_sent == 0:
            self.fault(codes.FAULT_DETECTOR, now, "frame %d: no line came from the detector" % frame_id)
            return
        c = self.config
        if c.abc_enabled and not dark:
            s = brightness.centre_signal(r.frame_buf, r.landed, r.lines, r.pixels, r.pixel_format,
                                         DETECTOR_PEDESTAL_ADU)
            if s is not None:
                t = self.ctl.technique
                cap = dose.CAP_HIGH_LEVEL_MGY_MIN if hlc else dose.CAP_NORMAL_MGY_MIN
                self.abc.update(s, kv_set, ma_set, t, c.kv, c.abc_target_adu, cap * controller.GUARD_MARGIN,
                                controller.MA_MIN, controller.MA_MAX)
                # Set now, so the generator has settled before the next pulse.
                self.hal.generator_set(t.kv, t.ma)

    def _timers(self, now):
        ctl = self.ctl
        if ctl.state == codes.EXPOSING and ticks.diff(now, self.next_display_us) >= 0:
            self.dose_display(now)
            self.next_display_us = ticks.add(now, DOSE_DISPLAY_US)
        self._commit_closing(now)
        p = self.press
        if p is not None and p.pulses and ticks.diff(now, p.next_checkpoint_us) >= 0:
            p.end_us = self.clock.us(now)
            p.next_checkpoint_us = ticks.add(now, CHECKPOINT_US)
            self.checkpoint(p, now)

    def checkpoint(self, p, now_us):
        """The open event so far, where a power cut cannot lose it."""
        if self.journal is None:
            self.fault(codes.FAULT_STORAGE, now_us, "no journal")
            return
        self.hal.watchdog_feed()  # as commit
        try:
            self.journal.checkpoint(self._press_record(p, False))
        except OSError as exc:
            self.fault(codes.FAULT_STORAGE, now_us, "checkpoint: %s" % exc)

    def _commit_closing(self, now):
        """Commit the events that have ended once their last pulse is
        accounted (a new press may already have started)."""
        while self.closing and (self.pend_done or self.pend_press is not self.closing[0]):
            c = self.closing.pop(0)
            if c.end_us <= c.start_us:
                c.end_us = self.clock.us(now)
            rec = self._press_record(c, True)
            if self.commit(rec, now):
                self._irradiation_event(rec, now)
            self.dose_display(now)

    def _next_wake(self, now):
        """The next moment that matters (inputs and host bytes wake the loop
        on their own); only deadlines still ahead count, so the loop never
        spins on one already passed."""
        # Worked in intervals from now (one difference per deadline, no
        # tuple: this runs every loop pass); a deadline passed already does
        # not count.
        ctl = self.ctl
        dt = MAX_SLEEP_US
        if ctl.state == codes.EXPOSING:
            a = self.account
            d = ticks.diff(ctl.next_pulse_us, now) - ctl.lead_us  # decided ahead of its time
            if 0 < d < dt:
                dt = d
            d = ticks.diff(ctl.last_host_us, now) + controller.LINK_TIMEOUT_US + 1
            if 0 < d < dt:
                dt = d
            d = ticks.diff(self.next_display_us, now)
            if 0 < d < dt:
                dt = d
            d = (a.next_alarm_s - a.switch_s) * 1_000_000 - a.switch_us
            if 0 < d < dt:
                dt = d
        if self.dark_left:
            d = ticks.diff(self.next_dark_us, now)
            if 0 < d < dt:
                dt = d
        if not self.pend_done:
            d = ticks.diff(self.pend[3], now)
            if 0 < d < dt:
                dt = d
        if self.readout.busy and READOUT_POLL_US < dt:
            dt = READOUT_POLL_US
        if self.closing and (self.pend_done or self.pend_press is not self.closing[0]):
            return now  # an ended event to commit
        if self.pend_done and self.trailer_due:
            return now  # work left for the next pass
        return ticks.add(now, dt)
