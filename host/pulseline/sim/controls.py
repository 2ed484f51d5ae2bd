"""The controls of a simulated board's hardware, one interface for every
kind (SimBoard in this process, SimControl over a running board's control
channel, FastBoard in virtual time): a board gives set_input, and the
exposure switch is one of its inputs. ServedBoard: a board run in the
foreground until stopped (SimBoard, PicoBoard)."""

from __future__ import annotations

import signal
import threading
import time
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


class ServedBoard(ABC):
    """A board run in the foreground until stopped: its `_stop` event is
    set by a control 'stop', SIGTERM or Ctrl-C, and `stop()` shuts it down."""

    _stop: threading.Event

    @abstractmethod
    def stop(self) -> None:
        """Shut the board down (its interpreter or emulator, its endpoints)."""

    def wait(self) -> None:
        """Run until stopped (Ctrl-C, SIGTERM or a control 'stop')."""
        while not self._stop.is_set():
            time.sleep(0.1)

    def serve_until_stopped(self) -> None:
        """Block until stopped, then shut the board down."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        try:
            self.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
