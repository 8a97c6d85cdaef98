"""Dataset inspection at registration (node.datasets) and the later check that data did not change."""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.errors import DatasetError
from node.datasets import detect_type, hash_file, hash_tree, inspect_dataset, verify

# ------------------------------------------------------------------ helpers


def write_png(path: Path, width: int, height: int, color_type: int = 2) -> Path:
    """A real (decodable) 8-bit PNG of zeros."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + bytes(width * channels) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def write_jpeg_header(path: Path, width: int, height: int, *, app1_bytes: int = 0) -> Path:
    """JPEG markers up to a baseline frame header, after an optional large EXIF-like segment."""
    segments = b"\xff\xd8"
    segments += b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    if app1_bytes:
        segments += b"\xff\xe1" + struct.pack(">H", app1_bytes + 2) + bytes(app1_bytes)
    segments += b"\xff\xff"  # fill byte before the next marker, allowed by the standard
    frame = struct.pack(">BHHB", 8, height, width, 3) + bytes(9)
    segments += b"\xff\xc0" + struct.pack(">H", len(frame) + 2) + frame
    segments += b"\xff\xd9"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(segments)
    return path


def write_csv(path: Path, rows: int = 5, columns: tuple[str, ...] = ("age", "bp", "y")) -> Path:
    frame = pd.DataFrame({c: np.arange(rows) + i for i, c in enumerate(columns)})
    frame.to_csv(path, index=False)
    return path


@dataclass(frozen=True)
class Registered:
    name: str
    path: str
    data_type: str
    sha256: str


# ---------------------------------------------------------------------- csv


def test_csv_inspection_records_rows_columns_shape_and_file_sha256(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "heart.csv", rows=7)
    found = inspect_dataset(path, target="y")
    assert found.data_type == "csv"
    assert (found.n_samples, found.shape, found.columns) == (7, (7, 3), ("age", "bp", "y"))
    assert found.target == "y"
    assert found.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert found.path.is_absolute()


def test_csv_row_count_matches_pandas_with_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text('id,note\n1,"two\nlines"\n\n2,plain\n3,"a, b"\n', encoding="utf-8")
    found = inspect_dataset(path)
    assert found.n_samples == len(pd.read_csv(path)) == 3


def test_csv_with_byte_order_mark_has_clean_first_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffa,y\n1,0\n".encode())
    assert inspect_dataset(path, target="a").columns == ("a", "y")


def test_missing_target_column_error_lists_columns_and_suggests_case_fix(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "heart.csv")
    with pytest.raises(DatasetError) as err:
        inspect_dataset(path, target="Y")
    message = str(err.value)
    assert "'Y'" in message and "age, bp, y" in message and "did you mean 'y'" in message
    assert str(path) in message


def test_missing_target_error_truncates_a_long_column_list(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "wide.csv", columns=tuple(f"c{i}" for i in range(50)))
    with pytest.raises(DatasetError, match=r"c0, c1, .*and 30 more"):
        inspect_dataset(path, target="label")


def test_csv_with_a_ragged_row_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,4,5\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 3 has 3 fields but the header has 2"):
        inspect_dataset(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (b"a,b\n", "no rows"),
        (b"a,a\n1,2\n", "duplicate column names"),
        (b"a,b\n\xff\xfe,1\n", "not UTF-8"),
    ],
)
def test_unusable_csv_is_refused_with_its_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=reason):
        inspect_dataset(path)


# ---------------------------------------------------------------- npy / npz


def test_npy_inspection_reads_shape_from_header(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((11, 4, 2), dtype=np.float32))
    found = inspect_dataset(path)
    assert (found.data_type, found.n_samples, found.shape, found.columns) == (
        "npy",
        11,
        (11, 4, 2),
        (),
    )


def test_npy_with_python_objects_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="Python objects"):
        inspect_dataset(path)


def test_truncated_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((100, 10)))
    path.write_bytes(path.read_bytes()[:-80])
    with pytest.raises(DatasetError, match="truncated"):
        inspect_dataset(path)


@pytest.mark.parametrize("shape", [(), (0, 3)])
def test_npy_without_samples_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(shape))
    with pytest.raises(DatasetError, match=r"scalar|no samples"):
        inspect_dataset(path)


def test_npy_refuses_a_target(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 2)))
    with pytest.raises(DatasetError, match="drop --target"):
        inspect_dataset(path, target="y")


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_columns_are_array_names_and_shape_is_the_features(
    tmp_path: Path, compressed: bool
) -> None:
    path = tmp_path / "data.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, y=np.zeros(9), X=np.ones((9, 5)))
    found = inspect_dataset(path, target="y")
    assert found.columns == ("y", "X")
    assert (found.n_samples, found.shape) == (9, (9, 5))


def test_npz_missing_target_error_lists_arrays(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, X=np.ones((3, 2)), labels=np.zeros(3))
    with pytest.raises(DatasetError, match=r"target array 'y' not found.*X, labels"):
        inspect_dataset(path, target="y")


def test_npz_target_with_another_sample_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, X=np.ones((3, 2)), y=np.zeros(4))
    with pytest.raises(DatasetError, match="same first axis"):
        inspect_dataset(path, target="y")


def test_file_that_is_not_an_npz_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match=r"not a valid \.npz"):
        inspect_dataset(path)


# -------------------------------------------------------------- type and path


def test_missing_path_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere\.csv does not exist"):
        inspect_dataset(tmp_path / "nowhere.csv")


def test_unknown_extension_asks_for_type(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"'\.xlsx'.*--type csv\|npy\|npz\|images"):
        inspect_dataset(path)


def test_unknown_declared_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset type 'parquet'"):
        detect_type(write_csv(tmp_path / "a.csv"), "parquet")


def test_declared_type_contradicting_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="extension of a csv file but --type npy"):
        detect_type(write_csv(tmp_path / "a.csv"), "npy")


def test_declared_type_validates_a_file_without_known_extension(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "export.txt")
    assert inspect_dataset(path, data_type="csv").n_samples == 5
    with pytest.raises(DatasetError, match=r"not a valid \.npy"):
        inspect_dataset(path, data_type="npy")


def test_folder_with_file_type_and_file_with_images_type_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is a folder but --type csv"):
        detect_type(tmp_path, "csv")
    with pytest.raises(DatasetError, match="expects a folder"):
        detect_type(write_csv(tmp_path / "a.csv"), "images")


# ------------------------------------------------------------------- images


def test_image_folder_counts_images_per_class_folder_and_reads_their_size(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    for i in range(3):
        write_png(root / "normal" / f"{i}.png", width=8, height=6)
    write_png(root / "pneumonia" / "deep" / "a.png", width=8, height=6)
    (root / "normal" / ".DS_Store").write_bytes(b"ignored")
    found = inspect_dataset(root)
    assert found.data_type == "images"
    assert (found.n_samples, found.shape) == (4, (4, 6, 8, 3))
    assert found.columns == ("normal", "pneumonia")
    assert found.files is not None and set(found.files) == {
        "normal/0.png",
        "normal/1.png",
        "normal/2.png",
        "pneumonia/deep/a.png",
    }


def test_jpeg_size_is_read_past_a_large_metadata_segment(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_jpeg_header(root / "a" / "1.jpg", width=640, height=480, app1_bytes=60_000)
    write_jpeg_header(root / "b" / "2.JPEG", width=640, height=480)
    assert inspect_dataset(root).shape == (2, 480, 640, 3)


def test_images_of_different_sizes_record_only_the_count(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    write_png(root / "a" / "1.png", 4, 4, color_type=0)
    write_png(root / "b" / "1.png", 5, 4, color_type=0)
    assert inspect_dataset(root).shape == (2,)


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ({"loose.png": "png"}, "outside class sub-folders"),
        ({"cats/notes.txt": b"x", "cats/1.png": "png"}, "not PNG or JPEG"),
        ({"cats/1.png": b"garbage bytes"}, "neither PNG nor JPEG"),
        ({"cats/1.png": "png", "dogs/.keep": b""}, "hold no images"),
        ({}, "no class sub-folders"),
    ],
)
def test_badly_laid_out_image_folder_is_refused(
    tmp_path: Path, layout: dict[str, object], reason: str
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    for rel, content in layout.items():
        if content == "png":
            write_png(root / rel, 2, 2)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=reason):
        inspect_dataset(root)


def test_image_folder_refuses_a_target(tmp_path: Path) -> None:
    write_png(tmp_path / "imgs" / "a" / "1.png", 2, 2)
    with pytest.raises(DatasetError, match="drop --target"):
        inspect_dataset(tmp_path / "imgs", target="label")


# ------------------------------------------------------------ hash & verify


def test_hash_file_streams_the_same_digest_as_hashlib_for_multi_chunk_files(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 123)
    path.write_bytes(data)
    assert hash_file(path) == hashlib.sha256(data).hexdigest()


def test_tree_hash_changes_on_rename_but_not_on_hidden_files(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "1.png", 2, 2)
    before, _ = hash_tree(tmp_path)
    (tmp_path / "a" / ".DS_Store").write_bytes(b"finder")
    assert hash_tree(tmp_path)[0] == before
    (tmp_path / "a" / "1.png").rename(tmp_path / "a" / "2.png")
    assert hash_tree(tmp_path)[0] != before


def test_verify_reports_an_unchanged_file_as_ok(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv")
    found = inspect_dataset(path)
    result = verify(Registered("a", str(path), "csv", found.sha256))
    assert result.ok and result.problems == ()


def test_verify_reports_a_changed_file_by_path(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv")
    found = inspect_dataset(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("9,9,9\n")
    result = verify(Registered("a", str(path), "csv", found.sha256))
    assert not result.ok
    assert result.actual_sha256 == hash_file(path)
    assert str(path) in result.problems[0] and "changed" in result.problems[0]


def test_verify_reports_a_deleted_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv")
    found = inspect_dataset(path)
    path.unlink()
    result = verify(Registered("a", str(path), "csv", found.sha256))
    assert not result.ok and "no longer exists" in result.problems[0]


def test_verify_names_changed_added_and_removed_images(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for name in ("1", "2", "3"):
        write_png(root / "a" / f"{name}.png", 2, 2)
    found = inspect_dataset(root)
    write_png(root / "a" / "1.png", 3, 3)
    (root / "a" / "2.png").unlink()
    write_png(root / "a" / "4.png", 2, 2)
    result = verify(Registered("imgs", str(root), "images", found.sha256), found.files)
    assert not result.ok
    assert result.problems[1:] == (
        "files changed: a/1.png",
        "files added: a/4.png",
        "files removed: a/2.png",
    )
