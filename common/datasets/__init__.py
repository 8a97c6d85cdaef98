"""Dataset types a node can register, behind one registry (``DATASET_TYPES``).

Each type inspects a dataset at registration, hashes its content and loads it for a
plan: ``csv``, ``npy``, ``npz``, ``images`` and ``medical-folder``.
"""

# isort: off
# Registration order is the order `--type` lists: tables and arrays, then folders.
from common.datasets import tabular, arrays, images, medical_folder_type  # noqa: F401

# isort: on
from common.datasets.base import DATASET_TYPES, DatasetInspection, DatasetType
from common.datasets.hashing import hash_file, hash_tree
from common.datasets.images import ImageFolderDataset
from common.datasets.medical_folder import MedicalFolderDataset, demographics_table

__all__ = [
    "DATASET_TYPES",
    "DatasetInspection",
    "DatasetType",
    "ImageFolderDataset",
    "MedicalFolderDataset",
    "demographics_table",
    "hash_file",
    "hash_tree",
]
