"""One node's masked reply, validated whole before anything of it is kept.

The reply's sections follow :mod:`common.secagg.protect`: SECAGG_PARAMS and SECAGG_SUMS hold
masked arrays, known here by their mask label (``mask_label(section, name)``, the payload
name both sides derive seeds from); AUX holds the clear aux-var fields; the aux-var message
marks each field masked (``masked_array``, ``VectorRef.masked``) or clear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import FedloomError, PayloadError, SecaggError
from common.optimizers.aux_codec import aux_var_class, decode_aux_fields
from common.payload import Section
from common.proto import fedloom_pb2 as pb
from common.secagg.payload import as_masked
from common.secagg.protect import MASKED_SECTIONS, N_SAMPLES_NAME, mask_label

__all__ = [
    "N_SAMPLES_LABEL",
    "AuxLayout",
    "MaskedUpload",
    "merge_clear_fields",
    "parse_masked_upload",
    "sums_label",
]


def sums_label(name: str) -> str:
    """The mask label of an array of the SECAGG_SUMS section (aux fields, sample count)."""
    return mask_label(pb.PAYLOAD_SECTION_SECAGG_SUMS, name)


#: The mask label of the masked sample count.
N_SAMPLES_LABEL = sums_label(N_SAMPLES_NAME)


@dataclass(frozen=True)
class AuxLayout:
    """One module's aux var: its type, masked fields (by reference) and decoded clear fields."""

    type_name: str
    secure: dict[str, pb.AuxValue]
    clear: dict[str, Any]


@dataclass(frozen=True)
class MaskedUpload:
    """A validated masked reply: uint64 arrays by mask label, parameter names by label, and
    the aux-var layout."""

    masked: dict[str, np.ndarray]
    params: dict[str, str]
    aux: dict[str, AuxLayout]


def parse_masked_upload(
    label: str,
    sections: Mapping[Section, Mapping[str, np.ndarray]],
    aux_vars: pb.AuxVars,
    *,
    protect_parameters: bool,
    reference: MaskedUpload | None,
) -> MaskedUpload:
    """Check one node's masked reply against the settings and the first accepted reply.

    Raises SecaggError or PayloadError naming the node (``label``); returns nothing partial.
    """
    masked = {
        mask_label(section, name): array
        for section in MASKED_SECTIONS
        for name, array in sections.get(section, {}).items()
    }
    params = {
        mask_label(pb.PAYLOAD_SECTION_SECAGG_PARAMS, name): name
        for name in sections.get(pb.PAYLOAD_SECTION_SECAGG_PARAMS, {})
    }
    if protect_parameters and N_SAMPLES_LABEL not in masked:
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
    aux_arrays = sections.get(pb.PAYLOAD_SECTION_AUX, {})
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
                [f for f in item.fields if not _is_masked(f.value)], aux_arrays, "numpy"
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
    return MaskedUpload(checked, params, aux)


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
    """The mask labels a masked aux-var field refers to."""
    if value.WhichOneof("kind") == "vector":
        return [sums_label(a) for a in value.vector.arrays]
    return [sums_label(value.masked_array)]


def _is_masked(value: pb.AuxValue) -> bool:
    kind = value.WhichOneof("kind")
    return kind == "masked_array" or (kind == "vector" and value.vector.masked)
