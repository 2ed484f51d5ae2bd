"""The emulated Pico as a target: the Pico's own MicroPython on rp2040js,
its pins wired to the plant (pulseline.sim.pico). Flashing one takes
tens of seconds of wall time (mpremote at an eighth of a Pico's speed), so
a test run flashes one board once (`flash_image`) and every test's board
starts from a copy of that flash, as a batch of boards programmed from one
image would.

May import link, plant and sim.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..link.clock import Clock
from ..sim.pico.board import FLASH_IMAGE, PicoBoard
from .base import Target


def flash_image(workdir: Path, *, source: Path | None = None, state_dir: Path | None = None) -> Path:
    """A Pico's flash with the firmware on it: an emulated Pico started from
    its uf2, flashed as `pulseline flash --board rp2` does (compiled for the
    RP2040, copied, verified by hash, restarted) and answering the
    handshake, then stopped. The image's path (workdir/fs/flash.bin)."""
    from .flash import FIRMWARE, flash, handshake

    fs = workdir / "fs"
    with PicoBoard(fs, state_dir=state_dir or workdir / ".pulseline") as board:
        plan = flash(board.pty_path, board="rp2", build_dir=workdir / "build", log=lambda m: None,
                     source=source or FIRMWARE)
        handshake(board.pty_path, expect_hash=plan.firmware_hash, clock=board.clock)
    return fs / FLASH_IMAGE


class PicoTarget(Target):
    kind = "pico"

    def __init__(self, name: str, port: str, *, seed: int = 0, board: PicoBoard, proxy: Any = None) -> None:
        super().__init__(name, port, seed=seed, controls=board)
        self.board = board
        self.proxy = proxy  # the fault proxy the host's port goes through, if link faults were asked for

    @classmethod
    def start(cls, fs: Path, *, image: Path | None = None, state_dir: Path, seed: int = 0,
              faults: str = "") -> PicoTarget:
        """An emulated Pico on a fresh filesystem, its flash a copy of
        `image` (flash_image) or, without one, the bare uf2's. With link
        faults, the host reaches its USB port (its socket:// URL) through
        the fault proxy a real board gets."""
        fs.mkdir(parents=True, exist_ok=True)
        if image is not None:
            shutil.copyfile(image, fs / FLASH_IMAGE)
        board = PicoBoard(fs, state_dir=state_dir, seed=seed).start()
        if not faults:
            return cls(board.name, board.pty_path, seed=seed, board=board)
        from .faultproxy import FaultProxy

        try:
            proxy = FaultProxy(board.url, faults, seed=seed).start()
        except BaseException:
            board.stop()
            raise
        return cls(board.name, proxy.url, seed=seed, board=board, proxy=proxy)

    @property
    def clock(self) -> Clock:
        """The emulator's cycles: a test waits as long as the board took."""
        return self.board.clock

    def flash(self, source: Path | None = None, *, build_dir: Path, log: Any = print,
              dry_run: bool = False, board: str | None = None) -> Any:
        return super().flash(source, build_dir=build_dir, log=log, dry_run=dry_run, board=board or "rp2")

    def link_faults(self) -> list[Any]:
        return list(self.proxy.faults_log) if self.proxy is not None else []

    def write_evidence(self, out: Path) -> None:
        (out / "timeline.json").write_text(json.dumps(self.board.plant.timeline.to_json()))
        (out / "boots.json").write_text(json.dumps(self.board.boots))

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        self.board.stop()
