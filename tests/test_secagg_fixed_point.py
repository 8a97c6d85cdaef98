"""Fixed-point encoding for SecAgg: error bounds, range and overflow checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import PayloadError, SecaggError
from common.secagg import FixedPoint, SecureAggregation
from common.secagg.fixed_point import RING_CAPACITY


def exact_sum(rows: list[np.ndarray]) -> np.ndarray:
    """Correctly rounded coordinate-wise sum (math.fsum), as the reference."""
    stacked = np.stack([np.asarray(row, dtype=np.float64).ravel() for row in rows])
    return np.array([math.fsum(column) for column in stacked.T]).reshape(rows[0].shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_roundtrip_error_is_within_value_bound(dtype: type) -> None:
    codec = FixedPoint(clip=8.0, fraction_bits=20)
    values: np.ndarray = np.random.default_rng(1).uniform(-8, 8, 10_000).astype(dtype)
    decoded = codec.decode_sum(codec.encode(values, node_id="n", name="w"))
    error = np.abs(decoded - values.astype(np.float64)).max()
    assert error <= codec.value_error_bound()
    assert error > codec.value_error_bound() / 4  # the bound is tight, not vacuous


def test_sum_of_many_encodings_is_within_sum_bound() -> None:
    codec = FixedPoint(clip=1e6, fraction_bits=30)
    rng = np.random.default_rng(2)
    rows = [rng.uniform(-1e6, 1e6, 2_000) for _ in range(12)]
    total = np.zeros(2_000, dtype=np.uint64)
    for row in rows:
        total += codec.encode(row, node_id="n", name="w")
    assert np.abs(codec.decode_sum(total) - exact_sum(rows)).max() <= codec.sum_error_bound(12)


def test_sum_at_full_capacity_does_not_overflow() -> None:
    codec = FixedPoint(clip=1000.0, fraction_bits=40)
    n_nodes = codec.max_nodes()
    assert n_nodes * codec.max_encoded <= RING_CAPACITY < (n_nodes + 1) * codec.max_encoded
    edges = np.array([1000.0, -1000.0, 999.999, -0.0])
    one = codec.encode(edges, node_id="n", name="w")
    total = (one * np.uint64(n_nodes)).astype(np.uint64)
    expected = edges * n_nodes
    assert np.abs(codec.decode_sum(total) - expected).max() <= codec.sum_error_bound(n_nodes)


@pytest.mark.parametrize("bad", [1e6 + 1, -2e6, np.nan, np.inf, -np.inf])
def test_value_outside_range_or_not_finite_names_node_and_setting(bad: float) -> None:
    codec = FixedPoint(clip=1e6, fraction_bits=30)
    values = np.array([0.0, 1.0, bad])
    with pytest.raises(SecaggError, match=r"node 'hospital-7'.*'weights'.*clip") as info:
        codec.encode(values, node_id="hospital-7", name="weights")
    assert "[2]=" in str(info.value)


def test_capacity_error_names_settings_that_would_fit() -> None:
    settings = SecureAggregation(clip=1e6, fraction_bits=30)
    settings.check_participants(settings.max_nodes())
    with pytest.raises(SecaggError, match=r"fraction_bits to 29.*clip to"):
        settings.check_participants(settings.max_nodes() + 1)


def test_suggested_clip_fits() -> None:
    codec = FixedPoint(clip=1e6, fraction_bits=30)
    with pytest.raises(SecaggError) as info:
        codec.check_capacity(100_000)
    suggested = float(str(info.value).rsplit("clip to ", 1)[1].rstrip("."))
    FixedPoint(clip=suggested, fraction_bits=30).check_capacity(100_000)


@pytest.mark.parametrize(
    ("clip", "bits"),
    [
        (0.0, 10),
        (-1.0, 10),
        (math.nan, 10),
        (math.inf, 10),
        (2.0**54, 0),
        (True, 10),
        (1.0, 63),
        (1.0, -1),
        (1.0, True),
    ],
)
def test_invalid_codec_settings_are_refused(clip: float, bits: int) -> None:
    with pytest.raises(SecaggError, match="SecureAggregation"):
        FixedPoint(clip=clip, fraction_bits=bits)


def test_single_value_that_cannot_fit_63_bits_is_refused_at_configuration() -> None:
    with pytest.raises(SecaggError, match="overflow"):
        FixedPoint(clip=2.0**40, fraction_bits=30)


def test_non_numeric_payload_is_refused() -> None:
    codec = FixedPoint(clip=1.0, fraction_bits=10)
    with pytest.raises(PayloadError, match=r"node 'n'.*dtype"):
        codec.encode(np.array(["a"]), node_id="n", name="w")


def test_output_buffer_of_other_size_is_refused() -> None:
    codec = FixedPoint(clip=1.0, fraction_bits=10)
    with pytest.raises(PayloadError, match=r"3 values.*holds 2"):
        codec.encode(np.zeros(3), node_id="n", name="w", out=np.zeros(2, dtype=np.uint64))


def test_negative_values_use_twos_complement() -> None:
    codec = FixedPoint(clip=1.0, fraction_bits=2)
    encoded = codec.encode(np.array([-0.25, 0.5]), node_id="n", name="w")
    assert encoded.tolist() == [2**64 - 1, 2]
