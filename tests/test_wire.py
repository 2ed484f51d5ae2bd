"""Firmware wire encoder, byte stuffing and the board-side command decoder."""

import random
import struct
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pulseline.link.assembler import crc32
from pulseline.link.assembler_ref import pack_line, unpack_line
from pulseline.link.protocol import Trailer, wire
from pulseline.link.streamgen import pack_pixels


def test_mono12p_is_genicam_order():
    assert pack_line([0x123, 0x456], wire.FMT_MONO12P) == bytes([0x23, 0x61, 0x45])
    assert unpack_line(bytes([0x23, 0x61, 0x45]), 2, wire.FMT_MONO12P) == [0x123, 0x456]
    assert pack_line([0xABC], wire.FMT_MONO12P) == bytes([0xBC, 0x0A])


@given(st.lists(st.integers(0, 0xFFF), min_size=1, max_size=40), st.sampled_from([wire.FMT_MONO16, wire.FMT_MONO12P]))
def test_pixel_packing_round_trips_and_packers_agree(values, fmt):
    packed = pack_line(values, fmt)
    assert len(packed) == wire.pixel_bytes(len(values), fmt)
    assert packed == pack_pixels(np.array([values], np.uint16), fmt)
    assert unpack_line(packed, len(values), fmt) == values


@given(st.binary(max_size=300), st.integers(0, 0xFFFF), st.sampled_from(range(1, 7)))
def test_encode_layout_and_crc(payload, seq, ptype):
    pkt = wire.encode(ptype, seq, payload)
    assert pkt[:4] == wire.SYNC
    assert struct.unpack_from("<BBHH", pkt, 4) == (wire.PROTOCOL_VERSION, ptype, seq, len(payload))
    assert struct.unpack_from("<H", pkt, 10)[0] == zlib.crc32(pkt[4:10]) & 0xFFFF
    assert pkt[wire.HEADER_SIZE:-4] == payload
    assert struct.unpack("<I", pkt[-4:])[0] == zlib.crc32(pkt[4:-4]) == crc32(pkt[4:-4])


@given(st.integers(0, 2**34 - 1), st.integers(0, 2**30 - 1))
def test_put_u64_from_parts(hi, lo):
    buf = bytearray(8)
    wire.put_u64(buf, 0, hi, lo)
    assert struct.unpack("<Q", buf)[0] == hi * 2**30 + lo


@given(st.integers(1, 20), st.integers(1, 9), st.sampled_from([wire.FMT_MONO16, wire.FMT_MONO12P]),
       st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1), st.randoms())
def test_line_packet_layout(ppl, lpf, fmt, frame_id, ts, rnd):
    enc = wire.LineEncoder(ppl, lpf, fmt)
    pixels = bytes(rnd.getrandbits(8) for _ in range(wire.pixel_bytes(ppl, fmt)))
    line = rnd.randrange(lpf)
    pkt = enc.line_packet(7, frame_id, line, 99, ts, pixels)
    header = struct.unpack_from(wire.LINE_HEADER_FORMAT, pkt, wire.HEADER_SIZE)
    assert header == (frame_id, line, lpf, ppl, fmt, 0, 99, ts)
    assert pkt[wire.HEADER_SIZE + wire.LINE_HEADER_SIZE:-4] == pixels
    assert zlib.crc32(pkt[4:-4]) == struct.unpack("<I", pkt[-4:])[0]
    chunks: list[bytes] = []
    enc.write_line(lambda b: chunks.append(bytes(b)), 7, frame_id, line, 99, ts >> 30, ts & (2**30 - 1), pixels)
    assert b"".join(chunks) == pkt


def test_trailer_round_trip():
    payload = wire.trailer_payload(5, 6, 7, 256, 250, 80.0, 20.0, 10.0, 39.0, 1.5)
    assert Trailer.parse(payload) == Trailer(5, 6, 7, 256, 250, 80.0, 20.0, 10.0, 39.0, 1.5)


@given(seq=st.integers(0, 0xFFFF), ids=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
       timestamp_us=st.integers(0, 2**62), lines=st.tuples(st.integers(1, 16384), st.integers(0, 16384)),
       values=st.tuples(*[st.floats(0, 1e6, width=32)] * 5))
def test_the_board_s_preallocated_trailer_is_the_encoded_one(seq, ids, timestamp_us, lines, values):
    enc = wire.TrailerEncoder()
    packet = enc.fill(seq, *ids, timestamp_us >> 30, timestamp_us & (2**30 - 1), *lines, *values)
    assert bytes(packet) == wire.encode(wire.PKT_TRAILER, seq, wire.trailer_payload(*ids, timestamp_us, *lines,
                                                                                    *values))


@given(st.lists(st.binary(max_size=60), min_size=1, max_size=8))
def test_stuffed_host_traffic_never_holds_ctrl_c(payloads):
    for i, p in enumerate(payloads):
        stuffed = wire.stuff(wire.encode(wire.PKT_COMMAND, i, p))
        assert wire.CTRL_C not in stuffed


@given(st.lists(st.binary(max_size=60), min_size=1, max_size=8), st.randoms(), st.integers(0, 3))
def test_command_decoder_recovers_intact_packets_and_rejects_damage(payloads, rnd, damage_count):
    packets = [wire.encode(wire.PKT_COMMAND, i, p) for i, p in enumerate(payloads)]
    damaged = set(rnd.sample(range(len(packets)), min(damage_count, len(packets))))
    stream = bytearray()
    for i, pkt in enumerate(packets):
        if i in damaged:
            pkt = bytearray(pkt)
            pos = rnd.randrange(len(pkt))
            pkt[pos] ^= 1 << rnd.randrange(8)  # one bit flip: CRC-32 always catches it
        stream += wire.stuff(bytes(pkt))
        if rnd.random() < 0.3:
            stream += bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 8))).replace(b"\x03", b"")
    dec = wire.CommandDecoder(max_payload=1024)
    got = []
    pos = 0
    while pos < len(stream):
        step = rnd.randrange(1, 40)
        got += dec.feed(stream[pos:pos + step])
        pos += step
    good = [(wire.PROTOCOL_VERSION, wire.PKT_COMMAND, i, p) for i, p in enumerate(payloads) if i not in damaged]
    got = [g for g in got if g[3] is not None]  # over-long notices carry no payload
    # Every intact packet arrives, and nothing else does.
    assert [g for g in got if g in good] == good
    assert all(g in good for g in got)


def test_command_decoder_is_deterministic_on_noise():
    rnd = random.Random(4)
    dec = wire.CommandDecoder()
    noise = bytes(rnd.getrandbits(8) for _ in range(5000))
    assert dec.feed(noise) == []
    assert dec.bytes_skipped > 4000


def test_command_decoder_reports_a_packet_too_long_to_take_and_resynchronises():
    dec = wire.CommandDecoder(max_payload=64)
    big = wire.encode(wire.PKT_COMMAND, 7, b"\x03" + b"{" + b" " * 200 + b"}")
    small = wire.encode(wire.PKT_COMMAND, 8, b"\x0e{}")
    got = dec.feed(wire.stuff(big) + wire.stuff(small))
    assert got == [(wire.PROTOCOL_VERSION, wire.PKT_COMMAND, 7, None),
                   (wire.PROTOCOL_VERSION, wire.PKT_COMMAND, 8, b"\x0e{}")]
    assert dec.too_long == 1


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_packet_cut_short_never_holds_or_swallows_the_packets_after_it(data):
    """A host that dies mid-write (or a link that drops the tail) leaves a
    packet cut short: the intact packets after it are delivered at once, in
    order, and nothing cut or damaged is ever delivered."""
    n = data.draw(st.integers(1, 12))
    payloads = [bytes([14]) + b'{"k": ' + str(i).encode() + b"}" + b" " * data.draw(st.integers(0, 300))
                for i in range(n)]
    cut = set(data.draw(st.lists(st.integers(0, n - 1), unique=True)))
    stream = bytearray()
    for i, p in enumerate(payloads):
        pkt = wire.stuff(wire.encode(wire.PKT_COMMAND, i, p))
        if i in cut:
            pkt = pkt[:data.draw(st.integers(1, len(pkt) - 1))]
        stream += pkt
    dec = wire.CommandDecoder(max_payload=1024)
    got = []
    pos = 0
    while pos < len(stream):
        step = data.draw(st.integers(1, 64))
        got += dec.feed(stream[pos:pos + step])
        pos += step
    want = [(wire.PROTOCOL_VERSION, wire.PKT_COMMAND, i, p) for i, p in enumerate(payloads) if i not in cut]
    # The last intact packet is out as soon as its last byte is in, cut ones never.
    assert [g for g in got if g[3] is not None] == want
    if cut and max(cut) == n - 1:
        assert dec.partial()  # what is left is the last one's cut start, until the gap drops it
        dec.drop_partial()
    assert not dec.partial()
    assert dec.feed(wire.stuff(wire.encode(wire.PKT_COMMAND, 99, b"\x0e{}"))) == [
        (wire.PROTOCOL_VERSION, wire.PKT_COMMAND, 99, b"\x0e{}")]
