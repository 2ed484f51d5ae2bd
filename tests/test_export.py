"""`pulseline export`: a recorded run as an H.264 MP4 at its true frame rate
and as a contact sheet; frames16.tif beside frames.tif; the exam reader.
On a small synthetic exam written by save(), so it is quick."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pulseline.cli import main
from pulseline.exam.capture import Capture, as_stored_pixels, save
from pulseline.exam.exam_dir import ExamDirError, frame_rate, read_exam
from pulseline.exam.export import sheet_layout
from pulseline.link.frames import Frame
from pulseline.link.protocol import Trailer

LINES, PIXELS = 45, 62  # odd lines: H.264 needs even dimensions, so the video is padded to 46
PPS = 7.5


def synthetic_capture(n: int = 10, *, corrected: bool = True, lost_pulse: int | None = None,
                      pps: float = PPS) -> Capture:
    """n frames of a moving edge; frame 3 lost two lines (NaN corrected, 0 raw);
    the pulse `lost_pulse` never came (its frame lost on the link)."""
    rng = np.random.default_rng(3)
    frames = []
    pulses = [p for p in range(20, 20 + n + (lost_pulse is not None)) if p != lost_pulse]
    for k, pulse in enumerate(pulses):
        px = 900 + 40 * rng.standard_normal((LINES, PIXELS))
        px[:, : 10 + 3 * k] -= 300  # the edge
        received = np.ones(LINES, bool)
        if k == 3:
            received[[7, 8]] = False
        if corrected:
            px = px.astype(np.float32)
            px[~received] = np.nan
            px[0, 0] = -20.0  # a corrected pixel below 0: stored clipped
        else:
            px = np.clip(px, 0, 4095).astype(np.uint16)
            px[~received] = 0
        ts = round(pulse * 1e6 / pps)
        trailer = Trailer(100 + k, pulse, ts, LINES, LINES, 80.0 + 0.1 * k, 20.0, 10.0, 39.0 + k, 0.15)
        frames.append(Frame(100 + k, px, received, "trailer", trailer, pulse, ts, 0.0, 0.0, 0.0, 0.0))
    config = {"kv": 80.0, "ma": 20.0, "pulse_width_ms": 10.0, "pulses_per_s": pps, "abc_enabled": False,
              "filter_alpha": 0.0, "pixels_per_line": PIXELS, "lines_per_frame": LINES, "pixel_format": 2}
    return Capture(frames=frames, config=config, board={"firmware": "test", "serial": "SIM-1"},
                   calibration={"created": "2026-01-01T00:00:00+00:00"} if corrected else None)


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "exam"
    save(synthetic_capture(), out, "test")
    return out


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(list(args))
    got = capsys.readouterr()
    return status, got.out, got.err


def decoded(path: Path) -> tuple[list[np.ndarray], object]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="gray") for f in container.decode(stream)]
        return frames, (stream.codec_context.name, stream.average_rate, stream.width, stream.height)


def test_export_mp4_is_h264_at_the_runs_frame_rate_padded_to_even(exam, tmp_path):
    out = tmp_path / "run.mp4"
    res = subprocess.run([sys.executable, "-m", "pulseline.cli", "export", str(exam), "--mp4", str(out), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    said = json.loads(res.stdout)["mp4"]
    assert said["frame_rate"] == "15/2" and said["codec"] == "libx264" and said["frames"] == 10
    frames, (codec, rate, width, height) = decoded(out)
    assert codec == "h264" and rate == Fraction(15, 2)
    assert (width, height) == (PIXELS, LINES + 1) and len(frames) == 10
    assert frames[0].shape == (LINES + 1, PIXELS)
    # Windowed for display: the edge dark, the open field bright; the padding and the lost lines black.
    assert frames[0][:, :8].mean() < 80 and frames[0][:, 40:].mean() > 160
    assert frames[0][LINES].mean() < 10 and frames[3][7:9].mean() < 10 < frames[3][4:6].mean()
    assert not list(tmp_path.glob(".*partial*"))


def test_burn_in_writes_time_and_dose_into_the_picture(exam, tmp_path, capsys):
    status, out, err = cli("export", str(exam), "--mp4", str(tmp_path / "plain.mp4"), capsys=capsys)
    assert status == 0, err
    status, out, err = cli("export", str(exam), "--mp4", str(tmp_path / "burnt.mp4"), "--burn-in", capsys=capsys)
    assert status == 0, err
    assert "10 frames" in out and "7.5 fps (15/2)" in out and "burnt in" in out
    plain, _ = decoded(tmp_path / "plain.mp4")
    burnt, _ = decoded(tmp_path / "burnt.mp4")
    assert len(burnt) == 10
    top = np.abs(burnt[5][:12].astype(int) - plain[5][:12].astype(int)).mean()
    middle = np.abs(burnt[5][18:28].astype(int) - plain[5][18:28].astype(int)).mean()
    assert top > 10 * max(middle, 0.5), (top, middle)  # text at the top, the picture untouched between


def test_burn_in_lines_say_time_technique_and_cumulative_dose():
    from pulseline.exam.export import burn_in_lines

    top, bottom = burn_in_lines({"frame_id": 66, "kv": 80.139, "ma": 19.9882, "air_kerma_ugy": 39.0906,
                                 "lines_lost": 2}, 1.6, 626.18)
    assert top == "t   1.600 s   frame 66   2 lines lost"
    assert bottom == "80.1 kV 19.99 mA   39.09 uGy   cum 0.626 mGy"


def test_a_frame_lost_on_the_link_keeps_real_time(tmp_path):
    import av

    from pulseline.exam.export import export_mp4

    save(synthetic_capture(6, lost_pulse=23), tmp_path / "gap", "test")
    e = read_exam(tmp_path / "gap")
    assert len(e) == 6 and e.frame_rate() == Fraction(15, 2)
    export_mp4(e, tmp_path / "gap.mp4")
    with av.open(str(tmp_path / "gap.mp4")) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    assert times == pytest.approx([0, 2 / 15, 4 / 15, 8 / 15, 10 / 15, 12 / 15])  # pulse 23 left its gap


def test_frame_rate_is_exact_and_measured_when_the_nominal_one_is_wrong():
    def meta(pps: float, n: int = 5) -> list[dict[str, int]]:
        return [{"pulse_id": p, "timestamp_us": round(p * 1e6 / pps)} for p in range(n)]

    assert frame_rate(meta(3.75), 3.75) == Fraction(15, 4)
    assert frame_rate(meta(30), 30.0) == 30
    assert frame_rate(meta(15), None) == 15  # the timestamps alone
    assert frame_rate(meta(15), 7.5) == 15  # the board's clock wins over a nominal rate it contradicts
    assert frame_rate([{}], 7.5) == Fraction(15, 2)


def test_contact_sheet_is_a_png_grid_of_the_run(exam, tmp_path, capsys):
    from PIL import Image

    status, out, err = cli("export", str(exam), "--contact-sheet", str(tmp_path / "sheet.png"), "--json",
                           capsys=capsys)
    assert status == 0, err
    said = json.loads(out)["contact_sheet"]
    assert (said["cols"], said["rows"]) == (4, 3) and said["frames_shown"] == list(range(1, 11))
    layout = sheet_layout(10, (LINES, PIXELS))
    with Image.open(tmp_path / "sheet.png") as img:
        assert img.format == "PNG" and img.mode == "L"
        assert img.size == (layout.width, layout.height) == (4 * PIXELS + 5 * 4,
                                                             layout.header_h + 3 * (LINES + layout.caption_h) + 4 * 4)
    # An evenly spaced subset, the first and the last among them.
    status, out, err = cli("export", str(exam), "--contact-sheet", str(tmp_path / "four.png"), "--sheet-frames", "4",
                           "--json", capsys=capsys)
    assert status == 0, err
    said = json.loads(out)["contact_sheet"]
    assert said["frames_shown"] == [1, 4, 7, 10] and (said["cols"], said["rows"]) == (2, 2)
    with Image.open(tmp_path / "four.png") as img:
        assert img.size == (2 * PIXELS + 3 * 4, layout.header_h + 2 * (LINES + layout.caption_h) + 3 * 4)
    big = sheet_layout(500, (1024, 1024))
    assert len(big.picks) == 36 and (big.cols, big.rows) == (6, 6) and big.tile_w == big.tile_h == 256


def test_frames16_holds_the_frames_as_rf_dcm_stores_them(exam):
    summary = json.loads((exam / "summary.json").read_text())
    assert summary["files"]["frames16"] == "frames16.tif" and summary["saving"] is False
    with tifffile.TiffFile(exam / "frames.tif") as tif:
        floats, ij = tif.asarray(), tif.imagej_metadata
    with tifffile.TiffFile(exam / "frames16.tif") as tif:
        ints, ij16 = tif.asarray(), tif.imagej_metadata
    assert floats.dtype == np.float32 and ints.dtype == np.uint16 and ints.shape == floats.shape == (10, LINES, PIXELS)
    assert ij16["Labels"] == ij["Labels"] and len(ij16["Labels"]) == 10 and "80.0 kV" in ij16["Labels"][0]
    assert ij16["Properties"] == ij["Properties"] and ij16["finterval"] == pytest.approx(1 / PPS)
    assert (ints == as_stored_pixels(synthetic_capture().frames, 4095)).all()
    assert ints[0, 0, 0] == 0 and (ints[3, 7:9] == 0).all()  # clipped; the lost lines 0, as in rf.dcm
    assert (ints[5, 20:30] == np.rint(floats[5, 20:30])).all()


def test_raw_frames_are_not_copied_to_frames16(tmp_path):
    summary = save(synthetic_capture(3, corrected=False), tmp_path / "raw", "test")
    assert summary["files"]["frames"] == "frames.tif" and summary["files"]["frames16"] is None
    assert tifffile.imread(tmp_path / "raw" / "frames.tif").dtype == np.uint16
    assert not (tmp_path / "raw" / "frames16.tif").exists()


def test_read_exam_gives_frames_metadata_and_summary(exam, tmp_path):
    e = read_exam(exam)
    assert e.frames.shape == (10, LINES, PIXELS) and len(e.meta) == len(e.labels) == 10
    assert e.meta[0]["frame_id"] == 100 and e.meta[0]["kv"] == 80.0 and e.summary["frames"] == 10
    assert e.technique["pulses_per_s"] == PPS and e.times_s()[2] == pytest.approx(2 / PPS, abs=1e-6)
    assert e.cumulative_kerma_ugy()[-1] == pytest.approx(sum(39.0 + k for k in range(10)))
    save(synthetic_capture(1), tmp_path / "one", "test")  # one frame: still a stack of one
    one = read_exam(tmp_path / "one")
    assert one.frames.shape == (1, LINES, PIXELS) and len(one.labels) == 1 and one.labels[0].startswith("frame 100")


def test_bad_inputs_are_refused_in_one_line(exam, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "frames.tif").write_bytes(b"not a tiff at all")
    mp4 = str(tmp_path / "x.mp4")
    for args, said in (
            ([str(exam)], "export needs --mp4 FILE, --contact-sheet FILE.png, or both"),
            ([str(exam), "--contact-sheet", str(tmp_path / "s.png"), "--burn-in"], "--burn-in goes with --mp4"),
            ([str(tmp_path / "nope"), "--mp4", mp4], "no such exam directory"),
            ([str(tmp_path / "file"), "--mp4", mp4], "is not a directory"),
            ([str(tmp_path / "empty"), "--mp4", mp4], "holds no frames.tif"),
            ([str(tmp_path / "broken"), "--mp4", mp4], "cannot read"),
            ([str(exam), "--mp4", str(tmp_path / "no" / "such" / "x.mp4")], "does not exist"),
            ([str(exam), "--mp4", str(tmp_path / "file" / "x.mp4")], "is not a directory"),
            ([str(exam), "--contact-sheet", str(tmp_path)], "it is a directory")):
        status, out, err = cli("export", *args, capsys=capsys)
        assert status == 2, (args, out, err)
        assert err.count("\n") == 1 and err.startswith("pulseline: error: ") and said in err, (args, err)
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "s.png").exists()
    # A usage error is one line too.
    status, out, err = cli("export", "--mp4", mp4, capsys=capsys)
    assert status == 2 and err.count("\n") == 1


def test_a_write_that_fails_midway_leaves_no_file(exam, tmp_path, capsys, monkeypatch):
    import errno

    import pulseline.exam.export as export

    def full_disk(exam, path, **kw):
        Path(path).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_write_mp4", full_disk)
    status, _, err = cli("export", str(exam), "--mp4", str(tmp_path / "x.mp4"), capsys=capsys)
    assert status == 2 and err == f"pulseline: error: cannot write {tmp_path / 'x.mp4'}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []


def test_read_exam_refuses_what_is_not_an_exam(tmp_path):
    with pytest.raises(ExamDirError, match="no such exam directory"):
        read_exam(tmp_path / "nope")
