"""`make demo`: the main job end to end, on a simulated board.

Starts a simulated board, deploys the firmware to it with mpremote (as one
would to a Pico), resets it, calibrates the detector (dark and open-field frames), captures
a short exam of the default phantom with the calibration applied,
writes the files, says where they are and what they hold, and stops the
board. Every step is a command a user could type; each is printed first.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "demo"
EXAM = Path("demo-exam")


def run(cmd: list[str], cwd: Path | None = None) -> str:
    shown = " ".join(shlex.quote(c if not c.startswith(str(BIN)) else Path(c).name) for c in cmd)
    print(f"$ {shown}", flush=True)
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    out = (res.stdout + res.stderr).rstrip()
    if out:
        print(out, flush=True)
    if res.returncode != 0:
        raise SystemExit(f"demo: step failed with status {res.returncode}")
    return res.stdout


def main() -> int:
    t0 = time.monotonic()
    pulseline = str(BIN / "pulseline")
    mpremote = str(BIN / "mpremote")
    fs = Path(".pulseline") / f"{NAME}.fs"
    from pulseline.sim.board import BoardInUse, check_free

    try:
        check_free(NAME, fs)  # never the filesystem of a board still running
    except BoardInUse as exc:
        raise SystemExit(f"demo: {exc}") from None
    if fs.exists():
        shutil.rmtree(fs)  # a fresh board: nothing on its filesystem
    # The demo's calibrations stay with the demo, not in the user's data directory.
    os.environ.setdefault("PULSELINE_CALIBRATION_DIR", str(Path(".pulseline") / "calibration"))
    desc = json.loads(run([pulseline, "sim", "--detach", "--name", NAME, "--json"]))
    try:
        pty = desc["pty"]
        # What this board runs (no other board's folder), staged, then copied as one would to a Pico.
        from pulseline.targets.flash import copy_source

        firmware = Path(".pulseline") / f"{NAME}.firmware"
        if firmware.exists():
            shutil.rmtree(firmware)
        copy_source(firmware, "linux", ROOT / "firmware")
        run([mpremote, "connect", pty, "fs", "cp", "-r", "boot.py", "main.py", "pulsefw", ":"], cwd=firmware)
        run([mpremote, "connect", pty, "reset"])
        time.sleep(0.5)  # the board boots: boot.py, then main.py
        run([pulseline, "info", "--port", f"sim:{NAME}"])
        run([pulseline, "calibrate", "--port", f"sim:{NAME}"])
        run([pulseline, "exam", "--port", f"sim:{NAME}", "--new"])  # the patient's exam starts here
        run([pulseline, "capture", "--port", f"sim:{NAME}", "--frames", "16", "-o", str(EXAM)])
    finally:
        run([pulseline, "sim", "stop", "--name", NAME])
    summary = json.loads((EXAM / "summary.json").read_text())
    print(f"\nThe exam is in {EXAM.resolve()}:")
    print(f"  frames.tif    {summary['frames']} frames, {summary['detector']['pixels_per_line']} x "
          f"{summary['detector']['lines_per_frame']} pixels, corrected (float), an ImageJ stack: technique and "
          "dose of each frame in its slice label and properties (ImageJ/Fiji, tifffile)")
    print("  frames16.tif  the same stack in 16 bits as rf.dcm holds them, for viewers that open no float TIFF")
    print("  rf.dcm        the same frames as a DICOM X-Ray Radiofluoroscopic image (frame time, kV, mA, "
          "pulse width, PULSED, area dose product)")
    print("  dose_sr.dcm   the X-Ray Radiation Dose SR: one irradiation event per press, and the exam's totals")
    print("  last.png      the last image held, windowed for display")
    d = summary["dose_report"]
    print(f"  summary.json  technique, {summary['lines_lost']} lines lost, dose {d['kerma_mgy']:.3f} mGy "
          f"({d['pulses']} pulses), firmware {summary['firmware']}, link counters, events")
    print(f"demo done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
