"""Benchmark node-level DP's cost on a node against SecAgg masking of the same vector.

Usage: python bench/dp_node.py [--sizes 1e5 1e6] [--sigmas 1 1e9] [--repeats 3]

CPU time of this process (``time.process_time``), best of ``--repeats``: single-threaded
work, and wall time on a shared machine measures the neighbours. For each vector size:
- mask: one node encodes and pairwise-masks its vector toward 2 peers (SecAgg alone);
- sample s: ``sample_discrete_gaussian(s, size)`` (the CSPRNG keystream, geometric draws,
  acceptance test) for each sigma (integer units; SecAgg's grid makes it ~z C 2^30);
- privatize: clip + round + noise + checks (``privatize_update``) at fraction_bits 30;
- ratios: sample and privatize over mask, measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from common.privacy import NodeLevelDP, privatize_update, sample_discrete_gaussian
from common.secagg import SecureAggregation
from common.secagg.masking import mask


def best_cpu(func: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        func()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 1e3, 1e9])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = SecureAggregation()
    dp = NodeLevelDP(clip=1.0, noise_multiplier=1.0)
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes):
        values = rng.normal(0, 0.1, size=size)
        seeds = [(bytes(range(16)), 1), (bytes(range(1, 17)), -1)]
        masked = best_cpu(
            partial(mask, values, seeds, settings.codec, node_id="n", name="p"), args.repeats
        )
        print(f"size {size:>9,}: mask {masked * 1e3:8.1f} ms")
        for sigma in args.sigmas:
            sampled = best_cpu(partial(sample_discrete_gaussian, sigma, size), args.repeats)
            print(
                f"  sample sigma {sigma:8.3g}: {sampled * 1e3:8.1f} ms "
                f"({sampled / masked:5.1f}x mask)"
            )
        private = best_cpu(
            partial(
                privatize_update,
                {"w": values + rng.normal(0, 0.01, size=size)},
                {"w": values},
                dp,
                noise_shares=3,
                fraction_bits=settings.fraction_bits,
                value_clip=settings.clip,
            ),
            args.repeats,
        )
        print(
            f"  privatize (z=1, C=1, 3 nodes): {private * 1e3:8.1f} ms "
            f"({private / masked:5.1f}x mask)"
        )


if __name__ == "__main__":
    main()
