"""DICOM X-Ray Radiation Dose SR (TID 10001) of an exam, from the board's
dose report: one irradiation event (TID 10003) per switch press, and the
accumulated totals (TID 10002 with 10004 and 10007), which are the sums of
the events. Every content item is made from its row in sr_templates, so the
tree is the template's, and sr_templates.walk checks it.

Times are the board's: an event starts with its first pulse and ends with
its last pulse's trailing edge (PS3.17: the irradiation duration), placed
on the host's clock through the board time the report was made at.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from .. import __version__
from . import sr_templates as T
from .dicom_rf import MANUFACTURER, PROCEDURE_CODE, Identity, dicom_datetime, new_dataset, new_uid
from .exams import pulse_span

RDSR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.67")


# -- content items, each from its template row ------------------------------------
def _row(tid: str, concept: T.Code) -> T.Row:
    for row in T.TEMPLATES[tid]:
        if concept in row.concepts:
            return row
    raise KeyError(f"{concept} is not in TID {tid}")


def _code(c: T.Code) -> Dataset:
    d = Dataset()
    d.CodeValue, d.CodingSchemeDesignator, d.CodeMeaning = c.value, c.scheme, c.meaning
    return d


def _item(tid: str, concept: T.Code, rel: str | None = None) -> Dataset:
    row = _row(tid, concept)
    d = Dataset()
    d.RelationshipType = rel or row.rel
    d.ValueType = row.vtype
    d.ConceptNameCodeSequence = Sequence([_code(concept)])
    return d


def code(tid: str, concept: T.Code, value: T.Code, rel: str | None = None) -> Dataset:
    d = _item(tid, concept, rel)
    d.ConceptCodeSequence = Sequence([_code(value)])
    return d


def num(tid: str, concept: T.Code, value: float) -> Dataset:
    row = _row(tid, concept)
    d = _item(tid, concept)
    m = Dataset()
    m.NumericValue = f"{value:.9g}"
    assert row.units is not None, row
    m.MeasurementUnitsCodeSequence = Sequence([_code(row.units)])
    d.MeasuredValueSequence = Sequence([m])
    return d


def uidref(tid: str, concept: T.Code, uid: str, rel: str | None = None) -> Dataset:
    d = _item(tid, concept, rel)
    d.UID = uid
    return d


def text(tid: str, concept: T.Code, value: str, rel: str | None = None) -> Dataset:
    d = _item(tid, concept, rel)
    d.TextValue = value
    return d


def datetime_item(tid: str, concept: T.Code, when: dt.datetime) -> Dataset:
    d = _item(tid, concept)
    d.DateTime = dicom_datetime(when)
    return d


def container(tid: str, concept: T.Code, children: list[Dataset], rel: str | None = None) -> Dataset:
    d = _item(tid, concept, rel)
    d.ContinuityOfContent = "SEPARATE"
    d.ContentSequence = Sequence(children)
    return d


def image(tid: str, concept: T.Code, ref_image: Any) -> Dataset:
    d = _item(tid, concept)
    ref = Dataset()
    ref.ReferencedSOPClassUID = ref_image.sop_class
    ref.ReferencedSOPInstanceUID = ref_image.sop_instance
    d.ReferencedSOPSequence = Sequence([ref])
    return d


# -- the exam's events and times --------------------------------------------------
def event_uid(device_serial: str, exam: Any, event: Any, start_us: Any) -> UID:
    """An irradiation event's UID: the same in the image and the report,
    however often either is written."""
    return new_uid("irradiation event", str(device_serial or "UNKNOWN"), str(exam), str(event), str(start_us))


@dataclass(frozen=True, order=True)
class ImageRef:
    """An image of the exam: what the report references."""

    sop_class: str
    sop_instance: str
    series_uid: str

    @classmethod
    def of(cls, ds: Any) -> ImageRef:
        return cls(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))


@dataclass
class Irradiation:
    """One irradiation event of the report, with its times on the host's clock."""

    record: dict[str, Any]
    uid: str
    start: dt.datetime
    end: dt.datetime

    @property
    def duration_s(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


def board_clock(report: dict[str, Any], fallback: dt.datetime) -> Any:
    """board µs -> aware datetime: through the board time the report was
    made at (`board_us`) and the host's time it came at (`host_time`)."""
    made = report.get("host_time")
    at = dt.datetime.fromisoformat(made) if isinstance(made, str) else fallback
    at = at if at.tzinfo is not None else at.astimezone()
    now_us = report.get("board_us")

    def place(us: Any) -> dt.datetime:
        if not isinstance(now_us, int) or not isinstance(us, int) or us > now_us:
            return at  # (a report from before this was recorded: its time is unknown)
        return at - dt.timedelta(microseconds=now_us - us)

    return place


def irradiations(report: dict[str, Any], device_serial: str, when: dt.datetime | None = None) -> list[Irradiation]:
    """The report's events that delivered pulses, each with its UID and its
    pulse span on the host's clock."""
    place = board_clock(report, when or dt.datetime.now().astimezone())
    out = []
    for e in report.get("events", []):
        if e.get("pulses", 0) <= 0:
            continue
        start_us, end_us = pulse_span(e) or (None, None)
        out.append(Irradiation(e, event_uid(device_serial, e.get("exam"), e.get("event"), e.get("start_us")),
                               place(start_us), place(end_us)))
    return out


# -- the report --------------------------------------------------------------------
def _observer_context(serial: str) -> list[Dataset]:
    """TID 1002 with TID 1004: the device is the observer."""
    return [
        code("1002", T.OBSERVER_TYPE, T.DEVICE),
        uidref("1004", T.DEVICE_OBSERVER_UID, new_uid("pulseline device", serial)),
        text("1004", T.DEVICE_OBSERVER_NAME, "pulseline"),
        text("1004", T.DEVICE_OBSERVER_MANUFACTURER, MANUFACTURER),
        text("1004", T.DEVICE_OBSERVER_MODEL_NAME, "pulseline"),
        text("1004", T.DEVICE_OBSERVER_SERIAL_NUMBER, serial),
    ]


def _accumulated(events: list[Irradiation]) -> Dataset:
    """TID 10002, with TID 10004 and TID 10007 in its container."""
    kap_gy_m2 = sum(e.record["kap_ugy_m2"] for e in events) * 1e-6
    kerma_gy = sum(e.record["kerma_ugy"] for e in events) * 1e-6
    fluoro_s = sum(e.duration_s for e in events)
    return container("10002", T.ACCUMULATED_XRAY_DOSE_DATA, [
        code("10002", T.ACQUISITION_PLANE, T.SINGLE_PLANE),
        num("10004", T.FLUORO_DAP_TOTAL, kap_gy_m2),
        num("10004", T.FLUORO_DOSE_RP_TOTAL, kerma_gy),
        num("10004", T.TOTAL_FLUORO_TIME, fluoro_s),
        num("10004", T.ACQUISITION_DAP_TOTAL, 0.0),  # no acquisition (radiographic) runs: fluoroscopy only
        num("10004", T.ACQUISITION_DOSE_RP_TOTAL, 0.0),
        num("10004", T.TOTAL_ACQUISITION_TIME, 0.0),
        num("10007", T.DAP_TOTAL, kap_gy_m2),
        num("10007", T.DOSE_RP_TOTAL, kerma_gy),
        num("10007", T.TOTAL_RADIOGRAPHIC_FRAMES, 0),
        code("10007", T.REFERENCE_POINT_DEFINITION, T.RP_15CM_FROM_ISOCENTER),
    ])


def _event(e: Irradiation, target: T.Code, protocol: str, images: list[ImageRef]) -> Dataset:
    """TID 10003 with TID 10003B: one press of the switch."""
    r = e.record
    pulses = int(r["pulses"])
    items = [
        code("10003", T.ACQUISITION_PLANE, T.SINGLE_PLANE),
        uidref("10003", T.IRRADIATION_EVENT_UID, e.uid),
        datetime_item("10003", T.DATETIME_STARTED, e.start),
        code("10003", T.IRRADIATION_EVENT_TYPE, T.FLUOROSCOPY),
    ]
    if protocol:
        items.append(text("10003", T.ACQUISITION_PROTOCOL, protocol))
    items += [
        code("10003", T.TARGET_REGION, target),
        num("10003", T.DOSE_AREA_PRODUCT, r["kap_ugy_m2"] * 1e-6),
        *(image("10003", T.ACQUIRED_IMAGE, ref) for ref in images),
        num("10003B", T.DOSE_RP, r["kerma_ugy"] * 1e-6),
        code("10003B", T.REFERENCE_POINT_DEFINITION, T.RP_15CM_FROM_ISOCENTER),
        code("10003B", T.FLUORO_MODE, T.PULSED),
        num("10003B", T.PULSE_RATE, float(r["pulses_per_s"])),
        num("10003B", T.NUMBER_OF_PULSES, pulses),
        num("10003B", T.IRRADIATION_DURATION, e.duration_s),
        num("10003B", T.AVERAGE_XRAY_TUBE_CURRENT, float(r["ma"])),
        num("10003B", T.EXPOSURE_TIME, pulses * float(r["pulse_width_ms"])),
        num("10003B", T.KVP, float(r["kv"])),
        num("10003B", T.XRAY_TUBE_CURRENT, float(r["ma"])),
        num("10003B", T.PULSE_WIDTH, float(r["pulse_width_ms"])),
    ]
    return container("10003", T.IRRADIATION_EVENT_XRAY_DATA, items)


def write_rdsr(path: Path, report: dict[str, Any], *, identity: Identity, firmware: str,
               when: dt.datetime | None = None, device_serial: str = "",
               images: dict[str, ImageRef] | None = None) -> FileDataset:
    """The dose SR of an exam; `report` is the board's dose_report (with
    the host's time it came at, `host_time`). `images` maps an irradiation
    event's UID to the (SOP class, SOP instance) of the image its frames are
    in: referenced from the event, and as the report's evidence."""
    when = (when or dt.datetime.now()).astimezone()
    serial = device_serial or "UNKNOWN"
    events = irradiations(report, serial, when)
    ds = new_dataset(path, RDSR_STORAGE, identity, when, modality="SR", series_number=identity.series_number + 100,
                     device_serial=serial, series_description="Radiation Dose Report")
    ds.SoftwareVersions = [f"host {__version__}", f"firmware {firmware}"]
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code(T.XRAY_RADIATION_DOSE_REPORT)])
    ds.ContinuityOfContent = "SEPARATE"
    tmpl = Dataset()
    tmpl.MappingResource = "DCMR"
    tmpl.TemplateIdentifier = "10001"
    ds.ContentTemplateSequence = Sequence([tmpl])
    ds.PerformedProcedureCodeSequence = Sequence([_code(T.Code(*PROCEDURE_CODE))])
    images = images or {}
    referenced = sorted(set(images.values()))
    if referenced:
        # SR Document General: the instances the report references, by series.
        study = Dataset()
        study.StudyInstanceUID = identity.study_uid
        study.ReferencedSeriesSequence = Sequence()
        for series_uid in sorted({r.series_uid for r in referenced}):
            series = Dataset()
            series.SeriesInstanceUID = series_uid
            series.ReferencedSOPSequence = Sequence()
            for ref in (r for r in referenced if r.series_uid == series_uid):
                item = Dataset()
                item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref.sop_class, ref.sop_instance
                series.ReferencedSOPSequence.append(item)
            study.ReferencedSeriesSequence.append(series)
        ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    procedure = code("10001", T.PROCEDURE_REPORTED, T.PROJECTION_XRAY)
    procedure.ContentSequence = Sequence([code("10001", T.HAS_INTENT, T.DIAGNOSTIC_INTENT)])
    scope = code("10001", T.SCOPE_OF_ACCUMULATION, T.STUDY)
    scope.ContentSequence = Sequence([uidref("10001", T.STUDY_INSTANCE_UID, identity.study_uid)])
    target = T.ANATOMIC_REGIONS[identity.body_part]
    ds.ContentSequence = Sequence([
        procedure,
        *_observer_context(serial),
        code("10001", T.ACQUISITION_DEVICE_TYPE, T.FLUORO_GUIDED_SYSTEM),
        scope,
        _accumulated(events),
        *(_event(e, target, identity.protocol_name, [images[e.uid]] if e.uid in images else []) for e in events),
        code("10001", T.SOURCE_OF_DOSE_INFORMATION, T.AUTOMATED_DATA_COLLECTION),
    ])
    ds.save_as(path, enforce_file_format=True)
    return ds
