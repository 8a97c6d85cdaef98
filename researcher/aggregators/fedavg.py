"""FedAverage: the sample-weighted mean of the nodes' parameters, accumulated as replies arrive."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from common.errors import RoundFailedError
from common.finite import WINDOW
from common.page_release import release_window
from researcher.aggregators.base import Aggregator
from researcher.aggregators.checks import check_reply

__all__ = ["FedAverage"]

#: sys.getrefcount of an array held by one local name alone (CPython).
_UNREFERENCED = 2

#: Elements processed per step when finishing: 64 Ki float64 (512 KiB) stays in L2 cache.
_CHUNK = 1 << 16


def _finish_in_place(total: np.ndarray, divisor: float, dtype: np.dtype) -> np.ndarray:
    """`total / divisor` cast to `dtype`, written over `total`'s own buffer when it fits.

    Chunk by chunk through a cached scratch: each result chunk lands on bytes whose sums
    were already read (result element i sits at byte i * itemsize <= i * 8), so the
    round's result costs no second model-sized buffer. It keeps the sums' buffer alive.
    """
    flat = total.reshape(-1)
    if dtype.itemsize > flat.itemsize:  # e.g. complex128: no room in place
        result = np.empty(flat.size, dtype=dtype)
    else:
        result = np.frombuffer(flat.data, dtype=dtype, count=flat.size)
    scratch = np.empty(min(_CHUNK, max(flat.size, 1)), dtype=np.float64)
    for start in range(0, flat.size, _CHUNK):
        buf = scratch[: min(_CHUNK, flat.size - start)]
        np.divide(flat[start : start + buf.size], divisor, out=buf)
        np.copyto(result[start : start + buf.size], buf, casting="unsafe")
    return result.reshape(total.shape)


class FedAverage(Aggregator):
    """Weighted mean, weights = the nodes' training sample counts.

    Sums run in float64 whatever the parameter dtype, then cast back, so the order in
    which replies arrive changes the result by at most one float32 rounding. `finish`
    writes the result over the sums (one float64 accumulator is all the memory it takes)
    and ends the round: call `start` before folding again.

    The accumulator holds the weighted sum divided by the last reply's weight, so folding
    a reply is two numpy calls per 8M-element window with no temporary (`acc *= previous
    / weight`, then `acc += params`), not one pair per cache-sized chunk: the researcher
    folds while its gRPC thread receives other uploads, and every numpy call waits for the
    GIL that thread holds (a chunked fold of 10M parameters took 1.5 s instead of 25 ms
    that way). Each window of a memory-mapped upload leaves resident memory once folded.

    The next round folds into the last one's buffer once its result is dropped (the
    Experiment writes it to the round file and lets go), so a run touches the same pages
    round after round instead of faulting in a fresh float64 model each time; `release`
    (the end of a run) lets it go.
    """

    supports_secure_sum: ClassVar[bool] = True

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._total = 0.0
        #: The accumulator times `_scale` is the weighted sum (while `_nodes` is not empty;
        #: before the first fold its content is whatever the buffer held).
        self._scale = 1.0
        self._nodes: list[str] = []
        #: The last round's accumulators, which its result was written over.
        self._spent: dict[str, np.ndarray] = {}

    def release(self) -> None:
        self._spent = {}

    def start(self, template: Mapping[str, np.ndarray]) -> None:
        spent, self._spent = self._spent, {}
        # The first fold assigns rather than adds, so nothing is zero-filled: new buffers
        # are touched only then, after the global model was published (touching them
        # earlier would add to round 1's peak), and a spent one is reused as it is.
        self._sums = {k: _accumulator(spent.pop(k, None), np.shape(v)) for k, v in template.items()}
        self._dtypes = {k: np.asarray(v).dtype for k, v in template.items()}
        self._total = 0.0
        self._scale = 1.0
        self._nodes = []

    def add(self, node_id: str, params: Mapping[str, np.ndarray], weight: float) -> None:
        check_reply(node_id, params, weight, {k: v.shape for k, v in self._sums.items()})
        ratio = self._scale / weight
        first = not self._nodes
        for name, total in self._sums.items():
            flat = total.reshape(-1)
            value = np.asarray(params[name]).reshape(-1)
            for start in range(0, flat.size, WINDOW):
                acc = flat[start : start + WINDOW]
                window = value[start : start + WINDOW]
                if first:
                    np.copyto(acc, window)
                else:
                    if ratio != 1.0:
                        acc *= ratio
                    np.add(acc, window, out=acc)
                release_window(window)  # one window of a mapped upload resident at a time
        self._scale = weight
        self._total += weight
        self._nodes.append(node_id)

    def add_secure_sum(self, sums: Mapping[str, np.ndarray], total_weight: float) -> None:
        if not total_weight > 0:
            raise RoundFailedError(
                f"the securely summed sample count is {total_weight}; expected > 0"
            )
        if set(sums) != set(self._sums):
            raise RoundFailedError(
                f"the secure sum holds parameters {sorted(set(sums) ^ set(self._sums))[:5]} "
                "that do not match the global model"
            )
        for name, total in self._sums.items():
            value = np.asarray(sums[name]).reshape(total.shape)
            if not self._nodes:
                np.copyto(total, value)
                continue
            if self._scale != 1.0:
                total *= self._scale
            np.add(total, value, out=total)
        self._scale = 1.0
        self._total += total_weight
        self._nodes.append("<secure-sum>")

    def finish(self) -> dict[str, np.ndarray]:
        if not self._nodes:
            raise RoundFailedError("no node reply to aggregate")
        sums, self._sums, self._nodes = self._sums, {}, []
        self._spent = sums
        return {
            name: _finish_in_place(total, self._total / self._scale, self._dtypes[name])
            for name, total in sums.items()
        }


def _accumulator(spent: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 buffer of `shape`: `spent` when it fits and nothing else refers to it (the
    result written over it was dropped), whose pages are already the process's, where a new
    buffer's are faulted in afresh by the first fold (at 100M, 400 ms of its 600 ms)."""
    # Referred to by `spent` and getrefcount's argument only: no view of it (the result's
    # arrays are views of it, through a buffer export) is alive anywhere.
    if spent is not None and spent.shape == shape and sys.getrefcount(spent) == _UNREFERENCED:
        return spent
    return np.empty(shape, dtype=np.float64)
