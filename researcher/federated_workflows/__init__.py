"""Federated workflows: the Experiment class."""

from researcher.federated_workflows.experiment import Experiment

__all__ = ["Experiment"]
