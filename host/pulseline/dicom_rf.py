"""DICOM X-Ray Radiofluoroscopic Image Storage (multi-frame) of a capture,
written with pydicom: the frames as the detector delivered them, with the
technique and dose the board reported.

Modules written (PS3.3 A.53, XRF Image IOD): Patient, General Study, General
Series, General Equipment, General Image, Image Pixel, Cine, Multi-frame,
X-Ray Image, X-Ray Acquisition, SOP Common.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from . import __version__

RF_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.12.2")
MANUFACTURER = "pulseline (development kit, not a medical device)"


@dataclass
class Identity:
    """Patient, study and series identifiers (anonymous by default)."""

    patient_name: str = "ANONYMOUS^PATIENT"
    patient_id: str = "PULSELINE-ANON"
    study_id: str = "1"
    accession_number: str = ""
    study_uid: str = ""
    series_number: int = 1
    institution: str = ""
    study_description: str = ""
    series_description: str = ""

    def __post_init__(self) -> None:
        if not self.study_uid:
            self.study_uid = generate_uid()


def new_dataset(path: Path, sop_class: UID, identity: Identity, when: dt.datetime, *, modality: str,
                series_number: int, device_serial: str = "") -> FileDataset:
    """A new instance with its file meta, and the Patient, General Study,
    General Series and General Equipment modules every exam file shares."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = identity.study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = identity.study_id
    ds.AccessionNumber = identity.accession_number
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "pulseline"
    if device_serial:
        ds.DeviceSerialNumber = device_serial
    if identity.study_description:
        ds.StudyDescription = identity.study_description
    if identity.series_description:
        ds.SeriesDescription = identity.series_description
    if identity.institution:
        ds.InstitutionName = identity.institution
    return ds


def write_rf(path: Path, pixels: npt.NDArray[np.uint16], *, bits_stored: int, pulses_per_s: float, kv: float,
             ma: float, pulse_width_ms: float, kap_dgy_cm2: float, firmware: str, identity: Identity,
             when: dt.datetime | None = None, device_serial: str = "") -> FileDataset:
    """Write one multi-frame RF image; pixels are (frames, rows, columns)."""
    if pixels.ndim != 3 or pixels.shape[0] < 1:
        raise ValueError("an RF image needs at least one frame of (rows, columns)")
    when = when or dt.datetime.now()
    ds = new_dataset(path, RF_IMAGE_STORAGE, identity, when, modality="RF", series_number=identity.series_number,
                     device_serial=device_serial)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.Laterality = ""  # 2C: unknown (a phantom has no side)
    ds.SoftwareVersions = [f"host {__version__}", f"firmware {firmware}"]
    # General Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.BurnedInAnnotation = "NO"
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
    # Multi-frame and Cine: one frame per pulse.
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = (0x0018, 0x1063)  # Frame Time
    ds.FrameTime = f"{1000.0 / pulses_per_s:.4f}".rstrip("0").rstrip(".")
    ds.CineRate = round(pulses_per_s)
    ds.RecommendedDisplayFrameRate = round(pulses_per_s)
    # X-Ray Acquisition
    ds.KVP = f"{kv:.1f}"
    ds.XRayTubeCurrent = round(ma)
    ds.XRayTubeCurrentInuA = f"{ma * 1000:.1f}"
    ds.AveragePulseWidth = f"{pulse_width_ms:.3f}"
    ds.RadiationMode = "PULSED"
    ds.RadiationSetting = "SC"  # low-dose fluoroscopy ("SC"), not radiography ("GR")
    ds.ExposureTime = round(frames * pulse_width_ms)
    ds.ImageAndFluoroscopyAreaDoseProduct = f"{kap_dgy_cm2:.6f}"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds
