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
from declearn.optimizer.modules import AuxVar

from common.errors import ConfigurationError, PayloadError, RoundFailedError, SecaggError
from common.optimizers.aux_codec import aux_var_class, build_aux_var, decode_aux_fields
from common.optimizers.vectors import arrays_to_vector
from common.payload import Section
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation, SecureSum, new_session_id
from common.secagg.payload import as_masked
from common.secagg.protect import MASKED_SECTIONS, N_SAMPLES_NAME, mask_label
from researcher.aggregators import Aggregator
from researcher.rounds.exchange import Exchange, NodeView

__all__ = ["SecureRound", "SecureRoundResult", "check_secagg_configuration"]

log = logging.getLogger(__name__)

#: Length of a raw X25519 public key.
PUBLIC_KEY_BYTES = 32


@dataclass
class SecureRoundResult:
    """What the round reveals: sums only."""

    param_sums: dict[str, np.ndarray] | None  # None when parameters travel in clear
    total_samples: float | None
    aux: dict[str, AuxVar] = field(default_factory=dict)


@dataclass
class _AuxLayout:
    type_name: str
    clear: dict[str, Any] | None = None  # aggregated clear fields
    secure: dict[str, pb.AuxValue] = field(default_factory=dict)  # field -> value referencing sums


@dataclass(frozen=True)
class PreparedReply:
    """A masked reply checked whole by `SecureRound.prepare_reply`, ready to fold."""

    node_id: str
    masked: dict[str, np.ndarray]  # mask label -> masked array
    param_labels: dict[str, str]  # mask label -> parameter name
    aux_layout: dict[str, _AuxLayout]


class SecureRound:
    """SecAgg state of one round: participants, their masked sums, aux-var layout."""

    def __init__(
        self,
        settings: SecureAggregation,
        experiment_id: str,
        round_number: int,
        nodes: Sequence[NodeView],
    ) -> None:
        missing = [n.label for n in nodes if len(n.secagg_public_key) != PUBLIC_KEY_BYTES]
        if missing:
            raise ConfigurationError(
                f"SecAgg is on but node(s) {missing} announced no SecAgg public key: upgrade them "
                "to this fedloom version or turn SecAgg off"
            )
        settings.check_participants(len(nodes))
        self.settings = settings
        self.round_number = round_number
        self.session_id = new_session_id(experiment_id, round_number)
        self.nodes = {n.node_id: n for n in nodes}
        self._sum = SecureSum(self.session_id, list(self.nodes), settings)
        self._masked_names: set[str] = set()
        self._param_labels: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._aux: dict[str, _AuxLayout] = {}

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

    def prepare_reply(
        self,
        node_id: str,
        sections: Mapping[Section, Mapping[str, np.ndarray]],
        aux_vars: pb.AuxVars,
    ) -> PreparedReply:
        """Validate one node's masked sections and clear aux fields whole; change nothing.

        Raises SecaggError or PayloadError naming the node when the reply is unusable.
        """
        label = self.nodes[node_id].label
        by_label = {
            mask_label(section, name): array
            for section in MASKED_SECTIONS
            for name, array in sections.get(section, {}).items()
        }
        names = set(by_label)
        if self.settings.protect_parameters and _N_SAMPLES not in names:
            raise SecaggError(
                f"node {label} sent its update without SecAgg masks although "
                "parameter protection is on: refusing it"
            )
        if self._masked_names and names != self._masked_names:
            raise SecaggError(
                f"node {label} masked payloads {sorted(names ^ self._masked_names)[:5]} "
                "that other nodes did not (or the reverse): all nodes must run the same plan and optimizer"
            )
        masked = {
            name: as_masked(
                by_label[name],
                node_id=node_id,
                name=name,
                shape=self._shapes.get(name),
                what="masked payload",
            )
            for name in sorted(names)
        }
        params = {
            mask_label(pb.PAYLOAD_SECTION_SECAGG_PARAMS, name): name
            for name in sections.get(pb.PAYLOAD_SECTION_SECAGG_PARAMS, {})
        }
        aux_arrays = sections.get(pb.PAYLOAD_SECTION_AUX, {})
        return PreparedReply(
            node_id, masked, params, self._checked_aux(label, aux_vars, aux_arrays)
        )

    def commit_reply(self, prepared: PreparedReply) -> None:
        """Fold a reply `prepare_reply` accepted."""
        self._masked_names = set(prepared.masked)
        self._param_labels = dict(prepared.param_labels)
        for name, array in prepared.masked.items():
            self._shapes.setdefault(name, array.shape)
            self._sum.add(prepared.node_id, name, array)
        self._aux = prepared.aux_layout

    def _checked_aux(
        self, label: str, aux_vars: pb.AuxVars, arrays: Mapping[str, np.ndarray]
    ) -> dict[str, _AuxLayout]:
        """The aux layout after folding this reply's clear fields (nothing is changed yet)."""
        updated = dict(self._aux)
        for item in aux_vars.items:
            secure = {f.name: f.value for f in item.fields if _is_masked(f.value)}
            clear_fields = [f for f in item.fields if not _is_masked(f.value)]
            clear = decode_aux_fields(clear_fields, arrays, "numpy")
            layout = updated.get(item.module)
            if layout is None:
                updated[item.module] = _AuxLayout(item.type, clear, secure)
                continue
            if layout.type_name != item.type or set(layout.secure) != set(secure):
                raise SecaggError(
                    f"node {label} sent another kind of aux var {item.module!r} than the "
                    "other nodes; all nodes must run the same optimizer"
                )
            agg_cls = aux_var_class(item.type)
            default = agg_cls.default_aggregate
            assert layout.clear is not None
            if set(layout.clear) != set(clear):
                raise SecaggError(
                    f"node {label} sent other clear fields of aux var {item.module!r}"
                )
            try:
                merged = {
                    key: getattr(agg_cls, f"aggregate_{key}", default)(value, clear[key])
                    for key, value in layout.clear.items()
                }
            except (TypeError, ValueError) as exc:
                raise PayloadError(
                    f"node {label}: cannot aggregate aux var {item.module!r}: {exc}"
                ) from exc
            updated[item.module] = _AuxLayout(item.type, merged, secure)
        return updated

    def masked_names(self) -> list[str]:
        return sorted(self._masked_names)

    def recover(
        self, exchange: Exchange, experiment_id: str, answered: Sequence[str], timeout: float
    ) -> None:
        """After dropouts, ask every survivor for its masks toward the dropped nodes."""
        failed = [node_id for node_id in self.nodes if node_id not in answered]
        if not failed:
            return
        survivors = self._sum.declare_dropped(failed)
        log.warning(
            "SecAgg recovering the sum of %d survivor(s) without %s",
            len(survivors),
            ", ".join(self.nodes[n].label for n in failed),
        )
        request = pb.SecaggCorrectionRequest(
            session_id=self.session_id, dropped=failed, payload_names=self.masked_names()
        )
        tasks = {
            node_id: pb.TaskRequest(
                experiment_id=experiment_id,
                round=self.round_number,
                timeout_seconds=timeout,
                secagg_correction=request,
            )
            for node_id in survivors
        }
        outcome = exchange.run_tasks(tasks, timeout)
        if outcome.failures:
            raise RoundFailedError(
                "SecAgg could not recover the round after dropouts: "
                + "; ".join(f"{self.nodes[k].label}: {v}" for k, v in outcome.failures.items())
            )
        for node_id, received in outcome.replies.items():
            missing = [n for n in self._masked_names if n not in received.arrays]
            if missing:
                raise RoundFailedError(
                    f"node {self.nodes[node_id].label} sent no dropout correction for {missing[:3]}"
                )
            for name in self._masked_names:
                self._sum.add_correction(node_id, name, received.arrays[name])

    def result(self, dtypes: Mapping[str, np.dtype] | None = None) -> SecureRoundResult:
        """Unmask the sums (only valid once every survivor delivered or corrected).

        `dtypes` maps parameter names to their dtype, so aux-var vectors keyed like the
        parameters come back in the same dtype (sums are computed in float64).
        """
        dtypes = dtypes or {}
        param_sums = None
        total = None
        if self.settings.protect_parameters:
            param_sums = {
                param: self._sum.result(label) for label, param in self._param_labels.items()
            }
            total = float(self._sum.result(_N_SAMPLES).reshape(-1)[0])
            if total <= 0:
                raise RoundFailedError(f"the securely summed sample count is {total}; expected > 0")
        aux: dict[str, AuxVar] = {}
        for module, layout in self._aux.items():
            fields = dict(layout.clear or {})
            for name, value in layout.secure.items():
                if value.WhichOneof("kind") == "vector":
                    coefs = {
                        key: self._sum.result(_sums_label(array)).astype(
                            dtypes.get(key, np.float64)
                        )
                        for key, array in zip(value.vector.keys, value.vector.arrays, strict=True)
                    }
                    fields[name] = arrays_to_vector(coefs, "numpy")
                else:
                    summed = self._sum.result(_sums_label(value.masked_array))
                    fields[name] = float(summed) if summed.ndim == 0 else summed
            aux[module] = build_aux_var(layout.type_name, fields)
        return SecureRoundResult(param_sums, total, aux)


def _is_masked(value: pb.AuxValue) -> bool:
    kind = value.WhichOneof("kind")
    return kind == "masked_array" or (kind == "vector" and value.vector.masked)


def _sums_label(name: str) -> str:
    return mask_label(pb.PAYLOAD_SECTION_SECAGG_SUMS, name)


#: The label of the masked sample count.
_N_SAMPLES = _sums_label(N_SAMPLES_NAME)


def check_secagg_configuration(settings: SecureAggregation, aggregator: Aggregator) -> None:
    """Protected parameters reach the aggregator only as a sum: it must be able to use one."""
    if settings.protect_parameters and not aggregator.supports_secure_sum:
        raise ConfigurationError(
            f"SecAgg with protected parameters reveals only the sum of the nodes' updates, which "
            f"the {type(aggregator).__name__} aggregator cannot use: choose an aggregator that "
            "supports secure sums (FedAverage) or SecureAggregation(protect_parameters=False)"
        )
