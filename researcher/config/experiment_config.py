"""An experiment described by a TOML file, and the Experiment built from it.

```toml
name = "fedyogi-scaffold"        # folder under --out (default: the file's stem)
tags = ["#tab"]
rounds = 4
secagg = false                   # or a [secagg] table: clip, fraction_bits, ...

[plan]
file = "plan.py"                 # relative to this file
class = "LogisticPlan"

[training_args]                  # common.training_args.TrainingArgs
num_updates = 5
batch_size = 1000
round_timeout = 600

[aggregator]
name = "fedaverage"

[agg_optimizer]                  # researcher side (FedOpt, Scaffold server)
lr = 0.8
modules = ["scaffold-server", ["yogi", {beta_1 = 0.9}]]

[strategy]
name = "sampling"                # or "default"
fraction = 0.5
min_nodes = 2
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigurationError, SecaggError
from common.secagg import SecureAggregation
from common.tags import tag_problem
from common.training_args import TrainingArgs
from researcher.backend import Backend
from researcher.checkpoint import DEFAULT_KEEP_CHECKPOINTS
from researcher.config.blocks import (
    AggregatorConfig,
    OptimizerConfig,
    PlanConfig,
    StrategyConfig,
    check_keys,
    expect_int,
    expect_number,
    expect_str,
    expect_str_list,
    expect_table,
)
from researcher.federated_workflows import Experiment
from researcher.plan_probe import PlanFile
from researcher.run_options import RunOptions

__all__ = ["ExperimentConfig", "load_experiment_config"]

_TOP_KEYS = {
    "name",
    "tags",
    "nodes",
    "rounds",
    "plan",
    "training_args",
    "model_args",
    "aggregator",
    "agg_optimizer",
    "strategy",
    "secagg",
    "keep_checkpoints",
    "node_wait_timeout",
}

#: Seconds an experiment waits for its nodes before round 1 (Experiment's default).
DEFAULT_NODE_WAIT_TIMEOUT = 60.0


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a TOML experiment file says, validated."""

    source: Path
    name: str
    tags: list[str]
    rounds: int
    plan: PlanConfig
    nodes: list[str] | None = None
    training_args: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    agg_optimizer: OptimizerConfig | None = None
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    secagg: bool | dict[str, Any] = False
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS
    node_wait_timeout: float = DEFAULT_NODE_WAIT_TIMEOUT

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path) -> ExperimentConfig:
        """Validate a parsed TOML document; errors name `source` and the key at fault."""
        where = str(source)
        check_keys(data, _TOP_KEYS, where, required={"tags", "rounds", "plan"})
        training_args = dict(
            expect_table(data.get("training_args", {}), f"{where}: [training_args]")
        )
        _check_training_args(training_args, f"{where}: [training_args]")
        secagg = data.get("secagg", False)
        if not isinstance(secagg, bool):
            secagg = dict(
                expect_table(secagg, f"{where}: secagg (true, false or a [secagg] table)")
            )
            _check_secagg(secagg, f"{where}: [secagg]")
        return cls(
            source=source,
            name=expect_str(data.get("name", source.stem), f"{where}: name"),
            tags=_checked_tags(expect_str_list(data["tags"], f"{where}: tags"), where),
            rounds=expect_int(data["rounds"], f"{where}: rounds", 1),
            plan=PlanConfig.from_table(data["plan"], f"{where}: [plan]", source.parent),
            nodes=expect_str_list(data["nodes"], f"{where}: nodes") if "nodes" in data else None,
            training_args=training_args,
            model_args=dict(expect_table(data.get("model_args", {}), f"{where}: [model_args]")),
            aggregator=AggregatorConfig.from_table(
                data.get("aggregator", {}), f"{where}: [aggregator]"
            ),
            agg_optimizer=(
                OptimizerConfig.from_table(data["agg_optimizer"], f"{where}: [agg_optimizer]")
                if "agg_optimizer" in data
                else None
            ),
            strategy=StrategyConfig.from_table(data.get("strategy", {}), f"{where}: [strategy]"),
            secagg=secagg,
            keep_checkpoints=expect_int(
                data.get("keep_checkpoints", DEFAULT_KEEP_CHECKPOINTS),
                f"{where}: keep_checkpoints",
                1,
            ),
            node_wait_timeout=expect_number(
                data.get("node_wait_timeout", DEFAULT_NODE_WAIT_TIMEOUT),
                f"{where}: node_wait_timeout",
            ),
        )

    def build_experiment(
        self,
        folder: Path,
        run_options: RunOptions | None = None,
        backend: Backend | None = None,
    ) -> Experiment:
        """The configured Experiment, writing into `folder` (its rounds run on `backend`,
        e.g. a simulation, when given; on real nodes otherwise)."""
        where = str(self.source)
        exp = Experiment(
            tags=self.tags,
            nodes=self.nodes,
            # Probed in a child process: the researcher never imports the plan (nor torch).
            training_plan=PlanFile(self.plan.file, self.plan.class_name),
            training_args=self.training_args,
            model_args=self.model_args,
            round_limit=self.rounds,
            aggregator=self.aggregator.build(f"{where}: [aggregator]"),
            agg_optimizer=(
                None
                if self.agg_optimizer is None
                else self.agg_optimizer.build(f"{where}: [agg_optimizer]")
            ),
            node_selection_strategy=self.strategy.build(f"{where}: [strategy]"),
            secagg=self.secagg,
            experimentation_folder=folder,
            node_wait_timeout=self.node_wait_timeout,
            keep_checkpoints=self.keep_checkpoints,
            run_options=run_options,
            backend=backend,
        )
        exp.check_training_plan()  # a wrong file or class fails now, naming the file
        return exp


def _checked_tags(tags: list[str], where: str) -> list[str]:
    for tag in tags:
        problem = tag_problem(tag)
        if problem is not None:
            raise ConfigurationError(f"{where}: tags: {problem}")
    return tags


def _check_training_args(values: dict[str, Any], where: str) -> None:
    try:
        TrainingArgs.from_dict(values)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def _check_secagg(values: dict[str, Any], where: str) -> None:
    try:
        SecureAggregation.from_value(values)
    except (SecaggError, TypeError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def load_experiment_config(path: Path) -> ExperimentConfig:
    """Parse and validate an experiment TOML file."""
    path = Path(path).resolve()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigurationError(f"experiment file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        ) from exc
    return ExperimentConfig.from_dict(data, path)
