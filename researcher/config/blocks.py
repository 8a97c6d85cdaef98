"""One dataclass per block of an experiment TOML file, each checked key by key.

As in declearn's `main/config`, every block is built from a plain table (`from_table`) and
every error names the file, the block and the key at fault, and what would be valid.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigurationError
from common.optimizers.optimizer import Optimizer
from researcher.aggregators import AGGREGATORS, Aggregator, build_aggregator
from researcher.strategies import STRATEGIES, Strategy, build_strategy

__all__ = [
    "AGGREGATOR_ALIASES",
    "AggregatorConfig",
    "OptimizerConfig",
    "PlanConfig",
    "StrategyConfig",
    "check_keys",
    "expect_int",
    "expect_number",
    "expect_str",
    "expect_str_list",
    "expect_table",
]


#: Other names TOML files may use for registered aggregators.
AGGREGATOR_ALIASES = {
    "fedaverage": "fedavg",
    "trimmed_mean": "trimmed-mean",
    "multi_krum": "multi-krum",
    "geometric_median": "geometric-median",
    "rfa": "geometric-median",
}


def check_keys(
    table: Mapping[str, Any], allowed: Collection[str], where: str, required: Collection[str] = ()
) -> None:
    """Raise for unknown keys (with the closest valid one) and for missing required keys."""
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigurationError(
                f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(sorted(allowed))}"
            )
    for key in sorted(required):
        if key not in table:
            raise ConfigurationError(f"{where}: missing required key '{key}'")


def expect_table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{where} must be a table ([section] or {{...}}), got {type(value).__name__} {value!r}"
        )
    return value


def expect_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where} must be a non-empty string, got {value!r}")
    return value


def expect_int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def expect_number(value: Any, where: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{where} must be a number, got {value!r}")
    if positive and value <= 0:
        raise ConfigurationError(f"{where} must be positive, got {value!r}")
    return float(value)


def expect_str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError(f"{where} must be a list of strings, got {value!r}")
    return list(value)


@dataclass(frozen=True)
class PlanConfig:
    """`[plan]`: the training plan file (relative to the TOML file) and its class."""

    file: Path
    class_name: str

    @classmethod
    def from_table(cls, table: Any, where: str, base_dir: Path) -> PlanConfig:
        table = expect_table(table, where)
        check_keys(table, {"file", "class"}, where, required={"file", "class"})
        file = Path(expect_str(table["file"], f"{where} file"))
        if not file.is_absolute():
            file = base_dir / file
        if not file.is_file():
            raise ConfigurationError(f"{where} file: {file} does not exist")
        return cls(file=file, class_name=expect_str(table["class"], f"{where} class"))


@dataclass(frozen=True)
class AggregatorConfig:
    """`[aggregator]`: `name` of a registered aggregator (default "fedavg") plus its settings."""

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Any, where: str) -> AggregatorConfig:
        if isinstance(table, str):
            table = {"name": table}
        table = dict(expect_table(table, where))
        name = expect_str(table.pop("name", cls.name), f"{where} name").lower()
        name = AGGREGATOR_ALIASES.get(name, name)
        if name not in AGGREGATORS:
            raise ConfigurationError(
                f"{where} name: unknown aggregator '{name}'; known: {', '.join(sorted(AGGREGATORS))}"
            )
        return cls(name=name, params=table)

    def build(self, where: str) -> Aggregator:
        try:
            return build_aggregator(self.name, self.params)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class OptimizerConfig:
    """`[agg_optimizer]`: `lr`, optional `decay`, `modules` and `regularizers` by name.

    Modules and regularizers are names (`"yogi"`) or `[name, {config}]` pairs, as
    `common.optimizers.optimizer.Optimizer` accepts them.
    """

    lr: Any
    decay: Any = 0.0
    modules: list[Any] = field(default_factory=list)
    regularizers: list[Any] = field(default_factory=list)

    @classmethod
    def from_table(cls, table: Any, where: str) -> OptimizerConfig:
        table = expect_table(table, where)
        check_keys(table, {"lr", "decay", "modules", "regularizers"}, where, required={"lr"})
        lr = table["lr"]
        if isinstance(lr, int | float):
            expect_number(lr, f"{where} lr")
        for key in ("modules", "regularizers"):
            if key in table and not isinstance(table[key], list):
                raise ConfigurationError(
                    f"{where} {key} must be a list of names or [name, {{config}}] pairs, got {table[key]!r}"
                )
        return cls(
            lr=lr,
            decay=table.get("decay", 0.0),
            modules=list(table.get("modules", [])),
            regularizers=list(table.get("regularizers", [])),
        )

    def build(self, where: str) -> Optimizer:
        try:
            return Optimizer(
                lr=self.lr, decay=self.decay, modules=self.modules, regularizers=self.regularizers
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class StrategyConfig:
    """`[strategy]`: `name` ("default" or "sampling") plus its settings (min_nodes, fraction, seed)."""

    name: str = "default"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Any, where: str) -> StrategyConfig:
        table = dict(expect_table(table, where))
        name = expect_str(table.pop("name", "default"), f"{where} name")
        if name.lower() not in STRATEGIES:
            raise ConfigurationError(
                f"{where} name: unknown strategy '{name}'; known: {', '.join(sorted(STRATEGIES))}"
            )
        allowed = {"min_nodes"} | (
            {"fraction", "seed", "count"} if name.lower() == "sampling" else set()
        )
        check_keys(table, allowed | {"name"}, where)
        if "min_nodes" in table:
            expect_int(table["min_nodes"], f"{where} min_nodes", 1)
        if "fraction" in table:
            fraction = expect_number(table["fraction"], f"{where} fraction")
            if fraction > 1:
                raise ConfigurationError(f"{where} fraction must be in (0, 1], got {fraction}")
        if "seed" in table:
            expect_int(table["seed"], f"{where} seed", 0)
        if "count" in table:
            expect_int(table["count"], f"{where} count", 1)
        return cls(name=name.lower(), params=table)

    def build(self, where: str) -> Strategy:
        try:
            return build_strategy(self.name, self.params)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc
