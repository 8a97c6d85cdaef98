"""Simulated nodes: an experiment's rounds on virtual nodes trained by a pool of Ray actors.

`Simulation` is the backend to give `Experiment(..., backend=...)`; `fedloom simulate`
builds one from the command line. Ray is imported only when a simulation starts, so the
core install (without the `simulation` extra) imports this package fine.
"""

from fedloom.simulation.settings import DEFAULT_OBJECT_STORE_BYTES, Simulation

__all__ = ["DEFAULT_OBJECT_STORE_BYTES", "Simulation"]
