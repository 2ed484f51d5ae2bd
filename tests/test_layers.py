"""The host package is in layers and its imports point down only (the
package docstring, host/pulseline/__init__.py, names them); the session is
the link to any board: importing it loads no simulator and no plant model
(a session on a real board runs without them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "host" / "pulseline"
SESSION = PACKAGE / "link" / "session.py"
# Lowest first: a module may import its own layer and those before it.
LAYERS = ["base", "link", "plant", "sim", "targets", "exam", "ui", "top"]
LAYER_OF = {"link": "link", "plant": "plant", "sim": "sim", "targets": "targets", "exam": "exam", "ui": "ui",
            "cli": "top", "testing": "top", "__main__": "top"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    """pulseline.<folder>... -> its layer; top-level modules (errors,
    mpcompat, _native, the version) are the base."""
    parts = module.split(".")
    return LAYER_OF.get(parts[1], "base") if len(parts) > 1 else "base"


def _imports(path: Path) -> set[str]:
    """Every pulseline module `path` imports, at the top or inside a function."""
    return _imports_of(path.read_text(), _module(path), path.name == "__init__.py")


def _imports_of(source: str, module: str, is_package: bool) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("pulseline"):
                continue
            if node.module is None or target == "pulseline":  # from . import x: x may be a module
                found.update(f"{target}.{a.name}" for a in node.names)
            else:
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pulseline"))
    return found


def test_imports_point_down_the_layers() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = LAYERS.index(_layer(_module(path)))
        for target in sorted(_imports(path)):
            if LAYERS.index(_layer(target)) > mine:
                upward.append(f"{_module(path)} ({_layer(_module(path))}) imports {target} ({_layer(target)})")
    assert upward == []


def test_the_layer_check_sees_an_upward_import() -> None:
    # The checker itself, on a made-up module of the link layer that reaches
    # up into sim/ from inside a function.
    source = "def f():\n    from ..sim.board import SimBoard\n    from . import clock\n    import pulseline.ui.view\n"
    found = _imports_of(source, "pulseline.link.probe", False)
    assert found == {"pulseline.sim.board", "pulseline.link.clock", "pulseline.ui.view"}
    assert [LAYERS.index(_layer(m)) > LAYERS.index("link") for m in sorted(found)] == [False, True, True]


def test_every_folder_of_the_package_has_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYER_OF), folders - set(LAYER_OF)


def test_importing_the_session_loads_no_simulator_or_plant() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, pulseline.link.session; "
                          "print(' '.join(m for m in sys.modules if m.startswith('pulseline.')))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "pulseline.link.session" in out
    assert [m for m in out if m.startswith(("pulseline.sim", "pulseline.plant"))] == []


def test_the_session_names_no_simulator_module() -> None:
    imported = _imports(SESSION)
    assert imported and not [m for m in imported if m.startswith(("pulseline.sim", "pulseline.plant"))], imported
    assert "pulseline.sim" not in SESSION.read_text()  # (not even as a string: no pyserial handler of the simulator)


def _handlers() -> dict[str, ast.FunctionDef]:
    found = {}
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_"):
                found[f"{path.name}:{node.name}"] = node
    return found


def test_the_cli_holds_no_workflow_every_handler_is_short() -> None:
    handlers = _handlers()
    assert len(handlers) >= 17, sorted(handlers)  # every command has one
    long = {name: n.end_lineno - n.lineno + 1 for name, n in handlers.items()
            if n.end_lineno is not None and n.end_lineno - n.lineno + 1 >= 40}
    assert long == {}


def test_capture_is_acquired_by_the_exam_library() -> None:
    (capture,) = [n for name, n in _handlers().items() if name.endswith(":cmd_capture")]
    calls = {n.func.id for n in ast.walk(capture) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    imported = {(n.module, a.name) for n in ast.walk(capture) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "acquire" in calls and ("exam.acquire", "acquire") in imported
