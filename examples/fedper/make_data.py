"""Write one CSV per node for the FedPer example: same classes, different label distributions.

python examples/fedper/make_data.py data/fedper      # writes node0.csv, node1.csv, node2.csv

The classes are Gaussian clusters in 8 dimensions, shared by every node; each node mostly
holds two of the four classes (its own label distribution), which a local head learns.
"""

import sys
from pathlib import Path

import numpy as np

N_FEATURES = 8
N_CLASSES = 4
#: Per node, the probability of each class: node i mostly holds classes i and i + 1.
LABEL_DISTRIBUTIONS = (
    (0.45, 0.45, 0.05, 0.05),
    (0.05, 0.45, 0.45, 0.05),
    (0.05, 0.05, 0.45, 0.45),
)


def node_data(index: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of node `index` (n samples)."""
    centers = np.random.default_rng(seed).normal(scale=1.5, size=(N_CLASSES, N_FEATURES))
    rng = np.random.default_rng(seed + 1 + index)
    y = rng.choice(N_CLASSES, size=n, p=LABEL_DISTRIBUTIONS[index % len(LABEL_DISTRIBUTIONS)])
    x = centers[y] + rng.normal(size=(n, N_FEATURES))
    return x, y


def write_node_csv(path: Path, index: int, n: int = 300) -> Path:
    """Write node `index`'s data as a CSV with columns x0..x7 and y."""
    x, y = node_data(index, n)
    header = ",".join([*(f"x{i}" for i in range(N_FEATURES)), "y"])
    rows = np.column_stack([x, y])
    np.savetxt(
        path, rows, delimiter=",", header=header, comments="", fmt=["%.6f"] * N_FEATURES + ["%d"]
    )
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/fedper")
    out.mkdir(parents=True, exist_ok=True)
    for i in range(len(LABEL_DISTRIBUTIONS)):
        print(write_node_csv(out / f"node{i}.csv", i))
