"""What a node sends under SecAgg: masked weighted parameters, masked aux-var sums, clear rest.

Payload sections of a protected reply (`pb.PayloadSection`):
- SECAGG_PARAMS, by parameter name: ``n_samples * parameter``, masked (when parameters are
  protected; otherwise the parameters travel in clear in PARAMS);
- SECAGG_SUMS: ``n_samples`` (the node's sample count, masked, same condition) and the
  summable fields of each aux var (``AuxVar.prepare_for_secagg()``), masked, named
  ``<module>/<field>[/<key>]``; the aux-var message references them as masked values;
- AUX: the clear aux-var fields (e.g. Scaffold's client set).
A masked array's label, `mask_label(section, name)`, is what NodeMasker masks and what the
researcher's SecureSum sums and asks corrections for: both sides derive it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from declearn.model.api import Vector

from common.errors import SecaggError
from common.optimizers.aux_codec import encode_aux_fields
from common.optimizers.vectors import vector_kind, vector_to_arrays
from common.payload import Section, Sections
from common.proto import fedloom_pb2 as pb
from common.secagg.settings import SecureAggregation

__all__ = [
    "MASKED_SECTIONS",
    "N_SAMPLES_NAME",
    "PayloadMasker",
    "context_settings",
    "mask_label",
    "protect_node_reply",
]

#: Name of the masked sample count in the SECAGG_SUMS section.
N_SAMPLES_NAME = "n_samples"

#: The sections whose arrays are masked, and the label prefix of each.
MASKED_SECTIONS: dict[Section, str] = {
    pb.PAYLOAD_SECTION_SECAGG_PARAMS: "params",
    pb.PAYLOAD_SECTION_SECAGG_SUMS: "sums",
}


class PayloadMasker(Protocol):
    """Masks one labelled payload once (NodeMasker, or DoubleMasker under double masking)."""

    def mask(self, name: str, values: np.ndarray) -> np.ndarray:
        """The masked uint64 array of ``values``."""
        ...


def mask_label(section: Section, name: str) -> str:
    """The label a masked array is masked, summed and corrected under (both sides)."""
    try:
        return f"{MASKED_SECTIONS[section]}/{name}"
    except KeyError:
        raise SecaggError(f"section {section} holds no masked arrays") from None


def context_settings(context: pb.SecaggContext) -> SecureAggregation:
    """The SecureAggregation settings a SecaggContext carries."""
    return SecureAggregation(
        clip=context.clip,
        fraction_bits=int(context.fraction_bits),
        protect_parameters=context.protect_parameters,
    )


class _MaskedSink:
    """Masks values into the two masked sections under their shared labels."""

    def __init__(self, masker: PayloadMasker) -> None:
        self.masker = masker
        self.sections: dict[Section, dict[str, np.ndarray]] = {
            section: {} for section in MASKED_SECTIONS
        }

    def add(self, section: Section, name: str, values: Any) -> str:
        label = mask_label(section, name)
        self.sections[section][name] = self.masker.mask(label, np.asarray(values, dtype=np.float64))
        return name


def protect_node_reply(
    masker: PayloadMasker,
    params: Mapping[str, np.ndarray],
    n_samples: int,
    aux: Mapping[str, Any],
    *,
    protect_parameters: bool,
) -> tuple[Sections, pb.AuxVars]:
    """Mask this node's reply; returns the payload sections and the aux-var message."""
    sink = _MaskedSink(masker)
    clear_params: dict[str, np.ndarray] = {}
    if protect_parameters:
        for name, value in params.items():
            weighted = n_samples * np.asarray(value, dtype=np.float64)
            sink.add(pb.PAYLOAD_SECTION_SECAGG_PARAMS, name, weighted)
        sink.add(pb.PAYLOAD_SECTION_SECAGG_SUMS, N_SAMPLES_NAME, np.array([float(n_samples)]))
    else:
        clear_params = dict(params)
    clear_aux: dict[str, np.ndarray] = {}
    message = pb.AuxVars()
    sums = pb.PAYLOAD_SECTION_SECAGG_SUMS
    for module, value in aux.items():
        try:
            secure, clear = value.prepare_for_secagg()
        except NotImplementedError as exc:
            raise SecaggError(
                f"aux var {module!r} ({type(value).__name__}) cannot be securely aggregated: {exc}. "
                "Turn SecAgg off or use another optimizer module."
            ) from exc
        item = message.items.add(module=module, type=type(value).__name__)
        fields, clear_arrays = encode_aux_fields(clear or {}, prefix=f"aux/{module}")
        item.fields.extend(fields)
        clear_aux.update(clear_arrays)
        for field, field_value in secure.items():
            base = f"{module}/{field}"
            if isinstance(field_value, Vector):
                coefs = vector_to_arrays(field_value)
                names = [sink.add(sums, f"{base}/{key}", coef) for key, coef in coefs.items()]
                ref = pb.VectorRef(
                    kind=vector_kind(field_value), keys=list(coefs), arrays=names, masked=True
                )
                item.fields.add(name=field, value=pb.AuxValue(vector=ref))
            elif isinstance(field_value, int | float | np.number | np.ndarray):
                masked = sink.add(sums, base, field_value)
                item.fields.add(name=field, value=pb.AuxValue(masked_array=masked))
            else:
                raise SecaggError(
                    f"aux var {module!r} field {field!r} is a {type(field_value).__name__}, which "
                    "cannot be masked: only numbers, arrays and Vectors are securely summable"
                )
    sections: dict[Section, Mapping[str, np.ndarray]] = {
        pb.PAYLOAD_SECTION_PARAMS: clear_params,
        pb.PAYLOAD_SECTION_AUX: clear_aux,
        **sink.sections,
    }
    return {k: v for k, v in sections.items() if v}, message
