"""The MicroPython unix port made to look like a board at its REPL: the
launcher that runs boot.py and main.py, the `machine` and `os` shims a
board's firmware and mpremote rely on, and what the host sees of the REPL
across interpreter restarts (which prompt it shows, a Ctrl-C waiting for an
answer, the banner hidden when the board comes back to the raw REPL).

May import link and plant; never targets or above.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..mpcompat import import_firmware

hal_sim = import_firmware("pulsefw.boards.sim.hal")

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
FRIENDLY_PROMPT = b">>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"
READY_MARK = b"\x00PLSIM\x00"  # printed by the launcher between boot.py and the REPL banner (raw mode)

# Runs in the interpreter: the board's filesystem becomes its whole "/"
# (the shims are imported first: their directory is then out of reach),
# boot.py, then main.py unless a soft reset came from the raw REPL; -i then
# leaves it at the REPL, as a board, with nothing of the launcher left.
LAUNCHER = """
_pl_up = open(%r, "w")
import os, machine, _boardfs
_boardfs.mount_root(%r, %r)
_boardfs.cook_print()
machine._boot(%r, %r)
del _boardfs
# The board is up: Ctrl-C may reach it from here (boot.py, main.py, the
# REPL). Before, its own making (the root mounted, print cooked) is the
# hardware's, which no Ctrl-C interrupts; a Ctrl-C then waits in stdin.
# (The file was opened before "/" became the board's: written through its
# descriptor, as nothing of the host can be named from here.)
_pl_up.write("up")
_pl_up.close()
del _pl_up
def _pl_run(name):
    try:
        os.stat(name)
    except OSError:
        return
    exec(open(name).read(), {"__name__": "__main__"})
try:
    _pl_run("boot.py")
    if %r:
        _pl_run("main.py")
    else:
        print(%r, end="")
finally:
    # A board's REPL starts with nothing of its boot in its namespace or heap.
    del _pl_run, os, machine
    import gc
    gc.collect()
    del gc
"""

# The unix port's `machine`, with what code and tools expect of a board:
# reset, soft_reset, reset_cause (a Pico's codes: machine.reset() goes
# through the watchdog there too), bootloader (none here: it says so and
# resets), freq, unique_id, RTC (mpremote rtc), Pin holding its level, a
# soft Timer, the chip's watchdog (WDT), and a UART nothing is wired to.
# The launcher sets the reset kind and the board's id.
WDT_MAX_TIMEOUT_MS = 8388  # an RP2040's watchdog counts 24 bits of microseconds
MACHINE_SHIM = f"""
from umachine import *
import sys
import time

PWRON_RESET = 1
WDT_RESET = 3
_cause = PWRON_RESET
_id = b"\\x00" * 8
_freq = 125_000_000


def _boot(kind, uid):
    global _cause, _id
    _cause = WDT_RESET if kind in ("hard", "watchdog") else PWRON_RESET
    _id = uid


def reset():
    sys.exit({hal_sim.EXIT_HARD_RESET})


def soft_reset():
    raise SystemExit


def reset_cause():
    return _cause


def bootloader(*args):
    print("machine.bootloader: a simulated board has no USB bootloader (BOOTSEL); "
          "it takes firmware with pulseline flash. Resetting instead.")
    reset()


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    _freq = int(hz)


def unique_id():
    return _id


class RTC:
    # (year, month, day, weekday, hours, minutes, seconds, subseconds), as
    # a board's; it runs from the host's clock, offset by what was set.
    _offset = 0

    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        if dt is None:
            t = time.localtime(time.time() + RTC._offset)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        set_s = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        RTC._offset = set_s - time.time()


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    ALT = 3
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8
    _levels = {{}}

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = self.IN
        self.pull = None
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self.mode = mode
        if pull != -1:
            self.pull = pull
        if value is not None:
            Pin._levels[self.id] = 1 if value else 0

    def value(self, v=None):
        if v is None:
            if self.mode == self.IN:
                # Nothing drives a simulated board's free pins: the pull decides.
                return 1 if self.pull == self.PULL_UP else 0
            return Pin._levels.get(self.id, 0)
        Pin._levels[self.id] = 1 if v else 0

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(1 - Pin._levels.get(self.id, 0))

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING):
        return None

    def __repr__(self):
        return "Pin(%s)" % (self.id,)


class Timer:
    # A soft timer, as a board's machine.Timer without hard=True: its
    # callback is scheduled (micropython.schedule) and runs in the main
    # program between bytecodes. A thread keeps the period.
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, **kwargs):
        self._gen = 0
        if kwargs:
            self.init(**kwargs)

    def init(self, *, mode=PERIODIC, period=-1, freq=-1, tick_hz=1000, callback=None, hard=False):
        import _thread
        import micropython

        if freq > 0:
            period_us = int(1_000_000 / freq)
        elif period >= 0:
            period_us = int(period * 1_000_000 / tick_hz)
        else:
            raise ValueError("period or freq required")
        self._gen += 1
        gen = self._gen

        def run():
            due = time.ticks_add(time.ticks_us(), period_us)
            while self._gen == gen:
                wait = time.ticks_diff(due, time.ticks_us())
                if wait > 0:
                    time.sleep_us(wait)
                if self._gen != gen:
                    return
                if callback is not None:
                    try:
                        micropython.schedule(callback, self)
                    except RuntimeError:
                        pass  # the schedule queue is full: this tick is missed, as on a board
                if mode == Timer.ONE_SHOT:
                    return
                due = time.ticks_add(due, max(period_us, 1000))

        _thread.start_new_thread(run, ())

    def deinit(self):
        self._gen += 1


class WDT:
    # The chip's watchdog, the one the firmware uses: started and fed over
    # the program's own connection to the plant, and judged by the board's
    # supervisor, which resets the board when it is not fed within its
    # timeout. A reset stops it; a soft reset does not (as on a Pico).
    _plant = None

    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError("WDT id must be 0")
        if not 1 <= timeout <= {WDT_MAX_TIMEOUT_MS}:
            raise ValueError("timeout exceeds {WDT_MAX_TIMEOUT_MS}" if timeout > 0 else "timeout must be > 0")
        if WDT._plant is None:
            import os
            import socket

            host, _, port = os.getenv("PULSELINE_PLANT").rpartition(":")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.connect(socket.getaddrinfo(host, int(port))[0][-1])
            WDT._plant = s
        # A request: op, the board's time (0: the plant's own), arguments.
        self._ask(bytes([{hal_sim.OP_WDT_START}]) + bytes(8) + int(timeout).to_bytes(4, "little"))

    def _ask(self, request):
        WDT._plant.write(request)
        if not WDT._plant.read(1):
            raise OSError(5)  # EIO: the plant is gone

    def feed(self):
        self._ask(bytes([{hal_sim.OP_WDT_FEED}]) + bytes(8))


class UART:
    # A UART nothing is wired to (the simulated board's only serial link is
    # its USB CDC): what is written goes nowhere, nothing is ever read.
    def __init__(self, id, baudrate=115200, **kwargs):
        self.id = id
        self.init(baudrate, **kwargs)

    def init(self, baudrate=115200, **kwargs):
        self.baudrate = baudrate

    def deinit(self):
        pass

    def any(self):
        return 0

    def read(self, nbytes=-1):
        return None

    def readline(self):
        return None

    def readinto(self, buf, nbytes=-1):
        return None

    def write(self, buf):
        return len(buf)

    def flush(self):
        pass

    def txdone(self):
        return True

    def __repr__(self):
        return "UART(%s, baudrate=%s) (not wired on a simulated board)" % (self.id, self.baudrate)
"""

# A board's filesystem is its whole world: the unix port's "/" is the host's
# (VfsPosix follows "..", even from a root of its own), so the board's
# directory is mounted as "/" through a VFS that makes every path absolute
# and normal first: none leaves the directory. Its size is a Pico's
# (1408 KiB of littlefs in 4 kB blocks); the board's sys.path a board's.
BOARDFS_SHIM = """
import os, sys, vfs

BLOCK = 4096
BLOCKS = 352  # a Pico's filesystem: 1408 KiB


class BoardFS:
    def __init__(self, root):
        self._fs = vfs.VfsPosix(root)
        self._host = vfs.VfsPosix()  # (not mounted: rename's whole host paths)
        self._root = root.rstrip("/")
        self._cwd = "/"

    def _path(self, path):
        if not path.startswith("/"):
            path = self._cwd + "/" + path
        parts = []
        for p in path.split("/"):
            if p == "..":
                if parts:
                    parts.pop()
            elif p and p != ".":
                parts.append(p)
        return "/" + "/".join(parts)

    def __repr__(self):
        return "<BoardFS>"

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def chdir(self, path):
        p = self._path(path)
        if not self._fs.stat(p)[0] & 0x4000:
            raise OSError(20)  # ENOTDIR
        self._cwd = p

    def getcwd(self):
        return self._cwd

    def ilistdir(self, path):
        # With each file's size, as a board's VFS gives it (mpremote's ls).
        base = self._path(path)
        for e in self._fs.ilistdir(base):
            size = 0
            if e[1] == 0x8000:
                try:
                    size = self._fs.stat(base + "/" + e[0])[6]
                except OSError:
                    pass
            yield (e[0], e[1], e[2], size)

    def stat(self, path):
        return self._fs.stat(self._path(path))

    def open(self, path, mode):
        return self._fs.open(self._path(path), mode)

    def mkdir(self, path):
        self._fs.mkdir(self._path(path))

    def rmdir(self, path):
        self._fs.rmdir(self._path(path))

    def remove(self, path):
        self._fs.remove(self._path(path))

    def rename(self, old, new):
        # (The rooted VfsPosix builds both paths in one buffer: the second
        # overwrites the first. Whole host paths, normal already, instead.)
        self._host.rename(self._root + self._path(old), self._root + self._path(new))

    def _used(self, path):
        n = 1
        for e in self._fs.ilistdir(path):
            full = path.rstrip("/") + "/" + e[0]
            n += self._used(full) if e[1] == 0x4000 else (self._fs.stat(full)[6] + BLOCK - 1) // BLOCK
        return n

    def statvfs(self, path):
        free = max(0, BLOCKS - 2 - self._used("/"))  # (littlefs keeps two blocks for itself)
        return (BLOCK, BLOCK, BLOCKS, free, free, 0, 0, 0, 0, 255)


def cook_print():
    # A board's USB stack sends print's text with CRLF line ends; the unix
    # port's print writes LF, to the same descriptor as sys.stdout.buffer's
    # bytes, so only print can be told apart: it goes out cooked, binary as
    # it is. (Calling this allocates: under micropython.heap_lock() it
    # fails where a board's print does not: tests/test_micropython_suite.py.)
    import builtins

    plain = builtins.print

    def print(*args, sep=" ", end="\\n", file=None):
        if file is not None and file is not sys.stdout:
            plain(*args, sep=sep, end=end, file=file)
            return
        # (No try here: a handler would clear the caller's sys.exc_info().)
        text = (" " if sep is None else sep).join([str(a) for a in args]) + ("\\n" if end is None else end)
        sys.stdout.write(text.replace("\\r\\n", "\\n").replace("\\n", "\\r\\n"))

    def __repl_print__(obj):
        # What the REPL shows of an expression's value, cooked too (and
        # kept as _, as the REPL's own does).
        if obj is not None:
            sys.stdout.write(repr(obj).replace("\\n", "\\r\\n") + "\\r\\n")
            builtins._ = obj

    builtins.print = print
    builtins.__repl_print__ = __repl_print__


def mount_root(root, name):
    vfs.umount("/")
    vfs.mount(BoardFS(root), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    os.NODENAME = name
"""

# The unix port's os, and uname() as a board has it, naming this board.
OS_SHIM = """
from uos import *

NODENAME = "sim"


def uname():
    import sys
    from collections import namedtuple

    v = sys.implementation.version
    release = "%d.%d.%d" % (v[0], v[1], v[2])
    result = namedtuple("uname_result", ("sysname", "nodename", "release", "version", "machine"))
    return result("linux", NODENAME, release, "v" + release + " on the MicroPython unix port",
                  "pulseline simulated board")
"""


def write_shims(directory: Path) -> None:
    """The shim modules, in a directory on the interpreter's path (never on
    the board's filesystem)."""
    (directory / "machine.py").write_text(MACHINE_SHIM)
    (directory / "os.py").write_text(OS_SHIM)
    (directory / "_boardfs.py").write_text(BOARDFS_SHIM)


def launcher(*, main: bool, fs_dir: Path, name: str, reset_kind: str, unique_id: bytes, up_file: Path) -> str:
    """The interpreter's -c program: the board's filesystem as "/", print
    cooked, machine's reset cause and id, then up_file written (the board
    is up: Ctrl-C can reach it), boot.py, then main.py or (main=False) the mark
    after which the supervisor enters the raw REPL."""
    return LAUNCHER % (str(up_file), str(fs_dir), name, reset_kind, unique_id, main, READY_MARK.decode())


class Repl:
    """What the host sees of the board's REPL, across interpreter restarts."""

    def __init__(self) -> None:
        self.raw_mode = False
        self._tail = b""
        self._swallow = False  # relaunching into the raw REPL: hide the interpreter's banner
        self._swallow_buf = bytearray()
        self._sent_ctrl_a = False  # raw-REPL relaunch: Ctrl-A sent to the new interpreter
        # The raw REPL is reading a program (from its prompt to the Ctrl-D
        # that ends the program), and the last byte of it was a CR.
        self.reading_program = False
        self._cr = False

    @property
    def relaunching(self) -> bool:
        """A soft reset into the raw REPL is under way (its prompt not yet
        handed to the host)."""
        return self._swallow

    def launched(self, *, main: bool) -> None:
        """A new interpreter: without main.py it is a relaunch into the raw REPL."""
        self._swallow = not main
        self._swallow_buf.clear()

    def track_prompts(self, data: bytes) -> None:
        """Board output on its way to the host: the last prompt says the mode."""
        scan = self._tail + data
        r = scan.rfind(RAW_PROMPT)
        f = scan.rfind(FRIENDLY_PROMPT)
        if r >= 0 or f >= 0:
            self.raw_mode = r > f
        # Its prompt, or a program's end (stdout, Ctrl-D, stderr, Ctrl-D): it
        # reads the next (until the host's Ctrl-D; raw-paste's answers between).
        if scan.endswith(RAW_PROMPT) or (self.raw_mode and scan.endswith(b"\x04>")):
            self.reading_program = True
        elif not self.raw_mode:
            self.reading_program = False
        self._tail = scan[-32:]

    def host_input(self, data: bytes) -> bytes:
        """Host input as the board's REPL must get it. The unix port reads
        the REPL's input with LF turned into CR, so a program's CRLF would
        reach its lexer as CR CR (two line ends, in a string too) where a
        board's gets CRLF: the LF of each CRLF is left out while the raw
        REPL reads a program (CR alone is a line end to the lexer). Bytes a
        running program reads (sys.stdin) pass as they are."""
        if not self.reading_program:
            return data
        end = data.find(b"\x04")
        program = data if end < 0 else data[:end + 1]
        if self._cr and program[:1] == b"\n":
            program = program[1:]
        self._cr = program[-1:] == b"\r"
        program = program.replace(b"\r\n", b"\r")
        if end >= 0:
            self.reading_program = False
            self._cr = False
            return program + data[end + 1:]
        return program

    def from_process(self, data: bytes, emit: Callable[[bytes], None], to_interpreter: Callable[[bytes], None]) -> None:
        """The interpreter's output: emitted toward the host, but for what a
        relaunch into the raw REPL hides."""
        if not self._swallow:
            emit(data)
            return
        # Relaunched into the raw REPL: boot.py's output goes through; the
        # interpreter's banner and friendly prompt do not; then enter raw
        # mode and hand the host exactly the raw REPL prompt.
        self._swallow_buf += data
        buf = self._swallow_buf
        i = buf.find(READY_MARK)
        if i >= 0 and not self._sent_ctrl_a:
            emit(bytes(buf[:i]))
            del buf[:i + len(READY_MARK)]
            self._sent_ctrl_a = True
            to_interpreter(b"\x01")
        j = buf.find(RAW_PROMPT)
        if j >= 0 and self._sent_ctrl_a:
            rest = bytes(buf[j + len(RAW_PROMPT):])
            buf.clear()
            self._swallow = False
            self._sent_ctrl_a = False
            emit(RAW_PROMPT + rest)
