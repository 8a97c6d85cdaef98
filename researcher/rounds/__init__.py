"""The round engine: exchange with nodes, reply validation, aggregation seam, round, state.

- `exchange`: send tasks and collect replies over a transport; decides nothing.
- `reply`: a train reply decoded and validated whole before anything is folded.
- `aggregation`: clear and secure aggregation behind one seam (`RoundAggregate`).
- `global_update`: the aggregate and the server optimizer give the new global model.
- `policy`: the `Strategy` base class: selection, waiting, deadlines, the verdict
  (registered strategies live in researcher/strategies).
- `round`: one round, asking the strategy every policy question.

The experiment's state, checkpointed and resumed as a whole, is
researcher/experiment_state.py.
"""

from researcher.rounds.aggregation import RoundAggregate
from researcher.rounds.exchange import Exchange, ExchangeResult, GrpcExchange, ReceivedReply
from researcher.rounds.policy import Strategy
from researcher.rounds.reply import InvalidReplyError, ModelTemplate, TrainReply
from researcher.rounds.round import PlanInfo, RoundResult, RoundSetup, run_round

__all__ = [
    "Exchange",
    "ExchangeResult",
    "GrpcExchange",
    "InvalidReplyError",
    "ModelTemplate",
    "PlanInfo",
    "ReceivedReply",
    "RoundAggregate",
    "RoundResult",
    "RoundSetup",
    "Strategy",
    "TrainReply",
    "run_round",
]
