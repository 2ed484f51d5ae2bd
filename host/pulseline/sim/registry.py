"""The running simulated boards of a state directory (.pulseline): where
each keeps its files, the locks that make one board a name and one board a
filesystem, and the state files through which the CLI and tools find a
running board (its pty, socket:// URL and control channel).

May import link and plant; never targets or above.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PulselineError

STATE_DIR = Path(".pulseline")


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


def publish(files: BoardFiles, pty_path: str, state: dict[str, Any]) -> None:
    """A started board, for others to find: the link to its pty, and its state file."""
    link = files.link
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(pty_path)
    _write_private(files.state_file, json.dumps(state, indent=1))


def withdraw(files: BoardFiles) -> None:
    """A stopping board's files gone (by the board holding the name only)."""
    with contextlib.suppress(FileNotFoundError):
        files.link.unlink()
    with contextlib.suppress(FileNotFoundError):
        files.state_file.unlink()
    with contextlib.suppress(FileNotFoundError):
        files.lock.unlink()  # under the lock: see lock_file


DEVICE_DIR = Path("/dev")
DEVICE_PREFIX = "ttyACMsim"  # where serial tools look for USB CDC ports (pyserial: /dev/ttyACM*)


def publish_device(pty_path: str, device_dir: Path = DEVICE_DIR) -> Path | None:
    """The board's pty as a USB CDC port serial tools list (`mpremote devs`,
    pyserial's comports): /dev/ttyACMsim<N> for /dev/pts/<N>, unique while
    the pty is open. Only where /dev may be written (root, as in CI);
    elsewhere None, and the board is found through `pulseline ports`. Links
    a killed board left (their pty gone) are cleared first."""
    if not os.access(device_dir, os.W_OK):
        return None
    for old in device_dir.glob(DEVICE_PREFIX + "*"):
        if old.is_symlink() and not old.exists():
            with contextlib.suppress(OSError):
                old.unlink()
    pts = Path(pty_path).name
    if not pts.isdigit():
        return None
    device = device_dir / f"{DEVICE_PREFIX}{pts}"
    tmp = device_dir / f".{DEVICE_PREFIX}{pts}.{os.getpid()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(pty_path)
        os.replace(tmp, device)  # (a link a killed board left on this pty number is replaced)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return device


def withdraw_device(device: Path | None, pty_path: str) -> None:
    """The board's /dev link gone, if it is still the board's."""
    if device is not None and device.is_symlink() and os.readlink(device) == pty_path:
        with contextlib.suppress(OSError):
            device.unlink()


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


def lock_file(path: Path) -> int | None:
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


def lock_dir(path: Path) -> int | None:
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


def name_in_use(files: BoardFiles) -> BoardInUse:
    """The error for a name a running (or starting) board holds."""
    st = _read_state(files.state_file)
    if not (st and _alive(int(st.get("pid", 0)))):
        st = {"pid": _flock_holder(files.lock)}  # still starting: no state file yet
    pid, fs = st.get("pid") or "?", st.get("fs", "?")
    return BoardInUse(f"simulated board {files.name!r} is already running (pid {pid}, fs {fs}): "
                      f"stop it first (pulseline sim stop --name {files.name}) or give another --name")


def fs_in_use(fs_dir: Path, state_dir: Path) -> BoardInUse:
    """The error for a filesystem a running (or starting) board holds."""
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
        raise name_in_use(files)
    fs = Path(fs_dir) if fs_dir is not None else files.default_fs
    if fs.is_dir() and _held(fs, directory=True):
        raise fs_in_use(fs, state_dir)


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
