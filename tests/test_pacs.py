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

from pulseline.dicom_rdsr import RDSR_STORAGE, write_rdsr
from pulseline.dicom_rf import RF_IMAGE_STORAGE, Identity, new_dataset, write_rf
from pulseline.pacs import PacsError, parse_destination, send

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
