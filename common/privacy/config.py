"""The `dp` block of training_args: which differential-privacy mechanism and its settings.

The block is a dict (Python) or a table (TOML `[training_args.dp]`) with a `type`:
`"local"` is record-level DP-SGD on each node (`LocalDp`, this module); `"node"` is
node-level DP under SecAgg (common.privacy.node_level).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.errors import ConfigurationError

if TYPE_CHECKING:
    from common.privacy.node_level import NodeLevelDP

__all__ = ["ACCOUNTANTS", "DP_TYPES", "LocalDp", "parse_dp_block"]

#: Every value `type` may take: each names one mechanism.
DP_TYPES = ("local", "node")

#: Privacy accountants from Opacus: RDP (Mironov 2017, the usual one) and PRV (Gopi et al.
#: 2021, tighter ε for the same noise).
ACCOUNTANTS = ("rdp", "prv")

_LOCAL_KEYS = (
    "type",
    "clip",
    "noise_multiplier",
    "target_epsilon",
    "delta",
    "rounds",
    "accountant",
)


@dataclass(frozen=True)
class LocalDp:
    """Record-level DP-SGD on the node (Abadi et al. 2016) with Poisson sampling.

    Each local step samples every training record with probability q = batch_size / N,
    clips each record's gradient to L2 norm `clip`, sums, adds N(0, sigma² clip²) per
    coordinate and divides by the expected batch size q·N. sigma is `noise_multiplier`, or,
    with `target_epsilon`, the smallest sigma whose ε after `rounds` rounds of this node's
    local steps is at most `target_epsilon` at `delta` (each round the node trains in
    counts; a node that trains in more rounds than `rounds` spends more than the target).
    """

    clip: float
    delta: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    rounds: int | None = None
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        _positive_number(self.clip, "clip", "the per-record L2 bound C, e.g. 1.0")
        _positive_number(self.delta, "delta", "e.g. 1e-5, below 1 / (records on a node)")
        if not float(self.delta) < 1.0:
            raise ConfigurationError(
                f"training_args['dp']['delta'] must be below 1, got {self.delta!r}: take e.g. "
                "1e-5, below 1 / (records on a node)"
            )
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigurationError(
                "training_args['dp'] needs exactly one of 'noise_multiplier' (sigma, e.g. 1.0) and "
                "'target_epsilon' (the ε to reach after 'rounds' rounds, at 'delta')"
            )
        if self.noise_multiplier is not None:
            _positive_number(self.noise_multiplier, "noise_multiplier", "sigma, e.g. 1.0")
            if self.rounds is not None:
                raise ConfigurationError(
                    "training_args['dp']['rounds'] only serves 'target_epsilon': remove it, or "
                    "replace 'noise_multiplier' by 'target_epsilon'"
                )
        if self.target_epsilon is not None:
            _positive_number(self.target_epsilon, "target_epsilon", "ε, e.g. 3.0")
            if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
                raise ConfigurationError(
                    f"training_args['dp']['rounds'] must be a positive integer with "
                    f"'target_epsilon' (got {self.rounds!r}): set it to the number of rounds "
                    "the experiment runs, over which the ε target is spread"
                )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigurationError(
                f"training_args['dp']['accountant'] is {self.accountant!r}; valid ones are "
                f"{list(ACCOUNTANTS)}"
            )

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> LocalDp:
        unknown = sorted(set(block) - set(_LOCAL_KEYS))
        if unknown:
            raise ConfigurationError(
                f"unknown key(s) {unknown} in training_args['dp'] of type 'local'; known ones "
                f"are {sorted(_LOCAL_KEYS)}"
            )
        if "clip" not in block:
            raise ConfigurationError(
                "training_args['dp'] needs 'clip', the per-record gradient L2 bound C (e.g. 1.0)"
            )
        if "delta" not in block:
            raise ConfigurationError(
                "training_args['dp'] needs 'delta', the δ of the (ε, δ) guarantee (e.g. 1e-5, "
                "below 1 / (records on a node))"
            )
        values = {k: v for k, v in block.items() if k != "type"}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "local", "clip": self.clip, "delta": self.delta}
        for name in ("noise_multiplier", "target_epsilon", "rounds"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["accountant"] = self.accountant
        return out


def parse_dp_block(block: Any) -> LocalDp | NodeLevelDP:
    """Validate a `dp` block and return its typed settings (`LocalDp` for type "local",
    `NodeLevelDP` for type "node")."""
    if not isinstance(block, Mapping):
        raise ConfigurationError(
            f"training_args['dp'] must be a table/dict such as {{'type': 'local', 'clip': 1.0, "
            f"'noise_multiplier': 1.0, 'delta': 1e-5}}, got {type(block).__name__}"
        )
    kind = block.get("type")
    if kind == "local":
        return LocalDp.from_dict(block)
    if kind == "node":
        from common.privacy.node_level import parse_node_dp

        return parse_node_dp(block)
    raise ConfigurationError(
        f"training_args['dp']['type'] is {kind!r}; valid types are {list(DP_TYPES)} "
        "('local': record-level DP-SGD on each node, 'node': node-level DP under SecAgg)"
    )


def _positive_number(value: Any, name: str, hint: str) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"training_args['dp']['{name}'] must be a positive number ({hint}), got {value!r}"
        )
