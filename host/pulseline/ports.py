"""One --port everywhere: a device path, a pyserial URL, or a simulated board.

    /dev/ttyACM0               a real board (or a simulated board's pty)
    socket://127.0.0.1:7301    any pyserial URL (socket://, rfc2217://, loop://)
    sim, sim:ttyACM1           a running simulated board, by name (its pty)
"""

from __future__ import annotations

from pathlib import Path

from .sim.board import STATE_DIR, find_board


def resolve(port: str, state_dir: Path = STATE_DIR) -> str:
    """What pyserial opens for `port`; ValueError with a clear line if a
    named simulated board is not running."""
    if not port:
        raise ValueError("no port given (a device path, a pyserial URL, or 'sim')")
    if port == "sim" or port.startswith("sim:"):
        name = port[4:] or None
        return str(find_board(name, state_dir)["pty"])
    return port
