"""Lets firmware modules import under CPython.

The firmware is MicroPython code; under CPython (host tests, the fast
simulator) it needs the few MicroPython-only names it uses. This shim lives
outside firmware/ and is never deployed to a board.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _const(value: int) -> int:
    return value


def _passthrough(func: F) -> F:
    # @micropython.native / @micropython.viper: plain Python under CPython.
    return func


def install() -> None:
    """Register a `micropython` module unless one exists already."""
    if "micropython" in sys.modules:
        return
    mod = types.ModuleType("micropython")
    mod.const = _const  # type: ignore[attr-defined]
    mod.native = _passthrough  # type: ignore[attr-defined]
    mod.viper = _passthrough  # type: ignore[attr-defined]
    mod.kbd_intr = lambda chr_code: None  # type: ignore[attr-defined]
    sys.modules["micropython"] = mod


def import_firmware(name: str) -> Any:
    """Import a firmware module under CPython, shim first."""
    install()
    return importlib.import_module(name)
