"""The controls of a simulated board's hardware, one interface for every
kind (SimBoard in this process, SimControl over a running board's control
channel, FastBoard in virtual time): a board gives set_input, and the
exposure switch is one of its inputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class PlantControls(ABC):
    """Inputs of the plant a test, the CLI or the demo works."""

    @abstractmethod
    def set_input(self, name: str, value: float | bool) -> int:
        """Set a plant input (switch, door_closed, key_on, water_cm, a
        fault...); returns the plant time at which it takes effect."""

    @abstractmethod
    def plant_status(self) -> dict[str, Any]:
        """The plant's state now: its time (t_us), inputs, dose meter..."""

    def press(self) -> int:
        """Press and hold the exposure switch."""
        return self.set_input("switch", True)

    def release(self) -> int:
        return self.set_input("switch", False)
