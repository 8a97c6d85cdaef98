"""Benchmark double-masking SecAgg against the raw keystream it is built on.

Usage: python bench/secagg.py [--sizes 1e6 1e7] [--nodes 3 10] [--repeats 3] [--no-declearn]

Times are CPU time of this process (``time.process_time``), best of ``--repeats`` runs: every
operation here is single-threaded, and on a shared machine wall time mostly measures the
neighbours (on the 2-core development box, shared by several jobs, wall times were 2-4x the
CPU times). For each vector size and node count, in one process:
- raw ks: one AES-128-CTR keystream of the vector's size (the unit every column is read in);
- mask: one node encodes and double-masks its vector (1 self + n-1 pairwise keystreams);
- unmask 0: the researcher sums n masked vectors and removes n self masks;
- unmask 1: one node dropped: sum of n-1 vectors, minus n-1 self masks and the n-1 pairwise
  masks toward the dropped node (rebuilt from its mask key);
- ratios: each operation over the raw keystream time *for the keystreams it must generate*
  (n for mask and unmask 0, 2(n-1) for unmask 1); targets are mask <= 3x, unmask 1 <= 5x.
Per node count (independent of the vector size):
- share gen: one node Shamir-shares its seed and mask key among n and seals n-1 shares;
- reconstruct: the researcher rebuilds n secrets (n-1 seeds, 1 key) from t shares each.
Share and reconstruction times exclude the network; unmask times exclude waiting for nodes.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.secagg import SecaggKeyPair, SecureAggregation, new_session_id
from common.secagg.double_masking import DoubleMasker, removal_seeds, survivors_sum
from common.secagg.masking import CHUNK_VALUES, KeystreamBuffer, keystream_cipher
from common.secagg.shamir import reconstruct, share_secrets
from common.secagg.share_box import seal_share

SETTINGS = SecureAggregation()
# declearn builds Python lists of every value: a vector of this size keeps its run short.
DECLEARN_VALUES = 1_000_000


def best_ms(run: Callable[[], object], repeats: int) -> float:
    """Best CPU time of this process over ``repeats`` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times) * 1e3


def raw_keystream(n_values: int) -> None:
    """Generate one keystream of ``n_values`` words in cache-sized chunks, discarding it."""
    chunker = KeystreamBuffer(n_values)
    cipher = keystream_cipher(os.urandom(16))
    for start in range(0, n_values, CHUNK_VALUES):
        chunker.next_words(cipher, min(CHUNK_VALUES, n_values - start))


class BenchFederation:
    """n nodes' round keys and seeds, and maskers that never refuse (no ledger)."""

    def __init__(self, n_nodes: int) -> None:
        self.ids = [f"node-{i:02d}" for i in range(n_nodes)]
        self.session = new_session_id("bench", 0)
        self.keys = {node: SecaggKeyPair.generate() for node in self.ids}
        self.publics = {node: key.public_bytes() for node, key in self.keys.items()}
        self.seeds = {node: os.urandom(32) for node in self.ids}

    def masker(self, node: str) -> DoubleMasker:
        return DoubleMasker(
            session_id=self.session,
            node_id=node,
            self_seed=self.seeds[node],
            mask_keys=self.keys[node],
            peer_mask_keys=self.publics,
            settings=SETTINGS,
            on_masked=lambda name, shape: None,
        )

    def unmask(self, masked: dict[str, np.ndarray], dropped: list[str]) -> np.ndarray:
        survivors = [n for n in self.ids if n not in dropped]
        seeds = removal_seeds(
            session_id=self.session,
            payload="params",
            survivor_seeds={n: self.seeds[n] for n in survivors},
            dropped_keys={n: self.keys[n] for n in dropped},
            mask_public_keys=self.publics,
        )
        shape = next(iter(masked.values())).shape
        total = survivors_sum([masked[n] for n in survivors], seeds, shape)
        return SETTINGS.codec.decode_sum(total)


def bench_case(n_values: int, n_nodes: int, repeats: int) -> dict[str, float]:
    """Time masking and unmasking for one configuration, checking the sums are right."""
    fed = BenchFederation(n_nodes)
    rng = np.random.default_rng(0)
    values = {node: rng.uniform(-1, 1, n_values) for node in fed.ids}
    node = fed.ids[0]
    masker = fed.masker(node)
    counter = iter(range(10**9))
    mask_ms = best_ms(lambda: masker.mask(f"params-{next(counter)}", values[node]), repeats)
    raw_ms = best_ms(lambda: raw_keystream(n_values), repeats)
    masked = {n: fed.masker(n).mask("params", values[n]) for n in fed.ids}
    timings = {"mask": mask_ms, "raw": raw_ms}
    for label, dropped in (("unmask0", []), ("unmask1", [fed.ids[-1]])):
        timings[label] = best_ms(lambda d=dropped: fed.unmask(masked, d), repeats)  # type: ignore[misc]
        survivors = [n for n in fed.ids if n not in dropped]
        error = np.abs(fed.unmask(masked, dropped) - sum(values[n] for n in survivors)).max()
        if error > SETTINGS.sum_error_bound(len(survivors)) + 1e-12:
            raise AssertionError(f"unmasked sum is off by {error:g}, above the stated bound")
    return timings


def bench_shares(n_nodes: int, repeats: int) -> dict[str, float]:
    """Share generation for one node, and reconstruction of n secrets by the researcher."""
    threshold = SETTINGS.threshold_for(n_nodes)
    points = list(range(1, n_nodes + 1))
    cipher_keys = [X25519PrivateKey.generate() for _ in points]
    publics = [SecaggKeyPair(k).public_bytes() for k in cipher_keys]
    secrets = [os.urandom(32), os.urandom(32)]

    def generate() -> None:
        shares = share_secrets(secrets, points, threshold)
        for peer in range(1, n_nodes):
            seal_share(
                (points[peer], shares[peer]),
                own_secret=cipher_keys[0],
                receiver_public=publics[peer],
                session_id="bench",
                sender="node-00",
                receiver=f"node-{peer:02d}",
            )

    held = share_secrets(secrets, points, threshold)[:, 0, :]
    subset = {x: held[x - 1] for x in points[:threshold]}

    def rebuild() -> None:
        for _ in range(n_nodes):
            reconstruct(subset, threshold)

    return {"share": best_ms(generate, repeats), "rebuild": best_ms(rebuild, repeats)}


def bench_declearn(n_values: int) -> float | None:
    """declearn's training-time SecAgg of one node of 3 (2 peers), in ms; None if absent.

    This is what ``SecaggTrainReply.from_cleartext_message`` runs on a train reply's model
    updates: ``Encrypter.encrypt_aggregate(ModelUpdates(...))``, i.e. flatten the Vector to a
    Python list, quantize it value by value, add masks from numpy's PCG64 (not a CSPRNG).
    """
    try:
        from declearn.aggregator import ModelUpdates
        from declearn.model.sklearn import NumpyVector

        # declearn re-exports it without __all__, which strict mypy reads as private.
        from declearn.secagg.masking import MaskingEncrypter  # type: ignore[attr-defined]
    except ImportError:
        return None
    encrypter = MaskingEncrypter([1], [2], bitsize=64, clipval=SETTINGS.clip)
    updates = ModelUpdates(
        updates=NumpyVector({"w": np.random.default_rng(0).uniform(-1, 1, n_values)}), weights=1
    )
    return best_ms(lambda: encrypter.encrypt_aggregate(updates), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-declearn", action="store_true")
    args = parser.parse_args()

    print(f"SecAgg settings: clip={SETTINGS.clip:g}, fraction_bits={SETTINGS.fraction_bits}")
    print(
        f"{'values':>10} {'nodes':>5} {'raw ks ms':>10} {'mask ms':>9} {'x (n ks)':>9} "
        f"{'unmask0 ms':>11} {'x (n ks)':>9} {'unmask1 ms':>11} {'x (2(n-1) ks)':>14}"
    )
    for size in args.sizes:
        for n_nodes in args.nodes:
            row = bench_case(int(size), n_nodes, args.repeats)
            raw = row["raw"]
            print(
                f"{int(size):>10} {n_nodes:>5} {raw:>10.2f} {row['mask']:>9.2f} "
                f"{row['mask'] / (n_nodes * raw):>9.2f} {row['unmask0']:>11.2f} "
                f"{row['unmask0'] / (n_nodes * raw):>9.2f} {row['unmask1']:>11.2f} "
                f"{row['unmask1'] / (2 * (n_nodes - 1) * raw):>14.2f}"
            )
    print("targets: mask <= 3x its keystreams, unmask with 1 dropout <= 5x its keystreams")
    print(f"{'nodes':>5} {'t':>3} {'share gen ms (1 node)':>22} {'reconstruct ms (n secrets)':>27}")
    for n_nodes in args.nodes:
        shares = bench_shares(n_nodes, args.repeats)
        print(
            f"{n_nodes:>5} {SETTINGS.threshold_for(n_nodes):>3} {shares['share']:>22.2f} "
            f"{shares['rebuild']:>27.2f}"
        )
    if not args.no_declearn:
        theirs = bench_declearn(DECLEARN_VALUES)
        if theirs is not None:
            ours = bench_case(DECLEARN_VALUES, 3, args.repeats)["mask"]
            print(
                f"one node of 3 protecting {DECLEARN_VALUES} values for training: declearn "
                f"encrypt_aggregate(ModelUpdates) {theirs:.0f} ms (pairwise masks from PCG64, no "
                f"dropout recovery) vs fedloom double masking {ours:.1f} ms (AES-CTR self + "
                f"pairwise masks): {theirs / ours:.0f}x"
            )


if __name__ == "__main__":
    main()
