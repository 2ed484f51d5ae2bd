"""The host checks every value, file and path before a board hears of it,
and says what is wrong in one line (SPEC 2.6): the cases once found to end
in a traceback, to reach the board, or to change it before being refused.
Run in process; the board is a fast in-process one that records what the
host sent it."""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from recording_board import RecordingBoard  # tests/

from pulseline import cli
from pulseline.exam.presets import BUILTIN, PresetError, _from_dict
from pulseline.link import evidence
from pulseline.link.protocol import wire
from pulseline.link.session import Session
from pulseline.link.streamgen import clean_stream, random_frames
from pulseline.sim.fastboard import FastBoard


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def refused(code: int, err: str, *needles: str) -> str:
    """Exit 2 and one line on stderr holding each needle; the line."""
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pulseline: error:"), (code, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def board():
    b = RecordingBoard()
    yield b
    b.board.close()


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e308", "1e999", "0", "-1", "86400.5", "ten"])
def test_capture_duration_is_finite_and_at_most_a_day(board, tmp_path, value):
    code, _, err = run("capture", f"--port={board.url}", f"--duration={value}", "-o", str(tmp_path / "x"))
    refused(code, err, "capture: argument --duration:", repr(value), "more than 0 and at most 86400 s")
    assert not board.sent and not (tmp_path / "x").exists()


@pytest.mark.parametrize("value", ["500", "nan", "inf", "-1", "100.5"])
def test_water_cm_out_of_range_changes_nothing_on_the_board(board, tmp_path, value):
    before = board.config()
    board.sent.clear()
    code, _, err = run("capture", f"--port={board.url}", "--kv", "70", "--ma", "5", f"--water-cm={value}",
                       "-o", str(tmp_path / "x"))
    refused(code, err, "--water-cm", repr(value), "0..100 cm")
    assert not board.sent  # no set_config: the technique is untouched
    assert board.config() == before


def test_water_cm_on_a_board_without_a_phantom_changes_nothing(board, tmp_path):
    before = board.config()
    board.sent.clear()
    code, _, err = run("capture", f"--port={board.url}", "--kv", "70", "--water-cm", "30", "-o", str(tmp_path / "x"))
    refused(code, err, "--water-cm sets the phantom of a simulated board")
    assert not board.sent and board.config() == before


@pytest.mark.parametrize("option, value, allowed", [
    ("--kv", "nan", "60..120 kV"), ("--kv", "150", "60..120 kV"), ("--ma", "inf", "1..80 mA"),
    ("--width", "1e999", "2..20 ms"), ("--pps", "10", "3.75, 7.5, 15 or 30 pps"), ("--filter", "nan", "0..1"),
    ("--frames", "0", "1..2592000"), ("--frames", "2.5", "whole number"), ("--series-number", "0", "1..99999"),
    ("--http-port", "65536", "0..65535"),
])
def test_technique_values_are_refused_before_the_board_hears_of_them(board, tmp_path, option, value, allowed):
    # json.dumps writes nan as NaN: the board once answered "arguments are not JSON", naming nothing
    code, _, err = run("capture", f"--port={board.url}", f"{option}={value}", "-o", str(tmp_path / "x"))
    refused(code, err, f"argument {option}:", repr(value), allowed)
    assert not board.sent


@pytest.mark.parametrize("option, value, why", [
    ("--patient-name", "A" * 65, "exceeds the maximum allowed length of 64"),
    ("--study-id", "1" * 17, "maximum length of 16 allowed for VR SH"),
    ("--institution", "\u674e", "outside Latin-1"), ("--accession", "a\\b", "must not hold backslashes"),
    ("--patient-age", "45", "is not a DICOM age"), ("--patient-age", "045y", "is not a DICOM age"),
    ("--indication", "x" * 65, "maximum length of 64 allowed for VR LO"), ("--patient-weight-kg", "0", "0.3..500"),
    ("--patient-size-m", "nan", "0.2..2.8"), ("--body-part", "KNEE", "invalid choice"),
    ("--patient-sex", "X", "invalid choice"),
])
def test_exam_identity_is_checked_before_the_board_hears_of_it(board, tmp_path, option, value, why):
    # The DICOM writer only warns, after the exposure, and stores a cut or mangled value.
    code, _, err = run("capture", f"--port={board.url}", f"{option}={value}", "-o", str(tmp_path / "x"))
    refused(code, err, option, why)
    assert not board.sent


def test_pulse_width_beyond_half_the_period_is_refused_on_the_host(board, tmp_path):
    code, _, err = run("capture", f"--port={board.url}", "--pps", "30", "--width", "20", "-o", str(tmp_path / "x"))
    refused(code, err, "20 ms is more than half the period at 30 pps")
    assert not board.sent


def test_calibrate_refuses_a_bad_kv_before_any_dark_frame(board, tmp_path):
    code, _, err = run("calibrate", f"--port={board.url}", "--kv", "200", "--dir", str(tmp_path))
    refused(code, err, "calibrate: argument --kv:", "'200'", "60..120 kV")
    assert "dark_frames" not in board.commands() and not board.sent


@pytest.mark.parametrize("option, value", [("--dark", "1"), ("--dark", "257"), ("--flat", "nan"),
                                           ("--width", "0"), ("--width", "inf")])
def test_calibrate_values_are_checked_on_the_host(board, tmp_path, option, value):
    code, _, err = run("calibrate", f"--port={board.url}", f"{option}={value}", "--dir", str(tmp_path))
    refused(code, err, f"argument {option}:", repr(value))
    assert not board.sent


def test_calibrate_checks_the_flat_technique_against_the_board_before_any_dark_frame(board, tmp_path):
    with Session(board.url) as s:
        s.configure(pulses_per_s=30.0, lines_per_frame=64)  # a 16.7 ms half period
    board.sent.clear()
    code, _, err = run("calibrate", f"--port={board.url}", "--width", "20", "--dir", str(tmp_path))
    refused(code, err, "20 ms at 30 pps", "half the pulse period")
    sent = board.commands()
    assert "hello" in sent and "dark_frames" not in sent and "set_config" not in sent


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_a_presets_file_with_infinite_values_is_one_line(board, tmp_path, value):
    f = tmp_path / "p.json"
    f.write_text('{"mine": {"pulses_per_s": 7.5, "pulse_width_ms": 8, "abc": false, "ma": 10, "kv": ' + value + "}}")
    code, _, err = run("presets", "--presets", str(f))
    refused(code, err, "preset 'mine': kv must be within 60..120, got")
    code, _, err = run("capture", f"--port={board.url}", "--presets", str(f), "--preset", "mine",
                       "-o", str(tmp_path / "x"))
    refused(code, err, "preset 'mine': kv")
    code, _, err = run("capture", f"--port={board.url}", "--presets", str(f), "-o", str(tmp_path / "x"))
    refused(code, err, "preset 'mine': kv")  # a bad file is said even when no preset is taken from it
    assert not board.sent


@pytest.mark.parametrize("setting, value, why", [
    ("pulses_per_s", 10, "must be one of 3.75, 7.5, 15, 30 pps"), ("pulse_width_ms", 25, "within 2..20"),
    ("pulse_width_ms", "8", "must be a number"), ("ma", 0, "within 1..80"), ("kv", True, "must be a number"),
    ("filter_alpha", 0, "more than 0 and at most 1"), ("filter_alpha", 1.5, "more than 0 and at most 1"),
    ("frames", 0, "within 1..2592000"), ("frames", 2.0, "a whole number"), ("duration_s", 0, "more than 0"),
    ("duration_s", 1e6, "at most 86400"), ("lines_per_frame", 8, "within 16..4096"),
    ("pixels_per_line", 10**400, "within 16..4096"), ("water_cm", 101, "within 0..100"),
    ("water_cm", -1e-9, "within 0..100"), ("abc", None, "true or false"), ("description", 5, "must be text"),
])
def test_every_preset_setting_is_checked(setting, value, why):
    raw = {"pulses_per_s": 7.5, "pulse_width_ms": 8, setting: value}
    with pytest.raises(PresetError, match=re.escape(f"f.json: preset 'p': {setting} ") + ".*" + re.escape(why)):
        _from_dict("p", raw, "f.json")


def test_the_builtin_presets_pass_the_checks():
    for name, p in BUILTIN.items():
        _from_dict(name, {k: v for k, v in p.as_dict().items() if k != "name"}, "builtin")


def test_a_presets_file_nested_too_deeply_is_one_line(tmp_path):
    f = tmp_path / "p.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    refused(*run("presets", "--presets", str(f))[::2], "nested too deeply")


def deep_transcript(path: Path, depth: int) -> bytes:
    body = b"[" * depth + b"]" * depth
    packets = [(evidence.TO_BOARD, wire.stuff(wire.encode(wire.PKT_COMMAND, 1, wire.command_payload(2, body)))),
               (evidence.TO_HOST, wire.encode(wire.PKT_RESPONSE, 0, struct.pack("<HB", 1, 0) + body))]
    with open(path, "wb") as fh:
        fh.write(evidence.MAGIC)
        for k, (direction, data) in enumerate(packets):
            fh.write(struct.pack("<BdI", direction, k * 0.1, len(data)) + data)
    return body


@pytest.mark.parametrize("depth", [40, 990, 20_000])
def test_a_transcript_with_deeply_nested_bodies_shows_them_raw(tmp_path, depth):
    body = deep_transcript(tmp_path / "t.bin", depth)
    code, out, err = run("transcript", str(tmp_path / "t.bin"))
    assert code == 0 and not err, err
    assert "get_config" in out and json.dumps(body.decode()) in out  # the body's text, as it came
    code, out, err = run("transcript", str(tmp_path / "t.bin"), "--json")
    assert code == 0 and not err, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["kind"] for r in rows] == ["command", "response"] and rows[1]["body"]["body"] == body.decode()


def test_a_shallow_body_is_still_decoded():
    assert evidence._json(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    assert evidence._json(b"not json") == "not json"


@pytest.mark.parametrize("kind", ["missing", "dir", "empty", "junk"])
def test_transcript_and_decode_of_odd_files(tmp_path, kind):
    path = {"missing": tmp_path / "nope.bin", "dir": tmp_path, "empty": tmp_path / "empty",
            "junk": tmp_path / "junk"}[kind]
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk").write_bytes(b"\xa5ZPL" * 100)  # sync words, no packet
    code, _, err = run("transcript", str(path))
    refused(code, err, str(path))
    code, out, err = run("decode", str(path))
    if kind in ("missing", "dir"):
        refused(code, err, f"cannot read {path}")
    else:  # bytes with no frame in them: nothing decoded, and said so
        assert code == 0 and not err and out.startswith("0 frames"), (out, err)


def test_an_empty_transcript_is_no_packets(tmp_path):
    (tmp_path / "t.bin").write_bytes(evidence.MAGIC)
    assert run("transcript", str(tmp_path / "t.bin")) == (0, "", "")


@pytest.fixture
def spots(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    return tmp_path


@pytest.mark.parametrize("where, why", [("file", "file is not a directory"), ("file/x", "file is not a directory")])
def test_capture_and_calibrate_output_that_cannot_be_written_sends_nothing(board, spots, where, why):
    code, _, err = run("capture", f"--port={board.url}", "-o", str(spots / where))
    refused(code, err, f"cannot write to {spots / where}", why)
    code, _, err = run("calibrate", f"--port={board.url}", "--dir", str(spots / where))
    refused(code, err, f"cannot write to {spots / where}", why)
    assert not board.sent


@pytest.mark.parametrize("where, why", [("dir", "it is a directory"), ("missing/f.npy", "missing does not exist"),
                                        ("file/f.npy", "file is not a directory")])
def test_decode_output_that_cannot_be_written_is_said_first(spots, where, why):
    frames = random_frames(np.random.default_rng(5), 2, 4, 6, wire.FMT_MONO12P)
    (spots / "s.bin").write_bytes(clean_stream(frames, wire.FMT_MONO12P))
    code, _, err = run("decode", str(spots / "s.bin"), "--pixels", "6", "--lines", "4", "-o", str(spots / where))
    refused(code, err, f"{spots / where}", why)


def test_decode_writes_the_file_named(tmp_path):
    frames = random_frames(np.random.default_rng(5), 2, 4, 6, wire.FMT_MONO12P)
    (tmp_path / "s.bin").write_bytes(clean_stream(frames, wire.FMT_MONO12P))
    code, out, err = run("decode", str(tmp_path / "s.bin"), "--pixels", "6", "--lines", "4", "-o",
                         str(tmp_path / "frames"))
    assert code == 0 and not err and f"frames written to {tmp_path / 'frames'}" in out
    assert (np.load(tmp_path / "frames") == np.stack(frames)).all()  # that name, no .npy added


@pytest.mark.parametrize("argv, needles", [
    (["capture", "--port", "x"], ["capture: the following arguments are required: -o/--output",
                                  "(see: pulseline capture --help)"]),
    (["capture", "--port", "x", "-o", "y", "--frames", "3", "--duration", "1"],
     ["capture: argument --duration: not allowed with argument --frames"]),
    (["capture", "--port", "x", "-o", "y", "--kvv", "70"], ["unrecognized arguments: --kvv 70"]),
    (["capture", "--port", "x", "-o", "y", "--kv"], ["capture: argument --kv: expected one argument"]),
    (["sim", "explode"], ["sim: argument action: invalid choice: 'explode'", "(see: pulseline sim --help)"]),
    (["nosuch"], ["argument command: invalid choice: 'nosuch'", "(see: pulseline --help)"]),
    ([], ["the following arguments are required: command"]),
    (["decode", "s.bin", "--format", "rgb"], ["decode: argument --format: invalid choice: 'rgb'"]),
    (["monitor", "--port", "x", "--duration", "-inf"], ["monitor: argument --duration: expected one argument"]),
])
def test_usage_errors_are_one_line(argv, needles):
    code, out, err = run(*argv)
    refused(code, err, *needles)
    assert not out


def test_help_still_exits_0():
    code, out, err = run("capture", "--help")
    assert code == 0 and "--water-cm" in out and not err


def test_a_capture_ends_the_exposure_itself_when_the_switch_is_never_released():
    """An operator still on the pedal when the frames asked for are in (or a
    simulated switch that nobody releases): the capture disarms the board,
    which stops emission at once, instead of collecting frames for ever."""
    from pulseline.exam.capture import capture
    from pulseline.plant import Plant, PlantConfig, Timeline

    board = FastBoard(Plant(PlantConfig(seed=1), Timeline().add(200_000, "switch", True)), pixels=False)
    try:
        with Session(board.url) as s:
            s.configure(pixels_per_line=64, lines_per_frame=64)
            cap = capture(s, 5)  # no release: the switch stays held
            assert cap.error is None and 5 <= len(cap.frames) <= 7
            assert s.status()["state"] == "IDLE"
            fired = len(board.plant.pulses)
            s.sleep(2.0)
            assert len(board.plant.pulses) == fired and board.plant.status(board.now_us)["switch"]
            assert cap.dose_report["pulses"] == fired
    finally:
        board.close()


def test_the_rem_identity_options_reach_the_exam_identity():
    args = cli.build_parser().parse_args([
        "capture", "--port", "socket://127.0.0.1:9", "-o", "x", "--patient-age", "045Y", "--patient-sex", "F",
        "--patient-size-m", "1.72", "--patient-weight-kg", "71", "--body-part", "CHEST", "--indication", "Chest pain"])
    ident = cli._identity(args)
    assert (ident.patient_age, ident.patient_sex, ident.body_part, ident.indication) == ("045Y", "F", "CHEST",
                                                                                         "Chest pain")
    assert ident.patient_size_m == pytest.approx(1.72) and ident.patient_weight_kg == pytest.approx(71.0)
