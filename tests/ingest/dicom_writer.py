"""Write real DICOM CT series files for tests (pydicom), with chosen geometry and header values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Fake identifiers written into test headers; tests assert they never reach the store or manifest.
FAKE_PATIENT_NAME = "Doe^Janet"
FAKE_PATIENT_ID = "PID-7731-XQ"
FAKE_BIRTH_DATE = "19470312"
FAKE_STUDY_DATE = "20190823"


def write_series(
    folder: Path,
    hu: np.ndarray,
    spacing: Sequence[float] = (2.0, 1.0, 1.0),
    origin: Sequence[float] = (-100.0, -120.0, 50.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    modality: str = "CT",
    positions: Sequence[Sequence[float]] | None = None,
    series_uids: Sequence[str] | None = None,
    transfer_syntax: str | None = None,
    slice_direction: float = -1.0,
    shuffle_names: bool = False,
) -> list[Path]:
    """One file per slice of `hu` [slice, row, column] (HU), stored as uint16 with intercept -1024.

    Slice k sits at origin + k * slice_direction * spacing[0] along the normal (default: each next
    slice further toward the feet, as many scanners export); `positions` overrides that.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    series_uid = generate_uid()
    raw = np.clip(np.rint(hu) + 1024, 0, 65535).astype(np.uint16)
    n = hu.shape[0]
    order = np.random.default_rng(0).permutation(n) if shuffle_names else np.arange(n)
    paths = []
    for k in range(n):
        pos = positions[k] if positions is not None else np.asarray(origin) + k * slice_direction * spacing[0] * normal
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName = FAKE_PATIENT_NAME
        ds.PatientID = FAKE_PATIENT_ID
        ds.PatientBirthDate = FAKE_BIRTH_DATE
        ds.StudyDate = FAKE_STUDY_DATE
        ds.SeriesInstanceUID = series_uids[k] if series_uids is not None else series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(p) for p in pos]
        ds.ImageOrientationPatient = [float(c) for c in iop]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.PixelData = raw[k].tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = folder / f"IM{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
