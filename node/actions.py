"""Operator actions on a node home, each recorded in the audit trail.

The CLI and the console both change datasets and plans through these functions, so the
validation, the change and its audit entry are the same whichever one the operator uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.audit import AuditTrail, Source
from node.plans import PlanRecord, PlanRegistry
from node.registry import DatasetRecord, DatasetRegistry

__all__ = [
    "Actor",
    "add_dataset",
    "approve_plan",
    "reject_plan",
    "remove_dataset",
    "reregister_dataset",
]


@dataclass(frozen=True)
class Actor:
    """Who acts: the tool used and a name (a user name, or the console client's address)."""

    source: Source
    name: str


def add_dataset(
    db_path: Path,
    actor: Actor,
    name: str,
    tags: Sequence[str],
    path: Path | str,
    data_type: str | None = None,
    target: str | None = None,
    description: str = "",
    options: Mapping[str, str | None] | None = None,
) -> DatasetRecord:
    """Register a dataset (``DatasetRegistry.add``'s checks and errors) and audit it.

    ``options`` are type settings; unset (None or empty) ones are dropped."""
    settings = {key: value for key, value in (options or {}).items() if value}
    record = DatasetRegistry(db_path).add(
        name, tags, path, data_type, target, description, settings
    )
    AuditTrail(db_path).record(
        actor.source,
        actor.name,
        "dataset.add",
        record.name,
        f"{record.data_type} {record.path} tags={','.join(record.tags)} sha256={record.sha256}",
    )
    return record


def remove_dataset(db_path: Path, actor: Actor, name: str) -> DatasetRecord:
    """Unregister a dataset (its files stay) and audit it."""
    record = DatasetRegistry(db_path).remove(name)
    AuditTrail(db_path).record(actor.source, actor.name, "dataset.remove", record.name, record.path)
    return record


def reregister_dataset(db_path: Path, actor: Actor, name: str) -> DatasetRecord:
    """Accept a changed dataset's current content (``DatasetRegistry.reregister``) and audit it."""
    registry = DatasetRegistry(db_path)
    old_sha256 = registry.get(name).sha256
    record = registry.reregister(name)
    AuditTrail(db_path).record(
        actor.source,
        actor.name,
        "dataset.reregister",
        record.name,
        f"sha256 {old_sha256} -> {record.sha256}",
    )
    return record


def approve_plan(db_path: Path, actor: Actor, plan_id: str, reason: str = "") -> PlanRecord:
    """Allow a training plan on this node and audit it."""
    record = PlanRegistry(db_path).approve(plan_id, reason)
    _audit_decision(db_path, actor, "plan.approve", record)
    return record


def reject_plan(db_path: Path, actor: Actor, plan_id: str, reason: str = "") -> PlanRecord:
    """Forbid a training plan on this node and audit it."""
    record = PlanRegistry(db_path).reject(plan_id, reason)
    _audit_decision(db_path, actor, "plan.reject", record)
    return record


def _audit_decision(db_path: Path, actor: Actor, action: str, record: PlanRecord) -> None:
    detail = f"{record.class_name} from {record.researcher}"
    if record.reason:
        detail += f"; reason: {record.reason}"
    AuditTrail(db_path).record(actor.source, actor.name, action, record.plan_id, detail)
