"""The simulated board's link (pulseline.sim.link): parsing, the throughput
ceiling and latency (checked on ready times, never on the wall clock), FIFO
order even with delayed chunks, and seeded faults whose log is the exact
ground truth: an independent reconstruction from the input and the log alone
must give the delivered bytes, whatever the pop schedule."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulseline.sim.link import Fault, FaultSpec, LinkDirection, parse_faults, parse_link

LINKS = ["usb-fs", "usb-hs", "uart:115200"]
FAR = 1e6  # a time after every delay and every push in these tests


def direction(link: str = "usb-fs", faults: str = "", seed: int = 0, start_s: float = 0.0) -> LinkDirection:
    return LinkDirection(parse_link(link), parse_faults(faults), np.random.default_rng(seed), start_s)


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def drain(d: LinkDirection, now_s: float = FAR, max_bytes: int = 1 << 20) -> bytes:
    out = bytearray()
    while chunk := d.pop_ready(now_s, max_bytes):
        out += chunk
    return bytes(out)


def arrivals(d: LinkDirection) -> tuple[bytes, np.ndarray]:
    """Pop exactly at each next_ready_s: the bytes and each byte's arrival time."""
    out = bytearray()
    times: list[float] = []
    while (t := d.next_ready_s()) is not None:
        got = d.pop_ready(t)
        assert got, "next_ready_s promised bytes that pop_ready did not give"
        out += got
        times += [t] * len(got)
    return bytes(out), np.array(times)


def reconstruct(pushes: list[tuple[float, bytes]], log: list[Fault], chunk: int,
                disconnect_abs: float | None) -> tuple[bytes, dict[int, int]]:
    """What the link should deliver, from the input and the fault log alone
    (before an in-flight disconnect cut): bit flips, then per push chunks of
    `chunk` bytes from the push's start (its tail a short chunk) dropped or
    duplicated. Pushes at or after the disconnect deliver nothing. Also
    returns {output offset of each chunk's first byte: its input offset}."""
    flips = [(f.in_offset, f.bit) for f in log if f.kind == "corrupt"]
    assert len({o for o, _ in flips}) == len(flips), "a byte corrupted twice"
    chunk_faults = {(f.kind, f.in_offset): f.length for f in log if f.kind in ("drop", "dup", "delay")}
    applied = set()
    out = bytearray()
    origin: dict[int, int] = {}
    base = 0
    for t, data in pushes:
        if disconnect_abs is not None and t >= disconnect_abs:
            base += len(data)
            continue
        arr = bytearray(data)
        for off, bit in flips:
            if base <= off < base + len(data):
                arr[off - base] ^= 1 << bit
        for a in range(0, len(arr), chunk):
            piece = bytes(arr[a:a + chunk])
            at = base + a
            for kind in ("drop", "dup", "delay"):
                if (kind, at) in chunk_faults:
                    assert chunk_faults[kind, at] == len(piece), (kind, at)
                    applied.add((kind, at))
            if ("drop", at) in chunk_faults:
                continue
            for _ in range(2 if ("dup", at) in chunk_faults else 1):
                origin[len(out)] = at
                out += piece
        base += len(data)
    assert applied == set(chunk_faults), "a chunk fault that is not at a chunk's first byte"
    return bytes(out), origin


def check_counters(d: LinkDirection, delivered: bytes, pushed: int) -> None:
    c, log = d.counters, d.faults_log
    kinds = Counter(f.kind for f in log)
    assert c["bytes_in"] == pushed
    assert c["bytes_out"] == len(delivered)
    assert c["bytes_corrupted"] == kinds["corrupt"]
    assert c["chunks_dropped"] == kinds["drop"]
    assert c["chunks_duplicated"] == kinds["dup"]
    assert c["chunks_delayed"] == kinds["delay"]
    assert c["bytes_lost_to_disconnect"] == sum(f.length for f in log if f.kind == "disconnect")
    lengths = {k: sum(f.length for f in log if f.kind == k) for k in ("drop", "dup")}
    # Everything pushed is delivered, dropped, duplicated or lost to the disconnect (queue drained).
    assert c["bytes_in"] - lengths["drop"] + lengths["dup"] - c["bytes_lost_to_disconnect"] == c["bytes_out"]


# -- parsing -------------------------------------------------------------------------------


def test_parse_link_classes():
    fs, hs, uart = parse_link("usb-fs"), parse_link(" USB-HS "), parse_link("uart:115200")
    assert (fs.name, fs.bytes_per_s, fs.latency_s) == ("usb-fs", 1.1e6, 1e-3)
    assert (hs.name, hs.bytes_per_s, hs.latency_s) == ("usb-hs", 25e6, 125e-6)
    assert (uart.name, uart.bytes_per_s, uart.latency_s) == ("uart:115200", 11520.0, 0.0)


@pytest.mark.parametrize("bad", ["usb-xs", "uart:abc", "uart:0", "uart:", "uart:-9600", "uart:9600.5", "", "usb",
                                 "uart: 9600x"])
def test_parse_link_rejects_with_the_valid_forms(bad):
    with pytest.raises(ValueError) as e:
        parse_link(bad)
    msg = str(e.value)
    assert "\n" not in msg and repr(bad) in msg
    assert "usb-fs" in msg and "usb-hs" in msg and "uart:BAUD" in msg


def test_parse_faults():
    f = parse_faults("corrupt=1e-5, drop=0.01,dup=0.02,delay=0.1:5ms,disconnect=12.5,chunk=512")
    assert (f.corrupt_per_byte, f.drop_per_chunk, f.dup_per_chunk, f.delay_per_chunk) == (1e-5, 0.01, 0.02, 0.1)
    assert f.delay_s == pytest.approx(5e-3) and f.disconnect_at_s == 12.5 and f.chunk_bytes == 512 and f.any
    assert parse_faults("delay=1:250us").delay_s == pytest.approx(250e-6)
    assert parse_faults("delay=0.5:2s").delay_s == 2.0
    assert parse_faults("disconnect=12.5s").disconnect_at_s == 12.5
    assert parse_faults("disconnect=0").any  # down from the start
    for none in ("", "  ", "none", "NONE"):
        assert parse_faults(none) == FaultSpec() and not parse_faults(none).any
    assert parse_faults("chunk=512").chunk_bytes == 512 and not parse_faults("chunk=512").any
    assert FaultSpec().chunk_bytes == 64


@pytest.mark.parametrize("bad", ["corrupt=2", "drop=-0.1", "dup=nan", "drop", "drop=", "lose=0.1", "delay=0.1",
                                 "delay=2:5ms", "delay=0.1:5min", "delay=0.1:-1ms", "chunk=0", "chunk=1.5",
                                 "disconnect=soon", "disconnect=-1", "disconnect=inf", "drop=0.1,drop=0.2",
                                 "corrupt=1e-5,bogus"])
def test_parse_faults_rejects_naming_the_item_and_the_keys(bad):
    with pytest.raises(ValueError) as e:
        parse_faults(bad)
    msg = str(e.value)
    assert "\n" not in msg and "link fault" in msg
    item = bad.split(",")[-1]
    assert repr(item) in msg
    for key in ("corrupt=", "drop=", "dup=", "delay=", "disconnect=", "chunk="):
        assert key in msg


@pytest.mark.parametrize("kwargs", [{"drop_per_chunk": 1.5}, {"corrupt_per_byte": -1e-9}, {"chunk_bytes": 0},
                                    {"delay_s": -1.0}, {"disconnect_at_s": float("nan")}])
def test_fault_spec_checks_its_fields(kwargs):
    with pytest.raises(ValueError, match="FaultSpec"):
        FaultSpec(**kwargs)


# -- ceiling, latency, order ---------------------------------------------------------------


@pytest.mark.parametrize("name", LINKS)
def test_ceiling_ready_times_are_serialisation_plus_latency(name):
    link = parse_link(name)
    n, chunk, t0 = 20_000, 64, 100.0
    data = random_bytes(n)
    d = LinkDirection(link, FaultSpec(chunk_bytes=chunk), np.random.default_rng(0), t0)
    d.push(data, t0)
    out, when = arrivals(d)
    assert out == data
    # Whole chunks, each ready latency after its last byte has been serialised.
    ends = np.minimum(np.arange(1, -(-n // chunk) + 1) * chunk, n)
    expected = np.repeat(t0 + ends / link.bytes_per_s + link.latency_s, np.diff(np.concatenate([[0], ends])))
    np.testing.assert_allclose(when, expected, rtol=0, atol=1e-9)
    # N bytes take at least N / bytes_per_s (plus the latency), and no more.
    assert when[-1] - t0 == pytest.approx(n / link.bytes_per_s + link.latency_s, rel=1e-12)
    # Never above the ceiling; never more than a chunk behind it.
    for t in np.linspace(t0, when[-1], 97):
        got = int(np.count_nonzero(when <= t))
        assert got <= link.bytes_per_s * (t - t0) + 1e-6
        assert got >= link.bytes_per_s * (t - t0 - link.latency_s) - chunk - 1e-6


def test_a_busy_link_queues_pushes_behind_each_other_and_an_idle_one_starts_afresh():
    link = parse_link("usb-fs")
    d = LinkDirection(link, FaultSpec(), np.random.default_rng(0), 0.0)
    d.push(b"a" * 1000, 0.0)
    d.push(b"b" * 1000, 1e-4)  # the wire is still busy with the first
    out, when = arrivals(d)
    assert out == b"a" * 1000 + b"b" * 1000
    assert when[-1] == pytest.approx(2000 / link.bytes_per_s + link.latency_s)
    d.push(b"c" * 100, 5.0)  # long idle: starts at its own push time
    out, when = arrivals(d)
    assert out == b"c" * 100 and when[-1] == pytest.approx(5.0 + 100 / link.bytes_per_s + link.latency_s)


@pytest.mark.parametrize("name", LINKS)
def test_latency_of_a_single_byte(name):
    link = parse_link(name)
    d = LinkDirection(link, FaultSpec(), np.random.default_rng(0), 0.0)
    assert d.next_ready_s() is None and d.pop_ready(10.0) == b""
    d.push(b"\x42", 5.0)
    ready = 5.0 + 1 / link.bytes_per_s + link.latency_s
    assert d.next_ready_s() == pytest.approx(ready, abs=1e-12)
    assert d.pop_ready(ready - 1e-7) == b""
    assert d.pop_ready(ready + 1e-12) == b"\x42"
    assert d.next_ready_s() is None and d.pop_ready(FAR) == b""


def test_max_bytes_splits_what_is_ready_and_next_ready_says_look_again_now():
    d = direction("usb-fs", "chunk=64")
    data = random_bytes(1000)
    d.push(data, 0.0)
    parts = []
    while part := d.pop_ready(1.0, max_bytes=100):
        parts.append(part)
        nxt = d.next_ready_s()
        assert nxt is None or nxt <= 1.0
    assert [len(p) for p in parts] == [100] * 10 and b"".join(parts) == data
    assert d.pop_ready(1.0, max_bytes=0) == b""


def test_the_link_keeps_its_own_copy_of_what_was_pushed():
    d = direction()
    buf = bytearray(b"hello")
    d.push(buf, 0.0)
    buf[:] = b"XXXXX"
    d.push(memoryview(b" world"), 0.0)
    assert drain(d) == b"hello world"


def test_no_faults_output_is_the_input():
    for name in LINKS:
        d = direction(name, "chunk=512", seed=1)
        pieces = [random_bytes(n, seed=n) for n in (1, 511, 512, 513, 70_000, 3)]
        t = 0.0
        out = bytearray()
        for p in pieces:
            d.push(p, t)
            t += 0.003
            out += d.pop_ready(t)
        out += drain(d)
        assert bytes(out) == b"".join(pieces) and d.faults_log == []
        check_counters(d, bytes(out), sum(map(len, pieces)))


def test_fifo_a_delayed_chunk_holds_back_everything_behind_it():
    link = parse_link("usb-hs")
    chunk, delay_s = 64, 5e-3
    d = LinkDirection(link, parse_faults(f"delay=0.02:{delay_s * 1e3}ms,chunk={chunk}"),
                      np.random.default_rng(4), 0.0)
    data = np.arange(50_000, dtype="<u4").tobytes()  # every 4-byte word distinct: any reordering shows
    d.push(data, 0.0)
    out, when = arrivals(d)
    assert out == data
    assert np.all(np.diff(when) >= 0)  # FIFO
    nominal = (np.arange(len(data)) // chunk + 1) * chunk / link.bytes_per_s + link.latency_s
    assert np.all(when >= nominal - 1e-12)  # never early
    delayed = [f for f in d.faults_log if f.kind == "delay"]
    starts = {f.in_offset for f in delayed}
    assert len(delayed) > 5 and d.counters["chunks_delayed"] == len(delayed)
    for f in delayed:
        assert when[f.in_offset] >= nominal[f.in_offset] + delay_s - 1e-12
        behind = f.in_offset + f.length
        if behind < len(data) and nominal[behind] < nominal[f.in_offset] + delay_s and behind not in starts:
            # the next chunk would have been on time, but waits for the delayed one
            assert when[behind] == when[f.in_offset]
    first = delayed[0].in_offset
    np.testing.assert_allclose(when[:first], nominal[:first], rtol=0, atol=1e-12)  # chunks before it: on time


def test_drops_and_duplicates_in_detail():
    d = direction("usb-fs", "dup=1,chunk=4")
    d.push(b"abcdefghij", 0.0)
    assert drain(d) == b"abcdabcdefghefghijij"
    assert [(f.kind, f.in_offset, f.length) for f in d.faults_log] == [("dup", 0, 4), ("dup", 4, 4), ("dup", 8, 2)]

    link = parse_link("usb-fs")
    d = LinkDirection(link, parse_faults("drop=1,chunk=64"), np.random.default_rng(0), 0.0)
    d.push(bytes(1000), 0.0)
    assert d.next_ready_s() is None and drain(d) == b""
    assert [f.length for f in d.faults_log] == [64] * 15 + [40] and d.counters["chunks_dropped"] == 16
    # A dropped chunk was still sent: it took its wire time.
    d2 = LinkDirection(link, FaultSpec(), np.random.default_rng(0), 0.0)
    d2.push(bytes(1000), 0.0)
    d2.push(b"x", 0.0)
    assert arrivals(d2)[1][-1] == pytest.approx(1001 / link.bytes_per_s + link.latency_s)


def test_corruption_flips_exactly_one_logged_bit_per_byte():
    d = direction("usb-hs", "corrupt=1")
    data = random_bytes(5000)
    d.push(data, 0.0)
    out = drain(d)
    diff = np.frombuffer(out, np.uint8) ^ np.frombuffer(data, np.uint8)
    assert np.all(np.unpackbits(diff[:, None], axis=1).sum(axis=1) == 1)
    bits = np.log2(diff).astype(int)
    assert [(f.in_offset, f.bit) for f in d.faults_log] == list(enumerate(bits.tolist()))
    assert d.counters["bytes_corrupted"] == 5000


# -- faults against their log, for random specs, seeds, pushes and pop schedules --------------

ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 3000), st.floats(0, 0.02)),
        st.tuples(st.just("pop"), st.sampled_from([1, 7, 100, 4096, 1 << 20]), st.floats(0, 0.02)),
    ),
    min_size=1, max_size=25)


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), link=st.sampled_from(["usb-fs", "usb-hs", "uart:1000000"]),
       chunk=st.sampled_from([1, 3, 64, 512]), corrupt=st.sampled_from([0.0, 1e-3, 0.05, 1.0]),
       drop=st.sampled_from([0.0, 0.1, 0.5, 1.0]), dup=st.sampled_from([0.0, 0.1, 1.0]),
       delay=st.sampled_from([0.0, 0.2, 1.0]), delay_s=st.sampled_from([0.0, 1e-4, 5e-3]),
       disconnect=st.one_of(st.none(), st.floats(0.0, 0.08)), start_s=st.sampled_from([0.0, 1234.5]),
       ops=ops_strategy)
def test_output_is_the_input_with_exactly_the_logged_faults(seed, link, chunk, corrupt, drop, dup, delay, delay_s,
                                                            disconnect, start_s, ops):
    spec = FaultSpec(corrupt_per_byte=corrupt, drop_per_chunk=drop, dup_per_chunk=dup, delay_per_chunk=delay,
                     delay_s=delay_s, disconnect_at_s=disconnect, chunk_bytes=chunk)
    lc = parse_link(link)
    data_rng = np.random.default_rng(seed ^ 0x5EED)

    # Run A: pushes with pops in between (random times and max_bytes), then a drain.
    a = LinkDirection(lc, spec, np.random.default_rng(seed), start_s)
    pushes: list[tuple[float, bytes]] = []
    out_a = bytearray()
    t = start_s
    for kind, arg, gap in ops:
        t += gap
        if kind == "push":
            data = data_rng.integers(0, 256, arg, dtype=np.uint8).tobytes()
            pushes.append((t, data))
            a.push(data, t)
        else:
            got = a.pop_ready(t, arg)
            assert len(got) <= arg
            out_a += got
            if pushes:  # the ceiling: every delivered byte had its own wire time
                assert a.counters["bytes_out"] <= lc.bytes_per_s * (t - pushes[0][0]) + 1e-6
            nxt = a.next_ready_s()
            assert nxt is None or nxt > t or len(got) == arg
    out_a += drain(a, t + FAR)
    assert a.next_ready_s() is None

    # Run B: the same pushes, nothing popped until the end.
    b = LinkDirection(lc, spec, np.random.default_rng(seed), start_s)
    for when, data in pushes:
        b.push(data, when)
    out_b = drain(b, t + FAR)

    assert bytes(out_a) == out_b, "the pop schedule changed what was delivered"
    assert a.faults_log == b.faults_log and a.counters == b.counters

    # The independent reconstruction from the input and the log.
    log = a.faults_log
    disconnect_abs = None if disconnect is None else start_s + disconnect
    full, origin = reconstruct(pushes, log, chunk, disconnect_abs)
    lost = [f for f in log if f.kind == "disconnect"]
    late = [(when, d) for when, d in pushes if disconnect_abs is not None and when >= disconnect_abs and d]
    if late:  # everything pushed from the disconnect on: one entry
        first_late = sum(len(d) for when, d in pushes if when < late[0][0])
        assert Fault("disconnect", first_late, sum(len(d) for _, d in late)) in lost
        lost.remove(Fault("disconnect", first_late, sum(len(d) for _, d in late)))
    assert len(lost) <= 1
    if lost:  # in flight at the disconnect: the delivered stream stops at a chunk boundary
        cut = len(full) - lost[0].length
        assert disconnect_abs is not None and 0 <= cut < len(full)
        assert origin[cut] == lost[0].in_offset
        full = full[:cut]
    assert bytes(out_a) == full
    check_counters(a, bytes(out_a), sum(len(d) for _, d in pushes))
    if disconnect_abs is not None and t >= disconnect_abs:
        assert a.disconnected(t) and a.pop_ready(t + 2 * FAR) == b""


def test_bulk_pushes_at_usb_hs_with_every_fault():
    """64 KiB pushes, as the supervisor makes at high speed, against the log."""
    spec = "corrupt=1e-5,drop=1e-3,dup=1e-3,delay=1e-3:1ms,chunk=512"
    link = parse_link("usb-hs")
    d = LinkDirection(link, parse_faults(spec), np.random.default_rng(11), 0.0)
    block = 1 << 16
    pushes = [(i * block / link.bytes_per_s, random_bytes(block, seed=i)) for i in range(64)]  # 4 MiB
    out = bytearray()
    for when, data in pushes:
        d.push(data, when)
        out += d.pop_ready(when)
    out += drain(d)
    expected, _ = reconstruct(pushes, d.faults_log, 512, None)
    assert bytes(out) == expected
    assert Counter(f.kind for f in d.faults_log).keys() == {"corrupt", "drop", "dup", "delay"}
    check_counters(d, bytes(out), 64 * block)


def test_same_seed_same_faults_different_seed_different_faults():
    data = random_bytes(200_000)
    runs = []
    for seed in (7, 7, 8):
        d = direction("usb-fs", "corrupt=1e-3,drop=0.02,dup=0.02,delay=0.05:1ms", seed=seed)
        d.push(data, 0.0)
        runs.append((drain(d), d.faults_log))
    assert runs[0] == runs[1] and runs[0] != runs[2]


# -- disconnect --------------------------------------------------------------------------


def test_disconnect_loses_what_is_in_flight_and_everything_after():
    link = parse_link("usb-fs")
    t0 = 50.0
    data = random_bytes(20_000)
    d = LinkDirection(link, parse_faults("disconnect=0.01,chunk=64"), np.random.default_rng(0), t0)
    d.push(data, t0)
    # Chunks ready by the instant: 64 * k / rate + latency <= 0.01.
    arrived = int((0.01 - link.latency_s) * link.bytes_per_s // 64) * 64
    assert arrived == 9856
    assert not d.disconnected(t0 + 0.0099)
    early = d.pop_ready(t0 + 0.005)
    assert 0 < len(early) < arrived
    assert not d.disconnected(t0 + 0.0099)
    assert d.faults_log == [] and d.counters["bytes_lost_to_disconnect"] == 0
    assert d.disconnected(t0 + 0.01)
    assert d.faults_log == [Fault("disconnect", arrived, len(data) - arrived)]
    rest = drain(d, t0 + 1.0)
    assert early + rest == data[:arrived]
    d.push(b"late", t0 + 1.0)
    d.push(b"later", t0 + 2.0)
    assert d.pop_ready(t0 + 3.0) == b"" and d.next_ready_s() is None and d.pop_ready(FAR) == b""
    assert d.faults_log[1:] == [Fault("disconnect", len(data), 9)]
    assert d.counters["bytes_lost_to_disconnect"] == len(data) - arrived + 9
    check_counters(d, early + rest, len(data) + 9)


def test_what_arrived_before_the_disconnect_is_still_handed_over_late():
    d = direction("usb-fs", "disconnect=1")
    d.push(b"x" * 1000, 0.0)
    d.push(b"y" * 1000, 1.5)
    assert d.pop_ready(2.0) == b"x" * 1000  # first look after the instant: it had arrived before it
    assert d.pop_ready(3.0) == b"" and d.disconnected(2.0)
    assert d.counters["bytes_lost_to_disconnect"] == 1000 and d.faults_log == [Fault("disconnect", 1000, 1000)]


def test_next_ready_is_none_for_bytes_that_cannot_arrive_before_the_disconnect():
    d = direction("usb-fs", "disconnect=0.01", start_s=3.0)
    d.push(b"z" * 100, 3.0095)  # would be ready at 3.0105
    assert d.next_ready_s() is None
    assert d.pop_ready(3.02) == b"" and d.faults_log == [Fault("disconnect", 0, 100)]


def test_disconnect_at_zero_delivers_nothing_ever():
    d = direction("usb-hs", "disconnect=0", start_s=7.0)
    d.push(b"abc", 7.0)
    assert d.disconnected(7.0) and d.pop_ready(FAR) == b"" and d.next_ready_s() is None
    assert d.faults_log == [Fault("disconnect", 0, 3)]


def test_a_chunk_ready_at_the_disconnect_instant_itself_arrives():
    d = direction("uart:1000", "disconnect=0.05,chunk=1")  # 100 B/s: byte i ready at (i + 1) / 100 s
    d.push(b"abcdefgh", 0.0)
    assert d.pop_ready(0.05) == b"abcde"
    assert d.faults_log == [Fault("disconnect", 5, 3)]
