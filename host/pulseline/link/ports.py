"""One --port everywhere: a device path, a pyserial URL, or a simulated board.

    /dev/ttyACM0               a real board (or a simulated board's pty)
    socket://127.0.0.1:7301    any pyserial URL (socket://, rfc2217://, loop://)
    sim, sim:ttyACM1           a running simulated board, by name (its pty)
"""

from __future__ import annotations

import importlib
from pathlib import Path

import serial


def resolve(port: str, state_dir: Path | None = None) -> str:
    """What pyserial opens for `port`; ValueError with a clear line if a
    named simulated board is not running."""
    if not port:
        raise ValueError("no port given (a device path, a pyserial URL, or 'sim')")
    if port == "sim" or port.startswith("sim:"):
        # Only a simulated board's name needs the simulator's registry: a
        # session on anything else imports no simulator.
        from ..sim.board import STATE_DIR, find_board

        name = port[4:] or None
        return str(find_board(name, state_dir or STATE_DIR)["pty"])
    return port


def check(port: str) -> None:
    """ValueError, with a clear line, for a port that can never open
    (nothing given, or a URL whose scheme pyserial does not know); a device
    or simulated board that is not there yet is not an error here."""
    if not port:
        raise ValueError("no port given (a device path, a pyserial URL, or 'sim')")
    scheme, sep, _ = port.partition("://")
    if not sep:
        return
    # pulseline.sim: fastsim://, which the session registers with pyserial.
    for package in dict.fromkeys([*serial.protocol_handler_packages, "pulseline.sim"]):
        try:
            importlib.import_module(f"{package}.protocol_{scheme}")
            return
        except ImportError:
            continue
    raise ValueError(f"{port}: unknown URL scheme {scheme}:// (a device path, a pyserial URL such as "
                     "socket://HOST:PORT, or 'sim')")
