"""Training-loop adapters: torch (declearn and native) and numpy behave as the node expects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from declearn.model.torch import TorchVector

from common.errors import ConfigurationError, PlanError
from common.optimizers.adapters import (
    DeclearnTorchOptimizer,
    NativeTorchOptimizer,
    NumpyTrainingOptimizer,
    TrainingOptimizer,
    make_torch_optimizer,
)
from common.optimizers.declearn import ScaffoldAuxVar
from common.optimizers.optimizer import Optimizer


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(3, 2)
        self.unused = torch.nn.Linear(2, 1)
        self.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.frozen


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_every_adapter_implements_the_training_protocol() -> None:
    model = _TwoHeads()
    adapters = [
        make_torch_optimizer(model, Optimizer(lr=0.1)),
        make_torch_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1)),
        NumpyTrainingOptimizer(dict, lambda w: None, Optimizer(lr=0.1)),
    ]
    assert [type(a) for a in adapters] == [
        DeclearnTorchOptimizer,
        NativeTorchOptimizer,
        NumpyTrainingOptimizer,
    ]
    assert all(isinstance(adapter, TrainingOptimizer) for adapter in adapters)


def test_declearn_sgd_step_matches_manual_update_from_backward() -> None:
    model = _TwoHeads()
    before = _snapshot(model)
    adapter = make_torch_optimizer(model, Optimizer(lr=0.1))
    adapter.init_round()
    adapter.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    adapter.step()
    after = _snapshot(model)
    torch.testing.assert_close(
        after["body.weight"], before["body.weight"] - 0.1 * grads["body.weight"]
    )
    torch.testing.assert_close(after["body.bias"], before["body.bias"] - 0.1 * grads["body.bias"])
    torch.testing.assert_close(after["frozen"], before["frozen"])


def test_parameters_without_gradient_get_a_zero_gradient() -> None:
    model = _TwoHeads()
    before = _snapshot(model)
    adapter = make_torch_optimizer(model, Optimizer(lr=0.1, decay=0.5, modules=["adam"]))
    adapter.init_round()
    for _ in range(2):
        adapter.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        adapter.step()
    after = _snapshot(model)
    # weight decay still applies to the unused head: w <- w - 0.5 w, twice
    torch.testing.assert_close(after["unused.weight"], before["unused.weight"] * 0.25)
    adam_state = adapter.optimizer.declearn_optimizer.modules[0].ewma_1.state
    assert isinstance(adam_state, TorchVector) and "unused.weight" in adam_state.coefs


def test_zero_grad_clears_gradients() -> None:
    model = _TwoHeads()
    adapter = make_torch_optimizer(model, Optimizer(lr=0.1))
    model(torch.ones(1, 3)).sum().backward()
    adapter.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_native_torch_adapter_steps_like_torch_and_refuses_aux_vars() -> None:
    model, twin = _TwoHeads(), _TwoHeads()
    adapter = make_torch_optimizer(model, torch.optim.Adam(model.parameters(), lr=0.01))
    plain = torch.optim.Adam(twin.parameters(), lr=0.01)
    adapter.init_round()
    for _ in range(3):
        adapter.zero_grad()
        plain.zero_grad()
        model(torch.ones(2, 3)).pow(2).sum().backward()
        twin(torch.ones(2, 3)).pow(2).sum().backward()
        adapter.step()
        plain.step()
    for name, value in _snapshot(twin).items():
        torch.testing.assert_close(_snapshot(model)[name], value)
    assert adapter.collect_aux_var() == {}
    adapter.process_aux_var({})
    with pytest.raises(ConfigurationError, match="ScaffoldClientModule"):
        adapter.process_aux_var({"scaffold": ScaffoldAuxVar(state=0.0)})


def test_torch_optimizer_built_on_other_parameters_is_refused() -> None:
    other = torch.nn.Linear(3, 2)
    with pytest.raises(PlanError, match=r"self.model\(\).parameters\(\)"):
        make_torch_optimizer(_TwoHeads(), torch.optim.SGD(other.parameters(), lr=0.1))


def test_unsupported_optimizer_objects_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="init_optimizer"):
        make_torch_optimizer(_TwoHeads(), "adam")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="scikit-learn"):
        NumpyTrainingOptimizer(
            dict, lambda w: None, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)
        )  # type: ignore[arg-type]


def test_model_without_trainable_parameters_is_refused() -> None:
    model = torch.nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(PlanError, match="no trainable parameter"):
        make_torch_optimizer(model, Optimizer(lr=0.1))


def test_numpy_adapter_needs_gradients_before_step() -> None:
    store = {"w": {"coef": np.zeros(2, dtype=np.float32)}}
    adapter = NumpyTrainingOptimizer(
        lambda: store["w"], lambda w: store.__setitem__("w", w), Optimizer(lr=0.5)
    )
    with pytest.raises(PlanError, match="set_gradients"):
        adapter.step()
    adapter.set_gradients({"coef": np.ones(2)})
    adapter.zero_grad()
    with pytest.raises(PlanError):
        adapter.step()
    adapter.step_with_gradients({"coef": np.ones(2)})
    np.testing.assert_allclose(store["w"]["coef"], [-0.5, -0.5])
    assert store["w"]["coef"].dtype == np.float32
