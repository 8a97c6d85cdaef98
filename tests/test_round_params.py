"""Round files: the final model is copied into its .npz without mapping the model's pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from researcher.round_params import AggregatedParams, write_npz
from tests.resident_memory import rss_file_bytes


def test_final_npz_streams_from_the_round_file_and_loads_like_np_savez(tmp_path: Path) -> None:
    params = {
        "layer/w": np.arange(16 << 20, dtype=np.float32).reshape(4096, 4096),  # 64 MiB
        "layer/b": np.linspace(-1, 1, 7),
        "steps": np.array(3, dtype=np.int64),
    }
    round_file = AggregatedParams(lambda: tmp_path / "rounds").record(1, params)
    before = rss_file_bytes()
    write_npz(tmp_path / "final.npz", round_file.params, round_file)
    grown = rss_file_bytes() - before
    assert grown < 16 << 20, f"writing a 64 MiB model mapped {grown >> 20} MiB of it"
    with np.load(tmp_path / "final.npz", allow_pickle=False) as got:
        assert sorted(got.files) == sorted(params)
        for name, value in params.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape
            np.testing.assert_array_equal(got[name], value)


def test_params_not_from_a_round_file_are_saved_by_np_savez(tmp_path: Path) -> None:
    params = {"w": np.ones((2, 3), np.float32)}
    write_npz(tmp_path / "plain.npz", params, None)
    with np.load(tmp_path / "plain.npz") as got:
        np.testing.assert_array_equal(got["w"], params["w"])
