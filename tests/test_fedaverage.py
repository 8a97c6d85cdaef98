"""FedAverage against a straightforward weighted mean."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import RoundFailedError
from common.finite import FiniteArrays, NonFiniteArrayError
from researcher.aggregators import Aggregator, FedAverage


def test_fedaverage_equals_the_sample_weighted_mean_in_each_dtype() -> None:
    rng = np.random.default_rng(0)
    replies = {
        f"n{i}": (
            {
                "w": rng.normal(size=(300, 301)).astype(np.float32),
                "b": rng.normal(size=7),
                "s": np.float32(i) * np.ones((), np.float32),
            },
            float(w),
        )
        for i, w in enumerate((10, 250, 3))
    }
    got = FedAverage().aggregate(replies)
    total = sum(w for _, w in replies.values())
    for name in ("w", "b", "s"):
        expected = sum(p[name].astype(np.float64) * w for p, w in replies.values()) / total
        assert got[name].dtype == replies["n0"][0][name].dtype
        # float32 results: one float32 rounding; float64 ones: a few float64 roundings.
        rtol, atol = (1e-6, 1e-7) if got[name].dtype == np.float32 else (1e-13, 1e-15)
        np.testing.assert_allclose(got[name], expected, rtol=rtol, atol=atol)


def test_replies_and_a_secure_sum_fold_in_any_order_to_the_same_mean() -> None:
    rng = np.random.default_rng(3)
    replies = [(rng.normal(size=50), w) for w in (7.0, 1.0, 1e6, 0.5)]
    secure = (rng.normal(size=50) * 40.0, 40.0)  # a sum of weight 40
    expected = (sum(p * w for p, w in replies) + secure[0]) / (sum(w for _, w in replies) + 40)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        agg = FedAverage()
        agg.start({"w": np.zeros(50)})
        for position, i in enumerate(order):
            if position == 2:
                agg.add_secure_sum({"w": secure[0]}, secure[1])
            agg.add(f"n{i}", {"w": replies[i][0]}, replies[i][1])
        np.testing.assert_allclose(agg.finish()["w"], expected, rtol=1e-12, atol=1e-14)


def test_fedaverage_names_the_node_sending_nan_wrong_shapes_or_no_samples() -> None:
    agg = FedAverage()
    agg.start({"w": np.zeros(3)})
    with pytest.raises(RoundFailedError, match="node bad sent non-finite"):
        agg.add("bad", {"w": np.array([1.0, np.nan, 2.0])}, 1.0)
    with pytest.raises(RoundFailedError, match="node odd sent 'w' with shape"):
        agg.add("odd", {"w": np.zeros(4)}, 1.0)
    with pytest.raises(RoundFailedError, match="node empty reported 0"):
        agg.add("empty", {"w": np.zeros(3)}, 0.0)


def test_secure_sums_fold_like_replies() -> None:
    a, b = {"w": np.arange(4.0)}, {"w": np.ones(4)}
    agg = FedAverage()
    agg.start(a)
    agg.add_secure_sum({"w": 2 * a["w"] + 3 * b["w"]}, 5.0)
    np.testing.assert_allclose(agg.finish()["w"], (2 * a["w"] + 3 * b["w"]) / 5)


def test_finish_writes_the_mean_over_its_float64_sums_without_another_model_buffer() -> None:
    import tracemalloc

    n = 1 << 20  # a 4 MiB float32 model, 8 MiB of float64 sums
    a = np.linspace(-1, 1, n, dtype=np.float32)
    b = np.full(n, 0.25, dtype=np.float32)
    agg = FedAverage()
    agg.start({"w": a})
    agg.add("a", {"w": a}, 3.0)
    agg.add("b", {"w": b}, 1.0)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        out = agg.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n, f"finish allocated {peak} bytes for a {4 * n}-byte model"
    expected = (a.astype(np.float64) * 3 + b.astype(np.float64)) / 4
    assert out["w"].dtype == np.float32
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(RoundFailedError, match="no node reply"):
        agg.finish()  # finish ended the round: the sums now hold the result


def _fold_round(agg: FedAverage, replies: list[tuple[np.ndarray, float]]) -> np.ndarray:
    agg.start({"w": replies[0][0]})  # a template: shapes and dtypes only
    for i, (params, weight) in enumerate(replies):
        agg.add(f"n{i}", {"w": params}, weight)
    return agg.finish()["w"]


def _mean(replies: list[tuple[np.ndarray, float]]) -> np.ndarray:
    return sum(p.astype(np.float64) * w for p, w in replies) / sum(w for _, w in replies)


def test_the_next_round_folds_into_the_last_rounds_sums_without_a_new_buffer() -> None:
    import tracemalloc

    n = 1 << 20
    rng = np.random.default_rng(5)
    rounds = [[(rng.normal(size=n).astype(np.float32), w) for w in (2.0, 5.0)] for _ in range(3)]
    agg = FedAverage()
    _fold_round(agg, rounds[0])  # its result dropped: its sums are free for the next round
    for replies in rounds[1:]:
        tracemalloc.start()
        try:
            result = _fold_round(agg, replies)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < n, f"a round allocated {peak} bytes for an {8 * n}-byte float64 sum"
        # The reused buffer held the last mean, not zeros: the first fold overwrote it.
        np.testing.assert_allclose(result, _mean(replies), rtol=1e-6, atol=1e-7)
        del result
    agg.release()  # a run ended: the next round takes a new buffer
    tracemalloc.start()
    try:
        _fold_round(agg, rounds[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= 8 * n


def test_a_result_still_held_is_never_folded_over() -> None:
    rng = np.random.default_rng(6)
    first_replies = [(rng.normal(size=1000), w) for w in (1.0, 3.0)]
    agg = FedAverage()
    first = _fold_round(agg, first_replies)
    kept = first.copy()
    secure = (rng.normal(size=1000), 4.0)
    agg.start({"w": np.zeros(1000)})
    agg.add_secure_sum({"w": secure[0]}, secure[1])  # a first fold by the other path
    np.testing.assert_allclose(agg.finish()["w"], secure[0] / 4.0)
    np.testing.assert_array_equal(first, kept)
    view = first[10:20]  # a view alone keeps the buffer too
    del first
    _fold_round(agg, [(np.ones(1000), 1.0)])
    np.testing.assert_array_equal(view, kept[10:20])


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        (np.full(1000, 3.4e38, np.float32), True),  # float32 at its limit: the sum cannot overflow
        (np.full(1000, 1.7e308), True),  # float64 sum overflows: decided by the exact scan
        (np.array([1e308, -1e308, 1e308, 1e308]), True),
        (np.array([1.0, np.inf, -np.inf], np.float32), False),  # sum NaN
        (np.array([0.0] * 70000 + [np.nan]), False),  # past the first scan chunk
        (np.array([1.0, -np.inf]), False),
        (np.array([1 + 1j, complex(1, np.nan)]), False),
        (np.array([1 + 1j, 2 - 3j], np.complex64), True),
        (np.arange(10), True),
        (np.array(np.nan, np.float16), False),
    ],
)
def test_all_finite_agrees_with_numpy(values: np.ndarray, finite: bool) -> None:
    from common.finite import all_finite

    assert bool(np.isfinite(values).all()) is finite  # the reference
    assert all_finite(values) is finite


def test_finite_arrays_are_scanned_when_built_and_name_the_bad_array() -> None:
    good = {"w": np.ones(3, np.float32), "n": np.arange(3)}
    assert FiniteArrays.scanned(good) == good
    with pytest.raises(NonFiniteArrayError, match="'b'") as caught:
        FiniteArrays.scanned({**good, "b": np.array([1.0, np.inf])})
    assert caught.value.name == "b"


def test_aggregator_is_an_abstract_extension_point() -> None:
    with pytest.raises(TypeError):
        Aggregator()  # type: ignore[abstract]
