"""The round engine refuses a bad reply whole: it leaves no trace in any aggregate.

These tests drive `run_round` through an in-memory `Exchange` (the transport seam), so the
replies are exactly the faulty ones under test; everything after the transport — decoding,
validation, aggregation, the server optimizer — is the production path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from common.errors import NoMatchingNodesError, RoundFailedError
from common.optimizers.aux_codec import encode_aux_vars
from common.optimizers.declearn import ScaffoldServerModule
from common.optimizers.optimizer import Optimizer
from common.payload import EncodedPayload
from common.proto import fedloom_pb2 as pb
from common.training_args import TrainingArgs
from researcher.aggregators import FedAverage
from researcher.node_directory import DatasetSummary
from researcher.optimization import ResearcherOptimizer
from researcher.rounds import ExchangeResult, PlanInfo, ReceivedReply, RoundSetup, run_round
from researcher.rounds.exchange import ReplyHandler
from researcher.strategies import DefaultStrategy

GLOBAL = {
    "weight": np.zeros((2, 3), dtype=np.float32),
    "bias": np.zeros(3, dtype=np.float32),
}


#: What a node answers: its upload by payload section, and its TaskReply.
Answer = tuple[dict[int, dict[str, np.ndarray]], pb.TaskReply]


@dataclass
class FakeNode:
    node_id: str
    datasets: tuple[DatasetSummary, ...] = (DatasetSummary("d", ("#t",), 10, (10, 2), "csv"),)
    known_plans: set[str] = field(default_factory=set)
    secagg_public_key: bytes = b""

    @property
    def name(self) -> str:
        return self.node_id

    @property
    def label(self) -> str:
        return self.node_id

    def matching_dataset(self, tags: Sequence[str]) -> DatasetSummary | None:
        return self.datasets[0] if set(tags) <= set(self.datasets[0].tags) else None


@dataclass
class ScriptedExchange:
    """Answers each node's task with a prepared (arrays, TaskReply)."""

    answers: Mapping[str, Answer]
    tasks: dict[str, pb.TaskRequest] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return "memory"

    def connected(self) -> list[FakeNode]:
        return [FakeNode(n) for n in self.answers]

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return predicate()

    def publish(self, payload: EncodedPayload, node_ids: Sequence[str]) -> str:
        return "payload"

    def unpublish(self, payload_id: str) -> None:
        pass

    def run_tasks(
        self,
        tasks: Mapping[str, pb.TaskRequest],
        timeout: float,
        on_reply: ReplyHandler | None = None,
    ) -> ExchangeResult:
        self.tasks.update(tasks)
        result = ExchangeResult()
        for node_id in tasks:
            arrays, reply = self.answers[node_id]
            try:
                assert on_reply is not None
                on_reply(ReceivedReply(node_id, reply, arrays))
            except Exception as exc:
                result.failures[node_id] = f"reply refused: {exc}"
                continue
            result.answered.append(node_id)
        return result


class Listener:
    def waiting_for_nodes(self, connected, eligible, needed, wanted) -> None:  # type: ignore[no-untyped-def]
        pass

    def round_started(self, round_number: int, nodes: Mapping[str, str]) -> None:
        pass

    def node_answered(self, round_number: int, node_id: str, loss: float | None, n: int) -> None:
        pass


def _params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in GLOBAL.items()}


def _answer(
    params: Mapping[str, np.ndarray],
    n_samples: int,
    aux: pb.AuxVars | None = None,
    aux_arrays: Mapping[str, np.ndarray] | None = None,
) -> Answer:
    sections = {
        pb.PAYLOAD_SECTION_PARAMS: {k: np.asarray(v) for k, v in params.items()},
        pb.PAYLOAD_SECTION_AUX: dict(aux_arrays or {}),
    }
    reply = pb.TaskReply(ok=True, n_samples=n_samples, losses=[0.5])
    if aux is not None:
        reply.aux_vars.CopyFrom(aux)
    return sections, reply


def _setup(optimizer: Optimizer | None = None, min_nodes: int = 1) -> RoundSetup:
    return RoundSetup(
        experiment_id="exp",
        plan=PlanInfo("P", "source", "sha"),
        tags=("#t",),
        nodes=None,
        training_args=TrainingArgs(),
        model_args={},
        node_wait_timeout=1.0,
        aggregator=FedAverage(),
        strategy=DefaultStrategy(min_nodes=min_nodes),
        optimizer=None if optimizer is None else ResearcherOptimizer(optimizer),
        secagg=None,
        trainable=frozenset(GLOBAL),
    )


def _fedavg(replies: Sequence[tuple[Mapping[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """The plain reference: sample-weighted mean in float64, cast back."""
    total = sum(n for _, n in replies)
    return {
        k: (sum(p[k].astype(np.float64) * n for p, n in replies) / total).astype(v.dtype)
        for k, v in GLOBAL.items()
    }


GOOD = [(_params(1), 10), (_params(2), 30)]


def _nan_in_last_tensor() -> Answer:
    params = _params(3)
    params["bias"] = params["bias"].copy()
    params["bias"][-1] = np.nan
    return _answer(params, 20)


def _wrong_shape_in_one_tensor() -> Answer:
    params = _params(3)
    params["bias"] = np.zeros(4, dtype=np.float32)
    return _answer(params, 20)


def _unknown_aux_var() -> Answer:
    from declearn.optimizer.modules import ScaffoldAuxVar

    message, aux_arrays = encode_aux_vars({"mystery": ScaffoldAuxVar(state=1.0)})
    return _answer(_params(3), 20, message, aux_arrays)


def _no_samples() -> Answer:
    return _answer(_params(3), 0)


@pytest.mark.parametrize(
    "bad",
    [_nan_in_last_tensor, _wrong_shape_in_one_tensor, _unknown_aux_var, _no_samples],
    ids=["nan-in-last-tensor", "wrong-shape", "unknown-aux-var", "zero-samples"],
)
@pytest.mark.parametrize("bad_position", [0, 1, 2], ids=["bad-first", "bad-middle", "bad-last"])
def test_refused_reply_leaves_the_global_model_equal_to_the_accepted_fedavg(
    bad: Callable[[], Answer], bad_position: int
) -> None:
    answers = [_answer(p, n) for p, n in GOOD]
    answers.insert(bad_position, bad())
    ids = ["n0", "n1", "n2"]
    exchange = ScriptedExchange(dict(zip(ids, answers, strict=True)))
    result = run_round(exchange, _setup(), 1, GLOBAL, Listener())
    expected = _fedavg(GOOD)
    for name, value in expected.items():
        np.testing.assert_array_equal(result.params[name], value)
    bad_id = ids[bad_position]
    assert set(result.replies) == set(ids) - {bad_id}
    assert [r.node for r in result.record.nodes] == [i for i in ids if i != bad_id]
    assert list(result.record.failures) == [bad_id]
    assert "refused" in result.record.failures[bad_id]


def test_refused_reply_leaves_no_trace_in_the_server_optimizer_aux_vars() -> None:
    """Scaffold: a reply whose parameters are refused must not add its aux var either."""
    from declearn.optimizer.modules import ScaffoldAuxVar

    def scaffold_answer(params: dict[str, np.ndarray], n: int, delta: float, cid: str):
        message, aux_arrays = encode_aux_vars(
            {"scaffold": ScaffoldAuxVar(delta=delta, clients={cid})}
        )
        return _answer(params, n, message, aux_arrays)

    bad = _params(3)
    bad["bias"] = np.full(3, np.inf, dtype=np.float32)
    answers = {
        "n0": scaffold_answer(_params(1), 10, 1.0, "n0"),
        "n1": scaffold_answer(bad, 20, 100.0, "n1"),
        "n2": scaffold_answer(_params(2), 30, 2.0, "n2"),
    }
    optimizer = Optimizer(lr=1.0, modules=[ScaffoldServerModule()])
    result = run_round(ScriptedExchange(answers), _setup(optimizer), 1, GLOBAL, Listener())
    scaffold = optimizer.get_state()
    assert "n1" not in str(scaffold)
    # With lr=1 and Scaffold on the server, the new model is the accepted nodes' FedAvg.
    expected = _fedavg(GOOD)
    for name, value in expected.items():
        np.testing.assert_allclose(result.params[name], value, rtol=0, atol=1e-7)


def test_round_fails_when_refusals_leave_fewer_answers_than_the_strategy_needs() -> None:
    answers = {"n0": _answer(*GOOD[0]), "n1": _nan_in_last_tensor()}
    with pytest.raises(RoundFailedError, match=r"only 1 node\(s\) answered, at least 2.*n1"):
        run_round(ScriptedExchange(answers), _setup(min_nodes=2), 1, GLOBAL, Listener())


def test_tags_no_connected_node_holds_fail_at_once_listing_each_nodes_tags() -> None:
    exchange = ScriptedExchange({"n0": _answer(*GOOD[0])})
    setup = _setup()
    setup = RoundSetup(**{**setup.__dict__, "tags": ("#other",), "node_wait_timeout": 3600.0})
    with pytest.raises(NoMatchingNodesError, match=r"n0: d \['#t'\]"):
        run_round(exchange, setup, 1, GLOBAL, Listener())
