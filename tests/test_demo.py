"""`make demo` does the main job on a simulated board: deploy with mpremote,
capture, save, stop. Run here in a scratch directory, as a user would."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile


@pytest.mark.micropython
def test_demo_deploys_captures_and_saves_an_exam(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "tools" / "demo.py"  # (outside the installed package)
    res = subprocess.run([sys.executable, str(demo)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mpremote connect" in res.stdout and "fs cp -r boot.py main.py pulsefw :" in res.stdout
    summary = json.loads((tmp_path / "demo-exam" / "summary.json").read_text())
    # The board got what a simulated board runs: its own folder, no rp2 file.
    boards = tmp_path / ".pulseline" / "demo.fs" / "pulsefw" / "boards"
    assert (boards / "sim" / "hal.py").exists() and not (boards / "rp2").exists()
    assert summary["frames"] >= 16 and summary["lines_lost"] == 0 and summary["error"] is None
    # Calibrated first, then a new exam: the exam's dose is the capture's.
    assert summary["calibration"]["detector_serial"] == "SIMDET-00000000"
    assert summary["calibration"]["defective_pixels"] > 0 and summary["warnings"] == []
    assert summary["dose_report"]["pulses"] == summary["frames"]
    stack = tifffile.imread(tmp_path / "demo-exam" / "frames.tif")
    assert stack.shape == (summary["frames"], 256, 256) and stack.dtype == "float32"
    with tifffile.TiffFile(tmp_path / "demo-exam" / "frames.tif") as tif:
        meta = json.loads(tif.imagej_metadata["Properties"]["pulseline.frames"])[0]
    assert meta["kv"] == pytest.approx(80, rel=0.01) and meta["air_kerma_ugy"] > 0
    # Corrected frames make valid DICOM too.
    for name in ("rf.dcm", "dose_sr.dcm"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "demo-exam" / name)], capture_output=True, text=True)
        assert not [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")], name
    # The simulated board is gone again.
    assert not list((tmp_path / ".pulseline").glob("*.json"))
