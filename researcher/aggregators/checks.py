"""The checks every aggregator runs on a reply before it folds or keeps any of it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.errors import RoundFailedError
from common.finite import FiniteArrays, all_finite

__all__ = ["check_reply"]


def check_reply(
    node_id: str,
    params: Mapping[str, np.ndarray],
    weight: float,
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Raise RoundFailedError unless the reply has the model's names and shapes, finite
    values and a positive weight (its training sample count)."""
    if not weight > 0:
        raise RoundFailedError(f"node {node_id} reported {weight} training samples; expected > 0")
    if set(params) != set(shapes):
        raise RoundFailedError(
            f"node {node_id} sent parameters {sorted(set(params) ^ set(shapes))[:5]} "
            "that do not match the global model"
        )
    for name, shape in shapes.items():
        value = np.asarray(params[name])
        if value.shape != shape:
            raise RoundFailedError(
                f"node {node_id} sent {name!r} with shape {value.shape}, expected {shape}"
            )
        # FiniteArrays were scanned when built (the round engine's reply decoding): a
        # second scan would cost as much as folding the reply.
        if not isinstance(params, FiniteArrays) and not all_finite(value):
            raise RoundFailedError(
                f"node {node_id} sent non-finite values in {name!r}: lower its learning "
                "rate or check its data"
            )
