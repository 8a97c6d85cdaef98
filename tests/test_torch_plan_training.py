"""A torch plan's round of local training, as the node's task process runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def _trained_plan(tmp_path: Path, plan_class: type = LogisticPlan):
    x, y = make_logistic_data(seed=0, n=100)
    plan = plan_class()
    plan.dataset_path = str(write_tabular_csv(tmp_path / "data.csv", x, y))
    plan.post_init({}, TrainingArgs.from_dict({"num_updates": 3, "batch_size": 20}))
    return plan


def _writable_copies(plan) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) + 0.25 for k, v in plan.get_parameters().items()}


def test_an_adopting_plan_trains_in_the_arrays_it_was_given(tmp_path: Path) -> None:
    # The node hands the downloaded global model's writable mapping: training must update
    # those very arrays, so that the file is the reply with no copy either way.
    plan = _trained_plan(tmp_path)
    given = _writable_copies(plan)
    start = {k: v.copy() for k, v in given.items()}

    assert plan.adopt_parameters(given)
    for name, value in plan.get_parameters().items():
        np.testing.assert_array_equal(value, start[name])  # the model holds the given values
    plan.run_local_training(plan.training_optimizer())

    assert any(not np.array_equal(given[k], start[k]) for k in given)  # trained in them
    for name, view in plan.parameter_views().items():
        assert np.shares_memory(view, given[name])


def test_reference_runs_equal_adopted_runs(tmp_path: Path) -> None:
    copied, adopted = _trained_plan(tmp_path / "a"), _trained_plan(tmp_path / "b")
    given = _writable_copies(copied)
    copied.set_parameters(given)
    assert adopted.adopt_parameters({k: v.copy() for k, v in given.items()})
    for plan in (copied, adopted):
        torch.manual_seed(3)
        plan.run_local_training(plan.training_optimizer())
    for name, value in copied.get_parameters().items():
        np.testing.assert_array_equal(adopted.get_parameters()[name], value)


class _TiedPlan(LogisticPlan):
    def init_model(self):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        model[1].weight = model[0].weight  # one tensor under two names
        return model


class _OwnParametersPlan(LogisticPlan):
    def get_parameters(self):
        return {k: v * 1 for k, v in super().get_parameters().items()}


class _OwnSharedLoadPlan(LogisticPlan):
    def set_shared_parameters(self, params):
        super().set_shared_parameters({k: v * 0.5 for k, v in params.items()})


@pytest.mark.parametrize(
    "break_it",
    ["read-only", "float64", "missing", "shape", "tied", "own-get-parameters", "own-shared-load"],
)
def test_what_cannot_be_adopted_is_left_as_it_was(tmp_path: Path, break_it: str) -> None:
    plan_class = {
        "tied": _TiedPlan,
        "own-get-parameters": _OwnParametersPlan,
        "own-shared-load": _OwnSharedLoadPlan,
    }.get(break_it, LogisticPlan)
    plan = _trained_plan(tmp_path, plan_class)
    before = {k: v.copy() for k, v in plan.get_parameters().items()}
    given = _writable_copies(plan)
    name = next(iter(given))
    if break_it == "read-only":
        given[name].flags.writeable = False
    elif break_it == "float64":
        given[name] = given[name].astype(np.float64)
    elif break_it == "missing":
        del given[name]
    elif break_it == "shape":
        given[name] = np.zeros(given[name].size + 1, given[name].dtype)

    assert not plan.adopt_parameters(given)
    for key, value in plan.get_parameters().items():
        np.testing.assert_array_equal(value, before[key])
