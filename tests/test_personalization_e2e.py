"""FedPer over real nodes, seen by a curious researcher: the local heads never reach it.

Two node processes train examples/fedper (a shared body, a local head) on data with
different label distributions. The test wraps the researcher's upload store, where every
node upload lands whole, and keeps each one's payload names and raw bytes. It then checks
that no head parameter name appears in any upload and that no head's values (every head
the nodes saved, round after round) appear in any upload's bytes; that the nodes' heads
differ; and that each node trains from its own head of the previous round, across a node
restart too, by replaying the node's `personalized_*` validation from the global body and
the head the node saved.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from common.payload import EncodedPayload
from common.payload_files import read_payload_file
from common.training_args import TrainingArgs
from researcher.federated_workflows import Experiment
from researcher.server import get_server
from tests.conftest import ROOT, NodeProcess, wait_for_nodes

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "fedper"
TAGS = ["#fedper"]
MODEL_ARGS = {"n_features": 8, "hidden": 16, "n_classes": 4}
TRAINING_ARGS = {
    "epochs": 3,
    "batch_size": 32,
    "random_seed": 0,
    "test_ratio": 0.25,
    "test_on_global_updates": True,
    "test_on_local_updates": True,
}
ROUNDS_BEFORE_RESTART = 2
#: Seconds for the researcher to drop a stopped node (its stream closes at once on SIGTERM).
NODE_GONE_TIMEOUT = 30.0


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fedper_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # inspect.getsource (plan approval) looks it up there
    spec.loader.exec_module(module)
    return module


PLAN = _load_example("plan")
DATA = _load_example("make_data")


@dataclass
class Upload:
    node_id: str
    names: list[str]
    raw: bytes


@pytest.fixture
def curious_researcher(researcher_address: str) -> Iterator[list[Upload]]:
    """Every upload the researcher's server accepts, as it arrived (names and bytes)."""
    store = get_server().payloads
    seen: list[Upload] = []
    original = store.put_upload

    def spy(node_id: str, payload_id: str, payload: EncodedPayload, reserved: int = 0) -> bool:
        names = [spec.name for spec in payload.manifest.arrays]
        seen.append(Upload(node_id, names, bytes(payload.buffer)))
        return original(node_id, payload_id, payload, reserved)

    store.put_upload = spy  # type: ignore[method-assign]
    yield seen
    store.put_upload = original  # type: ignore[method-assign]


def _heads(node: NodeProcess) -> dict[int, dict[str, np.ndarray]]:
    """round -> the head `node` saved after that round (in its per-experiment state)."""
    found = {}
    for path in (node.home / "state").glob("*/round-*/personal.bin"):
        found[int(path.parent.name.split("-")[1])] = dict(read_payload_file(path).arrays())
    return found


def _personalized_loss(
    body: dict[str, np.ndarray], head: dict[str, np.ndarray], csv: Path
) -> float:
    """The validation loss a node reports as `personalized_loss` for this body and head."""
    plan = PLAN.FedPerPlan()
    args = TrainingArgs.from_dict(TRAINING_ARGS)
    plan.post_init(MODEL_ARGS, args)
    plan.set_parameters({**body, **head})
    plan.dataset_path = str(csv)
    _, test = plan.training_data().split(args.test_ratio, args.random_seed)
    return float(plan.evaluate(test)["loss"])


def test_fedper_heads_stay_on_their_nodes_and_persist_across_rounds_and_restarts(
    tmp_path: Path,
    start_node: Callable[..., NodeProcess],
    curious_researcher: list[Upload],
) -> None:
    csvs = [DATA.write_node_csv(tmp_path / f"node{i}.csv", i, n=240) for i in range(2)]
    nodes = [
        start_node(f"node{i}", datasets=[("fedper", TAGS, csv, "y")], approve=[PLAN.FedPerPlan])
        for i, csv in enumerate(csvs)
    ]
    wait_for_nodes(2)
    exp = Experiment(
        tags=TAGS,
        training_plan_class=PLAN.FedPerPlan,
        model_args=MODEL_ARGS,
        training_args=TRAINING_ARGS,
        round_limit=ROUNDS_BEFORE_RESTART,
        retain_node_params=True,
        show_progress=False,
    )
    assert exp.run() == ROUNDS_BEFORE_RESTART

    directory = get_server().directory
    nodes[0].stop()
    assert directory.wait_until(lambda: directory.get(nodes[0].node_id) is None, NODE_GONE_TIMEOUT)
    nodes[0] = start_node("node0", home=nodes[0].home)
    wait_for_nodes(2)
    assert exp.run(1, increase=True) == 1
    last = ROUNDS_BEFORE_RESTART + 1

    # The wire: 2 nodes x 3 rounds of uploads, none naming a head parameter ...
    assert len(curious_researcher) == 2 * last
    for upload in curious_researcher:
        assert upload.names, "an upload without parameters"
        assert not [n for n in upload.names if n.startswith("head")], upload.names
        assert {"body.0.weight", "body.0.bias"} <= set(upload.names)
    # ... nor carrying any head's values, as saved by the nodes after each round.
    heads = {node.node_id: _heads(node) for node in nodes}
    for node_heads in heads.values():
        assert sorted(node_heads) == list(range(1, last + 1))
        for rnd, head in node_heads.items():
            for name, value in head.items():
                needle = np.ascontiguousarray(value).tobytes()
                for upload in curious_researcher:
                    assert needle not in upload.raw, f"{name} of round {rnd} in an upload"
                # Nor any single weight row (a partial leak).
                for row in np.atleast_2d(value):
                    assert not any(row.tobytes() in u.raw for u in curious_researcher)
    # The byte search finds what did travel: each node's body as the researcher kept it.
    for rnd in range(1, last + 1):
        for node_id, reply in exp.training_replies()[rnd].items():
            body = np.ascontiguousarray(reply["params"]["body.0.weight"]).tobytes()
            assert any(u.node_id == node_id and body in u.raw for u in curious_researcher)
    # The global model has no head either.
    assert not [n for n in exp.aggregated_params()[last]["params"] if n.startswith("head")]

    # Each node has its own head.
    first, second = (heads[node.node_id][last] for node in nodes)
    assert not np.allclose(first["head.weight"], second["head.weight"])

    # Each round starts from the node's own head of the round before, restart included:
    # replaying `personalized_loss` from the global body and the saved head matches the
    # node's report, and the untrained head of the global model does worse.
    for node, csv in zip(nodes, csvs, strict=True):
        for rnd in range(2, last + 1):
            body = exp.aggregated_params()[rnd - 1]["params"]
            metrics: dict[str, Any] = exp.training_replies()[rnd][node.node_id]["metrics"]
            replayed = _personalized_loss(body, heads[node.node_id][rnd - 1], csv)
            assert metrics["personalized_loss"] == pytest.approx(replayed, rel=1e-5)
            assert metrics["personalized_accuracy"] > metrics["global_accuracy"]
