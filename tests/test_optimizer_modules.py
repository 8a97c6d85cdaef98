"""Optimizer chains (modules, regularizers, weight decay) against reference math, torch and numpy.

The references below are written from the algorithms' definitions with plain numpy; declearn is
only exercised through fedloom's Optimizer and its training-loop adapters.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from common.optimizers.adapters import NumpyTrainingOptimizer, make_torch_optimizer
from common.optimizers.declearn import (
    AdaGradModule,
    AdamModule,
    FedProxRegularizer,
    GaussianNoiseModule,
    L2Clipping,
    L2GlobalClipping,
    LassoRegularizer,
    MomentumModule,
    RidgeRegularizer,
    RMSPropModule,
    YogiModule,
    list_optim_modules,
    list_optim_regularizers,
)
from common.optimizers.optimizer import Optimizer

Arrays = dict[str, np.ndarray]
GradFn = Callable[[Arrays], Arrays]

SHAPES = {"layer.weight": (3, 4), "layer.bias": (3,)}
STEPS = 6


def _initial_weights(seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape) for name, shape in SHAPES.items()}


def _gradients(seed: int = 1, steps: int = STEPS) -> list[Arrays]:
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(size=shape) for name, shape in SHAPES.items()} for _ in range(steps)]


# --------------------------------------------------------------------------- references


def _per_key(fn: Callable[[str, np.ndarray], np.ndarray]) -> GradFn:
    return lambda grads: {key: fn(key, value) for key, value in grads.items()}


def ref_adam(beta_1: float = 0.9, beta_2: float = 0.99, eps: float = 1e-7, amsgrad: bool = False):
    m: Arrays = {}
    v: Arrays = {}
    vmax: Arrays = {}
    t = {"n": 0}

    def run(grads: Arrays) -> Arrays:
        t["n"] += 1
        out = {}
        for key, g in grads.items():
            m[key] = beta_1 * m.get(key, 0.0) + (1 - beta_1) * g
            v[key] = beta_2 * v.get(key, 0.0) + (1 - beta_2) * g**2
            m_hat = m[key] / (1 - beta_1 ** t["n"])
            v_hat = v[key] / (1 - beta_2 ** t["n"])
            if amsgrad:
                v_hat = np.maximum(v_hat, vmax[key]) if key in vmax else v_hat
                vmax[key] = v_hat
            out[key] = m_hat / (np.sqrt(v_hat) + eps)
        return out

    return run


def ref_yogi(beta_1: float = 0.9, beta_2: float = 0.99, eps: float = 1e-7):
    m: Arrays = {}
    v: Arrays = {}
    t = {"n": 0}

    def run(grads: Arrays) -> Arrays:
        t["n"] += 1
        out = {}
        for key, g in grads.items():
            m[key] = beta_1 * m.get(key, 0.0) + (1 - beta_1) * g
            prev = v.get(key, np.zeros_like(g))
            v[key] = prev - (1 - beta_2) * np.sign(prev - g**2) * g**2
            m_hat = m[key] / (1 - beta_1 ** t["n"])
            v_hat = v[key] / (1 - beta_2 ** t["n"])
            out[key] = m_hat / (np.sqrt(v_hat) + eps)
        return out

    return run


def ref_adagrad(eps: float = 1e-7):
    acc: Arrays = {}

    def step(key: str, g: np.ndarray) -> np.ndarray:
        acc[key] = acc.get(key, 0.0) + g**2
        return g / (np.sqrt(acc[key]) + eps)

    return _per_key(step)


def ref_rmsprop(beta: float = 0.9, eps: float = 1e-7):
    acc: Arrays = {}

    def step(key: str, g: np.ndarray) -> np.ndarray:
        acc[key] = beta * acc.get(key, 0.0) + (1 - beta) * g**2
        return g / (np.sqrt(acc[key]) + eps)

    return _per_key(step)


def ref_momentum(beta: float = 0.9, nesterov: bool = False):
    velocity: Arrays = {}

    def step(key: str, g: np.ndarray) -> np.ndarray:
        velocity[key] = beta * velocity.get(key, 0.0) + g
        return beta * velocity[key] + g if nesterov else velocity[key]

    return _per_key(step)


def ref_l2_clipping(max_norm: float):
    return _per_key(lambda _key, g: g * min(1.0, max_norm / np.linalg.norm(g)))


def ref_l2_global_clipping(max_norm: float) -> GradFn:
    def run(grads: Arrays) -> Arrays:
        norm = np.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
        return {key: g * min(1.0, max_norm / norm) for key, g in grads.items()}

    return run


def ref_train(
    weights: Arrays,
    grads_seq: list[Arrays],
    lr: float,
    modules: list[GradFn] = (),  # type: ignore[assignment]
    regularizers: list[Callable[[Arrays, Arrays], Arrays]] = (),  # type: ignore[assignment]
    decay: float = 0.0,
) -> Arrays:
    """theta <- theta - lr * Opt(grad + Reg(theta)) - decay * theta, one step per gradient."""
    w = {key: value.copy() for key, value in weights.items()}
    for grads in grads_seq:
        g = dict(grads)
        for reg in regularizers:
            g = reg(g, w)
        for module in modules:
            g = module(g)
        w = {key: w[key] - lr * g[key] - decay * w[key] for key in w}
    return w


def ridge(alpha: float):
    return lambda g, w: {k: g[k] + 2 * alpha * w[k] for k in g}


def lasso(alpha: float):
    return lambda g, w: {k: g[k] + alpha * np.sign(w[k]) for k in g}


# ------------------------------------------------------------------------------ backends


class _Params(torch.nn.Module):
    def __init__(self, weights: Arrays) -> None:
        super().__init__()
        self.layer = torch.nn.Module()
        for name, value in weights.items():
            setattr(self.layer, name.split(".")[1], torch.nn.Parameter(torch.tensor(value)))


def train_torch(optimizer: Optimizer, weights: Arrays, grads_seq: list[Arrays]) -> Arrays:
    model = _Params(weights)
    adapter = make_torch_optimizer(model, optimizer)
    adapter.init_round()
    params = dict(model.named_parameters())
    for grads in grads_seq:
        adapter.zero_grad()
        for name, grad in grads.items():
            params[name].grad = torch.tensor(grad)
        adapter.step()
    return {name: p.detach().numpy().copy() for name, p in params.items()}


def train_numpy(optimizer: Optimizer, weights: Arrays, grads_seq: list[Arrays]) -> Arrays:
    store = {"w": dict(weights)}
    adapter = NumpyTrainingOptimizer(
        lambda: store["w"], lambda new: store.__setitem__("w", new), optimizer
    )
    adapter.init_round()
    for grads in grads_seq:
        adapter.step_with_gradients(grads)
    return store["w"]


BACKENDS = {"torch": train_torch, "numpy": train_numpy}


def _assert_close(actual: Arrays, expected: Arrays) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-6, atol=1e-9, err_msg=key)


CASES: dict[str, tuple[Callable[[], Optimizer], Callable[[Arrays, list[Arrays]], Arrays]]] = {
    "sgd": (lambda: Optimizer(lr=0.1), lambda w, g: ref_train(w, g, 0.1)),
    "adam": (
        lambda: Optimizer(lr=0.05, modules=[AdamModule()]),
        lambda w, g: ref_train(w, g, 0.05, [ref_adam()]),
    ),
    "amsgrad": (
        lambda: Optimizer(lr=0.05, modules=[AdamModule(beta_1=0.8, amsgrad=True)]),
        lambda w, g: ref_train(w, g, 0.05, [ref_adam(beta_1=0.8, amsgrad=True)]),
    ),
    "adagrad": (
        lambda: Optimizer(lr=0.1, modules=[AdaGradModule()]),
        lambda w, g: ref_train(w, g, 0.1, [ref_adagrad()]),
    ),
    "rmsprop": (
        lambda: Optimizer(lr=0.1, modules=[RMSPropModule(beta=0.8)]),
        lambda w, g: ref_train(w, g, 0.1, [ref_rmsprop(beta=0.8)]),
    ),
    "momentum": (
        lambda: Optimizer(lr=0.1, modules=[MomentumModule(beta=0.7)]),
        lambda w, g: ref_train(w, g, 0.1, [ref_momentum(beta=0.7)]),
    ),
    "nesterov": (
        lambda: Optimizer(lr=0.1, modules=[MomentumModule(beta=0.7, nesterov=True)]),
        lambda w, g: ref_train(w, g, 0.1, [ref_momentum(beta=0.7, nesterov=True)]),
    ),
    "yogi": (
        lambda: Optimizer(lr=0.05, modules=[YogiModule()]),
        lambda w, g: ref_train(w, g, 0.05, [ref_yogi()]),
    ),
    "adam_then_momentum": (
        lambda: Optimizer(lr=0.01, modules=[AdamModule(), MomentumModule()]),
        lambda w, g: ref_train(w, g, 0.01, [ref_adam(), ref_momentum()]),
    ),
    "rmsprop_momentum_lasso_ridge": (
        lambda: Optimizer(
            lr=0.01,
            modules=[RMSPropModule(), MomentumModule()],
            regularizers=[LassoRegularizer(alpha=0.05), RidgeRegularizer(alpha=0.02)],
        ),
        lambda w, g: ref_train(
            w, g, 0.01, [ref_rmsprop(), ref_momentum()], [lasso(0.05), ridge(0.02)]
        ),
    ),
    "ridge": (
        lambda: Optimizer(lr=0.1, regularizers=[RidgeRegularizer(alpha=0.1)]),
        lambda w, g: ref_train(w, g, 0.1, regularizers=[ridge(0.1)]),
    ),
    "lasso": (
        lambda: Optimizer(lr=0.1, regularizers=["lasso"]),
        lambda w, g: ref_train(w, g, 0.1, regularizers=[lasso(0.01)]),
    ),
    "weight_decay": (
        lambda: Optimizer(lr=0.1, decay=0.05),
        lambda w, g: ref_train(w, g, 0.1, decay=0.05),
    ),
    "adam_with_weight_decay": (
        lambda: Optimizer(lr=0.05, decay=0.01, modules=["adam"]),
        lambda w, g: ref_train(w, g, 0.05, [ref_adam()], decay=0.01),
    ),
    "l2_clipping": (
        lambda: Optimizer(lr=0.1, modules=[L2Clipping(max_norm=0.5)]),
        lambda w, g: ref_train(w, g, 0.1, [ref_l2_clipping(0.5)]),
    ),
    "l2_global_clipping": (
        lambda: Optimizer(lr=0.1, modules=[L2GlobalClipping(max_norm=0.5)]),
        lambda w, g: ref_train(w, g, 0.1, [ref_l2_global_clipping(0.5)]),
    ),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_chain_matches_reference(case: str, backend: str) -> None:
    build, reference = CASES[case]
    weights, grads = _initial_weights(), _gradients()
    if backend == "torch":
        weights = {k: v.astype(np.float32) for k, v in weights.items()}
        grads = [{k: v.astype(np.float32) for k, v in g.items()} for g in grads]
    result = BACKENDS[backend](build(), weights, grads)
    expected = reference(
        {k: v.astype(np.float64) for k, v in weights.items()},
        [{k: v.astype(np.float64) for k, v in g.items()} for g in grads],
    )
    if backend == "torch":
        for key in expected:
            np.testing.assert_allclose(result[key], expected[key], rtol=2e-4, atol=2e-6)
    else:
        _assert_close(result, expected)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_fedprox_pulls_towards_round_start_weights_and_resets_each_round(backend: str) -> None:
    alpha, lr = 0.5, 0.1
    weights, grads = _initial_weights(), _gradients(steps=4)
    optimizer = Optimizer(lr=lr, regularizers=[FedProxRegularizer(alpha=alpha)])
    train = BACKENDS[backend]
    after_round_1 = train(optimizer, weights, grads[:2])
    # the adapter's init_round() starts round 2: the reference point moves to these weights
    after_round_2 = train(optimizer, after_round_1, grads[2:])

    def ref_round(w0: Arrays, seq: list[Arrays]) -> Arrays:
        w = {k: v.copy() for k, v in w0.items()}
        for g in seq:
            w = {k: w[k] - lr * (g[k] + alpha * (w[k] - w0[k])) for k in w}
        return w

    expected = ref_round(ref_round(weights, grads[:2]), grads[2:])
    for key in expected:
        np.testing.assert_allclose(after_round_2[key], expected[key], rtol=1e-5, atol=1e-6)


def test_gaussian_noise_module_adds_noise_of_the_configured_scale() -> None:
    weights = {"w": np.zeros(20_000)}
    optimizer = Optimizer(lr=1.0, modules=[GaussianNoiseModule(std=0.5, safe_mode=False, seed=3)])
    result = train_numpy(optimizer, weights, [{"w": np.zeros(20_000)}])
    assert abs(float(np.std(result["w"])) - 0.5) < 0.02
    assert abs(float(np.mean(result["w"]))) < 0.02


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sorted(set(list_optim_modules()) - {"scaffold-server"}))
def test_every_supported_module_steps_and_exports_json_state(name: str, backend: str) -> None:
    weights = {k: v.astype(np.float32) for k, v in _initial_weights().items()}
    grads = [{k: v.astype(np.float32) for k, v in g.items()} for g in _gradients(steps=2)]
    optimizer = Optimizer(lr=0.01, modules=[name], regularizers=sorted(list_optim_regularizers()))
    result = BACKENDS[backend](optimizer, weights, grads)
    assert all(np.all(np.isfinite(value)) for value in result.values())
    assert any(not np.allclose(result[k], weights[k]) for k in weights)
    meta, arrays = optimizer.export_state()
    json.dumps(meta)
    assert all(isinstance(array, np.ndarray) for array in arrays.values())


def test_numpy_step_keeps_the_weights_dtype_with_float64_gradients() -> None:
    weights = {"w": np.ones(4, dtype=np.float32)}
    new = Optimizer(lr=0.5).step_numpy(weights, {"w": np.full(4, 0.25)})
    assert new["w"].dtype == np.float32
    np.testing.assert_allclose(new["w"], 0.875)
    np.testing.assert_array_equal(weights["w"], 1.0)
