"""Node-level DP on the node: the supervisor clips and noises a reply before SecAgg masks it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import SecaggError
from common.payload_files import read_payload_file
from common.privacy import NodeLevelDP, privatize_update
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation

__all__ = ["global_params_digest", "privatize_reply"]

_READ_BYTES = 1 << 20


def global_params_digest(task: pb.WorkerTask) -> str | None:
    """SHA-256 of the downloaded global parameters under node-level DP (None otherwise)."""
    from common.training_args import TrainingArgs

    if TrainingArgs.from_json(task.training_args_json).node_dp is None:
        return None
    return _file_digest(Path(task.global_payload_path))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def privatize_reply(
    task: pb.WorkerTask,
    global_digest: str | None,
    params: Mapping[str, np.ndarray],
    aux: Mapping[str, Any],
    dp: NodeLevelDP,
    settings: SecureAggregation,
    participants: int,
) -> dict[str, np.ndarray]:
    """The trained ``params`` as global + clipped update + this node's noise share."""
    if not settings.protect_parameters:
        raise SecaggError(
            "node-level DP needs SecAgg to protect the parameters (the researcher would see "
            "this node's noisy update alone): use SecureAggregation(protect_parameters=True)"
        )
    if aux:
        raise SecaggError(
            f"node-level DP covers the model update only, but the plan's optimizer sends aux "
            f"vars {sorted(aux)} (e.g. Scaffold) that would travel without noise: remove those "
            "modules from the plan's node optimizer"
        )
    path = Path(task.global_payload_path)
    if global_digest is None or _file_digest(path) != global_digest:
        raise SecaggError(
            "node-level DP: the global parameters file changed while the training plan ran "
            "(or was not pinned before it): refusing to send an update measured against it"
        )
    global_params = read_payload_file(path).sections()
    return privatize_update(
        params,
        global_params.get(pb.PAYLOAD_SECTION_PARAMS, {}),
        dp,
        noise_shares=dp.noise_shares(participants),
        fraction_bits=settings.fraction_bits,
        value_clip=settings.clip,
    )
