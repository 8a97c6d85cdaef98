"""Benchmark SecAgg masking against the raw keystream it is built on.

Usage: python bench/secagg.py [--sizes 1e6 1e7] [--nodes 3 10] [--repeats 5] [--no-declearn]

For each vector size and node count it prints, as the best of ``--repeats`` runs:
- mask: fixed-point encode + mask one node's vector (toward its n-1 peers);
- raw ks: generating the same (n-1) * size * 8 keystream bytes alone, in the same run;
- ratio: mask / raw ks (the target is within 3x);
- sum+unmask: the researcher adding n masked vectors and decoding the sum.
With declearn available it also times declearn's MaskingEncrypter on a smaller vector.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from common.secagg import NodeMasker, SecaggKeyPair, SecureAggregation, SecureSum, new_session_id
from common.secagg.masking import CHUNK_VALUES, KeystreamBuffer, keystream_cipher

# declearn generates masks one value at a time through Python: a small vector keeps it short.
DECLEARN_VALUES = 100_000
SETTINGS = SecureAggregation()


def best_ms(run: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def raw_keystream(n_values: int, n_streams: int) -> None:
    """Generate ``n_streams`` keystreams of ``n_values`` words, discarding them."""
    chunker = KeystreamBuffer(n_values)
    for _ in range(n_streams):
        cipher = keystream_cipher(os.urandom(16))
        for start in range(0, n_values, CHUNK_VALUES):
            chunker.next_words(cipher, min(CHUNK_VALUES, n_values - start))


def make_federation(n_nodes: int) -> tuple[list[str], dict[str, SecaggKeyPair]]:
    ids = [f"node-{i:02d}" for i in range(n_nodes)]
    return ids, {node: SecaggKeyPair.generate() for node in ids}


def bench_case(n_values: int, n_nodes: int, repeats: int) -> dict[str, float]:
    """Time node masking, raw keystream and researcher summation for one configuration."""
    ids, keys = make_federation(n_nodes)
    publics = {node: key.public_bytes() for node, key in keys.items()}
    session = new_session_id("bench", 0)
    maskers = {node: NodeMasker(session, node, keys[node], publics, SETTINGS) for node in ids}
    rng = np.random.default_rng(0)
    values = {node: rng.uniform(-1, 1, n_values) for node in ids}
    counter = iter(range(10**9))
    node = ids[0]
    mask_ms = best_ms(lambda: maskers[node].mask(f"params-{next(counter)}", values[node]), repeats)
    raw_ms = best_ms(lambda: raw_keystream(n_values, n_nodes - 1), repeats)
    masked = {node: maskers[node].mask("params", values[node]) for node in ids}

    def researcher() -> np.ndarray:
        secure_sum = SecureSum(session, ids, SETTINGS)
        for node in ids:
            secure_sum.add(node, "params", masked[node])
        return secure_sum.result("params")

    sum_ms = best_ms(researcher, repeats)
    error = np.abs(researcher() - np.sum([values[node] for node in ids], axis=0)).max()
    if error > SETTINGS.sum_error_bound(n_nodes) + 1e-12:
        raise AssertionError(f"unmasked sum is off by {error:g}, above the stated bound")
    return {"mask": mask_ms, "raw": raw_ms, "sum": sum_ms}


def bench_declearn(n_values: int) -> float | None:
    """declearn 2.x MaskingEncrypter time for one node of 3 (2 peers), in ms; None if absent."""
    try:
        # declearn re-exports it without __all__, which strict mypy reads as private.
        from declearn.secagg.masking import MaskingEncrypter  # type: ignore[attr-defined]
    except ImportError:
        return None
    encrypter = MaskingEncrypter([1], [2], bitsize=64, clipval=SETTINGS.clip)
    values = np.random.default_rng(0).uniform(-1, 1, n_values)
    return best_ms(lambda: encrypter.encrypt_numpy_array(values), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-declearn", action="store_true")
    args = parser.parse_args()

    print(f"SecAgg settings: clip={SETTINGS.clip:g}, fraction_bits={SETTINGS.fraction_bits}")
    header = f"{'values':>10} {'nodes':>5} {'mask ms':>9} {'raw ks ms':>10} {'ratio':>6} {'sum+unmask ms':>14}"
    print(header)
    for size in args.sizes:
        for n_nodes in args.nodes:
            row = bench_case(int(size), n_nodes, args.repeats)
            print(
                f"{int(size):>10} {n_nodes:>5} {row['mask']:>9.2f} {row['raw']:>10.2f} "
                f"{row['mask'] / row['raw']:>6.2f} {row['sum']:>14.2f}"
            )
    if not args.no_declearn:
        theirs = bench_declearn(DECLEARN_VALUES)
        if theirs is not None:
            ours = bench_case(DECLEARN_VALUES, 3, args.repeats)["mask"]
            print(
                f"declearn MaskingEncrypter, {DECLEARN_VALUES} values, 3 nodes: {theirs:.1f} ms "
                f"vs fedloom {ours:.2f} ms ({theirs / ours:.0f}x faster)"
            )


if __name__ == "__main__":
    main()
