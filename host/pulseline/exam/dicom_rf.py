"""DICOM X-Ray Radiofluoroscopic Image Storage (multi-frame) of a capture,
written with pydicom: the frames as the detector delivered them, with the
technique and dose the board reported, the geometry they were taken in, and
the irradiation events (of the dose SR) they belong to.

Modules written (PS3.3 A.53, XRF Image IOD): Patient, Patient Study, General
Study, General Series, General Equipment, General Image, Image Pixel, Cine,
Multi-frame, X-Ray Image, X-Ray Acquisition, VOI LUT, SOP Common.

UIDs are under 2.25 (PS3.5 B.2: a UUID as an integer), which needs no
registration: random ones for new instances, name-based (UUID v5) ones for
what must come out the same each time (the device, an irradiation event).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from .. import __version__
from .sr_templates import ANATOMIC_REGIONS

RF_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.12.2")
MPPS_SOP_CLASS = UID("1.2.840.10008.3.1.2.3.3")  # Modality Performed Procedure Step
MANUFACTURER = "pulseline (development kit, not a medical device)"

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pulseline")


def new_uid(*names: str) -> UID:
    """A UID under 2.25: random, or derived from `names` (the same names,
    the same UID)."""
    u = uuid.uuid5(_UID_NAMESPACE, "\x1f".join(names)) if names else uuid.uuid4()
    return UID(f"2.25.{u.int}")


IMPLEMENTATION_CLASS_UID = new_uid("pulseline implementation")
IMPLEMENTATION_VERSION_NAME = f"PULSELINE_{__version__}"[:16]

# The procedure performed, as a REM consumer files it (SNOMED CT's procedure).
PROCEDURE_CODE = ("44491008", "SCT", "Fluoroscopy")


def body_part_code(body_part: str) -> tuple[str, str, str]:
    c = ANATOMIC_REGIONS[body_part]
    return (c.value, c.scheme, c.meaning)


@dataclass
class Identity:
    """Patient, study and series identifiers (anonymous by default), and
    what the IHE REM profile asks of an exam (given by the operator: a
    phantom has no age, size or weight)."""

    patient_name: str = "ANONYMOUS^PATIENT"
    patient_id: str = "PULSELINE-ANON"
    study_id: str = "1"
    accession_number: str = ""
    study_uid: str = ""
    series_number: int = 1
    institution: str = ""
    study_description: str = "Fluoroscopy"
    series_description: str = ""
    body_part: str = "ABDOMEN"  # a key of ANATOMIC_REGIONS (CID 4031)
    patient_sex: str = "O"  # M, F or O (other: a phantom)
    patient_age: str = ""  # e.g. 045Y
    patient_size_m: float | None = None
    patient_weight_kg: float | None = None
    indication: str = "Phantom exposure (no patient)"
    protocol_name: str = ""
    pps_uid: str = ""  # the performed procedure step both files belong to

    def __post_init__(self) -> None:
        if not self.study_uid:
            self.study_uid = new_uid()
        if not self.pps_uid:
            self.pps_uid = new_uid()
        if self.body_part not in ANATOMIC_REGIONS:
            raise ValueError(f"body part {self.body_part!r} is not one of {', '.join(ANATOMIC_REGIONS)}")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def dicom_datetime(when: dt.datetime) -> str:
    """DT in the host's local time: the files say its offset from UTC once,
    in Timezone Offset From UTC (PS3.3 C.12.1.1.8), which DCMTK's SR reader
    expects rather than an offset in each value."""
    return when.astimezone().strftime("%Y%m%d%H%M%S.%f")


def new_dataset(path: Path, sop_class: UID, identity: Identity, when: dt.datetime, *, modality: str,
                series_number: int, device_serial: str = "", series_description: str = "") -> FileDataset:
    """A new instance with its file meta, and the Patient, Patient Study,
    General Study, General Series and General Equipment modules every exam
    file shares (with what the IHE REM profile asks of them)."""
    when = when.astimezone()  # the host's local time, whose offset the file states
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    sop_uid = new_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.TimezoneOffsetFromUTC = when.strftime("%z")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = identity.patient_sex
    # Patient Study
    if identity.patient_age:
        ds.PatientAge = identity.patient_age
    if identity.patient_size_m is not None:
        ds.PatientSize = f"{identity.patient_size_m:.3f}"
    if identity.patient_weight_kg is not None:
        ds.PatientWeight = f"{identity.patient_weight_kg:.1f}"
    ds.AdmittingDiagnosesDescription = identity.indication
    if identity.indication == Identity.indication:  # (an operator's own indication comes uncoded)
        ds.AdmittingDiagnosesCodeSequence = Sequence([_code("706342009", "SCT", "Phantom")])
    # General Study
    ds.StudyInstanceUID = identity.study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = identity.study_id
    ds.AccessionNumber = identity.accession_number
    if identity.study_description:
        ds.StudyDescription = identity.study_description
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = series_description or identity.series_description or "Fluoroscopy"
    pps = Dataset()
    pps.ReferencedSOPClassUID = MPPS_SOP_CLASS
    pps.ReferencedSOPInstanceUID = identity.pps_uid
    ds.ReferencedPerformedProcedureStepSequence = Sequence([pps])
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "pulseline"
    ds.DeviceSerialNumber = device_serial or "UNKNOWN"
    if identity.institution:
        ds.InstitutionName = identity.institution
    return ds


@dataclass(frozen=True)
class Geometry:
    """Where the image was taken: the firmware's geometry (pulsefw.dose)."""

    source_detector_mm: float = 1000.0
    source_isocentre_mm: float = 750.0
    pixel_pitch_mm: float = 0.4

    @classmethod
    def of_firmware(cls) -> Geometry:
        from ..mpcompat import import_firmware

        dose = import_firmware("pulsefw.dose")
        return cls(dose.SOURCE_IMAGE_DISTANCE_M * 1000.0, dose.SOURCE_ISOCENTRE_M * 1000.0, dose.PIXEL_PITCH_MM)

    @property
    def magnification(self) -> float:
        return self.source_detector_mm / self.source_isocentre_mm


def display_window(pixels: npt.NDArray[Any], full_scale: int) -> tuple[float, float]:
    """(centre, width) over the 1st..99th percentile of the stored values,
    as the PNG of the last image is windowed: the anatomy shows in any
    viewer, whatever the detector's range."""
    lo, hi = (np.percentile(pixels, [1, 99]) if pixels.size else (0.0, float(full_scale)))
    width = max(float(hi - lo), 2.0)
    return round(float(lo + hi) / 2, 1), round(width, 1)


def write_rf(path: Path, pixels: npt.NDArray[np.uint16], *, bits_stored: int, pulses_per_s: float, kv: float,
             ma: float, pulse_width_ms: float, kap_dgy_cm2: float, firmware: str, identity: Identity,
             when: dt.datetime | None = None, device_serial: str = "", event_uids: list[str] | None = None,
             acquired: dt.datetime | None = None, geometry: Geometry | None = None) -> FileDataset:
    """Write one multi-frame RF image; pixels are (frames, rows, columns).
    `event_uids` are the irradiation events (of the dose SR) its frames
    came from; `acquired` when its first pulse left."""
    if pixels.ndim != 3 or pixels.shape[0] < 1:
        raise ValueError("an RF image needs at least one frame of (rows, columns)")
    when = (when or dt.datetime.now()).astimezone()
    acquired = (acquired or when).astimezone()
    geo = geometry or Geometry.of_firmware()
    ds = new_dataset(path, RF_IMAGE_STORAGE, identity, when, modality="RF", series_number=identity.series_number,
                     device_serial=device_serial)
    ds.SoftwareVersions = [f"host {__version__}", f"firmware {firmware}"]
    if identity.protocol_name:
        ds.ProtocolName = identity.protocol_name
    ds.BodyPartExamined = identity.body_part
    # General Image (no Laterality: a paired structure is not imaged)
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet (supine, AP)
    ds.ContentDate, ds.ContentTime = acquired.strftime("%Y%m%d"), acquired.strftime("%H%M%S.%f")
    ds.AcquisitionDateTime = dicom_datetime(acquired)
    ds.AcquisitionDate, ds.AcquisitionTime = acquired.strftime("%Y%m%d"), acquired.strftime("%H%M%S.%f")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.BurnedInAnnotation = "NO"
    if event_uids:
        ds.IrradiationEventUID = list(event_uids)
    # Image Pixel / X-Ray Image
    frames, rows, cols = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.LossyImageCompression = "00"
    # VOI LUT: a window that shows the anatomy in any viewer.
    centre, width = display_window(pixels, (1 << bits_stored) - 1)
    ds.WindowCenter, ds.WindowWidth = f"{centre:g}", f"{width:g}"
    ds.WindowCenterWidthExplanation = "1st to 99th percentile of the run"
    # Multi-frame and Cine: one frame per pulse, at the run's true rate.
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = (0x0018, 0x1063)  # Frame Time
    ds.FrameTime = f"{1000.0 / pulses_per_s:.4f}".rstrip("0").rstrip(".")
    if float(pulses_per_s).is_integer():
        # Integer fields: only a rate they hold exactly (15, 30), never 7.5
        # rounded to 8. Frame Time holds every rate. (Recommended Display
        # Frame Rate in Float is not in the XRF IOD: dciodvfy flags it.)
        ds.CineRate = ds.RecommendedDisplayFrameRate = int(pulses_per_s)
    # X-Ray Acquisition, with its geometry (so that viewers measure in mm)
    ds.KVP = f"{kv:.1f}"
    ds.XRayTubeCurrent = round(ma)
    ds.XRayTubeCurrentInuA = f"{ma * 1000:.1f}"
    ds.AveragePulseWidth = f"{pulse_width_ms:.3f}"
    ds.RadiationMode = "PULSED"
    ds.RadiationSetting = "SC"  # low-dose fluoroscopy ("SC"), not radiography ("GR")
    ds.ExposureTime = round(frames * pulse_width_ms)
    ds.ImageAndFluoroscopyAreaDoseProduct = f"{kap_dgy_cm2:.6f}"
    ds.ImagerPixelSpacing = [f"{geo.pixel_pitch_mm:g}", f"{geo.pixel_pitch_mm:g}"]
    ds.DistanceSourceToDetector = f"{geo.source_detector_mm:g}"
    ds.DistanceSourceToPatient = f"{geo.source_isocentre_mm:g}"
    ds.EstimatedRadiographicMagnificationFactor = f"{geo.magnification:.6g}"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds
