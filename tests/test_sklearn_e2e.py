"""scikit-learn plans in a real federation: 3 node processes, FedAvg, against numpy references."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from researcher.federated_workflows import Experiment
from researcher.strategies.default_strategy import DefaultStrategy
from tests.conftest import wait_for_nodes, write_tabular_csv
from tests.plans.sklearn_plans import LinearAdamPlan, LogisticSGDPlan

pytestmark = pytest.mark.slow

#: Samples per node: unequal, so FedAvg's sample weighting matters.
NODE_SIZES = (30, 50, 80)
ROUNDS = 3
LOCAL_STEPS = 5
#: The plans' learning rates (tests/plans/sklearn_plans.py) and the penalty used here.
SGD_LR, ADAM_LR, ALPHA = 0.5, 0.1, 0.01
BETA_1, BETA_2, EPS = 0.9, 0.99, 1e-7

Params = dict[str, np.ndarray]
NodeData = tuple[np.ndarray, np.ndarray]
Gradients = Callable[[Params, np.ndarray, np.ndarray], Params]


def _classification_data(seed: int, n: int) -> NodeData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x @ np.array([2.0, -1.0, 0.5, 0.0]) + 0.5 * rng.normal(size=n) > 0).astype(int)
    return x, y


def _regression_data(seed: int, n: int) -> NodeData:
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=(n, 4))
    return x, x @ np.array([1.0, -2.0, 0.5, 3.0]) - 1.0 + 0.1 * rng.normal(size=n)


def _start_three_nodes(
    tmp_path: Path, start_node, plan: type, make_data: Callable[[int, int], NodeData]
) -> list[NodeData]:
    """Start 3 nodes holding CSVs; return each node's data as the plan reads it back."""
    datasets = []
    for i, n in enumerate(NODE_SIZES):
        csv = write_tabular_csv(tmp_path / f"node{i}.csv", *make_data(i, n))
        start_node(f"node{i}", datasets=[("tab", ["#tab"], csv, "y")], approve=[plan])
        df = pd.read_csv(csv)
        datasets.append((df.drop(columns="y").values, df["y"].values))
    wait_for_nodes(len(NODE_SIZES))
    return datasets


# ------------------------------------------------------------------ numpy references


def _log_loss_gradients(params: Params, x: np.ndarray, y: np.ndarray) -> Params:
    """Gradient of mean(log(1 + exp(z)) - y z) + ALPHA/2 |coef|^2, z = x coef + intercept."""
    residual = 1.0 / (1.0 + np.exp(-(x @ params["coef"][0] + params["intercept"][0]))) - y
    return {
        "coef": (residual @ x / len(x) + ALPHA * params["coef"][0])[None, :],
        "intercept": np.array([residual.mean()]),
    }


def _squared_error_gradients(params: Params, x: np.ndarray, y: np.ndarray) -> Params:
    """Gradient of mean((x coef + intercept - y)^2 / 2) + ALPHA/2 |coef|^2."""
    residual = x @ params["coef"] + params["intercept"][0] - y
    return {
        "coef": residual @ x / len(x) + ALPHA * params["coef"],
        "intercept": np.array([residual.mean()]),
    }


def _fedavg(local: list[Params], sizes: tuple[int, ...]) -> Params:
    return {
        k: sum(n * p[k] for p, n in zip(local, sizes, strict=True)) / sum(sizes) for k in local[0]
    }


def _reference_fedavg_sgd(
    datasets: list[NodeData], start: Params, grads: Gradients
) -> list[Params]:
    """Global parameters after each round of FedAvg with full-batch local SGD."""
    history, global_params = [], start
    for _ in range(ROUNDS):
        local = []
        for x, y in datasets:
            params = dict(global_params)
            for _ in range(LOCAL_STEPS):
                g = grads(params, x, y)
                params = {k: params[k] - SGD_LR * g[k] for k in params}
            local.append(params)
        global_params = _fedavg(local, NODE_SIZES)
        history.append(global_params)
    return history


def _reference_fedavg_adam(
    datasets: list[NodeData], start: Params, grads: Gradients
) -> list[Params]:
    """FedAvg with full-batch local Adam whose moments and step count persist on each node."""
    states = [{"m": {}, "v": {}, "t": 0} for _ in datasets]
    history, global_params = [], start
    for _ in range(ROUNDS):
        local = []
        for (x, y), state in zip(datasets, states, strict=True):
            params = dict(global_params)
            for _ in range(LOCAL_STEPS):
                g = grads(params, x, y)
                state["t"] += 1
                t = state["t"]
                for k in params:
                    state["m"][k] = BETA_1 * state["m"].get(k, 0.0) + (1 - BETA_1) * g[k]
                    state["v"][k] = BETA_2 * state["v"].get(k, 0.0) + (1 - BETA_2) * g[k] ** 2
                    m_hat = state["m"][k] / (1 - BETA_1**t)
                    v_hat = state["v"][k] / (1 - BETA_2**t)
                    params[k] = params[k] - ADAM_LR * m_hat / (np.sqrt(v_hat) + EPS)
            local.append(params)
        global_params = _fedavg(local, NODE_SIZES)
        history.append(global_params)
    return history


def _run(plan: type, model_args: dict) -> Experiment:
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=plan,
        model_args=model_args,
        training_args={"num_updates": LOCAL_STEPS, "batch_size": 1000},
        round_limit=ROUNDS,
        node_selection_strategy=DefaultStrategy(min_nodes=len(NODE_SIZES)),
    )
    assert exp.run() == ROUNDS
    return exp


def _assert_rounds_match(exp: Experiment, expected: list[Params]) -> None:
    for rnd, reference in enumerate(expected, start=1):
        assert len(exp.training_replies()[rnd]) == len(NODE_SIZES)
        got = exp.aggregated_params()[rnd]["params"]
        assert set(got) == {"coef", "intercept"}
        for name, value in reference.items():
            np.testing.assert_allclose(
                got[name], value, rtol=1e-5, atol=1e-9, err_msg=f"round {rnd} {name}"
            )


# ---------------------------------------------------------------------------- tests


def test_fedavg_of_sgd_classifier_matches_numpy_fedavg_with_local_sgd(tmp_path, start_node):
    datasets = _start_three_nodes(tmp_path, start_node, LogisticSGDPlan, _classification_data)
    model_args = {"n_features": 4, "n_classes": 2, "loss": "log_loss", "alpha": ALPHA}
    exp = _run(LogisticSGDPlan, model_args)

    start = {"coef": np.zeros((1, 4)), "intercept": np.zeros(1)}
    expected = _reference_fedavg_sgd(datasets, start, _log_loss_gradients)
    _assert_rounds_match(exp, expected)
    assert np.linalg.norm(expected[-1]["coef"]) > 0.5  # training moved the model

    plan = exp.training_plan()
    final = plan.get_parameters()
    np.testing.assert_allclose(final["coef"], expected[-1]["coef"], rtol=1e-5)
    np.testing.assert_allclose(final["intercept"], expected[-1]["intercept"], rtol=1e-5)
    estimator = plan.model()
    np.testing.assert_array_equal(estimator.coef_, final["coef"])
    x_all = np.concatenate([x for x, _ in datasets])
    y_all = np.concatenate([y for _, y in datasets])
    assert np.mean(estimator.predict(x_all) == y_all) > 0.8


def test_fedavg_of_sgd_regressor_with_adam_keeps_each_node_adam_state_across_rounds(
    tmp_path, start_node
):
    datasets = _start_three_nodes(tmp_path, start_node, LinearAdamPlan, _regression_data)
    exp = _run(LinearAdamPlan, {"n_features": 4, "alpha": ALPHA})

    start = {"coef": np.zeros(4), "intercept": np.zeros(1)}
    expected = _reference_fedavg_adam(datasets, start, _squared_error_gradients)
    _assert_rounds_match(exp, expected)
    np.testing.assert_allclose(exp.training_plan().model().coef_, expected[-1]["coef"], rtol=1e-5)
