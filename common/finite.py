"""Finiteness checks over large arrays without model-sized temporaries."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.page_release import release_window

__all__ = ["FiniteArrays", "NonFiniteArrayError", "all_finite"]

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
        """Scan every array; raise NonFiniteArrayError naming the first non-finite one."""
        for name, value in arrays.items():
            if not all_finite(value):
                raise NonFiniteArrayError(name)
        return cls(arrays)
