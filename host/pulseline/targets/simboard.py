"""The MicroPython simulated board as a target: the firmware on the real
MicroPython unix port, behind a pty and a `socket://` URL, wired to the
plant. Either started here (owned: the plant is in this process, with its
ground truth) or a board already running (`pulseline sim`), reached by
name, pty, link or URL, whose controls go over its control channel.

May import link, plant and sim.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..link.clock import WALL, Clock, OwnClock
from ..sim.board import STATE_DIR, SimBoard, SimControl, running_boards
from .base import Target


def deploy_files(fs: Path, bundle: Path | None = None, source: Path | None = None) -> None:
    """A simulated board's filesystem: a bundle built for it (what `pulseline
    flash` copies), or the source tree's files for its platform (no other
    board's folder)."""
    from .flash import FIRMWARE, copy_source

    if bundle is None:
        copy_source(fs, "linux", source or FIRMWARE)
        return
    fs.mkdir(parents=True, exist_ok=True)
    for name in ("boot.py", "main.py"):
        shutil.copy(bundle / name, fs)
    shutil.copytree(bundle / "pulsefw", fs / "pulsefw", ignore=shutil.ignore_patterns("__pycache__"))


def running_board_of(port: str, state_dir: Path = STATE_DIR) -> dict[str, Any] | None:
    """The running simulated board behind `port` ("sim", "sim:NAME", or its
    pty, link or URL), or None."""
    if port == "sim" or port.startswith("sim:"):
        name = port[4:] or None
        boards = running_boards(state_dir)
        return next((b for b in boards if name is None or b["name"] == name), None)
    for b in running_boards(state_dir):
        if port in (b.get("pty"), b.get("url"), b.get("link_path")):
            return b
    return None


class SimBoardTarget(Target):
    kind = "sim"

    def __init__(self, name: str, port: str, *, seed: int = 0, board: SimBoard | None = None,
                 controls: SimControl | None = None) -> None:
        super().__init__(name, port, seed=seed, controls=board if board is not None else controls)
        self.board = board  # the board this target started (None: one running elsewhere)
        self._channel: SimControl | None = controls  # a running board's control channel
        self._clock: Clock | None = None

    @classmethod
    def start(cls, fs: Path, *, bundle: Path | None = None, source: Path | None = None,
              **options: Any) -> SimBoardTarget:
        """Deploy the firmware (a bundle, or source) on a fresh filesystem
        and start a board on it (SimBoard's options: state_dir, seed,
        faults, record, start_us, plant, link...)."""
        deploy_files(fs, bundle, source)
        board = SimBoard(fs, **options).start()
        return cls(board.name, board.pty_path, seed=board.seed, board=board)

    @classmethod
    def attach(cls, port: str, record: dict[str, Any], state_dir: Path = STATE_DIR) -> SimBoardTarget:
        """A board started by `pulseline sim` (its registry record): its
        controls over the control channel, or none if that cannot be reached."""
        try:
            controls: SimControl | None = SimControl(record["name"], state_dir)
        except (OSError, ValueError):
            controls = None
        return cls(port, str(record["pty"]), controls=controls)

    @property
    def clock(self) -> Clock:
        """The board's own time (what its interpreter ran and asked to wait):
        a test waits as long as the board took, however busy the host."""
        if self._clock is None:
            if self.board is not None:
                self._clock = self.board.clock
            elif self._channel is not None:
                self._clock = OwnClock(self._channel.board_now_us)
            else:
                self._clock = WALL
        return self._clock

    def link_faults(self) -> list[Any]:
        return self.board.link_faults() if self.board is not None else []

    def write_evidence(self, out: Path) -> None:
        if self.board is not None:
            (out / "board_to_host.bin").write_bytes(bytes(self.board.sent_to_host))
            (out / "timeline.json").write_text(json.dumps(self.board.plant.timeline.to_json()))

    def close(self) -> None:
        if self.board is not None:
            self.board.stop()
        elif self._channel is not None:
            self._channel.close()
