"""DP-SGD for torch plans: Poisson-sampled batches, per-record clipping, Gaussian noise.

Per-record gradients come from Opacus's GradSampleModule hooks on the plan's own model,
so `training_step` runs unchanged. After each backward pass, `privatize_gradients` writes
(Σ clip(gᵢ) + N(0, sigma² C²)) / (q·N) into `.grad`; the plan's optimizer (fedloom's declearn
`Optimizer`, fused or not, or a torch.optim one) then steps as usual: whatever it does
with `.grad` is post-processing and keeps the guarantee.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch

from common.data import DataManager
from common.errors import PlanError
from common.privacy.accountant import DpSteps, epsilon_spent, noise_multiplier_for
from common.privacy.budget import LedgerView, check_budget
from common.privacy.config import LocalDp
from common.training_args import TrainingArgs

__all__ = [
    "DpRound",
    "clip_per_sample",
    "plan_dp_round",
    "privatize_gradients",
    "train_round_dp",
]

#: The attribute where Opacus's hooks leave each parameter's per-record gradients.
GRAD_SAMPLE = "grad_sample"

#: Added to per-record norms before dividing, as Opacus does, so a zero gradient stays zero.
NORM_EPSILON = 1e-6


class DpRound:
    """One round's DP-SGD settings on this node: sigma, q, the number of steps, the accounting."""

    def __init__(self, config: LocalDp, n_records: int, args: TrainingArgs) -> None:
        self.config = config
        self.n_records = n_records
        self.sample_rate = min(1.0, args.batch_size / n_records)
        if args.dry_run:
            self.steps = 1
        elif args.num_updates is not None:
            self.steps = args.num_updates
        else:  # an epoch of Poisson sampling is 1/q steps on average
            self.steps = args.effective_epochs * math.ceil(1.0 / self.sample_rate)
        if config.noise_multiplier is not None:
            self.noise_multiplier = float(config.noise_multiplier)
        else:
            assert config.target_epsilon is not None and config.rounds is not None
            self.noise_multiplier = noise_multiplier_for(
                config.target_epsilon,
                config.delta,
                self.sample_rate,
                self.steps * config.rounds,
                config.accountant,
            )

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.n_records

    def steps_record(self) -> DpSteps:
        return DpSteps(self.noise_multiplier, self.sample_rate, self.steps)


def plan_dp_round(config: LocalDp, n_records: int, args: TrainingArgs) -> DpRound:
    """The DP settings of a round on `n_records` training records."""
    return DpRound(config, n_records, args)


def clip_per_sample(grad_samples: list[torch.Tensor], clip: float) -> list[torch.Tensor]:
    """Scale each record's gradient (across all parameters) to L2 norm at most `clip`."""
    batch = grad_samples[0].shape[0]
    squared = torch.zeros(batch, dtype=grad_samples[0].dtype)
    for g in grad_samples:
        squared += g.reshape(batch, -1).pow(2).sum(dim=1)
    factor = (clip / (squared.sqrt() + NORM_EPSILON)).clamp(max=1.0)
    return [g * factor.reshape((batch,) + (1,) * (g.ndim - 1)) for g in grad_samples]


def privatize_gradients(
    params: list[torch.nn.Parameter],
    *,
    clip: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator,
) -> None:
    """Replace each parameter's `.grad` by its clipped, noised, averaged per-record gradients.

    Reads `p.grad_sample` (shape [batch, *p.shape], set by Opacus's hooks); a parameter
    without one (empty batch, unused in the forward pass) counts as all-zero gradients.
    """
    samples = [(p, getattr(p, GRAD_SAMPLE, None)) for p in params]
    present = [(p, g) for p, g in samples if g is not None]
    if any(isinstance(g, list) for _, g in present):
        raise PlanError(
            "DP-SGD needs one forward and one backward pass per step: training_step() called "
            "the model more than once, so per-record gradients cannot be told apart"
        )
    clipped = clip_per_sample([g for _, g in present], clip) if present else []
    summed = {id(p): g.sum(dim=0) for (p, _), g in zip(present, clipped, strict=True)}
    std = noise_multiplier * clip
    for p in params:
        total = summed.get(id(p))
        if total is None:
            total = torch.zeros_like(p)
        noise = torch.normal(0.0, std, size=p.shape, generator=generator, dtype=p.dtype)
        p.grad = ((total + noise) / expected_batch_size).to(p.dtype)
        setattr(p, GRAD_SAMPLE, None)


def train_round_dp(plan: Any, data: DataManager, optimizer: Any) -> Any:
    """One round of DP-SGD on `plan` (a TorchTrainingPlan); returns its LocalTrainingResult.

    Refuses (PrivacyBudgetExceeded) before the first step when the round would take the
    dataset past its budget. Reads the node ledger's view from `plan.privacy_ledger`.
    """
    try:
        from opacus import GradSampleModule
        from opacus.validators import ModuleValidator
    except ImportError as exc:
        raise PlanError(
            f"record-level DP needs Opacus on the node ({exc}): its operator must install "
            "fedloom with the dp extra (pip install 'fedloom[dp]')"
        ) from exc

    from common.training_plans.base import LocalTrainingResult

    args: TrainingArgs = plan.training_args()
    config = args.local_dp
    if config is None:
        raise PlanError("train_round_dp runs record-level DP (training_args['dp'] type 'local')")
    view: LedgerView = getattr(plan, "privacy_ledger", None) or LedgerView()
    model: torch.nn.Module = plan.model()
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise PlanError(
            f"DP-SGD cannot compute per-record gradients for this model: {problems[0]}; replace "
            "the layer (e.g. BatchNorm by GroupNorm, opacus.validators.ModuleValidator.fix)"
        )
    dp_round = plan_dp_round(config, len(data), args)
    check_budget(view, dp_round.steps_record())
    # Never from training_args' random_seed: the researcher sets it, and whoever can replay
    # the batches or the noise undoes the guarantee. Both come from the OS's entropy.
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(os.urandom(8), "little"))
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    model.train()
    optimizer.init_round()
    sampler = GradSampleModule(model, loss_reduction="mean", strict=False)
    try:
        with warnings.catch_warnings():
            # Opacus's hooks see the first layer's input without requires_grad: expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses = _run_steps(plan, data, optimizer, dp_round, generator, rng)
    finally:
        sampler._close()
    history = (*view.experiment_history, dp_round.steps_record())
    result = LocalTrainingResult(n_samples=len(data), n_steps=dp_round.steps, losses=losses)
    result.dp = dp_round.steps_record()
    result.dp_epsilon = epsilon_spent(history, float(config.delta), config.accountant)
    return result


def _run_steps(
    plan: Any,
    data: DataManager,
    optimizer: Any,
    dp_round: DpRound,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> list[float]:
    """The round's DP-SGD steps; returns the loss of each non-empty batch."""
    params = [p for p in plan.model().parameters() if p.requires_grad]
    losses: list[float] = []
    for step in range(1, dp_round.steps + 1):
        # Poisson sampling: each record joins the batch with probability q, independently.
        chosen = np.flatnonzero(rng.random(len(data)) < dp_round.sample_rate)
        optimizer.zero_grad()
        for p in params:
            setattr(p, GRAD_SAMPLE, None)
        if chosen.size:
            inputs, target = data.batch(chosen)
            loss = plan.training_step(_tensor(inputs), _tensor(target))
            plan.check_loss(loss, step)
            loss.backward()
            losses.append(float(loss.detach()))
            plan.report_step(step, losses[-1])
        privatize_gradients(
            params,
            clip=float(dp_round.config.clip),
            noise_multiplier=dp_round.noise_multiplier,
            expected_batch_size=dp_round.expected_batch_size,
            generator=generator,
        )
        optimizer.step()
    return losses


def _tensor(values: Any) -> Any:
    from common.training_plans.torch_plan import _to_tensor

    return _to_tensor(values)
