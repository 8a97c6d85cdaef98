"""The experiment's record: per-round, per-node metrics, appended to metrics.jsonl as rounds end."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NodeRoundRecord", "RoundRecord", "MetricsLog"]


@dataclass
class NodeRoundRecord:
    """One node's part in one round."""

    round: int
    node: str
    node_name: str
    n_samples: int
    loss: float | None
    metrics: dict[str, float]
    train_seconds: float
    n_steps: int


@dataclass
class RoundRecord:
    """One round: who answered, who failed and why, and the weighted mean training loss."""

    round: int
    nodes: list[NodeRoundRecord] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float | None:
        weighted = [(r.loss, r.n_samples) for r in self.nodes if r.loss is not None]
        total = sum(n for _, n in weighted)
        return sum(loss * n for loss, n in weighted) / total if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "nodes": [asdict(n) for n in self.nodes],
            "failures": dict(self.failures),
            "seconds": self.seconds,
            "mean_loss": self.mean_loss,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        return cls(
            round=int(data["round"]),
            nodes=[NodeRoundRecord(**n) for n in data["nodes"]],
            failures=dict(data["failures"]),
            seconds=float(data["seconds"]),
        )


class MetricsLog:
    """Appends one JSON line per node per round to `metrics.jsonl` (and one per failure)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: RoundRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        for node in record.nodes:
            row = {"time": time.time(), **asdict(node)}
            lines.append(json.dumps(row, sort_keys=True))
        for node_id, reason in record.failures.items():
            lines.append(
                json.dumps({"round": record.round, "node": node_id, "failed": reason}, sort_keys=True)
            )
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()

    def truncate_after(self, round_number: int) -> None:
        """Drop lines of rounds after `round_number` (a resumed run replays them)."""
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["round"] <= round_number
        ]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    @staticmethod
    def read(path: Path) -> Sequence[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
