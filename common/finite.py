"""Finiteness checks over large arrays without model-sized temporaries."""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from common.page_release import release_window
from common.proto import fedloom_pb2 as pb

__all__ = ["FiniteArrays", "NonFiniteArrayError", "StreamScan", "all_finite"]

#: Elements summed per numpy call on the fast path: few calls (each re-takes the GIL), and
#: a window of a mapped upload (32 MiB of float32) is all that stays resident.
WINDOW = 1 << 23

#: Elements checked per step when the fast path cannot decide: the boolean scratch (64 KiB)
#: stays in cache, and no model-sized temporary is allocated for a 10M-parameter tensor.
_CHUNK = 1 << 16


def all_finite(array: np.ndarray) -> bool:
    """`np.isfinite(array).all()` without a model-sized temporary; integers are always finite.

    Fast path: one float64 (complex128) sum, a single numpy call. A NaN or infinity makes
    the sum non-finite, and finite float32 or float16 values cannot overflow it (3.4e38
    times any real array size stays below float64's 1.8e308), so a finite sum proves every
    value finite. Only a non-finite sum (a NaN or infinity present, or float64 values
    overflowing) is decided by the exact scan, chunk by chunk. One call, not one per chunk,
    matters in the researcher: each numpy call re-takes the GIL, which the gRPC thread
    receiving other uploads holds for up to 5 ms at a time.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind not in "fc":
        return True
    wide = np.complex128 if flat.dtype.kind == "c" else np.float64
    with np.errstate(over="ignore", invalid="ignore"):  # expected on the slow path's inputs
        for start in range(0, flat.size, WINDOW):
            window = flat[start : start + WINDOW]
            finite = np.isfinite(np.add.reduce(window, dtype=wide))
            # A mapped upload is read once here, then again when folded: keep one window
            # of it resident, not all of it (at 100M parameters, 400 MB of the budget).
            release_window(window)
            if not finite:
                break
        else:
            return True
    scratch = np.empty(min(_CHUNK, max(flat.size, 1)), dtype=bool)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        if not np.isfinite(part, out=scratch[: part.size]).all():
            return False
    return True


class NonFiniteArrayError(ValueError):
    """An array holds NaN or infinity; `name` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(f"non-finite values in {name!r}")
        self.name = name


class FiniteArrays(dict[str, np.ndarray]):
    """Named arrays scanned once and found finite, so a later reader need not scan again.

    Build it with `FiniteArrays.scanned(arrays)`, which does the scan. Like any dict it
    could be changed afterwards: whoever builds one hands it on, not to code that writes.
    """

    @classmethod
    def scanned(cls, arrays: Mapping[str, np.ndarray]) -> FiniteArrays:
        """Scan every array; raise NonFiniteArrayError naming the first non-finite one.

        FiniteArrays are returned as they are: they were scanned when built.
        """
        if isinstance(arrays, FiniteArrays):
            return arrays
        for name, value in arrays.items():
            if not all_finite(value):
                raise NonFiniteArrayError(name)
        return cls(arrays)

    @classmethod
    def proven(
        cls, arrays: Mapping[str, np.ndarray], finite: Collection[str]
    ) -> FiniteArrays | None:
        """`arrays` without a scan if each of its float arrays is in `finite` (names that a
        `StreamScan` of their bytes proved finite); None if any is not."""
        for name, value in arrays.items():
            if value.dtype.kind in "fc" and name not in finite:
                return None
        return cls(arrays)


class StreamScan:
    """Which float arrays of a payload are finite, learnt from its bytes as they arrive.

    The researcher scans each upload chunk by chunk while receiving it, when the bytes are
    in hand, instead of mapping the whole upload back once it is complete: the round then
    folds each reply in one pass over it, not two. Each chunk's part of an array is summed
    as `all_finite` does; an array is proven finite only once every one of its bytes was
    seen in a finite sum. Anything else (a non-finite sum, which may be a large but finite
    float64, a chunk that splits an element, a manifest that lies) only leaves the array
    unproven, for the full scan to decide: this class can prove, never refuse.
    """

    def __init__(self, manifest: pb.PayloadManifest) -> None:
        specs = []
        for spec in manifest.arrays:
            try:
                dtype = np.dtype(spec.dtype)
            except (TypeError, ValueError, SyntaxError):
                continue  # the payload's own checks refuse it once complete
            if dtype.kind in "fc":
                specs.append((int(spec.offset), int(spec.nbytes), dtype, (spec.section, spec.name)))
        specs.sort(key=lambda item: item[0])
        self._specs = specs
        self._starts = [item[0] for item in specs]
        self._seen = [0] * len(specs)  # bytes of each array seen in a finite sum
        self._failed: set[int] = set()
        self._next = 0

    def feed(self, offset: int, data: Any) -> None:
        """Scan the bytes `data` found at `offset` in the payload's buffer (fed in order)."""
        if offset != self._next:  # PayloadAssembler refuses such chunks; prove nothing then
            self._failed.update(range(len(self._specs)))
        end = self._next = offset + len(data)
        # Arrays starting before the chunk ends, latest first, down to one ending before it
        # starts: laid out one after the other, as writers do, no earlier one overlaps. (A
        # manifest with overlapping arrays may have some skipped: they stay unproven.)
        for index in range(bisect.bisect_left(self._starts, end) - 1, -1, -1):
            start, nbytes, dtype, _ = self._specs[index]
            if start + nbytes <= offset:
                break
            if index in self._failed:
                continue
            low, high = max(offset, start), min(end, start + nbytes)
            if (low - start) % dtype.itemsize or (high - low) % dtype.itemsize:
                self._failed.add(index)  # an element split across chunks: leave it
                continue
            view = np.frombuffer(
                data, dtype=dtype, count=(high - low) // dtype.itemsize, offset=low - offset
            )
            wide = np.complex128 if dtype.kind == "c" else np.float64
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isfinite(np.add.reduce(view, dtype=wide)):
                    self._seen[index] += high - low
                else:
                    self._failed.add(index)

    def proven(self) -> dict[pb.PayloadSection.ValueType, frozenset[str]]:
        """Names of the arrays proven finite, by payload section."""
        out: dict[pb.PayloadSection.ValueType, set[str]] = {}
        for index, (_, nbytes, _, (section, name)) in enumerate(self._specs):
            if index not in self._failed and self._seen[index] == nbytes:
                out.setdefault(section, set()).add(name)
        return {section: frozenset(names) for section, names in out.items()}
