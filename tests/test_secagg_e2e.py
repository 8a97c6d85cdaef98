"""Secure aggregation on real node processes: same result as clear aggregation, dropouts recovered."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from common.optimizers.declearn import ScaffoldServerModule, YogiModule
from common.optimizers.optimizer import Optimizer
from common.secagg import SecureAggregation
from researcher.federated_workflows import Experiment
from researcher.strategies.default_strategy import DefaultStrategy
from tests.conftest import wait_for_nodes, write_tabular_csv
from tests.plans.sklearn_plans import LogisticSGDPlan
from tests.plans.tabular import LogisticPlan, ScaffoldLogisticPlan, SlowPlan, make_logistic_data

pytestmark = pytest.mark.slow

SIZES = (60, 120, 240)
#: Fixed-point error of a weighted sum over 3 nodes is far below this (SecureAggregation's
#: sum_error_bound is ~1.4e-9 per coordinate before division by the sample count).
TOLERANCE = 1e-6


@pytest.fixture
def three_nodes(tmp_path, start_node):
    nodes, data = [], []
    for i, n in enumerate(SIZES):
        x, y = make_logistic_data(seed=i, n=n)
        data.append((x, y))
        csv = write_tabular_csv(tmp_path / f"data{i}.csv", x, y)
        nodes.append(
            start_node(
                f"site{i}",
                datasets=[("tab", ["#tab"], csv, "y")],
                approve=[LogisticPlan, ScaffoldLogisticPlan, SlowPlan, LogisticSGDPlan],
            )
        )
    wait_for_nodes(3)
    return nodes, data


def _run(plan, secagg, agg_optimizer=None, rounds=2, model_args=None):
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=plan,
        training_args={"num_updates": 3, "batch_size": 1000},
        model_args=model_args,
        round_limit=rounds,
        agg_optimizer=agg_optimizer,
        node_selection_strategy=DefaultStrategy(min_nodes=3),
        secagg=secagg,
        retain_node_params=True,
    )
    exp.run()
    return exp


def _assert_close(secure, plain, rounds):
    for rnd in range(1, rounds + 1):
        a, b = secure.aggregated_params()[rnd]["params"], plain.aggregated_params()[rnd]["params"]
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=TOLERANCE)


def test_secure_fedavg_equals_clear_fedavg_and_hides_node_parameters(three_nodes):
    plain = _run(LogisticPlan, False)
    secure = _run(LogisticPlan, True)
    _assert_close(secure, plain, 2)
    for reply in secure.training_replies()[1].values():
        assert reply["params"] is None  # the researcher never held one node's parameters
        assert reply["sample_size"] == 0  # nor its sample count


def test_secure_fedyogi_equals_clear_fedyogi(three_nodes):
    plain = _run(LogisticPlan, False, Optimizer(lr=0.3, modules=[YogiModule()]))
    secure = _run(LogisticPlan, SecureAggregation(), Optimizer(lr=0.3, modules=[YogiModule()]))
    _assert_close(secure, plain, 2)


def test_secure_scaffold_equals_clear_scaffold(three_nodes):
    plain = _run(
        ScaffoldLogisticPlan, False, Optimizer(lr=1.0, modules=[ScaffoldServerModule()]), rounds=3
    )
    secure = _run(
        ScaffoldLogisticPlan, True, Optimizer(lr=1.0, modules=[ScaffoldServerModule()]), rounds=3
    )
    _assert_close(secure, plain, 3)


def test_secure_fedavg_of_a_sklearn_plan_equals_clear_fedavg(three_nodes):
    args = {"n_features": 4, "loss": "log_loss"}
    plain = _run(LogisticSGDPlan, False, model_args=args)
    secure = _run(LogisticSGDPlan, True, model_args=args)
    _assert_close(secure, plain, 2)


def test_value_outside_the_clipping_range_fails_with_node_and_setting(three_nodes):
    with pytest.raises(Exception) as info:
        _run(LogisticPlan, SecureAggregation(clip=0.01), rounds=1)
    message = str(info.value)
    assert "site0" in message or "site1" in message or "site2" in message
    assert "clip" in message


def _one_sgd_step(x, y):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    logits = model(torch.from_numpy(x)).squeeze(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y).float())
    loss.backward()
    with torch.no_grad():
        return {name: (p - 0.5 * p.grad).numpy() for name, p in model.named_parameters()}


def test_a_node_killed_after_key_exchange_leaves_the_correct_sum_of_the_others(three_nodes):
    nodes, data = three_nodes
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=SlowPlan,
        training_args={"num_updates": 1, "batch_size": 1000},
        round_limit=1,
        node_selection_strategy=DefaultStrategy(min_nodes=2),
        secagg=True,
    )
    victim = nodes[1]
    killer = threading.Timer(2.5, victim.kill)  # keys went out with the train request
    killer.start()
    exp.run()
    killer.join()
    record = exp.metrics_history()[0]
    assert victim.node_id in record.failures
    survivors = [0, 2]
    expected = {
        name: sum(SIZES[i] * _one_sgd_step(*data[i])[name] for i in survivors)
        / sum(SIZES[i] for i in survivors)
        for name in ("weight", "bias")
    }
    got = exp.aggregated_params()[1]["params"]
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5)
