"""The controller code is the same on every board: no firmware module but a
board's own (its HAL and PIO programs) imports anything board-specific, and
the simulated board's bundle and the Pico's carry the same bytes for every
other module. (docs/hal.md)"""

import ast
from pathlib import Path

import pytest

from pulseline.flash import NATIVE_SOURCE, OTHER_BOARDS, PACKAGE, build_bundle

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
# A board's own modules: each belongs to one board only.
BOARD_MODULES = {"hal_sim": "linux", "hal_rp2": "rp2", "pio_rp2": "rp2"}
# What a board-neutral module may import: MicroPython's portable modules (in
# every port) and the package's other neutral modules. Not machine, rp2,
# socket, select, time (the clock is the HAL's), nor any board module.
PORTABLE = {"micropython", "array", "struct", "math", "json", "binascii", "hashlib", "os", "sys", "gc", "errno"}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, wherever in the file (functions too);
    relative imports as pulsefw.<name>."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                base = f"{PACKAGE}.{node.module}" if node.module else PACKAGE
                found |= {f"{base}.{a.name}" if not node.module else base for a in node.names}
            elif node.module == PACKAGE:
                found |= {f"{PACKAGE}.{a.name}" for a in node.names}
            else:
                found.add(str(node.module))
    return found


# Names a neutral module may take from a board-specific module: time's tick
# arithmetic (pure functions of their arguments; the clock itself is the
# HAL's ticks_us).
PORTABLE_NAMES = {"time": {"ticks_add", "ticks_diff"}}


def names_from(path: Path, module: str) -> set[str]:
    """The names a file takes with `from module import ...`, and "*" for a
    plain `import module`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == module:
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import) and any(a.name == module for a in node.names):
            found.add("*")
    return found


def neutral_modules() -> list[Path]:
    return [p for p in sorted((FIRMWARE / PACKAGE).glob("*.py")) if p.stem not in BOARD_MODULES]


@pytest.mark.parametrize("path", neutral_modules(), ids=lambda p: p.name)
def test_no_controller_module_imports_anything_board_specific(path: Path):
    neutral = {f"{PACKAGE}.{p.stem}" for p in neutral_modules()} | {PACKAGE}
    bad = sorted(m for m in imports_of(path) if m not in PORTABLE and m not in neutral
                 and not names_from(path, m) <= PORTABLE_NAMES.get(m, set()))
    assert not bad, f"{path.name} imports {bad}: only a board's HAL may"


def test_the_checker_sees_a_board_import_where_one_is():
    assert "machine" not in imports_of(FIRMWARE / PACKAGE / "controller.py")
    assert {"socket", "select", "time"} <= imports_of(FIRMWARE / PACKAGE / "hal_sim.py")
    assert "rp2" in imports_of(FIRMWARE / PACKAGE / "pio_rp2.py")
    # time's tick arithmetic is portable; its clock is not.
    assert names_from(FIRMWARE / PACKAGE / "ticks.py", "time") == {"ticks_add", "ticks_diff"}
    assert names_from(FIRMWARE / PACKAGE / "hal_rp2.py", "time") == {"*"}


def test_both_boards_get_the_same_controller_bytes(tmp_path: Path):
    sim = {f.path: f.sha256 for f in build_bundle("linux", tmp_path / "linux")}
    pico = {f.path: f.sha256 for f in build_bundle("rp2", tmp_path / "rp2")}
    shared = {f"{PACKAGE}/{p.name if p.name in NATIVE_SOURCE else p.stem + '.mpy'}" for p in neutral_modules()
              if p.name not in OTHER_BOARDS["linux"]}
    assert shared and shared <= set(sim) and shared <= set(pico)
    assert {p: sim[p] for p in shared} == {p: pico[p] for p in shared}
    for module, board in BOARD_MODULES.items():
        path = f"{PACKAGE}/{module}.mpy"
        if (FIRMWARE / PACKAGE / f"{module}.py").exists():
            assert (path in sim) == (board == "linux") and (path in pico) == (board == "rp2"), path
