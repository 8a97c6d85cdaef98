"""The researcher's gRPC server: where nodes connect, started once per researcher process.

It runs grpc.aio on an event loop of its own thread, so idle and slow streams cost no worker
thread; the round engine keeps using the synchronous `directory` and `payloads`, which are
thread-safe and hand messages to the loop (see researcher/node_directory.Outbox).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
import grpc.aio

from common.chunk_wire import FEDERATION_SERVICE, decode_chunk, encode_chunk
from common.errors import ConfigurationError
from common.grpc_options import server_options
from common.heap_retention import retain_freed_heap
from common.proto import fedloom_pb2 as pb
from researcher.node_directory import NodeDirectory
from researcher.payload_store import PayloadStore
from researcher.run_options import RunOptions, default_run_options
from researcher.server_limits import ServerLimits
from researcher.servicer import FederationServicer, NodeAuthenticator, allow_any_node

__all__ = ["ResearcherServer", "get_server", "shutdown_server"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ResearcherServer:
    """Hosts the Federation service on `address` and owns the node directory."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        authenticate: NodeAuthenticator = allow_any_node,
        limits: ServerLimits | None = None,
    ) -> None:
        self.address = address
        self.researcher_id = f"researcher-{uuid.uuid4().hex[:12]}"
        self.limits = limits or ServerLimits()
        self.directory = NodeDirectory()
        self.payloads = PayloadStore(self.limits.max_upload_bytes_in_flight)
        self.servicer = FederationServicer(
            self.directory, self.payloads, self.researcher_id, authenticate, self.limits
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-server-loop", daemon=True
        )
        self._thread.start()
        self._started = False
        try:
            self._server, self.port = self._on_loop(self._bind(credentials))
        except BaseException:
            self._close_loop()
            raise

    def _on_loop(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _bind(
        self, credentials: grpc.ServerCredentials | None
    ) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            options=server_options(self.limits.max_streams_per_connection),
            maximum_concurrent_rpcs=None,
        )
        add_federation_servicer(self.servicer, server)
        address = self.address
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen on {address}: {exc}; is another researcher using this port? "
                "Pass --address HOST:PORT with a free port"
            ) from exc
        if port == 0:
            raise OSError(
                f"cannot listen on {address}: the port is taken or the host is not local; "
                "pass --address HOST:PORT with a free port"
            )
        return server, port

    def start(self) -> ResearcherServer:
        if not self._started:
            self._on_loop(self._server.start())
            self._started = True
            log.info("researcher listening on %s", self.address)
        return self

    def stop(self, grace: float = 1.0) -> None:
        if self._started:
            self.directory.closing = True
            for node in self.directory.connected():
                node.outbox.put(None)
            self._on_loop(self._server.stop(grace))
            self._started = False
        self._close_loop()

    def _close_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


_server: ResearcherServer | None = None
_server_lock = threading.Lock()


def get_server(options: RunOptions | None = None) -> ResearcherServer:
    """The process-wide server, started on first use with `options` (default: the process's).

    Later calls return the same server; asking for another address then is an error, since
    one researcher process serves its nodes on one port.
    """
    global _server
    options = options or default_run_options()
    with _server_lock:
        if _server is not None and _server.address != options.address:
            raise ConfigurationError(
                f"this process already serves nodes on {_server.address}; it cannot also listen "
                f"on {options.address}: use one address per researcher process"
            )
        if _server is None:
            # This process now streams every model through 1 MiB messages (uploads and
            # downloads): let them reuse freed heap rather than fault fresh pages in.
            retain_freed_heap()
            _server = ResearcherServer(
                options.address,
                credentials=options.server_credentials(),
                authenticate=options.authenticator(),
            ).start()
            # A script that ends without shutting the server down stops it at interpreter
            # exit, closing the nodes' streams cleanly rather than dropping them mid-write.
            threading._register_atexit(shutdown_server)  # type: ignore[attr-defined]
        return _server


def shutdown_server() -> None:
    """Stop the process-wide server (used at exit and by tests)."""
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None


def add_federation_servicer(servicer: FederationServicer, server: grpc.aio.Server) -> None:
    """Register the Federation service on `server` (see `federation_handlers`)."""
    handlers = federation_handlers(servicer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(FEDERATION_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(FEDERATION_SERVICE, handlers)


def federation_handlers(
    servicer: FederationServicer,
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The service's handlers as generated, except that payload chunks go through the
    zero-copy codec of common/chunk_wire.py (same wire bytes, fewer copies)."""
    return {
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect,
            request_deserializer=pb.NodeMessage.FromString,
            response_serializer=pb.ResearcherMessage.SerializeToString,
        ),
        "Download": grpc.unary_stream_rpc_method_handler(
            servicer.Download,
            request_deserializer=pb.DownloadRequest.FromString,
            response_serializer=encode_chunk,
        ),
        "Upload": grpc.stream_unary_rpc_method_handler(
            servicer.Upload,
            request_deserializer=decode_chunk,
            response_serializer=pb.UploadAck.SerializeToString,
        ),
    }
