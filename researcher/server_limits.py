"""How much a peer may cost the researcher's server before and after it proves who it is.

Every number bounds work a peer can cause without having done anything useful: streams that
never say Hello, uploads nobody asked for, bytes held for uploads. Each refusal names the
limit it hit (RESOURCE_EXHAUSTED, or DEADLINE_EXCEEDED for a silent stream).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "HELLO_TIMEOUT_SECONDS",
    "MAX_CONCURRENT_UPLOADS",
    "MAX_OPEN_STREAMS",
    "MAX_PENDING_STREAMS",
    "MAX_PENDING_STREAMS_PER_HOST",
    "MAX_STREAMS_PER_CONNECTION",
    "MAX_UPLOADS_PER_NODE",
    "MAX_UPLOAD_BYTES_IN_FLIGHT",
    "UPLOAD_CHUNK_TIMEOUT_SECONDS",
    "UPLOAD_MARGIN_BYTES",
    "UPLOAD_SIZE_FACTOR",
    "ServerLimits",
]

#: A node sends Hello as the first message of its stream, right after connecting; 5 s
#: covers a loaded machine and a slow link many times over, and frees a silent stream fast.
HELLO_TIMEOUT_SECONDS = 5.0

#: Streams still waiting for their Hello, from one IP address. An honest node opens one
#: stream at a time (reconnects replace it); 32 leaves room for many nodes behind one NAT.
MAX_PENDING_STREAMS_PER_HOST = 32

#: Streams waiting for their Hello, all peers together: with HELLO_TIMEOUT_SECONDS this
#: bounds how long a flood can hold the door (each costs a few KB, no thread).
MAX_PENDING_STREAMS = 1024

#: Control streams open in all, authenticated or not: one per node, so 4096 nodes; each
#: idle stream costs a few KB of memory on the server's event loop and no thread.
MAX_OPEN_STREAMS = 4096

#: HTTP/2 streams one TCP connection may carry at once. A node uses at most three (control,
#: one download, one upload); 100 is gRPC's usual advertised value.
MAX_STREAMS_PER_CONNECTION = 100

#: Uploads one node may have open at once: its task's upload, plus a retry that overlaps a
#: cut one the server has not noticed yet.
MAX_UPLOADS_PER_NODE = 2

#: Uploads open at once, all nodes together (each costs at most its expected size).
MAX_CONCURRENT_UPLOADS = 64

#: Bytes the server holds for uploads (assembling, or received and not yet folded into the
#: round). 4 GiB is 64 concurrent uploads of a 64 MB model, within a 16 GB researcher.
MAX_UPLOAD_BYTES_IN_FLIGHT = 4 << 30

#: An upload that sends nothing for this long is dropped (a node sends chunks back to back).
UPLOAD_CHUNK_TIMEOUT_SECONDS = 30.0

#: An upload may be this many times the global model the node was sent: the node's
#: parameters (1x) plus its optimizer's aux vars (Scaffold: 1x more), with room for SecAgg's
#: int64 fixed-point encoding of float32 parameters (2x).
UPLOAD_SIZE_FACTOR = 4

#: Plus this much for small models, whose manifests and aux arrays dominate their size.
UPLOAD_MARGIN_BYTES = 16 << 20


@dataclass(frozen=True)
class ServerLimits:
    """The limits one ResearcherServer applies (defaults: the module's constants)."""

    hello_timeout: float = HELLO_TIMEOUT_SECONDS
    max_pending_streams_per_host: int = MAX_PENDING_STREAMS_PER_HOST
    max_pending_streams: int = MAX_PENDING_STREAMS
    max_open_streams: int = MAX_OPEN_STREAMS
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION
    max_uploads_per_node: int = MAX_UPLOADS_PER_NODE
    max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS
    max_upload_bytes_in_flight: int = MAX_UPLOAD_BYTES_IN_FLIGHT
    upload_chunk_timeout: float = UPLOAD_CHUNK_TIMEOUT_SECONDS

    def expected_upload_bytes(self, model_bytes: int) -> int:
        """Largest upload accepted for a task whose global model is `model_bytes` long."""
        return UPLOAD_SIZE_FACTOR * model_bytes + UPLOAD_MARGIN_BYTES
