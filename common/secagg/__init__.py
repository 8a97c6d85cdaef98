"""Secure aggregation: the researcher learns sums over the surviving nodes, not one update.

Protocol: double masking with threshold recovery (Bonawitz et al., CCS 2017), with keys
fresh for every session (one attempt of one round, id from :func:`new_session_id`). The
researcher drives four phases (``researcher.secagg``); a node answers them
(:class:`~common.secagg.participant.SecaggParticipant`, state in its home):

1. Advertise. Node ``i`` creates two X25519 key pairs (cipher ``c_i``, mask ``s_i``) and a
   32-byte self-mask seed ``b_i`` for this session only, and signs ``(session, i, c_i^PK,
   s_i^PK, t, roster)`` with the private key of its TLS client certificate (:mod:`.advert`).
2. Share. Each node receives every advert, checks that each is signed by a certificate the
   federation CA issued to that node id, that every advertiser is one of the participants
   it was told and was told the same roster and ``t``, and that its own keys are unchanged; then it splits ``b_i`` and ``s_i^SK``
   ``t``-of-``n`` with Shamir (:mod:`.shamir`, GF(2^31 - 1), vectorised) and seals each
   peer's share with AES-256-GCM under HKDF(X25519(c_i, c_j)) bound to session, sender and
   receiver (:mod:`.share_box`). The researcher relays the sealed shares.
3. Mask. With the train request, node ``i`` opens the shares sent to it; the senders ``U``
   are the session's nodes. It sends ``y_i = enc(x_i) + PRG(b_i) + sum_{j in U} sign(i, j)
   PRG(s_ij)`` mod 2^64 (:mod:`.double_masking`): fixed point (:class:`FixedPoint`),
   AES-128-CTR keystreams, pairwise seeds from X25519(s_i, s_j) through HKDF bound to
   session, payload and pair (:mod:`.kdf`), ``+`` toward higher node ids and ``-`` below.
4. Consistency check. The researcher names survivors ``S`` (uploads it accepted); each
   survivor signs ``(session, S)`` with its certificate key, once per session.
5. Unmask. Shown at least ``t`` survivors' signatures over that same ``S``, each survivor
   returns its share of ``b_v`` for every ``v`` in ``S`` and of ``s_u^SK`` for every ``u`` in
   the dropped set ``D = U - S``. With ``t`` answers the researcher rebuilds them, removes the
   self masks of ``S`` and the masks ``S`` added toward ``D``, and decodes the sum over ``S``.

Recovery works with up to ``n - t`` nodes lost at any phase (advertise, share, upload,
unmask). ``t`` defaults to a strict majority of the round's participants, at least 2
(``SecureAggregation(threshold=...)`` may raise it, never lower it below a majority).

Threat model.

- Honest-but-curious researcher (follows the protocol, keeps and inspects everything):
  learns the sum over the survivors, the survivor and dropped sets, and what travels in
  clear (sample counts when parameters are not protected, metrics, clear aux-var fields).
  Each ``y_i`` is uniform to it (the self mask alone hides ``x_i``). A dropped node's late
  upload stays hidden: the researcher obtains that node's mask key, never its self-mask
  seed, so ``y_u`` minus its pairwise masks is still ``enc(x_u) + PRG(b_u)``.
- Malicious researcher (deviates, forges, replays): cannot substitute round keys or invent
  participants, since nodes verify every advert against the federation CA and the node id
  in the certificate and refuse the round. Shares are sealed for their receiver and bound
  to the session. Nodes refuse any unmask request asking both kinds of share for one node,
  a second different dropped set (remembered in the node home across restarts), fewer than
  ``t`` survivors, a partition other than the nodes that shared, and masking after
  revealing. Each survivor signs one survivor set per session and reveals nothing without
  ``t`` signatures over the set it is shown, so the researcher cannot tell one node "you all
  survived" and the others "it dropped" (each story needs ``t`` signers, ``2t > n``). Nor can it
  show nodes different rosters or thresholds: each advert signs the roster and threshold its
  node was told, and peers refuse adverts that differ from theirs. What remains: it chooses
  who takes part (splitting nodes into separate small rounds yields sums over as few as 2
  nodes, as an honest selection of 2 would), it can drop honest nodes at will (a denial of
  service), and it always learns the sum.
- Colluding nodes: up to ``t - 1`` nodes, together with the researcher, learn nothing about
  another node's update beyond what the sum and their own inputs imply: they hold fewer
  than ``t`` shares of its secrets. ``t`` or more can rebuild its seed and key. Privacy,
  not integrity: a malicious node can spoil the sum (out-of-range garbage within the clip,
  or forged shares; a forged mask-key share is caught against the advertised key, a forged
  self-mask share yields a wrong sum).
- ``--insecure`` (no certificates): adverts are neither signed nor verified (the node logs
  so once at start), so a malicious researcher can substitute keys or invent participants
  and unmask individual updates; channels are plain text, so anyone on the path reads the
  shares' ciphertexts and masked uploads (still masked) and can tamper with tasks.

SecAgg hides individual updates, not the aggregate: the sum, and hence the global model, is
revealed by design.

Legacy: :class:`NodeMasker`, :class:`SecureSum` and :class:`CorrectionLedger` implement the
earlier pairwise-only scheme (long-term keys in the node home, dropout corrections). The
round engine no longer uses it (``researcher.rounds`` drives ``researcher.secagg``); it does
not survive the late-upload attack above and is to be removed with its callers.
"""

from common.secagg.advert import NodeIdentity, verify_advert
from common.secagg.double_masking import DoubleMasker, removal_seeds, survivors_sum
from common.secagg.fixed_point import FixedPoint
from common.secagg.kdf import agree, mask_seed, new_session_id
from common.secagg.keys import SecaggKeyPair, load_or_create_keypair
from common.secagg.ledger import CorrectionLedger
from common.secagg.masking import (
    apply_corrections,
    dropout_correction,
    mask,
    sum_masked,
    unmask_sum,
)
from common.secagg.node_masker import NodeMasker
from common.secagg.participant import SecaggParticipant, share_point
from common.secagg.secure_sum import SecureSum
from common.secagg.settings import (
    DEFAULT_CLIP,
    DEFAULT_FRACTION_BITS,
    DEFAULT_MIN_SURVIVORS,
    SecureAggregation,
    minimum_threshold,
)
from common.secagg.shamir import reconstruct, share_secrets

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_FRACTION_BITS",
    "DEFAULT_MIN_SURVIVORS",
    "CorrectionLedger",
    "DoubleMasker",
    "FixedPoint",
    "NodeIdentity",
    "NodeMasker",
    "SecaggKeyPair",
    "SecaggParticipant",
    "SecureAggregation",
    "SecureSum",
    "agree",
    "apply_corrections",
    "dropout_correction",
    "load_or_create_keypair",
    "mask",
    "mask_seed",
    "minimum_threshold",
    "new_session_id",
    "reconstruct",
    "removal_seeds",
    "share_point",
    "share_secrets",
    "sum_masked",
    "survivors_sum",
    "unmask_sum",
    "verify_advert",
]
