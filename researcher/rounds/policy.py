"""The round policy: which nodes train, how long to wait for them, what a failure means.

Everything a round decides about nodes lives in a `Strategy`, in one place; the exchange
(researcher/rounds/exchange.py) only carries tasks and replies, and the round engine
(researcher/rounds/round.py) asks the strategy at each decision.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from common.errors import ConfigurationError, NoMatchingNodesError, RoundFailedError
from common.training_args import TrainingArgs
from researcher.rounds.exchange import Exchange, NodeView

__all__ = ["SETTLE_SECONDS", "Strategy", "WaitListener"]

#: Hears, while a round waits for nodes: the connected nodes, the eligible ones, how many
#: are needed (the progress display's "2 of 3 connected").
WaitListener = Callable[[Sequence[NodeView], Sequence[NodeView], int], None]

log = logging.getLogger(__name__)

#: Seconds to wait for more matching nodes once enough are connected, so nodes starting
#: together all join the first round of a run, and a node late by a heartbeat is not
#: judged by another node's tags.
SETTLE_SECONDS = 2.0


class Strategy(abc.ABC):
    """Chooses nodes per round, waits for them, sets the deadline, judges the answers."""

    #: Registry name (TOML `[strategy] name = ...`), set by `register_strategy`.
    name: ClassVar[str] = ""

    def __init__(self, min_nodes: int = 1) -> None:
        if not isinstance(min_nodes, int) or isinstance(min_nodes, bool) or min_nodes < 1:
            raise ConfigurationError(
                f"min_nodes must be an integer of at least 1, got {min_nodes!r}"
            )
        self.min_nodes = min_nodes

    # -- selection ------------------------------------------------------------------------
    @abc.abstractmethod
    def select(self, eligible: Sequence[str], round_number: int) -> list[str]:
        """The node ids that train in round `round_number`, among `eligible` ones."""

    def _check_enough(self, eligible: Sequence[str]) -> None:
        if len(eligible) < self.min_nodes:
            raise RoundFailedError(
                f"{len(eligible)} eligible node(s) connected, at least {self.min_nodes} needed"
            )

    # -- waiting --------------------------------------------------------------------------
    def wait_for_nodes(
        self,
        exchange: Exchange,
        tags: Sequence[str],
        restrict_to: Sequence[str] | None,
        timeout: float,
        *,
        settle: bool,
        on_wait: WaitListener | None = None,
    ) -> list[NodeView]:
        """Wait until enough nodes holding `tags` are connected; return the eligible ones.

        A run fails at once, listing every connected node's tags, when enough nodes are
        connected but too few hold the tags; it fails after `timeout` seconds when too few
        nodes connect at all. `settle` (first round) waits a moment for nodes starting
        together. `on_wait(connected, eligible, needed)` hears each change while it waits.
        """
        needed = self.min_nodes if restrict_to is None else len(restrict_to)

        def candidates() -> list[NodeView]:
            nodes = exchange.connected()
            if restrict_to is not None:
                nodes = [n for n in nodes if n.node_id in restrict_to]
            return nodes

        def eligible() -> list[NodeView]:
            nodes = [n for n in candidates() if n.matching_dataset(tags) is not None]
            if on_wait is not None and len(nodes) < needed:
                on_wait(exchange.connected(), nodes, needed)
            return nodes

        if len(eligible()) < needed:
            log.info(
                "waiting up to %.0f s for %d node(s) holding tags %s to connect on %s",
                timeout,
                needed,
                list(tags),
                exchange.address,
            )
            exchange.wait_until(
                lambda: len(eligible()) >= needed or len(candidates()) >= needed, timeout
            )
            if len(eligible()) < needed and len(candidates()) >= needed:
                exchange.wait_until(lambda: len(eligible()) >= needed, SETTLE_SECONDS)
            elif settle and eligible():
                time.sleep(SETTLE_SECONDS)
        nodes = eligible()
        if len(nodes) < needed:
            raise NoMatchingNodesError(_no_nodes_message(exchange, tags, restrict_to, needed))
        return nodes

    # -- deadlines and verdict --------------------------------------------------------------
    def round_deadline(self, training_args: TrainingArgs) -> float:
        """Seconds the nodes have to answer a round (and each SecAgg phase of it)."""
        return float(training_args.round_timeout)

    def check_answers(self, answered: Sequence[str], failures: Mapping[str, str]) -> None:
        """Raise RoundFailedError when too few nodes answered; the reasons are in the message."""
        if len(answered) < self.min_nodes:
            reasons = "; ".join(f"{node}: {why}" for node, why in failures.items()) or "no reply"
            raise RoundFailedError(
                f"only {len(answered)} node(s) answered, at least {self.min_nodes} needed ({reasons})"
            )

    # -- state ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """JSON-able settings, restored by `set_state` (checkpoints)."""
        return {"class": type(self).__name__, "name": self.name, "min_nodes": self.min_nodes}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.min_nodes = int(state.get("min_nodes", self.min_nodes))


def _no_nodes_message(
    exchange: Exchange, tags: Sequence[str], restrict_to: Sequence[str] | None, needed: int
) -> str:
    connected = exchange.connected()
    described = "; ".join(
        f"{n.label}: "
        + (", ".join(f"{d.name} {list(d.tags)}" for d in n.datasets) or "no datasets")
        for n in connected
    )
    return (
        f"{needed} node(s) holding a dataset with all tags {list(tags)} needed"
        + (f" among nodes {list(restrict_to)}" if restrict_to else "")
        + (
            f". Connected nodes: {described}"
            if connected
            else f". No node is connected to {exchange.address}"
        )
        + ". Register a dataset with these tags on a node (fedloom node --home DIR dataset add "
        "--tags ...), start more nodes, or change the experiment's tags."
    )
