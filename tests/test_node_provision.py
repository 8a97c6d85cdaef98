"""provision_node: one call gives a home with datasets registered and reviewed plans approved."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import NodeHomeError
from common.plan_hash import plan_hash
from node.plans import PlanRegistry
from node.provision import DatasetSpec, ReviewedPlan, approve_plans, provision_node
from node.registry import DatasetRegistry

SOURCE = "class P:\n    pass\n"


def test_provisioned_home_has_its_datasets_and_approved_plans(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("a,y\n1,0\n2,1\n")
    home = provision_node(
        tmp_path / "h",
        name="site",
        node_id="node-9",
        datasets=[DatasetSpec("d", ["#t"], csv, None, "y")],
        approved_plans=[ReviewedPlan("P", SOURCE)],
    )
    assert home.node_id == "node-9" and home.name == "site"
    assert [d.name for d in DatasetRegistry(home.db_path).match(["#t"])] == ["d"]
    assert PlanRegistry(home.db_path).status(plan_hash(SOURCE)) == "approved"
    approve_plans(home, [ReviewedPlan("P", SOURCE)])  # approving again is harmless
    assert PlanRegistry(home.db_path).status(plan_hash(SOURCE)) == "approved"


def test_provisioning_an_existing_home_is_refused(tmp_path: Path) -> None:
    provision_node(tmp_path / "h")
    with pytest.raises(NodeHomeError, match="already a fedloom node home"):
        provision_node(tmp_path / "h")
