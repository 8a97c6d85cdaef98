"""Medical-folder datasets: one folder per subject, one sub-folder per imaging modality.

The layout is Fed-BioMed's ``MedicalFolderDataset``::

    root/
      participants.csv        demographics, one row per subject (or --demographics FILE)
      sub-001/
        T1/  T1.nii.gz        a modality folder holds ONE NIfTI file (.nii or .nii.gz) ...
        CT/  001.dcm 002.dcm  ... or the .dcm slices of ONE DICOM series
      sub-002/ ...

The subject id is the folder name; it joins the demographics row whose index column
(``index_col``, default the CSV's first column) holds it. Every subject must have every
modality, and a modality's volumes must share one shape across subjects.

DICOM slices are ordered by their position along the slice normal (ImagePositionPatient
and ImageOrientationPatient), else by InstanceNumber, else by file name, and stacked along
the last axis: a series of N slices of R rows and C columns is an ``(R, C, N)`` volume.
Pixel values get the series' RescaleSlope/RescaleIntercept (Hounsfield units for CT).

Plans read samples through ``MedicalFolderDataset``: ``((images, demographics), target)``
with ``images`` a dict modality -> float tensor ``(1, *volume)`` (channel first, what
``torch.nn.Conv3d`` and MONAI transforms expect).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from common.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEMOGRAPHICS_FILE",
    "MedicalFolderDataset",
    "MedicalFolderLayout",
    "demographics_table",
    "read_demographics",
    "read_volume",
    "scan_layout",
]

logger = logging.getLogger(__name__)

#: The demographics file looked for in the dataset folder when none is given.
DEMOGRAPHICS_FILE = "participants.csv"

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIX = ".dcm"


class MedicalRecord(Protocol):
    """What ``demographics_table`` needs of a registered dataset (a node ``DatasetRecord``)."""

    @property
    def path(self) -> str: ...
    @property
    def data_type(self) -> str: ...
    @property
    def options(self) -> Mapping[str, str]: ...


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _visible(entries: Sequence[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


@dataclass(frozen=True)
class Scan:
    """The files of one subject's modality: one NIfTI file, or the slices of a DICOM series."""

    kind: str  # "nifti" or "dicom"
    files: tuple[Path, ...]


@dataclass(frozen=True)
class MedicalFolderLayout:
    """Subjects, modalities and scan files found under a medical folder."""

    root: Path
    subjects: tuple[str, ...]
    modalities: tuple[str, ...]
    scans: Mapping[tuple[str, str], Scan]
    demographics: Path | None
    index_col: str | None


def demographics_path(root: Path, demographics: str | None) -> Path | None:
    """The demographics CSV: ``demographics`` (relative to ``root`` unless absolute), else
    ``root/participants.csv`` when it exists, else None."""
    if demographics:
        path = Path(demographics).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DatasetError(
                f"demographics file {path} does not exist: pass --demographics with the CSV "
                "of one row per subject",
                field="demographics",
            )
        return path.resolve()
    default = root / DEMOGRAPHICS_FILE
    return default if default.is_file() else None


def _scan_of(subject: str, modality_dir: Path) -> Scan:
    files = _visible(list(modality_dir.iterdir()))
    where = f"subject {subject!r}, modality {modality_dir.name!r} ({modality_dir})"
    nifti = [p for p in files if _is_nifti(p)]
    dicom = [p for p in files if p.suffix.lower() == DICOM_SUFFIX]
    others = [p.name for p in files if p not in nifti and p not in dicom]
    if others:
        raise DatasetError(
            f"{where} holds files that are neither NIfTI nor DICOM: {', '.join(others[:10])}; "
            "a modality folder holds one .nii/.nii.gz file or the .dcm slices of one series"
        )
    if nifti and dicom:
        raise DatasetError(
            f"{where} mixes NIfTI and DICOM files: keep one of the two in a modality folder"
        )
    if len(nifti) > 1:
        raise DatasetError(
            f"{where} holds {len(nifti)} NIfTI files ({', '.join(p.name for p in nifti)}): "
            "a modality folder holds one volume; move the others to their own modality folder"
        )
    if nifti:
        return Scan("nifti", (nifti[0],))
    if dicom:
        return Scan("dicom", tuple(dicom))
    raise DatasetError(f"{where} is empty: add the subject's scan or remove the folder")


def scan_layout(
    root: Path, demographics: str | None = None, index_col: str | None = None
) -> MedicalFolderLayout:
    """Find subjects and modalities; raise ``DatasetError`` naming the subject at fault."""
    demographics_file = demographics_path(root, demographics)
    entries = _visible(list(root.iterdir()))
    stray = [p.name for p in entries if p.is_file() and p != demographics_file]
    if stray:
        raise DatasetError(
            f"{root} has files outside subject folders ({', '.join(stray[:10])}): a medical "
            f"folder holds one folder per subject and, optionally, {DEMOGRAPHICS_FILE}; pass "
            "--demographics FILE if one of them is the demographics table"
        )
    subjects = [p for p in entries if p.is_dir()]
    if not subjects:
        raise DatasetError(f"{root} has no subject folders: put each subject's scans in a folder")
    scans: dict[tuple[str, str], Scan] = {}
    per_subject: dict[str, set[str]] = {}
    for subject_dir in subjects:
        subject = subject_dir.name
        inside = _visible(list(subject_dir.iterdir()))
        loose = [p.name for p in inside if not p.is_dir()]
        if loose:
            raise DatasetError(
                f"subject {subject!r} has files outside modality folders "
                f"({', '.join(loose[:10])}): put each scan in a folder named after its modality, "
                f"e.g. {subject}/T1/{loose[0]}"
            )
        per_subject[subject] = {p.name for p in inside}
        for modality_dir in inside:
            scans[(subject, modality_dir.name)] = _scan_of(subject, modality_dir)
    modalities = sorted(set().union(*per_subject.values()))
    if not modalities:
        raise DatasetError(f"the subject folders of {root} hold no modality folders")
    for subject, present in per_subject.items():
        missing = [m for m in modalities if m not in present]
        if missing:
            raise DatasetError(
                f"subject {subject!r} is missing modality {', '.join(missing)} "
                f"(expected folder {root / subject / missing[0]}): every subject needs every "
                "modality; add the scan or move the subject out of the dataset"
            )
    return MedicalFolderLayout(
        root=root,
        subjects=tuple(per_subject),
        modalities=tuple(modalities),
        scans=scans,
        demographics=demographics_file,
        index_col=index_col,
    )


# ------------------------------------------------------------------ volumes


def _read_nifti(path: Path, subject: str, modality: str) -> np.ndarray:
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))  # a SpatialImage, which nibabel's hints do not say
        return np.asarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DatasetError(
            f"subject {subject!r}, modality {modality!r}: cannot read NIfTI file {path} ({exc}); "
            "replace the file with a valid .nii/.nii.gz volume"
        ) from exc


def _slice_order(slices: list[Any]) -> list[int]:
    """Indices of ``slices`` sorted along the series (position, else InstanceNumber)."""
    if all("ImagePositionPatient" in s and "ImageOrientationPatient" in s for s in slices):
        orientation = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        keys = [float(np.dot(np.asarray(s.ImagePositionPatient, float), normal)) for s in slices]
        return sorted(range(len(slices)), key=keys.__getitem__)
    if all("InstanceNumber" in s for s in slices):
        return sorted(range(len(slices)), key=lambda i: int(slices[i].InstanceNumber))
    return list(range(len(slices)))  # already sorted by file name


def _read_dicom(files: Sequence[Path], subject: str, modality: str) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    slices: list[Any] = []
    planes: list[np.ndarray] = []
    for path in files:
        where = f"subject {subject!r}, modality {modality!r}: DICOM file {path}"
        try:
            ds = pydicom.dcmread(str(path))
            plane = np.asarray(ds.pixel_array)
        except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError) as exc:
            raise DatasetError(
                f"{where} is unreadable ({exc}); replace it with a valid DICOM slice"
            ) from exc
        except RuntimeError as exc:  # compressed transfer syntax without its decoder
            raise DatasetError(
                f"{where} cannot be decoded ({exc}); install the decoder pydicom names, or "
                "store the series uncompressed"
            ) from exc
        if plane.ndim != 2:
            raise DatasetError(
                f"{where} holds a {plane.ndim}-D image: a series folder holds single 2-D slices"
            )
        if planes and plane.shape != planes[0].shape:
            raise DatasetError(
                f"{where} is {plane.shape[0]}x{plane.shape[1]} but {files[0].name} is "
                f"{planes[0].shape[0]}x{planes[0].shape[1]}: all slices of a series share a size"
            )
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        planes.append(plane * slope + intercept if (slope, intercept) != (1.0, 0.0) else plane)
        slices.append(ds)
    order = _slice_order(slices)
    return np.stack([planes[i] for i in order], axis=-1)


def read_volume(layout: MedicalFolderLayout, subject: str, modality: str) -> np.ndarray:
    """The volume of ``subject``'s ``modality`` as a numpy array."""
    scan = layout.scans[(subject, modality)]
    if scan.kind == "nifti":
        return _read_nifti(scan.files[0], subject, modality)
    return _read_dicom(scan.files, subject, modality)


def check_volumes(layout: MedicalFolderLayout) -> dict[str, tuple[int, ...]]:
    """Read every scan; the shape of each modality, refusing a subject whose shape differs."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = {m: {} for m in layout.modalities}
    for (subject, modality), _scan in sorted(layout.scans.items()):
        shapes[modality][subject] = tuple(read_volume(layout, subject, modality).shape)
    common: dict[str, tuple[int, ...]] = {}
    for modality, by_subject in shapes.items():
        counts: dict[tuple[int, ...], int] = {}
        for shape in by_subject.values():
            counts[shape] = counts.get(shape, 0) + 1
        usual = max(counts, key=counts.__getitem__)
        odd = [s for s, shape in by_subject.items() if shape != usual]
        if odd:
            subject = odd[0]
            files = layout.scans[(subject, modality)].files
            raise DatasetError(
                f"subject {subject!r}, modality {modality!r} ({files[0]}) has shape "
                f"{by_subject[subject]} but {counts[usual]} other subject(s) have {usual}: "
                "resample the scans of a modality to one shape"
                + (f" (also differing: {', '.join(odd[1:6])})" if len(odd) > 1 else "")
            )
        common[modality] = usual
    return common


# -------------------------------------------------------------- demographics


def read_demographics(path: Path, index_col: str | None = None) -> pd.DataFrame:
    """The demographics CSV as a DataFrame indexed by subject id (as text)."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read demographics file {path}: {exc}") from exc
    if table.columns.empty:
        raise DatasetError(f"demographics file {path} has no columns")
    column = index_col or str(table.columns[0])
    if column not in table.columns:
        raise DatasetError(
            f"index column {column!r} not found in demographics file {path}; its columns are: "
            f"{', '.join(map(str, table.columns[:20]))}",
            field="index_col",
        )
    ids = table[column].astype(str).str.strip()
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise DatasetError(
            f"demographics file {path} lists subject(s) {', '.join(duplicated[:10])} more than "
            f"once in column {column!r}: keep one row per subject"
        )
    table = table.drop(columns=column)
    table.index = pd.Index(ids, name=column)
    return table


def check_demographics(layout: MedicalFolderLayout, target: str | None) -> tuple[str, ...]:
    """Demographics columns; refuses subjects without a row and a target that is no column."""
    if layout.demographics is None:
        if target is not None:
            raise DatasetError(
                f"--target {target!r} names a demographics column but {layout.root} has no "
                f"{DEMOGRAPHICS_FILE}: pass --demographics FILE",
                field="target",
            )
        return ()
    table = read_demographics(layout.demographics, layout.index_col)
    missing = [s for s in layout.subjects if s not in table.index]
    if missing:
        raise DatasetError(
            f"subject(s) {', '.join(missing[:10])} have no row in demographics file "
            f"{layout.demographics} (column {table.index.name!r}): add their rows or move "
            "their folders out of the dataset"
        )
    columns = tuple(str(c) for c in table.columns)
    if target is not None and target not in columns:
        raise DatasetError(
            f"target column {target!r} not found in demographics file {layout.demographics}; "
            f"its columns are: {', '.join(columns[:20])}",
            field="target",
        )
    return columns


def demographics_table(record: MedicalRecord) -> pd.DataFrame:
    """The per-subject demographics of a registered ``medical-folder`` dataset.

    A DataFrame indexed by subject id (the subject folder names, as text), one row per
    subject of the dataset (rows of the CSV without a subject folder are left out), one
    column per demographics column except the index column. Raises ``DatasetError`` when
    the record is not a medical folder or has no demographics.
    """
    if record.data_type != "medical-folder":
        raise DatasetError(
            f"{record.path} is a {record.data_type} dataset: demographics belong to "
            "medical-folder datasets"
        )
    root = Path(record.path)
    options = dict(record.options)
    path = demographics_path(root, options.get("demographics"))
    if path is None:
        raise DatasetError(
            f"medical folder {root} has no demographics: register it with --demographics FILE "
            f"or put a {DEMOGRAPHICS_FILE} in it"
        )
    table = read_demographics(path, options.get("index_col"))
    subjects = [p.name for p in _visible(list(root.iterdir())) if p.is_dir()]
    return table.loc[[s for s in subjects if s in table.index]]


# ---------------------------------------------------------------- plan side

Transform = Callable[[Any], Any]


class MedicalFolderDataset:
    """Per-subject samples of a medical folder, read lazily (one subject per item).

    ``dataset[i]`` is ``((images, demographics), target)``: ``images`` maps each modality
    to a float tensor ``(1, *volume)``, ``demographics`` is the subject's row as a dict
    (empty without a demographics file), ``target`` the value of column ``target`` (None
    without one). ``transform`` is applied to each image tensor; a mapping modality ->
    callable applies per modality (MONAI array transforms fit both). ``target_transform``
    is applied to the target. ``modalities`` keeps a subset of the modalities.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        demographics: str | None = None,
        index_col: str | None = None,
        target: str | None = None,
        modalities: Sequence[str] | None = None,
        transform: Transform | Mapping[str, Transform] | None = None,
        target_transform: Transform | None = None,
    ) -> None:
        self.layout = scan_layout(Path(root), demographics, index_col)
        self.subjects = self.layout.subjects
        self.modalities = tuple(modalities) if modalities is not None else self.layout.modalities
        unknown = [m for m in self.modalities if m not in self.layout.modalities]
        if unknown:
            raise DatasetError(
                f"modality {', '.join(unknown)} not in {root}; its modalities are: "
                f"{', '.join(self.layout.modalities)}"
            )
        check_demographics(self.layout, target)
        self.demographics = (
            None
            if self.layout.demographics is None
            else read_demographics(self.layout.demographics, index_col)
        )
        self.target = target
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> tuple[tuple[dict[str, Any], dict[str, Any]], Any]:
        import torch

        subject = self.subjects[index]
        images: dict[str, Any] = {}
        for modality in self.modalities:
            volume = read_volume(self.layout, subject, modality).astype(np.float32, copy=False)
            tensor = torch.from_numpy(np.ascontiguousarray(volume)).unsqueeze(0)
            transform = (
                self.transform.get(modality)
                if isinstance(self.transform, Mapping)
                else self.transform
            )
            images[modality] = transform(tensor) if transform is not None else tensor
        row: dict[str, Any] = {}
        if self.demographics is not None:
            row = {
                str(k): (v.item() if isinstance(v, np.generic) else v)
                for k, v in self.demographics.loc[subject].items()
            }
        target = row.get(self.target) if self.target is not None else None
        if self.target_transform is not None:
            target = self.target_transform(target)
        return (images, row), target
