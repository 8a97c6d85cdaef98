"""Split nested optimizer states into a JSON-able tree plus named numpy arrays, and back.

Optimizer states (declearn's `get_state()`, torch's `state_dict()`) mix numbers, strings,
lists, tuples, dicts with int keys, numpy arrays, torch tensors and declearn Vectors. They are
persisted (node disk, researcher checkpoints) as JSON for the tree and the caller's binary
array format for the arrays; no pickle. Non-JSON shapes are tagged with reserved keys:

- `{"__vector__": kind, "keys": [...], "arrays": [...]}`: a declearn Vector;
- `{"__array__": name}`, `{"__tensor__": name}`: a numpy array, a torch tensor;
- `{"__tuple__": [...]}`, `{"__set__": [...]}`: a tuple, a set;
- `{"__items__": [[key, value], ...]}`: a dict whose keys are not all plain strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from declearn.model.api import Vector

from common.errors import PayloadError
from common.optimizers.vectors import (
    VECTOR_KINDS,
    VectorKind,
    array_to_tensor,
    arrays_to_vector,
    check_vector_kind,
    tensor_to_array,
    vector_kind,
    vector_to_arrays,
)

__all__ = ["decode_state", "encode_state"]

_TAGS = ("__vector__", "__array__", "__tensor__", "__tuple__", "__set__", "__items__")


class _Encoder:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.arrays: dict[str, np.ndarray] = {}

    def add_array(self, array: np.ndarray) -> str:
        name = f"{self.prefix}/{len(self.arrays)}"
        self.arrays[name] = array
        return name

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Vector):
            coefs = vector_to_arrays(value)
            return {
                "__vector__": vector_kind(value),
                "keys": list(coefs),
                "arrays": [self.add_array(array) for array in coefs.values()],
            }
        if isinstance(value, np.ndarray):
            return {"__array__": self.add_array(value)}
        if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
            return {"__tensor__": self.add_array(tensor_to_array(value))}
        if isinstance(value, list):
            return [self.encode(item) for item in value]
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(item) for item in value]}
        if isinstance(value, set | frozenset):
            return {"__set__": [self.encode(item) for item in sorted(value, key=repr)]}
        if isinstance(value, Mapping):
            if all(isinstance(key, str) and not key.startswith("__") for key in value):
                return {key: self.encode(item) for key, item in value.items()}
            return {"__items__": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        raise PayloadError(
            f"cannot persist a {type(value).__name__} in an optimizer state: only numbers, "
            "strings, containers, numpy arrays, torch tensors and declearn Vectors are supported"
        )


def encode_state(state: Any, prefix: str = "state") -> tuple[Any, dict[str, np.ndarray]]:
    """Return (JSON-able tree, arrays named `{prefix}/{index}`) for a nested state."""
    encoder = _Encoder(prefix)
    return encoder.encode(state), encoder.arrays


def decode_state(
    tree: Any, arrays: Mapping[str, np.ndarray], vector_kind: VectorKind | None = None
) -> Any:
    """Rebuild a state from `encode_state`'s output.

    Vectors are rebuilt as `vector_kind` ('torch' or 'numpy') when given, else as the kind they
    were saved from. Arrays are copied, so `arrays` may be read-only views over a file.
    """
    if vector_kind is not None:
        check_vector_kind(vector_kind)
    return _decode(tree, arrays, vector_kind)


def _array(arrays: Mapping[str, np.ndarray], name: Any) -> np.ndarray:
    if not isinstance(name, str) or name not in arrays:
        raise PayloadError(f"optimizer state refers to array {name!r}, which was not saved with it")
    return arrays[name]


def _decode(tree: Any, arrays: Mapping[str, np.ndarray], kind: VectorKind | None) -> Any:
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, list):
        return [_decode(item, arrays, kind) for item in tree]
    if not isinstance(tree, Mapping):
        raise PayloadError(f"optimizer state holds an unexpected {type(tree).__name__}")
    tags = [tag for tag in _TAGS if tag in tree]
    if not tags:
        return {key: _decode(item, arrays, kind) for key, item in tree.items()}
    tag = tags[0]
    try:
        if tag == "__vector__":
            names = dict(zip(tree["keys"], tree["arrays"], strict=True))
            coefs = {key: _array(arrays, name) for key, name in names.items()}
            saved_kind = tree["__vector__"]
            if saved_kind not in VECTOR_KINDS:
                raise ValueError(f"unknown vector kind {saved_kind!r}")
            return arrays_to_vector(coefs, kind or saved_kind)
        if tag == "__array__":
            return np.array(_array(arrays, tree["__array__"]), copy=True)
        if tag == "__tensor__":
            return array_to_tensor(_array(arrays, tree["__tensor__"]))
        if tag == "__tuple__":
            return tuple(_decode(item, arrays, kind) for item in tree["__tuple__"])
        if tag == "__set__":
            return {_decode(item, arrays, kind) for item in tree["__set__"]}
        return {
            _hashable(_decode(k, arrays, kind)): _decode(v, arrays, kind)
            for k, v in tree["__items__"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"malformed {tag} entry in an optimizer state: {exc}") from exc


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
