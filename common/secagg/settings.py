"""The SecAgg settings of an experiment: ``Experiment(..., secagg=True | SecureAggregation(...))``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from common.errors import SecaggError
from common.secagg.fixed_point import FixedPoint

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_FRACTION_BITS",
    "DEFAULT_MIN_SURVIVORS",
    "SecureAggregation",
    "minimum_threshold",
]

# Values (parameters, aux vars, sample-weighted parameters) must lie in [-1e6, 1e6]. Model
# weights and optimizer states are orders of magnitude below; 1e6 still leaves room for
# weights multiplied by per-node sample counts before summation, and a value beyond it means
# training diverged, which SecAgg reports instead of wrapping around.
DEFAULT_CLIP = 1e6
# 30 fraction bits give a per-value error of 2^-31 ~ 4.7e-10, finer than float32's spacing for
# any value above 2^-7 ~ 8e-3 in magnitude; with DEFAULT_CLIP they leave room for 8589 nodes
# (n * 1e6 * 2^30 < 2^63), far beyond a cross-silo federation.
DEFAULT_FRACTION_BITS = 30
# A sum over a single node is that node's update: recovery after dropouts refuses to reveal
# a sum over fewer nodes than this.
DEFAULT_MIN_SURVIVORS = 2


def minimum_threshold(n_nodes: int) -> int:
    """The smallest threshold a node accepts for ``n_nodes`` participants: a strict majority,
    and at least 2 (a sum over one node is that node's update)."""
    return max(n_nodes // 2 + 1, DEFAULT_MIN_SURVIVORS)


@dataclass(frozen=True, kw_only=True)
class SecureAggregation:
    """Secure aggregation settings, validated on construction.

    - ``clip``: every protected value must lie in ``[-clip, clip]`` (checked, never wrapped).
    - ``fraction_bits``: fixed-point precision; per-value error is ``2**-(fraction_bits + 1)``.
    - ``protect_parameters``: mask model parameters too, not only the aux vars' summable fields.
    - ``min_survivors``: smallest number of nodes whose sum may be revealed after dropouts.
    - ``threshold``: Shamir threshold t of double masking (None: a majority of the round's
      participants, at least 2). Recovery needs t survivors; up to t - 1 colluding nodes
      learn nothing from their shares. It may be raised above the majority, not lowered
      below it (see :meth:`threshold_for`).
    """

    clip: float = DEFAULT_CLIP
    fraction_bits: int = DEFAULT_FRACTION_BITS
    protect_parameters: bool = True
    min_survivors: int = DEFAULT_MIN_SURVIVORS
    threshold: int | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int)
            or self.threshold < DEFAULT_MIN_SURVIVORS
        ):
            raise SecaggError(
                f"SecureAggregation(threshold=...) must be None (majority) or an int >= "
                f"{DEFAULT_MIN_SURVIVORS}, got {self.threshold!r}."
            )
        FixedPoint(self.clip, self.fraction_bits)
        if not isinstance(self.protect_parameters, bool):
            raise SecaggError(
                f"SecureAggregation(protect_parameters=...) must be True or False, "
                f"got {self.protect_parameters!r}."
            )
        if (
            isinstance(self.min_survivors, bool)
            or not isinstance(self.min_survivors, int)
            or self.min_survivors < DEFAULT_MIN_SURVIVORS
        ):
            raise SecaggError(
                f"SecureAggregation(min_survivors=...) must be an int >= {DEFAULT_MIN_SURVIVORS}, "
                f"got {self.min_survivors!r}: a sum over one node is that node's update."
            )

    @property
    def codec(self) -> FixedPoint:
        """The fixed-point codec these settings describe."""
        return FixedPoint(self.clip, self.fraction_bits)

    def check_participants(self, n_nodes: int) -> None:
        """Raise SecaggError if a round of ``n_nodes`` cannot be securely summed."""
        if n_nodes < self.min_survivors:
            raise SecaggError(
                f"SecAgg needs at least {self.min_survivors} nodes per round, got {n_nodes}: "
                "the sum of fewer nodes would reveal their updates. Select more nodes or "
                "lower SecureAggregation(min_survivors=...)."
            )
        self.codec.check_capacity(n_nodes)

    def threshold_for(self, n_nodes: int) -> int:
        """The Shamir threshold of a round of ``n_nodes``: the majority (at least 2) by default.

        A threshold at or below half the participants is refused: a malicious researcher could
        then ask one half for a node's self-mask shares and the other half for its key shares
        and unmask that node alone.
        """
        majority = max(minimum_threshold(n_nodes), self.min_survivors)
        threshold = majority if self.threshold is None else self.threshold
        if threshold > n_nodes:
            raise SecaggError(
                f"SecAgg threshold {threshold} exceeds the round's {n_nodes} participants: "
                "select more nodes or lower SecureAggregation(threshold=...)."
            )
        if threshold < majority:
            raise SecaggError(
                f"SecAgg threshold {threshold} is not a majority of {n_nodes} participants "
                f"(needs >= {majority}): two disjoint groups of survivors could then reveal "
                "both halves of one node's masks. Raise SecureAggregation(threshold=...) or "
                "leave it None."
            )
        return threshold

    def max_nodes(self) -> int:
        """How many nodes a round may have before sums could overflow."""
        return self.codec.max_nodes()

    def sum_error_bound(self, n_nodes: int) -> float:
        """Largest absolute error, per coordinate, of a sum over ``n_nodes``."""
        return self.codec.sum_error_bound(n_nodes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, e.g. for an experiment config file."""
        return asdict(self)

    @classmethod
    def from_value(
        cls, value: bool | SecureAggregation | Mapping[str, Any] | None
    ) -> SecureAggregation | None:
        """Settings from an ``Experiment(secagg=...)`` argument: None means SecAgg is off."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, SecureAggregation):
            return value
        if isinstance(value, Mapping):
            known = {field.name for field in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise SecaggError(
                    f"unknown SecAgg setting(s) {unknown}; valid ones are {sorted(known)}."
                )
            return cls(**value)
        raise SecaggError(
            f"secagg must be True, False, a SecureAggregation or a dict, "
            f"got {type(value).__name__}."
        )
