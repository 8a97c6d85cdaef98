"""One node's masked reply, validated whole before anything of it is kept.

Array names follow :mod:`common.secagg.protect`: ``secagg/<payload>`` for masked payloads,
anything else in clear (clear aux-var fields); the aux-var message says which fields of each
module are masked (they reference ``secagg/...`` arrays) and which are clear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import FedloomError, PayloadError, SecaggError
from common.optimizers.aux_codec import aux_var_class, decode_aux_fields
from common.proto import fedloom_pb2 as pb
from common.secagg.payload import as_masked
from common.secagg.protect import MASKED_PREFIX, N_SAMPLES_NAME

__all__ = ["AuxLayout", "MaskedUpload", "merge_clear_fields", "parse_masked_upload"]


@dataclass(frozen=True)
class AuxLayout:
    """One module's aux var: its type, masked fields (by reference) and decoded clear fields."""

    type_name: str
    secure: dict[str, pb.AuxValue]
    clear: dict[str, Any]


@dataclass(frozen=True)
class MaskedUpload:
    """A validated masked reply: uint64 arrays by payload name and the aux-var layout."""

    masked: dict[str, np.ndarray]
    aux: dict[str, AuxLayout]


def parse_masked_upload(
    label: str,
    arrays: Mapping[str, np.ndarray],
    aux_vars: pb.AuxVars,
    *,
    protect_parameters: bool,
    reference: MaskedUpload | None,
) -> MaskedUpload:
    """Check one node's masked reply against the settings and the first accepted reply.

    Raises SecaggError or PayloadError naming the node (``label``); returns nothing partial.
    """
    masked = {
        name[len(MASKED_PREFIX) :]: array
        for name, array in arrays.items()
        if name.startswith(MASKED_PREFIX)
    }
    if protect_parameters and N_SAMPLES_NAME not in masked:
        raise SecaggError(
            f"node {label} sent its update without SecAgg masks although parameter protection "
            "is on: refusing it."
        )
    if reference is not None and set(masked) != set(reference.masked):
        diff = sorted(set(masked) ^ set(reference.masked))[:5]
        raise SecaggError(
            f"node {label} masked payloads {diff} that other nodes did not (or the reverse): all "
            "nodes must run the same plan and optimizer."
        )
    checked = {}
    for name, array in masked.items():
        shape = None if reference is None else reference.masked[name].shape
        checked[name] = as_masked(array, node_id=label, name=name, shape=shape)
    aux = {}
    for item in aux_vars.items:
        secure = {f.name: f.value for f in item.fields if _is_masked(f.value)}
        missing = sorted(
            ref for value in secure.values() for ref in _references(value) if ref not in masked
        )
        if missing:
            raise SecaggError(
                f"node {label}: aux var {item.module!r} references missing {missing}."
            )
        try:
            clear = decode_aux_fields(
                [f for f in item.fields if not _is_masked(f.value)], arrays, "numpy"
            )
            aux_var_class(item.type)
        except FedloomError as err:
            raise PayloadError(f"node {label}: aux var {item.module!r}: {err}") from err
        aux[item.module] = AuxLayout(item.type, secure, clear)
    if reference is not None:
        for module in set(aux) | set(reference.aux):
            mine, first = aux.get(module), reference.aux.get(module)
            if (
                mine is None
                or first is None
                or mine.type_name != first.type_name
                or set(mine.secure) != set(first.secure)
                or set(mine.clear) != set(first.clear)
            ):
                raise SecaggError(
                    f"node {label} sent a different kind of aux var {module!r} than other nodes: "
                    "all nodes must run the same optimizer."
                )
    return MaskedUpload(checked, aux)


def merge_clear_fields(layouts: list[AuxLayout]) -> dict[str, Any]:
    """Aggregate the clear fields of one module over nodes with declearn's own rules."""
    first = layouts[0]
    agg_cls = aux_var_class(first.type_name)
    default = agg_cls.default_aggregate
    merged = dict(first.clear)
    for layout in layouts[1:]:
        merged = {
            key: getattr(agg_cls, f"aggregate_{key}", default)(value, layout.clear[key])
            for key, value in merged.items()
        }
    return merged


def _references(value: pb.AuxValue) -> list[str]:
    if value.WhichOneof("kind") == "vector":
        return [a[len(MASKED_PREFIX) :] for a in value.vector.arrays]
    return [value.array[len(MASKED_PREFIX) :]]


def _is_masked(value: pb.AuxValue) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "vector":
        return any(a.startswith(MASKED_PREFIX) for a in value.vector.arrays)
    return kind == "array" and value.array.startswith(MASKED_PREFIX)
