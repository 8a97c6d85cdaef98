"""Fused torch steps equal declearn's generic math, keep its state format, and can hand over.

Each test trains two identical models on the same batches: one through
`make_torch_optimizer(model, Optimizer(...))` (fused kernels), one through
`DeclearnTorchOptimizer(model, Optimizer(...), fused=False)`, which runs declearn's own
`Optimizer.apply_gradients` on TorchVectors. Weights and optimizer states must agree within
float32 rounding after every step, over several rounds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from declearn.model.torch import TorchVector

from common.optimizers.adapters import DeclearnTorchOptimizer, make_torch_optimizer
from common.optimizers.declearn import ScaffoldAuxVar, ScaffoldClientModule
from common.optimizers.optimizer import Optimizer
from common.optimizers.torch_fused import fused_plugin_names

ROUNDS = 2
STEPS_PER_ROUND = 4

SPECS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1},
    "sgd-decay": {"lr": 0.1, "decay": 0.01},
    "sgd-scheduled": {"lr": ["exponential-decay", {"base": 0.1, "rate": 0.8}]},
    "momentum": {"lr": 0.05, "modules": [["momentum", {"beta": 0.8}]]},
    "nesterov": {"lr": 0.05, "modules": [["momentum", {"beta": 0.8, "nesterov": True}]]},
    "momentum-round-reset": {
        "lr": 0.05,
        "modules": [["momentum", {"beta": 0.8, "round_reset": True}]],
    },
    "ewma": {"lr": 0.05, "modules": [["ewma", {"beta": 0.7}]]},
    "adam": {"lr": 0.01, "modules": ["adam"]},
    # A large epsilon makes its placement (outside the square root, after bias correction) count.
    "adam-large-eps": {"lr": 0.01, "modules": [["adam", {"eps": 0.1}]]},
    "adam-amsgrad": {"lr": 0.01, "modules": [["adam", {"amsgrad": True, "beta_2": 0.9}]]},
    "adam-round-reset": {"lr": 0.01, "modules": [["adam", {"round_reset": True}]]},
    "adam-decay": {"lr": 0.01, "decay": 0.001, "modules": ["adam"]},
    "yogi": {"lr": 0.01, "modules": ["yogi"]},
    "yogi-amsgrad": {"lr": 0.01, "modules": [["yogi", {"amsgrad": True, "eps": 0.01}]]},
    "rmsprop": {"lr": 0.01, "modules": [["rmsprop", {"beta": 0.8, "eps": 0.05}]]},
    "adagrad": {"lr": 0.05, "modules": [["adagrad", {"eps": 0.05}]]},
    "fedprox": {"lr": 0.1, "regularizers": [["fedprox", {"alpha": 0.5}]]},
    "lasso": {"lr": 0.1, "regularizers": [["lasso", {"alpha": 0.01}]]},
    "ridge": {"lr": 0.1, "regularizers": [["ridge", {"alpha": 0.05}]]},
    "chain": {
        "lr": ["exponential-decay", {"base": 0.02, "rate": 0.9}],
        "decay": 0.001,
        "modules": ["adam", ["momentum", {"beta": 0.5, "nesterov": True}], "rmsprop"],
        "regularizers": [["fedprox", {"alpha": 0.1}], "lasso", "ridge"],
    },
    "adagrad-after-momentum": {
        "lr": 0.05,
        "modules": [["momentum", {"beta": 0.9}], "adagrad"],
        "regularizers": ["ridge"],
    },
}


class _Net(torch.nn.Module):
    """A small MLP plus a parameter the forward pass never uses (its gradient stays None)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.hidden = torch.nn.Linear(6, 5)
        self.out = torch.nn.Linear(5, 2)
        self.unused = torch.nn.Parameter(torch.ones(3))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.tanh(self.hidden(x)))
        return out


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(11)
    return [
        (torch.randn(8, 6, generator=generator), torch.randn(8, 2, generator=generator))
        for _ in range(count)
    ]


def _train_step(model: torch.nn.Module, adapter: Any, batch: tuple[torch.Tensor, ...]) -> None:
    adapter.zero_grad()
    x, y = batch
    torch.nn.functional.mse_loss(model(x), y).backward()  # type: ignore[no-untyped-call]
    adapter.step()


def _start_round(adapters: tuple[Any, ...], scaffold_state: TorchVector | None = None) -> None:
    for adapter in adapters:
        if scaffold_state is not None:
            state = copy.deepcopy(scaffold_state)
            adapter.process_aux_var({"scaffold": ScaffoldAuxVar(state=state)})
        adapter.init_round()


def _train_both(
    pair: tuple[torch.nn.Module, Any],
    reference: tuple[torch.nn.Module, Any],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """One round of steps on both models, same batches; weights compared after every step."""
    for _ in range(STEPS_PER_ROUND):
        batch = next(batches)
        _train_step(*pair, batch)
        _train_step(*reference, batch)
        _assert_same_weights(pair[0], reference[0])


def _assert_same_weights(fused: torch.nn.Module, generic: torch.nn.Module) -> None:
    for (name, a), (_, b) in zip(fused.named_parameters(), generic.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{name} differs")


def _assert_same_state(fused: Optimizer, generic: Optimizer) -> None:
    meta_a, arrays_a = fused.export_state()
    meta_b, arrays_b = generic.export_state()
    assert meta_a == meta_b
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        np.testing.assert_allclose(arrays_a[key], arrays_b[key], rtol=2e-5, atol=1e-6)


def _pair(spec: dict[str, Any]) -> tuple[Any, ...]:
    model_fused = _Net()
    model_generic = copy.deepcopy(model_fused)
    opt_fused, opt_generic = Optimizer.from_spec(spec), Optimizer.from_spec(spec)
    fused = make_torch_optimizer(model_fused, opt_fused)
    generic = DeclearnTorchOptimizer(model_generic, opt_generic, fused=False)
    # Scaffold clients draw a random id; the pair must look like one node to compare states.
    for mod_a, mod_b in zip(
        opt_fused.declearn_optimizer.modules, opt_generic.declearn_optimizer.modules, strict=True
    ):
        if isinstance(mod_a, ScaffoldClientModule) and isinstance(mod_b, ScaffoldClientModule):
            mod_b.uuid = mod_a.uuid
    assert isinstance(fused, DeclearnTorchOptimizer) and fused.fused and not generic.fused
    return model_fused, model_generic, fused, generic


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fused_steps_equal_declearn_math_over_rounds(name: str) -> None:
    model_fused, model_generic, fused, generic = _pair(SPECS[name])
    batches = iter(_batches(ROUNDS * STEPS_PER_ROUND))
    for _ in range(ROUNDS):
        _start_round((fused, generic))
        _train_both((model_fused, fused), (model_generic, generic), batches)
        _assert_same_state(fused.optimizer, generic.optimizer)
        assert fused.optimizer.lr == pytest.approx(generic.optimizer.lr)


@pytest.mark.parametrize(
    "modules",
    [
        ["scaffold-client"],
        [["momentum", {"beta": 0.8}], "scaffold-client"],
        ["adam", "scaffold-client"],
    ],
)
def test_fused_scaffold_client_equals_declearn_with_aux_vars(modules: list[Any]) -> None:
    spec = {"lr": 0.05, "modules": modules, "regularizers": [["fedprox", {"alpha": 0.1}]]}
    model_fused, model_generic, fused, generic = _pair(spec)
    generator = torch.Generator().manual_seed(3)
    batches = iter(_batches(3 * STEPS_PER_ROUND))
    for _ in range(3):
        global_state = TorchVector(
            {
                n: torch.randn(p.shape, generator=generator)
                for n, p in model_fused.named_parameters()
            }
        )
        _start_round((fused, generic), global_state)
        _train_both((model_fused, fused), (model_generic, generic), batches)
        aux_fused = fused.collect_aux_var()["scaffold"]
        aux_generic = generic.collect_aux_var()["scaffold"]
        assert isinstance(aux_fused, ScaffoldAuxVar) and isinstance(aux_generic, ScaffoldAuxVar)
        for key, delta in aux_generic.delta.coefs.items():  # type: ignore[union-attr]
            torch.testing.assert_close(aux_fused.delta.coefs[key], delta)  # type: ignore[union-attr]
        _assert_same_state(fused.optimizer, generic.optimizer)


def test_switching_between_fused_and_generic_steps_keeps_state() -> None:
    spec = {"lr": 0.01, "modules": [["adam", {"amsgrad": True}], "momentum"]}
    model, model_ref, _, reference = _pair(spec)
    optimizer = Optimizer.from_spec(spec)
    fused = DeclearnTorchOptimizer(model, optimizer)
    generic = DeclearnTorchOptimizer(model, optimizer, fused=False)
    fused.init_round()
    reference.init_round()
    for index, batch in enumerate(_batches(8)):
        _train_step(model, fused if index % 3 else generic, batch)
        _train_step(model_ref, reference, batch)
        _assert_same_weights(model, model_ref)
    _assert_same_state(optimizer, reference.optimizer)


def test_state_saved_after_fused_steps_resumes_in_a_new_process_state() -> None:
    spec = {"lr": 0.01, "modules": ["yogi", "scaffold-client"], "regularizers": ["ridge"]}
    model, model_ref, first, reference = _pair(spec)
    batches = iter(_batches(2 * STEPS_PER_ROUND))
    zeros = TorchVector({n: torch.zeros(p.shape) for n, p in model.named_parameters()})
    _start_round((first, reference), zeros)
    _train_both((model, first), (model_ref, reference), batches)
    first.collect_aux_var()
    reference.collect_aux_var()
    meta, arrays = first.export_state()
    # A later round: a new Optimizer in a new task process gets the saved state.
    resumed = DeclearnTorchOptimizer(model, Optimizer.from_spec(spec))
    resumed.import_state(meta, arrays)
    _start_round((resumed, reference), zeros)
    _train_both((model, resumed), (model_ref, reference), batches)
    _assert_same_state(resumed.optimizer, reference.optimizer)


def test_a_state_read_out_is_not_changed_by_later_fused_steps() -> None:
    model, _, fused, _ = _pair({"lr": 0.01, "modules": ["adam"]})
    batches = _batches(3)
    fused.init_round()
    _train_step(model, fused, batches[0])
    state = fused.optimizer.get_state()
    momentum = state["modules"][0][1]["momentum"]["state"].coefs["out.weight"]
    before = momentum.clone()
    _train_step(model, fused, batches[1])
    torch.testing.assert_close(momentum, before, rtol=0, atol=0)
    after = fused.optimizer.get_state()["modules"][0][1]["momentum"]["state"].coefs["out.weight"]
    assert not torch.equal(after, before)


def test_plugins_without_a_fused_kernel_take_the_generic_path() -> None:
    model = _Net()
    assert not DeclearnTorchOptimizer(model, Optimizer(lr=0.1, modules=["l2-clipping"])).fused
    assert DeclearnTorchOptimizer(model, Optimizer(lr=0.1, modules=["adam"])).fused
    assert {"adam", "yogi", "momentum", "rmsprop", "adagrad", "scaffold-client"} <= set(
        fused_plugin_names()
    )
    assert {"fedprox", "lasso", "ridge"} <= set(fused_plugin_names())
