"""Finiteness checks over large arrays without model-sized temporaries."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["FiniteArrays", "NonFiniteArrayError", "all_finite"]

#: Elements checked per step: the boolean scratch (64 KiB) stays in cache, and no
#: model-sized temporary is allocated for a 10M-parameter tensor.
_CHUNK = 1 << 16


def all_finite(array: np.ndarray) -> bool:
    """`np.isfinite(array).all()`, chunk by chunk; integer arrays are always finite."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind not in "fc":
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
