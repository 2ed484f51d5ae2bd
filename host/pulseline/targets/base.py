"""The one interface every kind of board has for the host: a Target.

A target opens sessions (given the board's port and clock: the session
knows no simulator), gives the board's clock, the simulated hardware's
controls (switch, door, key, phantom, faults) or none on hardware, the
link-fault ground truth, reset and flash. The CLI, the pytest plugin and
the demo get their board from pulseline.targets; one module per kind.

May import link, plant and sim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PulselineError
from ..link.clock import WALL, Clock
from ..link.session import Session, wait_for_firmware
from ..sim.controls import PlantControls


class TargetError(PulselineError):
    """A target cannot do what was asked (flash the fast simulator, say)."""


class Target:
    """A board the host talks to. `name` is what the user called it (a
    --port or --target), `port` what a session opens."""

    kind = "hardware"

    def __init__(self, name: str, port: str, *, seed: int = 0, controls: PlantControls | None = None) -> None:
        self.name = name
        self.port = port
        self.seed = seed
        self.controls = controls  # the simulated hardware; None on hardware

    @property
    def simulated(self) -> bool:
        return self.controls is not None

    @property
    def clock(self) -> Clock:
        """The board's time: the wall clock, unless the board keeps its own."""
        return WALL

    def open_session(self, **options: Any) -> Session:
        """A host session with the board (Session's options: record,
        answer_timeout_s, heartbeat, handshake)."""
        options.setdefault("label", self.name)
        return Session(self.port, clock=self.clock, **options)

    def wait_for_firmware(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """The firmware's handshake once it answers (after a start or reset)."""
        return wait_for_firmware(self.port, timeout_s, self.clock)

    def link_faults(self) -> list[Any]:
        """Every fault injected on the board->host link so far (ground truth)."""
        return []

    def reset(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Restart the board (the reboot command) and wait for its handshake."""
        with self.open_session(heartbeat=False) as s:
            s.command("reboot")
        return self.wait_for_firmware(timeout_s)

    def flash(self, source: Path | None = None, *, build_dir: Path, log: Any = print,
              dry_run: bool = False, board: str | None = None) -> Any:
        """`pulseline flash`: compile the firmware (the package's, or the tree
        `source`), copy what differs, verify by hash and restart; the plan.
        FlashError on any failure."""
        from .flash import FIRMWARE, flash

        return flash(self.port, build_dir=build_dir, log=log, source=source or FIRMWARE, dry_run=dry_run,
                     board=board)

    def write_evidence(self, out: Path) -> None:
        """A simulated board's ground truth for a test's evidence bundle."""

    def close(self) -> None:
        """Stop what this target started (a board it owns, a proxy)."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
