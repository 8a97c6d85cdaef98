"""Privacy accounting for DP-SGD with Opacus's accountants: ε spent, sigma for a target ε.

A history is a sequence of `DpSteps` (sigma, sample rate q, number of steps), the form Opacus's
accountants keep. Composition over rounds, experiments or researchers is the
concatenation of their histories.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from common.errors import ConfigurationError

__all__ = ["DpSteps", "epsilon_spent", "noise_multiplier_for"]


@dataclass(frozen=True)
class DpSteps:
    """`steps` DP-SGD steps with noise multiplier sigma, each Poisson-sampling records at rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DpSteps:
        return cls(
            float(values["noise_multiplier"]), float(values["sample_rate"]), int(values["steps"])
        )


def epsilon_spent(history: Iterable[DpSteps], delta: float, accountant: str = "rdp") -> float:
    """ε of the whole `history` at `delta` (0.0 for an empty history)."""
    entries = [(h.noise_multiplier, h.sample_rate, h.steps) for h in history if h.steps > 0]
    if not entries:
        return 0.0
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = entries
    with warnings.catch_warnings():
        # At small ε the best RDP order is Opacus's largest: the bound stays valid, only looser.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


def noise_multiplier_for(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest sigma (to Opacus's 0.01 ε tolerance) with ε ≤ `target_epsilon` after `steps`."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        return float(sigma)
    except ValueError as exc:
        raise ConfigurationError(
            f"no noise multiplier reaches ε = {target_epsilon} at δ = {delta} over {steps} steps "
            f"at sample rate {sample_rate:.4g} ({exc}): raise target_epsilon or lower the rounds, "
            "epochs or batch size"
        ) from exc
