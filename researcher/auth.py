"""Node authentication on the researcher's gRPC server.

With mutual TLS a node's id is the one in the client certificate it presented
(see :mod:`common.tls`). A node without a usable certificate, or whose id is
not on the optional allowlist, is refused with ``UNAUTHENTICATED``; a request
claiming another ``node_id`` (in ``NodeMessage``, its ``Hello``, a
``DownloadRequest`` or the ``fedloom-node-id`` metadata) is refused with
``PERMISSION_DENIED``. Every refusal carries a reason the node can log.

One way to plug it in: the servicer's check (researcher/servicer.py calls it on
every Hello, Download and Upload; a stream is bound to the node of its Hello).
:class:`NodeAuthenticator` (built by :func:`make_authenticator`) is the policy:
``auth(context, claimed_node_id)`` returns ``None`` when the caller may act as
``claimed_node_id`` and the refusal reason otherwise; ``auth.node_id(context,
claimed)`` aborts the RPC itself, with the status codes above, and returns the
caller's id. :func:`servicer_check` wraps it for the server.

Allowlist: a text file of node ids, one per line (``#`` comments allowed),
given explicitly or found as ``allowed_nodes.txt`` in the certificate directory.
It applies in both modes: :func:`servicer_check` is what the researcher's server
uses, with TLS or without.

Insecure mode (plain-text channel, only when both sides ask for it with
``--insecure``): nothing proves identity, the claimed ``node_id`` is taken as
is, and the allowlist still applies to it (an ``allowed_nodes.txt`` in the
certificate directory given with ``--insecure``): a node not on it is refused
with ``UNAUTHENTICATED`` as under TLS. Since any peer can claim any id there,
the allowlist then guards against mistakes (a node of another federation), not
against an attacker. It is logged as a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc
from cryptography import x509

from common.errors import AuthenticationError, ConfigurationError
from common.tls import node_id_from_certificate, validate_node_id

__all__ = [
    "ALLOWLIST_FILE",
    "NODE_ID_METADATA",
    "NodeAuthenticator",
    "Refusal",
    "authenticated_node_id",
    "check_claimed_node_id",
    "load_allowlist",
    "make_authenticator",
    "servicer_check",
]

logger = logging.getLogger(__name__)

#: Allowlist file looked for in the certificate directory when none is given.
ALLOWLIST_FILE = "allowed_nodes.txt"

#: Call metadata in which a node names itself on RPCs whose messages carry no node_id (Upload).
NODE_ID_METADATA = "fedloom-node-id"

#: Key of grpc's auth context holding the peer's PEM certificate (set by the TLS handshake).
_PEM_CERT_KEY = "x509_pem_cert"


@dataclass(frozen=True)
class Refusal:
    """Why a caller is refused, and the gRPC status that says so."""

    code: grpc.StatusCode
    reason: str


def load_allowlist(path: str | os.PathLike[str]) -> frozenset[str]:
    """Node ids allowed to connect: one per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigurationError(
            f"node allowlist {p} not found: create it with one node id per line"
        ) from None
    ids: set[str] = set()
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            ids.add(validate_node_id(entry))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{p}:{number}: {exc}") from None
    if not ids:
        logger.warning("node allowlist %s is empty: every node will be refused", p)
    return frozenset(ids)


def authenticated_node_id(context: grpc.ServicerContext) -> str | None:
    """The node id proven by the peer's TLS client certificate, or None without one.

    Raises AuthenticationError when the certificate names no valid node id.
    """
    pems = list(context.auth_context().get(_PEM_CERT_KEY) or ())
    if not pems:
        return None
    try:
        node_id = node_id_from_certificate(x509.load_pem_x509_certificate(bytes(pems[0])))
    except (ValueError, ConfigurationError) as exc:
        raise AuthenticationError(f"unusable client certificate: {exc}") from None
    if node_id is None:
        raise AuthenticationError(
            "client certificate names no node (no fedloom://node/<id> SAN URI nor CN)"
        )
    return node_id


def _decide(
    context: grpc.ServicerContext,
    claimed: str,
    allowed: frozenset[str] | None,
    insecure: bool,
) -> str | Refusal | None:
    """The caller's node id (None: insecure and nothing claimed), or why it is refused."""
    try:
        proven = authenticated_node_id(context)
    except AuthenticationError as exc:
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if proven is None:
        if not insecure:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "no client certificate: start the node with --ca/--cert/--key "
                "(files from `fedloom certs`), or run both sides with --insecure",
            )
        if not claimed:
            return None
        node_id = claimed
    elif claimed and claimed != proven:
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"node_id {claimed!r} does not match the client certificate, issued to node {proven!r}",
        )
    else:
        node_id = proven
    if allowed is not None and node_id not in allowed:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"node {node_id!r} is not on the researcher's allowlist: "
            "ask the researcher's operator to add it",
        )
    return node_id


def _abort(context: grpc.ServicerContext, refusal: Refusal) -> NoReturn:
    logger.warning("refused %s: %s", context.peer(), refusal.reason)
    context.abort(refusal.code, refusal.reason)
    raise AssertionError("grpc's context.abort returned instead of raising")


def check_claimed_node_id(
    context: grpc.ServicerContext,
    claimed: str,
    *,
    allowed: frozenset[str] | None = None,
    insecure: bool = False,
) -> str | None:
    """Return the caller's node id, aborting the RPC when it cannot be trusted.

    ``claimed`` is the ``node_id`` the request carries ("" for none). With TLS the
    certificate decides and a different claim is PERMISSION_DENIED; no certificate
    is UNAUTHENTICATED unless ``insecure``, where the claim is taken as is (None when
    there is none). A node off the ``allowed`` list is UNAUTHENTICATED.
    """
    decision = _decide(context, claimed, allowed, insecure)
    if isinstance(decision, Refusal):
        _abort(context, decision)
    return decision


class NodeAuthenticator:
    """The researcher's node-authentication policy: TLS or insecure, optional allowlist.

    Calling it, ``auth(context, claimed)``, returns a refusal reason or None; see the
    module docstring for the other ways to use it.
    """

    def __init__(
        self, *, allowed_node_ids: frozenset[str] | None = None, insecure: bool = False
    ) -> None:
        self.allowed_node_ids = allowed_node_ids
        self.insecure = insecure
        if insecure:
            # INFO: the server's start already warns once that it runs without TLS.
            logger.info(
                "INSECURE MODE: node connections are not encrypted and node ids are not "
                "verified; any process that reaches this port can act as any node"
            )

    def refusal(self, context: grpc.ServicerContext, claimed: str = "") -> Refusal | None:
        """Why the caller may not act as ``claimed``, or None when it may."""
        decision = _decide(context, claimed, self.allowed_node_ids, self.insecure)
        return decision if isinstance(decision, Refusal) else None

    def __call__(self, context: grpc.ServicerContext, claimed: str) -> str | None:
        refusal = self.refusal(context, claimed)
        if refusal is None:
            return None
        logger.warning("refused %s: %s", context.peer(), refusal.reason)
        return refusal.reason

    def node_id(self, context: grpc.ServicerContext, claimed: str = "") -> str | None:
        """The caller's node id (None only in insecure mode without a claim); aborts if refused."""
        return check_claimed_node_id(
            context, claimed, allowed=self.allowed_node_ids, insecure=self.insecure
        )


def make_authenticator(
    cert_dir: str | os.PathLike[str] | None = None,
    *,
    allowlist: str | os.PathLike[str] | None = None,
    insecure: bool = False,
) -> NodeAuthenticator:
    """The policy for a researcher serving with the certificates in ``cert_dir``.

    ``allowlist`` defaults to ``cert_dir/allowed_nodes.txt`` when that file exists;
    without one, any node with a certificate from the CA is accepted.
    """
    if allowlist is None and cert_dir is not None:
        default = Path(cert_dir) / ALLOWLIST_FILE
        allowlist = default if default.is_file() else None
    allowed = load_allowlist(allowlist) if allowlist is not None else None
    if allowed is not None:
        logger.info("node allowlist %s: %d node(s)", allowlist, len(allowed))
    return NodeAuthenticator(allowed_node_ids=allowed, insecure=insecure)


def servicer_check(
    cert_dir: str | os.PathLike[str] | None, *, insecure: bool
) -> Callable[[grpc.ServicerContext, str], str | None]:
    """The servicer's node check for a researcher serving with ``cert_dir``, TLS or not.

    Certificate identity under TLS, the allowlist (``cert_dir/allowed_nodes.txt``) in both
    modes. A refused caller's RPC is aborted with the policy's own status
    (UNAUTHENTICATED: no proof of identity or off the allowlist; PERMISSION_DENIED:
    claims another node's id) and reason; the check returns None otherwise.
    """
    policy = make_authenticator(cert_dir, insecure=insecure)

    def check(context: grpc.ServicerContext, claimed_node_id: str) -> str | None:
        policy.node_id(context, claimed_node_id)
        return None

    return check
