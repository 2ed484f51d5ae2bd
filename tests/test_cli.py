"""The pulseline command: clear one-line errors, real output."""

import json
import subprocess
import sys

import numpy as np

from pulseline.link.protocol import wire
from pulseline.link.streamgen import clean_stream, random_frames


def run(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pulseline.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_version_names_the_crc_backend():
    res = run("version", "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["protocol"] == wire.PROTOCOL_VERSION


def test_decode_writes_the_frames(tmp_path):
    frames = random_frames(np.random.default_rng(5), 3, 4, 6, wire.FMT_MONO12P)
    stream = clean_stream(frames, wire.FMT_MONO12P)
    src = tmp_path / "s.bin"
    src.write_bytes(b"\x00garbage" + stream)
    res = run("decode", str(src), "--pixels", "6", "--lines", "4", "-o", str(tmp_path / "f.npy"), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["frames"] == 3 and summary["counters"]["bytes_skipped"] > 0
    assert (np.load(tmp_path / "f.npy")[2] == frames[2]).all()


def test_bad_input_is_one_line_and_non_zero(tmp_path):
    for args in (["decode", str(tmp_path / "missing.bin")],
                 ["decode", str(tmp_path), "--pixels", "0"]):
        res = run(*args)
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("pulseline: error:")


def test_board_commands_fail_with_one_clear_line(tmp_path):
    for args in (["capture", "--port", str(tmp_path / "ttyNOPE"), "--frames", "3", "-o", str(tmp_path / "x")],
                 ["info", "--port", "sim"],
                 ["info", "--port", "sim:ttyACM7"],
                 ["sim", "press"],
                 ["sim", "--link", "usb-xs", "--detach"],
                 ["sim", "--faults", "drop=7", "--detach"],
                 ["sim", "set", "door_closed"]):
        res = run(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("pulseline: error:"), (args, res.stderr)
    assert not (tmp_path / "x").exists()


def test_ports_lists_simulated_boards(tmp_path):
    from pulseline.sim.board import SimBoard

    with SimBoard(tmp_path / "fs", name="ttyACM5", state_dir=tmp_path / ".pulseline") as b:
        res = run("ports", "--json", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        sims = json.loads(res.stdout)["simulated"]
        assert {"port": "sim:ttyACM5", "device": b.pty_path, "url": b.url, "link": "usb-fs",
                "usb_cdc": str(b.device) if b.device else None} in sims
        assert str(b.device) not in [r["port"] for r in json.loads(res.stdout)["serial"]]
        assert "sim:ttyACM5" in run("ports", cwd=tmp_path).stdout


def test_every_command_has_examples_and_json_output():
    from pulseline.cli import EXAMPLES, build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == set(EXAMPLES)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "examples:" in text and f"pulseline {name}" in text, name
        assert "--json" in text, name
    assert "pulseline calibrate" in parser.format_help()  # the top level lists every example


def test_presets_are_listed_and_loadable(tmp_path):
    res = run("presets", "--json")
    presets = json.loads(res.stdout)
    assert {"fluoro-low", "fluoro-normal", "cardiac", "paediatric", "qa-80kv"} <= set(presets)
    mine = tmp_path / "p.json"
    mine.write_text(json.dumps({"fluoro-low": {"pulses_per_s": 3.75, "pulse_width_ms": 6, "duration_s": 2},
                                "phantom-qa": {"pulses_per_s": 7.5, "pulse_width_ms": 10, "abc": False, "kv": 70,
                                               "ma": 10, "frames": 4}}))
    text = run("presets", "--presets", str(mine)).stdout
    assert "phantom-qa      7.5 pps 10 ms, 70 kV 10 mA" in text and "fluoro-low      3.75 pps 6 ms" in text
