"""Fixed-point encoding of floats as integers modulo 2^64, and decoding of their sums.

A value ``x`` with ``|x| <= clip`` becomes ``rint(x * 2**fraction_bits)`` stored in two's
complement inside a ``uint64``. Sums are plain ``uint64`` additions with wraparound; a sum
of ``n`` encodings decodes exactly as long as ``n * ceil(clip * 2**fraction_bits)`` fits in
63 bits, which :meth:`FixedPoint.check_capacity` verifies before any value is encoded.

Error bound (see :meth:`FixedPoint.value_error_bound` and :meth:`FixedPoint.sum_error_bound`):
scaling by a power of two and ``rint`` are exact in IEEE arithmetic, so each value is off
by at most ``2**-(fraction_bits + 1)``; integer sums are exact; the final ``int64 -> float64``
conversion adds at most ``|sum| * 2**-53``. Hence for ``n`` values
``|decoded - exact| <= n * 2**-(fraction_bits + 1) + n * clip * 2**-53``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.errors import PayloadError, SecaggError

__all__ = ["FLOAT64_RELATIVE_ERROR", "MAX_CLIP", "RING_CAPACITY", "FixedPoint", "check_numeric"]

# The largest magnitude a sum may reach: int64's range, read from the uint64 ring.
RING_CAPACITY = 2**63 - 1
# Rounding of the final int64 -> float64 conversion (half an ulp of a 53-bit mantissa).
FLOAT64_RELATIVE_ERROR = 2.0**-53
# Largest clip: integers beyond 2^53 are not exact in float64, which would void the bound.
MAX_CLIP = 2.0**53
# At most this many offending indices are quoted in a range error.
_MAX_QUOTED = 5


@dataclass(frozen=True)
class FixedPoint:
    """Codec between floats in ``[-clip, clip]`` and ``uint64`` fixed-point integers."""

    clip: float
    fraction_bits: int

    def __post_init__(self) -> None:
        if (
            isinstance(self.clip, bool)
            or not isinstance(self.clip, int | float)
            or not 0 < self.clip <= MAX_CLIP
        ):
            raise SecaggError(
                f"SecAgg clip must be a number in (0, 2^53], got {self.clip!r}: "
                "set SecureAggregation(clip=...) to the largest magnitude a value may take."
            )
        if isinstance(self.fraction_bits, bool) or not isinstance(self.fraction_bits, int):
            raise SecaggError(
                f"SecAgg fraction_bits must be an int, got {self.fraction_bits!r}: "
                "set SecureAggregation(fraction_bits=...)."
            )
        if not 0 <= self.fraction_bits <= 62:
            raise SecaggError(
                f"SecAgg fraction_bits={self.fraction_bits} is outside [0, 62]: "
                "set SecureAggregation(fraction_bits=...) to a value in that range."
            )
        self.check_capacity(1)

    @property
    def scale(self) -> float:
        """The factor ``2**fraction_bits`` applied before rounding."""
        return math.ldexp(1.0, self.fraction_bits)

    @property
    def max_encoded(self) -> int:
        """The largest integer one clipped value can encode to."""
        return math.ceil(math.ldexp(self.clip, self.fraction_bits))

    def max_nodes(self) -> int:
        """How many encoded values can be summed without leaving the int64 range."""
        return RING_CAPACITY // self.max_encoded

    def check_capacity(self, n_nodes: int) -> None:
        """Raise SecaggError if a sum over ``n_nodes`` contributions could overflow."""
        if n_nodes <= self.max_nodes():
            return
        fitting_bits = next(
            (
                bits
                for bits in range(self.fraction_bits, -1, -1)
                if n_nodes * math.ceil(math.ldexp(self.clip, bits)) <= RING_CAPACITY
            ),
            None,
        )
        bits_hint = (
            f"lower fraction_bits to {fitting_bits}"
            if fitting_bits is not None
            else "lower clip (fraction_bits alone cannot fix it)"
        )
        raise SecaggError(
            f"SecAgg sum of {n_nodes} nodes could overflow: n_nodes * clip * 2^fraction_bits = "
            f"{n_nodes} * {self.clip:g} * 2^{self.fraction_bits} exceeds 2^63 "
            f"(at most {self.max_nodes()} nodes fit). In SecureAggregation(...), {bits_hint} "
            f"or lower clip to {_round_down(RING_CAPACITY // n_nodes / 2**self.fraction_bits):g}."
        )

    def value_error_bound(self) -> float:
        """Largest absolute error of one encoded-then-decoded value."""
        return 2.0 ** -(self.fraction_bits + 1)

    def sum_error_bound(self, n_values: int) -> float:
        """Largest absolute error of a decoded sum of ``n_values`` encoded values."""
        return n_values * self.value_error_bound() + n_values * self.clip * FLOAT64_RELATIVE_ERROR

    def check_range(self, values: np.ndarray, *, node_id: str, name: str) -> None:
        """Raise SecaggError if a value is NaN, infinite or outside ``[-clip, clip]``."""
        if values.size == 0:
            return
        low, high = np.min(values), np.max(values)
        # NaN propagates through min/max and fails both comparisons.
        if low >= -self.clip and high <= self.clip:
            return
        flat = np.ravel(values)
        bad = np.flatnonzero(~(np.abs(flat) <= self.clip))
        quoted = ", ".join(f"[{i}]={flat[i]!r}" for i in bad[:_MAX_QUOTED])
        raise SecaggError(
            f"node {node_id!r}: payload {name!r} has {bad.size} value(s) that are NaN, infinite "
            f"or outside the SecAgg clipping range [-{self.clip:g}, {self.clip:g}] ({quoted}). "
            "Raise SecureAggregation(clip=...) on the researcher, or fix the diverging training."
        )

    def encode(
        self,
        values: np.ndarray,
        *,
        node_id: str,
        name: str,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Check and encode ``values`` into ``out`` (a new uint64 array of the same shape by default)."""
        values = np.asarray(values)
        check_numeric(values, node_id=node_id, name=name)
        if out is None:
            out = np.empty(values.shape, dtype=np.uint64)
        elif out.dtype != np.uint64 or out.size != values.size:
            raise PayloadError(
                f"node {node_id!r}: payload {name!r} has {values.size} values but the output "
                f"buffer holds {out.size} of dtype {out.dtype}; pass a uint64 buffer of equal size."
            )
        self.check_range(values, node_id=node_id, name=name)
        self.encode_into(values, out)
        return out

    def scratch(self, size: int, dtype: np.dtype) -> np.ndarray:
        """A reusable work buffer for :meth:`encode_into` of ``size`` values of ``dtype``."""
        return np.empty(size, dtype=np.float32 if dtype == np.float32 else np.float64)

    def encode_into(
        self, values: np.ndarray, out: np.ndarray, scratch: np.ndarray | None = None
    ) -> bool:
        """Encode ``values`` into the uint64 array ``out`` of equal size; False if out of range.

        The range is checked on the scaled values (scaling by a power of two is exact), so a
        chunked caller checks each chunk while it is in cache instead of reading the input
        twice more; on False, ``out`` is unspecified and :meth:`check_range` gives the error.
        float32 input is scaled in float32: scaling by a power of two and rounding are exact
        there too, so the error bound is unchanged and a float64 copy is avoided. ``scratch``
        (flat, of the working dtype, at least ``values.size`` long) is reused across calls
        by chunked callers: a fresh 512 KiB temporary per chunk costs an mmap and page faults.
        """
        work_dtype = np.float32 if values.dtype == np.float32 else np.float64
        if scratch is None or scratch.dtype != work_dtype or scratch.size < values.size:
            scaled = np.multiply(values, self.scale, dtype=work_dtype)
        else:
            scaled = scratch[: values.size].reshape(values.shape)
            np.multiply(values, self.scale, out=scaled, dtype=work_dtype)
        limit = math.ldexp(self.clip, self.fraction_bits)
        # NaN propagates through min/max and fails both comparisons.
        if scaled.size and not (np.min(scaled) >= -limit and np.max(scaled) <= limit):
            return False
        np.rint(scaled, out=scaled)
        np.copyto(out.reshape(values.shape).view(np.int64), scaled, casting="unsafe")
        return True

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """Decode a uint64 sum of encodings back to float64 (same shape)."""
        if total.dtype != np.uint64:
            raise PayloadError(
                f"a SecAgg sum must be uint64, got {total.dtype}; sum the masked arrays as uint64."
            )
        # One pass: int64 -> float64 conversion and the exact power-of-two scaling.
        return np.multiply(total.view(np.int64), 2.0**-self.fraction_bits, dtype=np.float64)


def check_numeric(values: np.ndarray, *, node_id: str, name: str) -> None:
    """Raise PayloadError unless ``values`` holds numbers SecAgg can encode."""
    if values.dtype.kind not in "fiub":
        raise PayloadError(
            f"node {node_id!r}: payload {name!r} has dtype {values.dtype}, which SecAgg "
            "cannot encode; send a numeric array."
        )


def _round_down(value: float) -> float:
    """``value`` rounded down to three significant digits, for suggestions that must fit."""
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return math.floor(value / step) * step
