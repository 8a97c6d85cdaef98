"""Node training speed: fedloom's `Optimizer` against `torch.optim`, SGD and Adam, 10M-parameter MLP.

The issue-13 workload: 2,000 x 64 rows, an MLP of about 10.2M float32 parameters, one epoch
of 32 steps of 64 rows, one thread. In one process and on the same batches, each contestant
trains its own copy of the same model:

- `torch.optim.SGD` / `torch.optim.Adam` (Adam with declearn's defaults: betas 0.9/0.99,
  eps 1e-7, so both sides do the same math);
- fedloom `Optimizer(lr)` / `Optimizer(lr, modules=["adam"])` as a node runs it (fused path);
- the same fedloom optimizers on declearn's generic path (`fused=False`, the old path), for
  reference.

Epochs are interleaved contestant by contestant, in a rotating order, so a busy machine
slows all of them alike.
Prints the median epoch time and the median time spent in `step()` per contestant, and the
ratio of fedloom's epoch to torch's against the targets (SGD <= 1.05x, Adam <= 1.15x).

Usage: python bench/optimizer_step.py [--reps 5] [--hidden 3170]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.optimizers.adapters import DeclearnTorchOptimizer, NativeTorchOptimizer  # noqa: E402
from common.optimizers.optimizer import Optimizer  # noqa: E402

ROWS, FEATURES, BATCH = 2000, 64, 64
LR = 0.01
#: Targets of issue 13: fedloom's epoch over torch.optim's.
TARGETS = {"sgd": 1.05, "adam": 1.15}


def build_model(hidden: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )


def contestants(base: torch.nn.Module, algo: str) -> dict[str, tuple[torch.nn.Module, Any]]:
    """name -> (model copy, training adapter) for one algorithm."""
    out: dict[str, tuple[torch.nn.Module, Any]] = {}
    for name in ("torch.optim", "fedloom", "fedloom generic (old)"):
        model = copy.deepcopy(base)
        adapter: Any
        if name == "torch.optim":
            native = (
                torch.optim.SGD(model.parameters(), lr=LR)
                if algo == "sgd"
                else torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.99), eps=1e-7)
            )
            adapter = NativeTorchOptimizer(native)
        else:
            modules = [] if algo == "sgd" else ["adam"]
            adapter = DeclearnTorchOptimizer(
                model, Optimizer(lr=LR, modules=modules), fused=name == "fedloom"
            )
        adapter.init_round()
        out[name] = (model, adapter)
    return out


def epoch(
    model: torch.nn.Module, adapter: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """(epoch seconds, seconds inside step())."""
    loss_fn: Callable[..., torch.Tensor] = torch.nn.functional.mse_loss
    in_step = 0.0
    started = time.perf_counter()
    for x, y in batches:
        adapter.zero_grad()
        loss_fn(model(x), y).backward()  # type: ignore[no-untyped-call]
        t0 = time.perf_counter()
        adapter.step()
        in_step += time.perf_counter() - t0
    return time.perf_counter() - started, in_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="epochs per contestant (median)")
    parser.add_argument("--hidden", type=int, default=3170, help="hidden width (3170: 10.26M)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    y = torch.randn(ROWS, 1, generator=generator)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, ROWS, BATCH)]
    base = build_model(args.hidden)
    n_params = sum(p.numel() for p in base.parameters())
    print(
        f"MLP {FEATURES}-{args.hidden}-{args.hidden}-1: {n_params / 1e6:.2f}M parameters; "
        f"{len(batches)} steps of {BATCH} rows per epoch; 1 thread; median of {args.reps} epochs"
    )
    for algo in ("sgd", "adam"):
        runners = contestants(base, algo)
        for model, adapter in runners.values():
            epoch(model, adapter, batches[:2])  # warm-up: first-touch allocations, kernels
        epochs: dict[str, list[float]] = {name: [] for name in runners}
        steps: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for rep in range(args.reps):
            # Rotate who goes first: memory and cache effects of the previous epoch even out.
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                model, adapter = runners[name]
                total, in_step = epoch(model, adapter, batches)
                epochs[name].append(total)
                steps[name].append(in_step)
        print(f"\n{algo.upper()}")
        print(f"  {'':24} {'epoch s':>9} {'step() s':>9} {'epoch / torch':>14}")
        torch_epoch = statistics.median(epochs["torch.optim"])
        for name in runners:
            med = statistics.median(epochs[name])
            print(
                f"  {name:24} {med:9.3f} {statistics.median(steps[name]):9.3f} "
                f"{med / torch_epoch:13.3f}x"
            )
        ratio = statistics.median(
            f / t for f, t in zip(epochs["fedloom"], epochs["torch.optim"], strict=True)
        )
        verdict = "met" if ratio <= TARGETS[algo] else "NOT met"
        print(
            f"  fedloom / torch.optim epoch (median of paired ratios): {ratio:.3f}x, "
            f"target <= {TARGETS[algo]:.2f}x: {verdict}"
        )
        del runners
    return 0


if __name__ == "__main__":
    sys.exit(main())
