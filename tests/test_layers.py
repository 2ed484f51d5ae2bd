"""The session is the link to any board: importing it loads no simulator
and no plant model (a session on a real board runs without them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SESSION = Path(__file__).resolve().parents[1] / "host" / "pulseline" / "link" / "session.py"


def test_importing_the_session_loads_no_simulator_or_plant() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, pulseline.link.session; "
                          "print(' '.join(m for m in sys.modules if m.startswith('pulseline.')))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "pulseline.link.session" in out
    assert [m for m in out if m.startswith(("pulseline.sim", "pulseline.plant"))] == []


def test_the_session_names_no_simulator_module() -> None:
    tree = ast.parse(SESSION.read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [m for m in imported if m.lstrip(".").startswith(("sim", "plant"))], imported
