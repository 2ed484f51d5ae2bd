"""Evidence files: a transcript written by a recording session reads back
packet for packet, however the bytes were chunked and whatever noise lay
between packets; frames round-trip through frames.npz."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulseline.link import evidence
from pulseline.link.protocol import codes, wire

OPS = sorted(codes.OP_NAMES)


def command(seq: int, op: int, args: dict) -> bytes:
    return wire.stuff(wire.encode(wire.PKT_COMMAND, seq, wire.command_payload(op, json.dumps(args).encode())))


def response(seq: int, to: int, status: int, body: bytes) -> bytes:
    return wire.encode(wire.PKT_RESPONSE, seq, wire.response_payload(to, status, body))


def event(seq: int, code: int, t_us: int, body: dict) -> bytes:
    return wire.encode(wire.PKT_EVENT, seq, struct.pack("<HQ", code, t_us) + json.dumps(body).encode())


LINES = wire.LineEncoder(8, 4, wire.FMT_MONO16)


@st.composite
def conversations(draw):
    """A plausible exchange: (direction, bytes of one packet, what it is),
    with noise between board->host packets."""
    items = []
    for seq in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(OPS))
        # Values that contain the bytes the host must stuff (0x03, 0x10).
        args = {"v": draw(st.sampled_from([3, 16, 0x0310, 1.5, "x\x03y"]))}
        items.append((evidence.TO_BOARD, command(seq, op, args), ("command", codes.OP_NAMES[op], args)))
        status = draw(st.sampled_from([codes.ERR_OK, codes.ERR_OUT_OF_RANGE]))
        body = b'{"ok": 1}' if status == codes.ERR_OK else b"kv out of range"
        noise = draw(st.binary(max_size=20).filter(lambda b: wire.SYNC[:1] not in b))
        items.append((evidence.TO_HOST, noise + response(seq + 100, seq, status, body), ("response", seq, status)))
        if draw(st.booleans()):
            code = draw(st.sampled_from(sorted(codes.EVENT_NAMES)))
            items.append((evidence.TO_HOST, event(seq + 200, code, seq * 1000, {"k": seq}),
                          ("event", codes.EVENT_NAMES[code], seq * 1000)))
        if draw(st.booleans()):
            pixels = bytes(range(16))
            items.append((evidence.TO_HOST, LINES.line_packet(seq, 7, seq % 4, 9, 123, pixels),
                          ("line", 7, seq % 4)))
    return items


@settings(max_examples=60, deadline=None)
@given(conversations(), st.data())
def test_a_transcript_reads_back_packet_for_packet(tmp_path_factory, items, data):
    rec = evidence.Recorder()
    t = 0.0
    for direction, raw, _ in items:
        # The host reads in chunks that split packets anywhere.
        cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=3, unique=True)))
        for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            t += 0.001
            rec.chunk(direction, t, raw[a:b])
    path = tmp_path_factory.mktemp("tr") / "transcript.bin"
    rec.write_transcript(path)
    records = evidence.read_transcript(path)
    assert records == rec.chunks
    got = evidence.entries(records)
    assert len(got) == len(items)
    for e, (direction, _, what) in zip(got, items, strict=True):
        assert e.direction == direction and e.kind == what[0]
        if what[0] == "command":
            assert (e.body["command"], e.body["args"]) == what[1:]
        elif what[0] == "response":
            assert e.body["to"] == what[1] and e.body["status"] == codes.ERROR_NAMES[what[2]]
        elif what[0] == "event":
            assert (e.body["event"], e.body["board_us"]) == what[1:]
        else:
            assert (e.body["frame_id"], e.body["line"]) == what[1:]
    assert evidence.stream(records, evidence.TO_HOST) == b"".join(r for d, r, _ in items if d == evidence.TO_HOST)


def test_a_damaged_or_foreign_file_is_refused_with_its_reason(tmp_path):
    rec = evidence.Recorder()
    rec.chunk(evidence.TO_BOARD, 0.5, command(0, OPS[0], {}))
    good = tmp_path / "t.bin"
    rec.write_transcript(good)
    (tmp_path / "cut.bin").write_bytes(good.read_bytes()[:-3])
    (tmp_path / "other.bin").write_bytes(b"not a transcript")
    with pytest.raises(evidence.TranscriptError, match="damaged record"):
        evidence.read_transcript(tmp_path / "cut.bin")
    with pytest.raises(evidence.TranscriptError, match="not a pulseline transcript"):
        evidence.read_transcript(tmp_path / "other.bin")
    for name, message in (("cut.bin", "damaged record"), ("missing.bin", "cannot read")):
        res = subprocess.run([sys.executable, "-m", "pulseline", "transcript", str(tmp_path / name)],
                             capture_output=True, text=True)
        assert res.returncode != 0 and res.stdout == "" and message in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_describe_folds_lines_and_the_heartbeat(tmp_path):
    ping = next(op for op, name in codes.OP_NAMES.items() if name == "ping")
    status = next(op for op, name in codes.OP_NAMES.items() if name == "status")
    rec = evidence.Recorder()
    rec.chunk(evidence.TO_BOARD, 1.0, command(0, ping, {}))
    rec.chunk(evidence.TO_HOST, 1.001, response(50, 0, codes.ERR_OK, b'{"t_us": 1}'))
    rec.chunk(evidence.TO_BOARD, 1.002, command(1, status, {}))
    rec.chunk(evidence.TO_HOST, 1.003, response(51, 1, codes.ERR_OK, b'{"state": "IDLE"}'))
    rec.chunk(evidence.TO_HOST, 1.004, b"".join(LINES.line_packet(60 + k, 3, k, 3, 5, bytes(16)) for k in range(4)))
    text = list(evidence.describe(rec.chunks))
    assert len(text) == 3 and "status" in text[0] and "IDLE" in text[1]
    assert "frame 3: lines 0..3 of 4 (4 packets)" in text[2]
    assert len(list(evidence.describe(rec.chunks, lines=True, heartbeat=True))) == 8


def test_frames_round_trip_through_frames_npz(tmp_path):
    from pulseline.link.assembler import FrameAssembler
    from pulseline.link.frames import Frame

    rng = np.random.default_rng(3)
    stream = b""
    truth = []
    for fid in range(3):
        img = rng.integers(0, 4096, (4, 8), dtype=np.uint16)
        truth.append(img)
        for k in range(4):
            if (fid, k) != (1, 2):  # one line lost
                stream += LINES.line_packet(k, fid, k, fid, 10, img[k].tobytes())
        stream += wire.encode(wire.PKT_TRAILER, 9, wire.trailer_payload(fid, fid, 10, 4, 4, 80, 20, 10, 39, 1))
    rec = evidence.Recorder(keep_frames=2)
    for f in FrameAssembler(8, 4, "mono16").feed(stream):
        if isinstance(f, Frame):
            rec.frame(f)
    assert rec.write_frames(tmp_path / "frames.npz") == 2  # the last two kept
    back = evidence.load_frames(tmp_path / "frames.npz")
    assert [f["frame_id"] for f in back] == [1, 2]
    assert np.array_equal(back[1]["pixels"], truth[2]) and back[1]["complete"]
    assert back[0]["lines_lost"] == 1 and not back[0]["line_received"][2]
    assert back[0]["trailer"]["kv"] == 80
