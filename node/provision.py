"""Set up a node home in one call: init, register datasets, pre-approve reviewed plans.

For scripted deployments, the demo, benchmarks and tests; operators do the same step by step
with `fedloom node init`, `dataset add` and `plan approve`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.plan_hash import plan_hash
from node.home import NodeHome
from node.plans import PlanRegistry
from node.registry import DatasetRegistry

__all__ = ["DatasetSpec", "ReviewedPlan", "provision_node"]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset to register: name, tags, path, type (None: detect) and target column."""

    name: str
    tags: Sequence[str]
    path: Path
    data_type: str | None = None
    target: str | None = None
    #: Type settings, e.g. {"demographics": "clinical.csv"} for a medical folder.
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReviewedPlan:
    """A training plan's source the operator has reviewed and approves ahead of time."""

    class_name: str
    source: str
    reviewer: str = field(default="provisioning")


def provision_node(
    path: Path,
    *,
    name: str | None = None,
    node_id: str | None = None,
    datasets: Sequence[DatasetSpec] = (),
    approved_plans: Sequence[ReviewedPlan] = (),
) -> NodeHome:
    """Create the home at `path` (refused if it exists) and fill it."""
    home = NodeHome(path).init(name=name, node_id=node_id)
    registry = DatasetRegistry(home.db_path)
    for dataset in datasets:
        registry.add(
            name=dataset.name,
            tags=list(dataset.tags),
            path=dataset.path,
            data_type=dataset.data_type,
            target=dataset.target,
            options=dataset.options,
        )
    approve_plans(home, approved_plans)
    return home


def approve_plans(home: NodeHome, plans: Sequence[ReviewedPlan]) -> None:
    """Record and approve reviewed plans on an existing home (already approved ones are kept)."""
    registry = PlanRegistry(home.db_path)
    for plan in plans:
        sha = plan_hash(plan.source)
        if registry.status(sha) is None:
            registry.record_request(sha, plan.class_name, plan.source, researcher=plan.reviewer)
        registry.approve(sha[:12])
