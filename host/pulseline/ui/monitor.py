"""Follow a board: its state, events, alarms and firmware logs as they come
(the library side of `pulseline monitor`).

    with Session(port) as s:
        monitor(s, write=print)              # until Ctrl-C, or the link is lost

One line per event or log, in the order the board sent them:

    board sim serial SIM-00000000, firmware 0.2.0, detector SIMDET-00000000: state IDLE (not armed)
        0.110 s  state       IDLE -> READY
        0.131 s  state       READY -> EXPOSING
        0.632 s  dose        17.6 mGy/min  0.1568 mGy  0.0 min  80 kV 20.0 mA  4 pulses
        1.432 s  state       EXPOSING -> HOLD
        1.432 s  irradiation event 1 of exam 0: 10 pulses  0.3915 mGy  0.0148 Gy cm2
                 frames      10 received (10 in all), the last at 1.338 s
        2.657 s  blocked     door open

or, with as_json, one JSON object per line with a "kind" ("status",
"event", "log" or "frames"). Frames the board sends meanwhile are drained
(and counted) so that nothing piles up in memory.
"""

from __future__ import annotations

import heapq
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import PulselineError
from ..link.session import Event, Session, SessionError

POLL_S = 0.05
SILENCE_S = 2.0  # the board answers a heartbeat every 50 ms: this much silence is a dead link
FRAMES_IDLE_S = 1.0  # a burst of frames has ended when none came for this long: say how many
FRAMES_EVERY_S = 5.0  # and while they keep coming, say so this often
NAME_WIDTH = 11  # "irradiation"
LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"}


class MonitorError(PulselineError):
    """The monitor cannot go on (the link to the board is lost)."""


# -- human lines ---------------------------------------------------------------------------


def _time(t_us: int) -> str:
    return f"{t_us / 1e6:9.3f} s"


def _line(t_us: int, label: str, text: str) -> str:
    return f"{_time(t_us)}  {label:<{NAME_WIDTH}} {text}".rstrip()


def _mgy(value: float) -> str:
    """An air kerma in mGy with four significant digits (the board rounds
    its totals to 0.1 uGy), never in exponent notation."""
    v = abs(value)
    digits = 1 if v >= 100 else 2 if v >= 10 else 3 if v >= 1 else 4
    return f"{value:.{digits}f}"


def _compact(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), default=str)


def _state(b: dict[str, Any]) -> str:
    text = str(b["state"]) if b.get("from") is None else f"{b['from']} -> {b['state']}"
    return text + (f" (fault {b['fault']})" if b.get("fault") else "")


def _fault(b: dict[str, Any]) -> str:
    return f"{b['name']}: {b['message']} (fault {b['code']})"


def _alarm(b: dict[str, Any]) -> str:
    text = f"{b['alarm']} {'ON' if b['active'] else 'OFF'}"
    if b.get("fluoro_min") is not None:
        text += f" ({float(b['fluoro_min']):.1f} min)"
    if b.get("kerma_mgy") is not None:
        text += f" ({_mgy(float(b['kerma_mgy']))} mGy)"
    return text


def _dose(b: dict[str, Any]) -> str:
    text = (f"{float(b['rate_mgy_min']):.1f} mGy/min  {_mgy(float(b['kerma_mgy']))} mGy  "
            f"{float(b['fluoro_min']):.1f} min  {float(b['kv']):.0f} kV {float(b['ma']):.1f} mA")
    if b.get("pulses") is not None:
        text += f"  {b['pulses']} pulses"
    return text + ("  HLC" if b.get("hlc") else "")


def _blocked(b: dict[str, Any]) -> str:
    return str(b["reason"])


def _irradiation(b: dict[str, Any]) -> str:
    return (f"event {b['event']} of exam {b['exam']}: {b['pulses']} pulses  "
            f"{_mgy(float(b['kerma_ugy']) / 1000)} mGy  {float(b['kap_ugy_m2']) * 0.01:.4f} Gy cm2")


def _boot(b: dict[str, Any]) -> str:
    return (f"firmware {b['firmware']} on {b['board']} (serial {b['serial']}), reset: {b['reset_cause']}, "
            f"exam {b['exam']}")


def _exam(b: dict[str, Any]) -> str:
    return f"new exam {b['exam']}"


_FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "state": _state, "fault": _fault, "alarm": _alarm, "dose": _dose, "blocked": _blocked,
    "irradiation": _irradiation, "boot": _boot, "exam": _exam,
}


def format_event(ev: Event) -> str:
    """One human line: the board's time in seconds, the event's name and what
    it says. An unknown event (or a body this host does not expect) is shown
    as its name and its body in compact JSON."""
    fmt = _FORMATS.get(ev.name)
    text: str | None = None
    if fmt is not None and isinstance(ev.body, dict):
        try:
            text = fmt(ev.body)
        except (KeyError, TypeError, ValueError):
            text = None
    if text is None:
        text = _compact(ev.body)
    return _line(ev.t_us, ev.name, text)


def level_name(level: int) -> str:
    return LEVEL_NAMES.get(level, f"LEVEL{level}")


def format_log(t_us: int, level: int, text: str) -> str:
    """One human line for a firmware log message (its lines joined by " | ")."""
    return _line(t_us, level_name(level), " | ".join(part.rstrip() for part in text.splitlines()))


def format_frames(t_us: int | None, new: int, total: int) -> str:
    """Frames drained since the last such line. Written after them (when
    they stop coming), so the time column stays blank: the board time of
    the last one is in the text."""
    last = "" if t_us is None else f", the last at {t_us / 1e6:.3f} s"
    return f"{' ' * len(_time(0))}  {'frames':<{NAME_WIDTH}} {new} received ({total} in all){last}"


def format_header(board: dict[str, Any], status: dict[str, Any]) -> str:
    text = (f"board {board.get('board', '?')} serial {board.get('serial', '?')}, firmware {board.get('firmware', '?')}"
            f", detector {board.get('detector_serial', '?')}: state {status.get('state', '?')}")
    block = status.get("block")
    if block and block != "none":
        text += f" ({block})"
    if status.get("fault"):
        text += f", fault {status['fault']}"
    return text


# -- JSON lines ----------------------------------------------------------------------------


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def _event_json(ev: Event) -> str:
    return _json({"kind": "event", "t_us": ev.t_us, "name": ev.name, "body": ev.body})


def _log_json(t_us: int, level: int, text: str) -> str:
    return _json({"kind": "log", "t_us": t_us, "level": level, "level_name": level_name(level).lower(),
                  "text": text})


# -- following the session -----------------------------------------------------------------


def _lost(session: Session) -> str | None:
    """Why the link is lost, or None while it holds."""
    if session.error:
        reason = session.error
        return reason if reason.startswith("link lost") else f"link lost: {reason}"
    silent = session.silent_for()
    if silent > SILENCE_S:
        return f"link lost: nothing from the board for {silent:.1f} s"
    return None


def _cut(session: Session) -> tuple[int, int]:
    """How many events and logs have arrived, at one instant: the reader
    thread may append between two len() calls, so count the events again
    until no event came in while the logs were counted."""
    n_events = len(session.events)
    while True:
        n_logs = len(session.logs)
        again = len(session.events)
        if again == n_events:
            return n_events, n_logs
        n_events = again


def _merged(events: list[Event], logs: list[tuple[int, int, str]]) -> Iterator[Event | tuple[int, int, str]]:
    """Events and logs that came in since the last look, in the board's time
    order (they share one stream and one clock; each list keeps its order)."""
    def key(item: Event | tuple[int, int, str]) -> int:
        return item.t_us if isinstance(item, Event) else item[0]

    return heapq.merge(events, logs, key=key)


def monitor(session: Session, *, write: Callable[[str], None], as_json: bool = False,
            duration_s: float | None = None, stop: threading.Event | None = None, dose: bool = True) -> int:
    """Write a header (the board, its state), then every event and log of the
    session as it comes, one line each (`write` gets the line without a
    newline: print fits), from the first the session received. With
    dose=False the twice-a-second dose displays are left out.

    Ends after duration_s, when `stop` is set, or when the link is lost: then
    whatever came before is written and MonitorError("link lost: ...") is
    raised. Returns the number of events and logs written (the header and
    the frame counts are not counted)."""
    try:
        status = session.status()
    except SessionError as exc:
        raise MonitorError(_lost(session) or f"link lost: {exc}") from None
    board = session.board
    if as_json:
        write(_json({"kind": "status", "board": board.get("board"), "firmware": board.get("firmware"),
                     "serial": board.get("serial"), "detector_serial": board.get("detector_serial"),
                     "state": status.get("state"), "block": status.get("block"), "fault": status.get("fault")}))
    else:
        write(format_header(board, status))

    start = time.monotonic()
    next_event = next_log = 0
    written = 0
    frames_total = frames_reported = 0
    last_frame_t: int | None = None
    last_frame_at = unreported_since = start

    def report_frames() -> None:
        nonlocal frames_reported
        new = frames_total - frames_reported
        if as_json:
            write(_json({"kind": "frames", "t_us": last_frame_t, "received": new, "total": frames_total}))
        else:
            write(format_frames(last_frame_t, new, frames_total))
        frames_reported = frames_total

    while True:
        # Decide first, write after: what arrived before the link was seen
        # lost (or before the end) is still written.
        lost = _lost(session)
        done = (stop is not None and stop.is_set()) or (
            duration_s is not None and time.monotonic() - start >= duration_s)
        n_events, n_logs = _cut(session)
        new_events = session.events[next_event:n_events]
        new_logs = session.logs[next_log:n_logs]
        next_event, next_log = n_events, n_logs
        for item in _merged(new_events, new_logs):
            if isinstance(item, Event):
                if not dose and item.name == "dose":
                    continue
                write(_event_json(item) if as_json else format_event(item))
            else:
                write(_log_json(*item) if as_json else format_log(*item))
            written += 1
        now = time.monotonic()
        while True:
            try:
                frame = session.frames.get_nowait()
            except queue.Empty:
                break
            if frames_total == frames_reported:
                unreported_since = now
            frames_total += 1
            last_frame_t = frame.timestamp_us
            last_frame_at = now
        if lost is not None:
            raise MonitorError(lost)
        if frames_total > frames_reported and (done or now - last_frame_at >= FRAMES_IDLE_S
                                               or now - unreported_since >= FRAMES_EVERY_S):
            report_frames()
        if done:
            return written
        wait = POLL_S
        if duration_s is not None:
            wait = max(0.0, min(wait, start + duration_s - now))
        if stop is not None:
            stop.wait(wait)
        else:
            time.sleep(wait)
