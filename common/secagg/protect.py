"""What a node sends under SecAgg: masked weighted parameters, masked aux-var sums, clear rest.

Array names in the reply payload:
- ``secagg/param/<name>``: ``n_samples * parameter``, masked (when parameters are protected);
- ``secagg/n_samples``: the node's sample count, masked (same condition);
- ``secagg/aux/<module>/<field>[/<key>]``: the summable fields of each aux var
  (``AuxVar.prepare_for_secagg()``), masked; the aux-var message references them;
- anything else travels in clear (clear aux-var fields such as Scaffold's client set).
The masked payload names (without the ``secagg/`` prefix) are what NodeMasker masks and what
the researcher's SecureSum sums.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from common.errors import SecaggError
from common.proto import fedloom_pb2 as pb
from common.secagg.node_masker import NodeMasker

__all__ = ["MASKED_PREFIX", "N_SAMPLES_NAME", "context_settings", "protect_node_reply"]

MASKED_PREFIX = "secagg/"
N_SAMPLES_NAME = "n_samples"


def context_settings(context: pb.SecaggContext) -> Any:
    """The SecureAggregation settings a SecaggContext carries."""
    from common.secagg.settings import SecureAggregation

    return SecureAggregation(
        clip=context.clip,
        fraction_bits=int(context.fraction_bits),
        protect_parameters=context.protect_parameters,
    )


def _mask(masker: NodeMasker, arrays: dict[str, np.ndarray], name: str, values: Any) -> str:
    arrays[MASKED_PREFIX + name] = masker.mask(name, np.asarray(values, dtype=np.float64))
    return MASKED_PREFIX + name


def protect_node_reply(
    masker: NodeMasker,
    params: Mapping[str, np.ndarray],
    n_samples: int,
    aux: Mapping[str, Any],
    *,
    protect_parameters: bool,
) -> tuple[dict[str, np.ndarray], pb.AuxVars]:
    """Mask this node's reply; returns the payload arrays and the aux-var message."""
    from declearn.model.api import Vector

    from common.optimizers.aux_codec import encode_aux_fields
    from common.optimizers.vectors import vector_kind, vector_to_arrays

    arrays: dict[str, np.ndarray] = {}
    if protect_parameters:
        for name, value in params.items():
            _mask(masker, arrays, f"param/{name}", n_samples * np.asarray(value, dtype=np.float64))
        _mask(masker, arrays, N_SAMPLES_NAME, np.array([float(n_samples)]))
    else:
        arrays.update({f"param/{name}": value for name, value in params.items()})
    message = pb.AuxVars()
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
        arrays.update(clear_arrays)
        for field, field_value in secure.items():
            base = f"aux/{module}/{field}"
            if isinstance(field_value, Vector):
                coefs = vector_to_arrays(field_value)
                names = [
                    _mask(masker, arrays, f"{base}/{key}", coef) for key, coef in coefs.items()
                ]
                ref = pb.VectorRef(kind=vector_kind(field_value), keys=list(coefs), arrays=names)
                item.fields.add(name=field, value=pb.AuxValue(vector=ref))
            elif isinstance(field_value, int | float | np.number | np.ndarray):
                item.fields.add(
                    name=field, value=pb.AuxValue(array=_mask(masker, arrays, base, field_value))
                )
            else:
                raise SecaggError(
                    f"aux var {module!r} field {field!r} is a {type(field_value).__name__}, which "
                    "cannot be masked: only numbers, arrays and Vectors are securely summable"
                )
    return arrays, message
