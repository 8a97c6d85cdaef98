"""Certificates for mutual TLS between the researcher and its nodes.

One private certificate authority signs a server certificate for the
researcher (its host names and IPs as SANs) and one client certificate per
node whose identity is the node id: subject CN ``<node_id>`` and SAN URI
``fedloom://node/<node_id>``. The researcher reads a node's id from the
certificate it presented, so a node cannot claim another's id.

Layout of a certificate directory (what ``fedloom certs init`` writes, and the
file names to use when bringing your own CA and certificates)::

    DIR/ca.pem                      CA certificate (public: every party needs it)
    DIR/ca.key                      CA private key (0600; only to issue certificates)
    DIR/researcher.pem              researcher server certificate (+ chain)
    DIR/researcher.key              its private key (0600)
    DIR/nodes/<node_id>/ca.pem      copy of the CA certificate, for that node
    DIR/nodes/<node_id>/node.pem    the node's client certificate
    DIR/nodes/<node_id>/node.key    its private key (0600)

``nodes/<node_id>/`` is everything one node needs: hand that folder to that
node alone (``fedloom node start --ca .../ca.pem --cert .../node.pem --key
.../node.key``); the researcher reads ``DIR`` (``fedloom researcher run ...
--certs DIR``), plus ``DIR/allowed_nodes.txt`` when present (see
:mod:`researcher.auth`). ``ca.key`` is not needed at run time: keep it offline.

Bring your own: put ``ca.pem`` (the CA, or a PEM bundle of CAs, that signed the
node certificates), ``researcher.pem`` (server certificate whose SANs name the
host nodes dial, followed by any intermediate) and ``researcher.key`` (PEM,
unencrypted) in a directory for the researcher; give each node the CA that
signed ``researcher.pem`` and its own certificate and key. A node certificate
must carry the node id as its subject CN or as a ``fedloom://node/<id>`` SAN
URI (the URI wins; when both are present they must agree), and the node must
use that id.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigurationError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "NODES_DIR",
    "NODE_CERT",
    "NODE_KEY",
    "NODE_URI_PREFIX",
    "SERVER_CERT",
    "SERVER_KEY",
    "CertDirectory",
    "NodeCertPaths",
    "add_node_cert",
    "init_certs",
    "node_channel_credentials",
    "node_id_from_certificate",
    "node_id_from_pem",
    "read_node_id",
    "server_credentials",
    "validate_node_id",
]

logger = logging.getLogger(__name__)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "researcher.pem"
SERVER_KEY = "researcher.key"
NODES_DIR = "nodes"
NODE_CERT = "node.pem"
NODE_KEY = "node.key"

#: SAN URI scheme naming a node: fedloom://node/<node_id>.
NODE_URI_PREFIX = "fedloom://node/"

#: Node ids become file names and URI paths: letters, digits, '.', '_', '-', at most
#: 64 characters (the X.509 upper bound for a CN), starting with a letter or digit.
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: The CA lives as long as a deployment is likely to (10 years); leaf certificates
#: are renewed more often: 825 days is the longest validity mainstream TLS clients
#: accept for a server certificate, and node certs follow the same rule.
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)

#: Backdate notBefore so a peer whose clock is a few minutes behind accepts a fresh cert.
CLOCK_SKEW = datetime.timedelta(minutes=5)

#: Warn when a certificate loaded at start-up expires within this delay.
EXPIRY_WARNING = datetime.timedelta(days=30)

#: P-256 ECDSA: supported by every gRPC TLS stack, fast to generate (a few ms per key,
#: so tests and `certs init` for many nodes stay instant), 128-bit security.
_CURVE = ec.SECP256R1

_CA_COMMON_NAME = "fedloom CA"
_SERVER_COMMON_NAME = "fedloom researcher"

#: Hosts the researcher certificate names when none are given: local runs and tests.
DEFAULT_RESEARCHER_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class NodeCertPaths:
    """The three files a node presents and trusts."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertDirectory:
    """Paths of a certificate directory laid out as described in this module's docstring."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY

    def node(self, node_id: str) -> NodeCertPaths:
        """Paths of one node's files (they may not exist yet)."""
        folder = self.root / NODES_DIR / validate_node_id(node_id)
        return NodeCertPaths(ca=folder / CA_CERT, cert=folder / NODE_CERT, key=folder / NODE_KEY)

    def node_ids(self) -> list[str]:
        """Ids of the nodes that have a certificate in this directory, sorted."""
        nodes = self.root / NODES_DIR
        if not nodes.is_dir():
            return []
        return sorted(p.name for p in nodes.iterdir() if (p / NODE_CERT).is_file())


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if it can name a certificate, else raise ConfigurationError."""
    if not _NODE_ID_RE.match(node_id):
        raise ConfigurationError(
            f"invalid node id {node_id!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return node_id


# ------------------------------------------------------------------ issuing


def init_certs(
    out_dir: str | os.PathLike[str],
    researcher_hosts: Sequence[str],
    node_ids: Sequence[str],
    *,
    force: bool = False,
) -> CertDirectory:
    """Create a CA, the researcher's server certificate and one client certificate per node.

    Refuses to overwrite an existing CA unless ``force`` (which reissues everything and
    invalidates certificates handed out before). Use :func:`add_node_cert` to add nodes.
    """
    certs = CertDirectory(Path(out_dir))
    hosts = list(dict.fromkeys(researcher_hosts)) or list(DEFAULT_RESEARCHER_HOSTS)
    ids = [validate_node_id(n) for n in node_ids]
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"node ids must be unique, got {ids}")
    if certs.ca_cert.exists() and not force:
        raise ConfigurationError(
            f"{certs.ca_cert} already exists: add nodes with `fedloom certs add-node --out "
            f"{certs.root} --node ID`, or pass --force to replace the CA and every certificate"
        )
    _make_private_dir(certs.root)
    if force:
        shutil.rmtree(certs.root / NODES_DIR, ignore_errors=True)

    ca_key = ec.generate_private_key(_CURVE())
    ca_cert = _issue_ca(ca_key)
    _write_key(certs.ca_key, ca_key)
    _write_public(certs.ca_cert, ca_cert)

    server_key = ec.generate_private_key(_CURVE())
    server_cert = _issue_leaf(
        ca_cert,
        ca_key,
        server_key.public_key(),
        common_name=_SERVER_COMMON_NAME,
        san=[_host_san(h) for h in hosts],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    _write_key(certs.server_key, server_key)
    _write_public(certs.server_cert, server_cert)
    logger.info("issued researcher certificate for %s", ", ".join(hosts))

    for node_id in ids:
        _issue_node(certs, ca_cert, ca_key, node_id)
    return certs


def add_node_cert(
    out_dir: str | os.PathLike[str], node_id: str, *, force: bool = False
) -> NodeCertPaths:
    """Issue a certificate for one more node with the existing CA; other certificates stay valid.

    Refuses to replace an existing certificate for ``node_id`` unless ``force``.
    """
    certs = CertDirectory(Path(out_dir))
    validate_node_id(node_id)
    if not certs.ca_key.is_file() or not certs.ca_cert.is_file():
        raise ConfigurationError(
            f"no CA in {certs.root} ({CA_CERT} and {CA_KEY} are needed to issue a node "
            f"certificate): run `fedloom certs init --out {certs.root} ...` first"
        )
    paths = certs.node(node_id)
    if paths.cert.exists() and not force:
        raise ConfigurationError(
            f"node {node_id!r} already has a certificate ({paths.cert}); pass --force to reissue it"
        )
    ca_cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(
            f"{certs.ca_key} is not an EC key: issue node certificates with your own tooling "
            "(see common/tls.py for the expected subject and SAN)"
        )
    return _issue_node(certs, ca_cert, ca_key, node_id)


def _issue_node(
    certs: CertDirectory,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    node_id: str,
) -> NodeCertPaths:
    key = ec.generate_private_key(_CURVE())
    cert = _issue_leaf(
        ca_cert,
        ca_key,
        key.public_key(),
        common_name=node_id,
        san=[x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_id)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    paths = certs.node(node_id)
    _make_private_dir(paths.cert.parent.parent)
    _make_private_dir(paths.cert.parent)
    _write_key(paths.key, key)
    _write_public(paths.cert, cert)
    _write_public(paths.ca, ca_cert)
    logger.info("issued certificate for node %s", node_id)
    return paths


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedloom"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _issue_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = _name(_CA_COMMON_NAME)
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public: ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    san: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> x509.Certificate:
    now = _now()
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _host_san(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS name SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/:@" for c in host):
        raise ConfigurationError(
            f"invalid researcher host {host!r}: give a DNS name or an IP address, without port"
        )
    return x509.DNSName(host)


# ---------------------------------------------------------- writing files


def _make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file created with ``mode``, then rename: never a partial
    file, and a private key is never readable by others, not even for an instant."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600)


def _write_public(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


# ------------------------------------------------------------------ loading


def _read(path: str | os.PathLike[str], what: str, fix: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} not found at {p}: {fix}") from None
    except PermissionError:
        raise ConfigurationError(
            f"{what} at {p} is not readable by this user: fix its owner or permissions"
        ) from None


def _check_pair(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> None:
    """Fail at start-up, with file names, rather than in a TLS handshake later."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ConfigurationError(f"{cert_path} is not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"{key_path} is not an unencrypted PEM private key ({exc}): "
            "decrypt it (e.g. `openssl pkey -in KEY -out KEY.plain`)"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise ConfigurationError(f"{key_path} is not the private key of {cert_path}")
    now = _now()
    if cert.not_valid_after_utc <= now:
        raise ConfigurationError(
            f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: issue a new one "
            "(`fedloom certs add-node --force` for a node, `fedloom certs init --force` for all)"
        )
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        logger.warning("%s expires on %s", cert_path, f"{cert.not_valid_after_utc:%Y-%m-%d}")


def server_credentials(
    cert_dir: str | os.PathLike[str], *, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """TLS credentials of the researcher's server from ``researcher.pem/.key`` and ``ca.pem``.

    With ``require_client_auth`` (the default) a node must present a certificate signed
    by ``ca.pem``; :mod:`researcher.auth` then reads its node id from it.
    """
    certs = CertDirectory(Path(cert_dir))
    fix = f"run `fedloom certs init --out {certs.root} ...` or put your own file there"
    ca_pem = _read(certs.ca_cert, "CA certificate", fix)
    cert_pem = _read(certs.server_cert, "researcher certificate", fix)
    key_pem = _read(certs.server_key, "researcher private key", fix)
    _check_pair(cert_pem, key_pem, certs.server_cert, certs.server_key)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca_pem,
        require_client_auth=require_client_auth,
    )


def node_channel_credentials(
    ca: str | os.PathLike[str],
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials of a node's channel: trust ``ca``, present ``cert``/``key`` (mTLS).

    Without ``cert`` and ``key`` the channel is server-authenticated only, which a
    researcher that requires client certificates refuses.
    """
    if (cert is None) != (key is None):
        raise ConfigurationError("give both a node certificate (--cert) and its key (--key)")
    fix = "pass the files `fedloom certs init` wrote under nodes/<node_id>/, or your own"
    ca_pem = _read(ca, "CA certificate", fix)
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    cert_pem = _read(cert, "node certificate", fix)
    key_pem = _read(key, "node private key", fix)
    _check_pair(cert_pem, key_pem, Path(cert), Path(key))
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


# ------------------------------------------------------------ identities


def node_id_from_certificate(cert: x509.Certificate) -> str | None:
    """The node id a certificate names: its ``fedloom://node/`` SAN URI, else its subject CN.

    Raises ConfigurationError when both are present and disagree, or the id is malformed.
    """
    uri_ids = _uri_node_ids(cert)
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(uri_ids) > 1:
        raise ConfigurationError(f"certificate names several nodes: {uri_ids}")
    if uri_ids:
        node_id = uri_ids[0]
        if cns and cns[0] != node_id:
            raise ConfigurationError(
                f"certificate SAN names node {node_id!r} but its CN is {cns[0]!r}"
            )
        return validate_node_id(node_id)
    if cns:
        return validate_node_id(cns[0])
    return None


def _uri_node_ids(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    uris: Iterable[str] = san.get_values_for_type(x509.UniformResourceIdentifier)
    return [u[len(NODE_URI_PREFIX) :] for u in uris if u.startswith(NODE_URI_PREFIX)]


def node_id_from_pem(pem: bytes) -> str | None:
    """:func:`node_id_from_certificate` of the first certificate of a PEM blob."""
    return node_id_from_certificate(x509.load_pem_x509_certificate(pem))


def read_node_id(cert_path: str | os.PathLike[str]) -> str:
    """The node id in a node's certificate file; a node started with ``--cert`` uses it."""
    pem = _read(cert_path, "node certificate", "pass the certificate issued for this node")
    try:
        node_id = node_id_from_pem(pem)
    except ValueError as exc:
        raise ConfigurationError(
            f"{cert_path} is not a PEM certificate ({exc}): pass the node.pem issued by `fedloom certs`"
        ) from exc
    if node_id is None:
        raise ConfigurationError(
            f"{cert_path} names no node: it needs a {NODE_URI_PREFIX}<id> SAN URI or a CN"
        )
    return node_id
