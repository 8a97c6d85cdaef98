"""``images`` datasets: a folder with one sub-folder per class (torchvision's ``ImageFolder``).

Class folders hold PNG or JPEG files (grayscale or colour; nested folders allowed), e.g.
MedNIST's 64x64 grayscale JPEGs. Columns are the class names; shape is ``(n, height, width,
channels)`` when all images share a size (channels as stored: a palette PNG counts 3),
else ``(n,)``. Files and folders whose name starts with ``.`` are ignored; any other file
must be an image in a class folder. Sizes are read from the file headers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from common.datasets.base import DATASET_TYPES, DatasetInspection, DatasetType, listing
from common.datasets.hashing import hash_file, tree_digest, tree_files
from common.errors import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "ImagesType"]

logger = logging.getLogger(__name__)

#: Image files accepted in a class folder.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels as stored
# JPEG start-of-frame markers (C0-CF) minus DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


@DATASET_TYPES.register("images")
class ImagesType(DatasetType):
    """Class folders of PNG/JPEG images; plans get an ``ImageFolderDataset``."""

    is_folder = True
    description = "a folder of class sub-folders of images"

    def inspect(
        self, path: Path, target: str | None, options: Mapping[str, str]
    ) -> DatasetInspection:
        return _inspect_images(path, target)

    def load(
        self, path: Path, target: str | None, options: Mapping[str, str], **kwargs: Any
    ) -> Any:
        return ImageFolderDataset(path, **kwargs)


class ImageFolderDataset:
    """``dataset[i]`` is ``(image, class_index)``: the image as a float array ``(channels,
    height, width)`` scaled to [0, 1] (decoded by Pillow), ``transform`` applied when given.
    ``classes`` are the class names, sorted; their index is the label."""

    def __init__(self, root: Path | str, transform: Any = None) -> None:
        self.root = Path(root)
        self.files = [rel for rel in tree_files(self.root) if "/" in rel]
        self.classes = sorted({rel.split("/", 1)[0] for rel in self.files})
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        rel = self.files[index]
        with Image.open(self.root / rel) as image:
            array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        label = self.classes.index(rel.split("/", 1)[0])
        return (self.transform(array) if self.transform else array), label


def _png_size(head: bytes, path: Path) -> tuple[int, int, int]:
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise DatasetError(f"{path} is a damaged PNG file (no IHDR header)")
    width = int.from_bytes(head[16:20], "big")
    height = int.from_bytes(head[20:24], "big")
    channels = _PNG_CHANNELS.get(head[25])
    if channels is None:
        raise DatasetError(f"{path} is a damaged PNG file (colour type {head[25]})")
    return height, width, channels


def _jpeg_size(fh: IO[bytes], path: Path) -> tuple[int, int, int]:
    """Walk the JPEG segments up to the start-of-frame, which carries the size."""
    damaged = DatasetError(f"{path} is a damaged JPEG file (no frame header)")
    fh.seek(2)
    while True:
        byte = fh.read(1)
        if byte != b"\xff":
            raise damaged
        while byte == b"\xff":  # fill bytes may precede a marker
            byte = fh.read(1)
        if not byte:
            raise damaged
        marker = byte[0]
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            raise damaged
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            raise damaged
        length = int.from_bytes(length_bytes, "big")
        if marker in _JPEG_SOF_MARKERS:
            frame = fh.read(6)
            if len(frame) < 6:
                raise damaged
            height = int.from_bytes(frame[1:3], "big")
            width = int.from_bytes(frame[3:5], "big")
            return height, width, frame[5]
        fh.seek(length - 2, os.SEEK_CUR)


def _image_size(path: Path) -> tuple[int, int, int]:
    """``(height, width, channels)`` of a PNG or JPEG file, read from its header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
            if head.startswith(_PNG_SIGNATURE):
                return _png_size(head, path)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(fh, path)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    raise DatasetError(
        f"{path} has an image extension but is neither PNG nor JPEG: convert or remove it"
    )


def _inspect_images(root: Path, target: str | None) -> DatasetInspection:
    if target is not None:
        raise DatasetError(
            f"{root} is an image folder, whose labels are its class sub-folders: drop --target",
            field="target",
        )
    relpaths = tree_files(root)
    top_level = [rel for rel in relpaths if "/" not in rel]
    if top_level:
        raise DatasetError(
            f"{root} has files outside class sub-folders ({listing(top_level)}): an image "
            "folder holds one sub-folder per class, each holding that class's images"
        )
    not_images = [rel for rel in relpaths if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS]
    if not_images:
        raise DatasetError(
            f"{root} holds files that are not PNG or JPEG images ({listing(not_images)}): "
            "move them out of the dataset folder"
        )
    classes = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    per_class = {name: 0 for name in classes}
    for rel in relpaths:
        per_class[rel.split("/", 1)[0]] += 1
    empty = [name for name, count in per_class.items() if count == 0]
    if not classes:
        raise DatasetError(
            f"{root} has no class sub-folders: put each class's images in a sub-folder named "
            "after the class"
        )
    if empty:
        raise DatasetError(
            f"class folder(s) {listing(empty)} of {root} hold no images: add images or remove them"
        )
    sizes = {_image_size(root / rel) for rel in relpaths}
    n_samples = len(relpaths)
    if len(sizes) == 1:
        shape: tuple[int, ...] = (n_samples, *next(iter(sizes)))
    else:
        shape = (n_samples,)
        logger.info("%s: images have %d different sizes; recording shape (n,)", root, len(sizes))
    files = {rel: hash_file(root / rel) for rel in relpaths}
    return DatasetInspection(
        path=root,
        data_type="images",
        n_samples=n_samples,
        shape=shape,
        columns=tuple(classes),
        target=None,
        sha256=tree_digest(files),
        files=files,
    )
