"""medical-folder datasets: registration checks, content hash, and the plan-side dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import DataManager
from common.datasets import DATASET_TYPES, MedicalFolderDataset, demographics_table
from common.errors import DatasetError
from node.datasets import inspect_dataset
from node.registry import DatasetRegistry
from tests.conftest import run_fedloom
from tests.medical_data import write_cohort, write_dicom_series, write_nifti


def _add(tmp_path: Path, root: Path, **options: str) -> DatasetRegistry:
    registry = DatasetRegistry(tmp_path / "node.db")
    registry.add(
        "scans",
        ["#mri"],
        root,
        "medical-folder",
        options.get("target"),
        "",
        {k: v for k, v in options.items() if k != "target"},
    )
    return registry


def test_registration_counts_subjects_and_lists_modalities_then_demographics(
    tmp_path: Path,
) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=3)
    found = inspect_dataset(root, "medical-folder", "label")
    assert found.n_samples == 3
    assert found.shape == (3,)  # two modalities: no single volume shape
    assert found.columns == ("CT", "T1", "age", "label")
    assert found.files is not None and "participants.csv" in found.files
    assert len(found.files) == 1 + 3 * (1 + 8)  # demographics, then T1 + 8 slices per subject

    one = write_cohort(tmp_path / "t1-only", n_subjects=2, dicom=False)
    assert inspect_dataset(one, "medical-folder").shape == (2, 8, 8, 8)


def test_a_folder_is_images_unless_medical_folder_is_declared(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=1, dicom=False)
    with pytest.raises(DatasetError, match="outside class sub-folders"):
        inspect_dataset(root)
    with pytest.raises(DatasetError, match="expects a folder"):
        inspect_dataset(root / "participants.csv", "medical-folder")


def test_nifti_and_dicom_volumes_reach_the_plan_unchanged_and_channel_first(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cohort"
    t1 = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_nifti(root / "s1" / "T1" / "brain.nii", t1)
    ct = np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3)
    # File names sort against the slice order: stacking must follow the slice positions.
    write_dicom_series(
        root / "s1" / "CT", ct, names=["c.dcm", "b.dcm", "a.dcm"], slope=2.0, intercept=-1024.0
    )
    (images, row), target = MedicalFolderDataset(root)[0]
    assert row == {} and target is None
    assert images["T1"].shape == (1, 4, 5, 6) and images["T1"].dtype == torch.float32
    np.testing.assert_array_equal(images["T1"][0].numpy(), t1)
    np.testing.assert_array_equal(images["CT"][0].numpy(), ct * 2.0 - 1024.0)


def test_dicom_slices_without_positions_are_stacked_by_instance_number(tmp_path: Path) -> None:
    import pydicom

    ct = np.arange(3 * 3 * 4, dtype=np.uint16).reshape(3, 3, 4)
    paths = write_dicom_series(
        tmp_path / "c" / "s1" / "CT", ct, names=["d.dcm", "c.dcm", "b.dcm", "a.dcm"]
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    (images, _), _ = MedicalFolderDataset(tmp_path / "c")[0]
    np.testing.assert_array_equal(images["CT"][0].numpy(), ct)


def test_missing_modality_names_the_subject_and_the_expected_folder(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=3)
    shutil.rmtree(root / "sub-001" / "CT")
    with pytest.raises(
        DatasetError, match=r"subject 'sub-001' is missing modality CT .*sub-001/CT"
    ):
        inspect_dataset(root, "medical-folder")


def test_shape_mismatch_names_the_odd_subject_its_file_and_the_usual_shape(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=3, dicom=False)
    write_nifti(root / "sub-002" / "T1" / "T1.nii.gz", np.zeros((8, 8, 7), np.float32))
    with pytest.raises(
        DatasetError,
        match=r"subject 'sub-002', modality 'T1' \(.*sub-002/T1/T1\.nii\.gz\) has shape "
        r"\(8, 8, 7\) but 2 other subject\(s\) have \(8, 8, 8\)",
    ):
        inspect_dataset(root, "medical-folder")


def test_dicom_slice_of_another_size_is_named(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write_dicom_series(root / "s1" / "CT", np.zeros((4, 4, 2), np.uint16))
    write_dicom_series(root / "s1" / "CT", np.zeros((4, 5, 1), np.uint16), names=["z.dcm"])
    with pytest.raises(DatasetError, match=r"s1.*CT.*z\.dcm is 4x5 but slice-0\.dcm is 4x4"):
        inspect_dataset(root, "medical-folder")


@pytest.mark.parametrize("victim", ["sub-001/T1/T1.nii.gz", "sub-001/CT/slice-3.dcm"])
def test_unreadable_scan_names_the_subject_and_the_file(tmp_path: Path, victim: str) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=2)
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(DatasetError, match=rf"subject 'sub-001'.*{victim.split('/')[-1]}"):
        inspect_dataset(root, "medical-folder")


def test_stray_files_and_mixed_modality_folders_are_refused_with_the_fix(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=1)
    (root / "sub-000" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"subject 'sub-000' has files outside modality folders"):
        inspect_dataset(root, "medical-folder")
    (root / "sub-000" / "notes.txt").unlink()
    write_nifti(root / "sub-000" / "CT" / "ct.nii", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DatasetError, match="mixes NIfTI and DICOM"):
        inspect_dataset(root, "medical-folder")


def test_subject_missing_from_demographics_is_named(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=3, dicom=False)
    csv = root / "participants.csv"
    csv.write_text(
        "\n".join(line for line in csv.read_text().splitlines() if "sub-001" not in line)
    )
    with pytest.raises(DatasetError, match=r"subject\(s\) sub-001 have no row in demographics"):
        inspect_dataset(root, "medical-folder")


def test_external_demographics_with_an_index_column_and_a_target(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=2, dicom=False)
    (root / "participants.csv").unlink()
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("site,patient,score\nA,sub-000,1.5\nB,sub-001,2.5\nC,sub-999,9\n")
    options = {"demographics": str(clinical), "index_col": "patient"}
    with pytest.raises(DatasetError, match=r"target column 'grade' not found.*site, score"):
        inspect_dataset(root, "medical-folder", "grade", options)
    with pytest.raises(DatasetError, match=r"index column 'id' not found"):
        inspect_dataset(root, "medical-folder", None, {**options, "index_col": "id"})
    found = inspect_dataset(root, "medical-folder", "score", options)
    assert found.columns == ("T1", "site", "score")
    assert found.files is not None and str(clinical) in found.files
    dataset = DATASET_TYPES["medical-folder"]().load(root, "score", options)
    assert [dataset[i][1] for i in range(len(dataset))] == [1.5, 2.5]


def test_options_of_another_type_are_refused(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError, match=r"--demographics do.* not apply to a csv dataset"):
        inspect_dataset(csv, None, None, {"demographics": "d.csv"})


@pytest.mark.parametrize(
    "change", ["sub-001/T1/T1.nii.gz", "sub-000/CT/slice-2.dcm", "participants.csv"]
)
def test_verify_names_a_changed_scan_or_demographics_like_a_changed_csv(
    tmp_path: Path, change: str
) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=2)
    registry = _add(tmp_path, root, target="label")
    assert registry.verify("scans").ok
    path = root / change
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one voxel (or one character) differs
    path.write_bytes(bytes(data))
    result = registry.verify("scans")
    assert not result.ok
    assert result.problems[-1] == f"files changed: {change}"


def test_verify_covers_an_external_demographics_file(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=2, dicom=False)
    clinical = tmp_path / "clinical.csv"
    shutil.move(root / "participants.csv", clinical)
    registry = _add(tmp_path, root, demographics=str(clinical))
    assert registry.get("scans").options == {"demographics": str(clinical)}
    assert registry.verify("scans").ok
    clinical.write_text(clinical.read_text().replace(",40,", ",41,"))
    assert registry.verify("scans").problems[-1] == f"files changed: {clinical}"


def test_demographics_table_is_indexed_by_subject_for_the_subjects_present(
    tmp_path: Path,
) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=3, dicom=False)
    with (root / "participants.csv").open("a") as fh:
        fh.write("sub-404,90,1\n")  # a row without scans
    record = _add(tmp_path, root).get("scans")
    table = demographics_table(record)
    assert list(table.index) == ["sub-000", "sub-001", "sub-002"]
    assert table.index.name == "subject_id"
    assert list(table.columns) == ["age", "label"]
    assert table["age"].tolist() == [40, 41, 42]
    csv = tmp_path / "a.csv"
    csv.write_text("x,y\n1,2\n")
    registry = DatasetRegistry(tmp_path / "node.db")
    registry.add("table", ["#t"], csv)
    with pytest.raises(DatasetError, match="demographics belong to medical-folder"):
        demographics_table(registry.get("table"))


def test_plan_dataset_batches_subjects_with_transforms_and_targets(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=5)
    dataset = MedicalFolderDataset(
        root,
        target="label",
        transform={"T1": lambda t: t * 0 + 1, "CT": lambda t: t[:, :4]},
        target_transform=float,
    )
    data = DataManager(dataset, shuffle=True)
    train, test = data.split(0.4, seed=0)
    assert (len(train), len(test or [])) == (3, 2)
    batches = list(train.batches(2, np.random.default_rng(0)))
    assert [len(target) for _, target in batches] == [2, 1]
    (images, demographics), target = batches[0]
    assert images["T1"].shape == (2, 1, 8, 8, 8) and bool((images["T1"] == 1).all())
    assert images["CT"].shape == (2, 1, 4, 8, 8)
    assert set(demographics) == {"age", "label"} and target.dtype == np.float64
    assert test is not None and test.targets.shape == (2,)


def test_a_sample_dataset_does_not_take_a_separate_target(tmp_path: Path) -> None:
    dataset = MedicalFolderDataset(write_cohort(tmp_path / "c", n_subjects=2, dicom=False))
    with pytest.raises(DatasetError, match="drop target="):
        DataManager(dataset, target=[0, 1])
    with pytest.raises(DatasetError, match="modality PET not in"):
        MedicalFolderDataset(tmp_path / "c", modalities=["PET"])


def test_cli_registers_a_medical_folder_with_its_demographics(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", n_subjects=2, dicom=False)
    clinical = tmp_path / "clinical.csv"
    shutil.move(root / "participants.csv", clinical)
    home = str(tmp_path / "home")
    assert run_fedloom("node", "--home", home, "init").returncode == 0
    add = ("node", "--home", home, "dataset", "add", "--tags", "#mri", "--path", str(root))
    medical = ("--type", "medical-folder", "--target", "label")
    added = run_fedloom(
        *add, "--name", "brains", *medical,
        "--demographics", str(clinical), "--index-col", "subject_id",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "medical-folder, 2 samples" in added.stdout
    shown = run_fedloom("node", "--home", home, "dataset", "show", "brains", "--json")
    assert json.loads(shown.stdout)["options"] == {
        "demographics": str(clinical),
        "index_col": "subject_id",
    }
    bad = run_fedloom(*add, "--name", "b2", *medical)
    assert bad.returncode != 0
    assert "has no participants.csv: pass --demographics FILE" in bad.stderr


def test_mednist_layout_of_grayscale_jpeg_and_png_classes_registers_and_loads(
    tmp_path: Path,
) -> None:
    from PIL import Image

    root = tmp_path / "MedNIST"
    rng = np.random.default_rng(0)
    for label in ("AbdomenCT", "BreastMRI", "Hand"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / label / f"{i:06d}.jpeg", quality=95)
    Image.fromarray(np.full((64, 64), 7, np.uint8), mode="L").save(root / "Hand" / "x.png")
    found = inspect_dataset(root)
    assert found.data_type == "images"
    assert found.shape == (7, 64, 64, 1)  # grayscale: one channel, JPEG and PNG alike
    assert found.columns == ("AbdomenCT", "BreastMRI", "Hand")
    dataset = DATASET_TYPES["images"]().load(root, None, {})
    image, label = dataset[len(dataset) - 1]
    assert image.shape == (1, 64, 64) and label == 2
    np.testing.assert_allclose(image, 7 / 255, rtol=1e-6)
    batch, labels = next(DataManager(dataset).batches(4, np.random.default_rng(0)))
    assert batch.shape == (4, 1, 64, 64) and labels.tolist() == [0, 0, 1, 1]


def test_plan_load_dataset_uses_the_type_target_and_options_the_node_sets(
    tmp_path: Path,
) -> None:
    from common.errors import PlanError
    from common.training_plans import TorchTrainingPlan

    class Plan(TorchTrainingPlan):
        def training_data(self) -> DataManager:
            return DataManager(self.load_dataset(modalities=["T1"]))

    plan = Plan()
    with pytest.raises(PlanError, match="runs on a node"):
        plan.load_dataset()
    root = write_cohort(tmp_path / "cohort", n_subjects=2, dicom=False)
    shutil.move(root / "participants.csv", tmp_path / "clinical.csv")
    plan.dataset_path, plan.dataset_type = str(root), "medical-folder"
    plan.dataset_target = "age"
    plan.dataset_options = {"demographics": str(tmp_path / "clinical.csv")}
    dataset = plan.training_data().samples
    assert isinstance(dataset, MedicalFolderDataset)
    assert [dataset[i][1] for i in range(2)] == [40, 41]
    with pytest.raises(DatasetError, match="a sample dataset yields"):
        DataManager(dataset, target=np.zeros(2))
    with pytest.raises(DatasetError, match="non-numeric"):
        DataManager({"x": np.zeros(2)})  # a dict is not a sample dataset
