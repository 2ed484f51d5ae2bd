"""The rp2 HAL's own logic (firmware/pulsefw/boards/rp2/hal.py) against a scripted
chip: `machine` and `rp2` stand-ins that record what the HAL asks of them,
with the gate's state machine running the real pulse_gate program on the
PIO emulator. What it shows: the words the HAL gives the gate make the
technique's pulse and period, the interlock's refusal comes back as False,
inputs are debounced fail-safe, landed lines follow the DMA's count, and the
USB link, watchdog and reset cause map as documented. (The chip's own
behaviour is not modelled beyond that; the HAL's calls are type-checked
against the Pico stubs in make lint.)"""

import importlib
import sys
import types
from collections import deque
from typing import Any

import pio_dsl  # tests/: the asm_pio DSL for CPython
import pytest
from pioemu import State, emulate

from pulseline.mpcompat import import_firmware

GATE_PIN, INTERLOCK_PIN = 15, 14


class Pin:
    IN, OUT, PULL_UP, PULL_DOWN = 0, 1, 1, 2
    levels: dict[int, int] = {}
    modes: dict[int, int] = {}  # pins re-initialised (taken back from the PIO)

    def __init__(self, n: int, mode: int = 0, pull: int | None = None, value: int | None = None) -> None:
        self.n = n
        if value is not None:
            Pin.levels[n] = value
        elif pull is not None and n not in Pin.levels:
            Pin.levels[n] = 1 if pull == Pin.PULL_UP else 0  # nothing wired: the pull decides

    def value(self) -> int:
        return Pin.levels.get(self.n, 0)

    def init(self, mode: int = -1, pull: int | None = None, value: int | None = None) -> None:
        # (MicroPython: re-init takes the pin back from a peripheral such as PIO)
        Pin.modes[self.n] = mode
        if value is not None:
            Pin.levels[self.n] = value


class PWM:
    def __init__(self, pin: Pin, freq: int = 0, duty_u16: int = 0) -> None:
        self.pin, self.duty = pin.n, duty_u16

    def duty_u16(self, v: int) -> None:
        self.duty = v


class ADC:
    readings: dict[int, int] = {}

    def __init__(self, n: int) -> None:
        self.n = n

    def read_u16(self) -> int:
        return ADC.readings.get(self.n, 0)


class WDT:
    def __init__(self, timeout: int) -> None:
        self.timeout, self.fed = timeout, 0

    def feed(self) -> None:
        self.fed += 1


class Mem32(dict):
    def __missing__(self, key: int) -> int:
        return 0


class GateSM:
    """The gate's state machine: the real pulse_gate program on the emulator,
    stepped when the HAL waits for its report."""

    def __init__(self, prog: Any, interlock: Any) -> None:
        self.prog = prog
        self.interlock = interlock
        self.state = State(transmit_fifo=deque(), pin_directions=1 << GATE_PIN)
        self.edges: list[tuple[int, int]] = []
        self.level = 0
        self.on = True

    def put(self, word: int) -> None:
        self.state.transmit_fifo.append(word)

    def run_until(self, stop: Any) -> None:
        p = self.prog

        def pins(s: State) -> int:
            return (1 << INTERLOCK_PIN) if self.interlock() else 0

        for before, after in emulate(p.words, stop_when=lambda _, s: stop(s), initial_state=self.state,
                                     input_source=pins, jmp_pin=INTERLOCK_PIN, side_set_count=1,
                                     side_set_base=GATE_PIN, wrap_target=p.wrap_target, wrap_top=p.wrap):
            g = (after.pin_values >> GATE_PIN) & 1
            if g != self.level:
                self.edges.append((before.clock, g))
                self.level = g
            self.state = after

    def get(self) -> int:
        self.run_until(lambda s: bool(s.receive_fifo))
        return self.state.receive_fifo.popleft()

    def active(self, v: int) -> None:
        self.on = bool(v)


class ReadoutSM:
    def __init__(self) -> None:
        self.fifo: deque[int] = deque()

    def active(self, v: int) -> None:
        pass

    def rx_fifo(self) -> int:
        return len(self.fifo)

    def get(self) -> int:
        return self.fifo.popleft()


class DMA:
    made: list["DMA"] = []

    def __init__(self) -> None:
        self.count = 0
        self.configs: list[dict[str, Any]] = []
        self.on = False
        DMA.made.append(self)

    def pack_ctrl(self, **kw: Any) -> dict[str, Any]:
        return kw

    def config(self, **kw: Any) -> None:
        self.configs.append(kw)
        self.count = kw["count"]
        self.on = kw.get("trigger", False)

    def active(self, v: int | None = None) -> bool:
        if v is not None:
            self.on = bool(v)
        return self.on


class Stdin:
    def __init__(self) -> None:
        self.data = bytearray()

    def readinto(self, buf: bytearray) -> int:
        if not self.data:
            return 0
        buf[0] = self.data.pop(0)
        return 1


class Poller:
    def __init__(self, stdin: Stdin) -> None:
        self.stdin = stdin

    def register(self, *a: Any) -> None:
        pass

    def ipoll(self, timeout: int) -> list[int]:
        return [1] if self.stdin.data else []


@pytest.fixture
def hal(monkeypatch: pytest.MonkeyPatch) -> Any:
    pio_dsl.install()
    pio_rp2 = import_firmware("pulsefw.boards.rp2.pio")
    Pin.levels = {}
    Pin.modes = {}
    ADC.readings = {}
    DMA.made = []
    clock = {"us": 0}
    interlock = {"ok": True}
    sms: dict[int, Any] = {}

    def state_machine(n: int, prog: Any, **kw: Any) -> Any:
        sms[n] = GateSM(pio_rp2.pulse_gate, lambda: interlock["ok"]) if n == 0 else ReadoutSM()
        sms[n].kw = kw
        return sms[n]

    machine = types.SimpleNamespace(Pin=Pin, PWM=PWM, ADC=ADC, WDT=WDT, mem32=Mem32(), freq=lambda hz=None: None,
                                    unique_id=lambda: bytes.fromhex("e66138935f2e5d2a"), reset=lambda: None,
                                    reset_cause=lambda: 3, WDT_RESET=3, PWRON_RESET=1)
    rp2 = sys.modules["rp2"]
    monkeypatch.setattr(rp2, "StateMachine", state_machine, raising=False)
    monkeypatch.setattr(rp2, "DMA", DMA, raising=False)
    monkeypatch.setitem(sys.modules, "machine", machine)
    stdin = Stdin()
    out = bytearray()
    fake_sys = types.SimpleNamespace(implementation=types.SimpleNamespace(_machine="Raspberry Pi Pico with RP2040"),
                                     stdin=types.SimpleNamespace(buffer=stdin),
                                     stdout=types.SimpleNamespace(buffer=types.SimpleNamespace(write=out.extend)))
    fake_time = types.SimpleNamespace(ticks_us=lambda: clock["us"] % (1 << 30),
                                      ticks_diff=lambda a, b: ((a - b + (1 << 29)) % (1 << 30)) - (1 << 29),
                                      sleep_us=lambda us: clock.__setitem__("us", clock["us"] + us))
    fake_select = types.SimpleNamespace(poll=lambda: Poller(stdin), POLLIN=1)
    fake_gc = types.SimpleNamespace(collect=lambda: None, mem_free=lambda: 130_000)
    monkeypatch.setitem(sys.modules, "select", fake_select)
    monkeypatch.setitem(sys.modules, "gc", fake_gc)
    mod = importlib.reload(import_firmware("pulsefw.boards.rp2.hal")) if "pulsefw.boards.rp2.hal" in sys.modules \
        else import_firmware("pulsefw.boards.rp2.hal")
    monkeypatch.setattr(mod, "sys", fake_sys)
    monkeypatch.setattr(mod, "time", fake_time)
    h = mod.Rp2Hal()
    h.test = types.SimpleNamespace(clock=clock, interlock=interlock, sms=sms, stdin=stdin, out=out, machine=machine)
    return h


def test_the_gate_words_make_the_technique_s_pulse_and_hold_its_period(hal: Any):
    timing = import_firmware("pulsefw.boards.rp2.timing")
    assert hal.generator_fire(10_000, 66_666) is True
    assert hal.generator_fire(10_000, 66_666) is True  # asked at once: the gate holds it to the period
    gate = hal.test.sms[0]
    gate.run_until(lambda s: s.clock > 2 * 66_666 + 100)
    rises = [t for t, v in gate.edges if v == 1]
    falls = [t for t, v in gate.edges if v == 0]
    assert [f - r for r, f in zip(rises, falls, strict=True)] == [10_000, 10_000]
    assert rises[1] - rises[0] == 66_666
    assert gate.kw["freq"] == timing.GATE_SM_HZ and hal.sys_hz == timing.SYS_HZ_PICO


def test_emission_off_stops_the_gate_and_holds_its_pin_low(hal: Any):
    hal.emission_off()
    assert hal.test.sms[0].on is False
    assert Pin.modes[GATE_PIN] == Pin.OUT and Pin.levels[GATE_PIN] == 0


def test_an_open_interlock_refuses_the_pulse(hal: Any):
    hal.test.interlock["ok"] = False
    assert hal.generator_fire(5_000, 133_333) is False
    assert hal.test.sms[0].edges == []


def test_inputs_are_debounced_and_a_cut_wire_is_safe(hal: Any):
    io = import_firmware("pulsefw.boards.rp2.wiring")
    controller = import_firmware("pulsefw.controller")
    inputs = controller.Inputs()
    hal.read_inputs(inputs)  # nothing wired: every pull gives the safe value
    assert not (inputs.switch or inputs.door_closed or inputs.key_on or inputs.generator_ready or inputs.hlc_switch)
    Pin.levels.update({io.PIN_SWITCH: 0, io.PIN_DOOR_CLOSED: 1, io.PIN_KEY_ON: 1, io.PIN_GENERATOR_READY: 1})
    hal.read_inputs(inputs)
    assert not inputs.switch  # not held long enough yet
    hal.test.clock["us"] += io.DEBOUNCE_US
    hal.read_inputs(inputs)
    assert inputs.switch and inputs.door_closed and inputs.key_on and inputs.generator_ready
    Pin.levels[io.PIN_DOOR_CLOSED] = 0
    hal.read_inputs(inputs)
    assert not inputs.door_closed  # opening is taken at once


def test_setpoints_feedback_and_landed_lines(hal: Any):
    io = import_firmware("pulsefw.boards.rp2.wiring")
    timing = import_firmware("pulsefw.boards.rp2.timing")
    hal.generator_set(80.0, 20.0)
    assert abs(hal._kv_set.duty * io.KV_FULL_SCALE / 65535 - 80.0) < 0.01
    buf = bytearray(64 * 96)
    landed = bytearray(64)
    hal.detector_arm(buf, landed, 64, 64, 2)
    rx, tx = DMA.made
    cfg = rx.configs[-1]
    assert cfg["write"] is buf and cfg["count"] == 64 * timing.readout_words_per_line(64)
    assert hal.generator_fire(5_000, 66_666)
    assert tx.configs[-1]["count"] == 64  # one line word per line, started with the pulse
    # While the gate is high the monitors are averaged: 10 V on kV is 150 kV.
    Pin.levels[GATE_PIN] = 1
    ADC.readings = {io.PIN_KV_MON: int(3.0 / 3.3 * 65535 * 80 / 150), io.PIN_MA_MON: int(3.0 / 3.3 * 65535 * 0.2)}
    rx.count -= 5 * timing.readout_words_per_line(64) + 3  # 5 whole lines and part of the 6th
    assert hal.detector_poll() is False
    assert list(landed[:7]) == [1, 1, 1, 1, 1, 0, 0]
    out = [0.0, 0.0]
    hal.generator_feedback(out)
    assert abs(out[0] - 80.0) < 0.1 and abs(out[1] - 20.0) < 0.1
    rx.count = 0
    assert hal.detector_poll() is True and all(landed)


def test_link_watchdog_and_reset_cause(hal: Any):
    hal.test.stdin.data += b"\x01\x02\x03"[:2]
    buf = bytearray(8)
    assert hal.link_read(buf) == 2 and buf[:2] == b"\x01\x02"
    assert hal.link_read(buf) == 0
    # A Ctrl-C that reaches the link as data (the USB stack's interrupt was
    # off while a pulse was fired) still asks for the REPL.
    hal.test.stdin.data += b"\x05\x03\x06"
    with pytest.raises(KeyboardInterrupt):
        hal.link_read(buf)
    assert hal.link_read(buf) == 1 and buf[0] == 0x06
    hal.link_write(b"abc")
    assert bytes(hal.test.out) == b"abc"
    hal.watchdog_start(100)
    hal.watchdog_feed()
    hal.test.machine.mem32[0x40058000] = (1 << 30) | 0x123
    hal.watchdog_stop()
    assert hal.test.machine.mem32[0x40058000] == 0x123  # ENABLE cleared, the rest kept
    # machine.reset_cause() says WDT_RESET after machine.reset() too: the
    # watchdog's REASON tells an expiry (TIMER) from a reset asked for (FORCE).
    hal.test.machine.mem32[0x40058008] = 1
    assert hal.reset_cause() == "watchdog"
    hal.test.machine.mem32[0x40058008] = 2
    assert hal.reset_cause() == "soft"
    assert hal.identity() == ("PICO-E66138935F2E5D2A", "DET-E66138935F2E5D2A")
    assert hal.MAX_FRAME_BYTES == 130_000 - 48_000


def test_the_clock_is_the_port_s_ticks_and_the_hal_waits_across_their_wrap(hal: Any):
    # The HAL's ticks are the port's (wrapping at 2**30, as ticks.py); the
    # firmware compares them with ticks.diff.
    ticks = import_firmware("pulsefw.ticks")
    c = hal.test.clock
    c["us"] = (3 << 30) - 300
    t = hal.ticks_us()
    assert t == (1 << 30) - 300
    hal.wait_until(ticks.add(t, 700))  # a deadline past the wrap: sleeps the 700 us, no more
    assert c["us"] == (3 << 30) + 400 and hal.ticks_us() == 400
    hal.wait_until(ticks.add(hal.ticks_us(), -5))  # one already passed: no sleep
    assert c["us"] == (3 << 30) + 400
    assert hal.clock_us() == hal.ticks_us()  # board time counts from the ticks at boot
