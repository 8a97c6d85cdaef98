"""The experiment's record: per-round, per-node metrics, appended to metrics.jsonl as rounds end.

Each line of metrics.jsonl is one node's part in one round (`round`, `node`, `node_name`,
`n_samples`, `loss`, `metrics`, `train_seconds`, `n_steps`, `round_seconds`, `time`, and
`dp_epsilon`: the ε the experiment spent on that node under record-level DP, else null) or
one failure (`round`, `node`, `failed`), and under node-level DP one line per round with the
`node_dp_*` fields of `researcher.privacy.NodeDPRound` (`node_dp_epsilon` is cumulative,
at `node_dp_delta`). TensorBoard event files are written alongside when the
`tensorboard` package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from researcher.privacy.accountant import NodeDPRound

__all__ = [
    "METRICS_FILE",
    "MetricsLog",
    "NodeRoundRecord",
    "RoundRecord",
    "TensorBoardLog",
    "rounds_from_rows",
]

log = logging.getLogger(__name__)

#: The experiment folder's metrics file.
METRICS_FILE = "metrics.jsonl"

#: Sub-directory of the experiment folder holding TensorBoard event files.
TENSORBOARD_DIR = "tensorboard"


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
    dp_epsilon: float | None = None


@dataclass
class RoundRecord:
    """One round: who answered, who failed and why, and the weighted mean training loss."""

    round: int
    nodes: list[NodeRoundRecord] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    node_dp: NodeDPRound | None = None

    @property
    def mean_loss(self) -> float | None:
        """Sample-weighted mean training loss; a plain mean when sample counts are hidden (SecAgg)."""
        weighted = [(r.loss, r.n_samples) for r in self.nodes if r.loss is not None]
        if not weighted:
            return None
        total = sum(n for _, n in weighted)
        if not total:
            return sum(loss for loss, _ in weighted) / len(weighted)
        return sum(loss * n for loss, n in weighted) / total

    @property
    def max_dp_epsilon(self) -> float | None:
        """The largest ε any node reports under record-level DP (None: no node runs DP)."""
        spent = [n.dp_epsilon for n in self.nodes if n.dp_epsilon is not None]
        return max(spent) if spent else None

    def mean_metrics(self) -> dict[str, float]:
        """Each validation metric averaged over the nodes reporting it, weighted by sample count
        (equal weights when sample counts are hidden by SecAgg)."""
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        hidden = all(node.n_samples == 0 for node in self.nodes)
        for node in self.nodes:
            weight = 1 if hidden else node.n_samples
            for name, value in node.metrics.items():
                sums[name] = sums.get(name, 0.0) + value * weight
                weights[name] = weights.get(name, 0.0) + weight
        return {name: sums[name] / weights[name] for name in sorted(sums) if weights[name] > 0}

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "nodes": [asdict(n) for n in self.nodes],
            "failures": dict(self.failures),
            "seconds": self.seconds,
            "mean_loss": self.mean_loss,
            **({"node_dp": self.node_dp.to_dict()} if self.node_dp is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        return cls(
            round=int(data["round"]),
            nodes=[NodeRoundRecord(**n) for n in data["nodes"]],
            failures=dict(data["failures"]),
            seconds=float(data["seconds"]),
            node_dp=NodeDPRound.from_dict(data["node_dp"]) if data.get("node_dp") else None,
        )


class MetricsLog:
    """Appends one JSON line per node per round to `metrics.jsonl` (and one per failure)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: RoundRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        for node in record.nodes:
            row = {"time": time.time(), "round_seconds": record.seconds, **asdict(node)}
            lines.append(json.dumps(row, sort_keys=True))
        for node_id, reason in record.failures.items():
            lines.append(
                json.dumps(
                    {"round": record.round, "node": node_id, "failed": reason}, sort_keys=True
                )
            )
        if record.node_dp is not None:
            row = {"round": record.round, "time": time.time(), **record.node_dp.to_dict()}
            lines.append(json.dumps(row, sort_keys=True))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()

    def truncate_after(self, round_number: int) -> None:
        """Drop lines of rounds after `round_number` (a resumed run replays them).

        A line cut short by a researcher killed while writing is dropped too. The file is
        rewritten under a temporary name and renamed into place.
        """
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("dropping a truncated line of %s: %.60s", self.path, line)
                continue
            if isinstance(row, dict) and int(row.get("round", 0)) <= round_number:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    @staticmethod
    def read(path: Path) -> Sequence[dict[str, Any]]:
        return [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]


_NODE_FIELDS = (
    "round",
    "node",
    "node_name",
    "n_samples",
    "loss",
    "metrics",
    "train_seconds",
    "n_steps",
)


def rounds_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[RoundRecord]:
    """Rebuild the RoundRecords from metrics.jsonl rows, in round order."""
    records: dict[int, RoundRecord] = {}
    for row in rows:
        record = records.setdefault(int(row["round"]), RoundRecord(round=int(row["round"])))
        if "failed" in row:
            record.failures[str(row["node"])] = str(row["failed"])
            continue
        if "node_dp_epsilon" in row:
            record.node_dp = NodeDPRound.from_dict(dict(row))
            continue
        record.nodes.append(
            NodeRoundRecord(**{k: row[k] for k in _NODE_FIELDS}, dp_epsilon=row.get("dp_epsilon"))
        )
        record.seconds = float(row.get("round_seconds", record.seconds))
    return [records[r] for r in sorted(records)]


class TensorBoardLog:
    """Per-round scalars (mean and per-node loss and metrics) as TensorBoard event files."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    @classmethod
    def open(cls, folder: Path, first_round: int) -> TensorBoardLog | None:
        """A writer under `folder/tensorboard`, or None when tensorboard is not installed.

        Steps from `first_round` on are purged, so a resumed run replaces replayed rounds.
        """
        try:
            # Checked first: torch's writer imports torch even when tensorboard is absent.
            if importlib.util.find_spec("tensorboard") is None:
                raise ImportError("tensorboard")
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("tensorboard is not installed: no event files (pip install tensorboard)")
            return None
        return cls(SummaryWriter(log_dir=str(folder / TENSORBOARD_DIR), purge_step=first_round))

    def append(self, record: RoundRecord) -> None:
        step = record.round
        if record.mean_loss is not None:
            self._writer.add_scalar("loss/mean", record.mean_loss, step)
        for name, value in record.mean_metrics().items():
            self._writer.add_scalar(f"{name}/mean", value, step)
        for node in record.nodes:
            if node.loss is not None:
                self._writer.add_scalar(f"loss/{node.node_name}", node.loss, step)
            for name, value in node.metrics.items():
                self._writer.add_scalar(f"{name}/{node.node_name}", value, step)
        self._writer.add_scalar("nodes/answered", len(record.nodes), step)
        self._writer.add_scalar("nodes/failed", len(record.failures), step)
        self._writer.add_scalar("round/seconds", record.seconds, step)
        if record.node_dp is not None:
            self._writer.add_scalar("privacy/node_dp_epsilon", record.node_dp.epsilon, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
