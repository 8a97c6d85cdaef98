"""A node's train reply, decoded and validated whole before anything is folded.

`decode_train_reply` turns a `ReceivedReply` into a `TrainReply` or refuses it with an
`InvalidReplyError` naming the node and the fault. Every check happens here, first: names,
shapes, dtypes and finiteness of every tensor, the sample count, the aux vars. So a
refused reply leaves no trace in any aggregate, aux var, metric or history.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
from declearn.optimizer.modules import AuxVar

from common.errors import FedloomError
from common.finite import FiniteArrays, NonFiniteArrayError, all_finite
from common.optimizers.aux_codec import decode_aux_vars
from common.payload import Section
from common.proto import fedloom_pb2 as pb
from common.secagg.protect import MASKED_SECTIONS
from researcher.rounds.exchange import ReceivedReply

__all__ = [
    "InvalidReplyError",
    "ModelTemplate",
    "TrainReply",
    "decode_train_reply",
]

#: The sections a train reply may carry in clear rounds, and in SecAgg rounds.
_CLEAR_SECTIONS = frozenset({pb.PAYLOAD_SECTION_PARAMS, pb.PAYLOAD_SECTION_AUX})
_SECURE_SECTIONS = _CLEAR_SECTIONS | set(MASKED_SECTIONS)


class InvalidReplyError(FedloomError):
    """A node's reply is malformed or unusable; it is refused whole."""


@dataclass(frozen=True)
class ModelTemplate:
    """Names, shapes and dtypes the global model has, which every reply must match.

    `local` names the plan's local parameters: the global model has none of them, and a
    reply carrying one is refused as a leak.
    """

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, np.dtype]
    local: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, params: Mapping[str, np.ndarray], local: frozenset[str] = frozenset()
    ) -> ModelTemplate:
        return cls(
            {k: tuple(np.shape(v)) for k, v in params.items()},
            {k: np.asarray(v).dtype for k, v in params.items()},
            local,
        )


@dataclass
class TrainReply:
    """One node's validated train reply.

    In clear rounds `params` holds the node's parameters and `aux` its decoded aux vars.
    Under SecAgg, `sections` holds the upload (masked sections included) and `aux_message`
    the aux-var layout, which only the secure aggregation can read; `params` is empty when
    parameters are protected.
    """

    node_id: str
    node_name: str
    n_samples: int
    metrics: dict[str, float]
    losses: list[float]
    train_seconds: float
    n_steps: int
    params: dict[str, np.ndarray] = field(default_factory=dict)
    #: Record-level DP: the ε the experiment has spent on this node (None: no DP).
    dp_epsilon: float | None = None
    aux: dict[str, AuxVar] = field(default_factory=dict)
    aux_message: pb.AuxVars = field(default_factory=pb.AuxVars)
    sections: Mapping[Section, Mapping[str, np.ndarray]] = field(default_factory=dict)

    @property
    def mean_loss(self) -> float | None:
        return float(np.mean(self.losses)) if self.losses else None


def decode_train_reply(
    received: ReceivedReply,
    node_name: str,
    label: str,
    template: ModelTemplate,
    *,
    aux_modules: Collection[str],
    secure: bool,
    params_masked: bool,
) -> TrainReply:
    """Decode and validate a train reply; raise InvalidReplyError on any fault.

    `aux_modules` are the aux-var names the researcher optimizer consumes: any other is
    refused. `label` names the node in error messages. `secure` says the round runs SecAgg, `params_masked` that parameters travel
    masked (then the clear sample count must be 0 and the masked one is checked by SecAgg).
    """
    reply = received.reply
    sections = received.sections
    where = f"node {label}"
    allowed = _SECURE_SECTIONS if secure else _CLEAR_SECTIONS
    unexpected = sorted(pb.PayloadSection.Name(s) for s in set(sections) - allowed)
    if unexpected:
        raise InvalidReplyError(
            f"{where} sent payload sections {unexpected} that a "
            f"{'SecAgg' if secure else 'clear'} round does not use: the node runs another "
            "fedloom version or ignores the experiment's SecAgg setting"
        )
    n_samples = int(reply.n_samples)
    if params_masked:
        if n_samples != 0:
            raise InvalidReplyError(
                f"{where} sent its sample count in clear ({n_samples}) although SecAgg protects "
                "it: the node runs another fedloom version or ignores the SecAgg settings"
            )
    elif n_samples <= 0:
        raise InvalidReplyError(
            f"{where} reported {n_samples} training samples; a reply needs at least one "
            "(check that its dataset is not empty and the plan's training_data returns it)"
        )
    params: dict[str, np.ndarray] = {}
    if not params_masked:
        params = _check_params(sections.get(pb.PAYLOAD_SECTION_PARAMS, {}), template, where)
    elif pb.PAYLOAD_SECTION_PARAMS in sections:
        raise InvalidReplyError(
            f"{where} sent its parameters in clear although SecAgg protects them: refusing them"
        )
    aux: dict[str, AuxVar] = {}
    modules = {item.module for item in reply.aux_vars.items}
    unknown = sorted(modules - set(aux_modules))
    if unknown:
        raise InvalidReplyError(
            f"{where} sent aux vars {unknown} that no researcher optimizer module consumes "
            f"(expected {sorted(aux_modules) or 'none'}): pair the plan's optimizer modules with "
            "the experiment's agg_optimizer (e.g. ScaffoldClientModule with ScaffoldServerModule)"
        )
    aux_arrays = sections.get(pb.PAYLOAD_SECTION_AUX, {})
    for name, value in aux_arrays.items():
        if not isinstance(aux_arrays, FiniteArrays) and not all_finite(value):
            raise InvalidReplyError(f"{where} sent non-finite values in aux array {name!r}")
    if not secure:
        try:
            aux = decode_aux_vars(reply.aux_vars, aux_arrays, "numpy")
        except FedloomError as exc:
            raise InvalidReplyError(f"{where} sent unreadable aux vars: {exc}") from exc
    losses = [float(x) for x in reply.losses]
    return TrainReply(
        node_id=received.node_id,
        node_name=node_name,
        n_samples=n_samples,
        metrics={str(k): float(v) for k, v in reply.metrics.items()},
        losses=losses,
        train_seconds=float(reply.train_seconds),
        n_steps=int(reply.n_steps),
        dp_epsilon=_dp_epsilon(reply, where),
        params=params,
        aux=aux,
        aux_message=reply.aux_vars,
        sections=sections if secure else {},
    )


def _dp_epsilon(reply: pb.TaskReply, where: str) -> float | None:
    """The ε the node reports under record-level DP, None when it trained without DP."""
    if reply.dp_delta <= 0:
        return None
    epsilon = float(reply.dp_epsilon)
    if not all_finite(np.asarray(epsilon)) or epsilon < 0:
        raise InvalidReplyError(f"{where} reported an invalid DP ε ({epsilon})")
    return epsilon


def _check_params(
    params: Mapping[str, np.ndarray], template: ModelTemplate, where: str
) -> FiniteArrays:
    """The parameters, checked against the template and scanned finite once."""
    leaked = sorted(set(params) & template.local)
    if leaked:
        raise InvalidReplyError(
            f"{where} sent local parameters {leaked[:5]}, which the plan keeps on the nodes: "
            "refusing the reply; the node runs a fedloom version without local parameters"
        )
    if set(params) != set(template.shapes):
        missing = sorted(set(template.shapes) - set(params))[:5]
        extra = sorted(set(params) - set(template.shapes))[:5]
        raise InvalidReplyError(
            f"{where} sent parameters that do not match the global model (missing {missing}, "
            f"unexpected {extra}): the node trains another plan or model_args"
        )
    for name, shape in template.shapes.items():
        value = params[name]
        if value.shape != shape:
            raise InvalidReplyError(
                f"{where} sent {name!r} with shape {value.shape}, the global model has {shape}"
            )
        expected = template.dtypes[name]
        if value.dtype.kind != expected.kind or (
            expected.kind == "f" and value.dtype.itemsize < expected.itemsize
        ):
            raise InvalidReplyError(
                f"{where} sent {name!r} as {value.dtype}, the global model holds {expected}"
            )
    try:
        return FiniteArrays.scanned(params)
    except NonFiniteArrayError as exc:
        raise InvalidReplyError(
            f"{where} sent non-finite values in {exc.name!r}: lower its learning rate or check "
            "its data"
        ) from None
