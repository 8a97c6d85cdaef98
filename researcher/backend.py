"""Where a run's tasks go when not to real nodes over gRPC: a `Backend` opens the exchange.

The round engine talks to nodes only through an `Exchange` (researcher/rounds/exchange.py).
A backend, given to `Experiment(..., backend=...)`, builds that exchange for one run from
the run's frozen setup, e.g. `fedloom.simulation.Simulation`, whose virtual nodes run on Ray.
The researcher never imports a backend's implementation: it only calls this protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from researcher.rounds.exchange import Exchange
from researcher.rounds.round import RoundSetup

__all__ = ["Backend"]


class Backend(Protocol):
    """Opens the exchange the rounds of one experiment run through."""

    def open_exchange(self, setup: RoundSetup, folder: Path) -> Exchange:
        """The exchange for a run of `setup`, keeping its files under `folder` (the
        experiment's folder); raise ConfigurationError when the backend cannot run it."""
        ...
