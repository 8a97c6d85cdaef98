"""The C library's functions that Python's standard library does not wrap, from one handle."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["LIBC", "libc_function"]

#: This process's C library (the symbols already loaded), with errno kept for ctypes.get_errno.
LIBC = ctypes.CDLL(None, use_errno=True)


def libc_function(
    name: str, argtypes: Sequence[Any], restype: Any = ctypes.c_int
) -> Callable[..., int] | None:
    """The C library's function `name` with its signature set; None where it has none
    (another C library than glibc, another system than Linux)."""
    try:
        function = getattr(LIBC, name)
    except AttributeError:
        return None
    function.argtypes = list(argtypes)
    function.restype = restype
    found: Callable[..., int] = function
    return found
