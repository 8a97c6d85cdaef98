"""Benchmark the robust aggregators against FedAverage, updates in memory and spilled to disk.

Usage: python bench/robust_aggregators.py [--values 2.5e6] [--nodes 10] [--repeats 2]

For one float32 model of ``--values`` values and ``--nodes`` replies, in one process:
- add: CPU time to take every reply (FedAverage folds it; the others copy it into the store);
- finish: CPU time of ``finish()`` (the aggregation itself), best of ``--repeats``;
- ratio: (add + finish) over FedAverage's;
- peak: the largest traced allocation (tracemalloc) during ``finish()`` beyond what was held
  before it, in MiB and in units of the model's size: the working memory the store's
  slice-by-slice reading leaves, not counting the stored updates;
- the same with ``memory_budget_mb = 0`` (every update in an np.memmap file): the ratio of
  its time to the in-memory run (the page cache usually holds these files, so this measures
  the memmap path, not a cold disk).
Times are CPU time of this process (``time.process_time``): on the shared 2-core machine wall
time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from researcher.aggregators import Aggregator, FedAverage, build_aggregator

AGGREGATORS = {
    "fedavg": {},
    "median": {},
    "trimmed-mean": {"trim": 1},
    "krum": {"f": 1},
    "multi-krum": {"f": 1},
    "geometric-median": {},
}


def run(
    aggregator: Aggregator, replies: dict[str, dict[str, np.ndarray]]
) -> tuple[float, float, int]:
    """(add seconds, finish seconds, finish's traced peak in bytes) of one round."""
    first = next(iter(replies.values()))
    start = time.process_time()
    aggregator.start(first)
    for node, params in replies.items():
        aggregator.add(node, params, 100.0)
    added = time.process_time()
    tracemalloc.start()
    aggregator.finish()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return added - start, time.process_time() - added, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=float, default=2.5e6)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    size, n = int(args.values), args.nodes
    rng = np.random.default_rng(0)
    replies = {f"node-{i:02d}": {"w": rng.normal(size=size).astype(np.float32)} for i in range(n)}
    model_mib = size * 4 / 2**20
    print(f"{size:.3g} float32 values ({model_mib:.1f} MiB), {n} nodes")
    print("| aggregator | add | finish | ratio to FedAvg | peak in finish | on disk: time ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    reference = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for name, settings in AGGREGATORS.items():
            best = min(
                (run(build_aggregator(name, settings), replies) for _ in range(args.repeats)),
                key=lambda r: r[0] + r[1],
            )
            total = best[0] + best[1]
            reference = reference or total
            spilled = ""
            if not isinstance(build_aggregator(name, settings), FedAverage):
                aggregator = build_aggregator(name, {**settings, "memory_budget_mb": 0})
                aggregator.use_scratch_folder(Path(scratch))
                disk = min((run(aggregator, replies)[:2] for _ in range(args.repeats)), key=sum)
                spilled = f"{sum(disk) / total:.2f}x"
            peak = best[2] / 2**20
            print(
                f"| {name} | {best[0]:.2f} s | {best[1]:.2f} s | {total / reference:.1f}x | "
                f"{peak:.0f} MiB ({peak / model_mib:.1f}x model) | {spilled} |"
            )


if __name__ == "__main__":
    main()
