"""The node-level DP block: ``training_args["dp"] = {"type": "node", ...}``, parsed and checked.

Node-level (user-level) DP protects a node's whole dataset: each node clips its update (its
trained parameters minus the global ones, L2 norm over all parameters) to ``clip`` and adds
its share of discrete Gaussian noise before SecAgg masks it, so the sum the researcher
unmasks carries noise of standard deviation ``noise_multiplier * clip``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigurationError

__all__ = ["NODE_DP_TYPE", "NodeLevelDP", "parse_node_dp"]

#: The ``type`` of a node-level DP block.
NODE_DP_TYPE = "node"

_KNOWN = ("type", "clip", "noise_multiplier", "target_epsilon", "delta", "min_survivors")


@dataclass(frozen=True)
class NodeLevelDP:
    """Node-level DP settings.

    - ``clip``: L2 bound C on each node's update (all parameters together).
    - ``noise_multiplier``: z; the unmasked sum carries discrete Gaussian noise of
      standard deviation ``z * C``. None until resolved from ``target_epsilon``.
    - ``target_epsilon``: instead of z, the ε to reach at ``delta`` by the round limit; the
      researcher picks z from it before the first round.
    - ``delta``: the δ at which ε is reported.
    - ``min_survivors``: None: each of the round's n SecAgg participants adds variance
      ``(z C)^2 / n``, and a round that loses nodes carries less noise (the accountant
      charges it). An int m: each adds ``(z C)^2 / min(m, n)``, so any m survivors already
      carry the full noise (top-up against dropouts, paid for in utility).
    """

    clip: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    min_survivors: int | None = None

    def __post_init__(self) -> None:
        _positive("clip", self.clip)
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigurationError(
                "training_args['dp'] (type 'node') needs exactly one of 'noise_multiplier' "
                "and 'target_epsilon'"
            )
        if self.noise_multiplier is not None:
            _positive("noise_multiplier", self.noise_multiplier)
        if self.target_epsilon is not None:
            _positive("target_epsilon", self.target_epsilon)
        if (
            isinstance(self.delta, bool)
            or not isinstance(self.delta, int | float)
            or not 0 < self.delta < 1
        ):
            raise ConfigurationError(
                f"training_args['dp']['delta'] must be in (0, 1), got {self.delta!r}; pick it "
                "below 1 / (number of nodes), e.g. 1e-5"
            )
        if self.min_survivors is not None and (
            isinstance(self.min_survivors, bool)
            or not isinstance(self.min_survivors, int)
            or self.min_survivors < 1
        ):
            raise ConfigurationError(
                f"training_args['dp']['min_survivors'] must be a positive int or absent, "
                f"got {self.min_survivors!r}"
            )

    @property
    def z(self) -> float:
        """The noise multiplier; ConfigurationError while only target_epsilon is known."""
        if self.noise_multiplier is None:
            raise ConfigurationError(
                "training_args['dp'] gives target_epsilon, whose noise multiplier the "
                "researcher resolves before the first round; it is not resolved yet"
            )
        return float(self.noise_multiplier)

    def noise_shares(self, participants: int) -> int:
        """How many shares the total variance is split into in a round of ``participants``."""
        if self.min_survivors is None:
            return participants
        return min(self.min_survivors, participants)

    def with_noise_multiplier(self, noise_multiplier: float) -> NodeLevelDP:
        """These settings with z resolved (target_epsilon dropped)."""
        return dataclasses.replace(self, noise_multiplier=noise_multiplier, target_epsilon=None)

    def to_dict(self) -> dict[str, Any]:
        """The block as written in training_args (None fields left out)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {"type": NODE_DP_TYPE, **values}


def parse_node_dp(block: Mapping[str, Any]) -> NodeLevelDP:
    """A ``type = "node"`` dp block as NodeLevelDP; ConfigurationError naming what is wrong."""
    if not isinstance(block, Mapping):
        raise ConfigurationError(
            f"training_args['dp'] must be a dict (a TOML table), got {type(block).__name__}"
        )
    if block.get("type") != NODE_DP_TYPE:
        raise ConfigurationError(
            f"training_args['dp']['type'] is {block.get('type')!r}, not {NODE_DP_TYPE!r}"
        )
    unknown = sorted(set(block) - set(_KNOWN))
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) {unknown} in training_args['dp'] (type 'node'); known ones are "
            f"{sorted(_KNOWN)}"
        )
    if "clip" not in block:
        raise ConfigurationError(
            "training_args['dp'] (type 'node') needs 'clip', the L2 bound of each node's update"
        )
    values = {k: v for k, v in block.items() if k != "type"}
    return NodeLevelDP(**values)


def _positive(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"training_args['dp']['{name}'] must be a positive number, got {value!r}"
        )
