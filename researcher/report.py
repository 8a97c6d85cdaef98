"""`fedloom researcher report DIR`: a PNG of loss and metrics per round, and a summary table.

Everything is computed from the experiment folder's metrics.jsonl: per round, the number of
nodes that answered and failed, the training loss and every validation metric averaged over
the nodes weighted by their sample counts, and the round's duration.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigurationError
from researcher.history import (
    METRICS_FILE,
    MetricsLog,
    NodeRoundRecord,
    RoundRecord,
    rounds_from_rows,
)
from researcher.tables import Column, print_table

__all__ = [
    "TRAIN_LOSS_LABEL",
    "RoundSummary",
    "format_number",
    "load_history",
    "plot_history",
    "print_summary",
    "summarize",
]

log = logging.getLogger(__name__)

REPORT_FILE = "report.png"

#: Panels per row of the figure: loss plus up to two metrics side by side stays readable
#: on a laptop screen; more metrics wrap to further rows.
PANELS_PER_ROW = 3
#: Figure size per panel in inches, and resolution: a 3-panel row is ~1500 px wide.
PANEL_INCHES = (5.0, 3.6)
DPI = 100

#: What the loss column holds, said the same way in every table and in the live display.
TRAIN_LOSS_LABEL = "mean train loss"

#: The DP column: the most ε any node reports having spent on the experiment (record-level DP).
DP_EPSILON_LABEL = "DP ε (max)"

#: A run longer than this many rounds is summarised: its first HEAD_ROUNDS, its best round
#: and its last TAIL_ROUNDS (a screenful either way; `--all` prints every round).
LONG_RUN_ROUNDS = 20
HEAD_ROUNDS = 3
TAIL_ROUNDS = 5
#: The gap row between shown rounds, and the mark of the best round.
GAP = "..."
BEST_MARK = "*"


@dataclass(frozen=True)
class RoundSummary:
    """One round's line of the summary table."""

    round: int
    answered: int
    failed: int
    mean_loss: float | None
    metrics: dict[str, float]
    seconds: float
    #: Node-level DP's δ (its cumulative ε is the metric node_dp_epsilon), None without it.
    privacy_delta: float | None = None
    #: The largest ε a node reports under record-level DP after this round (None: no DP).
    dp_epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "answered": self.answered,
            "failed": self.failed,
            "mean_loss": self.mean_loss,
            "metrics": dict(self.metrics),
            "seconds": self.seconds,
            **({"node_dp_delta": self.privacy_delta} if self.privacy_delta is not None else {}),
            "dp_epsilon": self.dp_epsilon,
        }


def load_history(folder: Path) -> list[RoundRecord]:
    """The rounds recorded in `folder/metrics.jsonl`."""
    folder = Path(folder)
    path = folder / METRICS_FILE if folder.is_dir() else folder
    if not path.is_file():
        nested = (
            sorted(p.parent.name for p in folder.glob(f"*/{METRICS_FILE}"))
            if folder.is_dir()
            else []
        )
        hint = f"; experiment folders found inside: {', '.join(nested)}" if nested else ""
        raise ConfigurationError(f"no {METRICS_FILE} in {folder}: pass an experiment folder{hint}")
    records = rounds_from_rows(MetricsLog.read(path))
    if not records:
        raise ConfigurationError(f"{path} is empty: no round has completed yet")
    return records


def summarize(records: list[RoundRecord]) -> list[RoundSummary]:
    """One RoundSummary per round."""
    return [
        RoundSummary(
            round=r.round,
            answered=len(r.nodes),
            failed=len(r.failures),
            mean_loss=r.mean_loss,
            metrics={**r.mean_metrics(), **_privacy_columns(r)},
            seconds=r.seconds,
            privacy_delta=None if r.node_dp is None else r.node_dp.delta,
            dp_epsilon=r.max_dp_epsilon,
        )
        for r in records
    ]


def _privacy_columns(record: RoundRecord) -> dict[str, float]:
    """Node-level DP's cumulative ε after this round (at its δ), shown as a column."""
    if record.node_dp is None:
        return {}
    return {"node_dp_epsilon": record.node_dp.epsilon}


def print_summary(
    console: Any, summaries: list[RoundSummary], title: str, *, all_rounds: bool = False
) -> None:
    """Print the per-round table on a rich console, fitted to its width (see researcher.tables).

    A run longer than LONG_RUN_ROUNDS shows its first and last rounds and its best round
    (lowest mean training loss) unless `all_rounds`.
    """
    metric_names = sorted({name for s in summaries for name in s.metrics})
    private = any(s.dp_epsilon is not None for s in summaries)
    columns = [
        Column("round"),
        Column("answered"),
        Column("failed"),
        Column(TRAIN_LOSS_LABEL),
        *(Column(name) for name in metric_names),
        *([Column(DP_EPSILON_LABEL)] if private else []),
        Column("seconds"),
    ]
    best = _best_round(summaries)
    shown = summaries if all_rounds else _shown_rounds(summaries, best)
    rows: list[list[str]] = []
    previous: int | None = None
    for s in shown:
        if previous is not None and s.round != previous + 1:
            rows.append([GAP, *([""] * (len(columns) - 1))])
        previous = s.round
        rows.append(
            [
                f"{s.round}{BEST_MARK if best is not None and s.round == best.round else ''}",
                str(s.answered),
                str(s.failed),
                format_number(s.mean_loss),
                *(format_number(s.metrics.get(name)) for name in metric_names),
                *([format_number(s.dp_epsilon)] if private else []),
                f"{s.seconds:.2f}",
            ]
        )
    print_table(console, title, columns, rows)
    notes = []
    if len(shown) < len(summaries):
        notes.append(
            f"{len(summaries) - len(shown)} of {len(summaries)} rounds not shown: "
            "`fedloom researcher report DIR --all` lists every round"
        )
    if best is not None:
        notes.append(
            f"{BEST_MARK} best round: {best.round}, lowest {TRAIN_LOSS_LABEL} "
            f"{format_number(best.mean_loss)}"
        )
    deltas = sorted({s.privacy_delta for s in summaries if s.privacy_delta is not None})
    if deltas:
        notes.append(
            "node_dp_epsilon: node-level DP's cumulative ε after the round, at δ = "
            + ", ".join(f"{d:g}" for d in deltas)
        )
    for note in notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)


def _best_round(summaries: list[RoundSummary]) -> RoundSummary | None:
    scored = [s for s in summaries if s.mean_loss is not None and math.isfinite(s.mean_loss)]
    return min(scored, key=lambda s: (s.mean_loss, s.round)) if scored else None


def _shown_rounds(summaries: list[RoundSummary], best: RoundSummary | None) -> list[RoundSummary]:
    if len(summaries) <= LONG_RUN_ROUNDS:
        return summaries
    shown = summaries[:HEAD_ROUNDS] + summaries[-TAIL_ROUNDS:]
    if best is not None and best not in shown:
        shown.insert(HEAD_ROUNDS, best)
    return shown


def format_number(value: float | None) -> str:
    """4 decimals; scientific notation where 4 decimals would hide the value or run long."""
    if value is None:
        return ""
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6) and math.isfinite(value):
        return f"{value:.4g}"
    return f"{value:.4f}"


def plot_history(records: list[RoundRecord], path: Path, title: str = "") -> Path:
    """Write a PNG: training loss, then each validation metric, per round (mean and per node)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ConfigurationError(
            "the report needs matplotlib: pip install 'fedloom[plots]' (or pip install matplotlib)"
        ) from exc
    metric_names = sorted({name for r in records for node in r.nodes for name in node.metrics})
    panels = ["loss", *metric_names]
    columns = min(len(panels), PANELS_PER_ROW)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), squeeze=False
    )
    node_names = sorted({node.node_name for r in records for node in r.nodes})
    for index, panel in enumerate(panels):
        ax = axes[index // columns][index % columns]
        for name in node_names:
            points = [
                (r.round, _node_value(node, panel))
                for r in records
                for node in r.nodes
                if node.node_name == name and _node_value(node, panel) is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=".", linewidth=1, alpha=0.6, label=name)
        means = [
            (r.round, r.mean_loss if panel == "loss" else r.mean_metrics().get(panel))
            for r in records
        ]
        means = [(x, y) for x, y in means if y is not None]
        if means:
            xs, ys = zip(*means, strict=True)
            ax.plot(xs, ys, color="black", linewidth=2.5, marker="o", label="weighted mean")
        ax.set_title("training loss" if panel == "loss" else panel)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def _node_value(node: NodeRoundRecord, panel: str) -> float | None:
    return node.loss if panel == "loss" else node.metrics.get(panel)
