"""TOML experiments: `fedloom researcher run EXPERIMENT.toml` with no Python but the plan file."""

from researcher.config.blocks import AggregatorConfig, OptimizerConfig, PlanConfig, StrategyConfig
from researcher.config.experiment_config import ExperimentConfig, load_experiment_config

__all__ = [
    "AggregatorConfig",
    "ExperimentConfig",
    "OptimizerConfig",
    "PlanConfig",
    "StrategyConfig",
    "load_experiment_config",
]
