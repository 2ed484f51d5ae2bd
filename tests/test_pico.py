"""The emulated Pico: the RP2040's boot ROM and the Pico's own MicroPython
v1.28.0 (../shared/pico) on the rp2040js emulator, as a board on the host.
Judged by unmodified mpremote over its pty: it boots from flash through
the boot ROM, MicroPython formats and keeps its littlefs on the emulated
serial flash, and files survive machine.reset(), a watchdog expiry, a
power cycle and a restart of the emulator; machine.reset_cause() and the
watchdog's REASON say which reset it was."""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pulseline.sim.pico.board import FLASH_IMAGE, PicoBoard
from pulseline.sim.pico.firmware import find_pico_files

pytestmark = pytest.mark.pico

PULSELINE = str(Path(sys.executable).parent / "pulseline")
MPREMOTE = str(Path(sys.executable).parent / "mpremote")
# mpremote's own timeouts are the wall's; a guard against a hang only.
MPREMOTE_HANG_S = 300
WATCHDOG_REASON = 0x40058008  # TIMER (1): it expired; FORCE (2): a reset asked for


def mpremote(port: str, *args: str, cwd: Path | None = None) -> str:
    res = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True,
                         timeout=MPREMOTE_HANG_S, cwd=cwd)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def pulseline(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PULSELINE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_what_the_emulated_pico_lacks_or_cannot_take_is_said_in_one_line(tmp_path: Path) -> None:
    res = pulseline("sim", "--board", "pico", "--detach", cwd=tmp_path, env={"PULSELINE_PICO_DIR": str(tmp_path)})
    assert res.returncode == 2 and res.stdout == "", res
    (line,) = res.stderr.splitlines()
    assert "the Pico's MicroPython firmware is not at" in line and "PULSELINE_PICO_DIR" in line, line
    res = pulseline("sim", "--board", "pico", "--link", "usb-hs", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.splitlines() == [
        "pulseline: error: the emulated Pico takes no --link (its link is its own USB port, and its pins are "
        "not the simulated plant's)"], res
    assert not (tmp_path / ".pulseline").exists() or not list((tmp_path / ".pulseline").glob("*.json"))


def _reason_and_cause(port: str) -> tuple[int, int]:
    out = mpremote(port, "exec", f"import machine; print(machine.mem32[{WATCHDOG_REASON:#x}], machine.reset_cause())")
    reason, cause = out.split()
    return int(reason), int(cause)


def _boots(board: PicoBoard, n: int) -> None:
    deadline = time.monotonic() + 60
    while len(board.boots) < n:
        assert time.monotonic() < deadline, board.boots
        time.sleep(0.05)


def test_the_pico_boots_its_own_micropython_and_keeps_its_files_through_every_reset(tmp_path: Path) -> None:
    find_pico_files()  # (a clear failure, not a skip, when ../shared/pico is missing)
    fs = tmp_path / "pico-fs"
    (tmp_path / "hello.txt").write_text("kept\n")
    with PicoBoard(fs, name="pico", state_dir=tmp_path / "state") as board:
        port = board.pty_path
        out = mpremote(port, "exec", "import sys, os; print(sys.implementation._build, sys.implementation.version,"
                       " os.uname().machine)")
        assert out.strip() == "RPI_PICO (1, 28, 0, '') Raspberry Pi Pico with RP2040", out
        # Cold from the uf2: MicroPython made its littlefs on the empty flash.
        assert board.boots == [(0, "power-on")]
        mpremote(port, "fs", "cp", str(tmp_path / "hello.txt"), ":hello.txt", cwd=tmp_path)
        assert _reason_and_cause(port) == (0, 1)  # power on: PWRON_RESET

        mpremote(port, "reset")  # machine.reset(): through the watchdog, FORCE
        _boots(board, 2)
        assert board.boots[1][1] == "force"
        assert _reason_and_cause(port) == (2, 3)
        assert mpremote(port, "fs", "cat", ":hello.txt") == "kept\n"

        # A program that stops feeding its watchdog: reset within its timeout.
        mpremote(port, "exec", "--no-follow", "import machine\nw = machine.WDT(timeout=200)\nwhile True:\n    pass\n")
        _boots(board, 3)
        assert board.boots[2][1] == "watchdog"
        assert _reason_and_cause(port) == (1, 3)

        board.power_cycle()
        assert board.boots[3][1] == "power-on"
        assert _reason_and_cause(port) == (0, 1)
        assert mpremote(port, "fs", "cat", ":hello.txt") == "kept\n"
    # The flash image outlives the emulator, as a Pico's flash its power.
    assert (fs / FLASH_IMAGE).stat().st_size == 2 * 1024 * 1024
    with PicoBoard(fs, name="pico", state_dir=tmp_path / "state") as board:
        assert mpremote(board.pty_path, "fs", "ls", ":").split() == ["ls", ":", "5", "hello.txt"]


def _json(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert res.returncode == 0, res.stdout + res.stderr
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.pico_full
def test_a_pico_flashed_with_mpremote_answers_as_an_rp2_board_and_keeps_its_journal(tmp_path: Path) -> None:
    # Acceptance 1 of the emulated Pico, from a fresh state directory.
    t0 = time.monotonic()
    started = pulseline("sim", "--board", "pico", "--detach", "--name", "pico", "--json", cwd=tmp_path)
    boot_s = time.monotonic() - t0
    board = _json(started)
    assert board["board"] == "pico" and boot_s < 10, (boot_s, started)
    link = str(tmp_path / ".pulseline" / "pico")
    try:
        # The bundle `pulseline flash` would copy, copied by mpremote itself.
        plan = _json(pulseline("flash", "--dry-run", "--board", "rp2", "--json", cwd=tmp_path))
        bundle = tmp_path / "build" / "flash" / "rp2"
        listed = sorted(f["path"] if isinstance(f, dict) else f for f in plan["bundle"])
        on_disk = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
        assert listed == on_disk, (listed, on_disk)
        mpremote(link, "fs", "cp", "boot.py", "main.py", ":", "+", "fs", "cp", "-r", "pulsefw", ":", "+",
                 "reset", cwd=bundle)
        info = _json(pulseline("info", "--port", "sim:pico", "--json", cwd=tmp_path))
        assert info["board"] == "rp2" and info["firmware_hash"] == plan["firmware_hash"], info
        assert info["state"] == "IDLE", info
        exam = _json(pulseline("exam", "--port", "sim:pico", "--new", "--json", cwd=tmp_path))
        mpremote(link, "reset")
        again = _json(pulseline("exam", "--port", "sim:pico", "--json", cwd=tmp_path))
        assert again["exam"] == exam["exam"] > 0, (exam, again)
    finally:
        pulseline("sim", "stop", "--name", "pico", cwd=tmp_path)
    # A power cycle (the emulator's own, in this process), then a restart of the emulator.
    with PicoBoard(Path(board["fs"]), name="pico", state_dir=tmp_path / ".pulseline") as pico:
        pico.power_cycle()
        res = subprocess.run([PULSELINE, "exam", "--port", pico.pty_path, "--json"], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert _json(res)["exam"] == exam["exam"], res


JOURNAL_WRITER = """
import journal
j = journal.Journal(journal.FileStore(""))
n = j.next_seq
while True:
    j.append({"kind": "event", "n": n, "note": "x" * 40})
    print("C", n)
    n += 1
"""
JOURNAL_READER = """
import journal
data = journal.FileStore("").read("journal.bin")
records, good = journal.decode_records(data)
print([seq for seq, rec in records], good == len(data))
"""


def test_a_power_cut_mid_write_keeps_every_committed_record_on_the_picos_littlefs(tmp_path: Path) -> None:
    # The firmware's journal on MicroPython's littlefs on the emulated flash:
    # records appended in a loop, each said once append() has returned, and
    # the power cut at a seeded moment. Every record said committed is there
    # after the power comes back (the stage-8 rule, on the real filesystem
    # code), and the journal reads back whole.
    import random

    from mpremote.transport_serial import SerialTransport

    rnd = random.Random(19)
    journal_py = Path(__file__).resolve().parents[1] / "firmware" / "pulsefw" / "journal.py"
    with PicoBoard(tmp_path / "fs", name="cut", state_dir=tmp_path / "state") as board:
        mpremote(board.pty_path, "fs", "cp", str(journal_py), ":journal.py")
        said: list[int] = []
        for cut in range(3):
            t = SerialTransport(board.pty_path, baudrate=115200)
            try:
                t.enter_raw_repl(soft_reset=False)
                t.exec_raw_no_follow(JOURNAL_WRITER)
                out = b""
                first = len(said)
                deadline = time.monotonic() + 120
                # A few records in, then at a moment of the seed's choosing.
                while out.count(b"C ") < 3:
                    assert time.monotonic() < deadline, out
                    out += t.serial.read(t.serial.in_waiting or 1)
                time.sleep(rnd.uniform(0.0, 0.5))
                board.power_cycle()
                out += t.serial.read(t.serial.in_waiting)
            finally:
                t.close()
            # (A line cut short by the power is not said.)
            said += [int(line.split()[1]) for line in out.decode(errors="replace").split("\r\n")[:-1]
                     if line.startswith("C ") and len(line.split()) == 2 and line.split()[1].isdigit()]
            assert len(said) > first + 2, (cut, out)
            seqs_text, whole = mpremote(board.pty_path, "exec", JOURNAL_READER).strip().rsplit(" ", 1)
            seqs = json.loads(seqs_text)
            assert whole == "True" and seqs == list(range(len(seqs))), (cut, seqs_text)
            assert set(said) <= set(seqs) and len(seqs) <= said[-1] + 2, (cut, said[-3:], seqs[-3:])


EDGE_WATCHER = """
from machine import Pin, ADC
import time
p = Pin(28, Pin.IN)
print("R", time.ticks_us())
while not p.value():
    pass
print("S", time.ticks_us(), ADC(3).read_u16() >> 4)
"""


def test_the_picos_pins_are_driven_and_read_in_board_cycles(tmp_path: Path) -> None:
    # The harness the plant is wired through: an output's edges reported at
    # their cycle (PWM at 1 kHz, 25 %: 250.000 us high, 750.000 us low), an
    # input driven at a board time of the host's choosing and seen by the
    # program at that time, an ADC channel read as set.
    from mpremote.transport_serial import SerialTransport

    with PicoBoard(tmp_path / "fs", name="pins", state_dir=tmp_path / "state") as board:
        board.watch(21)
        mpremote(board.pty_path, "exec", "from machine import Pin, PWM\nimport time\n"
                 "p = PWM(Pin(21), freq=1000, duty_u16=16384)\ntime.sleep_ms(10)\np.deinit()\n")
        deadline = time.monotonic() + 10
        while len(board.edges) < 16:
            assert time.monotonic() < deadline, board.edges
            time.sleep(0.05)
        rises = [ns for ns, pin, level in board.edges if pin == 21 and level == 1]
        falls = [ns for ns, pin, level in board.edges if pin == 21 and level == 0]
        highs = [f - r for r, f in zip(rises, [f for f in falls if f > rises[0]], strict=False)][:8]
        periods = [b - a for a, b in itertools.pairwise(rises)][:8]
        assert all(abs(h - 250_000) <= 8 for h in highs) and len(highs) >= 6, highs
        assert all(abs(p - 1_000_000) <= 8 for p in periods) and len(periods) >= 6, periods

        t = SerialTransport(board.pty_path, baudrate=115200)
        try:
            t.enter_raw_repl(soft_reset=False)
            t.exec_raw_no_follow(EDGE_WATCHER)
            out = t.read_until(1, b"\r\n", timeout=60)
            ready_us = int(out.split(b"R ")[1].split()[0])
            at_us = ready_us + 200_000  # (no reset since power-on: ticks_us is board time)
            board.set_adc({3: 1234})  # (GP28 and ADC3: free on a Pico, not in the pin map)
            board.set_pins({28: True}, at_us=at_us)
            seen = t.read_until(1, b"\x04", timeout=60)
        finally:
            t.close()
        seen_us, adc = seen.split(b"S ")[1].split()[:2]
        assert 0 <= int(seen_us) - at_us <= 20, (seen_us, at_us)  # a loop turn of the program
        assert int(adc) == 1234


READ_INPUTS = ("from machine import Pin\n"
               "print([Pin(n, Pin.IN).value() for n in (14, 16, 17, 18, 19, 20)])")


def test_the_plants_inputs_reach_the_picos_pins_as_the_pin_map_wires_them(tmp_path: Path) -> None:
    from pulseline.mpcompat import import_firmware

    wiring = import_firmware("pulsefw.boards.rp2.wiring")

    def pins(board: PicoBoard) -> dict[int, int]:
        levels = json.loads(mpremote(board.pty_path, "exec", READ_INPUTS))
        return dict(zip((14, 16, 17, 18, 19, 20), levels, strict=True))

    with PicoBoard(tmp_path / "fs", name="wired", state_dir=tmp_path / "state") as board:
        # At rest: switch and HLC released (pulled up), door closed, key on,
        # generator ready; the interlock chain open (the switch's contact).
        assert pins(board) == {14: 0, 16: 1, 17: 1, 18: 1, 19: 1, 20: 1}
        # Through its control channel, as `pulseline sim press` does (answered
        # on the board's own I/O thread, which holds the chip meanwhile).
        from pulseline.sim.control_channel import SimControl

        ctl = SimControl("wired", tmp_path / "state")
        try:
            t = ctl.press()
        finally:
            ctl.close()
        assert t > 0 and board.plant.inputs_at(t).switch
        held = pins(board)
        assert held == {14: 1, 16: 0, 17: 1, 18: 1, 19: 1, 20: 1}
        # The firmware's own reading of those levels: switch, door, key and
        # generator ready permissive; the HLC switch released.
        assert wiring.raw_bits(held[16], held[17], held[18], held[19], held[20]) == wiring.IN_ALL - wiring.IN_HLC
        board.set_input("door_closed", False)
        assert pins(board) == {14: 0, 16: 0, 17: 0, 18: 1, 19: 1, 20: 1}
        board.set_input("generator_fault", True)  # (not ready, as the plant has it)
        board.set_input("door_closed", True)
        assert pins(board) == {14: 0, 16: 0, 17: 1, 18: 1, 19: 0, 20: 1}
        # What a Pico cannot have is refused with its reason.
        with pytest.raises(ValueError, match="clocks its front end itself"):
            board.set_input("readout_timeout", True)


SAMPLE_SWITCH_AND_DOOR = """
from machine import Pin
import time
switch, door = Pin(16, Pin.IN), Pin(17, Pin.IN)
print("go")
seen, last, t0 = [], None, time.ticks_us()
while time.ticks_diff(time.ticks_us(), t0) < 20_000_000 and len(seen) < 4:
    v = (switch.value(), door.value())
    if v != last:
        seen.append((time.ticks_us(), v))
        last = v
    time.sleep_us(100)
print(seen)
"""


def test_a_change_scripted_ahead_reaches_the_pins_at_its_time_and_keeps_the_ones_before(tmp_path: Path) -> None:
    # plant.at(...) on the emulated Pico: a release scripted 1 s ahead, set
    # the moment after a press (whose pins the chip had not reached yet),
    # and a door scripted to open before that release, set after it. The
    # board samples its pins on its own clock: each change lands at its time.
    with PicoBoard(tmp_path / "fs", name="ahead", state_dir=tmp_path / "state") as board:
        run = subprocess.Popen([MPREMOTE, "connect", board.pty_path, "exec", SAMPLE_SWITCH_AND_DOOR],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert run.stdout is not None
            assert run.stdout.readline().strip() == "go"
            t_press = board.press()
            board.set_input("switch", False, at_us=t_press + 1_000_000)
            board.set_input("door_closed", False, at_us=t_press + 500_000)
            out, _ = run.communicate(timeout=MPREMOTE_HANG_S)
        finally:
            run.kill()
    seen = ast.literal_eval(out.strip().splitlines()[-1])  # [(ticks_us, (GP16, GP17)), ...] (GP16 low: pressed)
    assert [levels for _, levels in seen] == [(1, 1), (0, 1), (0, 0), (1, 0)], out
    pressed, opened, released = (t for t, _ in seen[1:])
    assert abs(opened - pressed - 500_000) <= 1000 and abs(released - pressed - 1_000_000) <= 1000, seen


GATE_PULSES = """
from machine import Pin, PWM
import time
kv = PWM(Pin(21), freq=50_000, duty_u16=%d)
ma = PWM(Pin(22), freq=50_000, duty_u16=%d)
time.sleep_ms(50)
gate = Pin(15, Pin.OUT, value=0)
for i in range(3):
    gate.on()
    time.sleep_us(4000)  # (not sleep_ms: it counts whole ms ticks, and a wake-up near one ends it up to 1 ms early)
    gate.off()
    time.sleep_ms(20)
"""


def test_the_picos_gate_and_setpoints_reach_the_plants_generator(tmp_path: Path) -> None:
    # GATE (GP15) is the generator's exposure request and the kV and mA
    # setpoints are the duty of their PWM (GP21, GP22), as the pin map wires
    # them: pulses a program gates are the plant's, their width the pin's,
    # their technique the setpoints'; with the switch released the plant's
    # interlock chain refuses them, as the hardware's breaks GATE's line.
    from pulseline.mpcompat import import_firmware

    wiring = import_firmware("pulsefw.boards.rp2.wiring")
    program = GATE_PULSES % (wiring.setpoint_duty(80.0, wiring.KV_FULL_SCALE),
                             wiring.setpoint_duty(20.0, wiring.MA_FULL_SCALE))
    with PicoBoard(tmp_path / "fs", name="gate", state_dir=tmp_path / "state") as board:
        mpremote(board.pty_path, "exec", program)  # the switch released
        time.sleep(0.3)
        assert board.plant.pulses == [] and len(board.plant.refused) == 3, board.plant.refused
        assert all("switch_released" in why for _, why in board.plant.refused)
        board.press()
        mpremote(board.pty_path, "exec", program)
        deadline = time.monotonic() + 10
        while len(board.plant.pulses) < 3:
            assert time.monotonic() < deadline, board.plant.pulses
            time.sleep(0.05)
        gate = [(ns, level) for ns, pin, level in board.edges if pin == wiring.PIN_GATE]
        widths = [(b - a) / 1000 for (a, la), (b, lb) in itertools.pairwise(gate) if la == 1 and lb == 0][-3:]
        for pulse, width in zip(board.plant.pulses, widths, strict=True):
            assert pulse.width_us == round(width) and 4000 <= width < 4100, (pulse.width_us, width)
            # (to one step of the PWM: 125 MHz / 50 kHz, 2500 steps of full scale)
            assert abs(pulse.kv_set - 80.0) <= 150 / 2500 and abs(pulse.ma_set - 20.0) <= 100 / 2500, pulse
        assert board.plant.meter_kerma_ugy > 0


MONITOR_SAMPLER = """
from machine import Pin, PWM, ADC
import time
kv = PWM(Pin(21), freq=50_000, duty_u16=%d)
ma = PWM(Pin(22), freq=50_000, duty_u16=%d)
time.sleep_ms(50)
gate = Pin(15, Pin.OUT, value=0)
kv_mon, ma_mon = ADC(26), ADC(27)
idle = (kv_mon.read_u16(), ma_mon.read_u16())
kvs, mas = [], []
gate.on()
t0 = time.ticks_us()
while time.ticks_diff(time.ticks_us(), t0) < 4000:
    kvs.append(kv_mon.read_u16())
    mas.append(ma_mon.read_u16())
gate.off()
print(idle, sum(kvs) / len(kvs), sum(mas) / len(mas), len(kvs))
"""


def test_the_generators_monitors_reach_the_picos_adc_while_gate_is_high(tmp_path: Path) -> None:
    # The kV and mA monitors (GP26, GP27) carry the plant generator's
    # waveform while GATE requests a pulse, through the 10:3 dividers: the
    # mean a program samples is the pulse's true mean (the firmware's dose
    # is computed from it), to the ADC's resolution and the tube's rise.
    from pulseline.mpcompat import import_firmware

    wiring = import_firmware("pulsefw.boards.rp2.wiring")
    program = MONITOR_SAMPLER % (wiring.setpoint_duty(80.0, wiring.KV_FULL_SCALE),
                                 wiring.setpoint_duty(20.0, wiring.MA_FULL_SCALE))
    with PicoBoard(tmp_path / "fs", name="mon", state_dir=tmp_path / "state") as board:
        board.press()
        out = mpremote(board.pty_path, "exec", program)
        deadline = time.monotonic() + 10
        while not board.plant.pulses:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    idle_kv, idle_ma, kv_u16, ma_u16, samples = out.replace("(", "").replace(")", "").replace(",", " ").split()
    assert (int(idle_kv), int(idle_ma)) == (0, 0) and int(samples) > 20, out
    (pulse,) = board.plant.pulses
    kv = wiring.monitor_value(float(kv_u16), wiring.KV_FULL_SCALE)
    ma = wiring.monitor_value(float(ma_u16), wiring.MA_FULL_SCALE)
    assert abs(kv - pulse.kv_mean) / pulse.kv_mean < 0.01, (kv, pulse.kv_mean)
    assert abs(ma - pulse.ma_mean) / pulse.ma_mean < 0.01, (ma, pulse.ma_mean)


PIO_SQUARE = """
import rp2, time
from machine import Pin
@rp2.asm_pio(set_init=rp2.PIO.OUT_LOW)
def square():
    set(pins, 1) [9]
    set(pins, 0) [4]
sm = rp2.StateMachine(0, square, freq=100_000, set_base=Pin(28))
sm.active(1)
time.sleep_us(2000)  # (at least 2 ms: sleep_ms may end up to 1 ms early)
sm.active(0)
"""


def test_the_picos_pio_runs_in_board_cycles_with_its_delays_and_divider(tmp_path: Path) -> None:
    # rp2040js runs PIO programs on a wall-clock timer, an instruction a
    # step, delays and clock dividers ignored; here each state machine runs
    # on the system clock: 10 cycles high and 5 low at 100 kHz are 100 us
    # and 50 us, to the nanosecond, while the core sleeps (time.sleep_us).
    with PicoBoard(tmp_path / "fs", name="pio", state_dir=tmp_path / "state") as board:
        board.watch(28)
        mpremote(board.pty_path, "exec", PIO_SQUARE)
        deadline = time.monotonic() + 10
        while len(board.edges) < 20:
            assert time.monotonic() < deadline, board.edges
            time.sleep(0.05)
    edges = [(ns, level) for ns, pin, level in board.edges if pin == 28][1:]  # (after set_init's low)
    highs = [b - a for (a, la), (b, lb) in itertools.pairwise(edges) if la == 1 and lb == 0]
    lows = [b - a for (a, la), (b, lb) in itertools.pairwise(edges) if la == 0 and lb == 1]
    assert len(highs) >= 10 and set(highs) == {100_000}, highs
    assert len(lows) >= 10 and set(lows) == {50_000}, lows


GATE_CUT_PULSES = """
import rp2, time
from machine import Pin
import pio, timing
interlock = Pin(14, Pin.IN, Pin.PULL_DOWN)
gate = rp2.StateMachine(0, pio.pulse_gate, freq=timing.GATE_SM_HZ, sideset_base=Pin(15), jmp_pin=interlock)
gate.active(1)
for k in range(%d):
    while not interlock.value():  # (the host closes the door again)
        time.sleep_ms(1)
    for w in timing.gate_words(30_000_000, 30_100_000):  # a 30 s pulse: only the interlock ends it
        gate.put(w)
    print(k, gate.get())
    while interlock.value():  # (until the host opens the door: the gate falls then)
        time.sleep_ms(1)
time.sleep_ms(1)
gate.active(0)
"""


def test_an_interlock_opening_mid_pulse_ends_it_within_33_us_at_the_pins(tmp_path: Path) -> None:
    # The firmware's own gate program (pio.pulse_gate) on the Pico's PIO:
    # the door opens at a seeded moment of each pulse (the chip held while
    # the wire changes, so its cycle is exact), and GATE falls within
    # timing.GATE_INTERLOCK_CYCLES of it, measured at the pins.
    import random

    from pulseline.mpcompat import import_firmware
    from pulseline.targets.flash import FIRMWARE

    timing = import_firmware("pulsefw.boards.rp2.timing")
    wiring = import_firmware("pulsefw.boards.rp2.wiring")
    rp2_dir = FIRMWARE / "pulsefw" / "boards" / "rp2"
    pulses = 4
    rng = random.Random(19)
    cuts_ns: list[int] = []
    with PicoBoard(tmp_path / "fs", name="cut", state_dir=tmp_path / "state") as board:
        board.press()
        mpremote(board.pty_path, "fs", "cp", str(rp2_dir / "pio.py"), str(rp2_dir / "timing.py"), ":")
        run = subprocess.Popen([MPREMOTE, "connect", board.pty_path, "exec", GATE_CUT_PULSES % pulses],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            clock = board.clock
            for k in range(pulses):
                clock.wait_for(lambda k=k: len(_pulses(board, wiring.PIN_GATE)) > k, 30, f"pulse {k}'s rise")
                clock.sleep(rng.uniform(0.0, 0.01))  # (a moment of the pulse; the coarse loop is 32 us a turn)
                cuts_ns.append(board.set_input("door_closed", False) * 1000)
                clock.wait_for(lambda k=k: _pulses(board, wiring.PIN_GATE)[k][1] is not None, 30, f"pulse {k}'s fall")
                board.set_input("door_closed", True)
            out, _ = run.communicate(timeout=MPREMOTE_HANG_S)
        finally:
            run.kill()
    assert run.returncode == 0, out
    late_ns = [fall - cut for (_, fall), cut in zip(_pulses(board, wiring.PIN_GATE), cuts_ns, strict=True)]
    assert all(0 < late <= timing.GATE_INTERLOCK_CYCLES * 1000 for late in late_ns), late_ns
    assert len(set(late_ns)) > 1  # (seen at more than one phase of the loop)


def _pulses(board: PicoBoard, pin: int) -> list[tuple[int, Any]]:
    """(rise, fall or None) of each pulse on a watched pin, in board ns."""
    pulses: list[tuple[int, Any]] = []
    for ns, p, level in list(board.edges):
        if p == pin and level == 1:
            pulses.append((ns, None))
        elif p == pin and pulses and pulses[-1][1] is None:
            pulses[-1] = (pulses[-1][0], ns)
    return pulses


@pytest.mark.pico_full
def test_frames_at_the_default_geometry_cross_the_picos_pixel_bus_bit_for_bit(tmp_path: Path) -> None:
    # The firmware flashed as `pulseline flash --board rp2` does, exposing at
    # its default geometry: each pixel of the plant's detector goes onto
    # GP0-GP11 at a rise of PIX_CLK, is sampled by the readout's state
    # machine, DMA'd into the frame buffer as Mono12p and sent. The frames
    # arrive equal to what the detector put out, to the bit.
    import numpy as np

    from pulseline.exam.capture import capture
    from pulseline.targets.pico import PicoTarget, flash_image

    image = flash_image(tmp_path / "image")
    target = PicoTarget.start(tmp_path / "fs", image=image, state_dir=tmp_path / "state", seed=5)
    try:
        target.wait_for_firmware(60)
        with target.open_session() as s:
            config = s.command("get_config")
            assert (config["lines_per_frame"], config["pixels_per_line"], config["pixel_format"]) == (256, 256, 2)
            cap = capture(s, 2, press=target.board.press, release=target.board.release)
    finally:
        target.close()
    assert len(cap.frames) >= 2, cap.error
    pulses = [p for p in target.board.plant.pulses if p.frame is not None]
    assert target.board.frames_served >= len(cap.frames)
    for f in cap.frames:
        assert f.complete, f
        pulse = min(pulses, key=lambda p: abs(p.t_us - f.timestamp_us))
        assert abs(pulse.t_us - f.timestamp_us) < 1000 and pulse.frame is not None
        np.testing.assert_array_equal(f.pixels, pulse.frame.raw_adu)


@pytest.mark.pico_full
def test_a_frame_the_plant_cannot_make_is_served_blank_and_the_board_runs_on(tmp_path: Path) -> None:
    # The chip waits at a frame's first line for the host's pixels. A frame
    # the plant fails to make must not leave it held (the board would stop
    # dead, its watchdog with it): the front end reads zeros, the reason is
    # logged, and the next frame is the detector's again.
    import numpy as np

    from pulseline.exam.capture import capture
    from pulseline.targets.pico import PicoTarget, flash_image

    image = flash_image(tmp_path / "image")
    target = PicoTarget.start(tmp_path / "fs", image=image, state_dir=tmp_path / "state", seed=6)
    board = target.board
    expose = board.plant.detector_expose
    failed: list[int] = []

    def fails_once(t_us: int, width_us: int) -> Any:
        if not failed:
            failed.append(t_us)
            raise ValueError("a render that fails")
        return expose(t_us, width_us)

    board.plant.detector_expose = fails_once  # type: ignore[method-assign]
    try:
        target.wait_for_firmware(60)
        with target.open_session() as s:
            cap = capture(s, 3, press=board.press, release=board.release)
    finally:
        target.close()
    assert failed and len(cap.frames) >= 3, cap.error
    assert any("the plant could not make it (ValueError: a render that fails); zeros served" in e
               for e in board.errors), board.errors
    first, *rest = cap.frames
    assert first.complete and not first.pixels.any()
    pulses = [p for p in board.plant.pulses if p.frame is not None]
    for f in rest:
        pulse = min(pulses, key=lambda p: abs(p.t_us - f.timestamp_us))
        assert abs(pulse.t_us - f.timestamp_us) < 1000 and pulse.frame is not None
        np.testing.assert_array_equal(f.pixels, pulse.frame.raw_adu)
