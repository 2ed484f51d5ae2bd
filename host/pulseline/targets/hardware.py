"""A board on a port: a device path or any pyserial URL (a real board, or
anything that speaks like one). With link faults, a host-side proxy in
front of it injects them (faultproxy.py), with the same ground truth as the
simulated link's.

May import link, plant and sim.
"""

from __future__ import annotations

from typing import Any

from .base import Target


class HardwareTarget(Target):
    kind = "hardware"

    def __init__(self, port: str, *, faults: str = "", seed: int = 0, name: str | None = None) -> None:
        self.proxy: Any = None
        self.device = port  # the board itself (the proxy's upstream)
        if faults:
            from .faultproxy import FaultProxy

            self.proxy = FaultProxy(port, faults, seed=seed).start()
            port = self.proxy.url
        super().__init__(name or self.device, port, seed=seed)

    def link_faults(self) -> list[Any]:
        return list(self.proxy.faults_log) if self.proxy is not None else []

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
