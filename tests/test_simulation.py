"""Simulated nodes on an embedded Ray: same results as real nodes, sampling, state, errors.

One embedded Ray serves the module (started once: about 5 s); the multi-process cluster
test is tests/test_simulation_cluster.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.data_split import parse_split
from common.errors import ConfigurationError
from common.optimizers.declearn import ScaffoldServerModule, YogiModule
from common.optimizers.optimizer import Optimizer
from common.split_files import split_file
from fedloom.simulation import Simulation
from researcher.federated_workflows import Experiment
from researcher.strategies import DefaultStrategy, SamplingStrategy
from tests.conftest import ROOT, wait_for_nodes, write_tabular_csv
from tests.plans.algorithms import ScaffoldAdamRegressionPlan, SGDRegressionPlan

TAGS = ["#regression"]
NODES = 3
ROUNDS = 3
#: Full batch, no shuffling: each step is deterministic, so only rounding can differ.
TRAINING_ARGS = {"num_updates": 3, "batch_size": 1000}
#: The brief's bound; in practice the two runs agree to the last bit or nearly.
RTOL = 1e-6

Params = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def embedded_ray() -> Iterator[Any]:
    """One small local Ray for the module, reused by every Simulation (never shut down by it)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


def _regression_csv(path: Path, n: int = 150, seed: int = 7) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) - 1.0 + 0.1 * rng.normal(size=n)
    return write_tabular_csv(path, x, y)


def _fedyogi_scaffold() -> Optimizer:
    return Optimizer(lr=0.8, modules=[ScaffoldServerModule(), YogiModule(beta_1=0.8, beta_2=0.95)])


def _experiment(plan: type, agg_optimizer: Optimizer | None, **kwargs: Any) -> Experiment:
    return Experiment(
        tags=TAGS,
        training_plan_class=plan,
        training_args=TRAINING_ARGS,
        round_limit=ROUNDS,
        agg_optimizer=agg_optimizer,
        node_selection_strategy=kwargs.pop("strategy", DefaultStrategy(min_nodes=NODES)),
        show_progress=False,
        **kwargs,
    )


def _final(exp: Experiment) -> Params:
    return {
        k: np.array(v) for k, v in exp.aggregated_params()[exp.round_current()]["params"].items()
    }


@pytest.mark.slow
def test_simulation_matches_a_real_grpc_federation_fedavg_then_fedyogi_scaffold_adam(
    tmp_path: Path, start_node, embedded_ray: Any
) -> None:
    data = _regression_csv(tmp_path / "data.csv")
    # The real nodes hold the files `fedloom data split` writes; the simulation splits the
    # same file with the same split and seed itself.
    shards = split_file(data, NODES, parse_split("iid"), tmp_path / "shards", seed=0)
    for index, shard in enumerate(shards.paths):
        start_node(
            f"node{index}",
            datasets=[("reg", TAGS, shard, "y")],
            approve=[SGDRegressionPlan, ScaffoldAdamRegressionPlan],
        )
    wait_for_nodes(NODES)
    cases = [(SGDRegressionPlan, lambda: None), (ScaffoldAdamRegressionPlan, _fedyogi_scaffold)]
    with Simulation(nodes=NODES, data=data, split="iid", seed=0) as simulation:
        for plan, agg_optimizer in cases:
            real = _experiment(plan, agg_optimizer())
            start = real.training_plan().get_parameters()
            assert real.run() == ROUNDS
            simulated = _experiment(
                plan,
                agg_optimizer(),
                backend=simulation,
                experimentation_folder=tmp_path / f"sim-{plan.__name__}",
            )
            assert simulated.run() == ROUNDS
            for rnd in range(1, ROUNDS + 1):
                assert len(simulated.training_replies()[rnd]) == NODES
            expected, got = _final(real), _final(simulated)
            assert set(got) == set(expected)
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, err_msg=name)
            moved = max(np.max(np.abs(expected[k] - start[k])) for k in expected)
            assert moved > 0.1  # training moved the model: the comparison is not vacuous


def test_sampling_by_count_trains_that_many_virtual_nodes_and_each_keeps_its_own_state(
    tmp_path: Path, embedded_ray: Any
) -> None:
    data = _regression_csv(tmp_path / "data.csv", n=200)
    folder = tmp_path / "exp"
    with Simulation(nodes=10, data=data, split="iid", pool=2) as simulation:
        exp = _experiment(
            ScaffoldAdamRegressionPlan,
            _fedyogi_scaffold(),
            strategy=SamplingStrategy(count=3, seed=1),
            backend=simulation,
            experimentation_folder=folder,
        )
        assert exp.run() == ROUNDS
    trained: set[str] = set()
    for rnd in range(1, ROUNDS + 1):
        assert len(exp.training_replies()[rnd]) == 3
        trained |= set(exp.training_replies()[rnd])
    # Adam's moments and Scaffold's control variate of each node that trained, on disk
    # outside the actors; none for the nodes never sampled.
    state = folder / "simulation" / "state"
    with_state = {p.name for p in state.iterdir() if any(p.glob("*/round-*/optimizer.bin"))}
    assert with_state == trained
    assert 3 < len(trained) < 10


def test_secure_aggregation_is_refused_in_simulation(tmp_path: Path, embedded_ray: Any) -> None:
    data = _regression_csv(tmp_path / "data.csv")
    with Simulation(nodes=NODES, data=data) as simulation:
        exp = _experiment(
            SGDRegressionPlan,
            None,
            secagg=True,
            backend=simulation,
            experimentation_folder=tmp_path / "exp",
        )
        with pytest.raises(ConfigurationError, match="secure aggregation is refused in simulation"):
            exp.run()


def test_a_bad_simulation_setting_names_the_fix(tmp_path: Path) -> None:
    data = _regression_csv(tmp_path / "data.csv")
    with pytest.raises(ConfigurationError, match="dirichlet:ALPHA"):
        Simulation(nodes=3, data=data, split="dirichlet")
    with pytest.raises(ConfigurationError, match="does not exist"):
        Simulation(nodes=3, data=tmp_path / "missing.csv")
    with pytest.raises(ConfigurationError, match="nodes must be"):
        Simulation(nodes=0, data=data)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_core_imports_do_not_import_ray() -> None:
    done = _python(
        "import sys, fedloom.cli, fedloom.simulation, researcher, researcher.federated_workflows\n"
        "fedloom.cli.build_parser()\n"
        "print('ray' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_missing_ray_names_the_extra_to_install() -> None:
    done = _python(
        "import sys; sys.modules['ray'] = None\n"
        "from fedloom.simulation.ray_runtime import import_ray\n"
        "import_ray()"
    )
    assert done.returncode != 0
    assert 'pip install "fedloom[simulation]"' in done.stderr
    assert "ConfigurationError" in done.stderr


def test_sampling_strategy_by_count_picks_that_many_seeded_and_keeps_it_in_its_state() -> None:
    nodes = [f"sim-{i:03d}" for i in range(100)]
    strategy = SamplingStrategy(count=10, seed=4)
    first, second = strategy.select(nodes, 1), strategy.select(nodes, 2)
    assert len(first) == len(second) == 10 and first != second
    assert SamplingStrategy(count=10, seed=4).select(nodes, 1) == first
    restored = SamplingStrategy()
    restored.set_state(strategy.get_state())
    assert restored.select(nodes, 2) == second
    with pytest.raises(ConfigurationError, match="count must be"):
        SamplingStrategy(count=0)
