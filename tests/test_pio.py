"""The rp2 board's PIO programs (firmware/pulsefw/boards/rp2/pio.py), assembled from
the firmware's own source and run cycle by cycle on the PIO emulator
(rp2040-pio-emulator): the pulse gate's widths and periods exact to the
cycle over the whole technique range, the gate held low when the interlock
is open, and the detector readout's clock, sampling phase and Mono12p
packing against a model front end."""

# (No `from __future__ import annotations`: the emulator reads the input
# source's annotation, State, at run time.)
from collections import deque
from typing import Any

import numpy as np
import pio_dsl  # tests/: the asm_pio DSL for CPython
import pytest
from pioemu import State, emulate

from pulseline.link.streamgen import pack_pixels
from pulseline.mpcompat import import_firmware

pio_dsl.install()
pio_rp2 = import_firmware("pulsefw.boards.rp2.pio")
timing = import_firmware("pulsefw.boards.rp2.timing")
controller = import_firmware("pulsefw.controller")

GATE_PIN, INTERLOCK_PIN = 15, 14  # docs/board.md
LINE_SYNC_PIN, PIX_CLK_PIN = 12, 13  # side-set base and base + 1; DATA0..11 on GP0..GP11


def _emulator_settings(p: Any, **pins: Any) -> dict[str, Any]:
    s = p.settings
    return {"side_set_count": p.sideset_count, "wrap_target": p.wrap_target, "wrap_top": p.wrap,
            "shift_isr_right": s.get("in_shiftdir", 0) == pio_dsl.PIO.SHIFT_RIGHT,
            "shift_osr_right": s.get("out_shiftdir", 0) == pio_dsl.PIO.SHIFT_RIGHT,
            "auto_push": bool(s.get("autopush")), "push_threshold": s.get("push_thresh", 32), **pins}


def test_the_programs_assemble_and_fit_their_pio_blocks():
    gate, readout = pio_rp2.pulse_gate, pio_rp2.line_readout
    assert len(gate.words) <= 32 and len(readout.words) <= 32  # one PIO block each (PIO0, PIO1)
    # Spot checks of the encoding against the RP2040 datasheet's tables.
    assert gate.words[0] == 0x80A0  # pull block, side 0
    assert gate.words[gate.labels["fire"]] == 0xB0CB  # mov isr, ~null, side 1
    assert gate.words[4] == 0x00C0 | gate.labels["fire"]  # jmp pin, fire
    assert readout.words[readout.labels["pair"]] == 0xA0E0  # mov osr, pins


# -- the pulse gate -------------------------------------------------------------------------


def run_gate(words: list[int], until: int, interlock: Any = lambda t: True) -> tuple[list[tuple[int, int]], list[int]]:
    """Emulate pulse_gate with `words` in its TX FIFO until SM cycle `until`:
    the gate's edges (cycle, level) and what it reported."""
    p = pio_rp2.pulse_gate
    edges: list[tuple[int, int]] = []
    level = 0
    reports: list[int] = []
    state = State(transmit_fifo=deque(words), pin_directions=1 << GATE_PIN)

    def pins(s: State) -> int:
        return (1 << INTERLOCK_PIN) if interlock(s.clock) else 0

    for before, after in emulate(p.words, stop_when=lambda _, s: s.clock >= until, initial_state=state,
                                 input_source=pins, jmp_pin=INTERLOCK_PIN,
                                 **_emulator_settings(p, side_set_base=GATE_PIN)):
        g = (after.pin_values >> GATE_PIN) & 1
        if g != level:
            edges.append((before.clock, g))  # side-set drives the pin from the instruction's first cycle
            level = g
        while after.receive_fifo:
            reports.append(after.receive_fifo.popleft())
    return edges, reports


def _pulses(edges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(rise, fall) pairs."""
    rises = [t for t, v in edges if v == 1]
    falls = [t for t, v in edges if v == 0]
    return list(zip(rises, falls, strict=False))


def techniques() -> list[tuple[float, int]]:
    """(pulse rate, width us) over the whole range: each rate at the
    shortest, longest (at most half the period) and a few widths between,
    and at 30 pps 32 consecutive widths, so every fine count of both phases
    comes up."""
    out = []
    for pps in controller.PULSE_RATES:
        longest = int(min(controller.WIDTH_MAX_MS, 500.0 / pps) * 1000)
        for w in sorted({2000, 2700, 5000, 10_000, 13_300, longest}):
            if w <= longest:
                out.append((pps, w))
    out += [(30.0, 3000 + k) for k in range(32)]
    return out


@pytest.mark.parametrize(("pps", "width_us"), techniques())
def test_the_gate_is_exact_to_the_cycle_across_the_technique_range(pps: float, width_us: int):
    period_us = int(1_000_000 / pps)
    words = list(timing.gate_words(width_us, period_us))
    # Two pulses asked for at once: the second rises one period after the
    # first, not sooner, however early the CPU asked.
    edges, reports = run_gate(words + words, until=2 * period_us + width_us + 100)
    pulses = _pulses(edges)
    assert len(pulses) == 2, edges
    for rise, fall in pulses:
        assert fall - rise == width_us, f"{pps} pps {width_us} us: high {fall - rise} cycles"
    assert pulses[1][0] - pulses[0][0] == period_us
    assert reports == [timing.GATE_FIRED, timing.GATE_FIRED]


@pytest.mark.parametrize("sys_hz", [timing.SYS_HZ_PICO, timing.SYS_HZ_PICO2])
def test_the_gate_clock_divides_exactly_at_125_and_150_mhz(sys_hz: int):
    div, frac = timing.clock_divider(sys_hz, timing.GATE_SM_HZ)
    assert frac == 0 and div * timing.GATE_SM_HZ == sys_hz
    # So a pulse exact in state-machine cycles is exact in system cycles:
    # 10 ms is 10,000 gate cycles, 1,250,000 or 1,500,000 system cycles.
    assert 10_000 * div == sys_hz // 100
    with pytest.raises(ValueError, match="exactly"):
        timing.clock_divider(sys_hz, 7_000_000)


def test_the_gate_stays_low_with_no_request_and_with_the_interlock_open():
    edges, reports = run_gate([], until=2000)
    assert edges == [] and reports == []
    words = list(timing.gate_words(2000, 66_666))
    edges, reports = run_gate(words + words, until=140_000, interlock=lambda t: False)
    assert edges == [], "the gate rose with the interlock open"
    assert reports == [0, 0]


@pytest.mark.parametrize("open_at", [6, 7, 40, 1000, 1003, 1017, 1021, 9_950, 9_990])
def test_the_interlock_opening_mid_pulse_ends_it_within_33_us(open_at: int):
    words = list(timing.gate_words(10_000, 66_666))
    edges, _ = run_gate(words, until=12_000, interlock=lambda t: t < open_at)
    (rise, fall), = _pulses(edges)
    assert rise < open_at and 0 <= fall - open_at <= timing.GATE_INTERLOCK_CYCLES, (rise, fall, open_at)


def test_gate_words_refuse_what_the_gate_cannot_do():
    with pytest.raises(ValueError, match="shorter"):
        timing.gate_words(20, 1000)
    with pytest.raises(ValueError, match="no time"):
        timing.gate_words(1000, 1010)


# -- the detector readout ---------------------------------------------------------------


class FrontEnd:
    """A line-scan ADC as the readout expects it: LINE_SYNC starts a line,
    each rising edge of PIX_CLK puts the line's next pixel on DATA0..11.
    Records when each pixel was presented and when PIX_CLK changed."""

    def __init__(self, lines: np.ndarray) -> None:
        self.lines = lines
        self.line = -1
        self.pixel = -1
        self.clk = 0
        self.sync = 0
        self.prev_clock = 0
        self.rises: list[int] = []
        self.falls: list[int] = []
        self.syncs: list[int] = []

    def __call__(self, s: State) -> int:
        # Called as each instruction starts; a side-set change seen now was
        # made at the start of the instruction before (its delay included).
        at = self.prev_clock
        self.prev_clock = s.clock
        clk = (s.pin_values >> PIX_CLK_PIN) & 1
        sync = (s.pin_values >> LINE_SYNC_PIN) & 1
        if sync and not self.sync:
            self.syncs.append(at)
            self.line += 1
            self.pixel = -1
        self.sync = sync
        if clk and not self.clk:
            self.rises.append(at)
            self.pixel += 1
        elif self.clk and not clk:
            self.falls.append(at)
        self.clk = clk
        row = self.lines[self.line] if 0 <= self.line < len(self.lines) else None
        if row is None or not 0 <= self.pixel < len(row):
            return 0
        return int(row[self.pixel])


def run_readout(lines: np.ndarray) -> tuple[bytes, FrontEnd, list[int]]:
    p = pio_rp2.line_readout
    n_lines, pixels = lines.shape
    fe = FrontEnd(lines)
    state = State(transmit_fifo=deque([timing.readout_line_word(pixels)] * n_lines),
                  pin_directions=(1 << LINE_SYNC_PIN) | (1 << PIX_CLK_PIN))
    out = bytearray()
    samples: list[int] = []
    words_due = n_lines * timing.readout_words_per_line(pixels)
    sample_op = p.words[p.labels["pair"]]  # mov osr, pins (both samples of a pair)

    def done(op: int, s: State) -> bool:
        return len(out) >= 4 * words_due or s.clock > 10 * n_lines * timing.readout_line_cycles(pixels)

    for before, after in emulate(p.words, stop_when=done, initial_state=state, input_source=fe,
                                 **_emulator_settings(p, side_set_base=LINE_SYNC_PIN)):
        if p.words[before.program_counter] == sample_op:
            samples.append(before.clock)
        while after.receive_fifo:  # DMA takes each word as it comes
            out += after.receive_fifo.popleft().to_bytes(4, "little")
    return bytes(out), fe, samples


@pytest.mark.parametrize("pixels", [8, 64, 256])
def test_the_readout_packs_each_line_as_the_wire_s_mono12p(pixels: int):
    rng = np.random.default_rng(pixels)
    lines = rng.integers(0, 4096, size=(3, pixels), dtype=np.uint16)
    lines[0, :4] = [0, 4095, 0xABC, 0x123]  # every bit, both nibble orders
    data, fe, _ = run_readout(lines)
    expected = b"".join(pack_pixels(row, 2) for row in lines)  # 2: Mono12p
    assert data == expected
    assert len(fe.syncs) == 3


def test_the_readout_clock_and_sampling_phase_are_as_documented():
    pixels = 16
    lines = np.arange(2 * pixels, dtype=np.uint16).reshape(2, pixels) * 97 % 4096
    _, fe, samples = run_readout(lines)
    # PIX_CLK: a rising edge every 5 cycles within a line, high for 2.
    per_line = [r for r in fe.rises if fe.syncs[0] < r < fe.syncs[1]]
    assert np.all(np.diff(per_line) == timing.READOUT_CYCLES_PER_PIXEL)
    highs = [f - r for r, f in zip(fe.rises, fe.falls, strict=False)]
    assert set(highs) == {timing.READOUT_CLOCK_HIGH}
    # Each pixel is sampled READOUT_SAMPLE_AFTER cycles after the edge that presented it.
    first = [s for s in samples if fe.syncs[0] < s < fe.syncs[1]]
    assert [s - r for r, s in zip(per_line, first, strict=False)] == [timing.READOUT_SAMPLE_AFTER] * pixels
    # A line: LINE_SYNC to LINE_SYNC.
    assert fe.syncs[1] - fe.syncs[0] == timing.readout_line_cycles(pixels)


def test_readout_geometry_rules():
    assert timing.readout_words_per_line(256) == 96
    with pytest.raises(ValueError, match="multiple of 8"):
        timing.readout_words_per_line(100)
    # 256 x 256 at 125 MHz: 2.63 ms of readout, so it fits a pulse from 2.7 ms up.
    assert timing.readout_frame_us(256, 256, timing.SYS_HZ_PICO) == 2634
    assert timing.readout_frame_us(256, 256, timing.SYS_HZ_PICO2) == 2195
