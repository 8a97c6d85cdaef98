"""Shamir t-of-n secret sharing of 32-byte secrets over GF(2^31 - 1), vectorised with numpy.

A secret is split into :data:`ELEMENTS` field elements of 16 bits each; each element gets its
own random polynomial of degree ``t - 1`` (perfect secrecy per element: fewer than ``t``
shares are uniformly distributed whatever the secret). The prime ``2^31 - 1`` keeps every
product of two field elements below 2^62, so numpy's uint64 arithmetic never overflows.
Loops run over polynomial degrees and share points, never over values.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import numpy as np

from common.errors import SecaggError

__all__ = ["ELEMENTS", "PRIME", "SECRET_BYTES", "reconstruct", "share_secrets"]

# Mersenne prime 2^31 - 1: products of two elements fit in uint64 with room for one addition.
PRIME = (1 << 31) - 1
SECRET_BYTES = 32
# 16-bit chunks: each is a valid field element, and a reconstruction yielding a value above
# 2^16 - 1 proves inconsistent shares (see reconstruct).
_CHUNK_BYTES = 2
ELEMENTS = SECRET_BYTES // _CHUNK_BYTES
_CHUNK_LIMIT = 1 << (8 * _CHUNK_BYTES)


def _random_elements(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform field elements from the OS's CSPRNG (31 random bits, rejecting 2^31 - 1)."""
    count = int(np.prod(shape, dtype=np.int64))
    out = np.frombuffer(secrets.token_bytes(4 * count), dtype=np.uint32).astype(np.uint64)
    out &= PRIME
    bad = np.flatnonzero(out == PRIME)
    while bad.size:
        fresh = np.frombuffer(secrets.token_bytes(4 * bad.size), dtype=np.uint32).astype(np.uint64)
        out[bad] = fresh & PRIME
        bad = bad[out[bad] == PRIME]
    return out.reshape(shape)


def _to_elements(secret_list: Sequence[bytes]) -> np.ndarray:
    for secret in secret_list:
        if len(secret) != SECRET_BYTES:
            raise SecaggError(
                f"Shamir sharing takes {SECRET_BYTES}-byte secrets, got {len(secret)} bytes."
            )
    raw = np.frombuffer(b"".join(secret_list), dtype="<u2")
    return raw.astype(np.uint64).reshape(len(secret_list), ELEMENTS)


def share_secrets(
    secret_list: Sequence[bytes], points: Sequence[int], threshold: int
) -> np.ndarray:
    """Split every secret ``threshold``-of-``len(points)``; shape ``(points, secrets, ELEMENTS)``.

    ``points`` are the distinct nonzero x coordinates of the share holders.
    """
    _check_points(points, threshold)
    values = _to_elements(secret_list)
    # coefficients[d] multiplies x^d; the constant term is the secret.
    coefficients = _random_elements((threshold - 1, *values.shape))
    xs = np.asarray(points, dtype=np.uint64).reshape(-1, 1, 1)
    acc: np.ndarray = np.zeros((len(points), *values.shape), dtype=np.uint64)
    # Horner, highest degree first: acc < p and x < p, so acc * x + c < 2^62 + 2^31.
    for coefficient in coefficients[::-1]:
        acc = (acc + coefficient) % PRIME
        acc = (acc * xs) % PRIME
    shares: np.ndarray = (acc + values) % PRIME
    return shares


def reconstruct(shares: Mapping[int, np.ndarray], threshold: int) -> list[bytes]:
    """The secrets from ``threshold`` or more shares ``{x: (secrets, ELEMENTS) array}``.

    Uses the first ``threshold`` points (in x order). Raises SecaggError when there are too
    few shares or when they are visibly inconsistent (a reconstructed chunk outside 16 bits:
    a random corruption escapes with probability 2^-15 per chunk; a deliberate small change
    does not, so callers check what they can, e.g. a rebuilt key against its public key).
    """
    if len(shares) < threshold:
        raise SecaggError(
            f"Shamir reconstruction needs {threshold} shares, got {len(shares)} "
            f"(points {sorted(shares)})."
        )
    points = sorted(shares)[:threshold]
    _check_points(points, threshold)
    acc: np.ndarray | None = None
    for x_j, weight in zip(points, _lagrange_at_zero(points), strict=True):
        term = (np.asarray(shares[x_j], dtype=np.uint64) % PRIME) * np.uint64(weight) % PRIME
        acc = term if acc is None else (acc + term) % PRIME
    assert acc is not None
    if np.any(acc >= _CHUNK_LIMIT):
        raise SecaggError(
            "Shamir shares are inconsistent (a reconstructed chunk is not 16 bits): a node sent "
            "a corrupted or forged share; discard the round."
        )
    return [row.astype("<u2").tobytes() for row in acc.reshape(-1, ELEMENTS)]


def _lagrange_at_zero(points: Sequence[int]) -> list[int]:
    """Lagrange basis weights at x = 0 for ``points``, in GF(p) (Python ints: t values only)."""
    weights = []
    for j, x_j in enumerate(points):
        numerator, denominator = 1, 1
        for m, x_m in enumerate(points):
            if m != j:
                numerator = numerator * x_m % PRIME
                denominator = denominator * (x_m - x_j) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return weights


def _check_points(points: Sequence[int], threshold: int) -> None:
    if threshold < 1 or threshold > len(points):
        raise SecaggError(
            f"Shamir threshold {threshold} must lie in [1, {len(points)}] (the number of shares)."
        )
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise SecaggError(f"Shamir share points must be distinct and in (0, p): got {points}.")
