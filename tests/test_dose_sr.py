"""The dose SR against PS3.16, row by row (sr_templates), and against the
tools nobody here wrote: DCMTK's dsrdump and dicom3tools' dciodvfy (also
with the IHE REM profile). Each defect a dose-monitoring importer found is
put back into a good report, and the walk must catch it."""

from __future__ import annotations

import copy
import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pulseline.exam import sr_templates as T
from pulseline.exam.dicom_rdsr import ImageRef, irradiations, write_rdsr
from pulseline.exam.dicom_rf import Identity, write_rf

SERIAL = "PL-TEST-0001"
BOARD_NOW_US = 60_000_000


def _event(n: int, start_us: int, pulses: int, pps: float = 7.5, width_ms: float = 10.0) -> dict[str, Any]:
    """An event record as the firmware's journal holds it: the press from
    start_us, its first pulse 3 ms later, its last pulse's trailing edge
    (pulses - 1) periods and a width after that, the release 120 ms on."""
    first = start_us + 3_000
    last_end = first + round((pulses - 1) * 1e6 / pps) + round(width_ms * 1000)
    return {"kind": "event", "exam": 1, "event": n, "final": True, "start_us": start_us, "end_us": last_end + 120_000,
            "pulse_start_us": first, "pulse_end_us": last_end, "pulses": pulses, "capped_pulses": 0,
            "kv": 80.0, "ma": 20.0, "pulse_width_ms": width_ms, "pulses_per_s": pps, "hlc": False,
            "kerma_ugy": 39.2 * pulses, "kap_ugy_m2": 0.41 * pulses}


def _report() -> dict[str, Any]:
    events = [_event(1, 10_000_000, 12), _event(2, 30_000_000, 5)]
    return {"exam": 1, "board_us": BOARD_NOW_US, "host_time": "2026-12-06T10:00:00+01:00",
            "kerma_mgy": sum(e["kerma_ugy"] for e in events) / 1000, "pulses": 17, "events_total": 2,
            "events": events}


REM_IDENTITY = dict(patient_age="045Y", patient_size_m=1.72, patient_weight_kg=71.0, patient_sex="F",
                    protocol_name="abdomen 7.5 pps")


@pytest.fixture
def exam(tmp_path: Path) -> tuple[Path, Path, Dataset, Dataset]:
    ident = Identity(**REM_IDENTITY)
    report = _report()
    events = irradiations(report, SERIAL)
    pixels = np.random.default_rng(3).integers(100, 4000, size=(5, 32, 32), dtype=np.uint16)
    rf_path, sr_path = tmp_path / "rf.dcm", tmp_path / "dose_sr.dcm"
    rf = write_rf(rf_path, pixels, bits_stored=12, pulses_per_s=7.5, kv=80, ma=20, pulse_width_ms=10,
                  kap_dgy_cm2=0.2, firmware="test", identity=ident, device_serial=SERIAL,
                  event_uids=[events[1].uid], acquired=events[1].start)
    sr = write_rdsr(sr_path, report, identity=ident, firmware="test", device_serial=SERIAL,
                    images={events[1].uid: ImageRef.of(rf)})
    return rf_path, sr_path, rf, sr


def _tool(*argv: str) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True)
    return out.stdout + out.stderr


def _problems(text: str, *prefixes: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefixes)]


def test_the_report_is_the_template_row_by_row(exam: Any) -> None:
    _, sr_path, _, _ = exam
    assert T.walk(pydicom.dcmread(sr_path)) == []


def test_dcmtk_and_dicom3tools_find_no_error(exam: Any) -> None:
    rf_path, sr_path, _, _ = exam
    assert _problems(_tool("dsrdump", str(sr_path)), "E:", "F:", "W:") == []
    assert _problems(_tool("dciodvfy", str(sr_path)), "Error") == []
    assert _problems(_tool("dciodvfy", "-profile", "IHEREM", str(sr_path)), "Error") == []
    # The image: no error and no warning.
    assert _problems(_tool("dciodvfy", str(rf_path)), "Error", "Warning") == []


def _num(container: Any, concept: T.Code) -> float:
    for it in container.ContentSequence:
        if it.ConceptNameCodeSequence[0].CodeValue == concept.value:
            return float(it.MeasuredValueSequence[0].NumericValue)
    raise KeyError(concept)


def _containers(sr: Dataset, concept: T.Code) -> list[Any]:
    return [it for it in sr.ContentSequence if it.ValueType == "CONTAINER"
            and it.ConceptNameCodeSequence[0].CodeValue == concept.value]


def _item(container: Any, concept: T.Code) -> Any:
    return next(it for it in container.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == concept.value)


def test_totals_are_the_sums_of_the_events_and_times_the_pulses(exam: Any) -> None:
    _, _, rf, sr = exam
    (acc,) = _containers(sr, T.ACCUMULATED_XRAY_DOSE_DATA)
    events = _containers(sr, T.IRRADIATION_EVENT_XRAY_DATA)
    assert len(events) == 2
    for total, part in ((T.DAP_TOTAL, T.DOSE_AREA_PRODUCT), (T.FLUORO_DAP_TOTAL, T.DOSE_AREA_PRODUCT),
                        (T.DOSE_RP_TOTAL, T.DOSE_RP), (T.FLUORO_DOSE_RP_TOTAL, T.DOSE_RP),
                        (T.TOTAL_FLUORO_TIME, T.IRRADIATION_DURATION)):
        assert _num(acc, total) == pytest.approx(sum(_num(e, part) for e in events), rel=1e-6), total
    report = _report()
    host_time = dt.datetime.fromisoformat(report["host_time"])
    starts = []
    for e, rec in zip(events, report["events"], strict=True):
        # The irradiation duration is the pulse span (PS3.17), not the switch time.
        span_s = (rec["pulse_end_us"] - rec["pulse_start_us"]) / 1e6
        assert _num(e, T.IRRADIATION_DURATION) == pytest.approx(span_s, abs=1e-6)
        assert _num(e, T.EXPOSURE_TIME) == pytest.approx(rec["pulses"] * rec["pulse_width_ms"])
        started = dt.datetime.strptime(_item(e, T.DATETIME_STARTED).DateTime, "%Y%m%d%H%M%S.%f")
        expect = (host_time - dt.timedelta(microseconds=BOARD_NOW_US - rec["pulse_start_us"])).astimezone()
        assert started == expect.replace(tzinfo=None)
        starts.append(started)
    assert starts[1] - starts[0] == dt.timedelta(microseconds=20_000_000)
    assert sr.TimezoneOffsetFromUTC == rf.TimezoneOffsetFromUTC == dt.datetime.now().astimezone().strftime("%z")
    # The image's run is the second event, and the report says so.
    uids = [_item(e, T.IRRADIATION_EVENT_UID).UID for e in events]
    assert list(np.atleast_1d(rf.IrradiationEventUID)) == [uids[1]]
    ref = _item(events[1], T.ACQUIRED_IMAGE).ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == rf.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == rf.SeriesInstanceUID
    # UIDs under the 2.25 root, never pydicom's example root.
    for uid in (rf.SOPInstanceUID, sr.SOPInstanceUID, rf.StudyInstanceUID, uids[0],
                rf.file_meta.ImplementationClassUID):
        assert uid.startswith("2.25."), uid


def test_the_image_carries_its_geometry_window_and_rate(exam: Any) -> None:
    _, _, rf, _ = exam
    assert [float(v) for v in rf.ImagerPixelSpacing] == [0.4, 0.4]
    assert float(rf.DistanceSourceToDetector) == 1000.0 and float(rf.DistanceSourceToPatient) == 750.0
    assert float(rf.EstimatedRadiographicMagnificationFactor) == pytest.approx(1000 / 750, rel=1e-5)
    assert 100 < float(rf.WindowCenter) < 4000 and float(rf.WindowWidth) > 1000
    assert "Laterality" not in rf and list(rf.PatientOrientation) == ["L", "F"]
    assert float(rf.FrameTime) == pytest.approx(1000 / 7.5, abs=1e-3)
    assert "CineRate" not in rf and "RecommendedDisplayFrameRate" not in rf  # never 7.5 rounded to 8
    assert rf.BodyPartExamined == "ABDOMEN" and rf.StudyDescription and rf.SeriesDescription
    assert rf.ProtocolName == "abdomen 7.5 pps"


# -- each defect found, put back: the walk catches it ------------------------------
def _root_item(sr: Dataset, concept: T.Code) -> Any:
    return next(it for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == concept.value)


def _nest_totals(sr: Dataset) -> None:  # 1: totals in a second 113702 container
    (acc,) = _containers(sr, T.ACCUMULATED_XRAY_DOSE_DATA)
    inner = copy.deepcopy(acc)
    inner.RelationshipType = "CONTAINS"
    inner.ContentSequence = [it for it in acc.ContentSequence if it.ValueType == "NUM"]
    acc.ContentSequence = [it for it in acc.ContentSequence if it.ValueType != "NUM"] + [inner]


def _drop(concept: T.Code, where: T.Code | None = None) -> Callable[[Dataset], None]:
    def broken(sr: Dataset) -> None:
        for parent in ([sr] if where is None else _containers(sr, where)):
            parent.ContentSequence = [it for it in parent.ContentSequence
                                      if it.ConceptNameCodeSequence[0].CodeValue != concept.value]
            for it in parent.ContentSequence:  # (Has Intent sits under Procedure reported)
                if "ContentSequence" in it and it.ValueType != "CONTAINER":
                    it.ContentSequence = [c for c in it.ContentSequence
                                          if c.ConceptNameCodeSequence[0].CodeValue != concept.value]
    return broken


def _relationship(concept: T.Code, rel: str, where: T.Code | None = None) -> Callable[[Dataset], None]:
    def broken(sr: Dataset) -> None:
        for parent in ([sr] if where is None else _containers(sr, where)):
            for it in parent.ContentSequence:
                if it.ConceptNameCodeSequence[0].CodeValue == concept.value:
                    it.RelationshipType = rel
    return broken


def _units(concept: T.Code, unit: tuple[str, str, str]) -> Callable[[Dataset], None]:
    def broken(sr: Dataset) -> None:
        for parent in _containers(sr, T.IRRADIATION_EVENT_XRAY_DATA) + _containers(sr, T.ACCUMULATED_XRAY_DOSE_DATA):
            for it in parent.ContentSequence:
                if it.ConceptNameCodeSequence[0].CodeValue == concept.value:
                    u = it.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
                    u.CodeValue, u.CodingSchemeDesignator, u.CodeMeaning = unit
    return broken


def _ct_times(sr: Dataset) -> None:  # 9: the CT template's start/end at the root
    for code, meaning in (("113809", "Start of X-Ray Irradiation"), ("113810", "End of X-Ray Irradiation")):
        d = Dataset()
        d.RelationshipType, d.ValueType, d.DateTime = "HAS OBS CONTEXT", "DATETIME", "20261206100000"
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = code, "DCM", meaning
        d.ConceptNameCodeSequence = [c]
        sr.ContentSequence.append(d)


DEFECTS: dict[str, tuple[Callable[[Dataset], None], tuple[str, ...]]] = {
    "1 nested totals container": (_nest_totals, ("Accumulated X-Ray Dose Data", "not in the template")),
    "2 no Source of Dose Information": (_drop(T.SOURCE_OF_DOSE_INFORMATION), ("missing TID 10001 row 18",)),
    "3a Scope of Accumulation CONTAINS": (_relationship(T.SCOPE_OF_ACCUMULATION, "CONTAINS"),
                                          ("relationship CONTAINS, TID 10001 row 6", "requires HAS OBS CONTEXT")),
    "3b Acquisition Plane CONTAINS": (_relationship(T.ACQUISITION_PLANE, "CONTAINS", T.IRRADIATION_EVENT_XRAY_DATA),
                                      ("TID 10003 row 2", "requires HAS CONCEPT MOD")),
    "4 no Has Intent": (_drop(T.HAS_INTENT), ("missing TID 10001 row 3",)),
    "5 no Target Region": (_drop(T.TARGET_REGION, T.IRRADIATION_EVENT_XRAY_DATA), ("missing TID 10003 row 17",)),
    "6 no Fluoro Mode": (_drop(T.FLUORO_MODE, T.IRRADIATION_EVENT_XRAY_DATA),
                         ("Pulse Rate: present where its condition does not hold",)),
    "7 no Exposure Time": (_drop(T.EXPOSURE_TIME, T.IRRADIATION_EVENT_XRAY_DATA), ("missing TID 10003B row 11",)),
    "8 pulses in {pulses}": (_units(T.NUMBER_OF_PULSES, ("{pulses}", "UCUM", "pulses")),
                             ("Number of Pulses", 'requires (1, UCUM, "no units")')),
    "9 CT start and end at the root": (_ct_times, ("Start of X-Ray Irradiation ('113809', 'DCM')",
                                                   "not in the template")),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_the_walk_catches_each_defect_found(exam: Any, defect: str) -> None:
    _, sr_path, _, _ = exam
    sr = pydicom.dcmread(sr_path)
    breaks, expect = DEFECTS[defect]
    breaks(sr)
    errors = T.walk(sr)
    assert any(all(part in e for part in expect) for e in errors), errors


def test_every_item_written_comes_from_a_row_of_its_template() -> None:
    # The tables themselves: an INCLUDE names a table, value sets and units are where they belong.
    for tid, rows in T.TEMPLATES.items():
        for row in rows:
            if row.include:
                assert row.include in T.TEMPLATES, (tid, row)
            else:
                assert row.concepts, (tid, row)
            assert (row.units is not None) == (row.vtype == "NUM"), (tid, row)
            assert row.req in ("M", "MC", "U", "UC") and (row.req != "MC" or row.when is not None), (tid, row)
