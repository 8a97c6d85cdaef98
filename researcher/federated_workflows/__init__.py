"""Federated workflows: the Experiment class."""

from researcher.federated_workflows.experiment import Experiment, find_latest_experiment
from researcher.plan_probe import PlanFile

__all__ = ["Experiment", "PlanFile", "find_latest_experiment"]
