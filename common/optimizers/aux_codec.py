"""Encode declearn AuxVars (and their SecAgg splits) as `AuxVars` protobuf messages plus arrays.

Any registered declearn `AuxVar` dataclass travels: each init field becomes an `AuxVarField`
whose value is a number, string, bool, None, list or set of strings, a small inline tensor,
a numpy array kept in the payload, or a Vector (`VectorRef`) whose coefficients are payload
arrays. Big arrays never enter the control message: `encode_*` return them separately, named
`{prefix}/{index}`, for the caller to put in the payload it uploads.

The receiver decodes Vectors into the class it trains with: `vector_kind="torch"` on torch
nodes, `"numpy"` on the researcher and scikit-learn nodes. Unknown AuxVar types, unknown
fields, missing arrays and malformed values raise `PayloadError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from declearn.model.api import Vector
from declearn.optimizer.modules import AuxVar
from declearn.utils import access_registered

from common.errors import ConfigurationError, PayloadError
from common.optimizers.vectors import (
    VectorKind,
    arrays_to_vector,
    check_vector_kind,
    vector_kind,
    vector_to_arrays,
)
from common.proto import fedloom_pb2 as pb

__all__ = [
    "INLINE_ARRAY_MAX_BYTES",
    "aux_var_class",
    "build_aux_var",
    "decode_aux_fields",
    "decode_aux_vars",
    "encode_aux_fields",
    "encode_aux_vars",
]

#: Arrays up to 1 KiB (128 float64 values) travel inline as a `Tensor`: below that, a payload
#: entry (manifest line plus 64-byte alignment padding) costs about as much as the data.
#: Vector coefficients always go to the payload, so a model-sized value never lands inline.
INLINE_ARRAY_MAX_BYTES = 1024

#: declearn registers AuxVar subclasses under this group name (see `AuxVar._group_key`).
_AUXVAR_GROUP = "AuxVar"

#: Array dtype kinds accepted from the wire: bool, signed/unsigned integers, floats.
_NUMERIC_KINDS = frozenset("biuf")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _ArraySink:
    """Collects payload arrays under unique names `{prefix}/{index}`."""

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ConfigurationError("the payload name prefix for aux-var arrays must not be empty")
        self.prefix = prefix
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, array: np.ndarray) -> str:
        name = f"{self.prefix}/{len(self.arrays)}"
        self.arrays[name] = array
        return name


# ------------------------------------------------------------------------- encoding


def encode_aux_vars(
    aux: Mapping[str, AuxVar], prefix: str = "aux"
) -> tuple[pb.AuxVars, dict[str, np.ndarray]]:
    """Encode `{module_aux_name: AuxVar}`; return the message and the arrays it references."""
    sink = _ArraySink(prefix)
    message = pb.AuxVars()
    for module, value in aux.items():
        if not isinstance(value, AuxVar) or not dataclasses.is_dataclass(value):
            raise PayloadError(
                f"aux var {module!r} is a {type(value).__name__}, not a declearn AuxVar dataclass"
            )
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        item = message.items.add(module=module, type=type(value).__name__)
        item.fields.extend(_encode_fields(fields, sink, f"aux var {module!r}"))
    return message, sink.arrays


def encode_aux_fields(
    fields: Mapping[str, Any], prefix: str
) -> tuple[list[pb.AuxVarField], dict[str, np.ndarray]]:
    """Encode loose fields, e.g. one side of `AuxVar.prepare_for_secagg()`.

    Use a distinct `prefix` per call when several results go in the same payload.
    """
    sink = _ArraySink(prefix)
    return _encode_fields(fields, sink, "aux fields"), sink.arrays


def _encode_fields(fields: Mapping[str, Any], sink: _ArraySink, where: str) -> list[pb.AuxVarField]:
    return [
        pb.AuxVarField(name=name, value=_encode_value(value, sink, f"{where} field {name!r}"))
        for name, value in fields.items()
    ]


def _encode_value(value: Any, sink: _ArraySink, where: str) -> pb.AuxValue:
    if value is None:
        return pb.AuxValue(none=True)
    if isinstance(value, bool | np.bool_):
        return pb.AuxValue(boolean=bool(value))
    if isinstance(value, int | np.integer):
        if not _INT64_MIN <= int(value) <= _INT64_MAX:
            raise PayloadError(f"{where}: integer {value} does not fit in 64 bits")
        return pb.AuxValue(integer=int(value))
    if isinstance(value, float | np.floating):
        return pb.AuxValue(number=float(value))
    if isinstance(value, str):
        return pb.AuxValue(text=value)
    if isinstance(value, Vector):
        coefs = vector_to_arrays(value)
        ref = pb.VectorRef(
            kind=vector_kind(value),
            keys=list(coefs),
            arrays=[sink.add(_checked_array(array, where)) for array in coefs.values()],
        )
        return pb.AuxValue(vector=ref)
    if isinstance(value, np.ndarray):
        array = _checked_array(value, where)
        if array.nbytes <= INLINE_ARRAY_MAX_BYTES:
            return pb.AuxValue(tensor=_to_tensor(array))
        return pb.AuxValue(array=sink.add(array))
    if isinstance(value, set | frozenset | list | tuple) and all(isinstance(v, str) for v in value):
        if isinstance(value, set | frozenset):
            return pb.AuxValue(string_set=pb.StringList(items=sorted(value)))
        return pb.AuxValue(string_list=pb.StringList(items=list(value)))
    raise PayloadError(
        f"{where}: cannot encode a {type(value).__name__}; aux-var fields may hold numbers, "
        "strings, bools, None, lists or sets of strings, numpy arrays and declearn Vectors"
    )


def _checked_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise PayloadError(f"{where}: arrays must be numeric, got dtype {array.dtype}")
    return array


def _to_tensor(array: np.ndarray) -> pb.Tensor:
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(dtype=little.dtype.str, shape=list(array.shape), data=little.tobytes())


# ------------------------------------------------------------------------- decoding


def aux_var_class(type_name: str) -> type[AuxVar]:
    """Return the declearn AuxVar class registered as `type_name` ('ScaffoldAuxVar')."""
    try:
        cls = access_registered(type_name, group=_AUXVAR_GROUP)
    except (KeyError, TypeError) as exc:
        raise PayloadError(
            f"unknown aux-var type {type_name!r}: the sender uses an optimizer module this side "
            "does not have (check both sides run the same fedloom and declearn versions)"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, AuxVar)):
        raise PayloadError(f"{type_name!r} is registered but is not a declearn AuxVar class")
    return cls


def build_aux_var(type_name: str, fields: Mapping[str, Any]) -> AuxVar:
    """Instantiate the AuxVar registered as `type_name` from decoded fields.

    Also rebuilds an AuxVar from the two parts of `prepare_for_secagg()` after unmasking:
    `build_aux_var(type_name, {**secure_fields, **clear_fields})`.
    """
    cls = aux_var_class(type_name)
    allowed = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise PayloadError(
            f"{type_name} has no field(s) {unknown}; its fields are {sorted(allowed)}"
        )
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"invalid {type_name} content: {exc}") from exc


def decode_aux_vars(
    message: pb.AuxVars, arrays: Mapping[str, np.ndarray], vector_kind: VectorKind
) -> dict[str, AuxVar]:
    """Decode an `AuxVars` message, taking referenced arrays from `arrays` (copied)."""
    check_vector_kind(vector_kind)
    decoded: dict[str, AuxVar] = {}
    for item in message.items:
        if not item.module:
            raise PayloadError("an aux var in the message has no module name")
        if item.module in decoded:
            raise PayloadError(f"aux var {item.module!r} appears twice in the message")
        fields = decode_aux_fields(item.fields, arrays, vector_kind)
        decoded[item.module] = build_aux_var(item.type, fields)
    return decoded


def decode_aux_fields(
    fields: Iterable[pb.AuxVarField], arrays: Mapping[str, np.ndarray], vector_kind: VectorKind
) -> dict[str, Any]:
    """Decode loose fields encoded by `encode_aux_fields` (or one AuxVar's fields)."""
    check_vector_kind(vector_kind)
    decoded: dict[str, Any] = {}
    for field in fields:
        if not field.name:
            raise PayloadError("an aux-var field has no name")
        if field.name in decoded:
            raise PayloadError(f"aux-var field {field.name!r} appears twice")
        decoded[field.name] = _decode_value(field.value, arrays, vector_kind, field.name)
    return decoded


def _decode_value(
    value: pb.AuxValue, arrays: Mapping[str, np.ndarray], kind: VectorKind, name: str
) -> Any:
    which = value.WhichOneof("kind")
    if which is None:
        raise PayloadError(f"aux-var field {name!r} carries no value")
    if which == "none":
        return None
    if which in ("number", "integer", "text", "boolean"):
        return getattr(value, which)
    if which == "string_list":
        return list(value.string_list.items)
    if which == "string_set":
        return set(value.string_set.items)
    if which == "tensor":
        return _from_tensor(value.tensor, name)
    if which == "array":
        return np.array(_payload_array(arrays, value.array, name), copy=True)
    if which == "masked_array" or value.vector.masked:
        raise PayloadError(
            f"aux-var field {name!r} is SecAgg-masked: only the secure aggregation of a round "
            "can read it"
        )
    return _decode_vector(value.vector, arrays, kind, name)


def _payload_array(arrays: Mapping[str, np.ndarray], array_name: str, name: str) -> np.ndarray:
    if array_name not in arrays:
        raise PayloadError(
            f"aux-var field {name!r} refers to payload array {array_name!r}, which the "
            "payload does not contain"
        )
    array = np.asarray(arrays[array_name])
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise PayloadError(f"payload array {array_name!r} has non-numeric dtype {array.dtype}")
    return array


def _decode_vector(
    ref: pb.VectorRef, arrays: Mapping[str, np.ndarray], kind: VectorKind, name: str
) -> Vector[Any]:
    if ref.kind not in ("numpy", "torch"):
        raise PayloadError(f"aux-var field {name!r} is a vector of unknown kind {ref.kind!r}")
    if len(ref.keys) != len(ref.arrays):
        raise PayloadError(
            f"aux-var field {name!r}: vector has {len(ref.keys)} keys but {len(ref.arrays)} arrays"
        )
    if len(set(ref.keys)) != len(ref.keys):
        raise PayloadError(f"aux-var field {name!r}: vector has duplicate keys")
    coefs = {
        key: _payload_array(arrays, array_name, name)
        for key, array_name in zip(ref.keys, ref.arrays, strict=True)
    }
    return arrays_to_vector(coefs, kind)


def _from_tensor(tensor: pb.Tensor, name: str) -> np.ndarray:
    try:
        dtype = np.dtype(tensor.dtype)
    except (TypeError, ValueError, SyntaxError) as exc:  # numpy parses some strings as code
        raise PayloadError(f"aux-var field {name!r} has unknown dtype {tensor.dtype!r}") from exc
    if dtype.kind not in _NUMERIC_KINDS:
        raise PayloadError(f"aux-var field {name!r} has non-numeric dtype {tensor.dtype!r}")
    shape = tuple(int(dim) for dim in tensor.shape)
    if any(dim < 0 for dim in shape):
        raise PayloadError(f"aux-var field {name!r} has a negative dimension in {shape}")
    # Python integers: an int64 product could wrap around to match a short buffer.
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(tensor.data):
        raise PayloadError(
            f"aux-var field {name!r}: {len(tensor.data)} bytes for shape {shape} of {dtype} "
            f"(expected {expected})"
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)
