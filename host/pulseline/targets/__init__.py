"""Targets: the boards a session can run on, behind one interface (base.py:
Target), one module per kind: hardware on a port or URL, the MicroPython
simulated board, the fast simulator; with flashing and the host-side fault
proxy. `--port` (the CLI) and `--target` (the pytest plugin) are parsed into
a Target here, and only here.

May import link, plant and sim.
"""

from __future__ import annotations

from pathlib import Path

from .base import Target, TargetError
from .hardware import HardwareTarget

SIM = "sim"
FAST = "fast"
PICO = "pico"


def resolve_port(port: str, state_dir: Path | None = None) -> str:
    """What pyserial opens for `port`: a named simulated board's pty, or the
    port as given. ValueError, with a clear line, if no such board runs."""
    from ..link import ports

    ports.check(port)
    if port == "sim" or port.startswith("sim:"):
        from ..sim.board import STATE_DIR, find_board

        return str(find_board(port[4:] or None, state_dir or STATE_DIR)["pty"])
    return port


def attach(port: str, state_dir: Path | None = None) -> Target:
    """The board behind a --port: a running simulated board (by name, pty,
    link or URL; with its controls), a fast board of this process
    (`fastsim://`), or hardware. ValueError for a port that cannot be."""
    device = resolve_port(port, state_dir)
    if port.startswith("fastsim://"):
        from .fast import FastTarget

        return FastTarget.attach(port)
    from ..sim.board import STATE_DIR
    from .simboard import SimBoardTarget, running_board_of

    record = running_board_of(port, state_dir or STATE_DIR)
    if record is not None:
        return SimBoardTarget.attach(port, record, state_dir or STATE_DIR)
    return HardwareTarget(device, name=port)


def create(spec: str, *, seed: int = 0, faults: str = "", workdir: Path | None = None,
           bundle: Path | None = None, source: Path | None = None, start_us: int = 0,
           record: bool = True, pico_image: Path | None = None) -> Target:
    """A board for a test run, from --target: "sim" (a new simulated board
    under workdir, with the firmware bundle or source), "fast" (a new fast
    board), "pico" (a new emulated Pico under workdir, its flash a copy of
    pico_image: targets.pico.flash_image), or a device path or URL
    (hardware; link faults through a proxy). TargetError for what a kind
    cannot do."""
    if spec == FAST:
        if faults:
            raise TargetError("link faults: the fast target has no link (use sim or a board)")
        from .fast import FastTarget

        return FastTarget.start(seed=seed, start_us=start_us)
    if spec == SIM:
        from .simboard import SimBoardTarget

        if workdir is None:
            raise TargetError("a simulated board needs a working directory")
        return SimBoardTarget.start(workdir / "board-fs", bundle=bundle, source=source,
                                    state_dir=workdir / ".pulseline", seed=seed, record=record, faults=faults,
                                    start_us=start_us)
    if spec == PICO:
        from .pico import PicoTarget

        if workdir is None:
            raise TargetError("an emulated Pico needs a working directory")
        # Link faults: through the fault proxy, as a real board's.
        return PicoTarget.start(workdir / "board-fs", image=pico_image, state_dir=workdir / ".pulseline", seed=seed,
                                faults=faults)
    return HardwareTarget(spec, faults=faults, seed=seed)


__all__ = ["FAST", "PICO", "SIM", "HardwareTarget", "Target", "TargetError", "attach", "create", "resolve_port"]

