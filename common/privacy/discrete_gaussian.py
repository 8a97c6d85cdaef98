"""Discrete Gaussian noise: a vectorised sampler and the distributed-sum privacy bound.

Sampler. Canonne, Kamath, Steinke (NeurIPS 2020, "The Discrete Gaussian for Differential
Privacy"), Algorithm 3: with ``t = floor(sigma) + 1``, draw ``Y`` from the discrete Laplace
``P(Y = y) ∝ exp(-|y| / t)`` (difference of two geometric variables) and keep it with
probability ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``; the kept values follow
``P(Y = y) ∝ exp(-y^2 / (2 sigma^2))`` exactly as far as the arithmetic is exact. Here the
geometric draws (by inversion) and the acceptance test run in float64 over whole arrays, so
each probability carries float64 rounding (relative error about 2^-52): this is CKS's
algorithm, not their rational-arithmetic implementation, which has a Python loop per value
and is far too slow for 10^6 parameters. Every uniform comes from AES-128-CTR keyed with 16
bytes of ``os.urandom`` (``secrets``), a CSPRNG; numpy's generators are never used.

Bound (Kairouz, Liu, Steinke, ICML 2021, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", Theorem 1 / Proposition 14). When ``n`` parties
each add ``N_Z(0, s^2)^d`` (``s`` in integer units) to integer vectors whose sum has L2
sensitivity ``Delta``, the sum satisfies ``(1/2) eps^2``-concentrated DP with

    eps = min( sqrt(Delta^2 / (n s^2) + 2 tau d),  Delta / (sqrt(n) s) + tau sqrt(d) ),
    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1)).

``tau`` measures how far a sum of discrete Gaussians is from one discrete Gaussian of the
summed variance (the constant 2 in front of ``tau d`` is the larger one in circulation, taken
to be safe). With the fixed-point scales SecAgg uses (``s`` is thousands of integer units or
more), ``tau`` underflows to 0 and ``eps = Delta / (sqrt(n) s)``: the sum is as private as
one Gaussian of variance ``n s^2``.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from common.errors import ConfigurationError
from common.secagg.masking import keystream_cipher

__all__ = [
    "MAX_SIGMA",
    "distributed_zcdp_epsilon",
    "sample_discrete_gaussian",
    "sum_divergence_tau",
]

#: Largest sigma sampled: values must stay exact integers in float64 far into the tails.
MAX_SIGMA = 2.0**45
# Candidates drawn per value still missing: acceptance is above 1/2 (CKS20), usually ~0.8.
_OVERDRAW = 1.4
_SEED_BYTES = 16
_UNIFORM_BITS = 53
_WORD_BYTES = 8


class _Uniforms:
    """Uniform float64 draws from one AES-128-CTR keystream (a CSPRNG)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != _SEED_BYTES:
            raise ConfigurationError(
                f"a discrete Gaussian seed must be {_SEED_BYTES} bytes, got {len(seed)}"
            )
        # One keystream for all batches: no block is ever reused.
        self._cipher = keystream_cipher(seed)

    def words(self, count: int) -> np.ndarray:
        """``count`` uniform 53-bit integers (as uint64)."""
        raw = self._cipher.update(bytes(count * _WORD_BYTES))
        return np.frombuffer(raw, dtype=np.uint64) >> np.uint64(64 - _UNIFORM_BITS)

    def open_closed(self, count: int) -> np.ndarray:
        """Uniforms in (0, 1] (safe under log)."""
        return (self.words(count) + 1.0) * 2.0**-_UNIFORM_BITS

    def closed_open(self, count: int) -> np.ndarray:
        """Uniforms in [0, 1)."""
        return self.words(count) * 2.0**-_UNIFORM_BITS


def sample_discrete_gaussian(sigma: float, size: int, *, seed: bytes | None = None) -> np.ndarray:
    """``size`` int64 draws of the discrete Gaussian ``N_Z(0, sigma^2)``.

    ``seed`` (16 bytes) makes the draws reproducible, for tests; by default a fresh seed comes
    from ``secrets`` (os.urandom) on every call, so no two calls share noise.
    """
    if not (isinstance(sigma, int | float) and 0 < sigma <= MAX_SIGMA):
        raise ConfigurationError(
            f"discrete Gaussian sigma must be in (0, 2^45], got {sigma!r}: lower the noise "
            "multiplier, the clip or SecAgg's fraction_bits"
        )
    if size < 0:
        raise ConfigurationError(f"cannot draw {size} values")
    source = _Uniforms(secrets.token_bytes(_SEED_BYTES) if seed is None else seed)
    sigma = float(sigma)
    t = math.floor(sigma) + 1.0
    shift = sigma * sigma / t
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        batch = math.ceil((size - filled) * _OVERDRAW) + 16
        # Geometric on {0, 1, ...} with P(G >= k) = exp(-k / t), by inversion.
        first = np.floor(-t * np.log(source.open_closed(batch)))
        second = np.floor(-t * np.log(source.open_closed(batch)))
        candidate = first - second
        accept_probability = np.exp(-((np.abs(candidate) - shift) ** 2) / (2.0 * sigma * sigma))
        kept = candidate[source.closed_open(batch) < accept_probability]
        take = min(kept.size, size - filled)
        out[filled : filled + take] = kept[:take]
        filled += take
    return out


def sum_divergence_tau(share_sigma: float, n_parties: int) -> float:
    """KLS21's ``tau`` for ``n_parties`` shares of ``N_Z(0, share_sigma^2)`` (integer units)."""
    exponent = -2.0 * math.pi**2 * share_sigma**2
    return 10.0 * sum(math.exp(exponent * k / (k + 1)) for k in range(1, n_parties))


def distributed_zcdp_epsilon(
    sensitivity: float, share_sigma: float, n_parties: int, dimension: int
) -> float:
    """The ``eps`` of ``(1/2) eps^2``-zCDP for a sum of ``n_parties`` discrete Gaussian shares.

    ``sensitivity`` is the L2 sensitivity of the integer sum, ``share_sigma`` each party's
    sigma, both in integer (fixed-point) units; ``dimension`` the vector length.
    """
    if n_parties < 1 or share_sigma <= 0:
        raise ConfigurationError(
            f"a distributed discrete Gaussian needs at least one party and sigma > 0, "
            f"got {n_parties} and {share_sigma}"
        )
    tau = sum_divergence_tau(share_sigma, n_parties)
    ratio = sensitivity**2 / (n_parties * share_sigma**2)
    return min(
        math.sqrt(ratio + 2.0 * tau * dimension), math.sqrt(ratio) + tau * math.sqrt(dimension)
    )
