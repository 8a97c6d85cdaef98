"""Write synthetic medical folders, one per node: T1 volumes where class 1 has a bright cube.

    python examples/medical_3d_cnn/make_data.py --out /tmp/mri --nodes 2 --subjects 12

makes /tmp/mri/node-1, /tmp/mri/node-2: one folder per subject holding T1/T1.nii.gz,
and participants.csv (subject_id, age, label).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np


def write_node_cohort(
    root: Path, n_subjects: int, size: int = 16, seed: int = 0, prefix: str = "sub"
) -> Path:
    """One node's medical folder of `n_subjects` subjects with `size`^3 T1 volumes."""
    rng = np.random.default_rng(seed)
    rows = ["subject_id,age,label"]
    for i in range(n_subjects):
        subject = f"{prefix}-{i:03d}"
        label = i % 2
        volume = rng.normal(0.0, 1.0, (size, size, size)).astype(np.float32)
        if label:  # a lesion: a bright cube at a random place
            x, y, z = rng.integers(0, size - size // 4, 3)
            volume[x : x + size // 4, y : y + size // 4, z : z + size // 4] += 3.0
        (root / subject / "T1").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / subject / "T1" / "T1.nii.gz"))
        rows.append(f"{subject},{int(rng.integers(30, 80))},{label}")
    (root / "participants.csv").write_text("\n".join(rows) + "\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--subjects", type=int, default=12, help="subjects per node")
    parser.add_argument("--size", type=int, default=16, help="volume edge in voxels")
    args = parser.parse_args()
    for node in range(1, args.nodes + 1):
        root = write_node_cohort(
            args.out / f"node-{node}", args.subjects, args.size, seed=node, prefix=f"n{node}"
        )
        print(root)


if __name__ == "__main__":
    main()
