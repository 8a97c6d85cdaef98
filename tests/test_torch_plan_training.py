"""A torch plan's round of local training, as the node's task process runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.training_args import TrainingArgs
from tests.conftest import write_tabular_csv
from tests.plans.tabular import LogisticPlan, NativeSgdPlan, make_logistic_data

DP = {"type": "local", "clip": 0.5, "noise_multiplier": 1.0, "delta": 1e-5}


@pytest.mark.parametrize(
    ("plan_class", "dp"),
    [(LogisticPlan, None), (NativeSgdPlan, None), (LogisticPlan, DP)],
    ids=["fedloom-optimizer", "torch-optim", "dp-sgd"],
)
def test_training_frees_its_gradients_before_the_reply_is_written(
    tmp_path: Path, plan_class: type, dp: dict | None
) -> None:
    # The reply is written right after training: the gradients' memory (a model's size)
    # must be free by then for it to reuse.
    x, y = make_logistic_data(seed=0, n=100)
    plan = plan_class()
    plan.dataset_path = str(write_tabular_csv(tmp_path / "data.csv", x, y))
    plan.post_init({}, TrainingArgs.from_dict({"num_updates": 3, "batch_size": 20, "dp": dp}))
    before = {k: v.clone() for k, v in plan.model().state_dict().items()}

    result = plan.run_local_training(plan.training_optimizer())

    assert result.n_steps == 3
    after = plan.model().state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it did train
    assert [p.grad for p in plan.model().parameters()] == [None, None]
