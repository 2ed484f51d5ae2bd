"""One error type: every error class the library defines is a
PulselineError, which the CLI catches once (one line, status 2)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pulseline
from pulseline.errors import PulselineError


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(pulseline.__path__, "pulseline."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


# Exceptions that are control flow, never an error said to anyone.
NOT_ERRORS = {"pulseline.sim.fast.BoardReset": "the simulated board's reset: unwinds its CPU, caught by the simulator"}


def test_every_error_of_the_library_is_a_pulseline_error() -> None:
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, Exception) or f"{name}.{cls_name}" in NOT_ERRORS:
                continue
            found.append(cls_name)
            assert issubclass(cls, PulselineError), f"{name}.{cls_name} is not a PulselineError"
    assert {"SessionError", "FlashError", "PresetError", "CliError", "SaveError"} <= set(found)


def test_the_cli_says_a_library_error_in_one_line(capsys) -> None:
    from pulseline import cli

    assert cli.main(["presets", "--presets", "/nonexistent/presets.json"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("pulseline: error:"), err
