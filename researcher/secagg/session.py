"""The researcher's driver of one double-masking SecAgg round (Bonawitz et al. 2017).

Phases, each a task per node through the engine's :class:`TaskExchange`:
1. ``setup``: every participant advertises signed round keys; every advertiser receives all
   adverts and returns its Shamir shares, sealed per receiver. Nodes that fail drop out; the
   round goes on while at least ``t`` remain.
2. ``train_context``: each remaining node's train request carries the shares sealed for it.
3. ``add_masked``: masked replies are validated whole and kept (views, no copy).
4. ``unmask``: the survivors (nodes the engine accepted) sign the survivor set (consistency
   check), then, shown each other's signatures, return self-mask shares of the survivors and
   mask-key shares of the dropped nodes; the driver rebuilds those secrets, sums the
   survivors' uploads and removes every mask in one chunked pass per payload.
The researcher learns the survivors' sums; see common/secagg/__init__.py for the threat model.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.errors import RoundFailedError, SecaggError
from common.optimizers.aux_codec import build_aux_var
from common.optimizers.vectors import arrays_to_vector
from common.payload import Section
from common.proto import fedloom_pb2 as pb
from common.secagg.double_masking import removal_seeds, survivors_sum
from common.secagg.kdf import new_session_id
from common.secagg.keys import SecaggKeyPair
from common.secagg.participant import share_point
from common.secagg.settings import SecureAggregation
from common.secagg.shamir import ELEMENTS, reconstruct
from researcher.secagg.exchange import ExchangeResult, TaskExchange
from researcher.secagg.masked_upload import (
    N_SAMPLES_LABEL,
    MaskedUpload,
    merge_clear_fields,
    parse_masked_upload,
    sums_label,
)

__all__ = ["Participant", "SecureRoundResult", "SecureRoundSession"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Participant:
    """A node selected for the round: its id and a label for messages."""

    node_id: str
    label: str


@dataclass
class SecureRoundResult:
    """What the round reveals: sums over the survivors only."""

    param_sums: dict[str, np.ndarray] | None  # None when parameters travel in clear
    total_samples: float | None
    aux: dict[str, Any] = field(default_factory=dict)
    #: Every unmasked sum by mask label (what cohort statistics read; rounds use the above).
    sums: dict[str, np.ndarray] = field(default_factory=dict)


class SecureRoundSession:
    """SecAgg state of one round attempt; not thread-safe (drive it from the round's thread)."""

    def __init__(
        self,
        settings: SecureAggregation,
        experiment_id: str,
        round_number: int,
        participants: Sequence[Participant],
    ) -> None:
        ids = [p.node_id for p in participants]
        if len(set(ids)) != len(ids):
            raise SecaggError(f"SecAgg participants must be distinct node ids, got {ids}.")
        settings.check_participants(len(ids))
        self.settings = settings
        self.experiment_id = experiment_id
        self.round_number = round_number
        self.session_id = new_session_id(experiment_id, round_number)
        self.participants = {p.node_id: p for p in sorted(participants, key=lambda p: p.node_id)}
        self.threshold = settings.threshold_for(len(ids))
        self._adverts: dict[str, pb.SecaggKeyAdvert] = {}
        self._inbox: dict[str, list[pb.SecaggEncryptedShare]] = {}
        self._holders: list[str] = []  # nodes that shared their secrets (U2)
        self._uploads: dict[str, MaskedUpload] = {}
        self._reference: MaskedUpload | None = None
        self._unmasked = False

    # -- setup -----------------------------------------------------------------------------
    def setup(self, exchange: TaskExchange, timeout: float) -> list[str]:
        """Key adverts, then share distribution; returns the node ids still in the round.

        Raises RoundFailedError naming the missing nodes when fewer than ``t`` remain.
        """
        roster = list(self.participants)
        advertise = pb.SecaggAdvertiseRequest(
            session_id=self.session_id, participants=roster, threshold=self.threshold
        )
        result = exchange.run_tasks(
            {node: self._task(timeout, secagg_advertise=advertise) for node in roster}, timeout
        )
        failures = dict(result.failures)
        for node, reply in self._ok_replies(result, roster, failures, "advert").items():
            advert = reply.secagg.advert
            if advert.session_id != self.session_id or advert.node_id != node:
                failures[node] = "sent an advert for another session or node"
                continue
            self._adverts[node] = advert
        self._require_threshold(list(self._adverts), failures, "advertising round keys")
        advertisers = sorted(self._adverts)
        share_request = pb.SecaggShareRequest(
            session_id=self.session_id, adverts=[self._adverts[n] for n in advertisers]
        )
        result = exchange.run_tasks(
            {node: self._task(timeout, secagg_share=share_request) for node in advertisers},
            timeout,
        )
        failures.update(result.failures)
        sent: dict[str, list[pb.SecaggEncryptedShare]] = {}
        for node, reply in self._ok_replies(result, advertisers, failures, "shares").items():
            shares = list(reply.secagg.shares.shares)
            receivers = sorted(s.receiver for s in shares)
            if any(s.sender != node for s in shares) or receivers != [
                n for n in advertisers if n != node
            ]:
                failures[node] = "sent shares that are not one per other advertiser"
                continue
            sent[node] = shares
        self._require_threshold(list(sent), failures, "distributing shares")
        self._holders = sorted(sent)
        self._inbox = {node: [] for node in self._holders}
        for shares in sent.values():
            for share in shares:
                if share.receiver in self._inbox:
                    self._inbox[share.receiver].append(share)
        if failures:
            log.warning(
                "SecAgg round %d: %s dropped out during setup; going on with %d node(s), t=%d",
                self.round_number,
                self._describe(failures),
                len(self._holders),
                self.threshold,
            )
        return list(self._holders)

    def train_context(self, node_id: str) -> pb.SecaggContext:
        """The SecaggContext attached to ``node_id``'s train request (its shares included)."""
        if node_id not in self._inbox:
            raise SecaggError(
                f"node {self._label(node_id)} is not in SecAgg session {self.session_id!r} "
                "(it dropped out during setup, or setup did not run): do not send it a train task."
            )
        return pb.SecaggContext(
            enabled=True,
            clip=self.settings.clip,
            fraction_bits=self.settings.fraction_bits,
            protect_parameters=self.settings.protect_parameters,
            session_id=self.session_id,
            threshold=self.threshold,
            shares=self._inbox[node_id],
        )

    # -- uploads ---------------------------------------------------------------------------
    def add_masked(
        self,
        node_id: str,
        sections: Mapping[Section, Mapping[str, np.ndarray]],
        aux_vars: pb.AuxVars,
    ) -> None:
        """Validate one node's masked reply and keep it for unmasking; a refusal keeps nothing.

        Raises SecaggError (or PayloadError) naming the node. Uploads are folded in ``unmask``,
        and only for the nodes it is told answered.
        """
        label = self._label(node_id)
        if self._unmasked:
            raise SecaggError(
                f"node {label} delivered its masked update after SecAgg session "
                f"{self.session_id!r} was unmasked: refused, it is never folded."
            )
        if node_id not in self._holders:
            raise SecaggError(
                f"node {label} sent a masked update but holds no shares in SecAgg session "
                f"{self.session_id!r}: it cannot be unmasked, refusing it."
            )
        if node_id in self._uploads:
            raise SecaggError(f"node {label} sent its masked update twice; keeping the first.")
        upload = parse_masked_upload(
            label,
            sections,
            aux_vars,
            protect_parameters=self.settings.protect_parameters,
            reference=self._reference,
        )
        self._uploads[node_id] = upload
        if self._reference is None:
            self._reference = upload

    # -- unmask ----------------------------------------------------------------------------
    def unmask(
        self,
        exchange: TaskExchange,
        answered: Sequence[str],
        timeout: float,
        *,
        dtypes: Mapping[str, np.dtype] | None = None,
    ) -> SecureRoundResult:
        """Recover the survivors' sums: ``answered`` are the nodes whose uploads count.

        Every other share holder is dropped, whatever it uploaded: its upload is never folded,
        and no node reveals its self mask. Raises RoundFailedError below the threshold.
        ``dtypes`` maps parameter names to their dtype, so aux-var vectors keyed like the
        parameters come back in it (sums are float64).
        """
        if self._unmasked:
            raise SecaggError(f"SecAgg session {self.session_id!r} was already unmasked.")
        answered_set = set(answered)
        survivors = [n for n in self._holders if n in answered_set and n in self._uploads]
        dropped = [n for n in self._holders if n not in survivors]
        missing = {n: "no accepted masked update" for n in dropped}
        missing.update(
            {n: "dropped out during setup" for n in self.participants if n not in self._holders}
        )
        self._require_threshold(survivors, missing, "unmasking")
        self._unmasked = True
        # Consistency check: survivors sign the survivor set; each then sees >= t signatures.
        check = pb.SecaggConsistencyRequest(session_id=self.session_id, survivors=survivors)
        result = exchange.run_tasks(
            {node: self._task(timeout, secagg_consistency=check) for node in survivors}, timeout
        )
        failures = dict(result.failures)
        signed = self._ok_replies(result, survivors, failures, "consistency")
        self._require_threshold(list(signed), {**missing, **failures}, "signing the survivors")
        request = pb.SecaggUnmaskRequest(
            session_id=self.session_id,
            survivors=survivors,
            dropped=dropped,
            signatures=[reply.secagg.consistency for reply in signed.values()],
        )
        result = exchange.run_tasks(
            {node: self._task(timeout, secagg_unmask=request) for node in signed}, timeout
        )
        failures.update(result.failures)
        replies = self._ok_replies(result, list(signed), failures, "unmask")
        self._require_threshold(list(replies), {**missing, **failures}, "answering the unmask")
        seeds, dropped_keys = self._rebuild_secrets(replies, survivors, dropped)
        if dropped:
            log.info(
                "SecAgg round %d: recovered the sum of %d survivor(s) without %s",
                self.round_number,
                len(survivors),
                ", ".join(self._label(n) for n in dropped),
            )
        return self._result(survivors, seeds, dropped_keys, dtypes or {})

    def _rebuild_secrets(
        self, replies: Mapping[str, pb.TaskReply], survivors: list[str], dropped: list[str]
    ) -> tuple[dict[str, bytes], dict[str, SecaggKeyPair]]:
        self_shares: dict[str, dict[int, np.ndarray]] = {n: {} for n in survivors}
        key_shares: dict[str, dict[int, np.ndarray]] = {n: {} for n in dropped}
        roster = list(self.participants)
        for node, reply in replies.items():
            point = share_point(roster, node)
            answer = reply.secagg.unmask
            for values, bucket in ((answer.self_mask, self_shares), (answer.mask_key, key_shares)):
                for share in values:
                    if share.owner not in bucket or share.x != point or len(share.y) != ELEMENTS:
                        raise SecaggError(
                            f"node {self._label(node)} answered the unmask with a malformed share "
                            f"for {share.owner!r}; discard the round."
                        )
                    bucket[share.owner][point] = np.asarray(share.y, dtype=np.uint64)
        seeds = {
            owner: reconstruct(shares, self.threshold)[0] for owner, shares in self_shares.items()
        }
        dropped_keys = {}
        for owner, shares in key_shares.items():
            key = SecaggKeyPair(
                X25519PrivateKey.from_private_bytes(reconstruct(shares, self.threshold)[0])
            )
            if key.public_bytes() != bytes(self._adverts[owner].mask_public_key):
                raise SecaggError(
                    f"the mask-key shares of dropped node {self._label(owner)} do not rebuild "
                    "the key it advertised: a survivor sent a forged share. Discard the round."
                )
            dropped_keys[owner] = key
        return seeds, dropped_keys

    def _result(
        self,
        survivors: list[str],
        seeds: Mapping[str, bytes],
        dropped_keys: Mapping[str, SecaggKeyPair],
        dtypes: Mapping[str, np.dtype],
    ) -> SecureRoundResult:
        reference = self._reference
        assert reference is not None  # survivors >= t >= 2 uploads were accepted
        codec = self.settings.codec
        mask_keys = {n: bytes(self._adverts[n].mask_public_key) for n in survivors}
        sums: dict[str, np.ndarray] = {}
        for name, first in reference.masked.items():
            seeds_for_name = removal_seeds(
                session_id=self.session_id,
                payload=name,
                survivor_seeds={n: seeds[n] for n in survivors},
                dropped_keys=dropped_keys,
                mask_public_keys=mask_keys,
            )
            total = survivors_sum(
                [self._uploads[n].masked[name] for n in survivors], seeds_for_name, first.shape
            )
            sums[name] = codec.decode_sum(total)
        param_sums = None
        total_samples = None
        if self.settings.protect_parameters:
            param_sums = {param: sums[label] for label, param in reference.params.items()}
            total_samples = float(sums[N_SAMPLES_LABEL].reshape(-1)[0])
            if total_samples <= 0:
                raise RoundFailedError(
                    f"the securely summed sample count is {total_samples}; expected > 0."
                )
        aux = {}
        for module, layout in reference.aux.items():
            fields = merge_clear_fields([self._uploads[n].aux[module] for n in survivors])
            for field_name, value in layout.secure.items():
                if value.WhichOneof("kind") == "vector":
                    coefs = {
                        key: sums[sums_label(array)].astype(dtypes.get(key, np.float64))
                        for key, array in zip(value.vector.keys, value.vector.arrays, strict=True)
                    }
                    fields[field_name] = arrays_to_vector(coefs, "numpy")
                else:
                    summed = sums[sums_label(value.masked_array)]
                    fields[field_name] = float(summed) if summed.ndim == 0 else summed
            aux[module] = build_aux_var(layout.type_name, fields)
        return SecureRoundResult(param_sums, total_samples, aux, sums)

    # -- helpers ---------------------------------------------------------------------------
    def _task(self, timeout: float, **kind: Any) -> pb.TaskRequest:
        return pb.TaskRequest(
            task_id=uuid.uuid4().hex,
            experiment_id=self.experiment_id,
            round=self.round_number,
            timeout_seconds=timeout,
            **kind,
        )

    def _ok_replies(
        self, result: ExchangeResult, asked: Sequence[str], failures: dict[str, str], kind: str
    ) -> dict[str, pb.TaskReply]:
        """Replies that succeeded and carry ``TaskReply.secagg.<kind>``; every other asked
        node goes to ``failures`` with the reason."""
        ok = {}
        for node in asked:
            received = result.replies.get(node)
            if received is None:
                failures.setdefault(node, "no reply")
                continue
            reply = received.reply
            if not reply.ok:
                failures[node] = f"{reply.error.kind}: {reply.error.message}"
                log.error("SecAgg: node %s refused: %s", self._label(node), failures[node])
            elif reply.secagg.WhichOneof("kind") != kind:
                failures[node] = f"replied without SecAgg {kind}"
            else:
                ok[node] = reply
        return ok

    def _require_threshold(
        self, remaining: Sequence[str], failures: Mapping[str, str], phase: str
    ) -> None:
        if len(remaining) >= self.threshold:
            return
        gone = [n for n in self.participants if n not in remaining]
        raise RoundFailedError(
            f"SecAgg round {self.round_number} failed while {phase}: {len(remaining)} of "
            f"{len(self.participants)} node(s) remain, below the threshold t={self.threshold}. "
            f"Missing: {self._describe({n: failures.get(n, 'dropped') for n in gone})}. "
            "Retry the round, select more nodes, or lower SecureAggregation(threshold=...)."
        )

    def _describe(self, failures: Mapping[str, str]) -> str:
        return "; ".join(f"{self._label(n)} ({why})" for n, why in sorted(failures.items()))

    def _label(self, node_id: str) -> str:
        participant = self.participants.get(node_id)
        return f"{participant.label} [{node_id}]" if participant else repr(node_id)
