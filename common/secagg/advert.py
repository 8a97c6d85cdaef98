"""Node statements signed with TLS client certificates: round-key adverts, survivor sets.

A node signs ``(session id, node id, cipher public key, mask public key, threshold, roster)``,
and later the session's survivor set, with the private key of the client certificate the federation's CA
issued to it. A peer accepts a statement only if the certificate was issued directly by that
CA, is valid now, names the node id in question (SAN URI or CN, as
:func:`common.tls.node_id_from_certificate` reads it) and the signature verifies. A researcher
relaying them can then neither substitute keys, invent participants, nor show nodes different
survivor sets: it holds no node's certificate key.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)

from common.errors import ConfigurationError, SecaggError
from common.proto import fedloom_pb2 as pb
from common.secagg.kdf import length_prefixed
from common.tls import node_id_from_certificate

__all__ = [
    "NodeIdentity",
    "advert_message",
    "survivors_message",
    "verify_advert",
    "verify_survivor_signature",
]

_LABEL = b"fedloom/secagg/key-advert/v1"
_SURVIVORS_LABEL = b"fedloom/secagg/survivors/v1"


def advert_message(advert: pb.SecaggKeyAdvert) -> bytes:
    """The bytes a node signs: label, then session, node id, both keys, threshold and the
    sorted roster, length-prefixed."""
    return _LABEL + b"".join(
        length_prefixed(field)
        for field in (
            advert.session_id.encode(),
            advert.node_id.encode(),
            bytes(advert.cipher_public_key),
            bytes(advert.mask_public_key),
            str(advert.threshold).encode(),
            *(node.encode() for node in sorted(advert.participants)),
        )
    )


def survivors_message(session_id: str, survivors: list[str]) -> bytes:
    """The bytes a survivor signs in the consistency check: session, then sorted node ids."""
    return _SURVIVORS_LABEL + b"".join(
        length_prefixed(field.encode()) for field in (session_id, *sorted(survivors))
    )


@dataclass(frozen=True)
class NodeIdentity:
    """A node's TLS client certificate and key, and the CA certificates it trusts for peers."""

    node_id: str
    certificate_pem: bytes
    private_key: PrivateKeyTypes
    ca_certificates: tuple[x509.Certificate, ...]

    @classmethod
    def load(cls, *, ca: Path, cert: Path, key: Path) -> NodeIdentity:
        """Read the files a node starts with (``--ca --cert --key``)."""
        try:
            certificate_pem = Path(cert).read_bytes()
            private_key = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
            cas = tuple(x509.load_pem_x509_certificates(Path(ca).read_bytes()))
            node_id = node_id_from_certificate(x509.load_pem_x509_certificate(certificate_pem))
        except (OSError, ValueError, TypeError) as err:
            raise ConfigurationError(
                f"cannot load the node's TLS identity for SecAgg signatures ({err}): pass the "
                "--ca/--cert/--key files `fedloom certs` issued for this node."
            ) from err
        if node_id is None:
            raise ConfigurationError(f"{cert} names no node id; reissue it with `fedloom certs`.")
        return cls(node_id, certificate_pem, private_key, cas)

    def sign(self, advert: pb.SecaggKeyAdvert) -> None:
        """Fill the advert's certificate and signature fields."""
        if advert.node_id != self.node_id:
            raise SecaggError(
                f"refusing to sign round keys for node {advert.node_id!r} with the certificate "
                f"of node {self.node_id!r}."
            )
        advert.certificate = self.certificate_pem
        advert.signature = self.sign_bytes(advert_message(advert))

    def sign_survivors(self, session_id: str, survivors: list[str]) -> pb.SecaggSurvivorSignature:
        """This node's signature over a session's survivor set."""
        return pb.SecaggSurvivorSignature(
            node_id=self.node_id,
            certificate=self.certificate_pem,
            signature=self.sign_bytes(survivors_message(session_id, survivors)),
        )

    def sign_bytes(self, message: bytes) -> bytes:
        """Sign ``message`` with the certificate's private key (ECDSA, RSA-PSS or EdDSA)."""
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(message, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(message, _pss(), hashes.SHA256())
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            return key.sign(message)
        raise ConfigurationError(
            f"SecAgg cannot sign with a {type(key).__name__} certificate key: use an EC, "
            "RSA or EdDSA key (`fedloom certs` issues P-256)."
        )


def verify_advert(
    advert: pb.SecaggKeyAdvert,
    ca_certificates: tuple[x509.Certificate, ...],
    *,
    now: datetime.datetime | None = None,
) -> None:
    """Raise SecaggError naming the node unless its advert is signed by a certificate the
    federation CA issued to that very node id."""
    _verify_statement(
        f"the round keys advertised for node {advert.node_id!r}",
        advert.node_id,
        bytes(advert.certificate),
        bytes(advert.signature),
        advert_message(advert),
        ca_certificates,
        now,
    )


def verify_survivor_signature(
    signature: pb.SecaggSurvivorSignature,
    session_id: str,
    survivors: list[str],
    ca_certificates: tuple[x509.Certificate, ...],
) -> None:
    """Raise SecaggError unless ``signature`` is its node's signature over ``survivors``."""
    _verify_statement(
        f"the survivor set signed for node {signature.node_id!r}",
        signature.node_id,
        bytes(signature.certificate),
        bytes(signature.signature),
        survivors_message(session_id, survivors),
        ca_certificates,
        None,
    )


def _verify_statement(
    who: str,
    node_id: str,
    certificate: bytes,
    signature: bytes,
    message: bytes,
    ca_certificates: tuple[x509.Certificate, ...],
    now: datetime.datetime | None,
) -> None:
    if not certificate or not signature:
        raise SecaggError(
            f"{who} are unsigned: a researcher may have substituted them. Refusing the round "
            "(every node must run with TLS certificates, or all with --insecure)."
        )
    try:
        cert = x509.load_pem_x509_certificate(certificate)
    except ValueError as err:
        raise SecaggError(f"{who} carry an unreadable certificate ({err}).") from err
    if not any(_issued_by(cert, ca) for ca in ca_certificates):
        raise SecaggError(
            f"{who} are signed by a certificate the federation CA did not issue: an invented "
            "participant or substituted keys. Refusing the round."
        )
    moment = now or datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise SecaggError(f"{who} are signed by a certificate that is not valid now.")
    try:
        named = node_id_from_certificate(cert)
    except ConfigurationError as err:
        raise SecaggError(f"{who}: {err}") from err
    if named != node_id:
        raise SecaggError(
            f"{who} are signed by the certificate of node {named!r}: one node posing as "
            "another. Refusing the round."
        )
    try:
        _verify_signature(cert.public_key(), signature, message)
    except InvalidSignature as err:
        raise SecaggError(
            f"{who} do not match their signature: they were altered in transit. Refusing the round."
        ) from err


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _verify_signature(
    key: CertificateIssuerPublicKeyTypes | object, sig: bytes, msg: bytes
) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(sig, msg, _pss(), hashes.SHA256())
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(sig, msg)
    else:
        raise InvalidSignature(f"unsupported certificate key type {type(key).__name__}")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
