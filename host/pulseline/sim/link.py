"""The physical link between a simulated board and the host: a throughput
ceiling, latency, and seeded faults (bit corruption, dropped, duplicated or
delayed chunks, a disconnect). One LinkDirection per direction.

Model (all times in seconds on whatever monotonic clock the caller passes;
nothing here sleeps or reads a clock):

- Each push is cut into chunks of `FaultSpec.chunk_bytes` counted from the
  push's first byte; a push's tail is a short chunk of its own, so the last
  bytes of a response never wait for more data.
- The wire serialises chunks back to back at `bytes_per_s`, starting at the
  push time or when the wire is free, whichever is later. A chunk is ready
  (may be popped) `latency_s` after its last byte has been serialised.
  A dropped chunk still took wire time (it was sent, then lost); a
  duplicated chunk takes wire time twice.
- A delayed chunk is ready `delay_s` later than it would have been. The link
  is FIFO (USB and UARTs never reorder): nothing behind a delayed chunk is
  ready before it. Serialisation is not stalled, so the backlog behind a
  delayed chunk comes out right after it.
- Bit corruption is decided over the pushed bytes, before the chunk faults:
  a corrupted byte inside a duplicated chunk arrives corrupted twice, one
  inside a dropped chunk never arrives.
- From the disconnect instant (`start_s + disconnect_at_s`) nothing more is
  delivered: chunks not ready by that instant are lost and so is every byte
  pushed from then on. Chunks that were ready by the instant had reached the
  host and are still handed over by pop_ready if the caller had not
  collected them yet, so what is delivered never depends on how often the
  caller polls.

Every random decision is made when bytes are pushed, from the caller's
numpy Generator, so the same seed and the same pushes give the same
delivered bytes and the same `faults_log` whatever the pop schedule. Work
is per push and per pop in numpy, never per byte in Python.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LinkClass:
    name: str  # "usb-fs", "usb-hs", "uart:115200"
    bytes_per_s: float
    latency_s: float


LINKS: dict[str, LinkClass] = {
    "usb-fs": LinkClass("usb-fs", 1.1e6, 1e-3),  # SPEC 3: ~1.1 MB/s practical; 1 ms frames
    "usb-hs": LinkClass("usb-hs", 25e6, 125e-6),  # SPEC 3: ~25 MB/s practical; 125 us microframes
}
LINK_FORMS = "usb-fs, usb-hs or uart:BAUD (e.g. uart:921600)"
_UART = re.compile(r"uart:([0-9]+)")


def parse_link(spec: str) -> LinkClass:
    """"usb-fs", "usb-hs" or "uart:BAUD" (8N1: BAUD/10 bytes a second, no
    latency beyond the byte time)."""
    s = spec.strip().lower()
    if s in LINKS:
        return LINKS[s]
    m = _UART.fullmatch(s)
    if m is not None and int(m.group(1)) > 0:
        baud = int(m.group(1))
        return LinkClass(f"uart:{baud}", baud / 10.0, 0.0)
    raise ValueError(f"unknown link {spec!r}: use {LINK_FORMS}")


@dataclass(frozen=True)
class FaultSpec:
    corrupt_per_byte: float = 0.0  # probability a byte gets one random bit flipped
    drop_per_chunk: float = 0.0  # probability a chunk is lost
    dup_per_chunk: float = 0.0  # probability a chunk arrives twice, back to back
    delay_per_chunk: float = 0.0  # probability a chunk (and so all behind it) is held back delay_s
    delay_s: float = 0.0
    disconnect_at_s: float | None = None  # relative to the LinkDirection's start_s
    chunk_bytes: int = 64  # USB full-speed bulk packets; 512 at high speed

    def __post_init__(self) -> None:
        for name in ("corrupt_per_byte", "drop_per_chunk", "dup_per_chunk", "delay_per_chunk"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"FaultSpec.{name} must be a probability in 0..1, not {p!r}")
        if not (math.isfinite(self.delay_s) and self.delay_s >= 0.0):
            raise ValueError(f"FaultSpec.delay_s must be a finite duration >= 0, not {self.delay_s!r}")
        d = self.disconnect_at_s
        if d is not None and not (math.isfinite(d) and d >= 0.0):
            raise ValueError(f"FaultSpec.disconnect_at_s must be a finite time >= 0 or None, not {d!r}")
        if isinstance(self.chunk_bytes, bool) or not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 1:
            raise ValueError(f"FaultSpec.chunk_bytes must be an integer >= 1, not {self.chunk_bytes!r}")

    @property
    def any(self) -> bool:
        return bool(self.corrupt_per_byte or self.drop_per_chunk or self.dup_per_chunk or self.delay_per_chunk
                    or self.disconnect_at_s is not None)

    @property
    def chunk_faults(self) -> bool:
        return bool(self.drop_per_chunk or self.dup_per_chunk or self.delay_per_chunk)


FAULT_KEYS = ("corrupt=P, drop=P, dup=P, delay=P:DURATION (us|ms|s), disconnect=SECONDS (or 12.5s), "
              "chunk=BYTES; P a probability 0..1")
_PROBABILITY_FIELDS = {"corrupt": "corrupt_per_byte", "drop": "drop_per_chunk", "dup": "dup_per_chunk"}
_KEYS = (*_PROBABILITY_FIELDS, "delay", "disconnect", "chunk")


def _probability(text: str) -> float:
    p = float(text)
    if not 0.0 <= p <= 1.0:
        raise ValueError(text)
    return p


def _duration_s(text: str) -> float:
    t = text.strip().lower()
    scale = 1.0
    for unit, factor in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if t.endswith(unit):
            t, scale = t[: -len(unit)], factor
            break
    v = float(t) * scale
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(text)
    return v


def parse_faults(spec: str) -> FaultSpec:
    """"" or "none": no faults; otherwise comma-separated key=value, e.g.
    "corrupt=1e-5,drop=0.01,dup=0.01,delay=0.01:5ms,disconnect=12.5,chunk=512"."""
    s = spec.strip()
    if s.lower() in ("", "none"):
        return FaultSpec()
    corrupt = drop = dup = delay_p = delay_s = 0.0
    disconnect: float | None = None
    chunk = FaultSpec.chunk_bytes
    seen: set[str] = set()
    for raw_item in s.split(","):
        item = raw_item.strip()
        if not item:
            continue
        key, eq, value = (part.strip() for part in item.partition("="))
        key = key.lower()
        if key not in _KEYS:
            raise ValueError(f"unknown link fault {item!r}: valid keys are {FAULT_KEYS}")
        if key in seen:
            raise ValueError(f"bad link fault {item!r}: {key} given twice; valid keys are {FAULT_KEYS}")
        seen.add(key)
        try:
            if not eq or not value:
                raise ValueError(item)
            if key == "corrupt":
                corrupt = _probability(value)
            elif key == "drop":
                drop = _probability(value)
            elif key == "dup":
                dup = _probability(value)
            elif key == "delay":
                prob, colon, duration = value.partition(":")
                if not colon:
                    raise ValueError(item)
                delay_p, delay_s = _probability(prob), _duration_s(duration)
            elif key == "disconnect":
                disconnect = _duration_s(value)
            else:
                chunk = int(value)
                if chunk < 1:
                    raise ValueError(item)
        except ValueError:
            raise ValueError(f"bad link fault {item!r}: valid keys are {FAULT_KEYS}") from None
    return FaultSpec(corrupt_per_byte=corrupt, drop_per_chunk=drop, dup_per_chunk=dup, delay_per_chunk=delay_p,
                     delay_s=delay_s, disconnect_at_s=disconnect, chunk_bytes=chunk)


@dataclass(frozen=True)
class Fault:
    kind: str  # "corrupt", "drop", "dup", "delay", "disconnect"
    in_offset: int  # offset in the input stream (bytes pushed so far) where it applies
    length: int  # 1 for corrupt; the chunk length for drop/dup/delay; bytes never delivered for disconnect
    bit: int = -1  # corrupt: the bit flipped (0 = least significant)


COUNTERS = ("bytes_in", "bytes_out", "bytes_corrupted", "chunks_dropped", "chunks_duplicated", "chunks_delayed",
            "bytes_lost_to_disconnect")


class _Segment:
    """What one push put on the link: its output bytes (after the faults), and
    per output chunk its end in `buf`, its ready time and the input offset of
    its first byte."""

    __slots__ = ("buf", "ends", "in_off", "pos", "ready")

    def __init__(self, buf: bytes, ends: Ints, ready: Floats, in_off: Ints) -> None:
        self.buf = buf
        self.ends = ends
        self.ready = ready
        self.in_off = in_off
        self.pos = 0  # bytes of buf already delivered


class LinkDirection:
    """One direction of the link. push() when the sender writes; pop_ready()
    for what may be delivered by then; next_ready_s() for when to look again."""

    def __init__(self, link: LinkClass, faults: FaultSpec, rng: np.random.Generator, start_s: float) -> None:
        self.link = link
        self.faults = faults
        self.rng = rng
        self.start_s = float(start_s)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.faults_log: list[Fault] = []  # ground truth: every injected fault
        self._queue: deque[_Segment] = deque()
        self._busy_until = self.start_s  # when the wire has serialised everything pushed
        self._last_ready = -math.inf  # ready time of the last chunk queued (FIFO)
        self._offset = 0  # input bytes pushed so far
        d = faults.disconnect_at_s
        self._disconnect_s: float | None = None if d is None else self.start_s + d
        self._cut = False  # the disconnect has been applied to the queue
        self._after_entry = -1  # faults_log index of the entry for bytes pushed after the disconnect

    # -- state -----------------------------------------------------------------

    def disconnected(self, now_s: float) -> bool:
        if self._disconnect_s is None or now_s < self._disconnect_s:
            return False
        self._apply_disconnect()
        return True

    def backlog_s(self, now_s: float) -> float:
        """How long the wire needs for what was pushed and not yet sent."""
        return max(0.0, self._busy_until - now_s)

    def next_ready_s(self) -> float | None:
        """The earliest time at which pop_ready would return more bytes (it may
        be in the past when a max_bytes limit left ready bytes behind); None if
        nothing more will ever be delivered."""
        if not self._queue:
            return None
        seg = self._queue[0]
        t = float(seg.ready[int(np.searchsorted(seg.ends, seg.pos, side="right"))])
        if self._disconnect_s is not None and t > self._disconnect_s:
            return None
        return t

    # -- the sender ------------------------------------------------------------

    def push(self, data: bytes | bytearray | memoryview, now_s: float) -> None:
        raw = bytes(data)  # a copy unless already bytes: the caller may reuse its buffer
        n = len(raw)
        if n == 0:
            return
        base = self._offset
        self._offset += n
        self.counters["bytes_in"] += n
        if self.disconnected(now_s):
            self.counters["bytes_lost_to_disconnect"] += n
            if self._after_entry < 0:
                self._after_entry = len(self.faults_log)
                self.faults_log.append(Fault("disconnect", base, n))
            else:
                f = self.faults_log[self._after_entry]
                self.faults_log[self._after_entry] = replace(f, length=f.length + n)
            return
        raw = self._corrupt(raw, base)
        seg = self._segment(raw, base, now_s)
        if seg is not None:
            self._queue.append(seg)

    def _corrupt(self, raw: bytes, base: int) -> bytes:
        p = self.faults.corrupt_per_byte
        if p <= 0.0:
            return raw
        n = len(raw)
        k = int(self.rng.binomial(n, p))
        if k == 0:
            return raw
        where = np.sort(self.rng.choice(n, size=k, replace=False))
        bits = self.rng.integers(0, 8, size=k)
        arr = np.frombuffer(raw, np.uint8).copy()
        arr[where] ^= np.left_shift(np.uint8(1), bits.astype(np.uint8))
        self.faults_log.extend(Fault("corrupt", base + w, 1, b)
                               for w, b in zip(where.tolist(), bits.tolist(), strict=True))
        self.counters["bytes_corrupted"] += k
        return arr.tobytes()

    def _segment(self, raw: bytes, base: int, now_s: float) -> _Segment | None:
        f = self.faults
        size = f.chunk_bytes
        n_in = len(raw)
        n = -(-n_in // size)
        starts: Ints = np.arange(n, dtype=np.int64) * size
        lens: Ints = np.minimum(starts + size, n_in) - starts
        rate = self.link.bytes_per_s
        t0 = max(now_s, self._busy_until)
        if not f.chunk_faults:
            ends: Ints = starts + lens
            ready: Floats = t0 + ends / rate + self.link.latency_s
            self._busy_until = t0 + n_in / rate
            # Ready times rise within the push; only an earlier delayed chunk can hold them back.
            ready = np.maximum(ready, self._last_ready)
            self._last_ready = float(ready[-1])
            return _Segment(raw, ends, ready, base + starts)

        u = self.rng.random((n, 3))
        drop = u[:, 0] < f.drop_per_chunk
        dup = ~drop & (u[:, 1] < f.dup_per_chunk)
        delay = ~drop & (u[:, 2] < f.delay_per_chunk)
        for i in np.flatnonzero(drop | dup | delay).tolist():
            at, length = base + i * size, int(lens[i])
            if drop[i]:
                self.faults_log.append(Fault("drop", at, length))
                self.counters["chunks_dropped"] += 1
                continue
            if delay[i]:
                self.faults_log.append(Fault("delay", at, length))
                self.counters["chunks_delayed"] += 1
            if dup[i]:
                self.faults_log.append(Fault("dup", at, length))
                self.counters["chunks_duplicated"] += 1

        counts: Ints = np.where(drop, 0, np.where(dup, 2, 1)).astype(np.int64)
        wire: Ints = lens * np.maximum(counts, 1)  # a dropped chunk was still sent
        self._busy_until = t0 + int(wire.sum()) / rate
        rows: Ints = np.repeat(np.arange(n, dtype=np.int64), counts)  # input chunk of each output chunk
        m = len(rows)
        if m == 0:
            return None
        copy = np.arange(m, dtype=np.int64) - (np.cumsum(counts) - counts)[rows]  # 0, or 1 for a duplicate
        wire_start = np.cumsum(wire) - wire
        out_lens = lens[rows]
        ready = t0 + (wire_start[rows] + (copy + 1) * out_lens) / rate + self.link.latency_s
        ready = ready + np.where(delay[rows] & (copy == 0), f.delay_s, 0.0)
        ready = np.maximum.accumulate(np.maximum(ready, self._last_ready))  # FIFO: nothing overtakes
        self._last_ready = float(ready[-1])

        if not (drop.any() or dup.any()):  # delays only: the bytes are the input's
            buf = raw
        else:
            pad = n * size - n_in
            arr = np.frombuffer(raw, np.uint8)
            if pad:
                arr = np.concatenate([arr, np.zeros(pad, np.uint8)])
            mat = arr.reshape(n, size)[rows]
            tail_copies = int(counts[-1])
            if pad and tail_copies:  # the short last chunk is among the output: trim its padding
                buf = mat[: m - tail_copies].tobytes() + mat[m - tail_copies:, : size - pad].tobytes()
            else:
                buf = mat.tobytes()
        return _Segment(buf, np.cumsum(out_lens), ready, base + starts[rows])

    # -- the receiver ----------------------------------------------------------

    def pop_ready(self, now_s: float, max_bytes: int = 1 << 20) -> bytes:
        """Up to max_bytes that have arrived by now_s, in order."""
        self.disconnected(now_s)  # applies a disconnect that has happened by now
        out = bytearray()
        q = self._queue
        while q and len(out) < max_bytes:
            seg = q[0]
            k = int(np.searchsorted(seg.ready, now_s, side="right"))
            if k == 0:
                break
            take = min(int(seg.ends[k - 1]) - seg.pos, max_bytes - len(out))
            if take <= 0:
                break
            out += memoryview(seg.buf)[seg.pos:seg.pos + take]
            seg.pos += take
            if seg.pos < len(seg.buf):
                break
            q.popleft()
        self.counters["bytes_out"] += len(out)
        return bytes(out)

    def _apply_disconnect(self) -> None:
        """Once, at the first call at or after the disconnect instant: every
        chunk not ready by then is lost."""
        if self._cut:
            return
        self._cut = True
        d = self._disconnect_s
        assert d is not None
        kept: deque[_Segment] = deque()
        lost = 0
        first_lost = -1
        for seg in self._queue:
            k = int(np.searchsorted(seg.ready, d, side="right"))
            if k == len(seg.ready):
                kept.append(seg)
                continue
            if first_lost < 0:
                first_lost = int(seg.in_off[k])
            cut = int(seg.ends[k - 1]) if k else 0
            lost += len(seg.buf) - cut
            if cut > seg.pos:
                seg.buf, seg.ends, seg.ready, seg.in_off = seg.buf[:cut], seg.ends[:k], seg.ready[:k], seg.in_off[:k]
                kept.append(seg)
        self._queue = kept
        if lost:
            self.counters["bytes_lost_to_disconnect"] += lost
            self.faults_log.append(Fault("disconnect", first_lost, lost))
