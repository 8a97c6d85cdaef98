"""ResearcherOptimizer: FedOpt steps, Scaffold against reference math, state, pitfall checks."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from declearn.model.sklearn import NumpyVector

from common.errors import ConfigurationError, PayloadError
from common.optimizers.adapters import NumpyTrainingOptimizer
from common.optimizers.aux_codec import decode_aux_vars, encode_aux_vars
from common.optimizers.declearn import (
    AdamModule,
    RidgeRegularizer,
    ScaffoldAuxVar,
    ScaffoldClientModule,
    ScaffoldServerModule,
    YogiModule,
)
from common.optimizers.optimizer import Optimizer
from researcher.optimization import ResearcherOptimizer, check_optimizer_pairing
from researcher.rounds.aggregation import sum_aux_vars


def test_sgd_with_unit_lr_returns_the_aggregate_in_the_params_dtype() -> None:
    researcher = ResearcherOptimizer(Optimizer(lr=1.0))
    global_params = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    aggregated = {"w": np.array([0.5, 3.0], dtype=np.float64)}
    new = researcher.step(global_params, aggregated, None)
    assert new["w"].dtype == np.float32
    np.testing.assert_allclose(new["w"], [0.5, 3.0])
    np.testing.assert_array_equal(global_params["w"], [1.0, 2.0])


def test_non_float_params_take_the_aggregated_value() -> None:
    researcher = ResearcherOptimizer(Optimizer(lr=0.5, modules=["adam"]))
    new = researcher.step(
        {"w": np.zeros(2), "bn.num_batches_tracked": np.array(4, dtype=np.int64)},
        {"w": np.ones(2), "bn.num_batches_tracked": np.array(7, dtype=np.int64)},
        None,
    )
    assert (
        new["bn.num_batches_tracked"].dtype == np.int64 and int(new["bn.num_batches_tracked"]) == 7
    )


def test_mismatched_parameter_names_are_a_payload_error() -> None:
    researcher = ResearcherOptimizer(Optimizer(lr=1.0))
    with pytest.raises(PayloadError, match=r"missing \['b'\], unexpected \['c'\]"):
        researcher.step(
            {"a": np.zeros(1), "b": np.zeros(1)}, {"a": np.zeros(1), "c": np.zeros(1)}, None
        )


def test_fedadam_matches_reference_over_rounds() -> None:
    lr, b1, b2, eps = 0.3, 0.9, 0.99, 1e-7
    researcher = ResearcherOptimizer(Optimizer(lr=lr, modules=[AdamModule()]))
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=4)}
    ref, m, v = x["w"].copy(), np.zeros(4), np.zeros(4)
    for t in range(1, 5):
        aggregated = {"w": x["w"] - rng.normal(size=4)}
        g = ref - aggregated["w"]
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        ref = ref - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        x = researcher.step(x, aggregated, None)
        np.testing.assert_allclose(x["w"], ref, rtol=1e-12)


def test_researcher_state_round_trip_resumes_identically() -> None:
    def run(resume_at: int | None) -> np.ndarray:
        researcher = ResearcherOptimizer(Optimizer(lr=0.1, modules=[YogiModule()]))
        x = {"w": np.zeros(3)}
        for round_index in range(4):
            if round_index == resume_at:
                meta, arrays = researcher.get_state()
                researcher = ResearcherOptimizer(Optimizer(lr=0.1, modules=[YogiModule()]))
                researcher.set_state(json.loads(json.dumps(meta)), arrays)
            x = researcher.step(x, {"w": x["w"] - np.arange(3.0) - round_index}, None)
        return x["w"]

    np.testing.assert_array_equal(run(resume_at=2), run(resume_at=None))


# ---------------------------------------------------------------------------- Scaffold


TARGETS = {"a": np.array([1.0, -2.0]), "b": np.array([3.0, 0.5]), "c": np.array([-1.0, 4.0])}
CURVATURE = {"a": np.array([1.0, 0.5]), "b": np.array([2.0, 1.0]), "c": np.array([0.5, 3.0])}
CLIENT_LR, SERVER_LR, LOCAL_STEPS = 0.1, 1.0, 5


def _grad(node: str, w: np.ndarray) -> np.ndarray:
    return CURVATURE[node] * (w - TARGETS[node])


def _reference_scaffold(schedule: list[list[str]]) -> np.ndarray:
    """SCAFFOLD with option-II control variates, written from the paper's update rules."""
    x = np.zeros(2)
    local_c = {node: np.zeros(2) for node in TARGETS}
    known: set[str] = set()
    for participants in schedule:
        c = sum(local_c[n] for n in known) / len(known) if known else np.zeros(2)
        finals = []
        for node in participants:
            y, grads = x.copy(), []
            for _ in range(LOCAL_STEPS):
                g = _grad(node, y)
                grads.append(g)
                y = y - CLIENT_LR * (g - local_c[node] + c)
            local_c[node] = np.mean(grads, axis=0)
            known.add(node)
            finals.append(y)
        x = x - SERVER_LR * (x - np.mean(finals, axis=0))
    return x


def _fedloom_scaffold(schedule: list[list[str]]) -> np.ndarray:
    researcher = ResearcherOptimizer(Optimizer(lr=SERVER_LR, modules=[ScaffoldServerModule()]))
    saved: dict[str, tuple[dict, dict]] = {}
    x = {"w": np.zeros(2)}
    for participants in schedule:
        msg, arrays = encode_aux_vars(researcher.collect_aux_var_for(participants), prefix="aux")
        replies, finals = [], []
        for node in participants:
            store = {"w": dict(x)}
            node_opt = NumpyTrainingOptimizer(
                lambda s=store: s["w"],
                lambda w, s=store: s.__setitem__("w", w),
                Optimizer(lr=CLIENT_LR, modules=[ScaffoldClientModule()]),
            )
            if node in saved:
                node_opt.import_state(*saved[node])
            node_opt.process_aux_var(decode_aux_vars(msg, arrays, vector_kind="numpy"))
            node_opt.init_round()
            for _ in range(LOCAL_STEPS):
                node_opt.step_with_gradients({"w": _grad(node, store["w"]["w"])})
            reply_msg, reply_arrays = encode_aux_vars(node_opt.collect_aux_var(), prefix="aux")
            replies.append(decode_aux_vars(reply_msg, reply_arrays, vector_kind="numpy"))
            saved[node] = node_opt.export_state()
            finals.append(store["w"]["w"])
        aggregated = {"w": np.mean(finals, axis=0)}
        x = researcher.step(x, aggregated, _sum_all(replies))
    return x["w"]


def test_scaffold_matches_reference_with_full_participation() -> None:
    schedule = [["a", "b", "c"]] * 4
    np.testing.assert_allclose(
        _fedloom_scaffold(schedule), _reference_scaffold(schedule), rtol=1e-10
    )


def test_scaffold_matches_reference_with_partial_participation() -> None:
    schedule = [["a", "b", "c"], ["a", "b"], ["c"], ["a", "c"], ["b"]]
    expected = _reference_scaffold(schedule)
    assert not np.allclose(expected, _reference_scaffold([["a", "b", "c"]] * 5))
    np.testing.assert_allclose(_fedloom_scaffold(schedule), expected, rtol=1e-10)


def _sum_all(replies: list[dict[str, ScaffoldAuxVar]]) -> dict[str, ScaffoldAuxVar]:
    total: dict[str, ScaffoldAuxVar] = {}
    for i, aux in enumerate(replies):
        total = sum_aux_vars(total, aux, f"node-{i}")
    return total


def test_aux_vars_sum_deltas_and_unite_clients() -> None:
    replies = [
        {"scaffold": ScaffoldAuxVar(delta=NumpyVector({"w": np.ones(2)}), clients={"a"})},
        {"scaffold": ScaffoldAuxVar(delta=NumpyVector({"w": np.full(2, 2.0)}), clients={"b"})},
    ]
    total = _sum_all(replies)["scaffold"]
    np.testing.assert_array_equal(total.delta.coefs["w"], [3.0, 3.0])
    assert total.clients == {"a", "b"}
    with pytest.raises(PayloadError, match="same optimizer modules"):
        sum_aux_vars(replies[0], {}, "node-x")


def test_collect_aux_var_for_is_empty_without_aux_modules() -> None:
    assert (
        ResearcherOptimizer(Optimizer(lr=1.0, modules=["yogi"])).collect_aux_var_for(["n1"]) == {}
    )
    scaffold = ResearcherOptimizer(Optimizer(lr=1.0, modules=[ScaffoldServerModule()]))
    assert set(scaffold.collect_aux_var_for(["n1", "n2"])) == {"scaffold"}


# ------------------------------------------------------------------------------ pitfalls


def _scaffold_server() -> ResearcherOptimizer:
    return ResearcherOptimizer(Optimizer(lr=1.0, modules=[ScaffoldServerModule()]))


def test_matching_scaffold_pair_passes() -> None:
    node_spec = Optimizer(lr=0.1, modules=[ScaffoldClientModule()]).to_spec()
    assert (
        check_optimizer_pairing(_scaffold_server().optimizer, node_spec, native_torch=False) == []
    )


def test_fedyogi_with_sgd_nodes_passes() -> None:
    researcher = ResearcherOptimizer(Optimizer(lr=0.8, modules=[YogiModule()]))
    assert (
        check_optimizer_pairing(
            researcher.optimizer, Optimizer(lr=0.1).to_spec(), native_torch=False
        )
        == []
    )
    assert check_optimizer_pairing(researcher.optimizer, None, native_torch=True) == []


def test_scaffold_server_without_client_module_on_nodes_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="ScaffoldClientModule"):
        check_optimizer_pairing(
            _scaffold_server().optimizer, Optimizer(lr=0.1).to_spec(), native_torch=False
        )


def test_scaffold_client_on_nodes_without_server_module_is_refused() -> None:
    node_spec = Optimizer(lr=0.1, modules=[ScaffoldClientModule()]).to_spec()
    with pytest.raises(ConfigurationError, match="ScaffoldServerModule"):
        check_optimizer_pairing(
            ResearcherOptimizer(Optimizer(lr=1.0)).optimizer, node_spec, native_torch=False
        )


def test_native_torch_nodes_with_aux_var_researcher_module_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"native torch\.optim"):
        check_optimizer_pairing(_scaffold_server().optimizer, None, native_torch=True)
    with pytest.raises(ConfigurationError, match="no fedloom Optimizer"):
        check_optimizer_pairing(_scaffold_server().optimizer, None, native_torch=False)


def test_modules_on_the_wrong_side_are_refused() -> None:
    client_on_researcher = ResearcherOptimizer(Optimizer(lr=1.0, modules=[ScaffoldClientModule()]))
    with pytest.raises(ConfigurationError, match="belongs in the training plan"):
        check_optimizer_pairing(client_on_researcher.optimizer, None, native_torch=False)
    server_on_nodes = Optimizer(lr=0.1, modules=[ScaffoldServerModule()]).to_spec()
    with pytest.raises(ConfigurationError, match="belongs on the researcher"):
        check_optimizer_pairing(_scaffold_server().optimizer, server_on_nodes, native_torch=False)


def test_regularizer_on_the_researcher_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    researcher = ResearcherOptimizer(Optimizer(lr=1.0, regularizers=[RidgeRegularizer()]))
    with caplog.at_level(logging.WARNING, logger="researcher.optimization"):
        warnings = check_optimizer_pairing(
            researcher.optimizer, Optimizer(lr=0.1).to_spec(), native_torch=False
        )
    assert len(warnings) == 1 and "ridge" in warnings[0] and "training plan" in warnings[0]
    assert warnings[0] in caplog.text


def test_invalid_node_spec_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown entry 'sgd'"):
        check_optimizer_pairing(
            _scaffold_server().optimizer, {"lr": 0.1, "modules": ["sgd"]}, native_torch=False
        )


def test_native_torch_optimizer_cannot_be_the_researcher_optimizer() -> None:
    native = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigurationError, match="only work inside training plans"):
        ResearcherOptimizer(native)  # type: ignore[arg-type]
