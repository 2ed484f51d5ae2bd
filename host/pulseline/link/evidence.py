"""What a test leaves behind: the host's protocol transcript (both directions,
in the target's time) and the frames it assembled, in files a person or a
script can read back (`pulseline transcript`, `load_frames`).

Transcript file (`transcript.bin`): the magic b"PLTRANS1", then one record
per chunk of bytes as the host wrote or read it:

    direction u8 (0 board->host, 1 host->board), t_s f64 (target seconds),
    length u32, the bytes

little-endian. Host->board bytes are as sent on the wire (stuffed).
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PulselineError
from .frames import Frame
from .protocol import PACKET_TYPE_NAMES, Trailer, codes, wire

MAGIC = b"PLTRANS1"
TO_HOST = 0
TO_BOARD = 1
_RECORD = struct.Struct("<BdI")
DIRECTIONS = {TO_HOST: "board->host", TO_BOARD: "host->board"}
KEEP_FRAMES = 256  # the frames kept for evidence: the last ones (a soak assembles thousands)


class TranscriptError(PulselineError):
    pass


class Recorder:
    """Kept by a recording session: every chunk both ways, and the last
    KEEP_FRAMES frames it assembled."""

    def __init__(self, keep_frames: int = KEEP_FRAMES) -> None:
        self.chunks: list[tuple[int, float, bytes]] = []
        self.frames: deque[Frame] = deque(maxlen=keep_frames)
        self.frames_seen = 0
        self._lock = threading.Lock()

    def chunk(self, direction: int, t_s: float, data: bytes) -> None:
        with self._lock:
            self.chunks.append((direction, t_s, bytes(data)))

    def frame(self, frame: Frame) -> None:
        with self._lock:
            self.frames.append(frame)
            self.frames_seen += 1

    def write_transcript(self, path: Path) -> None:
        with self._lock:
            chunks = list(self.chunks)
        with open(path, "wb") as fh:
            fh.write(MAGIC)
            for direction, t_s, data in chunks:
                fh.write(_RECORD.pack(direction, t_s, len(data)))
                fh.write(data)

    def write_frames(self, path: Path) -> int:
        """frames.npz: per frame `pixels_K`, `line_received_K` and one
        `frames` JSON array of what else is known (ids, times, trailer)."""
        with self._lock:
            frames = list(self.frames)
            seen = self.frames_seen
        arrays: dict[str, Any] = {}
        meta = []
        for k, f in enumerate(frames):
            arrays[f"pixels_{k}"] = f.pixels
            arrays[f"line_received_{k}"] = f.line_received
            meta.append({"frame_id": f.frame_id, "pulse_id": f.pulse_id, "timestamp_us": f.timestamp_us,
                         "reason": f.reason, "lines_lost": f.lines_lost, "complete": f.complete,
                         "trailer": None if f.trailer is None else f.trailer.__dict__})
        arrays["frames"] = np.array(json.dumps({"frames": meta, "assembled": seen}))
        np.savez_compressed(path, **arrays)
        return len(frames)


def read_transcript(path: str | Path) -> list[tuple[int, float, bytes]]:
    """The records of a transcript file: (direction, t_s, bytes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TranscriptError(f"cannot read {path}: {exc.strerror}") from None
    if not data.startswith(MAGIC):
        raise TranscriptError(f"{path} is not a pulseline transcript (no {MAGIC.decode()} header)")
    out = []
    at = len(MAGIC)
    while at < len(data):
        if at + _RECORD.size > len(data):
            raise TranscriptError(f"{path}: truncated record header at byte {at}")
        direction, t_s, n = _RECORD.unpack_from(data, at)
        at += _RECORD.size
        if direction not in DIRECTIONS or at + n > len(data):
            raise TranscriptError(f"{path}: damaged record at byte {at - _RECORD.size}")
        out.append((direction, t_s, data[at:at + n]))
        at += n
    return out


def load_frames(path: str | Path) -> list[dict[str, Any]]:
    """The frames of a frames.npz: dicts with `pixels`, `line_received` and
    the recorded metadata."""
    with np.load(path) as z:
        meta = json.loads(str(z["frames"]))["frames"]
        return [{**m, "pixels": z[f"pixels_{k}"], "line_received": z[f"line_received_{k}"]}
                for k, m in enumerate(meta)]


def stream(records: list[tuple[int, float, bytes]], direction: int) -> bytes:
    """One direction's bytes, joined (board->host: what `pulseline decode`
    assembles)."""
    return b"".join(data for d, _, data in records if d == direction)


# -- reading the packets back -------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    t_s: float
    direction: int
    kind: str  # command, response, event, line, trailer, log
    seq: int
    text: str
    body: Any = None


def _unstuff(data: bytes, escaped: bool) -> tuple[bytes, bool]:
    """Undo the host->board byte stuffing; `escaped`: the previous chunk
    ended in an escape byte."""
    out = bytearray()
    for b in data:
        if escaped:
            out.append(b ^ wire.ESC_XOR)
            escaped = False
        elif b == wire.ESC:
            escaped = True
        else:
            out.append(b)
    return bytes(out), escaped


def _packets(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(offset, type, seq, payload) of every good packet, with the
    assembler's resynchronisation rule (resume after a failed sync)."""
    at = 0
    while True:
        i = data.find(wire.SYNC, at)
        if i < 0 or i + wire.HEADER_SIZE > len(data):
            return
        head = data[i + 4:i + 10]
        _version, ptype, seq, n = struct.unpack(wire.PACKET_HEADER_FORMAT, head)
        check = struct.unpack_from("<H", data, i + 10)[0]
        end = i + wire.HEADER_SIZE + n + wire.CRC_SIZE
        if zlib.crc32(head) & 0xFFFF != check or end > len(data):
            at = i + 1
            continue
        payload = data[i + wire.HEADER_SIZE:end - wire.CRC_SIZE]
        crc = struct.unpack_from("<I", data, end - wire.CRC_SIZE)[0]
        if zlib.crc32(payload, zlib.crc32(data[i + 4:i + wire.HEADER_SIZE])) != crc:
            at = i + 1
            continue
        yield i, ptype, seq, payload
        at = end


def entries(records: list[tuple[int, float, bytes]]) -> list[Entry]:
    """Every good packet of a transcript, decoded, in the order the host
    wrote or read it; a packet is dated by the chunk it completed in."""
    out: list[tuple[int, Entry]] = []
    for direction in (TO_BOARD, TO_HOST):
        parts: list[bytes] = []
        size = 0
        ends: list[tuple[int, int, float]] = []  # (stream offset where a chunk ends, record index, its time)
        escaped = False
        for k, (d, t_s, data) in enumerate(records):
            if d != direction:
                continue
            if direction == TO_BOARD:
                data, escaped = _unstuff(data, escaped)
            parts.append(data)
            size += len(data)
            ends.append((size, k, t_s))
        buf = b"".join(parts)
        chunk = 0
        for off, ptype, seq, payload in _packets(buf):
            end = off + wire.HEADER_SIZE + len(payload) + wire.CRC_SIZE
            while chunk < len(ends) - 1 and ends[chunk][0] < end:
                chunk += 1
            _, k, t_s = ends[chunk]
            out.append((k, _entry(t_s, direction, ptype, seq, payload)))
    out.sort(key=lambda ke: ke[0])  # in the order the host saw the chunks (stable within one)
    return [e for _, e in out]


MAX_BODY_DEPTH = 32  # the firmware's bodies nest a few levels; far below any recursion limit


def _depth(value: Any) -> int:
    """How deep lists and objects nest in `value` (iterative: no recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _json(raw: bytes) -> Any:
    """A body decoded, or its text as it came when it is not JSON we can
    show: not JSON at all, or nested so deep that decoding (RecursionError)
    or showing it again (json.dumps) would overflow the stack."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return raw.decode(errors="replace")
    return value if _depth(value) <= MAX_BODY_DEPTH else raw.decode(errors="replace")


def _entry(t_s: float, direction: int, ptype: int, seq: int, payload: bytes) -> Entry:
    kind = PACKET_TYPE_NAMES.get(ptype, f"type{ptype}")
    if ptype == wire.PKT_COMMAND and payload:
        name = codes.OP_NAMES.get(payload[0], f"op{payload[0]}")
        body = _json(payload[wire.COMMAND_HEAD_SIZE:]) if len(payload) > wire.COMMAND_HEAD_SIZE else {}
        return Entry(t_s, direction, kind, seq, f"{name} {json.dumps(body)}", {"command": name, "args": body})
    if ptype == wire.PKT_RESPONSE and len(payload) >= wire.RESPONSE_HEAD_SIZE:
        cseq, status = struct.unpack_from(wire.RESPONSE_HEAD_FORMAT, payload)
        body = _json(payload[wire.RESPONSE_HEAD_SIZE:])
        status_name = codes.ERROR_NAMES.get(status, str(status))
        return Entry(t_s, direction, kind, seq, f"to #{cseq}: {status_name} {json.dumps(body)}",
                     {"to": cseq, "status": status_name, "body": body})
    if ptype == wire.PKT_EVENT and len(payload) >= wire.EVENT_HEAD_SIZE:
        code, board_us = struct.unpack_from(wire.EVENT_HEAD_FORMAT, payload)
        name = str(codes.EVENT_NAMES.get(code, f"event{code}"))
        body = _json(payload[wire.EVENT_HEAD_SIZE:])
        return Entry(t_s, direction, kind, seq, f"{name} {json.dumps(body)} (board {board_us} us)",
                     {"event": name, "board_us": board_us, "body": body})
    if ptype == wire.PKT_LINE and len(payload) >= wire.LINE_HEADER_SIZE:
        frame_id, line, lines, pixels, _fmt, _flags, pulse_id, _board_us = struct.unpack_from(
            wire.LINE_HEADER_FORMAT, payload)
        return Entry(t_s, direction, kind, seq, f"frame {frame_id} line {line}/{lines} ({pixels} px)",
                     {"frame_id": frame_id, "line": line, "lines": lines, "pixels": pixels, "pulse_id": pulse_id})
    if ptype == wire.PKT_TRAILER and len(payload) == wire.TRAILER_SIZE:
        tr = Trailer.parse(payload)
        return Entry(t_s, direction, kind, seq,
                     f"frame {tr.frame_id}: {tr.lines_sent}/{tr.lines_per_frame} lines, {tr.kv:.1f} kV "
                     f"{tr.ma:.1f} mA {tr.pulse_width_ms:g} ms, {tr.air_kerma_ugy:.2f} uGy", tr.__dict__)
    if ptype == wire.PKT_LOG and len(payload) >= wire.LOG_HEAD_SIZE:
        level, board_us = struct.unpack_from(wire.LOG_HEAD_FORMAT, payload)
        return Entry(t_s, direction, kind, seq, f"[{level}] {payload[wire.LOG_HEAD_SIZE:].decode(errors='replace')}",
                     {"level": level, "board_us": board_us})
    return Entry(t_s, direction, kind, seq, f"{len(payload)} bytes")


def describe(records: list[tuple[int, float, bytes]], *, lines: bool = False,
             heartbeat: bool = False) -> Iterator[str]:
    """The transcript as text, one packet per line. Line data is folded to
    one line per run of a frame's lines unless `lines`; the heartbeat (ping
    and its answers) is left out unless `heartbeat`."""
    t0 = records[0][1] if records else 0.0
    pings: set[int] = set()
    run: list[Entry] = []

    def flush() -> Iterator[str]:
        if run:
            first, last = run[0], run[-1]
            yield (f"{first.t_s - t0:10.4f} <- line     frame {first.body['frame_id']}: lines "
                   f"{first.body['line']}..{last.body['line']} of {first.body['lines']} ({len(run)} packets)")
            run.clear()

    every = entries(records)
    commanded = {e.seq for e in every if e.kind == "command"}
    for e in every:
        if e.kind == "command" and e.body["command"] == "ping" and not heartbeat:
            pings.add(e.seq)
            continue
        # A heartbeat answer: to a ping, or to a command this host never sent
        # (the fast target's own stand-in host keeps the link alive).
        if e.kind == "response" and not heartbeat and (e.body["to"] in pings or e.body["to"] not in commanded):
            pings.discard(e.body["to"])
            continue
        if e.kind == "line" and not lines:
            if run and run[-1].body["frame_id"] != e.body["frame_id"]:
                yield from flush()
            run.append(e)
            continue
        yield from flush()
        arrow = "->" if e.direction == TO_BOARD else "<-"
        seq = f"#{e.seq}" if e.kind in ("command", "response") else ""
        yield f"{e.t_s - t0:10.4f} {arrow} {e.kind:<8} {seq:>6} {e.text}".rstrip()
    yield from flush()
