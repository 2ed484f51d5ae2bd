"""The simulated board's link: throughput ceiling, latency, FIFO order, and
seeded faults whose log is the exact ground truth of what was done."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulseline.sim.link import Fault, LinkDirection, parse_faults, parse_link


def drain(d: LinkDirection, until_s: float, step_s: float) -> bytes:
    out = bytearray()
    t = 0.0
    while t <= until_s:
        out += d.pop_ready(t)
        t += step_s
    return bytes(out)


def reconstruct(data: bytes, log: list[Fault], chunk: int) -> bytes:
    """The input with exactly the logged faults applied, independently of the
    link's own code: bit flips, then dropped and duplicated chunks."""
    arr = bytearray(data)
    for f in log:
        if f.kind == "corrupt":
            arr[f.in_offset] ^= 1 << f.bit
    drops = {f.in_offset for f in log if f.kind == "drop"}
    dups = {f.in_offset for f in log if f.kind == "dup"}
    out = bytearray()
    for a in range(0, len(arr), chunk):
        if a in drops:
            continue
        out += arr[a:a + chunk]
        if a in dups:
            out += arr[a:a + chunk]
    return bytes(out)


def test_parse_link_and_faults():
    assert parse_link("usb-fs").bytes_per_s == pytest.approx(1.1e6)
    assert parse_link("usb-hs").bytes_per_s == pytest.approx(25e6)
    assert parse_link("uart:921600").bytes_per_s == pytest.approx(92160)
    for bad in ("usb-xs", "uart:", "uart:abc", "uart:0"):
        with pytest.raises(ValueError, match="use usb-fs, usb-hs or uart:BAUD"):
            parse_link(bad)
    f = parse_faults("corrupt=1e-5,drop=0.01,dup=0.02,delay=0.1:5ms,disconnect=12.5,chunk=512")
    assert (f.corrupt_per_byte, f.drop_per_chunk, f.dup_per_chunk, f.delay_per_chunk) == (1e-5, 0.01, 0.02, 0.1)
    assert f.delay_s == pytest.approx(0.005) and f.disconnect_at_s == 12.5 and f.chunk_bytes == 512 and f.any
    assert not parse_faults("").any and not parse_faults("none").any
    for bad in ("corrupt=2", "drop", "lose=0.1", "delay=0.1", "chunk=0", "disconnect=soon"):
        with pytest.raises(ValueError, match="link fault"):
            parse_faults(bad)


def test_ceiling_and_latency():
    link = parse_link("usb-fs")
    d = LinkDirection(link, parse_faults(""), np.random.default_rng(0), 0.0)
    data = bytes(range(256)) * 4300  # 1.1 MB: one second of link time
    d.push(data, 0.0)
    half = d.pop_ready(0.5)  # it flows in pieces, at the ceiling
    assert 0.5 * link.bytes_per_s - 8192 <= len(half) <= 0.5 * link.bytes_per_s
    assert d.pop_ready(0.5) == b""
    almost = d.pop_ready(0.99)
    assert len(half) + len(almost) < len(data)  # 1.1 MB cannot cross in under a second
    rest = d.pop_ready(len(data) / link.bytes_per_s + link.latency_s + 1e-9)
    assert half + almost + rest == data and d.next_ready_s() is None
    assert d.counters["bytes_out"] == len(data)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**20), sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
       corrupt=st.sampled_from([0.0, 1e-4, 1e-2]), drop=st.sampled_from([0.0, 0.05]),
       dup=st.sampled_from([0.0, 0.05]), delay=st.sampled_from([0.0, 0.1]), step=st.sampled_from([1e-4, 3e-3]))
def test_output_is_the_input_with_exactly_the_logged_faults(seed, sizes, corrupt, drop, dup, delay, step):
    spec = parse_faults(f"corrupt={corrupt},drop={drop},dup={dup},delay={delay}:2ms,chunk=64")
    d = LinkDirection(parse_link("usb-fs"), spec, np.random.default_rng(seed), 0.0)
    rng = np.random.default_rng(seed + 1)
    data = rng.integers(0, 256, sum(sizes), dtype=np.uint8).tobytes()
    pos = 0
    out = bytearray()
    t = 0.0
    for n in sizes:  # pushes at their own times, pops in between
        d.push(data[pos:pos + n], t)
        pos += n
        t += 1e-3
        out += d.pop_ready(t)
    out += drain(d, 10.0, step)
    # Chunks are counted per push (a push's tail is a short chunk).
    expected = bytearray()
    base = 0
    for n in sizes:
        part_log = [Fault(f.kind, f.in_offset - base, f.length, f.bit) for f in d.faults_log
                    if base <= f.in_offset < base + n]
        expected += reconstruct(data[base:base + n], part_log, 64)
        base += n
    assert bytes(out) == bytes(expected)
    c = d.counters
    assert c["bytes_corrupted"] == sum(f.kind == "corrupt" for f in d.faults_log)
    assert c["chunks_dropped"] == sum(f.kind == "drop" for f in d.faults_log)
    assert c["chunks_duplicated"] == sum(f.kind == "dup" for f in d.faults_log)


def test_same_seed_same_bytes_whatever_the_polling():
    spec = parse_faults("corrupt=1e-3,drop=0.05,dup=0.05,delay=0.2:1ms")
    data = np.random.default_rng(3).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    outs = []
    for step in (1e-4, 7e-3, 0.05):
        d = LinkDirection(parse_link("usb-fs"), spec, np.random.default_rng(9), 0.0)
        d.push(data, 0.0)
        outs.append(drain(d, 2.0, step))
    assert outs[0] == outs[1] == outs[2]


def test_fifo_even_with_delays():
    spec = parse_faults("delay=0.5:20ms")
    d = LinkDirection(parse_link("usb-hs"), spec, np.random.default_rng(1), 0.0)
    data = bytes(np.arange(100_000, dtype=np.uint32).astype("<u4").tobytes())
    d.push(data, 0.0)
    assert drain(d, 1.0, 1e-3) == data


def test_disconnect_loses_everything_from_then_on():
    d = LinkDirection(parse_link("usb-fs"), parse_faults("disconnect=1"), np.random.default_rng(0), 0.0)
    d.push(b"x" * 1000, 0.0)
    assert d.pop_ready(0.5) == b"x" * 1000
    d.push(b"y" * 1000, 1.5)
    assert d.pop_ready(2.0) == b"" and d.disconnected(2.0)
    assert d.counters["bytes_lost_to_disconnect"] == 1000
