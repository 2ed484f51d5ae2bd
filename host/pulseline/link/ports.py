"""One --port everywhere: a device path, a pyserial URL, or a simulated board.

    /dev/ttyACM0               a real board (or a simulated board's pty)
    socket://127.0.0.1:7301    any pyserial URL (socket://, rfc2217://, loop://)
    sim, sim:ttyACM1           a running simulated board, by name (pulseline.targets
                               finds its pty: the link layer knows no simulator)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Callable
from typing import TypeVar

import serial

T = TypeVar("T")

# How long a lock this process's own child holds may stand in an open's way
# (it lasts from the child's fork to its exec: microseconds, but a loaded
# machine can leave the child unscheduled for a while).
OWN_LOCK_WAIT_S = 10.0


def check(port: str) -> None:
    """ValueError, with a clear line, for a port that can never open
    (nothing given, or a URL whose scheme pyserial does not know); a device
    or simulated board that is not there yet is not an error here."""
    if not port:
        raise ValueError("no port given (a device path, a pyserial URL, or 'sim')")
    scheme, sep, _ = port.partition("://")
    if not sep:
        return
    for package in serial.protocol_handler_packages:
        try:
            importlib.import_module(f"{package}.protocol_{scheme}")
            return
        except ImportError:
            continue
    raise ValueError(f"{port}: unknown URL scheme {scheme}:// (a device path, a pyserial URL such as "
                     "socket://HOST:PORT, or 'sim')")


def _lock_id(device: str) -> str:
    """A device's file as /proc/locks names it: "00:1a:3"."""
    st = os.stat(device)
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def _flock_pid(lines: list[str], lock_id: str) -> int | None:
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 2113 00:1a:3 0 EOF" (a blocked waiter's line has "->")
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == lock_id and fields[4].isdigit():
            return int(fields[4])
    return None


def lock_holder(device: str) -> int | None:
    """The pid that took the exclusive lock (flock) on a device, as the
    kernel lists it (/proc/locks); None if there is none, or no way to say."""
    try:
        with open("/proc/locks") as f:
            return _flock_pid(f.read().splitlines(), _lock_id(device))
    except OSError:
        return None


def _locked_here(device: str) -> bool:
    """Whether a descriptor this process has open holds the device's lock
    (the kernel lists a descriptor's locks in its fdinfo)."""
    try:
        lock_id = _lock_id(device)
        for fd in os.listdir("/proc/self/fdinfo"):
            with contextlib.suppress(OSError), open(f"/proc/self/fdinfo/{fd}") as f:
                lines = [line.partition(":")[2] for line in f if line.startswith("lock:")]
                if _flock_pid(lines, lock_id) is not None:
                    return True
    except OSError:
        return True  # no way to tell: take it as held
    return False


def held_by(device: str) -> str | None:
    """Who holds a device's exclusive lock, for a message: "process 1234
    (screen)", "this program", or None if unknown."""
    pid = lock_holder(device)
    if pid is None:
        return None
    if pid == os.getpid():
        return "this program"
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f"process {pid} ({f.read().strip()})"
    except OSError:
        return f"process {pid}"


def open_exclusive(device: str, opener: Callable[[], T]) -> T:
    """opener(), which opens `device` and takes its exclusive lock, tried
    again while what stands in the way is this process's own lock on a
    descriptor it has already closed. A child process started in between
    holds a copy of that descriptor, and with it the lock, until it runs
    exec: a moment, but a port closed and opened again while another thread
    starts a process (a simulated board resetting in the same process)
    would otherwise be "busy" by chance. Whatever else goes wrong (another
    program holds the port, it is not there) is opener's error, at once."""
    deadline = time.monotonic() + OWN_LOCK_WAIT_S
    while True:
        try:
            return opener()
        except Exception:
            if ("://" in device or lock_holder(device) != os.getpid() or _locked_here(device)
                    or time.monotonic() > deadline):
                raise
        time.sleep(0.002)
