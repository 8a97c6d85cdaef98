"""Robust aggregators (median, trimmed mean, Krum, Multi-Krum, geometric median) against
straightforward numpy references, under poisoning, over budget on disk, and on real nodes."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from common.errors import ConfigurationError, RoundFailedError
from researcher.aggregators import (
    Aggregator,
    FedAverage,
    GeometricMedian,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
    UpdateStore,
    aggregator_from_state,
    build_aggregator,
)
from researcher.config import load_experiment_config
from researcher.federated_workflows import Experiment
from tests.conftest import NodeProcess, wait_for_nodes, write_tabular_csv
from tests.plans.tabular import LogisticPlan, make_logistic_data
from tests.test_researcher_config import write

Replies = dict[str, tuple[dict[str, np.ndarray], float]]

ROBUST = ("median", "trimmed-mean", "krum", "multi-krum", "geometric-median")

Shapes = dict[str, tuple[tuple[int, ...], type]]

#: A float32 matrix larger than one slice of the update store (8 MiB / (8 x 7 nodes) =
#: 149,796 values), so the slice-by-slice code crosses slice boundaries; a float64 bias.
SHAPES = {"w": ((400, 401), np.float32), "b": ((5,), np.float64)}


def _replies(n: int, seed: int = 0, shapes: Shapes = SHAPES) -> Replies:
    rng = np.random.default_rng(seed)
    return {
        f"node-{i}": (
            {k: rng.normal(size=shape).astype(dtype) for k, (shape, dtype) in shapes.items()},
            float(rng.integers(10, 200)),
        )
        for i in range(n)
    }


#: A small model, for iterative methods checked against slow references.
SMALL: Shapes = {"w": ((20, 30), np.float32), "b": ((5,), np.float64)}


def _stacked(replies: Replies, name: str) -> np.ndarray:
    """(n, size) float64 matrix of one parameter, rows in node-id order."""
    return np.stack([replies[k][0][name].astype(np.float64).ravel() for k in sorted(replies)])


def _flat(params: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([params[k].astype(np.float64).ravel() for k in sorted(params)])


def _check_against(got: dict[str, np.ndarray], replies: Replies, reference: Callable) -> None:
    for name, (shape, dtype) in SHAPES.items():
        assert got[name].dtype == dtype and got[name].shape == shape
        expected = reference(_stacked(replies, name)).reshape(shape)
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6)


# -- against references ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [6, 7])
def test_median_is_numpy_coordinatewise_median(n: int) -> None:
    replies = _replies(n)
    _check_against(Median().aggregate(replies), replies, lambda x: np.median(x, axis=0))


@pytest.mark.parametrize(("trim", "proportion"), [(0.2, 0.2), (2, 2 / 7), (0, 0.0)])
def test_trimmed_mean_is_scipy_trim_mean(trim: float, proportion: float) -> None:
    replies = _replies(7)
    got = TrimmedMean(trim=trim).aggregate(replies)
    _check_against(got, replies, lambda x: scipy.stats.trim_mean(x, proportion, axis=0))


def _brute_force_krum_scores(points: np.ndarray, f: int) -> list[float]:
    scores = []
    for i, a in enumerate(points):
        distances = sorted(float(np.sum((a - b) ** 2)) for j, b in enumerate(points) if j != i)
        scores.append(sum(distances[: len(points) - f - 2]))
    return scores


@pytest.mark.parametrize(("f", "m"), [(1, 1), (2, 1), (1, 3), (2, None)])
def test_krum_and_multi_krum_average_the_lowest_brute_force_scores(f: int, m: int | None) -> None:
    replies = _replies(7, seed=f)
    # Spread the nodes so that scores are far apart and the selection is unambiguous.
    for i, key in enumerate(sorted(replies)):
        for value in replies[key][0].values():
            value *= 1 + i
    aggregator = Krum(f=f) if m == 1 else MultiKrum(f=f, m=m)
    got = aggregator.aggregate(replies)
    points = np.stack([_flat(replies[k][0]) for k in sorted(replies)])
    scores = _brute_force_krum_scores(points, f)
    chosen = sorted(np.argsort(scores)[: len(replies) - f if m is None else m])
    assert aggregator.selected == [sorted(replies)[i] for i in chosen]
    _check_against(got, replies, lambda x: x[chosen].mean(axis=0))


def _weiszfeld_reference(points: np.ndarray, weights: np.ndarray, steps: int) -> np.ndarray:
    """Plain Weiszfeld from the weighted mean (no update lies on the estimate here)."""
    z = weights @ points / weights.sum()
    for _ in range(steps):
        beta = weights / np.linalg.norm(points - z, axis=1)
        z = beta @ points / beta.sum()
    return z


def test_geometric_median_is_weiszfelds_sample_weighted_fixed_point() -> None:
    replies = _replies(6, seed=3, shapes=SMALL)
    # One node far off, so that the median differs clearly from the mean.
    for value in replies["node-2"][0].values():
        value += 5
    aggregator = GeometricMedian(tol=1e-12, max_iter=1000)
    got = aggregator.aggregate(replies)
    points = np.stack([_flat(replies[k][0]) for k in sorted(replies)])
    weights = np.array([replies[k][1] for k in sorted(replies)])
    reference = _weiszfeld_reference(points, weights, steps=1000)
    assert 1 < aggregator.iterations < 1000
    np.testing.assert_allclose(_flat(got), reference, rtol=1e-5, atol=1e-5)

    def objective(z: np.ndarray) -> float:
        return float(weights @ np.linalg.norm(points - z, axis=1))

    # A minimum: lower than at the weighted mean and than at nearby points.
    rng = np.random.default_rng(0)
    best = objective(_flat(got))
    assert best < objective(weights @ points / weights.sum()) - 1
    for _ in range(20):
        assert best <= objective(_flat(got) + 1e-2 * rng.normal(size=reference.shape))


def test_geometric_median_stops_after_max_iter() -> None:
    aggregator = GeometricMedian(tol=0.0, max_iter=3)
    aggregator.aggregate(_replies(5))
    assert aggregator.iterations == 3


# -- one poisoned node ------------------------------------------------------------------------
#: Honest updates: a common direction plus noise of SIGMA per coordinate, over D values.
D, SIGMA = 1000, 0.1
SPREAD = SIGMA * np.sqrt(D)  # typical distance of an honest update to the honest centre

#: How far from the honest nodes' mean each aggregator may land, in units of SPREAD, with
#: one poisoned node (largest seen over 20 seeds in brackets). Coordinate-wise median and
#: trimmed mean (one value trimmed per side) stay inside the honest values of each
#: coordinate, off their mean by a fraction of SIGMA (0.47, 0.39); Krum returns one honest
#: update, about sqrt(1 - 1/(n - 1)) SPREAD away (0.91); Multi-Krum with m = n - f averages
#: exactly the honest ones (2e-15); the geometric median moves by a fraction of SPREAD (0.23).
BOUNDS = {
    "median": 0.6,
    "trimmed-mean": 0.6,
    "krum": 1.2,
    "multi-krum": 1e-9,
    "geometric-median": 0.35,
}

#: Settings resisting one attacker (trimmed mean's default 10% trims nothing among 5-7).
ONE_ATTACKER = {"trimmed-mean": {"trim": 1}, "krum": {"f": 1}, "multi-krum": {"f": 1}}

#: FedAvg must land at least this far (in SPREAD units) from the honest mean.
FEDAVG_PULLED_OFF = 5.0


def _poisoned_round(n: int, attack: str) -> tuple[Replies, np.ndarray]:
    """n - 1 honest nodes and one attacker; returns the replies and the honest mean."""
    rng = np.random.default_rng(n)
    start = rng.normal(size=D)  # the global model: nodes send start + update
    direction = rng.normal(size=D)
    honest = [direction + SIGMA * rng.normal(size=D) for _ in range(n - 1)]
    scale = {"large-norm": 100.0, "sign-flip": -10.0}[attack]
    attacker = scale * (direction + SIGMA * rng.normal(size=D))
    replies: Replies = {f"honest-{i}": ({"w": start + u}, 50.0) for i, u in enumerate(honest)}
    replies["attacker"] = ({"w": start + attacker}, 50.0)
    return replies, start + np.mean(honest, axis=0)


@pytest.mark.parametrize("attack", ["large-norm", "sign-flip"])
@pytest.mark.parametrize("n", [5, 7])
def test_one_poisoned_node_pulls_fedavg_off_but_not_the_robust_aggregators(
    n: int, attack: str
) -> None:
    replies, honest_mean = _poisoned_round(n, attack)
    fedavg = np.linalg.norm(FedAverage().aggregate(replies)["w"] - honest_mean) / SPREAD
    assert fedavg > FEDAVG_PULLED_OFF
    for name in ROBUST:
        got = build_aggregator(name, ONE_ATTACKER.get(name)).aggregate(replies)
        distance = np.linalg.norm(got["w"] - honest_mean) / SPREAD
        assert distance < BOUNDS[name], f"{name}: {distance:.3f} x spread (FedAvg {fedavg:.1f})"


def test_krum_leaves_out_the_attacker() -> None:
    replies, _ = _poisoned_round(7, "sign-flip")
    krum = MultiKrum(f=1)
    krum.aggregate(replies)
    assert "attacker" not in krum.selected and len(krum.selected) == 6


# -- memory: the update store -----------------------------------------------------------------
def test_update_store_keeps_rows_in_memory_up_to_the_budget_then_on_disk(tmp_path: Path) -> None:
    replies = _replies(5)
    template = replies["node-0"][0]
    probe = UpdateStore(template, budget_bytes=0)
    store = UpdateStore(template, budget_bytes=2 * probe.row_bytes, spill_parent=tmp_path)
    for node, (params, weight) in replies.items():
        store.add(node, params, weight)
    assert store.on_disk == 3
    spill = store.spill_folder()
    assert spill.parent == tmp_path and len(list(spill.iterdir())) == 3
    assert all(p.stat().st_size == probe.row_bytes for p in spill.iterdir())
    np.testing.assert_array_equal(store.block("b", 0, 5), _stacked(replies, "b"))
    store.close()
    assert not spill.exists()


@pytest.mark.parametrize("name", ROBUST)
def test_an_aggregator_over_its_memory_budget_spills_to_disk_with_identical_results(
    name: str, tmp_path: Path
) -> None:
    replies = _replies(7)
    in_memory = build_aggregator(name).aggregate(replies)
    spilling = build_aggregator(name, {"memory_budget_mb": 0})
    spilling.use_scratch_folder(tmp_path / "experiment")
    spilling.start(replies["node-0"][0])
    for node, (params, weight) in replies.items():
        spilling.add(node, params, weight)
    (spill,) = (tmp_path / "experiment").iterdir()
    assert len(list(spill.glob("update-*.bin"))) == 7
    on_disk = spilling.finish()
    assert not spill.exists()
    for key, value in in_memory.items():
        np.testing.assert_array_equal(on_disk[key], value)


def test_a_huge_memory_budget_keeps_everything_in_memory() -> None:
    replies = _replies(3, shapes=SMALL)
    np.testing.assert_array_equal(
        Median(memory_budget_mb=1e300).aggregate(replies)["b"],
        np.median(_stacked(replies, "b"), axis=0),
    )


def test_a_failed_round_leaves_no_spill_folder_behind(tmp_path: Path) -> None:
    krum = Krum(f=1, memory_budget_mb=0)
    krum.use_scratch_folder(tmp_path)
    replies = _replies(3)
    krum.start(replies["node-0"][0])
    for node, (params, weight) in replies.items():
        krum.add(node, params, weight)
    with pytest.raises(RoundFailedError):
        krum.finish()
    assert list(tmp_path.iterdir()) == []


def test_median_working_memory_beyond_the_store_is_slices_not_nodes_times_model() -> None:
    n, size = 6, 1 << 21  # 2M float32 values: 8 MiB per update, 48 MiB for all six
    rng = np.random.default_rng(0)
    replies = {f"n{i}": ({"w": rng.normal(size=size).astype(np.float32)}, 1.0) for i in range(n)}
    median = Median(memory_budget_mb=0)  # rows on disk: what remains is working memory
    median.start(replies["n0"][0])
    for node, (params, weight) in replies.items():
        median.add(node, params, weight)
    tracemalloc.start()
    try:
        out = median.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The result (8 MiB) plus a few gathered blocks of ~8 MiB; all updates in float64 would
    # be 96 MiB.
    assert peak < 48 << 20, f"peak {peak / 2**20:.1f} MiB"
    expected = np.median(_stacked(replies, "w")[:, :1000], axis=0).astype(np.float32)
    np.testing.assert_array_equal(out["w"][:1000], expected)


# -- settings, errors and checkpoints ---------------------------------------------------------
@pytest.mark.parametrize(
    ("aggregator", "settings"),
    [
        (Median(memory_budget_mb=64), {"memory_budget_mb": 64.0}),
        (TrimmedMean(trim=2, memory_budget_mb=0), {"trim": 2, "memory_budget_mb": 0.0}),
        (TrimmedMean(trim=0.25), {"trim": 0.25}),
        (Krum(f=2), {"f": 2}),
        (MultiKrum(f=2, m=3), {"f": 2, "m": 3}),
        (GeometricMedian(eps=1e-4, max_iter=7, tol=1e-3), {"eps": 1e-4, "max_iter": 7}),
    ],
)
def test_settings_survive_a_checkpoint(aggregator: Aggregator, settings: dict) -> None:
    state = aggregator.get_state()
    restored = aggregator_from_state(state)
    assert type(restored) is type(aggregator) and restored.get_state() == state
    for key, value in settings.items():
        assert getattr(restored, key) == value


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("krum", {"f": -1}, "Krum f must be an integer >= 0"),
        ("krum", {"f": 1.5}, "Krum f must be an integer"),
        ("krum", {"m": 2}, "does not take these settings"),
        ("multi-krum", {"m": 0}, "MultiKrum m must be an integer >= 1"),
        ("trimmed-mean", {"trim": 0.5}, r"fraction per side in \[0, 0.5\)"),
        ("trimmed-mean", {"trim": -1}, "TrimmedMean trim must be an integer >= 0"),
        ("median", {"memory_budget_mb": -5}, "Median memory_budget_mb must be a number >= 0"),
        ("geometric-median", {"eps": 0}, "GeometricMedian eps must be a number > 0"),
        ("geometric-median", {"max_iter": 0}, "GeometricMedian max_iter must be an integer >= 1"),
        ("geometric-median", {"tol": float("nan")}, "GeometricMedian tol must be a number"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    name: str, settings: dict, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_aggregator(name, settings)


@pytest.mark.parametrize(
    ("aggregator", "n", "message"),
    [
        (Krum(f=1), 4, r"Krum with f=1 needs more than 2f \+ 2 = 4 node replies, got 4"),
        (MultiKrum(f=2), 6, r"MultiKrum with f=2 needs more than 2f \+ 2 = 6 .* got 6"),
        (MultiKrum(f=1, m=5), 5, r"m=5 would average more than the n - f = 4 updates"),
        (TrimmedMean(trim=2), 4, r"drops 2 value\(s\) per side, .* than 2 x 2 = 4 .* got 4"),
    ],
)
def test_too_few_replies_for_the_settings_fail_the_round_naming_the_numbers(
    aggregator: Aggregator, n: int, message: str
) -> None:
    with pytest.raises(RoundFailedError, match=message):
        aggregator.aggregate(_replies(n))


def test_a_node_answering_twice_is_refused() -> None:
    median = Median()
    params, weight = _replies(1)["node-0"]
    median.start(params)
    median.add("a", params, weight)
    with pytest.raises(RoundFailedError, match="node a answered twice"):
        median.add("a", params, weight)


# -- configuration: TOML, Python, SecAgg -------------------------------------------------------
TOML = """\
tags = ["#a"]
rounds = 1
{secagg}
[plan]
file = "plan.py"
class = "TinyPlan"

[aggregator]
{aggregator}
"""


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('name = "krum"\nf = 2', Krum(f=2)),
        ('name = "multi_krum"\nf = 1\nm = 3\nmemory_budget_mb = 64', MultiKrum(f=1, m=3)),
        ('name = "trimmed-mean"\ntrim = 1', TrimmedMean(trim=1)),
        ('name = "geometric-median"\nmax_iter = 10', GeometricMedian(max_iter=10)),
        ('name = "median"', Median()),
    ],
)
def test_toml_aggregator_block_builds_the_named_aggregator_with_its_settings(
    tmp_path: Path, table: str, expected: Aggregator
) -> None:
    path = write(tmp_path, TOML.format(secagg="", aggregator=table))
    built = load_experiment_config(path).aggregator.build("[aggregator]")
    assert type(built) is type(expected)
    state = built.get_state()
    for key, value in expected.get_state().items():
        if key != "memory_budget_mb":
            assert state[key] == value


def test_toml_aggregator_with_a_bad_setting_names_the_file_block_and_setting(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, TOML.format(secagg="", aggregator='name = "krum"\nf = "one"'))
    with pytest.raises(ConfigurationError, match=r"experiment.toml: \[aggregator\]: Krum f must"):
        load_experiment_config(path).build_experiment(tmp_path / "out")


def test_secagg_on_parameters_with_a_robust_aggregator_is_refused_at_set_up(
    tmp_path: Path,
) -> None:
    fix = r"Median aggregator cannot use: .*protect_parameters=False"
    with pytest.raises(ConfigurationError, match=fix):
        Experiment(tags=["#a"], aggregator=Median(), secagg=True)
    exp = Experiment(tags=["#a"], secagg=True)
    with pytest.raises(ConfigurationError, match="Krum aggregator cannot use"):
        exp.set_aggregator(Krum())
    exp = Experiment(tags=["#a"], aggregator=Krum())
    with pytest.raises(ConfigurationError, match="Krum aggregator cannot use"):
        exp.set_secagg({"protect_parameters": True})
    # SecAgg on the aux vars only leaves parameters in clear: allowed.
    exp.set_secagg({"protect_parameters": False})

    path = write(tmp_path, TOML.format(secagg="secagg = true", aggregator='name = "median"'))
    with pytest.raises(ConfigurationError, match=fix):
        load_experiment_config(path).build_experiment(tmp_path / "out")


# -- on real nodes ----------------------------------------------------------------------------
@pytest.mark.slow
def test_median_over_three_real_nodes_is_the_median_of_their_parameters(
    tmp_path: Path, start_node: Callable[..., NodeProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="researcher.aggregators")
    for i, n in enumerate((60, 90, 120)):
        csv = write_tabular_csv(tmp_path / f"node{i}.csv", *make_logistic_data(seed=i, n=n))
        start_node(f"node{i}", datasets=[("tab", ["#tab"], csv, "y")], approve=[LogisticPlan])
    wait_for_nodes(3)
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 2, "batch_size": 1000, "round_timeout": 120},
        round_limit=2,
        # By name, as TOML does; a zero budget puts every update on disk.
        aggregator=build_aggregator("median", {"memory_budget_mb": 0}),
        retain_node_params=True,
        show_progress=False,
    )
    assert exp.run() == 2
    for rnd in (1, 2):
        replies = exp.training_replies()[rnd]
        assert len(replies) == 3
        got = exp.aggregated_params()[rnd]["params"]
        for name, value in got.items():
            nodes = np.stack([np.asarray(r["params"][name]) for r in replies.values()])
            np.testing.assert_allclose(value, np.median(nodes, axis=0), rtol=1e-6)
    folder = exp.experimentation_folder()
    spilled = [r.getMessage() for r in caplog.records if "kept on disk" in r.getMessage()]
    assert len(spilled) == 2 and all(
        f"3 of 3 node updates were kept on disk in {folder}" in m for m in spilled
    )
    assert list(folder.glob("aggregator-spill-*")) == []
