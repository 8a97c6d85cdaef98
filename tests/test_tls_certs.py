"""Certificates from common.tls, and node authentication over a real mTLS gRPC server."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigurationError
from common.payload import encode_arrays
from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc
from common.tls import (
    CertDirectory,
    add_node_cert,
    init_certs,
    node_channel_credentials,
    read_node_id,
    server_credentials,
)
from researcher.auth import (
    ALLOWLIST_FILE,
    NODE_ID_METADATA,
    NodeAuthenticator,
    load_allowlist,
    make_authenticator,
)
from researcher.server import ResearcherServer

NODES = ["node-a", "node-b"]
RPC_TIMEOUT = 10.0  # seconds; loopback calls take milliseconds, this only bounds a hang


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertDirectory:
    return init_certs(
        tmp_path_factory.mktemp("certs") / "pki", ["localhost", "127.0.0.1", "researcher"], NODES
    )


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> CertDirectory:
    """Another deployment's CA, issuing a certificate for the same node id."""
    return init_certs(tmp_path_factory.mktemp("foreign") / "pki", ["localhost"], ["node-a"])


# ------------------------------------------------------------- certificates


def test_every_certificate_chains_to_the_ca(certs: CertDirectory) -> None:
    ca = _cert(certs.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for path in [certs.server_cert, *(certs.node(n).cert for n in NODES)]:
        _cert(path).verify_directly_issued_by(ca)


def test_foreign_ca_certificate_does_not_chain(
    certs: CertDirectory, foreign_certs: CertDirectory
) -> None:
    # Both CAs are named "fedloom CA": only the signature tells them apart.
    with pytest.raises(InvalidSignature):
        _cert(foreign_certs.node("node-a").cert).verify_directly_issued_by(_cert(certs.ca_cert))


def test_researcher_certificate_names_hosts_as_dns_and_ip_sans(certs: CertDirectory) -> None:
    cert = _cert(certs.server_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "researcher"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_node_certificate_carries_node_id_in_cn_and_san_uri(certs: CertDirectory) -> None:
    cert = _cert(certs.node("node-b").cert)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cn == "node-b"
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["fedloom://node/node-b"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert read_node_id(certs.node("node-b").cert) == "node-b"


def test_private_keys_are_owner_only_and_folders_private(certs: CertDirectory) -> None:
    keys = [certs.ca_key, certs.server_key, *(certs.node(n).key for n in NODES)]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    folders = [certs.root, certs.root / "nodes", *(certs.node(n).cert.parent for n in NODES)]
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_each_node_folder_holds_the_ca_it_trusts(certs: CertDirectory) -> None:
    for node_id in NODES:
        assert certs.node(node_id).ca.read_bytes() == certs.ca_cert.read_bytes()


def test_add_node_issues_with_the_same_ca_and_leaves_others_untouched(tmp_path: Path) -> None:
    pki = init_certs(tmp_path / "pki", ["localhost"], ["node-a"])
    before = {p: p.read_bytes() for p in pki.root.rglob("*") if p.is_file()}
    paths = add_node_cert(pki.root, "node-c")
    assert all(p.read_bytes() == data for p, data in before.items())
    _cert(paths.cert).verify_directly_issued_by(_cert(pki.ca_cert))
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert pki.node_ids() == ["node-a", "node-c"]


def test_add_node_refuses_to_replace_an_existing_certificate(tmp_path: Path) -> None:
    pki = init_certs(tmp_path / "pki", ["localhost"], ["node-a"])
    with pytest.raises(ConfigurationError, match="already has a certificate"):
        add_node_cert(pki.root, "node-a")


def test_init_refuses_to_replace_an_existing_ca(certs: CertDirectory) -> None:
    with pytest.raises(ConfigurationError, match="add-node"):
        init_certs(certs.root, ["localhost"], ["node-z"])


def test_add_node_without_ca_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="certs init"):
        add_node_cert(tmp_path, "node-a")


@pytest.mark.parametrize("bad", ["", "../etc", "node a", "-lead", "x" * 65, "nodé"])
def test_node_ids_that_cannot_name_a_file_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid node id"):
        init_certs(tmp_path / "pki", ["localhost"], [bad])


def test_researcher_host_with_a_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="without port"):
        init_certs(tmp_path / "pki", ["researcher:50051"], [])


def test_key_of_another_certificate_is_refused_at_load(certs: CertDirectory) -> None:
    node = certs.node("node-a")
    with pytest.raises(ConfigurationError, match="is not the private key"):
        node_channel_credentials(node.ca, node.cert, certs.node("node-b").key)


def test_missing_server_files_name_the_command_that_makes_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="fedloom certs init"):
        server_credentials(tmp_path)


def test_allowlist_file_ignores_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "allowed"
    path.write_text("# hospitals\nnode-a\n\n  node-b  # lab\n")
    assert load_allowlist(path) == frozenset({"node-a", "node-b"})


# ------------------------------------------------- the researcher's server with mTLS


@dataclass
class Researcher:
    server: ResearcherServer
    certs: CertDirectory

    @property
    def port(self) -> int:
        return self.server.port

    def channel(self, node_id: str | None, *, pki: CertDirectory | None = None) -> grpc.Channel:
        """A node's mTLS channel presenting ``node_id``'s certificate from ``pki``."""
        pki = pki or self.certs
        if node_id is None:
            creds = node_channel_credentials(pki.ca_cert)
        else:
            node = pki.node(node_id)
            creds = node_channel_credentials(self.certs.ca_cert, node.cert, node.key)
        return grpc.secure_channel(f"localhost:{self.port}", creds)


@contextmanager
def _serve(
    policy: NodeAuthenticator, credentials: grpc.ServerCredentials | None
) -> Iterator[ResearcherServer]:
    """The researcher's real server on loopback, checking nodes with ``policy`` (the one way
    the server authenticates: the servicer's check, see researcher/auth.py)."""

    def authenticate(context: grpc.ServicerContext, claimed: str) -> str | None:
        policy.node_id(context, claimed)
        return None

    server = ResearcherServer("127.0.0.1:0", credentials=credentials, authenticate=authenticate)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)


@pytest.fixture(scope="module")
def researcher(certs: CertDirectory) -> Iterator[Researcher]:
    with _serve(NodeAuthenticator(allowed_node_ids=None), server_credentials(certs.root)) as server:
        yield Researcher(server, certs)


def _hello(channel: grpc.Channel, claimed: str) -> pb.ResearcherMessage:
    stub = pb_grpc.FederationStub(channel)
    hello = pb.NodeMessage(protocol_version=1, node_id=claimed, hello=pb.Hello(node_id=claimed))
    return next(stub.Connect(iter([hello]), timeout=RPC_TIMEOUT))


def test_node_with_its_own_certificate_is_welcomed_under_that_id(researcher: Researcher) -> None:
    with researcher.channel("node-a") as channel:
        reply = _hello(channel, "node-a")
    assert reply.welcome.researcher_id == researcher.server.researcher_id


def test_node_claiming_another_node_id_in_hello_is_permission_denied(
    researcher: Researcher,
) -> None:
    with researcher.channel("node-a") as channel, pytest.raises(grpc.RpcError) as err:
        _hello(channel, "node-b")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "issued to node 'node-a'" in err.value.details()


def test_download_for_another_node_id_is_permission_denied(researcher: Researcher) -> None:
    researcher.server.payloads.publish("p1", encode_arrays({"w": np.ones(3)}), ["node-a"])
    with researcher.channel("node-b") as channel, pytest.raises(grpc.RpcError) as err:
        stub = pb_grpc.FederationStub(channel)
        request = pb.DownloadRequest(protocol_version=1, node_id="node-a", payload_id="p1")
        list(stub.Download(request, timeout=RPC_TIMEOUT))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_download_with_own_id_succeeds(researcher: Researcher) -> None:
    researcher.server.payloads.publish("p2", encode_arrays({"w": np.ones(3)}), ["node-b"])
    with researcher.channel("node-b") as channel:
        stub = pb_grpc.FederationStub(channel)
        request = pb.DownloadRequest(protocol_version=1, node_id="node-b", payload_id="p2")
        chunks = list(stub.Download(request, timeout=RPC_TIMEOUT))
    assert sum(len(c.data) for c in chunks) == 3 * 8


def test_upload_naming_another_node_in_metadata_is_permission_denied(
    researcher: Researcher,
) -> None:
    with researcher.channel("node-b") as channel, pytest.raises(grpc.RpcError) as err:
        stub = pb_grpc.FederationStub(channel)
        stub.Upload(
            iter([pb.PayloadChunk(data=b"abc")]),
            metadata=[(NODE_ID_METADATA, "node-a")],
            timeout=RPC_TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_client_certificate_from_another_ca_is_refused(
    researcher: Researcher, foreign_certs: CertDirectory
) -> None:
    with researcher.channel("node-a", pki=foreign_certs) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _hello(channel, "node-a")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(researcher: Researcher) -> None:
    with researcher.channel(None) as channel, pytest.raises(grpc.RpcError) as err:
        _hello(channel, "node-a")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_insecure_channel_to_tls_server_fails(researcher: Researcher) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{researcher.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            _hello(channel, "node-a")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_node_off_the_allowlist_is_unauthenticated_with_reason(certs: CertDirectory) -> None:
    policy = NodeAuthenticator(allowed_node_ids=frozenset({"node-a"}))
    with _serve(policy, server_credentials(certs.root)) as server:
        researcher = Researcher(server, certs)
        with researcher.channel("node-a") as channel:
            assert _hello(channel, "node-a").HasField("welcome")
        with researcher.channel("node-b") as channel, pytest.raises(grpc.RpcError) as err:
            _hello(channel, "node-b")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not on the researcher's allowlist" in err.value.details()


def test_insecure_mode_trusts_the_claim_but_applies_the_allowlist() -> None:
    policy = NodeAuthenticator(allowed_node_ids=frozenset({"node-a"}), insecure=True)
    with _serve(policy, None) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert _hello(channel, "node-a").HasField("welcome")
            with pytest.raises(grpc.RpcError) as err:
                _hello(channel, "node-x")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_without_client_certificate_is_unauthenticated_with_reason(
    certs: CertDirectory,
) -> None:
    # A server that does not demand client certificates at the handshake still
    # refuses, at the RPC, a node that presented none.
    creds = server_credentials(certs.root, require_client_auth=False)
    with _serve(NodeAuthenticator(), creds) as server:
        with (
            Researcher(server, certs).channel(None) as channel,
            pytest.raises(grpc.RpcError) as err,
        ):
            _hello(channel, "node-a")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "--cert" in err.value.details()


class _FakeContext:
    """The two ServicerContext methods the authenticator reads, for a certificate on disk."""

    def __init__(self, cert: Path | None) -> None:
        self._auth = {"x509_pem_cert": [cert.read_bytes()]} if cert is not None else {}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1234"


def fake_context(cert: Path | None) -> grpc.ServicerContext:
    return cast(grpc.ServicerContext, _FakeContext(cert))


def test_authenticator_called_by_a_servicer_returns_the_refusal_reason(
    certs: CertDirectory,
) -> None:
    auth = make_authenticator(certs.root)
    context = fake_context(certs.node("node-a").cert)
    assert auth(context, "node-a") is None
    assert "issued to node 'node-a'" in (auth(context, "node-b") or "")
    assert "no client certificate" in (auth(fake_context(None), "node-a") or "")


def test_make_authenticator_reads_the_allowlist_beside_the_certificates(tmp_path: Path) -> None:
    pki = init_certs(tmp_path / "pki", ["localhost"], ["node-a", "node-b"])
    (pki.root / ALLOWLIST_FILE).write_text("node-a\n")
    auth = make_authenticator(pki.root)
    assert auth(fake_context(pki.node("node-a").cert), "node-a") is None
    reason = auth(fake_context(pki.node("node-b").cert), "node-b")
    assert reason is not None and "allowlist" in reason
