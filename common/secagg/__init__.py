"""Secure aggregation: the researcher learns the sum of the nodes' vectors, not the vectors.

Protocol (one session = one attempt of one round, id from :func:`new_session_id`):

1. Each node holds a long-term X25519 key pair in its home (:func:`load_or_create_keypair`)
   and announces the raw public key in its ``Hello``. The researcher relays every
   participant's key to every participant with the train request (``SecaggContext``).
2. Node ``i`` derives, for each peer ``j`` and payload ``p``, a 16-byte seed
   ``HKDF-SHA256(X25519(sk_i, pk_j), info = session, p, ordered ids and keys)`` and expands it
   with AES-128-CTR into a mask ``m_ij``. It sends ``y_i = enc(x_i) + sum_{j>i} m_ij -
   sum_{j<i} m_ij`` mod 2^64 (:class:`NodeMasker`), where ``enc`` is fixed point
   (:class:`FixedPoint`) and ranks are node ids in code-point order.
3. The researcher adds the ``y_i`` (:class:`SecureSum`); pairwise masks cancel and it decodes
   the sum.
4. Dropouts: if participants ``D`` never deliver, the researcher declares them dropped (once),
   and each survivor ``i`` sends ``c_i = sum_{j in D} sign(i, j) m_ij``
   (:meth:`NodeMasker.dropout_correction`), recomputed from its keys without retraining. The
   researcher subtracts the ``c_i`` (:meth:`SecureSum.add_correction`): the masks toward ``D``
   cancel and the survivors' exact sum remains.

Threat model. The researcher is honest-but-curious: it follows the protocol, relays keys
faithfully and may inspect everything it receives. Nodes do not collude with it. Under these
assumptions each ``y_i`` is indistinguishable from uniform (AES-CTR keystream under a key the
researcher cannot derive), corrections only carry masks toward nodes that sent nothing, and
the researcher learns the sum over the survivors only. Channels are TLS, so peers see
nothing of each other's payloads.

What a malicious researcher could do, and what we do about it:

- Ask a node for corrections against several dropped sets (e.g. one peer at a time) to learn
  individual pairwise masks. Refused: a node accepts one dropped set per session
  (:class:`CorrectionLedger`); a peer it was once told survived can never become dropped.
- Claim every peer but the node dropped, so ``y_i - c_i = x_i``. Refused: a node gives no
  correction leaving fewer than ``min_survivors`` (>= 2) survivors.
- Ask a node to mask a payload twice under the same seeds (``y - y' = x - x'``). Refused: a
  payload name is masked once per session; session ids carry a random nonce per attempt.
- Ask for a correction for a payload the node never masked, or list the node itself or
  strangers as dropped. Refused.
- Accept a "dropped" node's late payload after collecting corrections: ``y_j`` plus the
  survivors' ``c_i`` reveal ``x_j``. :class:`SecureSum` refuses such payloads, which protects
  against accidents only; a researcher that keeps them anyway is outside the model.
- Tell different survivors different dropped sets, substitute public keys when relaying
  them (man in the middle), or invent participants whose keys it holds (Sybils): each can
  reveal an individual update. Not prevented: doing so needs
  node-to-node consistency checks with signed messages or secret-shared keys (the full
  Bonawitz et al. 2017 protocol), which cost extra rounds of communication. We accept this
  risk for an honest-but-curious researcher. Operators may compare key fingerprints
  (:meth:`SecaggKeyPair.fingerprint`) out of band; a node refuses a round that relays a
  key for itself other than its own.

SecAgg hides individual updates from the researcher, not the aggregate: the sum (and hence
the global model) is revealed by design, and clear-text fields (sample counts, metrics) are
not protected.
"""

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
from common.secagg.secure_sum import SecureSum
from common.secagg.settings import (
    DEFAULT_CLIP,
    DEFAULT_FRACTION_BITS,
    DEFAULT_MIN_SURVIVORS,
    SecureAggregation,
)

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_FRACTION_BITS",
    "DEFAULT_MIN_SURVIVORS",
    "CorrectionLedger",
    "FixedPoint",
    "NodeMasker",
    "SecaggKeyPair",
    "SecureAggregation",
    "SecureSum",
    "agree",
    "apply_corrections",
    "dropout_correction",
    "load_or_create_keypair",
    "mask",
    "mask_seed",
    "new_session_id",
    "sum_masked",
    "unmask_sum",
]
