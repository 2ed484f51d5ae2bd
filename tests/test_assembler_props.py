"""Property tests of the native assembler on generated streams.

1. It agrees with the plain-Python reference frame by frame and counter by
   counter, on any geometry, format, options, chunking and damage.
2. Its lost-line accounting equals the injected truth exactly, and no damaged
   line is ever delivered as good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulseline.link.assembler import FrameAssembler
from pulseline.link.assembler_ref import ReferenceAssembler
from pulseline.link.frames import Frame, nan_equal
from pulseline.link.protocol import Packet, wire
from pulseline.link.streamgen import StreamWriter, WirePacket, random_frames

FORMATS = st.sampled_from([wire.FMT_MONO16, wire.FMT_MONO12P])
ACTIONS = ["keep"] * 6 + ["drop", "flip", "cut", "dup", "garbage", "swap"]


@dataclass
class Scenario:
    ppl: int
    lpf: int
    fmt: int
    frames: np.ndarray
    packets: list[WirePacket]
    options: dict[str, object]


@st.composite
def scenarios(draw: st.DrawFn, max_frames: int = 5) -> Scenario:
    ppl = draw(st.integers(1, 12))
    lpf = draw(st.integers(1, 8))
    fmt = draw(FORMATS)
    count = draw(st.integers(1, max_frames))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    frames = random_frames(rng, count, lpf, ppl, fmt)
    first = draw(st.integers(0, 2**32 - 1 - count))
    writer = StreamWriter(ppl, lpf, fmt)
    packets: list[WirePacket] = []
    for i in range(count):
        if draw(st.booleans()):
            packets.append(writer.event(7, {"frame": i}))
        packets.extend(writer.frame(first + i, frames[i]))
    if draw(st.booleans()):
        packets.append(writer.log("done"))
    options: dict[str, object] = {"max_frames_in_flight": draw(st.integers(1, 5))}
    if draw(st.booleans()):
        shape = (lpf, ppl)
        options["dark"] = rng.uniform(0, 200, shape).astype(np.float32)
        options["flat"] = rng.uniform(150, 4000, shape).astype(np.float32)  # some flat <= dark: defective
        options["defect_map"] = rng.random(shape) < draw(st.sampled_from([0.0, 0.1, 0.5]))
        options["filter_alpha"] = draw(st.sampled_from([None, 0.25, 1.0]))
        options["centre_fraction"] = draw(st.sampled_from([0.5, 1.0, 0.1]))
    return Scenario(ppl, lpf, fmt, frames, packets, options)


def damage(draw: st.DrawFn, packets: list[WirePacket], allow_cross_frame_swap: bool) -> bytes:
    """Apply one action per packet (keep, drop, flip a bit, cut bytes,
    duplicate, append garbage, swap with the next) and return the stream."""
    order = list(range(len(packets)))
    out = bytearray()
    actions = [draw(st.sampled_from(ACTIONS)) for _ in packets]
    # Swaps: exchange a packet with the next; within a frame's lines only, if asked.
    for i, act in enumerate(actions):
        if act == "swap" and i + 1 < len(order):
            a, b = packets[order[i]], packets[order[i + 1]]
            same_frame_lines = a.type == b.type == wire.PKT_LINE and a.frame_id == b.frame_id
            if allow_cross_frame_swap or same_frame_lines:
                order[i], order[i + 1] = order[i + 1], order[i]
    for pos, idx in enumerate(order):
        data = bytearray(packets[idx].data)
        act = actions[pos]
        if act == "drop":
            continue
        if act == "flip":
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif act == "cut":
            at = draw(st.integers(0, len(data) - 1))
            del data[at: at + draw(st.integers(1, 3))]
        out += data
        if act == "dup":
            out += data
        if act == "garbage":
            out += draw(st.binary(min_size=1, max_size=30))
    return bytes(out)


def arrived(packets: list[WirePacket], stream: bytes) -> set[int]:
    """Truth at the byte level, independent of the assembler: a receiver that
    knows every packet sent scans left to right and, wherever a sent packet's
    exact bytes start, takes it whole; otherwise it moves on one byte.

    Damage can undo itself (a packet that lost its leading 0xA5 right after a
    packet whose CRC ends in 0xA5 is whole again), and a packet taken whole
    hides any other that shares its bytes; any correct receiver sees the
    same, up to CRC-32's 2**-32 chance of taking a damaged candidate."""
    by_header: dict[bytes, list[int]] = {}
    for i, p in enumerate(packets):
        by_header.setdefault(p.data[: wire.HEADER_SIZE], []).append(i)
    found: set[int] = set()
    pos = stream.find(wire.SYNC)
    while 0 <= pos < len(stream):
        hit = next((i for i in by_header.get(stream[pos: pos + wire.HEADER_SIZE], [])
                    if stream.startswith(packets[i].data, pos)), None)
        if hit is None:
            pos = stream.find(wire.SYNC, pos + 1)
            continue
        found.add(hit)
        pos = stream.find(wire.SYNC, pos + len(packets[hit].data))
    return found


def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    sizes = draw(st.lists(st.integers(1, 200), max_size=30))
    chunks, pos = [], 0
    for s in sizes:
        if pos >= len(stream):
            break
        chunks.append(stream[pos: pos + s])
        pos += s
    chunks.append(stream[pos:])
    return chunks


def run(asm: FrameAssembler | ReferenceAssembler, chunks: list[bytes]) -> list[Frame | Packet]:
    out: list[Frame | Packet] = []
    for c in chunks:
        out += asm.feed(c)
    out += asm.flush()
    return out


def same_pixels(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == np.uint16:
        return bool((a == b).all())
    return bool(np.allclose(a, b, rtol=1e-5, atol=1e-4, equal_nan=True))


def assert_same_outputs(got: list[Frame | Packet], want: list[Frame | Packet]) -> None:
    assert [type(x).__name__ for x in got] == [type(x).__name__ for x in want]
    for g, w in zip(got, want, strict=True):
        if isinstance(g, Packet):
            assert g == w
            continue
        assert isinstance(w, Frame)
        assert (g.frame_id, g.reason, g.trailer, g.pulse_id, g.timestamp_us) == (
            w.frame_id, w.reason, w.trailer, w.pulse_id, w.timestamp_us)
        assert (g.line_received == w.line_received).all()
        assert same_pixels(g.pixels, w.pixels), f"frame {g.frame_id} pixels differ"
        for stat in ("mean", "min", "max", "centre_mean"):
            assert nan_equal(getattr(g, stat), getattr(w, stat), rel=1e-4, abs_=1e-3), stat
        assert (g.defect_mask == w.defect_mask).all()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_native_agrees_with_reference_on_damaged_streams(data: st.DataObject) -> None:
    sc = data.draw(scenarios())
    stream = damage(data.draw, sc.packets, allow_cross_frame_swap=True)
    chunks = chunked(data.draw, stream)
    native = FrameAssembler(sc.ppl, sc.lpf, sc.fmt, **sc.options)  # type: ignore[arg-type]
    ref = ReferenceAssembler(sc.ppl, sc.lpf, sc.fmt, **sc.options)
    assert_same_outputs(run(native, chunks), run(ref, [stream]))
    assert native.counters == ref.counters
    assert native.last_bad_version == ref.last_bad_version


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_lost_lines_equal_injected_truth_and_no_damaged_line_is_delivered(data: st.DataObject) -> None:
    sc = data.draw(scenarios(max_frames=6))
    sc.options.update(dict.fromkeys(("dark", "flat", "defect_map", "filter_alpha"), None))
    stream = damage(data.draw, sc.packets, allow_cross_frame_swap=False)
    intact = arrived(sc.packets, stream)
    native = FrameAssembler(sc.ppl, sc.lpf, sc.fmt, **sc.options)  # type: ignore[arg-type]
    out = run(native, chunked(data.draw, stream))
    frames = [x for x in out if isinstance(x, Frame)]

    first_id = next(p.frame_id for p in sc.packets if p.type == wire.PKT_LINE)
    truth: dict[int, set[int]] = {}
    trailer_seen: dict[int, bool] = {}
    for i, p in enumerate(sc.packets):
        if i in intact and p.type == wire.PKT_LINE:
            truth.setdefault(p.frame_id, set()).add(p.line_index)
        if i in intact and p.type == wire.PKT_TRAILER:
            truth.setdefault(p.frame_id, set())
            trailer_seen[p.frame_id] = True

    # Each frame with anything intact is emitted exactly once (in completion
    # order: a frame whose trailer was lost comes out when pushed or flushed).
    assert sorted(f.frame_id for f in frames) == sorted(truth)
    lost = 0
    for f in frames:
        got = set(np.flatnonzero(f.line_received).tolist())
        assert got == truth[f.frame_id], f"frame {f.frame_id}: received {got}, truth {truth[f.frame_id]}"
        # Every delivered line is bit-exact; lost lines are zero and flagged.
        original = sc.frames[f.frame_id - first_id]
        assert (f.pixels[f.line_received] == original[f.line_received]).all()
        assert (f.pixels[~f.line_received] == 0).all()
        assert ((f.defect_mask != 0) == ~f.line_received[:, None]).all()
        assert (f.trailer is not None) == trailer_seen.get(f.frame_id, False)
        assert f.complete == (len(got) == sc.lpf and f.trailer is not None)
        lost += sc.lpf - len(got)
    c = native.counters
    assert c["lines_lost"] == lost
    assert c["frames_emitted"] == len(frames) == c["frames_complete"] + c["frames_incomplete"]
    assert c["lines_ok"] == sum(len(v) for v in truth.values())
    assert c["bytes_in"] == len(stream)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_output_is_independent_of_chunking(data: st.DataObject) -> None:
    sc = data.draw(scenarios())
    stream = damage(data.draw, sc.packets, allow_cross_frame_swap=True)
    whole = FrameAssembler(sc.ppl, sc.lpf, sc.fmt, **sc.options)  # type: ignore[arg-type]
    bytewise = FrameAssembler(sc.ppl, sc.lpf, sc.fmt, **sc.options)  # type: ignore[arg-type]
    a = run(whole, [stream])
    b = run(bytewise, [stream[i:i + 1] for i in range(len(stream))])
    assert_same_outputs(a, b)
    assert whole.counters == bytewise.counters


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.data())
def test_any_bytes_never_raise(noise: bytes, data: st.DataObject) -> None:
    sc = data.draw(scenarios(max_frames=2))
    native = FrameAssembler(sc.ppl, sc.lpf, sc.fmt, **sc.options)  # type: ignore[arg-type]
    ref = ReferenceAssembler(sc.ppl, sc.lpf, sc.fmt, **sc.options)
    stream = noise + b"".join(p.data for p in sc.packets) + noise[: len(noise) // 2]
    chunks = chunked(data.draw, stream)
    assert_same_outputs(run(native, chunks), run(ref, [stream]))
    assert native.counters == ref.counters
    assert not math.isnan(native.counters["bytes_in"])
