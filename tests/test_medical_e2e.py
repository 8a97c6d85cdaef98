"""The 3D CNN example over two real nodes serving medical-folder datasets (loopback gRPC)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from common.training_plans.source import plan_source
from node.provision import DatasetSpec, ReviewedPlan, provision_node
from researcher.federated_workflows import Experiment
from researcher.plan_loader import load_plan_class
from researcher.strategies.default_strategy import DefaultStrategy
from tests.conftest import ROOT, wait_for_nodes

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "medical_3d_cnn"


def _make_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medical_make_data", EXAMPLE / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_3d_cnn_example_trains_over_two_nodes_of_medical_folders(
    tmp_path: Path, start_node, researcher_address
) -> None:  # type: ignore[no-untyped-def]
    plan_class = load_plan_class(EXAMPLE / "plan.py", "Medical3dCnnPlan")
    make_data = _make_data()
    nodes = []
    for seed, (name, subjects) in enumerate((("north", 8), ("south", 12))):
        scans = make_data.write_node_cohort(tmp_path / name, subjects, size=8, seed=seed)
        home = tmp_path / "homes" / name
        provision_node(
            home,
            name=name,
            datasets=[DatasetSpec("mri", ["#mri"], scans, "medical-folder", "label")],
            approved_plans=[ReviewedPlan(plan_class.__name__, plan_source(plan_class), "test")],
        )
        nodes.append(start_node(name, home=home))
    wait_for_nodes(2)
    exp = Experiment(
        tags=["#mri"],
        training_plan_class=plan_class,
        model_args={"channels": 2},
        training_args={
            "epochs": 1,
            "batch_size": 4,
            "random_seed": 0,
            "test_ratio": 0.25,
            "test_on_global_updates": True,
        },
        round_limit=2,
        node_selection_strategy=DefaultStrategy(min_nodes=2),
    )
    initial = {k: v.copy() for k, v in exp.training_plan().get_parameters().items()}
    assert exp.run() == 2
    replies = exp.training_replies()[2]
    assert set(replies) == {node.node_id for node in nodes}
    # 6 and 9 training subjects after the 25 % test split, in batches of 4.
    assert sorted(r["sample_size"] for r in replies.values()) == [6, 9]
    for reply in replies.values():
        assert 0.0 <= reply["metrics"]["global_accuracy"] <= 1.0
        assert np.isfinite(reply["loss"])
    final = exp.aggregated_params()[2]["params"]
    assert any(not np.allclose(final[k], initial[k]) for k in initial)
