"""A node's share of node-level DP: clip its update, add discrete Gaussian noise on SecAgg's grid.

The node turns its trained parameters ``p`` and the global ones ``g`` into the integer vector

    k = rint(g * 2^f) + rint(clip_C'(p - g) * 2^f) + N_Z(0, s^2),  s = z C 2^f / sqrt(m)

(``f`` SecAgg's fraction bits, ``m`` the round's noise shares) and hands SecAgg ``k * 2^-f``,
which its fixed-point encoding maps back to exactly ``k``: the noise lives in the integer
domain SecAgg sums in, and the masks go on top of it. The update is clipped to
``C' = C - sqrt(d) 2^-f / 2`` so that, after rounding, its integer L2 norm is at most
``C 2^f``: the sensitivity the accountant uses. ``rint(g * 2^f)`` is the same on every node
and public. The unmasked sum over ``n`` survivors, divided by ``n`` (FedAverage with weight
1 per node), is ``g + mean(clipped updates) + noise / n``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from common.errors import ConfigurationError, SecaggError
from common.privacy.discrete_gaussian import sample_discrete_gaussian
from common.privacy.node_level import NodeLevelDP

__all__ = ["FLOAT_EXACT_INTEGER", "TAIL_SIGMAS", "grid_clip", "privatize_update", "share_sigma"]

#: Integers beyond 2^53 are not exact in float64: the grid values must stay below.
FLOAT_EXACT_INTEGER = 2**53
#: Noise tails the SecAgg range must leave room for: P(|N| > 40 s) < 2 exp(-800).
TAIL_SIGMAS = 40.0


def share_sigma(dp: NodeLevelDP, noise_shares: int, fraction_bits: int) -> float:
    """One node's noise standard deviation, in integer (fixed-point) units."""
    return dp.z * math.ldexp(dp.clip, fraction_bits) / math.sqrt(noise_shares)


def grid_clip(dp: NodeLevelDP, dimension: int, fraction_bits: int) -> float:
    """The L2 bound applied before rounding, so the rounded update stays within C."""
    bound = dp.clip - math.sqrt(dimension) * math.ldexp(0.5, -fraction_bits)
    if bound <= 0:
        raise ConfigurationError(
            f"node-level DP clip {dp.clip:g} is below the rounding error of {dimension} "
            f"parameters at {fraction_bits} SecAgg fraction bits: raise "
            "SecureAggregation(fraction_bits=...) or the dp clip"
        )
    return bound


def privatize_update(
    params: Mapping[str, np.ndarray],
    global_params: Mapping[str, np.ndarray],
    dp: NodeLevelDP,
    *,
    noise_shares: int,
    fraction_bits: int,
    value_clip: float,
    seed: bytes | None = None,
) -> dict[str, np.ndarray]:
    """``(rint(g 2^f) + rint(clipped update 2^f) + noise) * 2^-f`` per parameter (float64).

    ``value_clip`` is SecAgg's clip: every returned value must lie within it, or SecaggError
    says which setting to raise. ``seed`` (16 bytes) fixes the noise, for tests only.
    """
    if set(params) != set(global_params):
        raise ConfigurationError(
            f"node-level DP: the trained parameters {sorted(set(params) ^ set(global_params))[:5]} "
            "do not match the global model's"
        )
    names = sorted(params)
    deltas = {}
    for name in names:
        trained = np.asarray(params[name], dtype=np.float64)
        start = np.asarray(global_params[name], dtype=np.float64)
        if trained.shape != start.shape:
            raise ConfigurationError(
                f"node-level DP: parameter {name!r} has shape {trained.shape}, the global "
                f"model's {start.shape}"
            )
        deltas[name] = trained - start
    dimension = sum(d.size for d in deltas.values())
    norm = math.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in deltas.values()))
    bound = grid_clip(dp, dimension, fraction_bits)
    factor = 1.0 if norm <= bound else bound / norm
    scale = math.ldexp(1.0, fraction_bits)
    noise = sample_discrete_gaussian(
        share_sigma(dp, noise_shares, fraction_bits), dimension, seed=seed
    )
    limit = min(math.floor(value_clip * scale), FLOAT_EXACT_INTEGER - 1)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in names:
        delta = deltas[name]
        start = np.asarray(global_params[name], dtype=np.float64)
        grid = np.rint(start * scale) + np.rint(delta * (factor * scale))
        grid += noise[offset : offset + delta.size].reshape(delta.shape)
        offset += delta.size
        if grid.size and float(np.max(np.abs(grid))) > limit:
            raise SecaggError(
                f"node-level DP: parameter {name!r} plus its noise leaves SecAgg's range "
                f"[-{value_clip:g}, {value_clip:g}]: raise SecureAggregation(clip=...) above "
                "max|global parameter| + dp clip * (1 + 40 * noise_multiplier)"
            )
        out[name] = grid * (1.0 / scale)
    return out
