"""Validation of masked arrays and corrections received by the researcher."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import PayloadError

__all__ = ["as_masked"]

_VALUE_BYTES = 8


def as_masked(
    data: np.ndarray | bytes | bytearray | memoryview,
    *,
    node_id: str,
    name: str,
    shape: Sequence[int] | None,
    what: str = "masked payload",
) -> np.ndarray:
    """Check a received masked array (or its raw little-endian bytes) and return it as uint64.

    ``shape`` is the shape every node must send (None for the first one); errors are
    PayloadError naming the node and payload.
    """
    where = f"node {node_id!r} sent {what} {name!r}"
    if isinstance(data, bytes | bytearray | memoryview):
        raw = memoryview(data).cast("B")
        if raw.nbytes % _VALUE_BYTES:
            raise PayloadError(
                f"{where} of {raw.nbytes} bytes, not a whole number of uint64 values: it was "
                "truncated in transit; ask the node to resend it."
            )
        array = np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)
        if shape is not None:
            if array.size != int(np.prod(shape, dtype=np.int64)):
                raise PayloadError(
                    f"{where} with {array.size} values, expected {tuple(shape)}: it was "
                    "truncated or comes from another model."
                )
            array = array.reshape(tuple(shape))
        return array
    if not isinstance(data, np.ndarray):
        raise PayloadError(f"{where} as {type(data).__name__}; expected a uint64 array.")
    if data.dtype != np.uint64:
        raise PayloadError(
            f"{where} with dtype {data.dtype}; masked values must be uint64 (native byte "
            "order). The node did not mask it, or its codec is broken."
        )
    if shape is not None and data.shape != tuple(shape):
        raise PayloadError(
            f"{where} with shape {data.shape}, expected {tuple(shape)}: it was truncated "
            "or comes from another model."
        )
    return data
