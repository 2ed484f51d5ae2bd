"""The physical link between a simulated board and the host: a throughput
ceiling, latency, and seeded faults (bit corruption, dropped, duplicated or
delayed chunks, a disconnect). One LinkDirection per direction.

Time is whatever monotonic clock the caller passes (seconds); nothing here
sleeps. Every random decision is made when bytes are pushed, so the same
seed and the same pushes give the same delivered bytes however often the
caller polls. The link is FIFO: USB and UARTs never reorder, so a delayed
chunk holds back everything behind it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

SEGMENT_BYTES = 4096  # a long write leaves the link in pieces this size, not all at its end


@dataclass(frozen=True)
class LinkClass:
    name: str
    bytes_per_s: float
    latency_s: float


LINKS = {
    "usb-fs": LinkClass("usb-fs", 1.1e6, 1e-3),  # SPEC 3: ~1.1 MB/s practical; 1 ms frames
    "usb-hs": LinkClass("usb-hs", 25e6, 125e-6),  # ~25 MB/s practical; 125 us microframes
}


def parse_link(spec: str) -> LinkClass:
    s = spec.strip().lower()
    if s in LINKS:
        return LINKS[s]
    if s.startswith("uart:"):
        try:
            baud = int(s[5:])
        except ValueError:
            baud = 0
        if baud > 0:
            return LinkClass(f"uart:{baud}", baud / 10.0, 0.0)  # 8N1: 10 bits a byte
    raise ValueError(f"unknown link {spec!r}: use usb-fs, usb-hs or uart:BAUD (e.g. uart:921600)")


@dataclass(frozen=True)
class FaultSpec:
    corrupt_per_byte: float = 0.0
    drop_per_chunk: float = 0.0
    dup_per_chunk: float = 0.0
    delay_per_chunk: float = 0.0
    delay_s: float = 0.0
    disconnect_at_s: float | None = None
    chunk_bytes: int = 64  # USB full-speed bulk packets; 512 at high speed

    @property
    def any(self) -> bool:
        return bool(self.corrupt_per_byte or self.drop_per_chunk or self.dup_per_chunk or self.delay_per_chunk
                    or self.disconnect_at_s is not None)

    @property
    def chunk_faults(self) -> bool:
        return bool(self.drop_per_chunk or self.dup_per_chunk or self.delay_per_chunk)


FAULT_KEYS = "corrupt, drop, dup, delay (p:duration), disconnect (s), chunk (bytes)"


def _duration_s(text: str) -> float:
    t = text.strip().lower()
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * scale
    return float(t)


def parse_faults(spec: str) -> FaultSpec:
    """"corrupt=1e-5,drop=0.01,dup=0.01,delay=0.01:5ms,disconnect=12.5,chunk=512"."""
    s = spec.strip()
    if s in ("", "none"):
        return FaultSpec()
    values: dict[str, object] = {}
    for item in s.split(","):
        key, eq, raw = item.partition("=")
        key = key.strip()
        try:
            if not eq:
                raise ValueError
            if key in ("corrupt", "drop", "dup"):
                p = float(raw)
                if not 0.0 <= p <= 1.0:
                    raise ValueError
                values[{"corrupt": "corrupt_per_byte", "drop": "drop_per_chunk", "dup": "dup_per_chunk"}[key]] = p
            elif key == "delay":
                prob, _, dur = raw.partition(":")
                p = float(prob)
                if not 0.0 <= p <= 1.0 or not dur:
                    raise ValueError
                values["delay_per_chunk"] = p
                values["delay_s"] = _duration_s(dur)
            elif key == "disconnect":
                values["disconnect_at_s"] = _duration_s(raw)
            elif key == "chunk":
                n = int(raw)
                if n < 1:
                    raise ValueError
                values["chunk_bytes"] = n
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(f"unknown link fault {key!r}: use {FAULT_KEYS}") from None
        except ValueError:
            raise ValueError(f"bad link fault {item.strip()!r}: use {FAULT_KEYS}; probabilities 0..1") from None
    return FaultSpec(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Fault:
    kind: str  # corrupt, drop, dup, delay, disconnect
    in_offset: int  # where in the input stream (bytes pushed so far)
    length: int
    bit: int = -1  # corrupt: the bit flipped


@dataclass
class LinkDirection:
    link: LinkClass
    faults: FaultSpec
    rng: np.random.Generator
    start_s: float
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("bytes_in", "bytes_out", "bytes_corrupted", "chunks_dropped", "chunks_duplicated", "chunks_delayed",
         "bytes_lost_to_disconnect"), 0))
    faults_log: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: deque[tuple[float, bytes]] = deque()
        self._busy_until = self.start_s  # when the link has sent everything queued
        self._last_ready = self.start_s
        self._offset = 0
        d = self.faults.disconnect_at_s
        self._disconnect_s = None if d is None else self.start_s + d

    def disconnected(self, now_s: float) -> bool:
        return self._disconnect_s is not None and now_s >= self._disconnect_s

    def _corrupt(self, data: bytes, base: int) -> bytes:
        p = self.faults.corrupt_per_byte
        if not p or not data:
            return data
        k = int(self.rng.binomial(len(data), p))
        if not k:
            return data
        arr = np.frombuffer(data, np.uint8).copy()
        where = np.sort(self.rng.choice(len(data), size=k, replace=False))
        bits = self.rng.integers(0, 8, size=k)
        arr[where] ^= (np.uint8(1) << bits.astype(np.uint8))
        for w, b in zip(where.tolist(), bits.tolist(), strict=True):
            self.faults_log.append(Fault("corrupt", base + w, 1, b))
        self.counters["bytes_corrupted"] += k
        return arr.tobytes()

    def _pieces(self, data: bytes) -> list[tuple[bytes, float]]:
        """Split a push into (bytes, extra delay) pieces, applying the chunk
        faults; plain stretches stay long."""
        f = self.faults
        base = self._offset
        if not f.chunk_faults:
            return [(data, 0.0)]
        size = f.chunk_bytes
        n = (len(data) + size - 1) // size
        u = self.rng.random((n, 3))
        hit = np.nonzero((u[:, 0] < f.drop_per_chunk) | (u[:, 1] < f.dup_per_chunk)
                         | (u[:, 2] < f.delay_per_chunk))[0]
        out: list[tuple[bytes, float]] = []
        pos = 0
        for i in hit.tolist():
            a, b = i * size, min((i + 1) * size, len(data))
            if a > pos:
                out.append((data[pos:a], 0.0))
            chunk = data[a:b]
            if u[i, 0] < f.drop_per_chunk:
                self.faults_log.append(Fault("drop", base + a, b - a))
                self.counters["chunks_dropped"] += 1
            else:
                delay = 0.0
                if u[i, 2] < f.delay_per_chunk:
                    delay = f.delay_s
                    self.faults_log.append(Fault("delay", base + a, b - a))
                    self.counters["chunks_delayed"] += 1
                out.append((chunk, delay))
                if u[i, 1] < f.dup_per_chunk:
                    self.faults_log.append(Fault("dup", base + a, b - a))
                    self.counters["chunks_duplicated"] += 1
                    out.append((chunk, 0.0))
            pos = b
        if pos < len(data):
            out.append((data[pos:], 0.0))
        return out

    def push(self, data: bytes, now_s: float) -> None:
        if not data:
            return
        data = bytes(data)
        self.counters["bytes_in"] += len(data)
        if self.disconnected(now_s):
            self.counters["bytes_lost_to_disconnect"] += len(data)
            self.faults_log.append(Fault("disconnect", self._offset, len(data)))
            self._offset += len(data)
            return
        base = self._offset
        data = self._corrupt(data, base)
        rate = self.link.bytes_per_s
        t = max(now_s, self._busy_until)
        for piece, delay in self._pieces(data):
            for k in range(0, len(piece), SEGMENT_BYTES):
                seg = piece[k:k + SEGMENT_BYTES]
                t += len(seg) / rate
                ready = max(t + self.link.latency_s + (delay if k == 0 else 0.0), self._last_ready)
                self._last_ready = ready
                self._queue.append((ready, seg))
        self._busy_until = t
        self._offset += len(data)

    def pop_ready(self, now_s: float, max_bytes: int = 1 << 20) -> bytes:
        if self._disconnect_s is not None and now_s >= self._disconnect_s:
            # In flight at the disconnect: gone.
            lost = 0
            out = bytearray()
            while self._queue:
                ready, seg = self._queue.popleft()
                if ready <= self._disconnect_s and len(out) < max_bytes:
                    out += seg
                else:
                    lost += len(seg)
            if lost:
                self.counters["bytes_lost_to_disconnect"] += lost
                self.faults_log.append(Fault("disconnect", self._offset, lost))
            self.counters["bytes_out"] += len(out)
            return bytes(out)
        out = bytearray()
        while self._queue and self._queue[0][0] <= now_s and len(out) < max_bytes:
            out += self._queue.popleft()[1]
        self.counters["bytes_out"] += len(out)
        return bytes(out)

    def next_ready_s(self) -> float | None:
        if not self._queue:
            return None
        return self._queue[0][0]
