"""The controller code is the same on every board: no firmware module but a
board's own (its folder, pulsefw/boards/<board>/) imports anything
board-specific, the simulated board's bundle and the Pico's carry the same
bytes for every other module, and each board gets its own folder and no
other's. (docs/hal.md)"""

import ast
from pathlib import Path

import pytest

from pulseline.targets.flash import BOARD_FOLDER, BOARDS_DIR, NATIVE_SOURCE, PACKAGE, build_bundle, copy_source

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
BOARDS = FIRMWARE / PACKAGE / BOARDS_DIR
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
    """The package's modules outside boards/: every board runs them."""
    return sorted((FIRMWARE / PACKAGE).glob("*.py"))


@pytest.mark.parametrize("path", neutral_modules(), ids=lambda p: p.name)
def test_no_controller_module_imports_anything_board_specific(path: Path):
    neutral = {f"{PACKAGE}.{p.stem}" for p in neutral_modules()} | {PACKAGE}
    bad = sorted(m for m in imports_of(path) if m not in PORTABLE and m not in neutral
                 and not names_from(path, m) <= PORTABLE_NAMES.get(m, set()))
    assert not bad, f"{path.name} imports {bad}: only a board's HAL may"


def test_the_checker_sees_a_board_import_where_one_is():
    assert "machine" not in imports_of(FIRMWARE / PACKAGE / "controller.py")
    assert {"socket", "select", "time"} <= imports_of(BOARDS / "sim" / "hal.py")
    assert "rp2" in imports_of(BOARDS / "rp2" / "pio.py")
    # time's tick arithmetic is portable; its clock is not.
    assert names_from(FIRMWARE / PACKAGE / "ticks.py", "time") == {"ticks_add", "ticks_diff"}
    assert names_from(BOARDS / "rp2" / "hal.py", "time") == {"*"}


def test_both_boards_get_the_same_controller_bytes(tmp_path: Path):
    sim = {f.path: f.sha256 for f in build_bundle("linux", tmp_path / "linux")}
    pico = {f.path: f.sha256 for f in build_bundle("rp2", tmp_path / "rp2")}
    shared = {f"{PACKAGE}/{p.name if p.name in NATIVE_SOURCE else p.stem + '.mpy'}" for p in neutral_modules()}
    assert shared and shared <= set(sim) and shared <= set(pico)
    assert {p: sim[p] for p in shared} == {p: pico[p] for p in shared}
    # Beyond those, each bundle holds its own board's folder, whole, and nothing else.
    for bundle, platform in ((sim, "linux"), (pico, "rp2")):
        own = f"{PACKAGE}/{BOARDS_DIR}/{BOARD_FOLDER[platform]}"
        folder = {f"{own}/{p.stem}.mpy" for p in (BOARDS / BOARD_FOLDER[platform]).glob("*.py")}
        rest = set(bundle) - shared - {"boot.py", "main.py", f"{PACKAGE}/{BOARDS_DIR}/__init__.mpy"}
        assert folder and rest == folder, (platform, sorted(rest ^ folder))


def test_the_simulated_board_gets_no_rp2_file(tmp_path: Path):
    # Both ways a simulated board gets its firmware: a bundle, and the source tree as the plugin copies it.
    bundle = {f.path for f in build_bundle("linux", tmp_path / "bundle")}
    copy_source(tmp_path / "fs")
    copied = {p.relative_to(tmp_path / "fs").as_posix() for p in (tmp_path / "fs").rglob("*") if p.is_file()}
    for files in (bundle, copied):
        assert any(f.startswith(f"{PACKAGE}/{BOARDS_DIR}/sim/") for f in files), files
        assert not [f for f in files if "rp2" in f], sorted(files)


def test_the_firmware_has_no_import_cycle():
    # Every import a module makes (function-level ones too), within the package.
    modules = {f"{PACKAGE}.{p.stem}": p for p in neutral_modules()}
    graph = {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
    assert graph[f"{PACKAGE}.commands"] and f"{PACKAGE}.app" not in graph[f"{PACKAGE}.commands"]
