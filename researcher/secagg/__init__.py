"""The researcher's side of double-masking secure aggregation (see common/secagg).

The round engine creates one :class:`SecureRoundSession` per round attempt, runs its
``setup`` (key adverts and share distribution) through its :class:`TaskExchange`, attaches
``train_context`` to each train request, hands validated masked replies to ``add_masked``,
and finally calls ``unmask`` with the nodes whose replies it accepted.
"""

from researcher.secagg.exchange import (
    CollectedReplies,
    CollectedReply,
    ExchangeResult,
    ReceivedReply,
    TaskExchange,
)
from researcher.secagg.session import Participant, SecureRoundResult, SecureRoundSession

__all__ = [
    "CollectedReplies",
    "CollectedReply",
    "ExchangeResult",
    "Participant",
    "ReceivedReply",
    "SecureRoundResult",
    "SecureRoundSession",
    "TaskExchange",
]
