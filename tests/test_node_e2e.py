"""The node operator's side end to end: approval, misbehaving plans, log relay, restarts, data changes.

A real researcher runs in this process; nodes are `fedloom node start` processes over loopback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from common.errors import RoundFailedError
from common.training_plans.source import plan_hash, plan_source
from researcher.federated_workflows import Experiment
from researcher.server import get_server
from tests.conftest import (
    NODE_CONNECT_TIMEOUT,
    ROOT,
    fedloom_cmd,
    wait_for_nodes,
    wait_for_reconnect,
    write_tabular_csv,
)
from tests.plans.faulty import (
    AbortingPlan,
    AdamLogisticPlan,
    ChattyPlan,
    ExitingPlan,
    HangingPlan,
    MemoryHogPlan,
    WarnThenFailPlan,
)
from tests.plans.tabular import (
    GlobalCopiedInPlan,
    GlobalReleasedPlan,
    HugePagesPlan,
    LogisticPlan,
    NativeSgdPlan,
    SwappingPlan,
    ThreadsPlan,
    make_logistic_data,
)

pytestmark = pytest.mark.slow

TAGS = ["#tab"]

#: Node-side task timeout for the misbehaving-plan tests: a good task (fork, pandas import,
#: a few full-batch steps) takes about a second on a loaded 2-core box, so 8 s leaves a wide
#: margin while keeping the hanging-plan test short.
TASK_TIMEOUT_SECONDS = 8.0

#: Memory a task may add to the size it was forked at: a good task grows by a few tens of MB
#: (pandas, the data, torch's autograd buffers); the hog must hit the limit fast.
MAX_MEMORY_MB = 512

#: Training arguments of every experiment here: full batch, a fixed seed, deterministic replies.
TRAINING_ARGS = {"num_updates": 3, "batch_size": 1000, "random_seed": 0}


def _csv(tmp_path: Path, name: str = "data.csv", seed: int = 0, n: int = 80) -> Path:
    x, y = make_logistic_data(seed=seed, n=n)
    return write_tabular_csv(tmp_path / name, x, y)


def _experiment(plan: type, round_limit: int = 1) -> Experiment:
    return Experiment(
        tags=TAGS,
        training_plan_class=plan,
        training_args=TRAINING_ARGS,
        round_limit=round_limit,
    )


def _plan_id(plan: type) -> str:
    """The 12-digit id an operator types: the start of the plan source's SHA-256."""
    return plan_hash(plan_source(plan))[:12]


def _node_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `fedloom node --home HOME ARGS...` as the operator would."""
    return subprocess.run(
        fedloom_cmd("node", "--home", str(home), *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=NODE_CONNECT_TIMEOUT,
        check=False,
    )


def _refusal(plan: type) -> str:
    """Run one round of `plan` and return the RoundFailedError's message."""
    with pytest.raises(RoundFailedError) as info:
        _experiment(plan).run()
    return str(info.value)


# -- plan approval ------------------------------------------------------------------------------


def test_unapproved_plan_is_refused_with_the_approve_command_then_runs_once_approved(
    tmp_path, start_node
):
    node = start_node("clinic", datasets=[("tab", TAGS, _csv(tmp_path), "y")])
    wait_for_nodes(1)
    plan_id = _plan_id(LogisticPlan)
    exp = _experiment(LogisticPlan)

    with pytest.raises(RoundFailedError) as info:
        exp.run()
    message = str(info.value)
    assert "PlanNotApproved" in message
    assert "clinic" in message
    assert f"plan approve {plan_id}" in message

    listed = _node_cli(node.home, "plan", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    pending = {p["id"]: p["status"] for p in json.loads(listed.stdout)}
    assert pending.get(plan_id) == "pending", pending
    approved = _node_cli(node.home, "plan", "approve", plan_id)
    assert approved.returncode == 0, approved.stderr

    assert exp.run() == 1  # the same experiment retries round 1, on the same node process
    assert node.proc.poll() is None
    assert list(exp.training_replies()[1]) == [node.node_id]


def test_a_rejected_plan_is_refused_and_names_the_rejection(tmp_path, start_node):
    node = start_node("lab", datasets=[("tab", TAGS, _csv(tmp_path), "y")])
    wait_for_nodes(1)
    plan_id = _plan_id(ChattyPlan)
    assert "PlanNotApproved" in _refusal(ChattyPlan)  # recorded as pending on the node

    rejected = _node_cli(node.home, "plan", "reject", plan_id)
    assert rejected.returncode == 0, rejected.stderr

    message = _refusal(ChattyPlan)
    assert "PlanRejected" in message
    assert "lab" in message and plan_id in message and "rejected" in message
    assert node.proc.poll() is None


# -- misbehaving plans ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        pytest.param(AbortingPlan, "killed by signal SIGABRT", id="abort"),
        pytest.param(HangingPlan, f"did not finish within {TASK_TIMEOUT_SECONDS:.0f} s", id="hang"),
        pytest.param(MemoryHogPlan, "memory limit", id="memory"),
        pytest.param(ExitingPlan, "sys.exit(3)", id="sys-exit"),
    ],
)
def test_a_misbehaving_plan_gets_an_error_reply_and_the_node_serves_the_next_task(
    tmp_path, start_node, plan, reason
):
    node = start_node(
        "hospital",
        datasets=[("tab", TAGS, _csv(tmp_path), "y")],
        approve=[plan, LogisticPlan],
        extra_args=[
            "--task-timeout",
            str(TASK_TIMEOUT_SECONDS),
            "--max-memory-mb",
            str(MAX_MEMORY_MB),
        ],
    )
    wait_for_nodes(1)
    started = time.monotonic()
    message = _refusal(plan)
    elapsed = time.monotonic() - started
    assert "hospital" in message
    assert reason in message, message
    # The node stopped the task itself: far before the researcher's default round deadline.
    assert elapsed < TASK_TIMEOUT_SECONDS + 30, elapsed

    assert _experiment(LogisticPlan).run() == 1
    assert node.proc.poll() is None
    assert "training failed" in (node.home / "logs" / "node.log").read_text()  # for the operator


# -- log relay ------------------------------------------------------------------------------------


def test_the_researcher_sees_the_log_lines_of_a_task(tmp_path, start_node, caplog):
    start_node("ward", datasets=[("tab", TAGS, _csv(tmp_path), "y")], approve=[ChattyPlan])
    wait_for_nodes(1)
    caplog.set_level(logging.INFO, logger="researcher.node")

    assert _experiment(ChattyPlan).run() == 1

    relayed = [r for r in caplog.records if r.name == "researcher.node"]
    printed = [r for r in relayed if ChattyPlan.PRINTED in r.getMessage()]
    warned = [r for r in relayed if ChattyPlan.WARNED in r.getMessage()]
    assert len(printed) == TRAINING_ARGS["num_updates"], [r.getMessage() for r in relayed]
    assert {r.levelno for r in printed} == {logging.INFO}
    assert len(warned) == TRAINING_ARGS["num_updates"]
    assert {r.levelno for r in warned} == {logging.WARNING}
    assert all("[ward]" in r.getMessage() for r in printed + warned)
    assert any("trained 3 step(s)" in r.getMessage() for r in relayed)


def _lines_relayed_by_one_run(
    plan: type, node_name: str, tmp_path, start_node, caplog, extra_args: Sequence[str] = ()
) -> list[str]:
    """Log lines the researcher relayed from a one-node, one-round run of `plan`."""
    start_node(
        node_name,
        datasets=[("tab", TAGS, _csv(tmp_path), "y")],
        approve=[plan],
        extra_args=extra_args,
    )
    wait_for_nodes(1)
    caplog.set_level(logging.INFO, logger="researcher.node")
    assert _experiment(plan).run() == 1
    return [r.getMessage() for r in caplog.records if r.name == "researcher.node"]


def test_a_native_torch_optimizer_finds_its_lazy_imports_done_in_the_task_process(
    tmp_path, start_node, caplog
):
    relayed = _lines_relayed_by_one_run(NativeSgdPlan, "warm", tmp_path, start_node, caplog)

    assert f"[warm] {NativeSgdPlan.PRELOADED} True" in relayed, relayed


def test_a_task_trains_in_the_downloaded_global_model_which_becomes_its_reply(
    tmp_path, start_node, caplog
):
    # One copy of the model in the task: no copy in, no reply written out.
    relayed = _lines_relayed_by_one_run(GlobalReleasedPlan, "lean", tmp_path, start_node, caplog)

    line = f"[lean] {GlobalReleasedPlan.GLOBAL} file False, mappings 0, model in file True"
    assert line in relayed, relayed


def test_a_task_that_copies_the_global_model_in_frees_it_so_its_reply_reuses_the_pages(
    tmp_path, start_node, caplog
):
    relayed = _lines_relayed_by_one_run(GlobalCopiedInPlan, "copy", tmp_path, start_node, caplog)

    line = f"[copy] {GlobalCopiedInPlan.GLOBAL} file False, mappings 0, model in file False"
    assert line in relayed, relayed


def test_a_plan_swapping_a_tensor_out_of_the_mapped_model_sends_the_swapped_one(
    tmp_path, start_node
):
    start_node("swap", datasets=[("tab", TAGS, _csv(tmp_path), "y")], approve=[SwappingPlan])
    wait_for_nodes(1)
    exp = _experiment(SwappingPlan)
    assert exp.run() == 1

    weight = exp.aggregated_params()[1]["params"]["weight"]
    np.testing.assert_array_equal(weight, np.full_like(weight, SwappingPlan.SWAPPED_VALUE))


def test_the_operator_sets_how_many_threads_a_task_uses(tmp_path, start_node, caplog):
    # On a machine the node shares, one thread per CPU per task oversubscribes it.
    wanted = 1 if (os.cpu_count() or 1) > 1 else 2  # not the default, whatever the machine
    relayed = _lines_relayed_by_one_run(
        ThreadsPlan, "few", tmp_path, start_node, caplog, extra_args=["--threads", str(wanted)]
    )

    (line,) = [line for line in relayed if ThreadsPlan.THREADS in line]
    assert line.startswith(f"[few] {ThreadsPlan.THREADS} torch {wanted}, blas [{wanted}], "), line
    if wanted == 1:
        # One thread in all: no BLAS pool woken to spin beside the plan (0.2 CPU-s a task).
        assert line.endswith("running 1"), line


def _transparent_huge_pages() -> str:
    try:
        modes = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return modes.split("[")[1].split("]")[0]


@pytest.mark.skipif(
    _transparent_huge_pages() not in ("always", "madvise"),
    reason=f"transparent huge pages are {_transparent_huge_pages()} on this kernel",
)
def test_torch_blocks_of_a_task_process_may_use_huge_pages(tmp_path, start_node, caplog):
    # Each task's tensors are fresh memory; 2 MB pages fault it in about 3x faster.
    relayed = _lines_relayed_by_one_run(HugePagesPlan, "pages", tmp_path, start_node, caplog)

    assert f"[pages] {HugePagesPlan.HUGE} 1" in relayed, relayed


def test_the_researcher_sees_what_a_failing_plan_logged_before_it_failed(
    tmp_path, start_node, caplog
):
    start_node("ward", datasets=[("tab", TAGS, _csv(tmp_path), "y")], approve=[WarnThenFailPlan])
    wait_for_nodes(1)
    caplog.set_level(logging.INFO, logger="researcher.node")

    assert "cannot train with missing ages" in _refusal(WarnThenFailPlan)

    warned = [
        r
        for r in caplog.records
        if r.name == "researcher.node" and WarnThenFailPlan.WARNED in r.getMessage()
    ]
    assert len(warned) == WarnThenFailPlan.BAD_ROWS  # none overtaken by the error reply
    assert {r.levelno for r in warned} == {logging.WARNING}


# -- restart ------------------------------------------------------------------------------------


def _final_params(exp: Experiment, round_number: int) -> dict[str, np.ndarray]:
    return exp.aggregated_params()[round_number]["params"]


def _adam_steps(state_dir: Path, round_number: int) -> int:
    """The Adam step counter in the node's optimizer state saved after `round_number`."""
    meta = json.loads((state_dir / f"round-{round_number:06d}" / "optimizer.json").read_text())
    (name, adam_state) = meta["state"]["modules"][0]["__tuple__"]
    assert name == "adam", meta["state"]
    return int(adam_state["steps"])


def test_a_node_killed_and_restarted_resumes_its_experiment_with_its_optimizer_state(
    tmp_path, start_node
):
    csv = _csv(tmp_path)
    node = start_node("site", datasets=[("tab", TAGS, csv, "y")], approve=[AdamLogisticPlan])
    wait_for_nodes(1)
    interrupted = _experiment(AdamLogisticPlan)
    assert interrupted.run() == 1
    state_dir = node.home / "state" / interrupted.id
    assert (state_dir / "round-000001").is_dir()

    old = get_server().directory.get(node.node_id)
    node.kill()
    restarted = start_node("site", home=node.home)
    wait_for_reconnect(node.node_id, old)
    assert interrupted.run(rounds=1, increase=True) == 1
    steps = TRAINING_ARGS["num_updates"]
    assert _adam_steps(state_dir, 1) == steps
    assert _adam_steps(state_dir, 2) == 2 * steps  # round 2 started from round 1's state

    uninterrupted = _experiment(AdamLogisticPlan, round_limit=2)
    assert uninterrupted.run() == 2
    for name, value in _final_params(uninterrupted, 2).items():
        np.testing.assert_allclose(_final_params(interrupted, 2)[name], value, rtol=0, atol=1e-7)

    # The comparison can fail: the same two rounds with the node's state wiped in between differ.
    amnesic = _experiment(AdamLogisticPlan)
    assert amnesic.run() == 1
    for saved in (node.home / "state" / amnesic.id).iterdir():
        for item in saved.iterdir():
            item.unlink()
        saved.rmdir()
    assert amnesic.run(rounds=1, increase=True) == 1
    differences = [
        float(np.max(np.abs(_final_params(amnesic, 2)[name] - value)))
        for name, value in _final_params(uninterrupted, 2).items()
    ]
    assert max(differences) > 1e-4, differences
    assert restarted.proc.poll() is None


# -- datasets -----------------------------------------------------------------------------------


def test_a_dataset_changed_since_registration_is_refused_with_the_reason(tmp_path, start_node):
    csv = _csv(tmp_path)
    start_node("registry", datasets=[("tab", TAGS, csv, "y")], approve=[LogisticPlan])
    wait_for_nodes(1)
    with csv.open("a", encoding="utf-8") as handle:
        handle.write("0.1,0.2,0.3,0.4,1\n")

    message = _refusal(LogisticPlan)
    assert "DatasetChanged" in message
    assert "'tab'" in message and "registry" in message
    assert f"{csv} changed since it was registered" in message
    assert "dataset remove tab" in message  # what the operator does about it
