"""One --port everywhere: a device path, a pyserial URL, or a simulated board.

    /dev/ttyACM0               a real board (or a simulated board's pty)
    socket://127.0.0.1:7301    any pyserial URL (socket://, rfc2217://, loop://)
    sim, sim:ttyACM1           a running simulated board, by name (pulseline.targets
                               finds its pty: the link layer knows no simulator)
"""

from __future__ import annotations

import importlib

import serial


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
