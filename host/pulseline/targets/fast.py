"""The fast simulator as a target: the firmware in this process under
CPython, in virtual time (the board's clock moves only while the host
waits), deterministic for a seed.

May import link, plant and sim.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..link.clock import Clock
from ..sim.fastboard import FastBoard, find
from .base import Target, TargetError


class FastTarget(Target):
    kind = "fast"

    def __init__(self, board: FastBoard, *, owned: bool = True) -> None:
        super().__init__(board.url, board.url, seed=board.plant.config.seed, controls=board)
        self.board = board
        self._owned = owned

    @classmethod
    def start(cls, *, seed: int = 0, start_us: int = 0, **options: Any) -> FastTarget:
        """A new fast board (FastBoard's options: plant, timeline, pixels, name)."""
        return cls(FastBoard(seed=seed, start_us=start_us, **options))

    @classmethod
    def attach(cls, url: str) -> FastTarget:
        """The fast board at `fastsim://NAME`, made earlier in this process."""
        return cls(find(url.split("://", 1)[-1]), owned=False)

    @property
    def clock(self) -> Clock:
        return self.board.clock

    def wait_for_firmware(self, timeout_s: float = 5.0) -> dict[str, Any]:
        return super().wait_for_firmware(timeout_s)  # (in virtual time: the board boots in milliseconds)

    def flash(self, source: Path | None = None, **options: Any) -> Any:
        raise TargetError("the fast target runs the firmware in process: nothing to flash")

    def write_evidence(self, out: Path) -> None:
        (out / "board_to_host.bin").write_bytes(bytes(self.board.sent_to_host))
        (out / "timeline.json").write_text(json.dumps(self.board.plant.timeline.to_json()))

    def close(self) -> None:
        if self._owned:
            self.board.close()
