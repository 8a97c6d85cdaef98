"""Hostile training plans stay in their box: processes, writes, network, memory, one daemon.

A real researcher runs in this process; nodes are `fedloom node start` processes over
loopback. After each attack the researcher gets a clear error reply (or, for processes
left behind, a normal reply) and the same node serves the next task.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest

from common.errors import ConfigurationError, RoundFailedError
from node.containment import ContainmentError, ContainmentSettings, ContainmentSupport
from node.containment.support import probe_support
from researcher.federated_workflows import Experiment
from tests.conftest import (
    NODE_CONNECT_TIMEOUT,
    ROOT,
    fedloom_cmd,
    wait_for_nodes,
    write_tabular_csv,
)
from tests.plans.faulty import MemoryHogPlan
from tests.plans.hostile import (
    ConnectingPlan,
    DetachedChildrenPlan,
    OutsideWriterPlan,
    SegfaultPlan,
    SelfKillingPlan,
)
from tests.plans.tabular import LogisticPlan, make_logistic_data

TAGS = ["#tab"]
TRAINING_ARGS = {"num_updates": 2, "batch_size": 1000, "random_seed": 0}

#: Node-side task timeout: a good task takes about a second on a loaded 2-core box.
TASK_TIMEOUT_SECONDS = 10.0

#: Memory a task may add to its forked size (see tests/test_node_e2e.py).
MAX_MEMORY_MB = 512

SUPPORT = probe_support()
needs_landlock = pytest.mark.skipif(
    not SUPPORT.confines_writes, reason=f"no Landlock here: {SUPPORT.landlock_error}"
)
needs_no_network = pytest.mark.skipif(
    not SUPPORT.isolates_network, reason=f"no network isolation here: {SUPPORT.network_error}"
)


def _experiment(plan: type, **model_args: object) -> Experiment:
    return Experiment(
        tags=TAGS,
        training_plan_class=plan,
        training_args=TRAINING_ARGS,
        model_args=model_args,
        round_limit=1,
    )


def _refusal(plan: type, **model_args: object) -> str:
    with pytest.raises(RoundFailedError) as info:
        _experiment(plan, **model_args).run()
    return str(info.value)


def _node(tmp_path: Path, start_node, *plans: type, name: str = "hospital"):
    x, y = make_logistic_data(seed=0, n=80)
    csv = write_tabular_csv(tmp_path / "data.csv", x, y)
    node = start_node(
        name,
        datasets=[("tab", TAGS, csv, "y")],
        approve=[*plans, LogisticPlan],
        extra_args=[
            "--task-timeout",
            str(TASK_TIMEOUT_SECONDS),
            "--max-memory-mb",
            str(MAX_MEMORY_MB),
        ],
    )
    wait_for_nodes(1)
    return node


def _serves_the_next_task(node) -> None:
    assert _experiment(LogisticPlan).run() == 1
    assert node.proc.poll() is None


def _named(name: str) -> list[int]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                found.append(int(comm.parent.name))
        except OSError:
            pass
    return found


def _wait_none_named(name: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := _named(name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


# -- processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_detached_processes_of_a_plan_die_with_its_task(tmp_path, start_node):
    node = _node(tmp_path, start_node, DetachedChildrenPlan)
    name = f"fl{secrets.token_hex(5)}"

    # The plan checks that its 50 double-forked, setsid processes run before it trains.
    assert _experiment(DetachedChildrenPlan, name=name).run() == 1

    assert _wait_none_named(name) == []
    assert "stopped 50 process(es) the training plan left running" in node.log()
    _serves_the_next_task(node)


@pytest.mark.slow
def test_detached_processes_of_a_hanging_plan_die_when_the_node_stops_it(tmp_path, start_node):
    node = _node(tmp_path, start_node, DetachedChildrenPlan)
    name = f"fl{secrets.token_hex(5)}"

    message = _refusal(DetachedChildrenPlan, name=name, hang=True)

    assert f"did not finish within {TASK_TIMEOUT_SECONDS:.0f} s" in message
    assert _wait_none_named(name) == []
    _serves_the_next_task(node)


@pytest.mark.slow
def test_a_segfaulting_plan_gets_an_error_reply(tmp_path, start_node):
    node = _node(tmp_path, start_node, SegfaultPlan)

    message = _refusal(SegfaultPlan)

    assert "hospital" in message and "killed by signal SIGSEGV" in message, message
    _serves_the_next_task(node)


@pytest.mark.slow
def test_a_sigkill_from_elsewhere_is_not_blamed_on_memory(tmp_path, start_node):
    node = _node(tmp_path, start_node, SelfKillingPlan)

    message = _refusal(SelfKillingPlan)

    assert "killed by signal SIGKILL" in message and "not by the node" in message, message
    assert "memory limit" not in message
    _serves_the_next_task(node)


# -- memory ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_memory_hog_is_refused_by_the_node_limit_and_told_so(tmp_path, start_node):
    node = _node(tmp_path, start_node, MemoryHogPlan)

    message = _refusal(MemoryHogPlan)

    assert "MemoryError" in message
    assert (
        f"memory allocation was refused: the task reached the node's memory limit of {MAX_MEMORY_MB} MB"
        in message
    )
    _serves_the_next_task(node)


# -- writes ------------------------------------------------------------------------------------


@needs_landlock
@pytest.mark.slow
@pytest.mark.parametrize("where", ["outside the home", "in the node home"])
def test_a_plan_cannot_write_outside_its_box(tmp_path, start_node, where):
    node = _node(tmp_path, start_node, OutsideWriterPlan)
    target = tmp_path / "escaped.txt" if where == "outside the home" else node.home / "escaped.txt"

    message = _refusal(OutsideWriterPlan, target=str(target))

    assert "PermissionError" in message and "Permission denied" in message, message
    assert not target.exists()
    _serves_the_next_task(node)


# -- network -----------------------------------------------------------------------------------


@needs_no_network
@pytest.mark.slow
def test_a_plan_cannot_connect_to_a_loopback_listener(tmp_path, start_node):
    node = _node(tmp_path, start_node, ConnectingPlan)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)

        message = _refusal(ConnectingPlan, port=listener.getsockname()[1])

        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert "hospital" in message
    assert "unreachable" in message or "Permission denied" in message, message
    _serves_the_next_task(node)


# -- the daemon --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_daemon_on_the_same_home_is_refused_naming_the_first(tmp_path, start_node):
    node = _node(tmp_path, start_node)

    second = subprocess.run(
        fedloom_cmd(*node.args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=NODE_CONNECT_TIMEOUT,
        check=False,
    )

    assert second.returncode == 2
    assert f"already served by process {node.proc.pid}" in second.stderr, second.stderr
    _serves_the_next_task(node)


@needs_landlock
@pytest.mark.slow
def test_node_start_says_what_is_confined(tmp_path, start_node):
    node = _node(tmp_path, start_node)

    log = node.log()

    assert f"containment: training tasks may use {MAX_MEMORY_MB} MB" in log
    assert "containment: every process a plan starts is killed when its task ends" in log
    assert "containment: plans write only to their task folder" in log


def test_require_refuses_a_machine_without_landlock_and_says_what_is_missing():
    settings = ContainmentSettings.resolve({"containment": {"confinement": "require"}})
    bare = ContainmentSupport(
        0, "no Landlock in this kernel", "", "unshare: Operation not permitted"
    )

    with pytest.raises(ContainmentError) as info:
        settings.worker_limits(bare)

    message = str(info.value)
    assert "write confinement (no Landlock in this kernel)" in message
    assert "network isolation (unshare: Operation not permitted)" in message
    assert "confinement = 'auto'" in message


def test_auto_runs_unconfined_where_the_kernel_cannot_and_says_so():
    settings = ContainmentSettings.resolve({}, max_memory_mb=0)
    bare = ContainmentSupport(
        0, "no Landlock in this kernel", "", "unshare: Operation not permitted"
    )

    limits = settings.worker_limits(bare)

    assert not limits.confine_writes and not limits.isolate_network and not limits.max_memory_bytes
    warnings = [text for ok, text in settings.describe(bare) if not ok]
    assert any("NO memory limit" in text for text in warnings)
    assert any("NOT confined" in text and "confinement = 'require'" in text for text in warnings)
    assert any("CAN use the network" in text for text in warnings)


def test_the_default_memory_limit_is_half_the_machine_and_zero_means_none():
    from node.containment import default_memory_limit_mb
    from node.containment.memory import machine_memory_mb

    default = ContainmentSettings.resolve({})
    assert default.max_memory_mb == default_memory_limit_mb() == machine_memory_mb() // 2
    assert (
        ContainmentSettings.resolve({"containment": {"max_memory_mb": 2048}}).max_memory_mb == 2048
    )
    assert (
        ContainmentSettings.resolve(
            {"containment": {"max_memory_mb": 2048}}, max_memory_mb=0
        ).max_memory_mb
        == 0
    )
    with pytest.raises(Exception, match="0 for no limit"):
        ContainmentSettings.resolve({"containment": {"max_memory_mb": -1}})
    with pytest.raises(Exception, match="unknown key"):
        ContainmentSettings.resolve({"containment": {"memory": 1}})


def test_threads_come_from_the_command_line_then_the_config_and_reach_the_task_limits():
    support = ContainmentSupport(0, "no Landlock in this kernel", "", "no namespaces")
    assert ContainmentSettings.resolve({}).worker_limits(support).threads == 0
    configured = ContainmentSettings.resolve({"containment": {"threads": 2}})
    assert configured.worker_limits(support).threads == 2
    assert (True, "training tasks use 2 thread(s) for torch and BLAS") in configured.describe(
        support
    )
    overridden = ContainmentSettings.resolve({"containment": {"threads": 2}}, threads=1)
    assert overridden.worker_limits(support).threads == 1
    for bad in (-1, 1.5, "4", True):
        with pytest.raises(ConfigurationError, match="threads must be a whole number"):
            ContainmentSettings.resolve({"containment": {"threads": bad}})
