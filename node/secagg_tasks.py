"""The node's SecAgg phase tasks (advertise, share, unmask) and the masking spec for training.

A thin adapter between task messages and :class:`common.secagg.participant.SecaggParticipant`:
the protocol and its refusals live there; the node home holds the per-session state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from common.proto import fedloom_pb2 as pb
from common.secagg.advert import NodeIdentity
from common.secagg.participant import SecaggParticipant

__all__ = ["SECAGG_TASK_KINDS", "SESSIONS_DIR", "SecaggTasks", "double_masking_spec"]

log = logging.getLogger(__name__)

# Task kinds this module answers (oneof members of TaskRequest).
SECAGG_TASK_KINDS = frozenset(
    {"secagg_advertise", "secagg_share", "secagg_consistency", "secagg_unmask"}
)
# Directory of the node home holding one state file per SecAgg session.
SESSIONS_DIR = "secagg_sessions"


class SecaggTasks:
    """Answers the SecAgg phases for one node home; raises SecaggError to refuse."""

    def __init__(self, node_id: str, home_path: Path, identity: NodeIdentity | None) -> None:
        self.participant = SecaggParticipant(node_id, home_path / SESSIONS_DIR, identity)

    def run(self, task: pb.TaskRequest) -> pb.TaskReply:
        """Run one SecAgg phase task; its answer travels in ``TaskReply.secagg``."""
        kind = task.WhichOneof("kind")
        if kind == "secagg_advertise":
            answer = pb.SecaggReply(advert=self.participant.advertise(task.secagg_advertise))
        elif kind == "secagg_share":
            answer = pb.SecaggReply(shares=self.participant.distribute_shares(task.secagg_share))
        elif kind == "secagg_consistency":
            answer = pb.SecaggReply(
                consistency=self.participant.sign_survivors(task.secagg_consistency)
            )
        elif kind == "secagg_unmask":
            answer = pb.SecaggReply(unmask=self.participant.unmask(task.secagg_unmask))
        else:
            raise ValueError(f"not a SecAgg phase task: {kind!r}")
        log.info("SecAgg %s answered for round %d of %s", kind, task.round, task.experiment_id)
        return pb.TaskReply(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            round=task.round,
            ok=True,
            secagg=answer,
        )


def double_masking_spec(home_path: Path, node_id: str) -> dict[str, Any]:
    """What a training process needs to double-mask (added to the worker's secagg spec)."""
    return {"state_dir": str(home_path / SESSIONS_DIR), "node_id": node_id}


def double_masker(spec: dict[str, Any], context: pb.SecaggContext) -> Any:
    """The training process's masker for a double-masking context (see node/worker.py)."""
    participant = SecaggParticipant(spec["node_id"], Path(spec["state_dir"]), None)
    return participant.masker(context)
