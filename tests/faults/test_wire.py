"""Hostile wire input against a real researcher server: silent streams, garbage, wrong
versions, unexpected, oversized, lying and overflowing uploads, spoofed ids.

Each test names the outcome (the status and reason the peer gets), checks that honest
traffic is still served, and that the researcher's threads and memory return to baseline.
The TLS side of claimed ids (a certificate for one node claiming another) is in
tests/test_tls_e2e.py; the plans that misbehave inside a node are in the node's
containment tests.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import grpc
import pytest

from common.constants import PROTOCOL_VERSION
from common.proto import fedloom_pb2 as pb
from tests.faults.conftest import RSS_SLACK_BYTES, Baseline
from tests.faults.wire import WireNode, hello, manifest_only, payload_chunks, upload

pytestmark = pytest.mark.faults


def _welcomed(address: str, node_id: str) -> WireNode:
    node = WireNode(address, hello(node_id))
    assert node.next().WhichOneof("body") == "welcome"
    return node


def _silent(address: str, release: threading.Event) -> WireNode:
    return WireNode(address, None, _wait_for(release))


def _wait_for(release: threading.Event):  # type: ignore[no-untyped-def]
    release.wait()
    return
    yield  # a generator that sends nothing until released


def _code(call: WireNode) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call.next()
    return info.value.code(), info.value.details()


def test_streams_that_never_say_hello_are_capped_per_host_and_closed_at_the_deadline(
    make_server, researcher_address
):
    server = make_server(hello_timeout=1.5, max_pending_streams_per_host=4)
    _welcomed(researcher_address, "warm-up").close()
    baseline = Baseline.now()
    release = threading.Event()
    try:
        silent = [_silent(researcher_address, release) for _ in range(4)]
        # The streams start asynchronously: wait until the server holds all four (a fixed
        # pause lost that race on a loaded CI machine), well within their 1.5 s deadline.
        admitted = time.monotonic() + 1.0
        while server.servicer.waiting_for_hello < 4 and time.monotonic() < admitted:
            time.sleep(0.01)
        assert server.servicer.waiting_for_hello == 4
        code, details = _code(_silent(researcher_address, release))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already waiting to say Hello" in details
        for stream in silent:
            code, details = _code(stream)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no Hello within 1.5 s" in details
        honest = _welcomed(researcher_address, "honest")
        assert [n.node_id for n in server.directory.connected()] == ["honest"]
        honest.close()
    finally:
        release.set()
    _settled(server, baseline)


def test_garbage_and_wrong_versions_are_refused_and_honest_nodes_still_served(
    make_server, researcher_address
):
    server = make_server()
    _welcomed(researcher_address, "warm-up").close()
    baseline = Baseline.now()
    host, port = researcher_address.rsplit(":", 1)
    for junk in (
        os.urandom(4096),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096),  # HTTP/2 preface, then noise
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass

    old = WireNode(researcher_address, hello("old", version=PROTOCOL_VERSION + 98))
    refusal = old.next()
    assert refusal.WhichOneof("body") == "refusal"
    assert f"protocol version {PROTOCOL_VERSION + 98} is not supported" in refusal.refusal.reason
    old.close()

    two_ids = hello("alice")
    two_ids.node_id = "mallory"
    spoof = WireNode(researcher_address, two_ids)
    assert "the same in the envelope and the body" in spoof.next().refusal.reason
    spoof.close()

    first_not_hello = WireNode(
        researcher_address,
        pb.NodeMessage(protocol_version=PROTOCOL_VERSION, node_id="x", heartbeat=pb.Heartbeat()),
    )
    assert "must be Hello" in first_not_hello.next().refusal.reason
    first_not_hello.close()

    node = _welcomed(researcher_address, "honest")
    with pytest.raises(grpc.RpcError) as info:
        list(node.stub.Download(pb.DownloadRequest(protocol_version=7, node_id="honest")))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Mid-stream, a message in another version ends the node's session with the reason.
    node.send(pb.NodeMessage(protocol_version=9, node_id="honest", heartbeat=pb.Heartbeat()))
    _wait(lambda: server.directory.get("honest") is None)
    node.close()
    again = _welcomed(researcher_address, "honest")
    assert server.directory.get("honest") is not None
    again.close()
    _settled(server, baseline)


def test_an_upload_is_accepted_only_when_expected_and_within_its_size(
    make_server, researcher_address
):
    server = make_server()
    store = server.payloads
    node = _welcomed(researcher_address, "n1")
    baseline = Baseline.now()

    def refused(node_id: str | None, chunks) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.RpcError) as info:
            upload(node.stub, node_id, chunks)
        return info.value.code(), info.value.details()

    code, details = refused("n1", payload_chunks("reply-t1", 1024))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no pending task" in details

    store.expect("n1", "reply-t1", 64 << 10)
    code, details = refused("n1", manifest_only("reply-t1", 1 << 30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "declares 1073741824 bytes, more than the 65536" in details

    overflow = payload_chunks("reply-t1", 1024)
    overflow[0].manifest.total_bytes = 512  # the manifest lies low: data overflows it
    overflow[0].manifest.arrays[0].nbytes = 512
    code, details = refused("n1", overflow)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "overflows its manifest" in details

    gap = payload_chunks("reply-t1", 1024)
    gap[0].offset = 8
    code, details = refused("n1", gap)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expected 0" in details

    truncated = payload_chunks("reply-t1", 1024)
    truncated[0].data = truncated[0].data[:100]
    code, details = refused("n1", truncated)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in details

    code, details = refused(None, payload_chunks("reply-t1", 1024))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, details = refused("n2", payload_chunks("reply-t1", 1024))
    assert code == grpc.StatusCode.UNAVAILABLE and "no open control stream" in details
    _wait(lambda: store.bytes_in_flight == 0 and store.held_uploads() == [])

    ack = upload(node.stub, "n1", payload_chunks("reply-t1", 1024))
    assert ack.received_bytes == 1024
    assert store.held_uploads() == [("n1", "reply-t1")] and store.bytes_in_flight == 1024

    store.forget("n1", "reply-t1")  # the task ended without taking it: freed at once
    assert store.held_uploads() == [] and store.bytes_in_flight == 0
    code, details = refused("n1", payload_chunks("reply-t1", 1024))  # the late upload
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no pending task" in details
    node.close()
    baseline.assert_back()


def test_manifests_that_announce_gigabytes_commit_no_memory(make_server, researcher_address):
    server = make_server(upload_chunk_timeout=3.0, max_uploads_per_node=4)
    node = _welcomed(researcher_address, "n1")
    baseline = Baseline.now()
    hold = threading.Event()
    results: list[grpc.StatusCode] = []

    def lying(i: int) -> None:
        server.payloads.expect("n1", f"reply-{i}", 2 << 30)
        try:
            upload(node.stub, "n1", manifest_only(f"reply-{i}", 1 << 30, hold))
        except grpc.RpcError as exc:
            results.append(exc.code())

    threads = [threading.Thread(target=lying, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # the three manifests (3 GiB announced) are in
    assert Baseline.now().rss < baseline.rss + RSS_SLACK_BYTES
    assert server.payloads.bytes_in_flight == 0
    for thread in threads:
        thread.join(timeout=30)
    hold.set()
    assert results == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3  # stalled: dropped
    node.close()
    baseline.assert_back()


def test_the_upload_budget_bounds_bytes_in_flight(make_server, researcher_address):
    server = make_server(max_upload_bytes_in_flight=3 << 20)
    store = server.payloads
    n1, n2 = _welcomed(researcher_address, "n1"), _welcomed(researcher_address, "n2")
    baseline = Baseline.now()
    store.expect("n1", "reply-a", 4 << 20)
    store.expect("n2", "reply-b", 4 << 20)
    upload(n1.stub, "n1", payload_chunks("reply-a", 2 << 20))
    with pytest.raises(grpc.RpcError) as info:
        upload(n2.stub, "n2", payload_chunks("reply-b", 2 << 20))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget 3145728" in info.value.details()
    # The refused upload's partial bytes are released (as its handler unwinds, just after
    # the status reached the node).
    _wait(lambda: store.bytes_in_flight == 2 << 20)
    store.take_upload("n1", "reply-a")
    upload(n2.stub, "n2", payload_chunks("reply-b", 2 << 20))  # the retry now fits
    store.forget("n1", "reply-a")
    store.forget("n2", "reply-b")
    assert store.bytes_in_flight == 0
    n1.close()
    n2.close()
    baseline.assert_back()


def _settled(server, baseline: Baseline) -> None:  # type: ignore[no-untyped-def]
    """Every stream closed, and the researcher's threads and memory back to `baseline`."""
    _wait(lambda: server.servicer.open_streams == 0)
    baseline.assert_back()


def _wait(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
