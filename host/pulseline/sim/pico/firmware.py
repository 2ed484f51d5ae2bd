"""What an emulated Pico needs that the project cannot ship: the Pico's
MicroPython uf2 and the RP2040's boot ROM (found in a folder: by default
`../shared/pico` beside the repository, or $PULSELINE_PICO_DIR), Node.js,
and the rp2040js emulator from npm (package.json). Each missing piece is
one clear error.

May import link and plant; never targets or above.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...errors import PulselineError

HERE = Path(__file__).resolve().parent
EMULATOR = HERE / "emulator.mjs"
REPO_ROOT = HERE.parents[3]
UF2_NAME = "RPI_PICO-v1.28.0.uf2"
BOOTROM_NAME = "rp2040-bootrom-b1.bin"
BOOTROM_BYTES = 16 * 1024
WHERE_TO_GET = ("MicroPython's RPI_PICO v1.28.0 uf2 is published at https://micropython.org/download/RPI_PICO/; "
                "the boot ROM is built from https://github.com/raspberrypi/pico-bootrom (see docs/board.md)")


class PicoMissing(PulselineError, FileNotFoundError):
    """Something the emulated Pico needs is not there."""


@dataclass(frozen=True)
class PicoFiles:
    uf2: Path
    bootrom: Path
    node: str
    emulator: Path


def default_pico_dir() -> Path:
    given = os.environ.get("PULSELINE_PICO_DIR")
    return Path(given) if given else REPO_ROOT.parent / "shared" / "pico"


def find_pico_files(pico_dir: str | Path | None = None) -> PicoFiles:
    """The uf2, the boot ROM, Node and the emulator script, or PicoMissing
    saying which is absent and where it was looked for."""
    folder = Path(pico_dir) if pico_dir is not None else default_pico_dir()
    uf2, bootrom = folder / UF2_NAME, folder / BOOTROM_NAME
    for path, what in ((uf2, "the Pico's MicroPython firmware"), (bootrom, "the RP2040 boot ROM")):
        if not path.is_file():
            raise PicoMissing(f"{what} is not at {path} (set PULSELINE_PICO_DIR to the folder that holds "
                              f"{UF2_NAME} and {BOOTROM_NAME}; {WHERE_TO_GET})")
    if bootrom.stat().st_size != BOOTROM_BYTES:
        raise PicoMissing(f"{bootrom} is {bootrom.stat().st_size} bytes, not the RP2040 boot ROM's {BOOTROM_BYTES}")
    node = shutil.which("node")
    if node is None:
        raise PicoMissing("Node.js is not installed (the emulated Pico runs in it): install Node 18 or newer")
    if not _rp2040js_installed():
        raise PicoMissing(f"the rp2040js emulator is not installed: run `npm ci` in {REPO_ROOT}")
    return PicoFiles(uf2=uf2, bootrom=bootrom, node=node, emulator=EMULATOR)


def _rp2040js_installed() -> bool:
    """Where Node will look for it from the emulator script: each folder up."""
    return any((d / "node_modules" / "rp2040js" / "package.json").is_file() for d in EMULATOR.parents)
