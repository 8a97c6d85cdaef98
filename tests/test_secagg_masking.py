"""Pairwise masks: cancellation, keystream continuity across chunks, statistical hiding."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import stats

from common.errors import PayloadError, SecaggError
from common.secagg import FixedPoint, apply_corrections, dropout_correction, mask, sum_masked
from common.secagg.masking import CHUNK_VALUES, add_masks, keystream

CODEC = FixedPoint(clip=10.0, fraction_bits=30)
# Significance level for the statistical tests: a correct implementation fails once in 10^6 runs.
ALPHA = 1e-6


def test_chunked_masks_equal_the_continuous_keystream() -> None:
    seed_up, seed_down = os.urandom(16), os.urandom(16)
    size = 2 * CHUNK_VALUES + 123
    got = add_masks(np.zeros(size, dtype=np.uint64), [(seed_up, 1), (seed_down, -1)])
    assert np.array_equal(got, keystream(seed_up, size) - keystream(seed_down, size))


def test_keystreams_of_different_seeds_differ() -> None:
    assert not np.array_equal(keystream(os.urandom(16), 64), keystream(os.urandom(16), 64))


def test_opposite_masks_cancel_in_the_sum() -> None:
    seed = os.urandom(16)
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-10, 10, 1000), rng.uniform(-10, 10, 1000)
    masked_x = mask(x, [(seed, 1)], CODEC, node_id="a", name="w")
    masked_y = mask(y, [(seed, -1)], CODEC, node_id="b", name="w")
    total = sum_masked([masked_x, masked_y])
    plain = sum_masked(
        [CODEC.encode(x, node_id="a", name="w"), CODEC.encode(y, node_id="b", name="w")]
    )
    assert np.array_equal(total, plain)


def test_mask_keeps_the_input_shape_and_does_not_touch_it() -> None:
    values = np.ones((4, 5), dtype=np.float32)
    masked = mask(values, [(os.urandom(16), 1)], CODEC, node_id="a", name="w")
    assert masked.shape == (4, 5) and masked.dtype == np.uint64
    assert np.all(values == 1)


def test_mask_rejects_out_of_range_values_naming_the_node() -> None:
    with pytest.raises(SecaggError, match="node 'a'"):
        mask(np.array([11.0]), [(os.urandom(16), 1)], CODEC, node_id="a", name="w")


def test_mask_rejects_a_sign_other_than_plus_or_minus_one() -> None:
    with pytest.raises(SecaggError, match="sign"):
        mask(np.zeros(3), [(os.urandom(16), 2)], CODEC, node_id="a", name="w")


def test_masked_vector_is_uncorrelated_with_the_values() -> None:
    values = np.linspace(-10, 10, 200_000)
    seeds = [(os.urandom(16), 1), (os.urandom(16), -1)]
    masked = mask(values, seeds, CODEC, node_id="a", name="w").astype(np.float64)
    unmasked = CODEC.encode(values, node_id="a", name="w").astype(np.float64)
    # Under independence r * sqrt(n) is ~N(0, 1); 5 sigma is well beyond chance.
    bound = 5 / np.sqrt(values.size)
    assert abs(np.corrcoef(values, masked)[0, 1]) < bound
    assert abs(np.corrcoef(values, unmasked)[0, 1]) > bound  # the test can detect structure


def test_masked_bytes_are_uniform_by_chi_square() -> None:
    values = np.full(100_000, 0.5)
    masked = mask(values, [(os.urandom(16), 1)], CODEC, node_id="a", name="w")
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > ALPHA
    plain = np.bincount(CODEC.encode(values, node_id="a", name="w").view(np.uint8), minlength=256)
    assert stats.chisquare(plain).pvalue < ALPHA


def test_dropout_correction_cancels_the_masks_toward_dropped_peers() -> None:
    to_survivor, to_dropped = os.urandom(16), os.urandom(16)
    values = np.random.default_rng(4).uniform(-10, 10, 5000)
    masked = mask(values, [(to_survivor, 1), (to_dropped, -1)], CODEC, node_id="a", name="w")
    survivor = mask(np.zeros(5000), [(to_survivor, -1)], CODEC, node_id="b", name="w")
    total = sum_masked([masked, survivor])
    apply_corrections(total, [dropout_correction(5000, [(to_dropped, -1)])])
    assert np.array_equal(total, CODEC.encode(values, node_id="a", name="w"))


def test_running_accumulator_sums_in_place_with_wraparound() -> None:
    acc = np.array([2**64 - 1, 5], dtype=np.uint64)
    result = sum_masked([np.array([2, 2**63], dtype=np.uint64)], out=acc)
    assert result is acc and acc.tolist() == [1, 2**63 + 5]


@pytest.mark.parametrize(
    "bad",
    [np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.uint64), np.zeros(6, np.uint64)[::2]],
)
def test_sums_refuse_wrong_dtype_size_or_layout(bad: np.ndarray) -> None:
    with pytest.raises(PayloadError):
        sum_masked([bad], out=np.zeros(3, dtype=np.uint64))
    with pytest.raises(PayloadError):
        apply_corrections(np.zeros(3, dtype=np.uint64), [bad])


def test_sum_of_nothing_is_an_error() -> None:
    with pytest.raises(PayloadError, match="no arrays"):
        sum_masked([])
