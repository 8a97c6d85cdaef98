"""Record-level DP-SGD (training_args 'dp' type 'local'): config, clipping, noise, accounting.

Plans are the Fed-BioMed-shaped ones of tests/plans, trained in this process on a CSV the
test writes; only the `dp` block differs from a clear run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

import common.privacy.dp_sgd as dp_sgd
from common.errors import ConfigurationError, PlanError
from common.privacy import (
    DpSteps,
    LedgerView,
    PrivacyBudget,
    PrivacyBudgetExceeded,
    check_budget,
    epsilon_spent,
    parse_dp_block,
)
from common.privacy.dp_sgd import plan_dp_round, privatize_gradients
from common.training_args import TrainingArgs
from tests.conftest import write_tabular_csv
from tests.plans.faulty import AdamLogisticPlan
from tests.plans.tabular import LogisticPlan, NativeSgdPlan, make_logistic_data

DP = {"type": "local", "clip": 0.5, "noise_multiplier": 1.0, "delta": 1e-5}
N_RECORDS = 200


def _args(dp: dict | None = DP, **extra: object) -> TrainingArgs:
    values = {"num_updates": 20, "batch_size": 20, "random_seed": 3, "dp": dp, **extra}
    return TrainingArgs.from_dict(values)


def _trained(plan_class: type, tmp_path: Path, args: TrainingArgs, scale: float = 1.0):
    x, y = make_logistic_data(seed=0, n=N_RECORDS)
    plan = plan_class()
    plan.dataset_path = str(write_tabular_csv(tmp_path / "data.csv", x * scale, y))
    plan.post_init({}, args)
    optimizer = plan.training_optimizer()
    result = plan.run_local_training(optimizer)
    return plan, optimizer, result


# -- the dp block -----------------------------------------------------------------------------


def test_a_toml_dp_table_parses_into_training_args(tmp_path):
    from researcher.config.experiment_config import load_experiment_config

    path = tmp_path / "exp.toml"
    path.write_text(
        'tags = ["#t"]\nrounds = 10\n[plan]\nfile = "plan.py"\nclass = "P"\n'
        "[training_args]\nnum_updates = 2\n"
        '[training_args.dp]\ntype = "local"\nclip = 1.0\ntarget_epsilon = 3.0\n'
        'delta = 1e-5\nrounds = 10\naccountant = "prv"\n'
    )
    (tmp_path / "plan.py").write_text("")
    config = load_experiment_config(path)
    settings = TrainingArgs.from_dict(config.training_args).local_dp
    assert settings.target_epsilon == 3.0 and settings.rounds == 10
    assert settings.accountant == "prv"


@pytest.mark.parametrize(
    ("block", "names"),
    [
        ({"type": "central", "clip": 1.0}, ["'central'", "'local'", "'node'"]),
        ({"type": "local", "noise_multiplier": 1.0, "delta": 1e-5}, ["'clip'"]),
        ({"type": "local", "clip": 1.0, "noise_multiplier": 1.0}, ["'delta'"]),
        ({"type": "local", "clip": 1.0, "delta": 1e-5}, ["noise_multiplier", "target_epsilon"]),
        ({"type": "local", "clip": 1.0, "delta": 1e-5, "target_epsilon": 3.0}, ["'rounds'"]),
        ({"type": "local", "clip": -1.0, "delta": 1e-5, "noise_multiplier": 1.0}, ["'clip'"]),
        ({"type": "local", "clip": 1.0, "delta": 2.0, "noise_multiplier": 1.0}, ["'delta'"]),
        (
            {"type": "local", "clip": 1.0, "delta": 1e-5, "noise_multiplier": 1, "accountant": "x"},
            ["'rdp'", "'prv'"],
        ),
        ({"type": "local", "clip": 1.0, "delta": 1e-5, "sigma": 1.0}, ["'sigma'"]),
    ],
)
def test_a_bad_dp_block_is_refused_naming_the_field(block, names):
    with pytest.raises(ConfigurationError) as info:
        TrainingArgs.from_dict({"dp": block})
    for name in names:
        assert name in str(info.value)


def test_the_dp_block_dispatches_node_level_dp_to_its_parser():
    from common.privacy import NodeLevelDP

    block = {"type": "node", "clip": 0.5, "noise_multiplier": 1.0, "delta": 1e-5}
    assert isinstance(parse_dp_block(block), NodeLevelDP)
    args = TrainingArgs.from_dict({"dp": block})
    assert args.local_dp is None and args.node_dp is not None


# -- DP-SGD ---------------------------------------------------------------------------------------


def test_no_per_record_gradient_norm_exceeds_the_clip_bound(tmp_path, monkeypatch):
    seen: list[tuple[float, float]] = []
    real = dp_sgd.clip_per_sample

    def hooked(grad_samples, clip):
        clipped = real(grad_samples, clip)
        before = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grad_samples))
        after = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in clipped))
        seen.append((float(before.max()), float(after.max())))
        return clipped

    monkeypatch.setattr(dp_sgd, "clip_per_sample", hooked)
    _, _, result = _trained(LogisticPlan, tmp_path, _args(), scale=50.0)
    assert len(seen) == result.n_steps == 20  # every step went through the hook
    assert max(before for before, _ in seen) > 10 * DP["clip"]  # clipping had work to do
    assert max(after for _, after in seen) <= DP["clip"] * (1 + 1e-5)


def test_the_noise_added_has_standard_deviation_sigma_times_clip():
    clip, sigma, expected_batch = 0.7, 1.3, 4.0
    param = torch.nn.Parameter(torch.zeros(250_000))
    grads = torch.randn(3, 250_000)
    param.grad_sample = grads.clone()
    generator = torch.Generator().manual_seed(11)
    privatize_gradients(
        [param],
        clip=clip,
        noise_multiplier=sigma,
        expected_batch_size=expected_batch,
        generator=generator,
    )
    clipped_sum = dp_sgd.clip_per_sample([grads], clip)[0].sum(0)
    noise = param.grad * expected_batch - clipped_sum
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=0.03)
    assert abs(float(noise.mean())) < 0.01 * sigma * clip


@pytest.mark.parametrize("plan_class", [LogisticPlan, AdamLogisticPlan, NativeSgdPlan])
def test_dp_training_runs_with_declearn_and_native_torch_optimizers(tmp_path, plan_class):
    _, optimizer, private = _trained(plan_class, tmp_path / "dp", _args())
    _, _, clear = _trained(plan_class, tmp_path / "clear", _args(dp=None))
    assert private.dp == DpSteps(1.0, 20 / N_RECORDS, 20)
    assert private.dp_epsilon == pytest.approx(epsilon_spent([private.dp], 1e-5))
    assert clear.dp is None
    assert np.isfinite(private.losses).all() and private.losses != clear.losses
    if plan_class is AdamLogisticPlan:
        assert optimizer.fused  # the fused torch path reads the privatized .grad


def test_the_researchers_random_seed_fixes_neither_the_noise_nor_the_batches(tmp_path):
    def params(name: str, dp: dict | None) -> dict[str, np.ndarray]:
        plan, _, _ = _trained(LogisticPlan, tmp_path / name, _args(dp=dp))
        return plan.get_parameters()

    clear_a, clear_b = params("clear-a", None), params("clear-b", None)
    for name, value in clear_a.items():  # the seed does make clear training replayable
        np.testing.assert_array_equal(value, clear_b[name])
    private_a, private_b = params("dp-a", DP), params("dp-b", DP)
    assert any(not np.array_equal(v, private_b[k]) for k, v in private_a.items())


def test_poisson_sampling_draws_batches_of_the_expected_size(tmp_path, monkeypatch):
    sizes: list[int] = []
    real = LogisticPlan.training_step

    def counting(self, data, target):
        sizes.append(len(data))
        return real(self, data, target)

    monkeypatch.setattr(LogisticPlan, "training_step", counting)
    _trained(LogisticPlan, tmp_path, _args(num_updates=120))
    assert len(set(sizes)) > 5  # sizes vary: records are sampled independently
    assert np.mean(sizes) == pytest.approx(20, rel=0.1)


def test_a_sklearn_plan_with_dp_is_refused(tmp_path):
    from common.proto import fedloom_pb2 as pb
    from common.training_plans.source import plan_source
    from node.worker import run_task
    from tests.plans.sklearn_plans import LogisticSGDPlan

    path = tmp_path / "plan.py"
    path.write_text(plan_source(LogisticSGDPlan))
    task = pb.WorkerTask(
        class_name="LogisticSGDPlan", plan_path=str(path), training_args_json=_args().to_json()
    )
    with pytest.raises(PlanError, match=r"torch plans only.*scikit-learn plan"):
        run_task(task)


def test_a_model_opacus_cannot_handle_is_refused_with_the_fix(tmp_path):
    class BatchNormPlan(LogisticPlan):
        def init_model(self):
            return torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))

    with pytest.raises(PlanError, match="GroupNorm"):
        _trained(BatchNormPlan, tmp_path, _args())


# -- accounting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 0.01, 1000), (0.8, 0.1, 50)])
def test_epsilon_matches_opacus_own_rdp_computation(sigma, q, steps):
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert epsilon_spent([DpSteps(sigma, q, steps)], 1e-5) == pytest.approx(expected, rel=1e-12)
    # Rounds compose: five rounds of steps/5 spend what one run of `steps` does.
    rounds = [DpSteps(sigma, q, steps // 5)] * 5
    assert epsilon_spent(rounds, 1e-5) == pytest.approx(expected, rel=1e-9)


def test_epsilon_matches_opacus_prv_accountant():
    accountant = PRVAccountant()
    accountant.history = [(1.1, 0.02, 400)]
    expected = accountant.get_epsilon(delta=1e-5)
    assert epsilon_spent([DpSteps(1.1, 0.02, 400)], 1e-5, "prv") == pytest.approx(expected)


def test_target_epsilon_is_reached_after_the_stated_rounds():
    dp = {"type": "local", "clip": 1.0, "target_epsilon": 2.0, "delta": 1e-5, "rounds": 10}
    args = _args(dp=dp)
    dp_round = plan_dp_round(args.local_dp, N_RECORDS, args)
    after = epsilon_spent([dp_round.steps_record()] * 10, 1e-5)
    assert 2.0 - 0.02 <= after <= 2.0
    assert epsilon_spent([dp_round.steps_record()] * 11, 1e-5) > 2.0


def test_epochs_count_one_over_q_poisson_steps():
    args = _args(num_updates=None, epochs=2)
    assert plan_dp_round(args.local_dp, N_RECORDS, args).steps == 2 * 10


# -- budgets ------------------------------------------------------------------------------------


def test_a_round_that_would_exceed_the_budget_is_refused_naming_budget_spent_and_command():
    spent = (DpSteps(1.0, 0.1, 20),)
    first = epsilon_spent(spent, 1e-5)
    view = LedgerView(
        budget=PrivacyBudget(first + 0.1, 1e-5, "experiment"),
        budget_history=spent,
        dataset="heart",
        raise_command="fedloom node --home H dataset budget heart --epsilon <higher>",
    )
    with pytest.raises(PrivacyBudgetExceeded) as info:
        check_budget(view, DpSteps(1.0, 0.1, 20))
    message = str(info.value)
    assert "'heart'" in message and f"{first + 0.1:g}" in message
    assert f"{first:.3f}" in message
    assert "fedloom node --home H dataset budget heart" in message
    assert check_budget(view, DpSteps(1.0, 0.1, 1)) <= first + 0.1


def test_the_budget_check_happens_before_any_training_step(tmp_path, monkeypatch):
    called: list[int] = []
    monkeypatch.setattr(LogisticPlan, "training_step", lambda self, d, t: called.append(1))
    x, y = make_logistic_data(seed=0, n=N_RECORDS)
    plan = LogisticPlan()
    plan.dataset_path = str(write_tabular_csv(tmp_path / "d.csv", x, y))
    plan.post_init({}, _args())
    plan.privacy_ledger = LedgerView(budget=PrivacyBudget(0.01, 1e-5, "researcher"), dataset="d")
    with pytest.raises(PrivacyBudgetExceeded):
        plan.run_local_training(plan.training_optimizer())
    assert called == []


# -- the researcher's display -------------------------------------------------------------------


def test_the_progress_log_shows_the_largest_epsilon_the_nodes_report(caplog):
    import logging

    from researcher.history import NodeRoundRecord, RoundRecord
    from researcher.progress import LogProgress

    caplog.set_level(logging.INFO, logger="researcher.progress")
    progress = LogProgress()
    progress.start("exp-dp", 1, 2)
    progress.round_started(1, {"n1": "alpha", "n2": "beta"})
    nodes = [
        NodeRoundRecord(1, "n1", "alpha", 100, 0.5, {}, 0.2, 5, dp_epsilon=1.25),
        NodeRoundRecord(1, "n2", "beta", 300, 0.3, {}, 0.2, 5, dp_epsilon=0.75),
    ]
    progress.round_finished(RoundRecord(round=1, nodes=nodes, seconds=1.0))
    assert "mean train loss 0.3500, DP ε ≤ 1.250" in caplog.text
