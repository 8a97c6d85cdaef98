"""The researcher's gRPC server: where nodes connect, started once per researcher process."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc

from common.errors import ConfigurationError
from common.grpc_options import server_options
from common.proto import fedloom_pb2_grpc as pb_grpc
from researcher.node_directory import NodeDirectory
from researcher.payload_store import PayloadStore
from researcher.run_options import RunOptions, default_run_options
from researcher.servicer import FederationServicer, NodeAuthenticator, allow_any_node

__all__ = ["ResearcherServer", "get_server", "shutdown_server"]

log = logging.getLogger(__name__)

#: Worker threads: each connected node permanently holds one for its control stream and
#: one for its reader, plus one per concurrent download/upload. 256 serves ~100 nodes.
MAX_WORKERS = 256


class ResearcherServer:
    """Hosts the Federation service on `address` and owns the node directory."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        authenticate: NodeAuthenticator = allow_any_node,
    ) -> None:
        self.address = address
        self.researcher_id = f"researcher-{uuid.uuid4().hex[:12]}"
        self.directory = NodeDirectory()
        self.payloads = PayloadStore()
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="grpc"),
            options=server_options(),
            maximum_concurrent_rpcs=None,
        )
        servicer = FederationServicer(
            self.directory, self.payloads, self.researcher_id, authenticate
        )
        pb_grpc.add_FederationServicer_to_server(servicer, self._server)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen on {address}: {exc}; is another researcher using this port? "
                "Pass --address HOST:PORT with a free port"
            ) from exc
        if self.port == 0:
            raise OSError(
                f"cannot listen on {address}: the port is taken or the host is not local; "
                "pass --address HOST:PORT with a free port"
            )
        self._started = False

    def start(self) -> ResearcherServer:
        if not self._started:
            self._server.start()
            self._started = True
            log.info("researcher listening on %s", self.address)
        return self

    def stop(self, grace: float = 1.0) -> None:
        if self._started:
            self.directory.closing = True
            for node in self.directory.connected():
                node.outbox.put(None)
            self._server.stop(grace).wait()
            self._started = False


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
            _server = ResearcherServer(
                options.address,
                credentials=options.server_credentials(),
                authenticate=options.authenticator(),
            ).start()
            # A script that ends without shutting the server down must still exit: at
            # interpreter exit, ThreadPoolExecutor joins its workers, which serve the nodes'
            # endless streams. threading's exit hooks run in reverse order of registration,
            # so this one (registered after the executor's) stops the server first.
            threading._register_atexit(shutdown_server)  # type: ignore[attr-defined]
        return _server


def shutdown_server() -> None:
    """Stop the process-wide server (used at exit and by tests)."""
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None
