"""Numbers that matter on the wire and in time, each with the reason for its value."""

from __future__ import annotations

#: Wire protocol version carried by every message; bump on any incompatible change.
PROTOCOL_VERSION = 1

#: Payload chunk size. 1 MiB keeps per-message overhead below 1% while staying far under
#: gRPC's default 4 MiB cap; bench/round_overhead.py showed no gain from larger chunks.
CHUNK_SIZE = 1 << 20

#: gRPC message cap we configure on both sides: a chunk plus generous room for its header.
MAX_MESSAGE_BYTES = 8 << 20

#: Largest payload a peer accepts unless configured otherwise (FEDLOOM_MAX_PAYLOAD_BYTES):
#: 16 GiB covers a 4-billion float32 model; anything larger is refused before allocating.
DEFAULT_MAX_PAYLOAD_BYTES = 16 << 30

#: Arrays inside a payload start on this boundary so decoded numpy views are aligned
#: for vectorised kernels (64 bytes = one cache line, enough for AVX-512).
ARRAY_ALIGNMENT = 64

#: Seconds between node heartbeats. Short enough that a dead node is noticed within
#: HEARTBEAT_TIMEOUT, long enough to cost nothing.
HEARTBEAT_INTERVAL = 2.0

#: A node silent for this long (no heartbeat, no message) is considered gone.
HEARTBEAT_TIMEOUT = 10.0

#: Node reconnection backoff: first wait, cap, and growth factor.
RECONNECT_INITIAL_DELAY = 0.5
RECONNECT_MAX_DELAY = 15.0
RECONNECT_BACKOFF = 2.0

#: Cap of the backoff after a session the researcher ended normally: its next run usually
#: follows soon, and a refused connection attempt every 2 s costs nothing, so a new run
#: finds its nodes within 2 s instead of up to RECONNECT_MAX_DELAY.
RECONNECT_AFTER_SESSION_MAX_DELAY = 2.0

#: Default per-round deadline when training_args does not give one (seconds).
DEFAULT_ROUND_TIMEOUT = 3600.0

#: Default port of the researcher's gRPC server.
DEFAULT_PORT = 50051
