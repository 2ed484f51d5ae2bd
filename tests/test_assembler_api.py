"""The assembler's Python API: misuse, zero copy, corrections, counters."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from pulseline.link.assembler import FrameAssembler
from pulseline.link.frames import DEFECT_PIXEL, LOST_LINE, UNREPLACED, Frame
from pulseline.link.protocol import Packet, wire
from pulseline.link.streamgen import StreamWriter, clean_stream, random_frames


def frames_of(items: list[Frame | Packet]) -> list[Frame]:
    return [x for x in items if isinstance(x, Frame)]


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "words"),
    [
        ((0, 4), {}, ValueError, "pixels_per_line"),
        ((4, 0), {}, ValueError, "lines_per_frame"),
        ((40000, 4, "mono16"), {}, ValueError, "pixels_per_line"),
        ((4, 4, "mono8"), {}, ValueError, "unknown pixel format"),
        ((4, 4, 7), {}, ValueError, "unknown pixel format code"),
        ((4.5, 4), {}, TypeError, "pixels_per_line must be an int"),
        ((4, 4), {"max_frames_in_flight": 17}, ValueError, "max_frames_in_flight"),
        ((4, 4), {"dark": np.zeros((3, 4))}, ValueError, "dark has shape"),
        ((4, 4), {"flat": "bright"}, TypeError, "flat must be an array"),
        ((4, 4), {"filter_alpha": 1.5}, ValueError, "filter_alpha"),
        ((4, 4), {"centre_fraction": 0}, ValueError, "centre_fraction"),
    ],
)
def test_misuse_is_a_clear_error(args, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        FrameAssembler(*args, **kwargs)


@pytest.mark.parametrize("bad", ["text", 5, None, [1, 2], np.zeros((4, 4), np.uint16)[:, ::2]])
def test_feed_rejects_non_bytes(bad):
    asm = FrameAssembler(4, 4)
    with pytest.raises((TypeError, ValueError)):
        asm.feed(bad)


def test_frames_are_zero_copy_and_buffers_are_reused():
    rng = np.random.default_rng(0)
    src = random_frames(rng, 20, 16, 32, wire.FMT_MONO16)
    asm = FrameAssembler(32, 16, "mono16")
    stream = clean_stream(src, wire.FMT_MONO16)
    seen = set()
    for i in range(0, len(stream), 997):
        for f in frames_of(asm.feed(stream[i:i + 997])):
            # The pixels are the very array the C code wrote into.
            assert f.pixels.flags.owndata and f.pixels.flags.c_contiguous
            assert any(f.pixels is p for p in asm._pool)
            assert (f.pixels == src[f.frame_id]).all()
            seen.add(id(f.pixels))
            del f
        gc.collect()
    # Frames dropped by the caller went back into use: a handful of arrays
    # served twenty frames.
    assert len(asm._pool) <= 6
    assert len(seen) <= 6


def test_kept_frames_are_never_overwritten():
    rng = np.random.default_rng(1)
    src = random_frames(rng, 12, 4, 8, wire.FMT_MONO12P)
    asm = FrameAssembler(8, 4, "mono12p")
    kept = frames_of(asm.feed(clean_stream(src, wire.FMT_MONO12P)) + asm.flush())
    assert [f.frame_id for f in kept] == list(range(12))
    for f in kept:
        assert (f.pixels == src[f.frame_id]).all()


def test_corrections_match_the_textbook_formula():
    rng = np.random.default_rng(2)
    h, w = 8, 10
    dark = rng.uniform(90, 110, (h, w)).astype(np.float32)
    flat = rng.uniform(2500, 3500, (h, w)).astype(np.float32)
    raw = rng.integers(100, 3000, (1, h, w)).astype(np.uint16)
    defects = np.zeros((h, w), bool)
    defects[3, 4] = defects[0, 0] = True
    asm = FrameAssembler(w, h, "mono12p", dark=dark, flat=flat, defect_map=defects)
    (f,) = frames_of(asm.feed(clean_stream(raw, wire.FMT_MONO12P)))
    want = (raw[0].astype(np.float64) - dark) / (flat - dark)
    for y, x in zip(*np.nonzero(defects), strict=True):
        nb = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
              if (dy or dx) and 0 <= y + dy < h and 0 <= x + dx < w and not defects[y + dy, x + dx]]
        want[y, x] = np.mean([want[p] for p in nb])
    assert f.pixels.dtype == np.float32
    np.testing.assert_allclose(f.pixels, want, rtol=1e-5)
    assert f.mean == pytest.approx(want.mean(), rel=1e-5)
    assert f.min == pytest.approx(want.min(), rel=1e-5)
    assert f.max == pytest.approx(want.max(), rel=1e-5)
    assert f.centre_mean == pytest.approx(want[2:6, 2:7].mean(), rel=1e-5)  # centre half: rows 2..5, cols 2..6
    assert f.defect_mask[3, 4] == DEFECT_PIXEL and f.defect_mask[1, 1] == 0


def test_one_value_per_detector_pixel_maps_broadcast_to_every_line():
    asm = FrameAssembler(6, 3, "mono16", dark=np.arange(6), flat=np.arange(6) + 100.0)
    raw = np.full((1, 3, 6), 50, np.uint16)
    (f,) = frames_of(asm.feed(clean_stream(raw, wire.FMT_MONO16)))
    np.testing.assert_allclose(f.pixels, np.broadcast_to((50 - np.arange(6)) / 100.0, (3, 6)), rtol=1e-6)


def test_flat_not_above_dark_makes_a_pixel_defective():
    dark = np.full((2, 3), 100.0)
    flat = np.full((2, 3), 1000.0)
    flat[1, 1] = 100.0
    asm = FrameAssembler(3, 2, "mono16", dark=dark, flat=flat)
    (f,) = frames_of(asm.feed(clean_stream(np.full((1, 2, 3), 550, np.uint16), wire.FMT_MONO16)))
    assert f.defect_mask[1, 1] == DEFECT_PIXEL
    assert f.pixels[1, 1] == pytest.approx(0.5)


def test_lost_lines_are_nan_and_flagged_never_filled():
    writer = StreamWriter(4, 3, wire.FMT_MONO16)
    packets = list(writer.frame(0, np.full((3, 4), 500, np.uint16)))
    stream = b"".join(p.data for i, p in enumerate(packets) if i != 1)
    asm = FrameAssembler(4, 3, "mono16", dark=np.zeros((3, 4)), filter_alpha=0.5)
    (f,) = frames_of(asm.feed(stream))
    assert np.isnan(f.pixels[1]).all() and not np.isnan(f.pixels[[0, 2]]).any()
    assert (f.defect_mask[1] == LOST_LINE).all()
    assert f.lines_lost == 1 and not f.complete and f.reason == "trailer"
    assert f.mean == 500


def test_isolated_defect_without_good_neighbours_is_left_unreplaced():
    defects = np.ones((1, 3), bool)
    asm = FrameAssembler(3, 1, "mono16", defect_map=defects)
    (f,) = frames_of(asm.feed(clean_stream(np.full((1, 1, 3), 9, np.uint16), wire.FMT_MONO16)))
    assert np.isnan(f.pixels).all()
    assert (f.defect_mask == DEFECT_PIXEL | UNREPLACED).all()
    assert np.isnan(f.mean)


def test_recursive_filter_reduces_noise_variance_by_alpha_over_two_minus_alpha():
    rng = np.random.default_rng(3)
    alpha = 0.25
    n, h, w = 120, 16, 64
    raw = rng.normal(1000, 30, (n, h, w)).round().astype(np.uint16)
    asm = FrameAssembler(w, h, "mono16", filter_alpha=alpha)
    out = np.stack([f.pixels for f in frames_of(asm.feed(clean_stream(raw, wire.FMT_MONO16)))])
    settled = out[40:]  # the filter's memory is ~1/alpha frames
    ratio = settled.var(axis=0).mean() / raw[40:].astype(np.float64).var(axis=0).mean()
    assert ratio == pytest.approx(alpha / (2 - alpha), rel=0.15)
    y = raw[0].astype(np.float64)
    for k in range(1, 5):
        y = alpha * raw[k] + (1 - alpha) * y
    np.testing.assert_allclose(out[4], y, rtol=1e-5)


def test_each_kind_of_drop_is_counted():
    writer = StreamWriter(2, 2, wire.FMT_MONO16)
    px = np.ones((2, 2), np.uint16)
    f0 = [p.data for p in writer.frame(0, px)]
    f1 = [p.data for p in writer.frame(1, px, trailer=False)]
    other = StreamWriter(3, 2, wire.FMT_MONO16)
    wrong_geometry = next(iter(other.frame(5, np.ones((2, 3), np.uint16)))).data
    v2 = bytearray(wire.encode(wire.PKT_EVENT, 0, b"x"))
    v2[4] = 2
    head = bytes(v2[4:10])
    v2[10:12] = (wire.header_check(head)).to_bytes(2, "little")
    import zlib
    v2[-4:] = zlib.crc32(bytes(v2[4:-4])).to_bytes(4, "little")
    bad_crc = bytearray(f0[0])
    bad_crc[-1] ^= 0xFF
    malformed = wire.encode(wire.PKT_TRAILER, 9, b"short")
    stream = b"".join([
        b"junk", bytes(bad_crc), f0[0], f0[0], f0[1], f0[2], f0[1], f0[2],  # dup, then late line and trailer
        wrong_geometry, bytes(v2), malformed, f1[0],
    ])
    asm = FrameAssembler(2, 2, "mono16")
    out = asm.feed(stream) + asm.flush()
    c = asm.counters
    assert c["bytes_skipped"] == 4 + len(bad_crc)
    assert c["crc_errors"] == 1
    assert c["lines_duplicate"] == 1 and c["lines_late"] == 1 and c["trailers_late"] == 1
    assert c["geometry_mismatch"] == 1 and c["bad_version"] == 1 and asm.last_bad_version == 2
    assert c["malformed"] == 1
    assert c["frames_complete"] == 1 and c["frames_incomplete"] == 1 and c["lines_lost"] == 1
    assert [f.reason for f in frames_of(out)] == ["trailer", "flush"]
    assert c["bytes_in"] == len(stream)


def test_too_many_frames_in_flight_push_out_the_oldest():
    writer = StreamWriter(2, 2, wire.FMT_MONO16)
    px = np.ones((2, 2), np.uint16)
    # Line 0 of frames 0..2 (trailers lost), then frame 3 complete.
    stream = b"".join(next(iter(writer.frame(i, px, trailer=False))).data for i in range(3))
    stream += b"".join(p.data for p in writer.frame(3, px))
    asm = FrameAssembler(2, 2, "mono16", max_frames_in_flight=2)
    got = [(f.frame_id, f.reason) for f in frames_of(asm.feed(stream) + asm.flush())]
    assert got == [(0, "overflow"), (1, "overflow"), (3, "trailer"), (2, "flush")]
    assert asm.counters["frames_overflowed"] == 2


def test_other_packets_come_out_in_stream_order():
    writer = StreamWriter(2, 1, wire.FMT_MONO16)
    ev = writer.event(3, {"state": "READY"})
    fr = list(writer.frame(0, np.ones((1, 2), np.uint16)))
    lg = writer.log("hello")
    asm = FrameAssembler(2, 1, "mono16")
    out = asm.feed(ev.data + b"".join(p.data for p in fr) + lg.data)
    assert [type(x).__name__ for x in out] == ["Packet", "Frame", "Packet"]
    assert isinstance(out[0], Packet) and out[0].type_name == "event" and b"READY" in out[0].payload
    assert isinstance(out[2], Packet) and out[2].payload.endswith(b"hello")


def test_flush_lends_buffers_when_the_held_bytes_open_many_frames():
    # A bogus header claiming a long payload holds back everything after it
    # until end of stream; flush must then open ten frames, more than the
    # spare buffers the wrapper keeps.
    writer = StreamWriter(2, 2, wire.FMT_MONO16)
    px = np.ones((2, 2), np.uint16)
    fake = bytearray(wire.encode(wire.PKT_EVENT, 0, bytes(60000)))[:200]
    stream = bytes(fake) + b"".join(next(iter(writer.frame(i, px, trailer=False))).data for i in range(10))
    asm = FrameAssembler(2, 2, "mono16", max_frames_in_flight=16)
    assert asm.feed(stream) == []
    assert sorted(f.frame_id for f in frames_of(asm.flush())) == list(range(10))
    assert asm.counters["lines_lost"] == 10


def test_trailer_only_frame_takes_pulse_and_time_from_its_trailer():
    writer = StreamWriter(2, 2, wire.FMT_MONO16)
    packets = list(writer.frame(4, np.ones((2, 2), np.uint16), pulse_id=9, timestamp_us=123456))
    asm = FrameAssembler(2, 2, "mono16")
    (f,) = frames_of(asm.feed(packets[-1].data))
    assert (f.pulse_id, f.timestamp_us, f.lines_lost) == (9, 123456, 2)


def test_no_other_version_seen_is_none_and_version_zero_is_reported():
    asm = FrameAssembler(2, 2, "mono16")
    assert asm.last_bad_version is None
    import zlib
    pkt = bytearray(wire.encode(wire.PKT_LOG, 0, b"x"))
    pkt[4] = 0
    pkt[10:12] = wire.header_check(bytes(pkt[4:10])).to_bytes(2, "little")
    pkt[-4:] = zlib.crc32(bytes(pkt[4:-4])).to_bytes(4, "little")
    asm.feed(bytes(pkt))
    assert asm.last_bad_version == 0


def test_feed_returns_everything_its_bytes_complete():
    # A damaged candidate with a plausible header holds the packets after it
    # until its claimed length has arrived. When the chunk that completes it
    # also completes frames than need more than the spare buffers, feed()
    # must still hand out every one of them now, not on the next call.
    writer = StreamWriter(2, 1, wire.FMT_MONO16)
    frames = b"".join(p.data for i in range(10) for p in writer.frame(i, np.ones((1, 2), np.uint16)))
    fake = bytearray(wire.encode(wire.PKT_EVENT, 0, bytes(2000)))
    fake[-1] ^= 0xFF  # its CRC fails only once all 2016 bytes are in
    held = bytes(fake[:12]) + frames
    stream = held + bytes(len(fake) - len(held))
    asm = FrameAssembler(2, 1, "mono16", max_frames_in_flight=16)
    # Two chunks, so the held bytes wait in the assembler between calls.
    assert asm.feed(stream[:100]) == []
    assert sorted(f.frame_id for f in frames_of(asm.feed(stream[100:]))) == list(range(10))
