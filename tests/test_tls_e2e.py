"""Transport security end to end: a real researcher (this process) and real node processes.

Mutual TLS with certificates from `common.tls.init_certs`, node authentication by the
certificate's node id and the researcher's allowlist, and `--insecure` only when both
sides ask for it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from common.constants import PROTOCOL_VERSION
from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc
from common.tls import NodeCertPaths, init_certs, node_channel_credentials
from node.daemon import EXIT_REFUSED
from researcher.federated_workflows import Experiment
from researcher.server import get_server
from researcher.strategies.default_strategy import DefaultStrategy
from tests.conftest import (
    ROOT,
    NodeProcess,
    TlsResearcher,
    fedloom_cmd,
    free_port,
    tls_args,
    wait_for_nodes,
    write_tabular_csv,
)
from tests.plans.tabular import LogisticPlan, make_logistic_data

pytestmark = pytest.mark.slow

#: Seconds a refused node gets to exit: it stops at the researcher's first answer.
REFUSED_EXIT_TIMEOUT = 60.0

#: Seconds a raw gRPC call waits for the researcher's answer on loopback.
RPC_TIMEOUT = 10.0

# What the node logs for each failure (node/daemon.py), so a test fails if the log goes vague.
UNTRUSTED_RESEARCHER = "this node does not trust the researcher's certificate"
CERT_REJECTED = "does not accept this node's certificate"
RESEARCHER_NEEDS_TLS = "it most likely requires TLS"
RESEARCHER_WITHOUT_TLS = "the researcher does not speak TLS"


def _foreign_node_certs(tmp_path: Path, node_id: str) -> NodeCertPaths:
    """Certificates for `node_id` from a CA the researcher has never seen."""
    return init_certs(tmp_path / "foreign-pki", ["127.0.0.1", "localhost"], [node_id]).node(node_id)


def _assert_never_connected(node: NodeProcess, expected_log: str) -> None:
    """The node explained `expected_log` (so it did try) and the researcher lists nobody."""
    assert node.wait_for_log(expected_log), node.log()
    assert get_server().directory.connected() == []
    assert node.proc.poll() is None, "a TLS failure is retried, not fatal: " + node.log()


def test_a_full_round_runs_over_mutual_tls(tmp_path, tls_researcher: TlsResearcher, start_node):
    certs = tls_researcher.certs
    for seed, node_id in enumerate(("node-1", "node-2")):
        x, y = make_logistic_data(seed=seed, n=80)
        csv = write_tabular_csv(tmp_path / f"{node_id}.csv", x, y)
        start_node(
            node_id,
            datasets=[("tab", ["#tab"], csv, "y")],
            approve=[LogisticPlan],
            node_id=node_id,
            insecure=False,
            extra_args=tls_args(certs.node(node_id)),
        )
    wait_for_nodes(2)
    assert {n.node_id for n in get_server().directory.connected()} == {"node-1", "node-2"}

    exp = Experiment(
        tags=["#tab"],
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 2, "batch_size": 1000},
        round_limit=1,
        node_selection_strategy=DefaultStrategy(min_nodes=2),
    )
    assert exp.run() == 1
    assert set(exp.training_replies()[1]) == {"node-1", "node-2"}


def test_node_certificate_from_another_ca_is_refused(
    tmp_path, tls_researcher: TlsResearcher, start_node
):
    get_server()
    foreign = _foreign_node_certs(tmp_path, "node-1")
    trusted_ca = tls_researcher.certs.node("node-1").ca
    node = start_node(
        "node-1",
        node_id="node-1",
        insecure=False,
        extra_args=[
            "--ca",
            str(trusted_ca),
            "--cert",
            str(foreign.cert),
            "--key",
            str(foreign.key),
        ],
    )
    _assert_never_connected(node, CERT_REJECTED)


def test_researcher_certificate_from_another_ca_is_refused_by_the_node(
    tmp_path, tls_researcher: TlsResearcher, start_node
):
    get_server()
    own = tls_researcher.certs.node("node-1")
    foreign_ca = _foreign_node_certs(tmp_path, "node-1").ca
    node = start_node(
        "node-1",
        node_id="node-1",
        insecure=False,
        extra_args=["--ca", str(foreign_ca), "--cert", str(own.cert), "--key", str(own.key)],
    )
    _assert_never_connected(node, UNTRUSTED_RESEARCHER)
    assert "CERTIFICATE_VERIFY_FAILED" in node.log()


def test_node_off_the_allowlist_is_refused_with_the_reason_on_both_sides(
    tls_researcher: TlsResearcher, start_node, caplog
):
    (tls_researcher.certs.root / "allowed_nodes.txt").write_text("node-1\nnode-2\n")
    get_server()
    node = start_node(
        "node-3",
        node_id="node-3",
        insecure=False,
        extra_args=tls_args(tls_researcher.certs.node("node-3")),
    )
    assert node.proc.wait(timeout=REFUSED_EXIT_TIMEOUT) == EXIT_REFUSED, node.log()
    assert "refused this node: node 'node-3' is not on the researcher's allowlist" in node.log()
    assert get_server().directory.connected() == []
    refusals = [r.getMessage() for r in caplog.records if r.name == "researcher.auth"]
    assert any("'node-3' is not on the researcher's allowlist" in m for m in refusals), refusals


def test_node_cli_refuses_to_start_with_another_nodes_certificate(
    tmp_path, tls_researcher: TlsResearcher
):
    home = tmp_path / "impostor"
    subprocess.run(
        fedloom_cmd("node", "--home", str(home), "init", "--node-id", "node-2"),
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    result = subprocess.run(
        fedloom_cmd(
            "node",
            "--home",
            str(home),
            "start",
            "--researcher",
            tls_researcher.address,
            *tls_args(tls_researcher.certs.node("node-1")),
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=REFUSED_EXIT_TIMEOUT,
    )
    assert result.returncode == 2, result.stderr
    assert "issued to node 'node-1'" in result.stderr
    assert "this home is node 'node-2'" in result.stderr


def test_hello_claiming_another_node_id_is_permission_denied_naming_both(
    tls_researcher: TlsResearcher,
):
    get_server()
    own = tls_researcher.certs.node("node-1")
    credentials = node_channel_credentials(own.ca, own.cert, own.key)
    hello = pb.NodeMessage(
        protocol_version=PROTOCOL_VERSION,
        node_id="node-2",
        hello=pb.Hello(node_id="node-2", node_name="impostor"),
    )
    with grpc.secure_channel(tls_researcher.address, credentials) as channel:
        responses = pb_grpc.FederationStub(channel).Connect(iter([hello]), timeout=RPC_TIMEOUT)
        with pytest.raises(grpc.RpcError) as info:
            next(responses)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = info.value.details()
    assert "'node-2'" in details and "'node-1'" in details, details
    assert get_server().directory.connected() == []


def test_insecure_node_cannot_reach_a_tls_researcher(tls_researcher: TlsResearcher, start_node):
    get_server()
    node = start_node("node-1", node_id="node-1")
    _assert_never_connected(node, RESEARCHER_NEEDS_TLS)


def test_tls_node_cannot_reach_an_insecure_researcher(tmp_path, researcher_address, start_node):
    get_server()
    certs = init_certs(tmp_path / "pki", ["127.0.0.1", "localhost"], ["node-1"])
    node = start_node(
        "node-1", node_id="node-1", insecure=False, extra_args=tls_args(certs.node("node-1"))
    )
    _assert_never_connected(node, RESEARCHER_WITHOUT_TLS)


def test_insecure_node_reaches_an_insecure_researcher(researcher_address, start_node):
    start_node("node-1", node_id="node-1")
    wait_for_nodes(1)
    assert [n.node_id for n in get_server().directory.connected()] == ["node-1"]


def test_insecure_mode_applies_the_allowlist_too(tmp_path, researcher_address, start_node):
    from researcher.run_options import RunOptions, use_run_options

    certs = tmp_path / "insecure-certs"
    certs.mkdir()
    (certs / "allowed_nodes.txt").write_text("node-1\n")
    options = RunOptions(
        address=researcher_address, out_dir=tmp_path / "runs", cert_dir=certs, insecure=True
    )
    with use_run_options(options):
        get_server()

        outsider = start_node("node-3", node_id="node-3")
        allowed = start_node("node-1", node_id="node-1")

        assert outsider.proc.wait(timeout=REFUSED_EXIT_TIMEOUT) == EXIT_REFUSED, outsider.log()
        assert "node 'node-3' is not on the researcher's allowlist" in outsider.log()
        wait_for_nodes(1)
        assert [n.node_id for n in get_server().directory.connected()] == ["node-1"]
        assert allowed.proc.poll() is None


def test_a_researcher_that_is_down_is_not_blamed_on_tls(tls_researcher: TlsResearcher, start_node):
    nobody = f"127.0.0.1:{free_port()}"
    node = start_node(
        "node-1",
        node_id="node-1",
        insecure=False,
        address=nobody,
        extra_args=tls_args(tls_researcher.certs.node("node-1")),
    )
    assert node.wait_for_log(f"researcher at {nobody} is unreachable"), node.log()
    assert "cannot connect to the researcher" not in node.log()
