"""The ``medical-folder`` dataset type: registration, content hash and plan loader.

Inspection reads every scan (refusing an unreadable file, a missing modality or a shape
that differs across subjects, naming the subject and file) and joins the demographics.
Samples are subjects; columns are the modalities then the demographics columns; shape is
``(subjects, *volume)`` with one modality, else ``(subjects,)``. The content hash covers
every file of the folder and the demographics file, wherever it lies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.datasets.base import DATASET_TYPES, DatasetInspection, DatasetType
from common.datasets.hashing import hash_file, hash_tree, tree_digest
from common.datasets.medical_folder import (
    MedicalFolderDataset,
    check_demographics,
    check_volumes,
    demographics_path,
    scan_layout,
)

__all__ = ["MedicalFolderType"]


@DATASET_TYPES.register("medical-folder")
class MedicalFolderType(DatasetType):
    """Subject folders of NIfTI/DICOM modalities plus a demographics CSV."""

    is_folder = True
    option_names = ("demographics", "index_col")
    description = "a folder of subject folders of modality folders"

    def inspect(
        self, path: Path, target: str | None, options: Mapping[str, str]
    ) -> DatasetInspection:
        layout = scan_layout(path, options.get("demographics"), options.get("index_col"))
        shapes = check_volumes(layout)
        demographic_columns = check_demographics(layout, target)
        n = len(layout.subjects)
        only = next(iter(shapes.values())) if len(shapes) == 1 else None
        sha256, files = self.content_hash(path, options)
        return DatasetInspection(
            path=path,
            data_type=self.name,
            n_samples=n,
            shape=(n, *only) if only is not None else (n,),
            columns=(*layout.modalities, *demographic_columns),
            target=target,
            sha256=sha256,
            files=files,
            options={key: value for key, value in options.items() if value},
        )

    def content_hash(self, path: Path, options: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        _, files = hash_tree(path)
        demographics = demographics_path(path, options.get("demographics"))
        if demographics is not None and not demographics.is_relative_to(path):
            # Kept under its absolute path: no relative path of the folder starts with "/".
            files[str(demographics)] = hash_file(demographics)
        return tree_digest(files), files

    def load(
        self, path: Path, target: str | None, options: Mapping[str, str], **kwargs: Any
    ) -> MedicalFolderDataset:
        settings: dict[str, Any] = {"target": target, **options}
        settings.update(kwargs)
        return MedicalFolderDataset(path, **settings)
