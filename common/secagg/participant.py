"""The node side of double-masking SecAgg: four phases, each refusing what would leak.

1. :meth:`SecaggParticipant.advertise`: fresh X25519 cipher and mask keys and a 32-byte
   self-mask seed for this session only; keys, roster and threshold signed with the node's
   certificate key.
2. :meth:`SecaggParticipant.distribute_shares`: verify every advert (signature, CA, node id,
   same roster and threshold, own keys unchanged), then Shamir-share the seed and the mask key among the
   advertisers, each share sealed for its receiver.
3. :meth:`SecaggParticipant.masker`: open the shares received with the train request, then
   mask (self mask plus pairwise masks toward every node that shared) once per payload.
4. :meth:`SecaggParticipant.sign_survivors`: sign the survivor set, once per session
   (the consistency check: survivors prove to each other that they were all told the same).
5. :meth:`SecaggParticipant.unmask`: with at least ``t`` survivors' signatures over the same
   set, self-mask shares for survivors and mask-key shares for dropped nodes; never both
   kinds for one node, and one dropped set per session.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.errors import SecaggError
from common.proto import fedloom_pb2 as pb
from common.secagg.advert import NodeIdentity, verify_advert, verify_survivor_signature
from common.secagg.double_masking import DoubleMasker
from common.secagg.keys import SecaggKeyPair
from common.secagg.session_store import SessionStore
from common.secagg.settings import SecureAggregation, minimum_threshold
from common.secagg.shamir import SECRET_BYTES, share_secrets
from common.secagg.share_box import open_share, seal_share

__all__ = ["SecaggParticipant", "share_point"]

log = logging.getLogger(__name__)

# Index of each secret in a share: the self-mask seed, then the raw mask private key.
_SELF, _KEY = 0, 1


def share_point(participants: list[str] | tuple[str, ...], node_id: str) -> int:
    """The Shamir x coordinate of ``node_id``: its rank among the sorted participants, from 1."""
    return sorted(participants).index(node_id) + 1


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class SecaggParticipant:
    """One node's SecAgg protocol engine; state per session in ``state_dir`` (node home).

    ``identity`` is the node's TLS certificate and CA: with it, adverts are signed and every
    peer's advert must be signed; without it (``--insecure``), neither.
    """

    def __init__(self, node_id: str, state_dir: Path, identity: NodeIdentity | None) -> None:
        if identity is not None and identity.node_id != node_id:
            raise SecaggError(
                f"the TLS certificate names node {identity.node_id!r} but this node is "
                f"{node_id!r}: start it with its own certificate."
            )
        self.node_id = node_id
        self.identity = identity
        self.store = SessionStore(state_dir)

    # -- phase 1 ---------------------------------------------------------------------------
    def advertise(self, request: pb.SecaggAdvertiseRequest) -> pb.SecaggKeyAdvert:
        """Create and sign this session's round keys (the same advert if asked again)."""
        session_id = request.session_id
        participants = sorted(request.participants)
        self._check_roster(session_id, participants, int(request.threshold))
        state = self.store.load(session_id)
        if state is not None:
            if state["participants"] != participants or state["threshold"] != request.threshold:
                raise SecaggError(
                    f"SecAgg session {session_id!r} was already set up with participants "
                    f"{state['participants']} and threshold {state['threshold']}; refusing "
                    "another roster for it."
                )
            return _advert_from(state)
        cipher_key, mask_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        advert = pb.SecaggKeyAdvert(
            session_id=session_id,
            node_id=self.node_id,
            cipher_public_key=_raw_public(cipher_key),
            mask_public_key=_raw_public(mask_key),
            participants=participants,
            threshold=int(request.threshold),
        )
        if self.identity is not None:
            self.identity.sign(advert)
        self.store.prune()
        self.store.save(
            {
                "session_id": session_id,
                "participants": participants,
                "threshold": int(request.threshold),
                "secrets": {
                    "cipher": _raw_private(cipher_key).hex(),
                    "mask": _raw_private(mask_key).hex(),
                    "seed": secrets.token_bytes(SECRET_BYTES).hex(),
                },
                "advert": advert.SerializeToString().hex(),
                "masked": {},
                "revealed": None,
            }
        )
        return advert

    # -- phase 2 ---------------------------------------------------------------------------
    def distribute_shares(self, request: pb.SecaggShareRequest) -> pb.SecaggShares:
        """Verify the relayed adverts, then share the seed and mask key among their senders."""
        state = self.store.require(request.session_id)
        digest = hashlib.sha256(
            b"".join(a.SerializeToString() for a in request.adverts)
        ).hexdigest()
        if "shares_reply" in state:
            if state["adverts_digest"] != digest:
                raise SecaggError(
                    f"SecAgg session {request.session_id!r}: the researcher already had this "
                    "node share its secrets among other adverts; refusing a second sharing "
                    "(fresh shares of the same secrets would reveal them)."
                )
            return pb.SecaggShares.FromString(bytes.fromhex(state["shares_reply"]))
        adverts = self._verified_adverts(state, request)
        holders = sorted(adverts)
        points = [share_point(state["participants"], node) for node in holders]
        own = state["secrets"]
        shares = share_secrets(
            [bytes.fromhex(own["seed"]), bytes.fromhex(own["mask"])], points, state["threshold"]
        )
        cipher_key = X25519PrivateKey.from_private_bytes(bytes.fromhex(own["cipher"]))
        reply = pb.SecaggShares()
        received: dict[str, Any] = {}
        for holder, x, values in zip(holders, points, shares, strict=True):
            if holder == self.node_id:
                received[holder] = {"x": x, "y": values.tolist()}
                continue
            reply.shares.add(
                sender=self.node_id,
                receiver=holder,
                ciphertext=seal_share(
                    (x, values),
                    own_secret=cipher_key,
                    receiver_public=adverts[holder].cipher_public_key,
                    session_id=request.session_id,
                    sender=self.node_id,
                    receiver=holder,
                ),
            )
        state["adverts"] = {
            node: {
                "cipher": advert.cipher_public_key.hex(),
                "mask": advert.mask_public_key.hex(),
            }
            for node, advert in adverts.items()
        }
        state["received"] = received
        state["adverts_digest"] = digest
        state["shares_reply"] = reply.SerializeToString().hex()
        self.store.save(state)
        return reply

    def _verified_adverts(
        self, state: dict[str, Any], request: pb.SecaggShareRequest
    ) -> dict[str, pb.SecaggKeyAdvert]:
        session_id = request.session_id
        participants = set(state["participants"])
        adverts: dict[str, pb.SecaggKeyAdvert] = {}
        for advert in request.adverts:
            if advert.session_id != session_id:
                raise SecaggError(
                    f"the advert of node {advert.node_id!r} belongs to session "
                    f"{advert.session_id!r}, not {session_id!r}: replayed keys. Refusing the round."
                )
            if advert.node_id not in participants:
                raise SecaggError(
                    f"the researcher relayed keys for node {advert.node_id!r}, which is not one of "
                    f"the participants {sorted(participants)} it announced: an invented "
                    "participant. Refusing the round."
                )
            if advert.node_id in adverts:
                raise SecaggError(
                    f"the researcher relayed two adverts for node {advert.node_id!r}; refusing."
                )
            if (
                sorted(advert.participants) != state["participants"]
                or advert.threshold != state["threshold"]
            ):
                raise SecaggError(
                    f"node {advert.node_id!r} was told participants {sorted(advert.participants)} "
                    f"and threshold {advert.threshold}, this node {state['participants']} and "
                    f"{state['threshold']}: the researcher shows nodes different rosters. "
                    "Refusing the round."
                )
            if advert.node_id == self.node_id:
                if advert.SerializeToString() != bytes.fromhex(state["advert"]):
                    raise SecaggError(
                        f"the researcher relayed round keys for this node ({self.node_id!r}) that "
                        "are not the ones it advertised: keys were substituted. Refusing the round."
                    )
            elif self.identity is not None:
                verify_advert(advert, self.identity.ca_certificates)
            adverts[advert.node_id] = advert
        if self.node_id not in adverts:
            raise SecaggError(
                f"the researcher left this node ({self.node_id!r}) out of the adverts it relayed; "
                "refusing the round."
            )
        keys = [a.mask_public_key for a in adverts.values()]
        keys += [a.cipher_public_key for a in adverts.values()]
        if len(set(keys)) != len(keys):
            raise SecaggError(
                "two relayed adverts share a round public key: a copied or substituted key. "
                "Refusing the round."
            )
        if len(adverts) < state["threshold"]:
            raise SecaggError(
                f"only {len(adverts)} node(s) advertised keys ({sorted(adverts)}), fewer than the "
                f"threshold {state['threshold']}: refusing to share secrets."
            )
        return adverts

    # -- phase 3 ---------------------------------------------------------------------------
    def masker(self, context: pb.SecaggContext) -> DoubleMasker:
        """Open the shares sent with the train request and return this session's masker."""
        session_id = context.session_id
        state = self.store.require(session_id)
        if "adverts" not in state:
            raise SecaggError(
                f"SecAgg session {session_id!r}: this node has not shared its secrets yet, so it "
                "cannot mask; the researcher skipped a phase."
            )
        if state["revealed"] is not None:
            raise SecaggError(
                f"SecAgg session {session_id!r} already answered an unmask request; refusing to "
                "mask in it."
            )
        if int(context.threshold) != state["threshold"]:
            raise SecaggError(
                f"SecAgg session {session_id!r}: the train request says threshold "
                f"{context.threshold}, the session was set up with {state['threshold']}."
            )
        received = self._open_shares(state, context)
        maskers = sorted(received)
        if len(maskers) < state["threshold"]:
            raise SecaggError(
                f"SecAgg session {session_id!r}: shares arrived from {maskers} only, fewer than "
                f"the threshold {state['threshold']}; refusing to mask."
            )
        if "maskers" in state and state["maskers"] != maskers:
            raise SecaggError(
                f"SecAgg session {session_id!r}: this node already masked toward {state['maskers']}; "
                f"refusing another peer set {maskers}."
            )
        state["maskers"] = maskers
        state["received"] = received
        self.store.save(state)
        own = state["secrets"]
        return DoubleMasker(
            session_id=session_id,
            node_id=self.node_id,
            self_seed=bytes.fromhex(own["seed"]),
            mask_keys=SecaggKeyPair(
                X25519PrivateKey.from_private_bytes(bytes.fromhex(own["mask"]))
            ),
            peer_mask_keys={
                node: bytes.fromhex(state["adverts"][node]["mask"])
                for node in maskers
                if node != self.node_id
            },
            settings=SecureAggregation(
                clip=context.clip,
                fraction_bits=int(context.fraction_bits),
                protect_parameters=context.protect_parameters,
            ),
            on_masked=lambda name, shape: self._record_masked(session_id, name, shape),
        )

    def _open_shares(self, state: dict[str, Any], context: pb.SecaggContext) -> dict[str, Any]:
        session_id = context.session_id
        received = {self.node_id: state["received"][self.node_id]}
        my_point = share_point(state["participants"], self.node_id)
        cipher_key = X25519PrivateKey.from_private_bytes(bytes.fromhex(state["secrets"]["cipher"]))
        for share in context.shares:
            if share.receiver != self.node_id:
                raise SecaggError(
                    f"the train request carries a share for node {share.receiver!r}, not for this "
                    f"node ({self.node_id!r}); refusing."
                )
            if share.sender not in state["adverts"] or share.sender in received:
                raise SecaggError(
                    f"the train request carries a share from {share.sender!r}, which did not "
                    "advertise keys in this session or sent two shares; refusing."
                )
            x, values = open_share(
                share.ciphertext,
                own_secret=cipher_key,
                sender_public=bytes.fromhex(state["adverts"][share.sender]["cipher"]),
                session_id=session_id,
                sender=share.sender,
                receiver=self.node_id,
            )
            if x != my_point:
                raise SecaggError(
                    f"the share from {share.sender!r} is for point {x}, this node's is "
                    f"{my_point}; refusing."
                )
            received[share.sender] = {"x": x, "y": values.tolist()}
        return received

    def _record_masked(self, session_id: str, name: str, shape: tuple[int, ...]) -> None:
        state = self.store.require(session_id)
        if state["revealed"] is not None:
            raise SecaggError(
                f"SecAgg session {session_id!r} already answered an unmask request; refusing to "
                f"mask payload {name!r} in it."
            )
        if name in state["masked"]:
            raise SecaggError(
                f"payload {name!r} was already masked in SecAgg session {session_id!r}; masking "
                "it again would reveal the difference of the two updates."
            )
        state["masked"][name] = list(shape)
        self.store.save(state)

    # -- phase 4 ---------------------------------------------------------------------------
    def sign_survivors(self, request: pb.SecaggConsistencyRequest) -> pb.SecaggSurvivorSignature:
        """Sign the session's survivor set; the same set only, however often asked."""
        session_id = request.session_id
        state = self.store.require(session_id)
        survivors = sorted(request.survivors)
        self._check_survivors(state, session_id, survivors)
        signed = state.get("signed_survivors")
        if signed is not None and signed != survivors:
            raise SecaggError(
                f"SecAgg session {session_id!r}: this node already signed survivors {signed}; "
                f"refusing to sign another set {survivors}."
            )
        if signed is None:
            state["signed_survivors"] = survivors
            self.store.save(state)
        if self.identity is None:
            return pb.SecaggSurvivorSignature(node_id=self.node_id)
        return self.identity.sign_survivors(session_id, survivors)

    # -- phase 5 ---------------------------------------------------------------------------
    def unmask(self, request: pb.SecaggUnmaskRequest) -> pb.SecaggUnmaskShares:
        """Self-mask shares of the survivors and mask-key shares of the dropped nodes."""
        session_id = request.session_id
        state = self.store.require(session_id)
        survivors, dropped = list(request.survivors), list(request.dropped)
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise SecaggError(
                f"SecAgg session {session_id!r}: the researcher asks for both the self-mask and "
                f"the mask-key shares of {both}, which would reveal their updates. Refusing."
            )
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise SecaggError(f"SecAgg session {session_id!r}: the unmask request repeats a node.")
        maskers = self._check_survivors(state, session_id, sorted(survivors))
        if sorted(survivors + dropped) != maskers:
            raise SecaggError(
                f"SecAgg session {session_id!r}: survivors {sorted(survivors)} and dropped "
                f"{sorted(dropped)} do not partition the nodes that shared secrets {maskers}. "
                "Refusing."
            )
        wanted = {"survivors": sorted(survivors), "dropped": sorted(dropped)}
        if state["revealed"] is not None and state["revealed"] != wanted:
            raise SecaggError(
                f"SecAgg session {session_id!r}: the researcher first declared "
                f"{state['revealed']['dropped']} dropped, now {wanted['dropped']}; refusing a "
                "second, different dropped set (both answers together would unmask a node)."
            )
        if state.get("signed_survivors") != wanted["survivors"]:
            raise SecaggError(
                f"SecAgg session {session_id!r}: this node signed survivors "
                f"{state.get('signed_survivors')}, the unmask request names {wanted['survivors']}; "
                "refusing."
            )
        self._check_signatures(state, request)
        if state["revealed"] is None:
            state["revealed"] = wanted
            # The round keys are no longer needed: forget them, so a later leak of the node
            # home reveals nothing about this session's masks.
            state["secrets"] = {"cipher": "", "mask": "", "seed": ""}
            self.store.save(state)
            log.info(
                "SecAgg session %s: revealed shares, dropped %s", session_id, wanted["dropped"]
            )
        received = state["received"]
        reply = pb.SecaggUnmaskShares()
        for node in sorted(survivors):
            reply.self_mask.add(owner=node, x=received[node]["x"], y=received[node]["y"][_SELF])
        for node in sorted(dropped):
            reply.mask_key.add(owner=node, x=received[node]["x"], y=received[node]["y"][_KEY])
        return reply

    def _check_survivors(
        self, state: dict[str, Any], session_id: str, survivors: list[str]
    ) -> list[str]:
        """Refuse a survivor set this node cannot vouch for; returns the session's maskers."""
        maskers: list[str] | None = state.get("maskers")
        if maskers is None:
            raise SecaggError(
                f"SecAgg session {session_id!r}: this node never received the shares of a train "
                "request, so it holds nothing to unmask with."
            )
        strangers = sorted(set(survivors) - set(maskers))
        if strangers or len(set(survivors)) != len(survivors):
            raise SecaggError(
                f"SecAgg session {session_id!r}: survivors {survivors} repeat nodes or name "
                f"{strangers}, which did not share secrets ({maskers}). Refusing."
            )
        if self.node_id not in survivors:
            raise SecaggError(
                f"SecAgg session {session_id!r}: this node is asked to vouch for survivors "
                f"{survivors} that do not include it; refusing."
            )
        if len(survivors) < state["threshold"]:
            raise SecaggError(
                f"SecAgg session {session_id!r}: {len(survivors)} survivor(s), fewer than the "
                f"threshold {state['threshold']}; refusing to reveal a sum over so few nodes."
            )
        return maskers

    def _check_signatures(self, state: dict[str, Any], request: pb.SecaggUnmaskRequest) -> None:
        """At least t survivors must have signed this very survivor set (consistency check)."""
        if self.identity is None:
            return
        survivors = sorted(request.survivors)
        signers = set()
        for signature in request.signatures:
            if signature.node_id in survivors and signature.node_id not in signers:
                verify_survivor_signature(
                    signature, request.session_id, survivors, self.identity.ca_certificates
                )
                signers.add(signature.node_id)
        if len(signers) < state["threshold"]:
            raise SecaggError(
                f"SecAgg session {request.session_id!r}: only {len(signers)} survivor(s) "
                f"({sorted(signers)}) signed the survivor set {survivors}, fewer than the "
                f"threshold {state['threshold']}: the researcher may be showing nodes different "
                "survivor sets. Refusing."
            )

    # -- checks ----------------------------------------------------------------------------
    def _check_roster(self, session_id: str, participants: list[str], threshold: int) -> None:
        if not session_id:
            raise SecaggError("a SecAgg session id must be non-empty.")
        if len(set(participants)) != len(participants) or self.node_id not in participants:
            raise SecaggError(
                f"SecAgg session {session_id!r}: participants {participants} must be distinct and "
                f"include this node ({self.node_id!r})."
            )
        floor = minimum_threshold(len(participants))
        if not floor <= threshold <= len(participants):
            raise SecaggError(
                f"SecAgg session {session_id!r}: threshold {threshold} for {len(participants)} "
                f"participants is outside [{floor}, {len(participants)}]; a threshold below a "
                "majority would let the researcher unmask a single node. Refusing."
            )


def _advert_from(state: dict[str, Any]) -> pb.SecaggKeyAdvert:
    return pb.SecaggKeyAdvert.FromString(bytes.fromhex(state["advert"]))
