"""Training arguments with Fed-BioMed's names, validated on the researcher before anything runs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.constants import DEFAULT_ROUND_TIMEOUT
from common.errors import ConfigurationError

if TYPE_CHECKING:
    from common.privacy.config import LocalDp
    from common.privacy.node_level import NodeLevelDP

__all__ = ["TrainingArgs"]


@dataclass(frozen=True)
class TrainingArgs:
    """Local training settings sent to every node with each train request.

    `epochs` and `num_updates` are exclusive: `num_updates` counts optimizer steps
    (batches), cycling over the data as needed. `random_seed` makes batching and torch
    initialisation deterministic; None lets each node draw its own. `log_interval`: the
    node logs the training loss every that many local steps (relayed to the researcher);
    0 turns it off. `dp`: a differential-privacy block (common.privacy.parse_dp_block), e.g.
    record-level DP-SGD ``{"type": "local", "clip": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}``
    (common.privacy.LocalDp) or node-level DP under SecAgg
    ``{"type": "node", "clip": C, "noise_multiplier": z, "delta": d}``
    (common.privacy.NodeLevelDP; the `node_dp` property parses it).
    """

    epochs: int | None = None
    num_updates: int | None = None
    batch_size: int = 48
    test_ratio: float = 0.0
    test_on_global_updates: bool = False
    test_on_local_updates: bool = False
    random_seed: int | None = None
    dry_run: bool = False
    log_interval: int = 10
    round_timeout: float = DEFAULT_ROUND_TIMEOUT
    dp: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.dp is not None:
            self._check_dp()
        if self.epochs is not None and self.num_updates is not None:
            raise ConfigurationError(
                "training_args sets both 'epochs' and 'num_updates': keep only one of them"
            )
        for name in ("epochs", "num_updates", "batch_size"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ConfigurationError(
                    f"training_args['{name}'] must be a positive integer, got {value!r}"
                )
        if (
            not isinstance(self.log_interval, int)
            or isinstance(self.log_interval, bool)
            or self.log_interval < 0
        ):
            raise ConfigurationError(
                f"training_args['log_interval'] must be a whole number of steps (0: no step "
                f"logs), got {self.log_interval!r}"
            )
        for name in ("test_ratio", "round_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigurationError(f"training_args['{name}'] must be a number, got {value!r}")
        if not 0.0 <= float(self.test_ratio) < 1.0:
            raise ConfigurationError(
                f"training_args['test_ratio'] must be in [0, 1), got {self.test_ratio!r}"
            )
        if not float(self.round_timeout) > 0:
            raise ConfigurationError(
                f"training_args['round_timeout'] must be a positive number of seconds, got {self.round_timeout!r}"
            )

    def _check_dp(self) -> None:
        """Parse the dp block (common.privacy.parse_dp_block dispatches on its type)."""
        from common.privacy.config import parse_dp_block

        parse_dp_block(self.dp)

    @property
    def node_dp(self) -> NodeLevelDP | None:
        """The node-level DP settings (common.privacy.NodeLevelDP), or None without them."""
        if self.dp is None or self.dp.get("type") != "node":
            return None
        from common.privacy.node_level import parse_node_dp

        return parse_node_dp(self.dp)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | TrainingArgs | None) -> TrainingArgs:
        """Build from a dict, refusing unknown keys with the list of known ones."""
        if values is None:
            return cls()
        if isinstance(values, TrainingArgs):
            return values
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown training argument(s) {unknown}; known ones are {sorted(known)}"
            )
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every setting."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingArgs:
        return cls.from_dict(json.loads(text) if text else {})

    def replace(self, **changes: Any) -> TrainingArgs:
        return dataclasses.replace(self, **changes)

    @property
    def local_dp(self) -> LocalDp | None:
        """Record-level DP-SGD settings (common.privacy.LocalDp), or None without them."""
        if self.dp is None or self.dp.get("type") != "local":
            return None
        from common.privacy.config import LocalDp

        return LocalDp.from_dict(self.dp)

    @property
    def effective_epochs(self) -> int:
        """Epochs to run when num_updates is not set (default 1)."""
        return 1 if self.epochs is None else self.epochs
