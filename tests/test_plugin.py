"""The pulseline pytest plugin, run as CI runs it: options, evidence
bundles linked from JUnit XML, the replay line of a failing test, and the
plant skipped on hardware."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.micropython

SUITE = '''
import pytest

def test_passes(board, session, plant):
    assert session.status()["state"] == "IDLE"
    plant.press()

def test_fails(board, session):
    assert session.status()["state"] == "EXPOSING"

@pytest.mark.needs_plant
def test_needs_plant(board):
    pass

@pytest.mark.fidelity
def test_fidelity(board):
    pass
'''


def run(tmp_path, *args):
    (tmp_path / "test_suite.py").write_text(SUITE)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_suite.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_evidence_bundles_and_the_replay_command(tmp_path):
    res = run(tmp_path, "--target", "sim", "--seed", "5", "--evidence", str(tmp_path / "ev"),
              "--junitxml", str(tmp_path / "junit.xml"))
    assert res.returncode == 1, res.stdout + res.stderr  # test_fails fails
    out = res.stdout
    assert "1 failed, 2 passed, 1 skipped" in out, out
    assert "pytest 'test_suite.py::test_fails' --target sim --seed 5" in out  # the replay command
    bundles = {p.name: p for p in (tmp_path / "ev").iterdir()}
    assert len(bundles) == 3
    failed = next(p for n, p in bundles.items() if n.endswith("test_fails"))
    meta = json.loads((failed / "evidence.json").read_text())
    assert meta["outcome"] == "failed" and meta["seed"] == 5 and len(meta["firmware_hash"]) == 64
    assert meta["serial"] == "SIM-00000005" and "--seed 5" in meta["replay"]
    assert (failed / "board_to_host.bin").stat().st_size > 0
    # The host's own transcript, both ways: the handshake and the status that failed.
    text = subprocess.run([sys.executable, "-m", "pulseline", "transcript", str(failed / "transcript.bin")],
                          capture_output=True, text=True, check=True).stdout
    # (a session's sequence numbers start anywhere: an earlier session's answer is never taken for its own)
    assert re.search(r"-> command +#\d+ hello", text) and '"state": "IDLE"' in text, text
    events = [json.loads(line) for line in (failed / "events.jsonl").read_text().splitlines()]
    assert all("event" in e for e in events)
    passed = next(p for n, p in bundles.items() if n.endswith("test_passes"))
    assert json.loads((passed / "timeline.json").read_text())[0]["name"] == "switch"
    # The JUnit report links each test to its bundle.
    props = {tc.get("name"): {p.get("name"): p.get("value") for p in tc.iter("property")}
             for tc in ET.parse(tmp_path / "junit.xml").iter("testcase")}
    assert props["test_fails"]["evidence"] == str(failed)


def _failed_transcripts(evidence: Path) -> str:
    """What the board said in each failed test, for the assertion message."""
    out = []
    for meta in sorted(evidence.glob("*/evidence.json")):
        if json.loads(meta.read_text()).get("outcome") == "failed":
            cmd = [sys.executable, "-m", "pulseline", "transcript", str(meta.parent / "transcript.bin")]
            text = subprocess.run(cmd, capture_output=True, text=True).stdout
            out.append(f"\n--- {meta.parent.name}: transcript tail\n" + "\n".join(text.splitlines()[-40:]))
    return "".join(out)


def test_a_hardware_target_skips_the_plant(tmp_path):
    from pulseline.sim.board import SimBoard
    from pulseline.targets.simboard import deploy_files as _deploy

    _deploy(tmp_path / "fs", None)
    with SimBoard(tmp_path / "fs", state_dir=tmp_path / "st") as b:
        # A pyserial URL of a simulated board stands in for hardware.
        res = run(tmp_path, "--target", b.url, "-rs", "-k", "not fails")
        assert res.returncode == 0, res.stdout + res.stderr
        # Skipped: the test that takes the plant fixture and the needs_plant one; the fidelity check runs.
        assert "1 passed, 2 skipped, 1 deselected" in res.stdout, res.stdout
        assert "needs the plant" in res.stdout
        # Acceptance: the suite itself, unchanged, on the same stand-in: every
        # test that needs no plant passes on one board, one test after another.
        root = Path(__file__).resolve().parents[1]
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                              str(root / "hil_tests"), "-m", "not slow", "--target", b.url,
                              "--evidence", str(tmp_path / "hw-evidence")],
                             capture_output=True, text=True, cwd=root, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr + _failed_transcripts(tmp_path / "hw-evidence")
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|skipped|failed)", res.stdout.splitlines()[-1]))
    assert counts.get("passed", 0) >= 15 and counts.get("skipped", 0) >= 10 and "failed" not in counts, res.stdout
    skipped = [line for line in res.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all("needs the plant" in line or "fast" in line for line in skipped), skipped


def test_the_safety_suite_catches_a_firmware_without_its_door_check(tmp_path):
    """Acceptance: a deliberately broken firmware (the door permissive
    removed from the controller) fails hil_tests, naming the rule."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    broken = tmp_path / "broken-firmware"
    shutil.copytree(root / "firmware", broken, ignore=shutil.ignore_patterns("__pycache__"))
    controller = broken / "pulsefw" / "controller.py"
    text = controller.read_text()
    check = "        if not inputs.door_closed:\n            return codes.BLOCK_DOOR\n"
    assert check in text
    controller.write_text(text.replace(check, ""))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                          str(root / "hil_tests" / "test_safety.py"), "-k", "interlock", "--target", "sim",
                          "--no-flash", "--firmware", str(broken)],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "safety rule 1 broken: the firmware fired with the door open" in res.stdout, res.stdout
    assert "--target sim --seed 0" in res.stdout  # and how to replay it


def test_two_runs_on_fast_with_the_same_seed_are_identical(tmp_path):
    """Acceptance: the same seed on the fast target gives the same protocol
    transcript and the same frames, byte for byte."""
    from pathlib import Path

    import numpy as np

    from pulseline.link import evidence
    from pulseline.link.assembler import FrameAssembler
    from pulseline.link.frames import Frame

    root = Path(__file__).resolve().parents[1]
    runs = []
    for k in range(2):
        ev = tmp_path / f"run{k}"
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              str(root / "hil_tests" / "test_dose.py"), "--target", "fast", "--seed", "4",
                              "--evidence", str(ev)], capture_output=True, text=True, cwd=root, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        runs.append({p.name: p for p in ev.iterdir()})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 3
    for name in runs[0]:
        a, b = (r[name] for r in runs)
        stream = (a / "board_to_host.bin").read_bytes()
        assert len(stream) > 100_000 and stream == (b / "board_to_host.bin").read_bytes(), name
        if (a / "events.jsonl").exists():  # the tests that take the session fixture
            assert (a / "events.jsonl").read_text() == (b / "events.jsonl").read_text()
        assert (a / "timeline.json").read_text() == (b / "timeline.json").read_text()
        lines, pixels = 256, 256  # the board's default geometry
        if (a / "transcript.bin").exists():  # the host's side, with the target's times, and its frames
            assert evidence.read_transcript(a / "transcript.bin") == evidence.read_transcript(b / "transcript.bin")
            fa, fb = (evidence.load_frames(x / "frames.npz") for x in (a, b))
            assert len(fa) == len(fb) >= 4
            assert all(np.array_equal(x["pixels"], y["pixels"]) for x, y in zip(fa, fb, strict=True))
            lines, pixels = fa[-1]["pixels"].shape
        frames = [f for f in FrameAssembler(pixels, lines, "mono12p").feed(stream) if isinstance(f, Frame)]
        assert len(frames) >= 4 and all(f.complete for f in frames)
    # A different seed is a different detector and different noise.
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(root / "hil_tests" / "test_dose.py"), "-k", "reference_meter", "--target", "fast",
                          "--seed", "5", "--evidence", str(tmp_path / "other")], capture_output=True, text=True,
                         cwd=root, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    other = next((tmp_path / "other").iterdir()) / "board_to_host.bin"
    same_test = next(p for n, p in runs[0].items() if n.endswith("reference_meter"))
    assert other.read_bytes() != (same_test / "board_to_host.bin").read_bytes()
