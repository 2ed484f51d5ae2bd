"""C-STORE of an exam to a real PACS: Debian's Orthanc, started by the test
on free ports with a throwaway store, queried back over its REST API."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid

from pulseline.exam.dicom_rdsr import RDSR_STORAGE, write_rdsr
from pulseline.exam.dicom_rf import RF_IMAGE_STORAGE, Identity, new_dataset, write_rf
from pulseline.exam.pacs import PacsError, parse_destination, send
from pulseline.targets.flash import copy_source

ORTHANC_AET = "ORTHANC"
LOOPBACK = "127.0.0.1"


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    log: Path

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=10) as r:
            body: bytes = r.read()
            return body

    def json(self, path: str, data: bytes | None = None) -> Any:
        if data is None:
            return json.loads(self.get(path))
        req = urllib.request.Request(f"http://{LOOPBACK}:{self.http_port}{path}", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def instance_id(self, sop_instance_uid: str) -> str:
        found = [m for m in self.json("/tools/lookup", sop_instance_uid.encode()) if m["Type"] == "Instance"]
        assert len(found) == 1, f"Orthanc holds no instance {sop_instance_uid}"
        return str(found[0]["ID"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _tail(log: Path, lines: int = 8) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    exe = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        pytest.fail("the Orthanc executable is missing (Debian package orthanc): run scripts/system-deps.sh as root")
    # Orthanc 1.10 has no bind address: it listens on all interfaces. The HTTP
    # side answers loopback only (RemoteAccessAllowed false); the DICOM side
    # stores only from the PULSELINE AE at 127.0.0.1 (a known modality, with
    # its host checked) and only when called as ORTHANC.
    for _attempt in range(3):  # a free port can be taken before Orthanc binds it
        home = tmp_path_factory.mktemp("orthanc")
        dicom_port, http_port = free_port(), free_port()
        if dicom_port == http_port:
            continue
        config = {
            "Name": "pulseline-test",
            "StorageDirectory": str(home / "db"),
            "IndexDirectory": str(home / "db"),
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "HttpServerEnabled": True,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": True,
            "DicomScpTimeout": 10,
            "UnknownSopClassAccepted": False,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"pulseline": ["PULSELINE", LOOPBACK, 104]},
        }
        cfg = home / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        log = home / "orthanc.log"
        with open(home / "stderr.txt", "wb") as err:
            proc = subprocess.Popen([exe, f"--logfile={log}", "--no-jobs", str(cfg)], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=subprocess.STDOUT, cwd=home)
        server = Orthanc(dicom_port, http_port, log)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if _answers(f"http://{LOOPBACK}:{http_port}/system"):
                break
            time.sleep(0.05)
        else:
            proc.kill()
            proc.wait()
            if time.monotonic() < deadline:
                continue  # it exited (a port was taken): try other ports
            pytest.fail(f"Orthanc did not answer within 20 s; the end of its log {log}:\n{_tail(log)}")
        try:
            yield server
        finally:
            # The store is throwaway: SIGKILL (a clean stop takes Orthanc ~3 s).
            proc.kill()
            proc.wait()
        return
    pytest.fail(f"Orthanc would not start on free ports; the end of its last log {log}:\n{_tail(log)}")


def _dose_report(pulses: int) -> dict[str, Any]:
    """A dose report with the keys the firmware's dose_report gives."""
    event = {"kind": "event", "exam": 1, "event": 1, "final": True, "start_us": 1_000_000,
             "end_us": 1_000_000 + round(pulses / 7.5 * 1e6), "pulses": pulses, "capped_pulses": 0, "kv": 80.0,
             "ma": 2.0, "pulse_width_ms": 10.0, "pulses_per_s": 7.5, "hlc": False, "kerma_ugy": 31.5,
             "kap_ugy_m2": 0.71, "total_kerma_ugy": 31.5, "total_kap_ugy_m2": 0.71, "total_pulses": pulses,
             "fluoro_s": 1, "fluoro_us": 400_000}
    return {"exam": 1, "kerma_mgy": 0.0315, "kap_gy_cm2": 0.0071, "fluoro_min": 0.0, "fluoro_s": 1,
            "pulses": pulses, "events_total": 1, "events": [event]}


@dataclass
class Exam:
    rf_path: Path
    sr_path: Path
    rf: FileDataset
    sr: FileDataset
    pixels: np.ndarray[Any, np.dtype[np.uint16]]


@pytest.fixture
def exam(tmp_path: Path) -> Exam:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4096, size=(3, 24, 40), dtype=np.uint16)  # 12-bit detector
    ident = Identity(patient_id="PULSELINE-PACS-TEST")
    rf_path, sr_path = tmp_path / "rf.dcm", tmp_path / "dose_sr.dcm"
    rf = write_rf(rf_path, pixels, bits_stored=12, pulses_per_s=7.5, kv=80.0, ma=2.0, pulse_width_ms=10.0,
                  kap_dgy_cm2=0.071, firmware="test", identity=ident)
    sr = write_rdsr(sr_path, _dose_report(3), identity=ident, firmware="test")
    return Exam(rf_path, sr_path, rf, sr, pixels)


def test_an_exam_is_stored_in_orthanc_and_reads_back(orthanc: Orthanc, exam: Exam) -> None:
    results = send([exam.rf_path, exam.sr_path], LOOPBACK, orthanc.dicom_port, called_ae=ORTHANC_AET)
    assert [(r.path, r.status, r.ok) for r in results] == [(exam.rf_path, 0, True), (exam.sr_path, 0, True)]
    assert [r.sop_instance_uid for r in results] == [exam.rf.SOPInstanceUID, exam.sr.SOPInstanceUID]

    rf_id = orthanc.instance_id(exam.rf.SOPInstanceUID)
    tags = orthanc.json(f"/instances/{rf_id}/simplified-tags")
    assert tags["SOPInstanceUID"] == exam.rf.SOPInstanceUID and tags["SOPClassUID"] == RF_IMAGE_STORAGE
    assert tags["Modality"] == "RF" and int(tags["NumberOfFrames"]) == exam.pixels.shape[0]
    assert tags["StudyInstanceUID"] == exam.rf.StudyInstanceUID
    assert orthanc.json(f"/instances/{rf_id}/frames") == list(range(exam.pixels.shape[0]))
    stored = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{rf_id}/file")))
    assert stored.file_meta.TransferSyntaxUID == exam.rf.file_meta.TransferSyntaxUID
    assert np.array_equal(stored.pixel_array, exam.pixels)

    sr_id = orthanc.instance_id(exam.sr.SOPInstanceUID)
    tags = orthanc.json(f"/instances/{sr_id}/simplified-tags")
    assert tags["SOPInstanceUID"] == exam.sr.SOPInstanceUID and tags["SOPClassUID"] == RDSR_STORAGE
    assert tags["Modality"] == "SR" and tags["StudyInstanceUID"] == exam.rf.StudyInstanceUID
    stored_sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{sr_id}/file")))
    assert stored_sr.ContentSequence == exam.sr.ContentSequence
    # One study of two series: the image and its dose report.
    study = orthanc.json(f"/instances/{rf_id}/study")
    assert len(study["Series"]) == 2


def test_a_store_the_pacs_refuses_names_the_file_and_status(orthanc: Orthanc, exam: Exam, tmp_path: Path) -> None:
    # Orthanc fails the store of an instance with no Study Instance UID (0xA700).
    # (A Lua ReceivedInstanceFilter would not do: Orthanc 1.10 answers Success
    # to a C-STORE it filters out, and stores nothing.)
    refused = tmp_path / "no-study.dcm"
    ds = pydicom.dcmread(exam.sr_path)
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(refused, enforce_file_format=True)
    with pytest.raises(PacsError) as e:
        send([refused, exam.rf_path], LOOPBACK, orthanc.dicom_port, called_ae=ORTHANC_AET)
    msg = str(e.value)
    assert re.fullmatch(rf"the PACS at {LOOPBACK}:{orthanc.dicom_port} refused {re.escape(str(refused))}: "
                        r"status 0x[0-9A-F]{4} \(Failure\)", msg), msg
    # Every file was offered: the refused one failed, the other was stored.
    assert [(r.path, r.ok) for r in e.value.results] == [(refused, False), (exam.rf_path, True)]
    assert f"0x{e.value.results[0].status:04X}" in msg
    assert not orthanc.json("/tools/lookup", ds.SOPInstanceUID.encode())
    orthanc.instance_id(exam.rf.SOPInstanceUID)


def test_orthanc_refuses_an_unknown_calling_or_called_ae(orthanc: Orthanc, exam: Exam) -> None:
    with pytest.raises(PacsError, match=r"rejected the association") as e:
        send([exam.rf_path], LOOPBACK, orthanc.dicom_port, called_ae=ORTHANC_AET, calling_ae="STRANGER")
    assert "\n" not in str(e.value) and "STRANGER" in str(e.value)
    with pytest.raises(PacsError, match=r"rejected the association"):
        send([exam.rf_path], LOOPBACK, orthanc.dicom_port, called_ae="NOT-ORTHANC")


def test_a_sop_class_the_pacs_does_not_know_is_named(orthanc: Orthanc, exam: Exam, tmp_path: Path) -> None:
    odd = tmp_path / "odd.dcm"
    ds = new_dataset(odd, generate_uid(), Identity(), dt.datetime.now(), modality="OT", series_number=9)
    ds.save_as(odd, enforce_file_format=True)
    with pytest.raises(PacsError, match=r"accepted none of the presentation contexts"):
        send([odd], LOOPBACK, orthanc.dicom_port, called_ae=ORTHANC_AET)
    # With the exam alongside, the association stands but nothing is sent.
    with pytest.raises(PacsError, match=r"does not accept .*odd\.dcm") as e:
        send([exam.rf_path, odd], LOOPBACK, orthanc.dicom_port, called_ae=ORTHANC_AET)
    assert e.value.results == []
    assert not orthanc.json("/tools/lookup", exam.rf.SOPInstanceUID.encode())


def test_no_pacs_listening_is_one_clear_line(capfd: pytest.CaptureFixture[str], exam: Exam) -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(PacsError) as e:
        send([exam.rf_path, exam.sr_path], LOOPBACK, port, timeout_s=5)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert msg.startswith(f"no PACS answers at {LOOPBACK}:{port} (connection refused") and "\n" not in msg
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # pynetdicom's log stays quiet


@pytest.mark.parametrize("title", ["", "   ", "A" * 17, "BAD\\AE", "TAB\tAE", "ÄRZTE"])
@pytest.mark.parametrize("role", ["called", "calling"])
def test_an_invalid_ae_title_is_refused_before_connecting(exam: Exam, role: str, title: str) -> None:
    port = free_port()  # nothing listens: an AE title error must come first
    with pytest.raises(PacsError, match=rf"^invalid {role} AE title ") as e:
        if role == "called":
            send([exam.rf_path], LOOPBACK, port, called_ae=title)
        else:
            send([exam.rf_path], LOOPBACK, port, calling_ae=title)
    assert "\n" not in str(e.value)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "not-dicom.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(PacsError, match=r"cannot read DICOM file .*not-dicom\.dcm"):
        send([bad], LOOPBACK, free_port())
    with pytest.raises(PacsError, match=r"cannot read DICOM file .*missing\.dcm"):
        send([tmp_path / "missing.dcm"], LOOPBACK, free_port())


@pytest.mark.parametrize(("text", "want"), [
    ("pacs.local:104", ("pacs.local", 104)),
    ("127.0.0.1:4242", ("127.0.0.1", 4242)),
    ("[::1]:11112", ("::1", 11112)),
    (" localhost:65535 ", ("localhost", 65535)),
])
def test_parse_destination(text: str, want: tuple[str, int]) -> None:
    assert parse_destination(text) == want


@pytest.mark.parametrize(("text", "why"), [
    ("pacs.local", "port is missing"),
    ("", "port is missing"),
    (":104", "host is empty"),
    ("[]:104", "host is empty"),
    ("pacs:", "1 to 65535"),
    ("pacs:0", "1 to 65535"),
    ("pacs:65536", "1 to 65535"),
    ("pacs:-1", "1 to 65535"),
    ("pacs:1e3", "1 to 65535"),
    ("pacs:104x", "1 to 65535"),
])
def test_parse_destination_refuses_bad_input(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"^bad PACS destination ") as e:
        parse_destination(text)
    assert why in str(e.value) and "\n" not in str(e.value)


# -- acceptance 1, end to end: capture on a simulated board, write, validate, --send -----


def _dciodvfy_errors(path: Path) -> list[str]:
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.micropython
def test_capture_writes_valid_exam_files_and_sends_them_to_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    import sys

    import tifffile

    from pulseline.sim.board import SimBoard

    root = Path(__file__).resolve().parents[1]
    fs = tmp_path / "fs"
    copy_source(fs, "linux", root / "firmware")
    out = tmp_path / "exam"
    pulseline = str(Path(sys.executable).parent / "pulseline")
    env = {**__import__("os").environ, "PULSELINE_CALIBRATION_DIR": str(tmp_path / "cal")}
    with SimBoard(fs, name="ttyACM7", state_dir=tmp_path / ".pulseline", seed=9) as board:
        res = subprocess.run(
            [pulseline, "capture", "--port", board.pty_path, "--preset", "qa-80kv", "--frames", "6", "-o", str(out),
             "--patient-name", "PHANTOM^WATER", "--patient-id", "QA-20CM", "--accession", "A123",
             "--study-description", "QA run", "--series-description", "qa-80kv", "--send",
             f"{LOOPBACK}:{orthanc.dicom_port}", "--called-ae", ORTHANC_AET, "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    assert summary["pacs"]["stored"] == 2 and "error" not in summary["pacs"]
    assert summary["board_serial"] == "SIM-00000009" and len(summary["firmware_hash"]) == 64
    assert summary["calibration"] is None and "no calibration" in summary["warnings"][0]
    rf, sr = pydicom.dcmread(out / "rf.dcm"), pydicom.dcmread(out / "dose_sr.dcm")
    # Valid per dciodvfy, and what was written reads back.
    assert _dciodvfy_errors(out / "rf.dcm") == [] and _dciodvfy_errors(out / "dose_sr.dcm") == []
    assert rf.SOPClassUID == RF_IMAGE_STORAGE and sr.SOPClassUID == RDSR_STORAGE
    assert str(rf.PatientName) == "PHANTOM^WATER" and rf.PatientID == "QA-20CM" and rf.AccessionNumber == "A123"
    assert rf.StudyInstanceUID == sr.StudyInstanceUID and rf.DeviceSerialNumber == "SIM-00000009"
    assert sr.DeviceSerialNumber == "SIM-00000009"
    assert rf.NumberOfFrames == summary["frames"] >= 6 and rf.BitsStored == 12
    assert float(rf.FrameTime) == pytest.approx(1000 / 7.5, abs=1e-3) and rf.RadiationMode == "PULSED"
    assert float(rf.KVP) == pytest.approx(80, rel=0.02) and float(rf.AveragePulseWidth) == pytest.approx(10)
    stack = tifffile.imread(out / "frames.tif")
    np.testing.assert_array_equal(rf.pixel_array, stack)  # raw frames: the same pixels in both
    with tifffile.TiffFile(out / "frames.tif") as tif:
        per_frame = json.loads(tif.imagej_metadata["Properties"]["pulseline.frames"])
        labels = tif.imagej_metadata["Labels"]
    assert len(per_frame) == len(labels) == summary["frames"] and "kV" in labels[0]
    assert sum(f["air_kerma_ugy"] for f in per_frame) == pytest.approx(summary["kerma_ugy_from_trailers"])

    # The dose SR: its accumulated totals are the sum of its events.
    def nums(item: Any, meaning: str) -> list[float]:
        found = []
        for it in item.get("ContentSequence", []):
            if it.ConceptNameCodeSequence[0].CodeMeaning == meaning and it.ValueType == "NUM":
                found.append(float(it.MeasuredValueSequence[0].NumericValue))
            found += nums(it, meaning) if it.ValueType == "CONTAINER" else []
        return found

    events = [it for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeMeaning ==
              "Irradiation Event X-Ray Data"]
    acc = next(it for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeMeaning ==
               "Accumulated X-Ray Dose Data")
    assert len(events) == summary["dose_report"]["events_total"] >= 1
    assert sum(nums(e, "Dose Area Product")[0] for e in events) == pytest.approx(
        nums(acc, "Dose Area Product Total")[0], rel=1e-6)
    assert sum(nums(e, "Dose (RP)")[0] for e in events) == pytest.approx(nums(acc, "Dose (RP) Total")[0], rel=1e-6)
    # Orthanc has both, with our identifiers and the same pixels.
    for ds in (rf, sr):
        oid = orthanc.instance_id(ds.SOPInstanceUID)
        tags = orthanc.json(f"/instances/{oid}/simplified-tags")
        assert tags["PatientID"] == "QA-20CM" and tags["StudyInstanceUID"] == rf.StudyInstanceUID
    stored = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{orthanc.instance_id(rf.SOPInstanceUID)}/file")))
    np.testing.assert_array_equal(stored.pixel_array, rf.pixel_array)
