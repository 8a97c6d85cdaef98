"""The researcher's side of secure aggregation for one round: keys out, masked sums in.

The researcher relays every participant's X25519 public key with the train request, adds the
masked payloads it receives (it never sees one node's values), asks survivors for dropout
corrections when nodes vanish after the keys were sent, and unmasks only the sums: the
weighted parameter sum, the total sample count and the summable aux-var fields. Clear
aux-var fields (e.g. Scaffold's client set) are aggregated with declearn's own rules.
See common/secagg/__init__.py for the protocol and the threat model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ConfigurationError, RoundFailedError, SecaggError
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation, SecureSum, new_session_id
from common.secagg.protect import MASKED_PREFIX, N_SAMPLES_NAME
from researcher.node_directory import ConnectedNode

__all__ = ["SecureRound", "SecureRoundResult"]

log = logging.getLogger(__name__)

#: Length of a raw X25519 public key.
PUBLIC_KEY_BYTES = 32


@dataclass
class SecureRoundResult:
    """What the round reveals: sums only."""

    param_sums: dict[str, np.ndarray] | None  # None when parameters travel in clear
    total_samples: float | None
    aux: dict[str, Any] = field(default_factory=dict)


@dataclass
class _AuxLayout:
    type_name: str
    clear: dict[str, Any] | None = None  # aggregated clear fields
    secure: dict[str, pb.AuxValue] = field(default_factory=dict)  # field -> value referencing sums


class SecureRound:
    """SecAgg state of one round: participants, their masked sums, aux-var layout."""

    def __init__(
        self,
        settings: SecureAggregation,
        experiment_id: str,
        round_number: int,
        nodes: Sequence[ConnectedNode],
    ) -> None:
        missing = [n.label for n in nodes if len(n.secagg_public_key) != PUBLIC_KEY_BYTES]
        if missing:
            raise ConfigurationError(
                f"SecAgg is on but node(s) {missing} announced no SecAgg public key: upgrade them "
                "to this fedloom version or turn SecAgg off"
            )
        settings.check_participants(len(nodes))
        self.settings = settings
        self.session_id = new_session_id(experiment_id, round_number)
        self.nodes = {n.node_id: n for n in nodes}
        self._sum = SecureSum(self.session_id, list(self.nodes), settings)
        self._masked_names: set[str] = set()
        self._aux: dict[str, _AuxLayout] = {}
        self._clear_params_seen = False

    def context(self) -> pb.SecaggContext:
        """The SecaggContext every participant receives (same for all)."""
        return pb.SecaggContext(
            enabled=True,
            peers=[
                pb.SecaggPeer(node_id=n.node_id, public_key=n.secagg_public_key)
                for n in self.nodes.values()
            ],
            clip=self.settings.clip,
            fraction_bits=self.settings.fraction_bits,
            protect_parameters=self.settings.protect_parameters,
            session_id=self.session_id,
        )

    def add_reply(
        self, node_id: str, arrays: Mapping[str, np.ndarray], aux_vars: pb.AuxVars
    ) -> None:
        """Fold one node's masked payloads into the sums and note its clear aux fields."""
        names = {k[len(MASKED_PREFIX) :] for k in arrays if k.startswith(MASKED_PREFIX)}
        if self.settings.protect_parameters and N_SAMPLES_NAME not in names:
            raise SecaggError(
                f"node {self.nodes[node_id].label} sent its update without SecAgg masks although "
                "parameter protection is on: refusing it"
            )
        if self._masked_names and names != self._masked_names:
            raise SecaggError(
                f"node {self.nodes[node_id].label} masked payloads {sorted(names ^ self._masked_names)[:5]} "
                "that other nodes did not (or the reverse): all nodes must run the same plan and optimizer"
            )
        self._masked_names = names
        for name in sorted(names):
            self._sum.add(node_id, name, arrays[MASKED_PREFIX + name])
        self._add_aux(aux_vars, arrays)

    def _add_aux(self, aux_vars: pb.AuxVars, arrays: Mapping[str, np.ndarray]) -> None:
        from common.optimizers.aux_codec import aux_var_class, decode_aux_fields

        for item in aux_vars.items:
            secure = {f.name: f.value for f in item.fields if _is_masked(f.value)}
            clear_fields = [f for f in item.fields if not _is_masked(f.value)]
            clear = decode_aux_fields(clear_fields, arrays, "numpy")
            layout = self._aux.get(item.module)
            if layout is None:
                self._aux[item.module] = _AuxLayout(item.type, clear, secure)
                continue
            if layout.type_name != item.type or set(layout.secure) != set(secure):
                raise SecaggError(
                    f"nodes sent different kinds of aux var {item.module!r}; all nodes must run the same optimizer"
                )
            agg_cls = aux_var_class(item.type)
            default = agg_cls.default_aggregate
            assert layout.clear is not None
            layout.clear = {
                key: getattr(agg_cls, f"aggregate_{key}", default)(value, clear[key])
                for key, value in layout.clear.items()
            }

    def masked_names(self) -> list[str]:
        return sorted(self._masked_names)

    def declare_dropped(self, failed: Sequence[str]) -> list[ConnectedNode]:
        """Fix the dropped set; returns the survivors to ask for corrections."""
        survivors = self._sum.declare_dropped(failed)
        return [self.nodes[n] for n in survivors]

    def add_correction(self, node_id: str, arrays: Mapping[str, np.ndarray]) -> None:
        for name in self._masked_names:
            if name not in arrays:
                raise SecaggError(
                    f"node {self.nodes[node_id].label} sent no dropout correction for {name!r}"
                )
            self._sum.add_correction(node_id, name, arrays[name])

    def result(self, dtypes: Mapping[str, np.dtype] | None = None) -> SecureRoundResult:
        """Unmask the sums (only valid once every survivor delivered or corrected).

        `dtypes` maps parameter names to their dtype, so aux-var vectors keyed like the
        parameters come back in the same dtype (sums are computed in float64).
        """
        dtypes = dtypes or {}
        from common.optimizers.aux_codec import build_aux_var
        from common.optimizers.vectors import arrays_to_vector

        param_sums = None
        total = None
        if self.settings.protect_parameters:
            param_sums = {
                name[len("param/") :]: self._sum.result(name)
                for name in self._masked_names
                if name.startswith("param/")
            }
            total = float(self._sum.result(N_SAMPLES_NAME).reshape(-1)[0])
            if total <= 0:
                raise RoundFailedError(f"the securely summed sample count is {total}; expected > 0")
        aux = {}
        for module, layout in self._aux.items():
            fields = dict(layout.clear or {})
            for name, value in layout.secure.items():
                if value.WhichOneof("kind") == "vector":
                    coefs = {
                        key: self._sum.result(array[len(MASKED_PREFIX) :]).astype(
                            dtypes.get(key, np.float64)
                        )
                        for key, array in zip(value.vector.keys, value.vector.arrays, strict=True)
                    }
                    fields[name] = arrays_to_vector(coefs, "numpy")
                else:
                    summed = self._sum.result(value.array[len(MASKED_PREFIX) :])
                    fields[name] = float(summed) if summed.ndim == 0 else summed
            aux[module] = build_aux_var(layout.type_name, fields)
        return SecureRoundResult(param_sums, total, aux)


def _is_masked(value: pb.AuxValue) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "vector":
        return any(a.startswith(MASKED_PREFIX) for a in value.vector.arrays)
    return kind == "array" and value.array.startswith(MASKED_PREFIX)


def check_secagg_configuration(settings: SecureAggregation, aggregator: Any) -> None:
    """SecAgg sums, so only FedAverage (a weighted sum) can aggregate protected parameters."""
    from researcher.aggregators import FedAverage

    if settings.protect_parameters and not isinstance(aggregator, FedAverage):
        raise ConfigurationError(
            f"SecAgg with protected parameters needs the FedAverage aggregator, not "
            f"{type(aggregator).__name__}: use FedAverage() or SecureAggregation(protect_parameters=False)"
        )
