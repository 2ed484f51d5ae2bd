"""The templates of an X-Ray Radiation Dose SR, transcribed from DICOM PS3.16
as tables: TID 10001 and the templates it includes, one row per content
item, as the standard prints them (nesting level, relationship with the
parent, value type, concept name, VM, requirement, condition, value set or
units). The writer (dicom_rdsr) builds its tree from these rows, and `walk`
checks any dose SR against them, so that what is written and what is checked
read like PS3.16 and cannot drift apart.

Rows of a template that this writer never fills (calibration, person and
device participants, mammography and cassette totals, mechanical data and
the like) are left out: an item for one of them is reported as not in the
template, which is what a report of ours must never hold. Value sets are
the members of their context groups that a pulsed fluoroscope uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str

    def key(self) -> tuple[str, str]:
        return (self.value, self.scheme)

    def __str__(self) -> str:
        return f'({self.value}, {self.scheme}, "{self.meaning}")'


def dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


def sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def ucum(value: str, meaning: str) -> Code:
    return Code(value, "UCUM", meaning)


# -- concepts ------------------------------------------------------------------
XRAY_RADIATION_DOSE_REPORT = dcm("113701", "X-Ray Radiation Dose Report")
PROCEDURE_REPORTED = dcm("121058", "Procedure reported")
PROJECTION_XRAY = dcm("113704", "Projection X-Ray")
HAS_INTENT = sct("363703001", "Has Intent")
DIAGNOSTIC_INTENT = sct("261004008", "Diagnostic Intent")
ACQUISITION_DEVICE_TYPE = dcm("122142", "Acquisition Device Type")
FLUORO_GUIDED_SYSTEM = dcm("113957", "Fluoroscopy-Guided Projection Radiography System")
SCOPE_OF_ACCUMULATION = dcm("113705", "Scope of Accumulation")
STUDY = dcm("113014", "Study")
PERFORMED_PROCEDURE_STEP = dcm("113016", "Performed Procedure Step")
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
PPS_SOP_INSTANCE_UID = dcm("121126", "Performed Procedure Step SOP Instance UID")
SOURCE_OF_DOSE_INFORMATION = dcm("113854", "Source of Dose Information")
AUTOMATED_DATA_COLLECTION = dcm("113856", "Automated Data Collection")
COMMENT = dcm("121106", "Comment")

OBSERVER_TYPE = dcm("121005", "Observer Type")
DEVICE = dcm("121007", "Device")
DEVICE_OBSERVER_UID = dcm("121012", "Device Observer UID")
DEVICE_OBSERVER_NAME = dcm("121013", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = dcm("121014", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL_NAME = dcm("121015", "Device Observer Model Name")
DEVICE_OBSERVER_SERIAL_NUMBER = dcm("121016", "Device Observer Serial Number")

ACCUMULATED_XRAY_DOSE_DATA = dcm("113702", "Accumulated X-Ray Dose Data")
ACQUISITION_PLANE = dcm("113764", "Acquisition Plane")
SINGLE_PLANE = dcm("113622", "Single Plane")
FLUORO_DAP_TOTAL = dcm("113726", "Fluoro Dose Area Product Total")
FLUORO_DOSE_RP_TOTAL = dcm("113728", "Fluoro Dose (RP) Total")
TOTAL_FLUORO_TIME = dcm("113730", "Total Fluoro Time")
ACQUISITION_DAP_TOTAL = dcm("113727", "Acquisition Dose Area Product Total")
ACQUISITION_DOSE_RP_TOTAL = dcm("113729", "Acquisition Dose (RP) Total")
TOTAL_ACQUISITION_TIME = dcm("113855", "Total Acquisition Time")
DAP_TOTAL = dcm("113722", "Dose Area Product Total")
DOSE_RP_TOTAL = dcm("113725", "Dose (RP) Total")
TOTAL_RADIOGRAPHIC_FRAMES = dcm("113731", "Total Number of Radiographic Frames")
REFERENCE_POINT_DEFINITION = dcm("113780", "Reference Point Definition")
RP_15CM_FROM_ISOCENTER = dcm("113860", "15cm from Isocenter toward Source")

IRRADIATION_EVENT_XRAY_DATA = dcm("113706", "Irradiation Event X-Ray Data")
IRRADIATION_EVENT_UID = dcm("113769", "Irradiation Event UID")
DATETIME_STARTED = dcm("111526", "DateTime Started")
IRRADIATION_EVENT_TYPE = dcm("113721", "Irradiation Event Type")
FLUOROSCOPY = sct("44491008", "Fluoroscopy")
ACQUISITION_PROTOCOL = dcm("125203", "Acquisition Protocol")
TARGET_REGION = dcm("123014", "Target Region")
DOSE_AREA_PRODUCT = dcm("122130", "Dose Area Product")
ACQUIRED_IMAGE = dcm("113795", "Acquired Image")
DOSE_RP = dcm("113738", "Dose (RP)")
FLUORO_MODE = dcm("113732", "Fluoro Mode")
PULSED = dcm("113631", "Pulsed")
CONTINUOUS = dcm("113630", "Continuous")
PULSE_RATE = dcm("113791", "Pulse Rate")
NUMBER_OF_PULSES = dcm("113768", "Number of Pulses")
IRRADIATION_DURATION = dcm("113742", "Irradiation Duration")
AVERAGE_XRAY_TUBE_CURRENT = dcm("113767", "Average X-Ray Tube Current")
EXPOSURE_TIME = dcm("113824", "Exposure Time")
EXPOSURE = dcm("113736", "Exposure")
KVP = dcm("113733", "KVP")
XRAY_TUBE_CURRENT = dcm("113734", "X-Ray Tube Current")
PULSE_WIDTH = dcm("113793", "Pulse Width")

# CID 4031 Common Anatomic Regions: those a fluoroscopy run may target.
ANATOMIC_REGIONS = {
    "ABDOMEN": sct("818981001", "Abdomen"),
    "CHEST": sct("816094009", "Chest"),
    "PELVIS": sct("816092008", "Pelvis"),
    "HEAD": sct("69536005", "Head"),
    "NECK": sct("45048000", "Neck"),
    "WHOLEBODY": sct("38266002", "Entire body"),
}

# -- units ---------------------------------------------------------------------
GY = ucum("Gy", "Gy")
GY_M2 = ucum("Gy.m2", "Gy.m2")
SECONDS = ucum("s", "s")
MS = ucum("ms", "ms")
KV = ucum("kV", "kV")
MA = ucum("mA", "mA")
PULSE_PER_S = ucum("{pulse}/s", "pulse/s")
NO_UNITS = ucum("1", "no units")


# -- the tables ----------------------------------------------------------------
Context = Any  # the items of the container a row's item would sit in (see Siblings)
Condition = Callable[["Siblings"], bool]


@dataclass(frozen=True)
class Row:
    """One row of a template. `nl` is its nesting level in the template
    (the number of '>'), `concepts` the concept names it allows (one, or a
    context group's members), `values` the codes a CODE item may hold,
    `units` a NUM item's unit. `req` is M, MC, U or UC; for MC and UC the
    condition `when` says whether the item is required (MC) or allowed
    (IFF conditions, `iff=True`: present only when it holds). An INCLUDE row
    names its template in `include`."""

    row: int
    nl: int
    rel: str | None
    vtype: str
    concepts: tuple[Code, ...] = ()
    vm: str = "1"
    req: str = "M"
    condition: str = ""
    when: Condition | None = None
    iff: bool = False
    values: tuple[Code, ...] = ()
    units: Code | None = None
    include: str | None = None

    @property
    def concept(self) -> Code:
        return self.concepts[0]

    def max_count(self) -> int | None:
        return None if self.vm.endswith("n") else int(self.vm.split("-")[-1])

    def label(self, tid: str) -> str:
        what = f"INCLUDE TID {self.include}" if self.include else f"{self.vtype} {self.concepts[0]}"
        return f"TID {tid} row {self.row} ({what})"


class Siblings:
    """The items of one container, for the rows' conditions."""

    def __init__(self, items: Sequence[Any]):
        self.items = list(items)

    def find(self, concept: Code) -> Any | None:
        for it in self.items:
            if _name(it) == concept.key():
                return it
        return None

    def has(self, concept: Code) -> bool:
        return self.find(concept) is not None

    def code(self, concept: Code) -> tuple[str, str] | None:
        it = self.find(concept)
        if it is None or "ConceptCodeSequence" not in it or not it.ConceptCodeSequence:
            return None
        c = it.ConceptCodeSequence[0]
        return (str(c.CodeValue), str(c.CodingSchemeDesignator))


def _fluoro_pulsed(s: Siblings) -> bool:
    return s.code(FLUORO_MODE) == PULSED.key()


TEMPLATES: dict[str, tuple[Row, ...]] = {
    # TID 10001 Projection X-Ray Radiation Dose
    "10001": (
        Row(1, 0, None, "CONTAINER", (XRAY_RADIATION_DOSE_REPORT,)),
        Row(2, 1, "HAS CONCEPT MOD", "CODE", (PROCEDURE_REPORTED,), values=(PROJECTION_XRAY,)),
        Row(3, 2, "HAS CONCEPT MOD", "CODE", (HAS_INTENT,), values=(DIAGNOSTIC_INTENT,)),  # DCID 3629
        Row(4, 1, None, "INCLUDE", vm="1-n", include="1002"),
        Row(5, 1, "HAS OBS CONTEXT", "CODE", (ACQUISITION_DEVICE_TYPE,), req="U",
            values=(FLUORO_GUIDED_SYSTEM,)),  # DCID 10032
        Row(6, 1, "HAS OBS CONTEXT", "CODE", (SCOPE_OF_ACCUMULATION,),
            values=(STUDY, PERFORMED_PROCEDURE_STEP)),  # DCID 10000
        Row(7, 2, "HAS PROPERTIES", "UIDREF", (STUDY_INSTANCE_UID, PPS_SOP_INSTANCE_UID)),  # DCID 10001
        Row(8, 1, "CONTAINS", "INCLUDE", vm="1-2", include="10002"),
        Row(9, 1, "CONTAINS", "INCLUDE", vm="1-n", req="MC", include="10003",
            condition="IFF dose data for individual irradiation events is available",
            when=lambda s: s.has(IRRADIATION_EVENT_XRAY_DATA), iff=True),
        Row(10, 1, "CONTAINS", "TEXT", (COMMENT,), req="U"),
        Row(18, 1, "CONTAINS", "CODE", (SOURCE_OF_DOSE_INFORMATION,), vm="1-n",
            values=(AUTOMATED_DATA_COLLECTION,)),  # DCID 10021
    ),
    # TID 1002 Observer Context (the observer here is the device)
    "1002": (
        Row(1, 0, "HAS OBS CONTEXT", "CODE", (OBSERVER_TYPE,), req="MC",
            condition="IF the observer is a device", when=lambda s: True, values=(DEVICE,)),
        Row(3, 0, "HAS OBS CONTEXT", "INCLUDE", req="MC", include="1004",
            condition="IF Observer Type is Device", when=lambda s: s.code(OBSERVER_TYPE) == DEVICE.key()),
    ),
    # TID 1004 Device Observer Identifying Attributes
    "1004": (
        Row(1, 0, "HAS OBS CONTEXT", "UIDREF", (DEVICE_OBSERVER_UID,)),
        Row(2, 0, "HAS OBS CONTEXT", "TEXT", (DEVICE_OBSERVER_NAME,), req="U"),
        Row(3, 0, "HAS OBS CONTEXT", "TEXT", (DEVICE_OBSERVER_MANUFACTURER,), req="U"),
        Row(4, 0, "HAS OBS CONTEXT", "TEXT", (DEVICE_OBSERVER_MODEL_NAME,), req="U"),
        Row(5, 0, "HAS OBS CONTEXT", "TEXT", (DEVICE_OBSERVER_SERIAL_NUMBER,), req="U"),
    ),
    # TID 10002 Accumulated X-Ray Dose
    "10002": (
        Row(1, 0, "CONTAINS", "CONTAINER", (ACCUMULATED_XRAY_DOSE_DATA,)),
        Row(2, 1, "HAS CONCEPT MOD", "CODE", (ACQUISITION_PLANE,), values=(SINGLE_PLANE,)),  # DCID 10003
        Row(4, 1, None, "INCLUDE", req="MC", include="10004",
            condition="IF Procedure reported is Projection X-Ray", when=lambda s: True),
        Row(7, 1, None, "INCLUDE", req="MC", include="10007",
            condition="IF Procedure reported is Projection X-Ray", when=lambda s: True),
    ),
    # TID 10004 Accumulated Fluoroscopy and Acquisition Projection X-Ray Dose
    "10004": (
        Row(1, 0, "CONTAINS", "NUM", (FLUORO_DAP_TOTAL,), units=GY_M2),
        Row(2, 0, "CONTAINS", "NUM", (FLUORO_DOSE_RP_TOTAL,), req="MC",
            condition="IF a reference point is defined", when=lambda s: s.has(REFERENCE_POINT_DEFINITION),
            units=GY),
        Row(3, 0, "CONTAINS", "NUM", (TOTAL_FLUORO_TIME,), units=SECONDS),
        Row(4, 0, "CONTAINS", "NUM", (ACQUISITION_DAP_TOTAL,), units=GY_M2),
        Row(5, 0, "CONTAINS", "NUM", (ACQUISITION_DOSE_RP_TOTAL,), req="MC",
            condition="IF a reference point is defined", when=lambda s: s.has(REFERENCE_POINT_DEFINITION),
            units=GY),
        Row(6, 0, "CONTAINS", "NUM", (TOTAL_ACQUISITION_TIME,), units=SECONDS),
    ),
    # TID 10007 Accumulated Total Projection Radiography Dose
    "10007": (
        Row(1, 0, "CONTAINS", "NUM", (DAP_TOTAL,), units=GY_M2),
        Row(2, 0, "CONTAINS", "NUM", (DOSE_RP_TOTAL,), units=GY),
        Row(3, 0, "CONTAINS", "NUM", (TOTAL_RADIOGRAPHIC_FRAMES,), req="U", units=NO_UNITS),
        Row(4, 0, "CONTAINS", "CODE", (REFERENCE_POINT_DEFINITION,), req="MC",
            condition="IF Dose (RP) Total is present", when=lambda s: s.has(DOSE_RP_TOTAL),
            values=(RP_15CM_FROM_ISOCENTER,)),  # DCID 10025
    ),
    # TID 10003 Irradiation Event X-Ray Data
    "10003": (
        Row(1, 0, "CONTAINS", "CONTAINER", (IRRADIATION_EVENT_XRAY_DATA,)),
        Row(2, 1, "HAS CONCEPT MOD", "CODE", (ACQUISITION_PLANE,), values=(SINGLE_PLANE,)),  # DCID 10003
        Row(3, 1, "CONTAINS", "UIDREF", (IRRADIATION_EVENT_UID,)),
        Row(4, 1, "CONTAINS", "DATETIME", (DATETIME_STARTED,)),
        Row(5, 1, "CONTAINS", "CODE", (IRRADIATION_EVENT_TYPE,), values=(FLUOROSCOPY,)),  # DCID 10002
        Row(6, 1, "CONTAINS", "TEXT", (ACQUISITION_PROTOCOL,), req="U"),
        Row(17, 1, "CONTAINS", "CODE", (TARGET_REGION,), values=tuple(ANATOMIC_REGIONS.values())),  # DCID 4031
        Row(18, 1, "CONTAINS", "NUM", (DOSE_AREA_PRODUCT,), units=GY_M2),
        Row(26, 1, "CONTAINS", "IMAGE", (ACQUIRED_IMAGE,), vm="1-n", req="U"),
        Row(28, 1, None, "INCLUDE", req="MC", include="10003B",
            condition="IF the X-Ray source data are available", when=lambda s: True),
    ),
    # TID 10003B Irradiation Event X-Ray Source Data
    "10003B": (
        Row(1, 0, "CONTAINS", "NUM", (DOSE_RP,), req="MC", condition="IF Procedure reported is Projection X-Ray",
            when=lambda s: True, units=GY),
        Row(2, 0, "CONTAINS", "CODE", (REFERENCE_POINT_DEFINITION,), req="MC",
            condition="IF Dose (RP) is present", when=lambda s: s.has(DOSE_RP),
            values=(RP_15CM_FROM_ISOCENTER,)),  # DCID 10025
        Row(5, 0, "CONTAINS", "CODE", (FLUORO_MODE,), req="MC",
            condition="IF Irradiation Event Type is Fluoroscopy",
            when=lambda s: s.code(IRRADIATION_EVENT_TYPE) == FLUOROSCOPY.key(), values=(PULSED, CONTINUOUS)),
        Row(6, 0, "CONTAINS", "NUM", (PULSE_RATE,), req="MC", condition="IFF Fluoro Mode is Pulsed",
            when=_fluoro_pulsed, iff=True, units=PULSE_PER_S),
        Row(7, 0, "CONTAINS", "NUM", (NUMBER_OF_PULSES,), req="U", units=NO_UNITS),
        Row(9, 0, "CONTAINS", "NUM", (IRRADIATION_DURATION,), req="U", units=SECONDS),
        Row(10, 0, "CONTAINS", "NUM", (AVERAGE_XRAY_TUBE_CURRENT,), req="U", units=MA),
        Row(11, 0, "CONTAINS", "NUM", (EXPOSURE_TIME,), req="MC", condition="IF Exposure (113736) is not present",
            when=lambda s: not s.has(EXPOSURE), units=MS),
        Row(22, 0, "CONTAINS", "NUM", (KVP,), vm="1-n", req="U", units=KV),
        Row(23, 0, "CONTAINS", "NUM", (XRAY_TUBE_CURRENT,), vm="1-n", req="U", units=MA),
        Row(24, 0, "CONTAINS", "NUM", (PULSE_WIDTH,), vm="1-n", req="MC", condition="IFF Fluoro Mode is Pulsed",
            when=_fluoro_pulsed, iff=True, units=MS),
    ),
}


# -- walking a report against the tables -----------------------------------------
@dataclass
class _Node:
    """A row with the rows nested under it (its item's children)."""

    row: Row
    tid: str
    children: list[_Node] = field(default_factory=list)


def _tree(tid: str) -> list[_Node]:
    """The rows of a template as a tree, INCLUDEs expanded: the top level
    (nl 0) of the template, each node with the rows one level under it."""
    top: list[_Node] = []
    stack: list[tuple[int, list[_Node]]] = [(-1, top)]
    for row in TEMPLATES[tid]:
        while stack[-1][0] >= row.nl:
            stack.pop()
        siblings = stack[-1][1]
        if row.vtype == "INCLUDE" or row.include:
            for node in _tree(row.include or ""):
                siblings.append(_Node(_included(node.row, row), node.tid, node.children))
            continue
        node = _Node(row, tid)
        siblings.append(node)
        stack.append((row.nl, node.children))
    return top


def _included(inner: Row, include: Row) -> Row:
    """A row of an included template as the including row makes it: the
    INCLUDE's relationship (when it gives one) and its requirement (an
    optional or conditional INCLUDE makes its rows no more than that)."""
    from dataclasses import replace

    rel = include.rel or inner.rel
    inner = replace(inner, vm=include.vm)  # how many times the template may come
    if include.req == "M":
        return replace(inner, rel=rel)
    if include.req in ("U", "UC") or inner.req in ("U", "UC"):
        return replace(inner, rel=rel, req="U" if inner.req == "U" else inner.req)
    # MC include: its rows are required when both conditions hold.
    outer, own = include.when, inner.when

    def both(s: Siblings) -> bool:
        return (outer is None or outer(s)) and (own is None or own(s))

    cond = " and ".join(c for c in (include.condition, inner.condition) if c)
    return replace(inner, rel=rel, req="MC", condition=cond, when=both, iff=inner.iff)


def _name(item: Any) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return None
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator))


def _units(item: Any) -> tuple[str, str] | None:
    try:
        u = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    except (AttributeError, IndexError):
        return None
    return (str(u.CodeValue), str(u.CodingSchemeDesignator))


def walk(ds: Any, tid: str = "10001") -> list[str]:
    """Every departure of the dose SR `ds` from the template tables: a
    missing mandatory item, an item not in the template, a wrong
    relationship, value type, value or unit, too many of an item, a
    conditional item present where its IFF condition does not hold. An
    empty list: the report is the template's, row by row."""
    errors: list[str] = []
    root = _tree(tid)
    if len(root) != 1:
        raise ValueError(f"TID {tid} has no single root row")
    node = root[0]
    if ds.get("ValueType") != node.row.vtype or _name(ds) != node.row.concept.key():
        errors.append(f"root: not {node.row.vtype} {node.row.concept}")
    templates = ds.get("ContentTemplateSequence") or []
    if not templates or str(templates[0].get("TemplateIdentifier", "")) != tid or \
            str(templates[0].get("MappingResource", "")) != "DCMR":
        errors.append(f"root: Content Template Sequence does not name DCMR TID {tid}")
    _walk_items(list(ds.get("ContentSequence") or []), node.children, node.row.concept.meaning, errors)
    return errors


def _walk_items(items: list[Any], rows: list[_Node], where: str, errors: list[str]) -> None:
    sib = Siblings(items)
    counts: dict[int, int] = {}
    for item in items:
        name = _name(item)
        candidates = [n for n in rows if any(c.key() == name for c in n.row.concepts)]
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning if name else "?"
        here = f"{where} > {meaning}"
        if not candidates:
            errors.append(f"{here} {name}: not in the template")
            continue
        same_type = [n for n in candidates if n.row.vtype == item.get("ValueType")]
        node = (same_type or candidates)[0]
        row = node.row
        label = row.label(node.tid)
        counts[id(node)] = counts.get(id(node), 0) + 1
        if item.get("ValueType") != row.vtype:
            errors.append(f"{here}: value type {item.get('ValueType')}, {label} requires {row.vtype}")
        if item.get("RelationshipType") != row.rel:
            errors.append(f"{here}: relationship {item.get('RelationshipType')}, {label} requires {row.rel}")
        if row.vtype == "CODE" and row.values:
            seq = item.get("ConceptCodeSequence") or []
            got = (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)) if seq else None
            if got not in {v.key() for v in row.values}:
                errors.append(f"{here}: value {got} is not one of {', '.join(map(str, row.values))} ({label})")
        if row.vtype == "NUM" and row.units is not None and _units(item) != row.units.key():
            errors.append(f"{here}: units {_units(item)}, {label} requires {row.units}")
        if row.iff and row.when is not None and not row.when(sib):
            errors.append(f"{here}: present where its condition does not hold ({label}: {row.condition})")
        _walk_items(list(item.get("ContentSequence") or []), node.children, here, errors)
    for node in rows:
        row = node.row
        n = counts.get(id(node), 0)
        most = row.max_count()
        if most is not None and n > most:
            errors.append(f"{where}: {n} of {row.label(node.tid)}, at most {most}")
        required = row.req == "M" or (row.req == "MC" and row.when is not None and row.when(sib))
        if required and n == 0:
            why = f" ({row.condition})" if row.req == "MC" and row.condition else ""
            errors.append(f"{where}: missing {row.label(node.tid)}, {row.req}{why}")
