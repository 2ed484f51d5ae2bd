# The host's commands: parse, validate, act, answer. A command that fails any
# check gets an error response and changes nothing. docs/protocol.md lists
# them with their arguments and answers.
import gc
import json

from micropython import const

from . import codes, config, ident, wire

# The heap's free bytes (MicroPython's gc; CPython, which runs the fast
# simulator's firmware, has no such figure).
_mem_free = getattr(gc, "mem_free", None)

MAX_JOURNAL_RECORDS = const(32)  # per read_journal answer (the answer must fit a packet)
MAX_REPORT_EVENTS = const(64)
MAX_DARK_FRAMES = const(256)


class Refused(Exception):
    """A command that cannot be carried out: (code, message)."""


def _args(payload):
    if len(payload) < 1:
        raise Refused(codes.ERR_MALFORMED, "empty command")
    if len(payload) == 1:
        return {}
    try:
        args = json.loads(bytes(payload[1:]))
    except (ValueError, UnicodeError):
        raise Refused(codes.ERR_MALFORMED, "arguments are not JSON") from None
    if not isinstance(args, dict):
        raise Refused(codes.ERR_MALFORMED, "arguments must be a JSON object")
    return args


def _only(args, allowed):
    for k in args:
        if k not in allowed:
            raise Refused(codes.ERR_BAD_ARGUMENT, "unexpected argument " + str(k))


def _int_arg(args, name, default, lo, hi):
    v = args.get(name, default)
    if v is True or v is False or not isinstance(v, int):
        raise Refused(codes.ERR_BAD_ARGUMENT, name + " must be a whole number")
    if not lo <= v <= hi:
        raise Refused(codes.ERR_OUT_OF_RANGE, "%s must be %d..%d" % (name, lo, hi))
    return v


def _not_exposing(app):
    if app.dark_left:
        raise Refused(codes.ERR_BUSY, "not while dark frames are being read")
    if app.ctl.state == codes.EXPOSING or app.readout.busy:
        raise Refused(codes.ERR_BAD_STATE, "not while exposing")


def handle(app, seq, payload, now):
    try:
        op = payload[0] if len(payload) else 0
        args = _args(payload)
        fn = HANDLERS.get(op)
        if fn is None:
            raise Refused(codes.ERR_UNKNOWN_COMMAND, "unknown command %d" % op)
        body = fn(app, args, now)
    except Refused as r:
        app.commands_bad += 1
        app.tx.response(seq, r.args[0], r.args[1])
        return
    except Exception as exc:  # a firmware defect: answer, keep the loop (and emission control) running
        app.commands_bad += 1
        app.tx.response(seq, codes.ERR_INTERNAL, "internal error: %s %s" % (type(exc).__name__, exc))
        return
    app.tx.response(seq, codes.ERR_OK, body)
    after = AFTER.get(payload[0])
    if after is not None:
        after(app, now)


MAX_SESSION_ID = const(64)


def hello(app, args, now):
    _only(args, ("protocol", "session"))
    v = args.get("protocol")
    if v is True or v is False or not isinstance(v, int):
        raise Refused(codes.ERR_BAD_ARGUMENT, "protocol must be a whole number")
    if v != wire.PROTOCOL_VERSION:
        raise Refused(codes.ERR_VERSION, "board speaks protocol %d, host %d" % (wire.PROTOCOL_VERSION, v))
    session = args.get("session")
    if session is not None and (not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_ID):
        raise Refused(codes.ERR_BAD_ARGUMENT, "session must be a text of 1..%d characters" % MAX_SESSION_ID)
    if session != app.session:
        # Another host session: the one that armed the board is gone.
        prev = app.ctl.state
        app.ctl.disarm()
        app.state_changed(prev, now)
        app.session = session
    return {"protocol": wire.PROTOCOL_VERSION, "session": session, "firmware": app_version(app),
            "firmware_hash": app.firmware_hash(),
            "board": app.hal.BOARD,
            "serial": app.serial, "detector_serial": app.detector_serial,
            "link_bytes_per_s": app.hal.LINK_BYTES_PER_S, "max_frame_bytes": app.hal.MAX_FRAME_BYTES,
            "config": app.config.as_dict()}


def app_version(app):
    return ident.FIRMWARE_VERSION


def get_config(app, args, now):
    _only(args, ())
    return app.config.as_dict()


def set_config(app, args, now):
    _not_exposing(app)
    try:
        new = config.updated(app.config, args, app.hal.LINK_BYTES_PER_S, app.hal.MAX_FRAME_BYTES)
    except ValueError as exc:
        raise Refused(exc.args[0][0], exc.args[0][1]) from None
    problem = app.hal.config_problem(new)
    if problem:
        raise Refused(codes.ERR_OUT_OF_RANGE, problem)
    app.apply_config(new)
    return new.as_dict()


def arm(app, args, now):
    _only(args, ())
    if app.journal is None:
        raise Refused(codes.ERR_STORAGE, "no dose journal: cannot account dose")
    if not app.storage_writable():
        raise Refused(codes.ERR_STORAGE, "the board's storage cannot be written: dose could not be recorded")
    if app.dark_left:
        raise Refused(codes.ERR_BUSY, "dark frames are being read")
    budget = app.budget_problem(app.config)
    if budget:
        raise Refused(codes.ERR_OUT_OF_RANGE, "the configuration does not fit this board: " + budget)
    prev = app.ctl.state
    reason = app.ctl.arm()
    if reason:
        raise Refused(codes.ERR_BAD_STATE, reason)
    app.state_changed(prev, now)
    return {"state": codes.STATE_NAMES[app.ctl.state]}


def disarm(app, args, now):
    _only(args, ())
    prev = app.ctl.state
    app.ctl.disarm()
    app.state_changed(prev, now)
    return {"state": codes.STATE_NAMES[app.ctl.state]}


def new_exam(app, args, now):
    _only(args, ())
    _not_exposing(app)
    if app.press is not None or app.closing:
        raise Refused(codes.ERR_BUSY, "the last irradiation event is still being committed")
    if not app.new_exam(now):
        raise Refused(codes.ERR_STORAGE, "the journal could not be written")
    return {"exam": app.exam_id}


def status(app, args, now):
    _only(args, ())
    i = app.inputs
    a = app.account
    t = app.ctl.technique
    r = app.readout
    d = app.decoder
    return {
        "state": codes.STATE_NAMES[app.ctl.state], "block": app.block_name(), "fault": app.ctl.fault_code,
        "inputs": {"switch": i.switch, "door_closed": i.door_closed, "key_on": i.key_on,
                   "generator_ready": i.generator_ready, "hlc_switch": i.hlc_switch},
        "technique": {"kv": t.kv, "ma": t.ma, "pulse_width_ms": t.pulse_width_ms,
                      "pulses_per_s": t.pulses_per_s},
        "exam": app.exam_id, "kerma_mgy": a.kerma_mgy(), "kap_gy_cm2": a.kap.value() * 0.01,
        "fluoro_min": a.fluoro_time_min_tenths() / 10, "fluoro_s": a.switch_s, "pulses": a.pulses,
        "alarm_5min": app.alarm_5min, "uptime_s": (app.clock.us(now) - app.boot_us) // 1_000_000,
        "frames": r.frames_total, "lines_sent": r.lines_sent_total, "lines_lost": r.lines_lost_total,
        "pulses_refused": app.pulses_refused, "commands_bad": app.commands_bad,
        "rx_bytes_skipped": d.bytes_skipped, "rx_header_errors": d.header_errors, "rx_crc_errors": d.crc_errors,
        "rx_partial_dropped": d.partial_dropped, "rx_bad_version": app.packets_bad_version,
        "pulses_withheld": app.pulses_withheld,
        "heap_free_bytes": _mem_free() if _mem_free is not None else None,
    }


def dose_report(app, args, now):
    _only(args, ())
    a = app.account
    events = {}
    if app.journal is not None:
        for _, rec in app.journal.current_exam():
            if rec.get("kind") == "event":
                events[rec["event"]] = rec  # the last record of an event holds its totals
    keys = sorted(events)
    # The answer must fit one packet: the latest events; read_journal has all.
    # board_us: the board's time now, so that the host can place the events'
    # board times on its own clock.
    return {"exam": app.exam_id, "board_us": app.clock.us(now), "kerma_mgy": a.kerma_mgy(),
            "kap_gy_cm2": a.kap.value() * 0.01, "fluoro_min": a.fluoro_time_min_tenths() / 10,
            "fluoro_s": a.switch_s, "pulses": a.pulses,
            "events_total": len(keys), "events": [events[k] for k in keys[-MAX_REPORT_EVENTS:]]}


def read_journal(app, args, now):
    _only(args, ("from", "max"))
    if app.journal is None:
        raise Refused(codes.ERR_STORAGE, "no dose journal")
    start = _int_arg(args, "from", 0, 0, 0x7FFFFFFF)
    n = _int_arg(args, "max", MAX_JOURNAL_RECORDS, 1, MAX_JOURNAL_RECORDS)
    recs = app.journal.read(start, n)
    return {"records": [{"seq": s, "record": r} for s, r in recs], "next": app.journal.next_seq}


def fault_reset(app, args, now):
    _only(args, ())
    prev = app.ctl.state
    code = app.ctl.fault_code
    # Named in the answer: the fault's own event may have been lost (a link
    # drop shorter than the link timeout is not "the host was away").
    cleared = ({"code": code, "name": app.fault_name(code), "message": app.fault_message}
               if prev == codes.FAULT else None)
    app.ctl.fault_reset()
    app.state_changed(prev, now)
    return {"state": codes.STATE_NAMES[app.ctl.state], "cleared": cleared}


def self_test(app, args, now):
    _only(args, ())
    _not_exposing(app)
    checks = app.self_test(now)
    return {"passed": all(checks[k] for k in checks), "checks": checks}


def reboot(app, args, now):
    _only(args, ())
    _not_exposing(app)
    return {}


def exit_to_repl(app, args, now):
    _only(args, ())
    _not_exposing(app)
    return {}


def ping(app, args, now):
    _only(args, ())
    return {"t_us": app.clock.us(now)}  # board time, as events carry


def alarm_reset(app, args, now):
    _only(args, ())
    was = app.alarm_5min
    app.alarm_5min = False
    if was:
        app.alarm("fluoro_5min", False, now)
    return {}


def dark_frames(app, args, now):
    _only(args, ("frames",))
    n = _int_arg(args, "frames", None, 1, MAX_DARK_FRAMES)
    _not_exposing(app)
    if app.ctl.state != codes.IDLE:
        raise Refused(codes.ERR_BAD_STATE, "dark frames only while disarmed (IDLE), not " +
                      codes.STATE_NAMES[app.ctl.state])
    app.start_dark(n, now)
    return {"frames": n, "first_frame": app.frame_id + 1}


def _after_reboot(app, now):
    app.leave("reset", "the host asked for a reset", "reset")
    app.hal.reset()


def _after_exit(app, now):
    app.running = False


HANDLERS = {
    codes.OP_HELLO: hello, codes.OP_GET_CONFIG: get_config, codes.OP_SET_CONFIG: set_config, codes.OP_ARM: arm,
    codes.OP_DISARM: disarm, codes.OP_NEW_EXAM: new_exam, codes.OP_STATUS: status,
    codes.OP_DOSE_REPORT: dose_report, codes.OP_READ_JOURNAL: read_journal, codes.OP_FAULT_RESET: fault_reset,
    codes.OP_SELF_TEST: self_test, codes.OP_REBOOT: reboot, codes.OP_EXIT_TO_REPL: exit_to_repl,
    codes.OP_PING: ping, codes.OP_ALARM_RESET: alarm_reset, codes.OP_DARK_FRAMES: dark_frames,
}
AFTER = {codes.OP_REBOOT: _after_reboot, codes.OP_EXIT_TO_REPL: _after_exit}
