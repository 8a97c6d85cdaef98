"""Every gRPC channel and server option fedloom sets, in one place, each with its reason."""

from __future__ import annotations

from common.constants import MAX_MESSAGE_BYTES

__all__ = ["channel_options", "server_options"]

_COMMON: list[tuple[str, int]] = [
    # Payloads travel in CHUNK_SIZE chunks; the cap only has to fit one chunk plus its header,
    # so a malformed peer cannot make us buffer a huge single message.
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def channel_options() -> list[tuple[str, int]]:
    """Options of the node's channel to the researcher."""
    return [
        *_COMMON,
        # Ping the researcher every 20 s on an idle connection so NATs and proxies between a
        # hospital and the researcher do not drop the long-lived control stream silently.
        ("grpc.keepalive_time_ms", 20_000),
        # A ping unanswered for 10 s means the link is dead: fail fast and reconnect.
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnection is driven by the node's own backoff loop, which logs each attempt;
        # keep gRPC's internal backoff short so it never hides a researcher that came back.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


def server_options(max_streams_per_connection: int = 100) -> list[tuple[str, int]]:
    """Options of the researcher's server."""
    return [
        *_COMMON,
        # HTTP/2 streams one connection may open at once (see researcher/server_limits.py).
        ("grpc.max_concurrent_streams", max_streams_per_connection),
        # A connection that has not finished its (TLS) handshake within 10 s is dropped: an
        # honest node completes it in milliseconds, a silent socket would hold it 120 s.
        ("grpc.server_handshake_timeout_ms", 10_000),
        # Accept the nodes' keepalive pings (every 20 s) without treating them as abuse.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Refuse to share the port with another process: two researchers on one port would
        # split the nodes between them.
        ("grpc.so_reuseport", 0),
    ]
