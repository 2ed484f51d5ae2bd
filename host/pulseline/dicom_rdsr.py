"""DICOM X-Ray Radiation Dose SR (TID 10001) of an exam, from the board's
dose report: one irradiation event (TID 10003) per switch press, and the
accumulated totals (TID 10002/10004), which are the sums of the events.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from . import __version__
from .dicom_rf import MANUFACTURER, Identity, new_dataset

RDSR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.67")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _item(rel: str, vtype: str, name: Dataset) -> Dataset:
    d = Dataset()
    d.RelationshipType = rel
    d.ValueType = vtype
    d.ConceptNameCodeSequence = Sequence([name])
    return d


def _code_item(rel: str, name: Dataset, value: Dataset) -> Dataset:
    d = _item(rel, "CODE", name)
    d.ConceptCodeSequence = Sequence([value])
    return d


def _num(rel: str, name: Dataset, value: float, unit: Dataset) -> Dataset:
    d = _item(rel, "NUM", name)
    m = Dataset()
    m.NumericValue = f"{value:.9g}"
    m.MeasurementUnitsCodeSequence = Sequence([unit])
    d.MeasuredValueSequence = Sequence([m])
    return d


def _container(rel: str, name: Dataset, children: list[Dataset]) -> Dataset:
    d = _item(rel, "CONTAINER", name)
    d.ContinuityOfContent = "SEPARATE"
    d.ContentSequence = Sequence(children)
    return d


GY = _code("Gy", "UCUM", "Gy")
GYM2 = _code("Gy.m2", "UCUM", "Gy.m2")
SEC = _code("s", "UCUM", "s")
KV = _code("kV", "UCUM", "kV")
MA = _code("mA", "UCUM", "mA")
MS = _code("ms", "UCUM", "ms")
PULSE_PER_S = _code("{pulse}/s", "UCUM", "pulse/s")
PULSES = _code("{pulses}", "UCUM", "pulses")
REF_POINT = _code("113860", "DCM", "15cm from Isocenter toward Source")
SINGLE_PLANE = _code("113622", "DCM", "Single Plane")
FLUOROSCOPY = _code("44491008", "SCT", "Fluoroscopy")


def _event(e: dict[str, Any], start: dt.datetime) -> Dataset:
    pulses = int(e["pulses"])
    dur_s = max(0.0, (e["end_us"] - e["start_us"]) / 1e6)
    return _container("CONTAINS", _code("113706", "DCM", "Irradiation Event X-Ray Data"), [
        _code_item("CONTAINS", _code("113764", "DCM", "Acquisition Plane"), SINGLE_PLANE),
        _uid_item("CONTAINS", _code("113769", "DCM", "Irradiation Event UID"), generate_uid()),
        _datetime_item("CONTAINS", _code("111526", "DCM", "DateTime Started"), start),
        _code_item("CONTAINS", _code("113721", "DCM", "Irradiation Event Type"), FLUOROSCOPY),
        _num("CONTAINS", _code("122130", "DCM", "Dose Area Product"), e["kap_ugy_m2"] * 1e-6, GYM2),
        _num("CONTAINS", _code("113738", "DCM", "Dose (RP)"), e["kerma_ugy"] * 1e-6, GY),
        _code_item("CONTAINS", _code("113780", "DCM", "Reference Point Definition"), REF_POINT),
        _num("CONTAINS", _code("113742", "DCM", "Irradiation Duration"), dur_s, SEC),
        _num("CONTAINS", _code("113791", "DCM", "Pulse Rate"), float(e["pulses_per_s"]), PULSE_PER_S),
        _num("CONTAINS", _code("113768", "DCM", "Number of Pulses"), pulses, PULSES),
        _num("CONTAINS", _code("113733", "DCM", "KVP"), float(e["kv"]), KV),
        _num("CONTAINS", _code("113734", "DCM", "X-Ray Tube Current"), float(e["ma"]), MA),
        _num("CONTAINS", _code("113793", "DCM", "Pulse Width"), float(e["pulse_width_ms"]), MS),
    ])


def _uid_item(rel: str, name: Dataset, uid: str) -> Dataset:
    d = _item(rel, "UIDREF", name)
    d.UID = uid
    return d


def _text_item(rel: str, name: Dataset, text: str) -> Dataset:
    d = _item(rel, "TEXT", name)
    d.TextValue = text
    return d


def _datetime_item(rel: str, name: Dataset, when: dt.datetime) -> Dataset:
    d = _item(rel, "DATETIME", name)
    d.DateTime = when.strftime("%Y%m%d%H%M%S")
    return d


def write_rdsr(path: Path, report: dict[str, Any], *, identity: Identity, firmware: str,
               when: dt.datetime | None = None, device_serial: str = "") -> FileDataset:
    """The dose SR of an exam; `report` is the board's dose_report."""
    when = when or dt.datetime.now()
    events = [e for e in report.get("events", []) if e.get("pulses", 0) > 0]
    ds = new_dataset(path, RDSR_STORAGE, identity, when, modality="SR", series_number=identity.series_number + 100,
                     device_serial=device_serial or "UNKNOWN")
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    serial = device_serial or "UNKNOWN"
    ds.SoftwareVersions = [f"host {__version__}", f"firmware {firmware}"]
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = date, time
    ds.PerformedProcedureCodeSequence = Sequence([])
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("113701", "DCM", "X-Ray Radiation Dose Report")])
    ds.ContinuityOfContent = "SEPARATE"
    tmpl = Dataset()
    tmpl.MappingResource = "DCMR"
    tmpl.TemplateIdentifier = "10001"
    ds.ContentTemplateSequence = Sequence([tmpl])
    total_kap = sum(e["kap_ugy_m2"] for e in events) * 1e-6
    total_kerma = sum(e["kerma_ugy"] for e in events) * 1e-6
    fluoro_s = sum(max(0.0, (e["end_us"] - e["start_us"]) / 1e6) for e in events)
    accumulated = _container("CONTAINS", _code("113702", "DCM", "Accumulated X-Ray Dose Data"), [
        _code_item("CONTAINS", _code("113764", "DCM", "Acquisition Plane"), SINGLE_PLANE),
        _container("CONTAINS", _code("113702", "DCM", "Accumulated X-Ray Dose Data"), [
            _num("CONTAINS", _code("113722", "DCM", "Dose Area Product Total"), total_kap, GYM2),
            _num("CONTAINS", _code("113725", "DCM", "Dose (RP) Total"), total_kerma, GY),
            _num("CONTAINS", _code("113726", "DCM", "Fluoro Dose Area Product Total"), total_kap, GYM2),
            _num("CONTAINS", _code("113728", "DCM", "Fluoro Dose (RP) Total"), total_kerma, GY),
            _num("CONTAINS", _code("113730", "DCM", "Total Fluoro Time"), fluoro_s, SEC),
            _num("CONTAINS", _code("113727", "DCM", "Acquisition Dose Area Product Total"), 0.0, GYM2),
            _num("CONTAINS", _code("113729", "DCM", "Acquisition Dose (RP) Total"), 0.0, GY),
            _num("CONTAINS", _code("113855", "DCM", "Total Acquisition Time"), 0.0, SEC),
            _num("CONTAINS", _code("113731", "DCM", "Total Number of Radiographic Frames"), 0, PULSES),
            _code_item("CONTAINS", _code("113780", "DCM", "Reference Point Definition"), REF_POINT),
        ]),
    ])
    scope = _code_item("CONTAINS", _code("113705", "DCM", "Scope of Accumulation"), _code("113014", "DCM", "Study"))
    scope.ContentSequence = Sequence(
        [_uid_item("HAS PROPERTIES", _code("110180", "DCM", "Study Instance UID"), identity.study_uid)])
    ds.ContentSequence = Sequence([
        _code_item("HAS CONCEPT MOD", _code("121058", "DCM", "Procedure reported"),
                   _code("113704", "DCM", "Projection X-Ray")),
        _code_item("HAS OBS CONTEXT", _code("121005", "DCM", "Observer Type"), _code("121007", "DCM", "Device")),
        # One device, one observer UID: derived from its serial number.
        _uid_item("HAS OBS CONTEXT", _code("121012", "DCM", "Device Observer UID"),
                  generate_uid(entropy_srcs=["pulseline device", serial])),
        _text_item("HAS OBS CONTEXT", _code("121014", "DCM", "Device Observer Manufacturer"), MANUFACTURER),
        _text_item("HAS OBS CONTEXT", _code("121015", "DCM", "Device Observer Model Name"), "pulseline"),
        _text_item("HAS OBS CONTEXT", _code("121016", "DCM", "Device Observer Serial Number"), serial),
        _datetime_item("HAS OBS CONTEXT", _code("113809", "DCM", "Start of X-Ray Irradiation"), when),
        _datetime_item("HAS OBS CONTEXT", _code("113810", "DCM", "End of X-Ray Irradiation"), when),
        scope,
        accumulated,
        *(_event(e, when) for e in events),
    ])
    ds.save_as(path, enforce_file_format=True)
    return ds
