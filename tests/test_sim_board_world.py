"""The simulated board's filesystem is its whole world, as a board's is:
`/` is the board's directory (no path leaves it, `..` included), `df`
shows a Pico-sized filesystem, and the modules a board has import (the
frozen asyncio, os.uname naming the board). Judged by mpremote, unmodified."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from pulseline.sim.board import SimBoard

pytestmark = pytest.mark.micropython

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
PICO_FS_BYTES = 1408 * 1024


# Only a guard against a hang: mpremote reads a board's output a byte per
# read() and hands each to its consumer (transport_serial.read_until), about
# 15 us a byte of its own CPU, so its 2 MB take a minute or more on a busy
# machine, a real board's as much as this one's.
MPREMOTE_HANG_S = 900


def mpremote(board: SimBoard, *args: str, cwd: Path | None = None) -> str:
    res = subprocess.run([MPREMOTE, "connect", board.pty_path, *args], capture_output=True, text=True,
                         timeout=MPREMOTE_HANG_S, cwd=cwd)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture
def board(tmp_path: Path):
    fs = tmp_path / "outside" / "fs"
    fs.mkdir(parents=True)
    (fs / "on_board.txt").write_text("mine\n")
    (tmp_path / "outside" / "secret.txt").write_text("not the board's\n")
    with SimBoard(fs, name="world", state_dir=tmp_path / "state") as b:
        yield b


def test_the_root_is_the_boards_directory_and_nothing_leaves_it(board: SimBoard, tmp_path: Path) -> None:
    listing = mpremote(board, "fs", "ls", ":/")
    assert "on_board.txt" in listing
    assert not any(name in listing for name in ("proc", "etc", "usr", "secret.txt")), listing
    # Every way up stays at the board's root, for reading and for writing.
    out = mpremote(board, "exec", "import os\n"
                   "print(sorted(os.listdir('/')) == sorted(os.listdir('/..')) == sorted(os.listdir('../../..')))\n"
                   "os.chdir('..'); print(os.getcwd())\n"
                   "try:\n open('/../secret.txt')\nexcept OSError as e:\n print('refused', e.errno)\n"
                   "open('/../../escaped.txt', 'w').write('x')\n"
                   "os.mkdir('/d'); os.rename('/d/../escaped.txt', '../d/moved.txt')\n")
    assert out.split() == ["True", "/", "refused", "2"], out
    outside = tmp_path / "outside"
    assert sorted(p.name for p in outside.iterdir()) == ["fs", "secret.txt"]
    assert (outside / "fs" / "d" / "moved.txt").read_text() == "x"
    # mpremote's own copy lands on the board, whatever path it is given.
    (tmp_path / "up.txt").write_text("up\n")
    mpremote(board, "fs", "cp", str(tmp_path / "up.txt"), ":/../up.txt", cwd=tmp_path)
    assert (outside / "fs" / "up.txt").read_text() == "up\n" and not (outside / "up.txt").exists()


def test_df_and_statvfs_show_a_pico_sized_filesystem(board: SimBoard) -> None:
    out = mpremote(board, "df")
    row = next(line.split() for line in out.splitlines() if line.split()[-1:] == ["/"])
    size, used, free = int(row[-5]), int(row[-4]), int(row[-3])  # (the first column may hold spaces)
    assert size == PICO_FS_BYTES and used > 0 and used + free == size, out
    # Writing a file takes its blocks.
    mpremote(board, "exec", "open('/big.bin', 'wb').write(bytes(40000))")
    row2 = next(line.split() for line in mpremote(board, "df").splitlines() if line.split()[-1:] == ["/"])
    assert int(row2[-4]) - used == 10 * 4096, (row, row2)


def test_the_repl_starts_with_nothing_of_the_launcher(board: SimBoard) -> None:
    # As the bare interpreter running a file: the launcher's names are gone
    # and its code collected (what stays in the heap is the board's machine,
    # os and filesystem modules, which a Pico keeps in flash).
    out = mpremote(board, "exec", "print(sorted(dir()))\nimport gc\ngc.collect()\nprint(gc.mem_alloc())")
    names, used = out.strip().splitlines()
    assert names == "['__file__', '__name__']", out
    assert int(used) < 64_000, out


def test_a_boards_modules_import(board: SimBoard) -> None:
    out = mpremote(board, "exec", "import asyncio, sys, os\n"
                   "print(asyncio.__name__, os.uname().nodename, os.uname().sysname, sys.path)\n"
                   "async def f():\n    await asyncio.sleep_ms(1)\n    return 7\n"
                   "print(asyncio.run(f()))\n")
    first, second = out.strip().splitlines()
    assert first.split(" ", 3)[:3] == ["asyncio", "world", "linux"], out
    assert "['', '.frozen', '/lib']" in first and second == "7", out


def test_output_is_never_dropped_a_slow_reader_slows_the_board(board: SimBoard, tmp_path: Path) -> None:
    # 2 MB printed at the REPL, taken by mpremote as it comes.
    out = mpremote(board, "exec", "for i in range(20000):\n    print('%07d' % i + 'x' * 92)")
    lines = out.splitlines()
    assert len(lines) == 20000 and lines == [f"{i:07d}" + "x" * 92 for i in range(20000)]
    # A 1 MB file as text (cat), and every byte value through cp (mpremote's
    # cp from a board takes a raw-REPL round trip per 256 bytes: 128 kB).
    text = "".join(f"{i:06d} " + "abcdefghij" * 5 + "\n" for i in range(18000))  # 1.04 MB
    (Path(board.fs_dir) / "big.txt").write_text(text)
    blob = bytes(range(256)) * 512
    (Path(board.fs_dir) / "big.bin").write_bytes(blob)
    assert mpremote(board, "fs", "cat", ":big.txt").replace("\r\n", "\n") == text
    mpremote(board, "fs", "cp", ":big.bin", str(tmp_path / "back.bin"), cwd=tmp_path)
    assert (tmp_path / "back.bin").read_bytes() == blob
    assert board.dropped_out == 0


def test_a_programs_write_returns_once_its_bytes_are_nearly_on_the_wire(board: SimBoard) -> None:
    # A board's USB buffer holds a few hundred bytes, so a program's write
    # lasts as long as the link takes (mpremote mount's program starts its
    # 1 s wait for the host's answer after its write: a write that returned
    # 0.95 s early at usb-fs left the host 50 ms). Slowness only lengthens it.
    size = 400_000
    with serial.Serial(board.pty_path, timeout=0.1) as port:
        _raw_exec_no_follow(port, b"import sys, time\nb = b'x' * %d\nt = time.ticks_ms()\n"
                                  b"sys.stdout.buffer.write(b)\nprint('took', time.ticks_diff(time.ticks_ms(), t))\n"
                                  % size)
        out = _read_until(port, b"\x04>", timeout_s=120)
    took_ms = int(out.split(b"took ")[1].split(b"\r")[0])
    ahead = 64 * 1024  # what may be left in flight: the buffer and a link chunk, with room
    assert out.count(b"x") >= size
    assert took_ms >= (size - ahead) / board.link_class.bytes_per_s * 1000, took_ms


def test_the_repl_ends_lines_with_crlf_as_a_board_does(board: SimBoard) -> None:
    res = subprocess.run([MPREMOTE, "connect", board.pty_path, "exec", "print('a'); print('b\\nc')"],
                         capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout == b"a\r\nb\r\nc\r\n", res.stdout


def test_a_program_with_crlf_line_ends_reaches_the_lexer_as_a_boards_does(board: SimBoard, tmp_path: Path) -> None:
    # MicroPython's basics/string_crlf_conversion, through mpremote run (raw paste).
    script = tmp_path / "crlf.py"
    script.write_bytes(b'x = 1\r\nprint(repr("""abc\r\ndef"""))\r\nprint(x)\r\n')
    res = subprocess.run([MPREMOTE, "connect", board.pty_path, "run", str(script)], capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout == b"'abc\\ndef'\r\n1\r\n", res.stdout


def _raw_exec_no_follow(port: serial.Serial, program: bytes) -> None:
    """pyboard's way: Ctrl-C, raw REPL, the program, Ctrl-D; its OK read."""
    port.write(b"\r\x03\x03\r\x01")
    _read_until(port, b"raw REPL; CTRL-B to exit\r\n>")
    port.write(program + b"\x04")
    _read_until(port, b"OK")


def _read_until(port: serial.Serial, end: bytes, timeout_s: float = 20.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout_s
    while not got.endswith(end):
        assert time.monotonic() < deadline, got
        got += port.read(1)
    return got


def test_ctrl_c_while_the_board_comes_up_never_leaves_it_half_made(tmp_path: Path) -> None:
    # Ctrl-C from the moment the board's port exists until it answers (a
    # tool that connects at once and interrupts, as pyboard.py does). The
    # board's own making (its root mounted, print cooked) is the hardware's
    # and no Ctrl-C interrupts it: once up, print ends lines with CRLF and
    # "/" is the board's directory. (A Ctrl-C in the launcher's set-up left
    # the host's root at "/" and print uncooked.)
    fs = tmp_path / "fs"
    fs.mkdir()
    (fs / "on_board.txt").write_text("mine\n")
    with SimBoard(fs, name="early", state_dir=tmp_path / "state") as b, \
            serial.Serial(b.pty_path, timeout=0) as port:
        deadline = time.monotonic() + 60
        while not b._board_up():
            assert time.monotonic() < deadline, "the board never came up"
            port.write(b"\x03")
            time.sleep(0.001)
        for _ in range(50):  # and on, past the moment it came up
            port.write(b"\x03")
            time.sleep(0.001)
        port.timeout = 0.1
        time.sleep(0.5)
        port.reset_input_buffer()
        port.write(b"\r\x03\x03")
        _read_until(port, b">>> ")
        port.write(b"import os; print(os.listdir('/'))\r")
        out = _read_until(port, b"]\r\n>>> ")  # (an uncooked print's LF never ends it)
        assert out.endswith(b"\r\n['on_board.txt']\r\n>>> "), out


def test_ctrl_c_raises_in_a_busy_program_once_and_never_kills_it(board: SimBoard) -> None:
    with serial.Serial(board.pty_path, timeout=0.1) as port:
        _raw_exec_no_follow(port, b"print('go')\nn = 0\nwhile True:\n    n += 1\n")
        _read_until(port, b"go\r\n")  # running (a Ctrl-C before that, on a board too, is a byte in stdin)
        port.write(b"\x03")  # a program that does not read its input: KeyboardInterrupt in it
        out = _read_until(port, b"\x04>")
        # One traceback, one prompt (the raw REPL's: stdout, Ctrl-D, stderr, Ctrl-D, >).
        assert out.count(b"KeyboardInterrupt") == 1 and out.count(b"\x04>") == 1, out
        text = out.replace(b"\r\n", b"\n")
        assert text.startswith(b"\x04Traceback") and text.endswith(b"KeyboardInterrupt: \n\x04>"), out
        time.sleep(0.3)
        assert port.read(256) == b""  # the byte raised the interrupt and went no further (no second prompt)
    assert board.resets == []  # interrupted, not killed


def test_with_kbd_intr_off_ctrl_c_is_a_byte_the_program_reads(board: SimBoard) -> None:
    with serial.Serial(board.pty_path, timeout=0.1) as port:
        _raw_exec_no_follow(port, b"import micropython, sys\nmicropython.kbd_intr(-1)\n"
                                  b"b = sys.stdin.buffer.read(2)\nmicropython.kbd_intr(3)\nprint('got', b)\n")
        port.write(b"\x03x")
        out = _read_until(port, b"\x04>")
        assert b"got b'\\x03x'" in out and b"KeyboardInterrupt" not in out, out
    assert board.resets == []  # (the unix port dies of a SIGINT under kbd_intr(-1): none was sent)


def test_machine_has_what_code_and_tools_expect_of_a_board(board: SimBoard) -> None:
    # mpremote rtc reads and sets the board's clock.
    assert mpremote(board, "rtc").strip().startswith("(")
    mpremote(board, "rtc", "--set")
    date = eval(mpremote(board, "rtc").strip())  # (year, month, day, weekday, h, m, s, subseconds)
    assert len(date) == 8 and date[0] >= 2026 and 0 <= date[3] <= 6
    out = mpremote(board, "exec", "import machine\n"
                   "print(machine.reset_cause() == machine.PWRON_RESET, len(machine.unique_id()), machine.freq())\n"
                   "led = machine.Pin('LED', machine.Pin.OUT, value=0); led.toggle()\n"
                   "print(led.value(), machine.Pin(2, machine.Pin.IN, machine.Pin.PULL_UP).value())\n")
    assert out.split() == ["True", "8", "125000000", "1", "1"], out
    # A soft Timer: its callback scheduled between bytecodes, periodic and one-shot, stopped by deinit.
    out = mpremote(board, "exec", "import machine, time\n"
                   "n = [0, 0]\n"
                   "def tick(t):\n    n[0] += 1\n"
                   "def once(t):\n    n[1] += 1\n"
                   "t = machine.Timer(period=10, callback=tick)\n"
                   "o = machine.Timer(mode=machine.Timer.ONE_SHOT, period=5, callback=once)\n"
                   "t0 = time.ticks_ms()\n"
                   "while n[0] < 5 and time.ticks_diff(time.ticks_ms(), t0) < 10000:\n    time.sleep_ms(10)\n"
                   "t.deinit()\nk = n[0]\ntime.sleep_ms(100)\n"
                   "print(k >= 5, n[0] <= k + 1, n[1])\n"
                   "u = machine.UART(0, 115200)\nprint(u.write(b'abc'), u.any(), u.read())\n")
    assert out.split() == ["True", "True", "1", "3", "0", "None"], out
    # machine.reset() is a chip reset (through the watchdog, as on a Pico); a soft reset keeps the cause.
    mpremote(board, "exec", "import machine; machine.reset()")
    assert mpremote(board, "exec", "import machine; print(machine.reset_cause() == machine.WDT_RESET)").split() \
        == ["True"]
    mpremote(board, "soft-reset")
    assert mpremote(board, "exec", "import machine; print(machine.reset_cause())").split() == ["3"]
    assert [kind for _, kind in board.resets].count("hard") == 1


@pytest.mark.skipif(not os.access("/dev", os.W_OK), reason="only a user who may write /dev (root, as in CI) "
                    "can give a pty a /dev/ttyACM* name for serial tools to list")
def test_mpremote_devs_lists_the_board_and_connects_by_that_name(board: SimBoard) -> None:
    assert board.device is not None and board.device.name.startswith("ttyACM")
    listed = subprocess.run([MPREMOTE, "devs"], capture_output=True, text=True, timeout=60).stdout
    assert str(board.device) in listed.split(), listed
    res = subprocess.run([MPREMOTE, "connect", str(board.device), "exec", "import os; print(os.uname().nodename)"],
                         capture_output=True, text=True, timeout=MPREMOTE_HANG_S)
    assert res.stdout.split() == ["world"], res
    device = board.device
    board.stop()
    assert not device.is_symlink()  # gone with the board


def test_machine_wdt_resets_a_program_that_stops_feeding_it(board: SimBoard) -> None:
    out = mpremote(board, "exec", "import machine, time\n"
                   "w = machine.WDT(timeout=300)\n"
                   "for i in range(8):\n    time.sleep_ms(100); w.feed()\n"
                   "print('fed')\n"
                   "try:\n    machine.WDT(timeout=9000)\nexcept ValueError as e:\n    print(e)\n")
    assert out.splitlines() == ["fed", "timeout exceeds 8388"], out
    # Fed for 0.8 s on a 300 ms watchdog: no reset then; once the program
    # ends unfed, the watchdog resets the board (a soft reset does not stop it).
    deadline = time.monotonic() + 60
    while "watchdog" not in [k for _, k in board.resets] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [k for _, k in board.resets].count("watchdog") == 1, board.resets
    assert mpremote(board, "exec", "import machine; print(machine.reset_cause() == machine.WDT_RESET)").split() \
        == ["True"]


def test_mpremote_mount_moves_binary_both_ways_whole(board: SimBoard, tmp_path: Path) -> None:
    # Every byte value (LF and CR included) through mpremote mount's binary
    # protocol, host to board and back, then a program keeps running.
    local = tmp_path / "mnt"
    local.mkdir()
    blob = bytes(range(256)) * 4096  # 1 MB
    (local / "in.bin").write_bytes(blob)
    out = mpremote(board, "mount", str(local), "exec",
                   "d = open('in.bin', 'rb').read()\n"
                   "print(len(d), d == bytes(range(256)) * 4096)\n"
                   "open('out.bin', 'wb').write(d[1:] + d[:1])\n"
                   "print('after', sum(range(10)))\n", cwd=tmp_path)
    assert "1048576 True" in out and "after 45" in out, out
    assert (local / "out.bin").read_bytes() == blob[1:] + blob[:1]
