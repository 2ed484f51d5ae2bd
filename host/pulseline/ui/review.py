"""The review station: a recorded run (an exam directory, as `pulseline
capture -o` writes it) played back in the browser for detailed study.

    ReviewView(read_exam(path))      one exam -> one page, served on this machine

The page is a cine loop at the run's true frame time (the frames'
timestamps; else the pulse rate), with play, pause, step, speed and a
scrubber; window and level; each frame's own technique and dose (kV, mA,
pulse width, air kerma, kerma-area product, lost lines); the exam's
irradiation events and totals from the board's dose report; the last frame
marked as the image held. It is served exactly as the live view is
(view.PageServer): this launch's token on every request, Host and Origin
checked, the CSP with no inline script or style, no framing, loopback
unless allow_remote. It takes no commands: everything is GET.

API (all under the token):
    GET /api/exam                        the exam as JSON (see describe())
    GET /api/frames?start=S&count=C      frames S..S+C-1, application/octet-stream:
                                         C x lines x pixels uint16 little-endian

Frames go to the page as 16-bit pixels, not windowed images: the page
windows them itself (window and level change with no request), and a
256 x 256 frame is 128 KiB, so a run of a few hundred frames is a few tens
of MiB over loopback, fetched in chunks of CHUNK_FRAMES as the page needs
them. Corrected (float) frames are rounded and clipped to 0..65535 with
lost lines (NaN) at 0, as the DICOM RF image stores them.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..exam.exam_dir import Exam, display_window
from ..exam.exams import how_it_ended, pulse_span
from .view import DISPLAY_SCRIPT, PAGE, PageServer, display_pixels

REVIEW_PAGE = PAGE.with_name("review_page.html")
REVIEW_SCRIPT = PAGE.with_name("review_page.js")
REVIEW_STYLE = PAGE.with_name("review_page.css")
BASE_STYLE = PAGE.with_name("view_page.css")  # the live view's look, shared
CHUNK_FRAMES = 32  # frames per /api/frames answer at most (4 MiB at 256 x 256)
WHAT = "review"
RISK = "can see the exam (its images, technique and dose)"


def _json_safe(value: Any) -> Any:
    """`value` with every number that is not finite as null (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _holds(event: dict[str, Any], t_us: int) -> bool:
    """Whether a frame of this (board) time is of this irradiation event."""
    span = pulse_span(event)
    return span is not None and span[0] <= t_us <= span[1]


def describe(exam: Exam) -> dict[str, Any]:
    """What the page is told of the exam: geometry, the frame time and where
    it comes from, the display window, every frame's metadata as the TIFF
    holds it (plus its time from the first frame and its irradiation
    event), the dose report and what identifies the run."""
    n, lines, pixels = (int(v) for v in exam.frames.shape)
    rate = exam.frame_rate()
    stamps = [m.get("timestamp_us") for m in exam.meta]
    timed = n > 1 and all(isinstance(t, int) for t in stamps) and stamps[-1] > stamps[0]  # type: ignore[operator]
    summary = exam.summary
    report = summary.get("dose_report") or {}
    events = [dict(e) for e in report.get("events") or [] if isinstance(e, dict)]
    times = exam.times_s()
    frames = []
    for i, m in enumerate(exam.meta):
        ts = m.get("timestamp_us")
        event = next((e.get("event") for e in events if isinstance(ts, int) and _holds(e, ts)), None)
        frames.append({**m, "index": i, "t_s": round(times[i], 6), "event": event,
                       "label": exam.labels[i] if i < len(exam.labels) else ""})
    t0 = stamps[0] if stamps and isinstance(stamps[0], int) else None
    for e in events:  # when each began, on the run's clock (its first frame at 0)
        e["t_s"] = (e["start_us"] - t0) / 1e6 if t0 is not None and isinstance(e.get("start_us"), int) else None
        e["ended"] = how_it_ended(e).strip(" ()")
    lo, hi = display_window(exam.frames)
    full = 4095 if (summary.get("detector") or {}).get("pixel_format") == 2 and hi <= 4095 else 65535
    warnings = [str(w) for w in summary.get("warnings") or []]
    if summary.get("error"):
        warnings.append(f"the capture ended early: {summary['error']}")
    if summary.get("saving"):
        warnings.append("the exam was not saved to the end (summary.json says it was still saving)")
    if not summary:
        warnings.append("no summary.json: no dose report")
    out: dict[str, Any] = _json_safe({
        "name": exam.path.name or str(exam.path), "path": str(exam.path),
        "frames": n, "lines": lines, "pixels": pixels, "corrected": exam.frames.dtype.kind == "f",
        "frame_time_ms": 1000.0 / float(rate), "frame_rate": float(rate),
        "frame_time_from": "the frames' timestamps" if timed else "the pulse rate",
        "window": {"lo": lo, "hi": hi, "full_scale": full},
        "technique": exam.technique or summary.get("technique") or {},
        "meta": frames,
        "dose_report": {**report, "events": events},
        "firmware": summary.get("firmware"), "board": summary.get("board"),
        "board_serial": summary.get("board_serial"), "detector_serial": summary.get("detector_serial"),
        "preset": summary.get("preset"), "calibration": summary.get("calibration"),
        "lines_lost": summary.get("lines_lost", sum(int(m.get("lines_lost") or 0) for m in exam.meta)),
        "warnings": warnings, "chunk_frames": CHUNK_FRAMES,
    })
    return out


class ReviewView(PageServer):
    """Serve one exam's review at http://HOST:PORT/?token=TOKEN (`url`):
    start(), then stop() (or as a context manager)."""

    what = WHAT
    risk = RISK

    def __init__(self, exam: Exam, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False) -> None:
        super().__init__(host=host, port=port, allow_remote=allow_remote)
        self.exam = exam
        self.description = describe(exam)

    def frames_bytes(self, start: int, count: int) -> bytes:
        """Frames start..start+count-1 as the page takes them (module doc)."""
        px = display_pixels(np.asarray(self.exam.frames[start:start + count]))
        return np.ascontiguousarray(px, dtype="<u2").tobytes()

    def _routes(self) -> list[BaseRoute]:
        n = len(self.exam)

        async def exam(request: Request) -> JSONResponse:
            return JSONResponse(self.description)

        async def frames(request: Request) -> Response:
            try:
                start = int(request.query_params.get("start", "0"))
                count = int(request.query_params.get("count", str(CHUNK_FRAMES)))
            except ValueError:
                return JSONResponse({"ok": False, "error": "start and count are whole numbers"}, status_code=400)
            if not (0 <= start < n and 1 <= count <= CHUNK_FRAMES):
                return JSONResponse({"ok": False, "error": f"frames {start}..{start + count - 1}: the exam has "
                                     f"frames 0..{n - 1}, and at most {CHUNK_FRAMES} go at once"}, status_code=400)
            count = min(count, n - start)
            # (Read from the file, memory-mapped: off the event loop.)
            data = await asyncio.get_running_loop().run_in_executor(None, self.frames_bytes, start, count)
            return Response(data, media_type="application/octet-stream",
                            headers={"X-Pulseline-Frames": f"{start} {count}"})

        return [*self._page_routes(REVIEW_PAGE, BASE_STYLE, REVIEW_STYLE, DISPLAY_SCRIPT, REVIEW_SCRIPT),
                Route("/api/exam", exam), Route("/api/frames", frames)]

    def start(self) -> ReviewView:
        self.start_server()
        return self

    def stop(self) -> None:
        self.stop_server()

    def __enter__(self) -> ReviewView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
