"""Synthetic tabular data for the demo and the compose federation: one CSV per node.

Every node samples from the same logistic ground truth with a node-specific shift of the
features, so the federation has something real to learn and nodes are not identical.

Usage: python -m fedloom.demo_data OUT.csv --node-index 0 [--samples 600] [--seed 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["N_FEATURES", "make_demo_dataset", "write_demo_csv"]

N_FEATURES = 8
_TRUE_WEIGHTS = np.array([1.5, -2.0, 0.8, 0.0, 1.2, -0.7, 0.3, -1.1])


def make_demo_dataset(
    node_index: int, n_samples: int = 600, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 8) and binary labels (n,) for node `node_index`."""
    rng = np.random.default_rng(seed + 1000 * node_index)
    shift = rng.normal(0.0, 0.5, size=N_FEATURES)
    x = rng.normal(0.0, 1.0, size=(n_samples, N_FEATURES)) + shift
    logits = x @ _TRUE_WEIGHTS + 0.3 * np.sin(3 * x[:, 0])
    y = (rng.random(n_samples) < 1.0 / (1.0 + np.exp(-logits))).astype(int)
    return x, y


def write_demo_csv(path: Path, node_index: int, n_samples: int = 600, seed: int = 7) -> Path:
    """Write the node's dataset as CSV with columns x0..x7 and target y."""
    x, y = make_demo_dataset(node_index, n_samples, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([f"x{i}" for i in range(N_FEATURES)] + ["y"])
    data = np.column_stack([x, y])
    fmt = ["%.6f"] * N_FEATURES + ["%d"]
    np.savetxt(path, data, delimiter=",", header=header, comments="", fmt=fmt)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--node-index", type=int, default=0)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(write_demo_csv(args.out, args.node_index, args.samples, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
