"""MicroPython's `rp2.asm_pio` PIO DSL, for CPython: assembles the board's
own PIO programs (firmware/pulsefw/boards/rp2/pio.py) into the 16-bit words the
RP2040/RP2350 runs, so the PIO emulator can run them off the board.

Encoded from the RP2040 datasheet (section 3.4); the DSL's names and values
are those of MicroPython's `rp2` module (its constants are also in the
micropython-rp2 stubs' `rp2/asm_pio_rp2040.pyi`). Only what the firmware's
programs use is here; anything else raises, so a program cannot silently
assemble differently from the board.

    rp2 = install()                   # a stand-in `rp2` module in sys.modules
    from pulsefw.boards.rp2 import pio as pio_rp2       # its @asm_pio functions become Program objects
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class PIO:
    IN_LOW, IN_HIGH, OUT_LOW, OUT_HIGH = 0, 1, 2, 3
    SHIFT_LEFT, SHIFT_RIGHT = 0, 1
    JOIN_NONE, JOIN_TX, JOIN_RX = 0, 1, 2


class PIOASMError(Exception):
    pass


# The DSL's operand values (MicroPython rp2.py / the rp2 stubs).
OPERANDS: dict[str, Any] = {
    "gpio": 0, "pins": 0, "x": 1, "y": 2, "null": 3, "pindirs": 4, "pc": 5, "status": 5, "isr": 6, "osr": 7,
    "not_x": 1, "x_dec": 2, "not_y": 3, "y_dec": 4, "x_not_y": 5, "pin": 6, "not_osre": 7,
    "noblock": 0x01, "block": 0x21, "iffull": 0x40, "ifempty": 0x40, "clear": 0x40,
}


@dataclass
class Instr:
    word: int  # without side-set and delay
    label: str | None = None  # a jmp target, resolved after the pass
    side_value: int | None = None
    delay_value: int = 0
    text: str = ""

    def side(self, value: int) -> Instr:
        self.side_value = value
        return self

    def delay(self, value: int) -> Instr:
        self.delay_value = value
        return self

    def __getitem__(self, value: int) -> Instr:
        return self.delay(value)


@dataclass
class Program:
    """An assembled program and the state-machine settings its decorator
    asked for: what rp2.StateMachine gets on the board."""

    name: str
    words: list[int]
    labels: dict[str, int]
    wrap_target: int
    wrap: int  # the last instruction before wrapping
    sideset_count: int
    settings: dict[str, Any] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)


class _Emitter:
    def __init__(self, sideset_count: int) -> None:
        self.sideset_count = sideset_count
        self.instrs: list[Instr] = []
        self.labels: dict[str, int] = {}
        self.wrap_target_at = 0
        self.wrap_at: int | None = None

    def _add(self, word: int, text: str, label: str | None = None) -> Instr:
        ins = Instr(word, label, text=text)
        self.instrs.append(ins)
        return ins

    # directives
    def label(self, name: str) -> None:
        if name in self.labels:
            raise PIOASMError(f"duplicate label {name!r}")
        self.labels[name] = len(self.instrs)

    def wrap_target(self) -> None:
        self.wrap_target_at = len(self.instrs)

    def wrap(self) -> None:
        self.wrap_at = len(self.instrs) - 1

    # instructions
    def nop(self) -> Instr:
        return self._add(0xA042, "nop")  # mov y, y

    def jmp(self, cond: Any, label: str | None = None) -> Instr:
        if label is None:
            cond, label = 0, cond
        if not 0 <= cond <= 7:
            raise PIOASMError(f"bad jmp condition {cond}")
        return self._add(0x0000 | cond << 5, f"jmp {cond} {label}", label)

    def wait(self, polarity: int, src: int, index: int) -> Instr:
        if polarity not in (0, 1) or src not in (0, 6) or not 0 <= index <= 31:
            raise PIOASMError("wait: only gpio and pin sources are used")
        source = 1 if src == 6 else 0  # "pin" is jmp's 6 in the DSL, wait's 1 in the word
        return self._add(0x2000 | polarity << 7 | source << 5 | index, f"wait {polarity} {src} {index}")

    def in_(self, src: int, count: int) -> Instr:
        if src not in (0, 1, 2, 3, 6, 7) or not 1 <= count <= 32:
            raise PIOASMError(f"bad in_ {src} {count}")
        return self._add(0x4000 | src << 5 | (count & 31), f"in {src} {count}")

    def out(self, dest: int, count: int) -> Instr:
        if dest not in (0, 1, 2, 3, 4, 5, 6) or not 1 <= count <= 32:
            raise PIOASMError(f"bad out {dest} {count}")
        return self._add(0x6000 | dest << 5 | (count & 31), f"out {dest} {count}")

    def push(self, value: int = 0, value2: int = 0) -> Instr:
        value |= value2
        if not value & 1:
            value |= 0x20  # block unless noblock
        return self._add(0x8000 | (value & 0x60), f"push {value:#x}")

    def pull(self, value: int = 0, value2: int = 0) -> Instr:
        value |= value2
        if not value & 1:
            value |= 0x20
        return self._add(0x8080 | (value & 0x60), f"pull {value:#x}")

    def mov(self, dest: int, src: int) -> Instr:
        if dest not in (0, 1, 2, 5, 6, 7) or (src & 7) not in (0, 1, 2, 3, 5, 6, 7):
            raise PIOASMError(f"bad mov {dest} {src}")
        op = (src >> 3) & 3  # invert: 1, reverse: 2
        return self._add(0xA000 | dest << 5 | op << 3 | (src & 7), f"mov {dest} {src}")

    def set(self, dest: int, data: int) -> Instr:
        if dest not in (0, 1, 2, 4) or not 0 <= data <= 31:
            raise PIOASMError(f"bad set {dest} {data}")
        return self._add(0xE000 | dest << 5 | data, f"set {dest} {data}")

    def finish(self, name: str, settings: dict[str, Any]) -> Program:
        delay_bits = 5 - self.sideset_count
        words = []
        for i, ins in enumerate(self.instrs):
            w = ins.word
            if ins.label is not None:
                if ins.label not in self.labels:
                    raise PIOASMError(f"unknown label {ins.label!r}")
                target = self.labels[ins.label]
                if target >= len(self.instrs):
                    raise PIOASMError(f"label {ins.label!r} is past the last instruction")
                w |= target
            if ins.delay_value >= 1 << delay_bits:
                raise PIOASMError(f"instruction {i}: delay {ins.delay_value} over {(1 << delay_bits) - 1}")
            side = 0
            if self.sideset_count:
                if ins.side_value is None:
                    raise PIOASMError(f"instruction {i}: side-set is not optional here")
                if ins.side_value >= 1 << self.sideset_count:
                    raise PIOASMError(f"instruction {i}: side value {ins.side_value} too wide")
                side = ins.side_value << delay_bits
            elif ins.side_value is not None:
                raise PIOASMError(f"instruction {i}: side-set without side-set pins")
            words.append(w | (side | ins.delay_value) << 8)
        wrap = self.wrap_at if self.wrap_at is not None else len(words) - 1
        if len(words) > 32:
            raise PIOASMError(f"{name}: {len(words)} instructions, a PIO holds 32")
        return Program(name, words, dict(self.labels), self.wrap_target_at, wrap, self.sideset_count, settings,
                       [ins.text for ins in self.instrs])


def asm_pio(**settings: Any) -> Callable[[Callable[[], None]], Program]:
    """The decorator: runs the program's body with the DSL in its globals
    (as MicroPython's does) and returns the assembled Program."""
    known = {"out_init", "set_init", "sideset_init", "in_shiftdir", "out_shiftdir", "autopush", "autopull",
             "push_thresh", "pull_thresh", "fifo_join"}
    unknown = set(settings) - known
    if unknown:
        raise PIOASMError(f"asm_pio: unknown settings {sorted(unknown)}")

    def assemble(fn: Callable[[], None]) -> Program:
        side = settings.get("sideset_init")
        count = len(side) if isinstance(side, tuple) else (1 if side is not None else 0)
        em = _Emitter(count)
        names: dict[str, Any] = dict(OPERANDS)
        names.update({n: getattr(em, n) for n in ("label", "wrap_target", "wrap", "nop", "jmp", "wait", "in_",
                                                   "out", "push", "pull", "mov", "set")})
        names["invert"] = lambda v: v | 8
        names["reverse"] = lambda v: v | 16
        gl = fn.__globals__
        saved = {k: gl[k] for k in names if k in gl}
        gl.update(names)
        try:
            fn()
        finally:
            for k in names:
                gl.pop(k, None)
            gl.update(saved)
        return em.finish(fn.__name__, settings)

    return assemble


def install() -> types.ModuleType:
    """A stand-in `rp2` module (asm_pio, PIO) in sys.modules."""
    mod = types.ModuleType("rp2")
    mod.asm_pio = asm_pio  # type: ignore[attr-defined]
    mod.PIO = PIO  # type: ignore[attr-defined]
    mod.PIOASMError = PIOASMError  # type: ignore[attr-defined]
    sys.modules["rp2"] = mod
    return mod
