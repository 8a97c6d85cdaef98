"""Contract suites run over everything registered: aggregators, strategies, optimizer modules.

A new plug-in registered by name joins these tests without writing any: state round-trips,
secure-sum support stated truthfully, refusals of our own error types.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.datasets import DATASET_TYPES
from common.errors import ConfigurationError, DatasetError, FedloomError, RoundFailedError
from common.optimizers.declearn import list_optim_modules
from common.optimizers.optimizer import Optimizer
from node.datasets import inspect_dataset
from researcher.aggregators import AGGREGATORS, aggregator_from_state, build_aggregator
from researcher.federated_workflows import Experiment
from researcher.strategies import STRATEGIES, build_strategy, strategy_from_state

TEMPLATE = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float64)}

#: Replies per round: enough for every aggregator's default settings (Krum's default f=1
#: needs more than 2f + 2 = 4).
N_REPLIES = 5


def _replies(n: int = N_REPLIES, seed: int = 0) -> dict[str, tuple[dict[str, np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    return {
        f"node-{i}": (
            {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in TEMPLATE.items()},
            float(10 * (i + 1)),
        )
        for i in range(n)
    }


# -- aggregators ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregator_state_round_trips_through_json(name: str) -> None:
    aggregator = build_aggregator(name)
    state = json.loads(json.dumps(aggregator.get_state()))
    restored = aggregator_from_state(state)
    assert type(restored) is type(aggregator)
    assert restored.get_state() == aggregator.get_state()
    assert restored.name == name


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregator_keeps_names_shapes_and_dtypes_and_is_exact_on_identical_replies(
    name: str,
) -> None:
    params = _replies(1)["node-0"][0]
    out = build_aggregator(name).aggregate({f"n{i}": (params, 5.0) for i in range(N_REPLIES)})
    assert out.keys() == params.keys()
    for key, value in params.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape
        np.testing.assert_allclose(out[key], value, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregator_states_its_secure_sum_support_truthfully(name: str) -> None:
    replies = _replies()
    clear = build_aggregator(name).aggregate(replies)
    secure = build_aggregator(name)
    secure.start(TEMPLATE)
    sums = {k: sum(p[k].astype(np.float64) * w for p, w in replies.values()) for k in TEMPLATE}
    total = sum(w for _, w in replies.values())
    if not secure.supports_secure_sum:
        with pytest.raises(ConfigurationError, match="secure sum"):
            secure.add_secure_sum(sums, total)
        return
    secure.add_secure_sum(sums, total)
    out = secure.finish()
    for key in TEMPLATE:
        np.testing.assert_allclose(out[key], clear[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregator_refused_with_secagg_on_parameters_at_set_up_unless_it_uses_sums(
    name: str,
) -> None:
    aggregator = build_aggregator(name)
    if aggregator.supports_secure_sum:
        Experiment(tags=["#a"], aggregator=aggregator, secagg=True)
        return
    with pytest.raises(ConfigurationError, match=f"the {type(aggregator).__name__} aggregator"):
        Experiment(tags=["#a"], aggregator=aggregator, secagg=True)
    Experiment(tags=["#a"], aggregator=aggregator, secagg={"protect_parameters": False})


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregator_result_does_not_depend_on_the_order_of_replies(name: str) -> None:
    replies = _replies()
    forward = build_aggregator(name).aggregate(replies)
    backward = build_aggregator(name).aggregate(dict(reversed(list(replies.items()))))
    for key in TEMPLATE:
        np.testing.assert_allclose(backward[key], forward[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("fault", ["nan", "shape", "names", "weight"])
def test_aggregator_refuses_a_bad_reply_whole_with_our_error(name: str, fault: str) -> None:
    replies = _replies()
    reference = build_aggregator(name).aggregate(replies)
    bad = {k: v.copy() for k, v in replies["node-1"][0].items()}
    weight = 7.0
    if fault == "nan":
        bad["b"][-1] = np.nan
    elif fault == "shape":
        bad["b"] = np.zeros(4)
    elif fault == "names":
        bad["extra"] = np.zeros(1)
    else:
        weight = 0.0
    aggregator = build_aggregator(name)
    aggregator.start(TEMPLATE)
    order = list(replies)
    for node in order[:1]:
        aggregator.add(node, *replies[node])
    with pytest.raises(RoundFailedError):
        aggregator.add("bad", bad, weight)
    for node in order[1:]:
        aggregator.add(node, *replies[node])
    out = aggregator.finish()
    for key in TEMPLATE:
        np.testing.assert_array_equal(out[key], reference[key])


def test_unknown_aggregator_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"known: .*fedavg"):
        build_aggregator("krumm")


# -- strategies -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_state_round_trips_through_json(name: str) -> None:
    strategy = build_strategy(name, {"min_nodes": 2})
    restored = strategy_from_state(json.loads(json.dumps(strategy.get_state())))
    assert type(restored) is type(strategy)
    assert restored.get_state() == strategy.get_state()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_selects_at_least_min_nodes_among_the_eligible(name: str) -> None:
    strategy = build_strategy(name, {"min_nodes": 2})
    eligible = [f"node-{i}" for i in range(6)]
    for round_number in range(1, 6):
        chosen = strategy.select(eligible, round_number)
        assert len(chosen) >= 2 and set(chosen) <= set(eligible)
        assert chosen == sorted(set(chosen))
        assert strategy.select(eligible, round_number) == chosen  # deterministic


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_refuses_too_few_nodes_and_too_few_answers_with_our_error(name: str) -> None:
    strategy = build_strategy(name, {"min_nodes": 3})
    with pytest.raises(RoundFailedError, match="at least 3"):
        strategy.select(["a", "b"], 1)
    with pytest.raises(RoundFailedError, match="b: disconnected"):
        strategy.check_answers(["a", "c"], {"b": "disconnected"})
    strategy.check_answers(["a", "b", "c"], {})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_rejects_an_invalid_min_nodes(name: str) -> None:
    with pytest.raises(ConfigurationError):
        build_strategy(name, {"min_nodes": 0})


# -- optimizer modules ------------------------------------------------------------------------
#: Module names that exchange aux vars with a counterpart, so stepping them alone is not
#: their contract (they are covered with their counterpart in tests/test_algorithms_e2e.py).
_PAIRED = {"scaffold-client", "scaffold-server"}
#: Modules that draw fresh noise from the OS's random source at each step (by design, so a
#: node cannot be made to replay its noise): only their settings round-trip.
_RANDOM = {"gaussian-noise"}


@pytest.mark.parametrize("name", sorted(list_optim_modules()))
def test_optimizer_module_state_round_trips_and_resumes_bit_identically(name: str) -> None:
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(5, 4)), "b": rng.normal(size=4)}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(4)]
    original = Optimizer(lr=0.1, modules=[name])
    for g in grads[:2]:
        params = original.step_numpy(params, g)
    meta, arrays = original.export_state()
    restored = Optimizer.from_spec(json.loads(json.dumps(original.to_spec())))
    restored.import_state(json.loads(json.dumps(meta)), arrays, vector_kind="numpy")
    if name in _PAIRED | _RANDOM:
        assert restored.to_spec() == original.to_spec()
        return
    a, b = dict(params), dict(params)
    for g in grads[2:]:
        a = original.step_numpy(a, g)
        b = restored.step_numpy(b, g)
    for key in params:
        np.testing.assert_array_equal(a[key], b[key])


def test_unknown_optimizer_module_is_our_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="adamm"):
        Optimizer(lr=0.1, modules=["adamm"])


@pytest.mark.parametrize("name", sorted(list_optim_modules()))
def test_optimizer_module_refuses_nonsense_settings_with_our_error(name: str) -> None:
    with pytest.raises(FedloomError):
        Optimizer(lr=0.1, modules=[[name, {"no_such_setting": 1}]])


# -- dataset types ----------------------------------------------------------------------------
def _csv_sample(root: Path) -> tuple[Path, str | None]:
    path = root / "data.csv"
    path.write_text("x,y\n1,0\n2,1\n3,0\n")
    return path, "y"


def _npy_sample(root: Path) -> tuple[Path, str | None]:
    path = root / "data.npy"
    np.save(path, np.arange(12.0).reshape(4, 3))
    return path, None


def _npz_sample(root: Path) -> tuple[Path, str | None]:
    path = root / "data.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.arange(3))
    return path, "y"


def _images_sample(root: Path) -> tuple[Path, str | None]:
    from PIL import Image

    for label in ("a", "b"):
        (root / "imgs" / label).mkdir(parents=True)
        Image.new("L", (4, 4), color=9).save(root / "imgs" / label / "0.png")
    return root / "imgs", None


def _medical_sample(root: Path) -> tuple[Path, str | None]:
    from tests.medical_data import write_cohort

    return write_cohort(root / "cohort", n_subjects=2, shape=(3, 3, 3)), "label"


#: A valid small dataset per registered type: a new type adds its writer here.
_DATASET_SAMPLES = {
    "csv": _csv_sample,
    "npy": _npy_sample,
    "npz": _npz_sample,
    "images": _images_sample,
    "medical-folder": _medical_sample,
}


def test_every_dataset_type_has_a_contract_sample() -> None:
    assert set(DATASET_TYPES) == set(_DATASET_SAMPLES)


@pytest.mark.parametrize("name", sorted(DATASET_TYPES))
def test_dataset_type_inspection_is_consistent_with_its_hash_and_its_loader(
    name: str, tmp_path: Path
) -> None:
    path, target = _DATASET_SAMPLES[name](tmp_path)
    found = inspect_dataset(path, name, target)
    kind = DATASET_TYPES.build(name)
    assert found.data_type == name and found.target == target
    assert found.n_samples > 0 and found.shape[0] == found.n_samples
    assert (found.files is not None) == kind.is_folder == path.is_dir()
    assert kind.content_hash(path, found.options) == (found.sha256, found.files)
    assert inspect_dataset(path, name, target).sha256 == found.sha256
    assert kind.load(path, target, found.options) is not None
    assert json.loads(json.dumps(kind.get_state())) == {"name": name}


@pytest.mark.parametrize("name", sorted(DATASET_TYPES))
def test_dataset_type_hash_changes_with_any_byte_of_any_file(name: str, tmp_path: Path) -> None:
    path, target = _DATASET_SAMPLES[name](tmp_path)
    found = inspect_dataset(path, name, target)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    kind = DATASET_TYPES.build(name)
    for victim in files:
        original = victim.read_bytes()
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert kind.content_hash(path, found.options)[0] != found.sha256, victim
        victim.write_bytes(original)


@pytest.mark.parametrize("name", sorted(DATASET_TYPES))
def test_dataset_type_refuses_an_empty_dataset_and_an_unknown_target_with_our_error(
    name: str, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    if DATASET_TYPES[name].is_folder:
        empty.mkdir()
    else:
        empty.write_bytes(b"")
    with pytest.raises(DatasetError):
        inspect_dataset(empty, name)
    path, _ = _DATASET_SAMPLES[name](tmp_path)
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(path, name, "no-such-column")
    assert refused.value.field == "target"
    with pytest.raises(DatasetError, match="--no-such-option"):
        inspect_dataset(path, name, None, {"no_such_option": "1"})
