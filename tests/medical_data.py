"""Synthetic medical folders written in code: tiny NIfTI volumes and DICOM series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_nifti(path: Path, volume: np.ndarray) -> Path:
    """``volume`` as a NIfTI file (``.nii`` or ``.nii.gz`` from the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine=np.eye(4)), str(path))
    return path


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> list[Path]:
    """The slices ``volume[:, :, k]`` (uint16) as a DICOM CT series, slice k at z = 2k mm.

    ``names`` gives the file names in slice order (default ``slice-k.dcm``), so a test can
    make file order disagree with slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols, n = volume.shape
    names = names or [f"slice-{k}.dcm" for k in range(n)]
    series, study = generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "CT"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(volume[:, :, k], dtype=np.uint16).tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_cohort(
    root: Path,
    n_subjects: int = 3,
    shape: tuple[int, int, int] = (8, 8, 8),
    *,
    dicom: bool = True,
    seed: int = 0,
) -> Path:
    """A medical folder: subjects ``sub-00i`` with a NIfTI ``T1`` (and a DICOM ``CT``
    series), plus ``participants.csv`` (subject_id, age, label)."""
    rng = np.random.default_rng(seed)
    lines = ["subject_id,age,label"]
    for i in range(n_subjects):
        subject = f"sub-{i:03d}"
        write_nifti(root / subject / "T1" / "T1.nii.gz", rng.random(shape, dtype=np.float32))
        if dicom:
            write_dicom_series(
                root / subject / "CT", rng.integers(0, 1000, shape).astype(np.uint16)
            )
        lines.append(f"{subject},{40 + i},{i % 2}")
    (root / "participants.csv").write_text("\n".join(lines) + "\n")
    return root
