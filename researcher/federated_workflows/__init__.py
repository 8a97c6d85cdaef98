"""Federated workflows: the Experiment class."""

from researcher.federated_workflows.experiment import Experiment, find_latest_experiment

__all__ = ["Experiment", "find_latest_experiment"]
