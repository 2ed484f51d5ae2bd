"""Exams from the board's dose journal: the report of any exam, current or
past, built from the journal's records (the board's `dose_report` covers
only the current one).

The journal holds an `exam` record when an exam starts and an `event`
record for each irradiation event (an event cut short by a reset or a power
cut is committed at the next boot from its last checkpoint, marked
`interrupted`; journals of older firmware may hold several records of one
event, of which the last holds its totals; every record carries the exam's
running totals). The report of an exam has the same keys as `dose_report`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..link.session import Session

PAGE = 32  # records per read_journal answer (the firmware's maximum)


def pulse_span(event: dict[str, Any]) -> tuple[int, int] | None:
    """An event record's irradiation in board time (us): its first pulse's
    start to its last pulse's trailing edge (a record of older firmware has
    only the switch time: that), or None if the record has neither."""
    lo = event.get("pulse_start_us") or event.get("start_us")
    hi = event.get("pulse_end_us") or event.get("end_us")
    return (lo, hi) if isinstance(lo, int) and isinstance(hi, int) else None


def read_journal(session: Session) -> list[dict[str, Any]]:
    """Every record of the journal, in order."""
    out: list[dict[str, Any]] = []
    start = 0
    while True:
        page = session.command("read_journal", {"from": start, "max": PAGE})
        records = page["records"]
        out += [r["record"] for r in records]
        if not records or records[-1]["seq"] + 1 >= page["next"]:
            return out
        start = records[-1]["seq"] + 1


# Why an event ended before its release (its record's "interrupted").
INTERRUPTED = {"power": "power lost or board reset", "watchdog": "watchdog reset", "reset": "board reset",
               "ctrl-c": "firmware stopped by Ctrl-C", "error": "firmware error",
               "exit_to_repl": "firmware stopped for the REPL"}


def how_it_ended(event: dict[str, Any]) -> str:
    """"" for an event that ended with its release; else why not, in words."""
    why = event.get("interrupted")
    if why:
        return f" (interrupted: {INTERRUPTED.get(str(why), str(why))})"
    return "" if event.get("final", True) else " (cut short)"


def exams_in(records: list[dict[str, Any]]) -> list[int]:
    return sorted({int(r.get("exam", 0)) for r in records})


def report(records: list[dict[str, Any]], exam: int) -> dict[str, Any]:
    """The dose report of `exam` from journal records; ValueError if the
    journal holds nothing of it."""
    mine = [r for r in records if int(r.get("exam", 0)) == exam]
    if not mine:
        known = ", ".join(map(str, exams_in(records))) or "none"
        raise ValueError(f"the journal holds no exam {exam} (exams in it: {known})")
    events: dict[int, dict[str, Any]] = {}
    for r in mine:
        if r.get("kind") == "event":
            events[int(r["event"])] = r  # the last record of an event holds its totals
    last = next((r for r in reversed(mine) if r.get("kind") == "event"), None)
    kerma_ugy = float(last["total_kerma_ugy"]) if last else 0.0
    kap = float(last["total_kap_ugy_m2"]) if last else 0.0
    fluoro_s = int(last["fluoro_s"]) if last else 0
    tenths = fluoro_s // 6  # as the board shows it: 0.1 min, rounded down
    return {"exam": exam, "kerma_mgy": kerma_ugy / 1000, "kap_gy_cm2": kap * 0.01, "fluoro_min": tenths / 10,
            "fluoro_s": fluoro_s, "pulses": int(last["total_pulses"]) if last else 0,
            "events_total": len(events), "events": [events[k] for k in sorted(events)]}
