"""Seed corpus for native/fuzz_assembler.c (make fuzz): python tests/make_corpus.py OUTDIR.

Each seed is the harness's input: 14 configuration bytes, a mode byte, then either a raw byte stream made by
pulseline.link.streamgen (the firmware's encoder) or packet descriptions the harness builds into packets. The
layout is documented at the top of fuzz_assembler.c. Fixed seeds and names: the output is deterministic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pulseline.link.protocol import wire
from pulseline.link.streamgen import StreamWriter, WirePacket, random_frames

BIG_WIDTHS = [300, 2048, 65, 127, 128, 255, 1000, 513]  # width byte 0xF0 | index
MAP_BITS = {"dark": 0x08, "gain": 0x10, "defect": 0x20}
M16, M12 = wire.FMT_MONO16, wire.FMT_MONO12P
Damage = Callable[[list[WirePacket], np.random.Generator], list[WirePacket]]


def header(ppl: int, lpf: int, fmt: int, *, structured: bool = False, corruptions: int = 0, float_out: bool = False,
           alpha: int = 0, maps: tuple[str, ...] = (), frames: int = 4, map_param: int = 0x08, chunking: int = 0,
           chunk_param: int = 16, spares: int = 2, pool_free: bool = False, mid_flush: bool = False,
           broken: tuple[int, int] | None = None) -> bytes:
    """Configuration and mode bytes (parse_setup and LLVMFuzzerTestOneInput in the harness)."""
    width = ppl - 1 if ppl <= 64 else 0xF0 | BIG_WIDTHS.index(ppl)
    flags = (fmt == M12) | float_out << 1 | (alpha > 0) << 2 | sum(MAP_BITS[m] for m in maps) | pool_free << 6
    select, param = (7, map_param) if broken is None else broken
    flags |= 0x80 if broken is not None else 0
    centre = [lpf // 4, lpf // 2 + 1, 64, 128]  # a region in the middle of the frame
    mode = structured | corruptions << 1 | chunking << 4 | spares << 6
    return bytes([width, lpf - 1, flags, frames - 1, alpha, *centre, select, param, 11, chunk_param, mid_flush, mode])


def drop_lines(packets: list[WirePacket], rng: np.random.Generator) -> list[WirePacket]:
    return [p for p in packets if p.type != wire.PKT_LINE or rng.random() > 0.25]


def duplicate(packets: list[WirePacket], rng: np.random.Generator) -> list[WirePacket]:
    return [q for p in packets for q in ([p, p] if rng.random() < 0.2 else [p])]


def reorder(packets: list[WirePacket], rng: np.random.Generator) -> list[WirePacket]:
    out = list(packets)
    for i in rng.integers(0, len(out) - 1, size=len(out) // 4):
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def no_trailers(packets: list[WirePacket], rng: np.random.Generator) -> list[WirePacket]:
    return [p for p in packets if p.type != wire.PKT_TRAILER or rng.random() < 0.3]


def stream(ppl: int, lpf: int, fmt: int, count: int, seed: int, damage: Damage | None = None,
           events: bool = True, first_id: int = 100) -> bytes:
    """count frames (with events and a log) from the firmware encoder, optionally damaged packet-wise."""
    rng = np.random.default_rng(seed)
    frames = random_frames(rng, count, lpf, ppl, fmt)
    writer = StreamWriter(ppl, lpf, fmt)
    packets: list[WirePacket] = []
    for i in range(count):
        if events and i % 2 == 0:
            packets.append(writer.event(7, {"frame": first_id + i, "kv": 80}))
        packets.extend(writer.frame(first_id + i, frames[i]))
    if events:
        packets.append(writer.log("capture done"))
    if damage is not None:
        packets = damage(packets, rng)
    return b"".join(p.data for p in packets)


def flip(data: bytes, at: int, bit: int = 3) -> bytes:
    return data[:at] + bytes([data[at] ^ 1 << bit]) + data[at + 1:]


def interleaved(lpf: int) -> bytes:
    """Structured: lines of frames 1 and 2 alternating, then both trailers, then a late line of frame 1."""
    return b"".join(bytes([0, 1, y, 0, 2, y]) for y in range(lpf)) + bytes([3, 1, 3, 2, 0, 1, 0])


def seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    s["raw_m16_clean"] = header(8, 4, M16) + stream(8, 4, M16, 6, 1)
    s["raw_m12_clean"] = header(16, 8, M12) + stream(16, 8, M12, 5, 2)
    s["raw_m12_odd_width"] = header(5, 3, M12, chunking=2, chunk_param=7) + stream(5, 3, M12, 8, 3)
    s["raw_one_pixel"] = header(1, 1, M16, frames=1) + stream(1, 1, M16, 12, 4)
    s["raw_m16_lost_lines"] = header(12, 6, M16) + stream(12, 6, M16, 8, 5, drop_lines)
    s["raw_m12_duplicates"] = header(10, 5, M12, chunking=3) + stream(10, 5, M12, 6, 6, duplicate)
    s["raw_m16_reordered"] = header(6, 8, M16, frames=2) + stream(6, 8, M16, 6, 7, reorder)
    s["raw_m12_no_trailers"] = header(9, 4, M12, frames=3) + stream(9, 4, M12, 10, 8, no_trailers)
    s["raw_overflow"] = header(4, 4, M16, frames=1, spares=0) + stream(4, 4, M16, 6, 9, no_trailers)
    clean = stream(8, 8, M12, 4, 10)
    s["raw_truncated"] = header(8, 8, M12) + clean[: len(clean) * 2 // 3]
    s["raw_bit_flips"] = header(8, 8, M12) + flip(flip(clean, 40), len(clean) // 2, 6)
    s["raw_garbage_prefix"] = header(8, 8, M12, chunking=1) + b"\x00\xa5\x5aPL\x01junk" + clean[:900]
    s["raw_float_maps"] = header(16, 8, M16, float_out=True, maps=("dark", "gain", "defect")) + stream(
        16, 8, M16, 4, 11, drop_lines)
    s["raw_float_filter"] = header(12, 6, M12, float_out=True, alpha=64, maps=("defect",), map_param=0x50) + stream(
        12, 6, M12, 5, 12)
    s["raw_wide_300"] = header(300, 2, M12, chunking=3, chunk_param=2) + stream(300, 2, M12, 3, 13)
    s["raw_frame_id_top"] = header(4, 2, M16, pool_free=True) + stream(4, 2, M16, 6, 14, first_id=2**32 - 6)
    s["raw_mid_flush"] = header(8, 4, M16, mid_flush=True, chunking=2) + stream(8, 4, M16, 6, 15, duplicate)
    s["raw_many_frames"] = header(2, 1, M12, frames=2) + stream(2, 1, M12, 90, 16, events=False)

    st = {"structured": True}
    s["st_frames"] = header(8, 4, M16, **st) + bytes([7, 0x03, 7, 0x87, 7, 0x0A, 7, 0x0D, 7, 0xAE])
    s["st_trailer_first"] = header(6, 3, M12, **st) + bytes([7, 0x41, 7, 0x11, 3, 0, 7, 0x60])
    s["st_interleaved"] = header(8, 4, M12, frames=2, **st) + interleaved(4)
    s["st_overflow"] = header(4, 2, M16, frames=3, spares=0, **st) + b"".join(bytes([0, i, 0]) for i in range(24))
    # 64 events fill the output queue; then a new frame must evict (and a lone trailer emit) with no room.
    s["st_queue_full"] = header(4, 2, M16, frames=1, **st) + bytes([0, 0, 0, 0x24, 0, 63, 0, 1, 0, 0x24, 0, 62, 3, 5])
    s["st_late_lines"] = header(8, 4, M16, **st) + bytes([7, 0x03, 0, 0xFF, 1, 0x80, 0xFE, 0, 3, 0xFD])
    s["st_messages"] = header(8, 2, M16, **st) + bytes([4, 40, 5, 12, 6, 2, 30, 0x24, 20, 80, 0x0D, 0xF0, 0, 7, 1])
    s["st_bad_packets"] = header(8, 4, M12, **st) + bytes(
        [0x08, 0, 0, 5, 0x08, 0, 1, 6, 0x10, 0, 2, 4, 0x10, 0, 3, 5, 0x20, 0, 0, 2, 0x0B, 1, 3, 0x13, 2, 60,
         0x23, 3, 0, 0x34, 50, 2, 3, 0xC0, 0, 1])
    s["st_float_maps_filter"] = header(16, 8, M12, float_out=True, alpha=100, maps=("dark", "gain", "defect"),
                                       map_param=0x48, **st) + bytes([7, 0x03, 7, 0x0F, 7, 0x0A])
    s["st_wide_2048"] = header(2048, 2, M16, chunking=3, chunk_param=8, **st) + bytes([7, 0x01, 0, 1, 0])
    s["st_corrupted"] = header(8, 4, M16, corruptions=3, **st) + bytes(
        [0, 0x40, 0, 3, 2, 0x80, 0, 9, 4, 0x20, 0, 1]) + bytes([7, 0x03, 7, 0x82])
    s["st_single_bytes"] = header(3, 2, M12, chunking=1, spares=1, mid_flush=True, **st) + bytes([7, 0x23, 0xC0, 0, 1])
    s["bad_format"] = header(8, 4, M16, broken=(0, 1))
    s["bad_frames_in_flight"] = header(8, 4, M16, broken=(1, 0x81))
    s["bad_centre"] = header(8, 4, M16, broken=(8, 3)) + stream(8, 4, M16, 1, 17)
    return s


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        assert len(data) <= 65536, name  # make fuzz runs with -max_len=65536
        (out / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {out}")


if __name__ == "__main__":
    main()
