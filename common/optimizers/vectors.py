"""Convert declearn Vectors (NumpyVector, TorchVector) to and from named numpy arrays.

torch is imported only when a TorchVector is built, so the researcher (numpy only) does not
pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from declearn.model.api import Vector
from declearn.model.sklearn import NumpyVector

from common.errors import ConfigurationError, PayloadError

__all__ = [
    "VECTOR_KINDS",
    "VectorKind",
    "array_to_tensor",
    "arrays_to_vector",
    "check_vector_kind",
    "tensor_to_array",
    "vector_kind",
    "vector_to_arrays",
]

VectorKind = Literal["numpy", "torch"]

#: The Vector classes aux vars and optimizer states can be decoded into.
VECTOR_KINDS: tuple[str, ...] = ("numpy", "torch")

#: numpy dtype kinds allowed in vectors: booleans, integers and floats (no objects or strings).
_NUMERIC_KINDS = frozenset("biuf")


def check_vector_kind(kind: str) -> VectorKind:
    """Return `kind` if it names a supported Vector class, else raise ConfigurationError."""
    if kind not in VECTOR_KINDS:
        raise ConfigurationError(
            f"unknown vector kind {kind!r}: use 'torch' on torch nodes and 'numpy' elsewhere"
        )
    return kind  # type: ignore[return-value]


def vector_kind(vector: Vector[Any]) -> VectorKind:
    """Name the Vector class of `vector`: 'numpy' or 'torch'."""
    if isinstance(vector, NumpyVector):
        return "numpy"
    if type(vector).__name__ == "TorchVector":
        return "torch"
    raise PayloadError(
        f"cannot encode a {type(vector).__name__}: only NumpyVector and TorchVector are supported"
    )


def tensor_to_array(tensor: Any) -> np.ndarray:
    """Copy a torch tensor to a CPU numpy array of the same dtype."""
    try:
        return np.asarray(tensor.detach().cpu().numpy())
    except TypeError as exc:
        raise PayloadError(
            f"cannot convert a torch tensor of dtype {tensor.dtype} to numpy ({exc}): "
            "use float32 or float64 parameters"
        ) from exc


def array_to_tensor(array: np.ndarray) -> Any:
    """Copy a numpy array into a new (writable, native byte order) CPU torch tensor."""
    import torch

    return torch.from_numpy(_native_copy(array))


def vector_to_arrays(vector: Vector[Any]) -> dict[str, np.ndarray]:
    """Return the coefficients of a Vector as numpy arrays, in the Vector's key order."""
    kind = vector_kind(vector)
    if kind == "torch":
        return {key: tensor_to_array(value) for key, value in vector.coefs.items()}
    return {key: np.asarray(value) for key, value in vector.coefs.items()}


def arrays_to_vector(arrays: Mapping[str, np.ndarray], kind: VectorKind) -> Vector[Any]:
    """Build a Vector of class `kind` holding copies of `arrays` (safe to mutate)."""
    check_vector_kind(kind)
    for key, array in arrays.items():
        if np.asarray(array).dtype.kind not in _NUMERIC_KINDS:
            raise PayloadError(f"vector coefficient {key!r} has non-numeric dtype {array.dtype}")
    if kind == "torch":
        from declearn.model.torch import TorchVector

        return TorchVector({key: array_to_tensor(array) for key, array in arrays.items()})
    return NumpyVector({key: _native_copy(array) for key, array in arrays.items()})


def _native_copy(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    dtype = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
    return np.array(array, dtype=dtype, copy=True, order="C")
