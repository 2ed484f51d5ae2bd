"""What the operator sees in the terminal during and after a capture (rich):
a progress bar with the live dose displays, the last-image-hold image, and
a summary table. Everything goes to stderr except the summary, so that
stdout stays clean for scripts."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..link.frames import Frame
from ..link.session import Session

ALARM_NAMES = {"fluoro_5min": "5-MIN ALARM", "hlc_tone": "HIGH-LEVEL", "dose_notify": "DOSE LEVEL"}


class LiveDose:
    """The firmware's dose displays (dose events, twice a second) and alarm
    state, followed from a session's event list."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.seen = len(session.events)
        self.rate_mgy_min = 0.0
        self.kerma_mgy = 0.0
        self.kap_gy_cm2 = 0.0
        self.fluoro_min = 0.0
        self.kv = 0.0
        self.ma = 0.0
        self.alarms: set[str] = set()
        self.blocked: str | None = None

    def update(self) -> None:
        events = self.session.events
        while self.seen < len(events):
            e = events[self.seen]
            self.seen += 1
            b = e.body
            if e.name == "dose":
                # The rate of the exposure: kept after it ends (the last event says 0).
                self.rate_mgy_min = float(b.get("rate_mgy_min", 0.0)) or self.rate_mgy_min
                self.kerma_mgy = float(b.get("kerma_mgy", 0.0))
                self.kap_gy_cm2 = float(b.get("kap_gy_cm2", 0.0))
                self.fluoro_min = float(b.get("fluoro_min", 0.0))
                self.kv, self.ma = float(b.get("kv", 0.0)), float(b.get("ma", 0.0))
            elif e.name == "alarm":
                name = str(b.get("alarm"))
                (self.alarms.add if b.get("active") else self.alarms.discard)(name)
            elif e.name in ("blocked", "fault"):
                self.blocked = str(b.get("reason") or b.get("name") or e.name)

    def text(self, lines_lost: int) -> str:
        alarms = " ".join(f"[bold red]{ALARM_NAMES.get(a, a)}[/]" for a in sorted(self.alarms))
        return (f"{self.kv:5.1f} kV {self.ma:5.2f} mA  [bold]{self.rate_mgy_min:5.1f}[/] mGy/min  "
                f"[bold]{self.kerma_mgy:7.3f}[/] mGy  {self.fluoro_min:4.1f} min  lost lines {lines_lost}"
                + (f"  {alarms}" if alarms else ""))


class CaptureProgress:
    """A progress bar over the frames with the live displays beside it."""

    def __init__(self, session: Session, frames: int, console: Console) -> None:
        self.dose = LiveDose(session)
        self.lost = 0
        self.progress = Progress(TextColumn("[bold blue]exposing"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[dose]}"), console=console,
                                 transient=False, refresh_per_second=8)
        self.task = self.progress.add_task("capture", total=frames, dose="waiting for the first frame")

    def __enter__(self) -> CaptureProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # A terminal that has gone (closed: SIGHUP) takes no more output;
        # what matters then is that the capture's files get written.
        with contextlib.suppress(OSError):
            self.refresh()
        with contextlib.suppress(OSError):
            self.progress.stop()

    def refresh(self) -> None:
        self.dose.update()
        self.progress.update(self.task, dose=self.dose.text(self.lost))

    def frame(self, f: Frame) -> None:
        self.lost += f.lines_lost
        self.progress.advance(self.task)
        self.refresh()


def image_text(pixels: Any, width: int = 64, title: str = "") -> Text:
    """An image as half-block characters (two pixel rows per character),
    windowed on its 1st..99th percentile: the last-image hold in the
    terminal."""
    img = np.asarray(pixels, dtype=np.float64)
    rows, cols = img.shape
    step = max(1, int(np.ceil(cols / width)))
    small = img[: rows - rows % (2 * step) or rows, : cols - cols % step or cols]
    h = small.shape[0] // step
    w = small.shape[1] // step
    small = np.nanmean(small[: h * step, : w * step].reshape(h, step, w, step), axis=(1, 3))
    finite = small[np.isfinite(small)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    grey = (np.clip((np.nan_to_num(small, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(int)
    out = Text(title + "\n" if title else "")
    for r in range(0, grey.shape[0] - 1, 2):
        for c in range(grey.shape[1]):
            top, bottom = grey[r, c], grey[r + 1, c]
            out.append("▀", style=f"rgb({top},{top},{top}) on rgb({bottom},{bottom},{bottom})")
        out.append("\n")
    return out


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-capture table: frames, technique, dose, calibration, files."""
    t = Table(title="capture summary", show_header=False, title_justify="left", box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    tech = summary.get("technique") or {}
    delivered = summary.get("technique_delivered") or {}
    t.add_row("frames", f"{summary['frames']} ({summary['frames_complete']} complete), "
                        f"{summary['lines_lost']} lines lost")
    mode = "brightness control" if tech.get("abc_enabled") else "manual"
    kv = delivered.get("kv_mean")
    ma = delivered.get("ma_mean")
    t.add_row("technique", f"{tech.get('pulses_per_s')} pps, {tech.get('pulse_width_ms')} ms, {mode}"
              + (f"; delivered {kv:.1f} kV {ma:.2f} mA (mean)" if kv is not None and ma is not None else "")
              + (f"; filter alpha {tech['filter_alpha']}" if tech.get("filter_alpha") else ""))
    if summary.get("preset"):
        t.add_row("preset", str(summary["preset"]))
    d = summary.get("dose_report") or {}
    if d:
        t.add_row("dose (exam)", f"{d['kerma_mgy']:.3f} mGy air kerma at the reference point, "
                                 f"{d['kap_gy_cm2']:.4f} Gy cm2, {d['pulses']} pulses, fluoroscopy "
                                 f"{d['fluoro_min']:.1f} min (exam {d['exam']})")
    t.add_row("this capture", f"{summary['kerma_ugy_from_trailers'] / 1000:.3f} mGy (from the frame trailers)")
    cal = summary.get("calibration")
    t.add_row("calibration", f"{cal['created']} ({cal['age_days']:.1f} days old, {cal['defective_pixels']} "
                             "defective pixels)" if cal else "none: frames are raw")
    t.add_row("firmware", f"{summary.get('firmware')} ({str(summary.get('firmware_hash') or '')[:16]}) on "
                          f"{summary.get('board')} {summary.get('board_serial') or ''}")
    files = [v for v in (summary.get("files") or {}).values() if v]
    t.add_row("files", ", ".join(files))
    if summary.get("pacs"):
        p = summary["pacs"]
        t.add_row("PACS", f"{p['stored']} of {p['files']} files stored on {p['destination']}"
                  + (f" ({p['error']})" if p.get("error") else ""))
    return t
