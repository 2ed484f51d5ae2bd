"""`pulseline export`: a recorded run (an exam directory) as an H.264 MP4 at
the run's true frame rate, optionally with each frame's time and dose
burnt in, and as a contact sheet (a PNG grid of its frames) for reports.
Frames are windowed for display as last.png is (1st..99th percentile, here
over the whole run); lines that never arrived are black. Each file lands
whole or not at all (write_atomic)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import PulselineError
from .capture import write_atomic
from .exam_dir import Exam, display_window, to_display

CODEC = "libx264"  # H.264; PyAV's wheels bundle FFmpeg with libx264
CRF = "18"  # x264's constant quality: visually lossless for these 8-bit grey frames
SHEET_FRAMES = 36  # a contact sheet shows at most this many frames, evenly spaced
SHEET_TILE = 256  # px: frames larger than this are scaled down to it (the longer side) on the sheet
SHEET_GAP = 4  # px between tiles and around them
SHEET_BACKGROUND = 48
CAPTION_SIZE = 11  # px: the contact sheet's captions and title


class ExportError(PulselineError):
    """The encoder failed (for a reason other than the disk: those stay OSError)."""


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError, ValueError):  # (a Pillow without FreeType: its fixed bitmap font)
        return ImageFont.load_default()


def _line_height(font: Any) -> int:
    bottom = font.getbbox("Ag0|")[3]
    return int(bottom) + 2


def _fit(font: Any, pieces: list[str], width: int, sep: str = "  ") -> str:
    """As many of `pieces` (from the first) as fit in `width` px."""
    for k in range(len(pieces), 0, -1):
        text = sep.join(pieces[:k])
        if font.getlength(text) <= width:
            return text
    return pieces[0] if pieces else ""


def _num(x: Any, fmt: str) -> str | None:
    return format(float(x), fmt) if isinstance(x, int | float) else None


def burn_in_lines(meta: dict[str, Any], time_s: float, cumulative_ugy: float) -> tuple[str, str]:
    """The two lines burnt into a frame: its time and number; its technique
    and dose (its own air kerma and the run's up to it)."""
    top = f"t {time_s:7.3f} s   frame {meta.get('frame_id', '?')}"
    if meta.get("lines_lost"):
        top += f"   {meta['lines_lost']} lines lost"
    kv, ma, kerma = _num(meta.get("kv"), ".1f"), _num(meta.get("ma"), ".2f"), _num(meta.get("air_kerma_ugy"), ".2f")
    if kv is None:
        bottom = f"no technique (no trailer)   cum {cumulative_ugy / 1000:.3f} mGy"
    else:
        bottom = f"{kv} kV {ma} mA   {kerma} uGy   cum {cumulative_ugy / 1000:.3f} mGy"
    return top, bottom


def _padded(img: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Black on the right and at the bottom up to height x width (H.264's
    4:2:0 needs even dimensions: padded, never scaled)."""
    if img.shape == (height, width):
        return img
    out = np.zeros((height, width), np.uint8)
    out[:img.shape[0], :img.shape[1]] = img
    return out


def _presentation_times(meta: list[dict[str, Any]]) -> list[int]:
    """Each frame's time in frame periods from the first: its pulse number
    (so a frame lost on the link leaves its gap, and the video keeps real
    time) when the pulse ids rise, else its place in the run."""
    try:
        pulses = [int(m["pulse_id"]) for m in meta]
    except (KeyError, TypeError, ValueError):
        return list(range(len(meta)))
    if all(b > a for a, b in itertools.pairwise(pulses)):
        return [p - pulses[0] for p in pulses]
    return list(range(len(meta)))


def _write_mp4(exam: Exam, path: Path, *, burn_in: bool, codec: str, rate: Fraction) -> dict[str, Any]:
    import av
    from PIL import Image, ImageDraw

    n, h, w = (int(x) for x in exam.frames.shape)
    height, width = h + h % 2, w + w % 2
    window = display_window(exam.frames)
    pts = _presentation_times(exam.meta)
    times, cumulative = exam.times_s(), exam.cumulative_kerma_ugy()
    font = _font(max(9, min(28, width // 24)))
    line = _line_height(font)
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        if codec == "libx264":
            stream.codec_context.options = {"crf": CRF}
        for i in range(n):
            img = _padded(to_display(exam.frames[i], window), height, width)
            if burn_in:
                pic = Image.fromarray(img, mode="L")
                draw = ImageDraw.Draw(pic)
                top, bottom = burn_in_lines(exam.meta[i], times[i], cumulative[i])
                draw.text((3, 2), top, font=font, fill=255, stroke_width=1, stroke_fill=0)
                draw.text((3, height - line - 3), bottom, font=font, fill=255, stroke_width=1, stroke_fill=0)
                img = np.asarray(pic)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="gray").reformat(format="yuv420p")
            frame.pts, frame.time_base = pts[i], 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return {"path": str(path), "frames": n, "frame_rate": str(rate), "fps": float(rate), "width": width,
            "height": height, "codec": codec, "duration_s": round(float((pts[-1] + 1) / rate), 6) if n else 0.0,
            "window": [round(v, 3) for v in window], "burn_in": burn_in}


def export_mp4(exam: Exam, path: Path, *, burn_in: bool = False, codec: str = CODEC) -> dict[str, Any]:
    """The run as an H.264 MP4 at its true frame rate (an exact fraction:
    7.5 pps is 15/2 fps), 8-bit grey (yuv420p, as every player takes),
    padded to even dimensions. With burn_in, each frame shows its time,
    number, kV, mA, air kerma and the run's cumulative air kerma. Written
    atomically; returns what was written."""
    if not len(exam):
        raise ValueError(f"{exam.path} holds no frames")
    rate = exam.frame_rate()
    result: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        import av

        try:
            result.update(_write_mp4(exam, tmp, burn_in=burn_in, codec=codec, rate=rate))
        except av.FFmpegError as exc:
            if isinstance(exc, OSError):
                raise
            raise ExportError(f"the {codec} encoder failed: {exc}") from None

    write_atomic(path, write)
    result["path"] = str(path)
    return result


@dataclass
class SheetLayout:
    picks: list[int]  # the frames shown (indices into the run)
    cols: int
    rows: int
    tile_w: int
    tile_h: int
    caption_h: int
    header_h: int
    width: int
    height: int


def sheet_layout(n: int, shape: tuple[int, int], max_frames: int = SHEET_FRAMES, tile: int = SHEET_TILE,
                 caption_h: int | None = None) -> SheetLayout:
    """Where the contact sheet puts what: up to max_frames frames, evenly
    spaced over the run (the first and the last among them), in a grid as
    square as it goes (columns first), each tile the frame scaled down to
    `tile` px on its longer side if it is larger, a caption under each, a
    title line on top, SHEET_GAP px between and around."""
    if n < 1 or max_frames < 1:
        raise ValueError("a contact sheet needs a frame at least")
    picks = [int(i) for i in np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))]
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    h, w = shape
    scale = min(1.0, tile / max(h, w))
    tile_w, tile_h = max(1, round(w * scale)), max(1, round(h * scale))
    ch = caption_h if caption_h is not None else _line_height(_font(CAPTION_SIZE))
    width = cols * tile_w + (cols + 1) * SHEET_GAP
    height = ch + rows * (tile_h + ch) + (rows + 1) * SHEET_GAP
    return SheetLayout(picks, cols, rows, tile_w, tile_h, ch, ch, width, height)


def _write_sheet(exam: Exam, path: Path, layout: SheetLayout) -> None:
    from PIL import Image, ImageDraw

    font = _font(CAPTION_SIZE)
    window = display_window(exam.frames)
    times, n = exam.times_s(), len(exam)
    sheet = Image.new("L", (layout.width, layout.height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    title = [f"{exam.path.name or exam.path}:", f"{n} frames", f"at {float(exam.frame_rate()):g} fps"]
    kv, ma = exam.technique.get("kv"), exam.technique.get("ma")
    if isinstance(kv, int | float) and isinstance(ma, int | float):
        title.append(f"{kv:g} kV {ma:g} mA")
    title.append(f"{exam.cumulative_kerma_ugy()[-1] / 1000:.3f} mGy")
    if len(layout.picks) < n:
        title.append(f"({len(layout.picks)} shown, evenly spaced)")
    draw.text((SHEET_GAP, SHEET_GAP // 2), _fit(font, title, layout.width - 2 * SHEET_GAP, " "), font=font, fill=255)
    for k, i in enumerate(layout.picks):
        row, col = divmod(k, layout.cols)
        x = SHEET_GAP + col * (layout.tile_w + SHEET_GAP)
        y = layout.header_h + SHEET_GAP + row * (layout.tile_h + layout.caption_h + SHEET_GAP)
        tile = Image.fromarray(to_display(exam.frames[i], window), mode="L")
        if tile.size != (layout.tile_w, layout.tile_h):
            tile = tile.resize((layout.tile_w, layout.tile_h), Image.Resampling.BOX)
        sheet.paste(tile, (x, y))
        fid = exam.meta[i].get("frame_id")
        caption = [f"#{i + 1}", f"frame {fid}" if fid is not None else "", f"{times[i]:.2f} s"]
        draw.text((x, y + layout.tile_h + 1), _fit(font, [c for c in caption if c], layout.tile_w), font=font,
                  fill=255)
    sheet.save(path, format="PNG")


def export_contact_sheet(exam: Exam, path: Path, *, max_frames: int = SHEET_FRAMES) -> dict[str, Any]:
    """The run's frames (up to max_frames, evenly spaced) as a PNG grid,
    each captioned with its number in the run (#1..#N), its frame id and
    its time; a title line with the run's frames, rate, technique and air
    kerma. Written atomically; returns what was written."""
    layout = sheet_layout(len(exam), (int(exam.frames.shape[1]), int(exam.frames.shape[2])), max_frames)
    write_atomic(path, lambda tmp: _write_sheet(exam, tmp, layout))
    return {"path": str(path), "frames": len(exam), "frames_shown": [i + 1 for i in layout.picks],
            "cols": layout.cols, "rows": layout.rows, "width": layout.width, "height": layout.height}
