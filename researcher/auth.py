"""Node authentication on the researcher's gRPC server.

With mutual TLS a node's id is the one in the client certificate it presented
(see :mod:`common.tls`). A node without a usable certificate, or whose id is
not on the optional allowlist, is refused with ``UNAUTHENTICATED``; a request
claiming another ``node_id`` (in ``NodeMessage``, its ``Hello``, a
``DownloadRequest`` or the ``fedloom-node-id`` metadata) is refused with
``PERMISSION_DENIED``. Every refusal carries a reason the node can log.

Two ways to plug it in, both driven by one :class:`NodeAuthenticator`
(built by :func:`make_authenticator`):

- as the servicer's check: ``auth(context, claimed_node_id)`` returns ``None``
  when the caller may act as ``claimed_node_id`` and the refusal reason
  otherwise (the servicer decides how to refuse: Refusal message, abort);
  ``auth.node_id(context, claimed)`` aborts the RPC itself, with the status
  codes above, and returns the caller's id;
- as a server interceptor, ``grpc.server(..., interceptors=[auth.interceptor()])``:
  every Federation RPC and every request message is checked before the
  servicer sees it, so security stays out of the business logic. A servicer
  behind it must let exceptions raised while iterating a request stream
  propagate: that is how a refused message ends the RPC.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from cryptography import x509

from common.errors import AuthenticationError, ConfigurationError
from common.tls import node_id_from_certificate, validate_node_id

__all__ = [
    "ALLOWLIST_FILE",
    "NODE_ID_METADATA",
    "NodeAuthInterceptor",
    "NodeAuthenticator",
    "Refusal",
    "authenticated_node_id",
    "check_claimed_node_id",
    "claimed_node_id",
    "load_allowlist",
    "make_authenticator",
    "servicer_check",
]

logger = logging.getLogger(__name__)

#: Allowlist file looked for in the certificate directory when none is given.
ALLOWLIST_FILE = "allowed_nodes.txt"

#: Call metadata in which a node names itself on RPCs whose messages carry no node_id (Upload).
NODE_ID_METADATA = "fedloom-node-id"

#: Only the Federation service's methods are guarded; a health check registered beside it
#: stays reachable (its transport is still TLS).
GUARDED_SERVICE = "/fedloom.v1.Federation/"

if TYPE_CHECKING:
    # Generic in the type stubs only: the runtime class takes no parameters.
    _Handler = grpc.RpcMethodHandler[Any, Any]

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


def claimed_node_id(context: grpc.ServicerContext, message: Any) -> str:
    """The node_id a request message claims ("" for none), from itself or its Hello.

    Aborts with PERMISSION_DENIED when the message names two different nodes.
    """
    claims = {getattr(message, "node_id", "")}
    descriptor = getattr(type(message), "DESCRIPTOR", None)
    if descriptor is not None and "hello" in descriptor.fields_by_name:
        if message.HasField("hello"):
            claims.add(message.hello.node_id)
    claims.discard("")
    if len(claims) > 1:
        _abort(
            context,
            Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"message names several nodes: {sorted(claims)}",
            ),
        )
    return claims.pop() if claims else ""


def _metadata_claim(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == NODE_ID_METADATA:
            return value if isinstance(value, str) else value.decode()
    return ""


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
            logger.warning(
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

    def interceptor(self) -> NodeAuthInterceptor:
        """A server interceptor applying this policy to the Federation service."""
        return NodeAuthInterceptor(self)


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


class NodeAuthInterceptor(grpc.ServerInterceptor):
    """Applies a :class:`NodeAuthenticator` to every Federation RPC and every request message."""

    def __init__(self, authenticator: NodeAuthenticator) -> None:
        self._auth = authenticator

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(GUARDED_SERVICE):
            return handler
        return _wrap(handler, self._auth)


def _checked_stream(
    requests: Iterator[Any],
    context: grpc.ServicerContext,
    auth: NodeAuthenticator,
    caller: str | None,
) -> Iterator[Any]:
    """Pass requests through, refusing any that claims a node other than the caller."""
    for request in requests:
        claimed = claimed_node_id(context, request)
        if claimed and claimed != caller:
            if caller is None:
                # Insecure mode: the first claim names the caller (allowlist checked).
                caller = auth.node_id(context, claimed)
            elif auth.insecure:
                _abort(
                    context,
                    Refusal(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"stream opened by node {caller!r} then claimed {claimed!r}",
                    ),
                )
            else:
                auth.node_id(context, claimed)  # aborts: the claim is not the certificate's
        yield request


def _wrap(handler: _Handler, auth: NodeAuthenticator) -> _Handler:
    """The same handler with its request(s) checked before the servicer sees them."""
    if handler.request_streaming:
        stream = handler.stream_stream or handler.stream_unary
        assert stream is not None

        def stream_behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            # Checked before the servicer runs, not at the first message: a node without
            # a certificate or off the allowlist never reaches it.
            caller = auth.node_id(context, _metadata_claim(context))
            return stream(_checked_stream(requests, context, auth, caller), context)

        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(
            stream_behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    unary = handler.unary_stream or handler.unary_unary
    assert unary is not None

    def unary_behavior(request: Any, context: grpc.ServicerContext) -> Any:
        claimed = claimed_node_id(context, request)
        auth.node_id(context, claimed)
        caller = auth.node_id(context, _metadata_claim(context))
        if claimed and caller is not None and claimed != caller:
            # Only reachable in insecure mode: with TLS both were checked against the cert.
            _abort(
                context,
                Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"request names node {claimed!r} but its metadata names {caller!r}",
                ),
            )
        return unary(request, context)

    unary_factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return unary_factory(
        unary_behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
