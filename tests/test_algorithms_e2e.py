"""Every row of the seed page's algorithm table, trained by real node processes, against numpy.

Each test starts node processes holding CSV regression data, runs an Experiment whose node
optimizer (the training plan's) and researcher optimizer (`agg_optimizer`) are the row's,
and checks the global parameters after every round against tests/reference_fl.py to 1e-5
relative. The models compute in float64 with full-batch steps, so the only differences left
are rounding: any algorithmic slip (a state not kept by a node between rounds, a wrong
anchor, bias correction or epsilon placement) is orders of magnitude above the tolerance,
which each test also checks by comparing its reference with plain FedAvg's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from common.errors import RoundFailedError
from common.optimizers.declearn import (
    AdaGradModule,
    AdamModule,
    ScaffoldServerModule,
    YogiModule,
)
from common.optimizers.optimizer import Optimizer
from researcher.federated_workflows import Experiment
from researcher.strategies import DefaultStrategy, Strategy
from tests.conftest import NodeProcess, wait_for_nodes, write_tabular_csv
from tests.plans.algorithms import (
    AdaGradRegressionPlan,
    FedProxRegressionPlan,
    NativeAdamRegressionPlan,
    ScaffoldLinearRegressorPlan,
    ScaffoldRegressionPlan,
    SGDLinearRegressorPlan,
    SGDRegressionPlan,
)
from tests.reference_fl import (
    LinearRegression,
    LocalAdaGrad,
    LocalAdam,
    LocalFedProx,
    LocalOptimizer,
    LocalScaffold,
    LocalSGD,
    NodeData,
    NoServerOptimizer,
    ServerAdaGrad,
    ServerAdam,
    ServerOptimizer,
    ServerScaffold,
    ServerYogi,
    run_federation,
)

pytestmark = pytest.mark.slow

TAGS = ["#regression"]
#: Unequal sample counts, so FedAverage's weighting shows; the first `n` are used with n nodes.
NODE_SIZES = (24, 40, 56)
ROUNDS = 3
LOCAL_STEPS = 3
#: Full batch (larger than any node's data) and no shuffling: every step is deterministic.
TRAINING_ARGS = {"num_updates": LOCAL_STEPS, "batch_size": 1000}
RTOL = 1e-5
#: Below float64 rounding of these O(1) parameters, so the comparison is in effect relative.
ATOL = 1e-12
#: How far (relative) a row's reference must be from FedAvg's for the test to tell them apart.
MIN_ALGORITHM_EFFECT = 1e-3

#: Researcher-side hyperparameters. Betas and eps differ from declearn's defaults on
#: purpose: a module built with its defaults instead of these would miss the reference.
SERVER_LR = 0.1
BETA_1, BETA_2, SERVER_EPS = 0.8, 0.95, 1e-6
#: The seed page's Scaffold server learning rate.
SCAFFOLD_SERVER_LR = 0.8
#: scikit-learn plans' l2 penalty (SGDRegressor's `alpha`).
RIDGE = 0.01
#: Seconds for the researcher to drop a stopped node (its stream closes at once on SIGTERM).
NODE_GONE_TIMEOUT = 30.0

Params = dict[str, np.ndarray]


# ------------------------------------------------------------------------ federation


def _node_data(index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Heterogeneous linear data: each node has its own true weights and bias."""
    rng = np.random.default_rng(1000 + index)
    x = rng.normal(size=(n, 4))
    w = np.array([1.0, -2.0, 0.5, 3.0]) + 0.5 * index * np.array([1.0, 1.0, -1.0, 0.0])
    return x, x @ w - 1.0 + 0.5 * index + 0.1 * rng.normal(size=n)


def _as_read_by_plan(csv: Path, float32: bool) -> NodeData:
    """The node's data as its plan trains on it: torch plans get float32 batches."""
    df = pd.read_csv(csv)
    x, y = df.drop(columns="y").values, df["y"].values
    if float32:
        x, y = x.astype(np.float32), y.astype(np.float32)
    return NodeData(x.astype(np.float64), y.astype(np.float64))


def _start_nodes(
    tmp_path: Path, start_node: Callable[..., NodeProcess], plan: type, count: int
) -> tuple[dict[str, NodeData], list[NodeProcess]]:
    """Start `count` nodes holding regression CSVs; return their data by node id."""
    data, processes = {}, []
    for index, n in enumerate(NODE_SIZES[:count]):
        csv = write_tabular_csv(tmp_path / f"node{index}.csv", *_node_data(index, n))
        node = start_node(f"node{index}", datasets=[("reg", TAGS, csv, "y")], approve=[plan])
        data[node.node_id] = _as_read_by_plan(csv, float32=plan.vector_kind == "torch")
        processes.append(node)
    wait_for_nodes(count)
    return data, processes


def _experiment(
    plan: type,
    agg_optimizer: Optimizer | None,
    strategy: Strategy,
    model_args: dict[str, Any] | None = None,
) -> Experiment:
    return Experiment(
        tags=TAGS,
        training_plan_class=plan,
        model_args=model_args,
        training_args=TRAINING_ARGS,
        round_limit=ROUNDS,
        agg_optimizer=agg_optimizer,
        node_selection_strategy=strategy,
        show_progress=False,
    )


def _run_experiment(
    plan: type,
    agg_optimizer: Optimizer | None,
    strategy: Strategy,
    model_args: dict[str, Any] | None = None,
) -> tuple[Experiment, Params]:
    """Run ROUNDS rounds; return the experiment and the initial global parameters."""
    exp = _experiment(plan, agg_optimizer, strategy, model_args)
    start = exp.training_plan().get_parameters()
    assert exp.run() == ROUNDS
    return exp, start


def _assert_rounds_match(
    exp: Experiment, expected: list[Params], participants: Sequence[int]
) -> None:
    for rnd, reference in enumerate(expected, start=1):
        assert len(exp.training_replies()[rnd]) == participants[rnd - 1], f"round {rnd}"
        got = exp.aggregated_params()[rnd]["params"]
        assert set(got) == set(reference)
        for name, value in reference.items():
            np.testing.assert_allclose(
                got[name], value, rtol=RTOL, atol=ATOL, err_msg=f"round {rnd}, {name}"
            )


def _relative_distance(a: Params, b: Params) -> float:
    diff = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a))
    return float(diff / np.sqrt(sum(np.sum(b[k] ** 2) for k in b)))


# ----------------------------------------------------------------------- torch rows


@dataclass(frozen=True)
class Row:
    """One row of the seed's table: the plan (node optimizer), researcher optimizer, references."""

    plan: type
    agg_optimizer: Callable[[], Optimizer | None]
    local: Callable[[], LocalOptimizer]
    server: Callable[[], ServerOptimizer]


ROWS = {
    "AdaAlter": Row(
        AdaGradRegressionPlan,
        lambda: None,
        lambda: LocalAdaGrad(AdaGradRegressionPlan.LR, AdaGradRegressionPlan.EPS),
        NoServerOptimizer,
    ),
    "FedAdagrad": Row(
        SGDRegressionPlan,
        lambda: Optimizer(lr=SERVER_LR, modules=[AdaGradModule(eps=SERVER_EPS)]),
        lambda: LocalSGD(SGDRegressionPlan.LR),
        lambda: ServerAdaGrad(SERVER_LR, SERVER_EPS),
    ),
    "FedAdam": Row(
        SGDRegressionPlan,
        lambda: Optimizer(
            lr=SERVER_LR, modules=[AdamModule(beta_1=BETA_1, beta_2=BETA_2, eps=SERVER_EPS)]
        ),
        lambda: LocalSGD(SGDRegressionPlan.LR),
        lambda: ServerAdam(SERVER_LR, BETA_1, BETA_2, SERVER_EPS),
    ),
    "FedAvg": Row(
        SGDRegressionPlan,
        lambda: None,
        lambda: LocalSGD(SGDRegressionPlan.LR),
        NoServerOptimizer,
    ),
    "FedProx": Row(
        FedProxRegressionPlan,
        lambda: None,
        lambda: LocalFedProx(FedProxRegressionPlan.LR, FedProxRegressionPlan.MU),
        NoServerOptimizer,
    ),
    "FedYogi": Row(
        SGDRegressionPlan,
        lambda: Optimizer(
            lr=SERVER_LR, modules=[YogiModule(beta_1=BETA_1, beta_2=BETA_2, eps=SERVER_EPS)]
        ),
        lambda: LocalSGD(SGDRegressionPlan.LR),
        lambda: ServerYogi(SERVER_LR, BETA_1, BETA_2, SERVER_EPS),
    ),
}

TORCH_GRADIENT = LinearRegression(weight="weight", bias="bias").gradients


@pytest.mark.parametrize("algorithm", sorted(ROWS))
def test_table_row_on_torch_nodes_matches_its_numpy_reference(
    algorithm: str, tmp_path: Path, start_node
) -> None:
    row = ROWS[algorithm]
    data, _ = _start_nodes(tmp_path, start_node, row.plan, count=2)
    exp, start = _run_experiment(row.plan, row.agg_optimizer(), DefaultStrategy(min_nodes=2))

    def reference(local: Callable[[], LocalOptimizer], server: ServerOptimizer) -> list[Params]:
        return run_federation(
            data,
            start,
            rounds=ROUNDS,
            local_steps=LOCAL_STEPS,
            gradient=TORCH_GRADIENT,
            make_local=local,
            server=server,
        )

    expected = reference(row.local, row.server())
    _assert_rounds_match(exp, expected, participants=[2] * ROUNDS)
    assert _relative_distance(expected[-1], start) > 0.1  # training moved the model
    if algorithm != "FedAvg":
        fedavg = reference(lambda: LocalSGD(SGDRegressionPlan.LR), NoServerOptimizer())
        assert _relative_distance(expected[-1], fedavg[-1]) > MIN_ALGORITHM_EFFECT


def test_native_torch_adam_on_nodes_keeps_its_state_between_rounds(
    tmp_path: Path, start_node
) -> None:
    plan = NativeAdamRegressionPlan
    data, _ = _start_nodes(tmp_path, start_node, plan, count=2)
    exp, start = _run_experiment(plan, None, DefaultStrategy(min_nodes=2))

    def reference(local: Callable[[], LocalOptimizer]) -> list[Params]:
        return run_federation(
            data,
            start,
            rounds=ROUNDS,
            local_steps=LOCAL_STEPS,
            gradient=TORCH_GRADIENT,
            make_local=local,
            server=NoServerOptimizer(),
        )

    expected = reference(lambda: LocalAdam(plan.LR, *plan.BETAS, plan.EPS))
    _assert_rounds_match(exp, expected, participants=[2] * ROUNDS)

    forgetful = reference(lambda: LocalAdam(plan.LR, *plan.BETAS, plan.EPS, round_reset=True))
    assert _relative_distance(expected[-1], forgetful[-1]) > MIN_ALGORITHM_EFFECT


# -------------------------------------------------------------------------- Scaffold


class SkipNodeStrategy(Strategy):
    """Every eligible node trains, except `node_id` in round `skip_round`."""

    def __init__(self, node_id: str, skip_round: int, expected_nodes: int) -> None:
        super().__init__(min_nodes=expected_nodes - 1)
        self.node_id = node_id
        self.skip_round = skip_round
        self.expected_nodes = expected_nodes

    def select(self, eligible: Sequence[str], round_number: int) -> list[str]:
        if len(eligible) != self.expected_nodes or self.node_id not in eligible:
            raise RoundFailedError(
                f"expected {self.expected_nodes} eligible nodes including {self.node_id}, "
                f"got {sorted(eligible)}"
            )
        skipped = self.node_id if round_number == self.skip_round else None
        return sorted(n for n in eligible if n != skipped)


def _restart(node: NodeProcess, start_node: Callable[..., NodeProcess], total: int) -> None:
    """Stop a node process, wait until the researcher sees it gone, start it on the same home."""
    from researcher.server import get_server

    directory = get_server().directory
    node.stop()
    gone = directory.wait_until(lambda: directory.get(node.node_id) is None, NODE_GONE_TIMEOUT)
    assert gone, f"{node.name} still listed {NODE_GONE_TIMEOUT} s after it stopped"
    start_node(node.name, home=node.home)
    wait_for_nodes(total)


def test_scaffold_on_torch_nodes_matches_reference_with_a_node_skipping_round_2(
    tmp_path: Path, start_node
) -> None:
    """The skipping node is also restarted before round 3: its client state lives on disk."""
    data, nodes = _start_nodes(tmp_path, start_node, ScaffoldRegressionPlan, count=3)
    skipper = nodes[2]
    strategy = SkipNodeStrategy(skipper.node_id, skip_round=2, expected_nodes=3)
    agg_optimizer = Optimizer(lr=SCAFFOLD_SERVER_LR, modules=[ScaffoldServerModule()])
    exp = _experiment(ScaffoldRegressionPlan, agg_optimizer, strategy)
    start = exp.training_plan().get_parameters()
    assert exp.run(rounds=2) == 2
    _restart(skipper, start_node, total=3)
    assert exp.run(rounds=1) == 1

    def participants(round_number: int) -> list[str]:
        return sorted(n for n in data if not (round_number == 2 and n == skipper.node_id))

    def reference(local: Callable[[], LocalOptimizer], server: ServerOptimizer) -> list[Params]:
        return run_federation(
            data,
            start,
            rounds=ROUNDS,
            local_steps=LOCAL_STEPS,
            gradient=TORCH_GRADIENT,
            make_local=local,
            server=server,
            participants=participants,
        )

    lr = ScaffoldRegressionPlan.LR
    expected = reference(lambda: LocalScaffold(lr), ServerScaffold(SCAFFOLD_SERVER_LR))
    _assert_rounds_match(exp, expected, participants=[3, 2, 3])
    assert skipper.node_id not in exp.training_replies()[2]
    without_correction = reference(lambda: LocalSGD(lr), ServerScaffold(SCAFFOLD_SERVER_LR))
    assert _relative_distance(expected[-1], without_correction[-1]) > MIN_ALGORITHM_EFFECT


# --------------------------------------------------------------- scikit-learn plans

SKLEARN_MODEL_ARGS = {"n_features": 4, "alpha": RIDGE}
SKLEARN_GRADIENT = LinearRegression(weight="coef", bias="intercept", ridge=RIDGE).gradients


def _sklearn_reference(
    data: dict[str, NodeData],
    start: Params,
    local: Callable[[], LocalOptimizer],
    server: ServerOptimizer,
) -> list[Params]:
    return run_federation(
        data,
        start,
        rounds=ROUNDS,
        local_steps=LOCAL_STEPS,
        gradient=SKLEARN_GRADIENT,
        make_local=local,
        server=server,
    )


def test_fedavg_on_sklearn_nodes_matches_reference(tmp_path: Path, start_node) -> None:
    plan = SGDLinearRegressorPlan
    data, _ = _start_nodes(tmp_path, start_node, plan, count=2)
    exp, start = _run_experiment(plan, None, DefaultStrategy(min_nodes=2), SKLEARN_MODEL_ARGS)

    expected = _sklearn_reference(data, start, lambda: LocalSGD(plan.LR), NoServerOptimizer())
    _assert_rounds_match(exp, expected, participants=[2] * ROUNDS)
    assert np.linalg.norm(expected[-1]["coef"]) > 0.5  # training moved the model


def test_fedyogi_on_sklearn_nodes_matches_reference(tmp_path: Path, start_node) -> None:
    plan = SGDLinearRegressorPlan
    data, _ = _start_nodes(tmp_path, start_node, plan, count=2)
    yogi = Optimizer(
        lr=SERVER_LR, modules=[YogiModule(beta_1=BETA_1, beta_2=BETA_2, eps=SERVER_EPS)]
    )
    exp, start = _run_experiment(plan, yogi, DefaultStrategy(min_nodes=2), SKLEARN_MODEL_ARGS)

    local = lambda: LocalSGD(plan.LR)  # noqa: E731
    expected = _sklearn_reference(
        data, start, local, ServerYogi(SERVER_LR, BETA_1, BETA_2, SERVER_EPS)
    )
    _assert_rounds_match(exp, expected, participants=[2] * ROUNDS)
    fedavg = _sklearn_reference(data, start, local, NoServerOptimizer())
    assert _relative_distance(expected[-1], fedavg[-1]) > MIN_ALGORITHM_EFFECT


def test_scaffold_on_sklearn_nodes_matches_reference(tmp_path: Path, start_node) -> None:
    plan = ScaffoldLinearRegressorPlan
    data, _ = _start_nodes(tmp_path, start_node, plan, count=2)
    agg_optimizer = Optimizer(lr=SCAFFOLD_SERVER_LR, modules=[ScaffoldServerModule()])
    exp, start = _run_experiment(
        plan, agg_optimizer, DefaultStrategy(min_nodes=2), SKLEARN_MODEL_ARGS
    )

    server = lambda: ServerScaffold(SCAFFOLD_SERVER_LR)  # noqa: E731
    expected = _sklearn_reference(data, start, lambda: LocalScaffold(plan.LR), server())
    _assert_rounds_match(exp, expected, participants=[2] * ROUNDS)
    without_correction = _sklearn_reference(data, start, lambda: LocalSGD(plan.LR), server())
    assert _relative_distance(expected[-1], without_correction[-1]) > MIN_ALGORITHM_EFFECT
