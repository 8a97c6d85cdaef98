"""Learning-rate and weight-decay schedules advance step by step and round by round.

A node rebuilds its optimizer from the plan every round and restores the saved state, so
each schedule is checked both with one long-lived optimizer and with rebuild + restore.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.optimizers.declearn import Scheduler
from common.optimizers.optimizer import Optimizer
from researcher.optimization import ResearcherOptimizer

STEPS_PER_ROUND = 3
ROUNDS = 3
ONES = {"w": np.ones(2)}


def _lrs_seen(spec: dict, rebuild_each_round: bool) -> list[list[float]]:
    """Learning rate of every SGD step (recovered from the update), round by round."""
    optimizer = Optimizer.from_spec(spec)
    weights = {"w": np.zeros(2)}
    seen: list[list[float]] = []
    saved = None
    for _ in range(ROUNDS):
        if rebuild_each_round:
            optimizer = Optimizer.from_spec(spec)
            if saved is not None:
                meta, arrays = saved
                optimizer.import_state(json.loads(json.dumps(meta)), arrays, vector_kind="numpy")
        optimizer.init_round()
        round_lrs = []
        for _ in range(STEPS_PER_ROUND):
            announced = optimizer.lr
            new = optimizer.step_numpy(weights, ONES)
            used = float(weights["w"][0] - new["w"][0])
            assert used == pytest.approx(announced)
            round_lrs.append(used)
            weights = new
        seen.append(round_lrs)
        saved = optimizer.export_state()
    return seen


@pytest.mark.parametrize("rebuild", [False, True], ids=["same-optimizer", "rebuilt-each-round"])
def test_step_level_exponential_decay_advances_every_step_across_rounds(rebuild: bool) -> None:
    spec = {"lr": ["exponential-decay", {"base": 0.1, "rate": 0.5}]}
    seen = _lrs_seen(spec, rebuild)
    flat = [lr for round_lrs in seen for lr in round_lrs]
    expected = [0.1 * 0.5**k for k in range(ROUNDS * STEPS_PER_ROUND)]
    assert flat == pytest.approx(expected)


@pytest.mark.parametrize("rebuild", [False, True], ids=["same-optimizer", "rebuilt-each-round"])
def test_round_level_exponential_decay_is_constant_within_a_round(rebuild: bool) -> None:
    spec = {
        "lr": {
            "name": "exponential-decay",
            "config": {"base": 0.1, "rate": 0.5, "step_level": False},
        }
    }
    seen = _lrs_seen(spec, rebuild)
    assert seen == [pytest.approx([0.1 * 0.5**r] * STEPS_PER_ROUND) for r in range(ROUNDS)]


@pytest.mark.parametrize("rebuild", [False, True], ids=["same-optimizer", "rebuilt-each-round"])
def test_warmup_over_rounds_reaches_base_rate_after_warmup(rebuild: bool) -> None:
    spec = {"lr": ["warmup-rounds", {"base": 0.3, "warmup": 3}]}
    seen = _lrs_seen(spec, rebuild)
    assert seen == [pytest.approx([0.3 * (r + 1) / 3] * STEPS_PER_ROUND) for r in range(ROUNDS)]


def test_scheduled_weight_decay_follows_its_schedule() -> None:
    optimizer = Optimizer(lr=0.0, decay=("exponential-decay", {"base": 0.1, "rate": 0.5}))
    optimizer.init_round()
    weights = {"w": np.ones(1)}
    for step in range(4):
        new = optimizer.step_numpy(weights, {"w": np.zeros(1)})
        assert new["w"][0] == pytest.approx(weights["w"][0] * (1 - 0.1 * 0.5**step))
        weights = new


def test_scheduler_instance_is_accepted_as_lr() -> None:
    scheduler = Scheduler.from_specs("linear-decay", {"base": 0.2, "rate": 0.25})
    optimizer = Optimizer(lr=scheduler)
    optimizer.init_round()
    lrs = []
    weights = {"w": np.zeros(1)}
    for _ in range(5):
        lrs.append(optimizer.lr)
        weights = optimizer.step_numpy(weights, {"w": np.ones(1)})
    assert lrs == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0])
    assert weights["w"][0] == pytest.approx(-0.5)


def test_researcher_round_level_schedule_advances_once_per_round() -> None:
    spec = {"lr": ["exponential-decay", {"base": 1.0, "rate": 0.5, "step_level": False}]}
    researcher = ResearcherOptimizer(Optimizer.from_spec(spec))
    params = {"w": np.zeros(1)}
    for round_index in range(3):
        new = researcher.step(params, {"w": params["w"] + 1.0}, None)
        assert float(new["w"][0] - params["w"][0]) == pytest.approx(0.5**round_index)
        params = new
