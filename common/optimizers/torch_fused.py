"""Fused torch steps for fedloom's `Optimizer`: declearn's update math with in-place torch ops.

declearn's generic step builds a new Vector for every operation (for plain SGD: a gradient
clone, `lr * g`, then `-1 * u`), each a fresh model-sized allocation. For the plug-ins with a
kernel here (SGD, momentum, EWMA, Adam, Yogi, RMSProp, AdaGrad, FedProx, Lasso, Ridge, the
Scaffold client) the same formulas run as `torch._foreach_*` and `out=` operations that update
the plug-ins' state in place and write temporaries into at most two reused scratch buffers.
Results equal declearn's within float32 rounding (tests/test_optimizer_fused.py).

The state stays where declearn keeps it: in the plug-ins' own attributes, as TorchVectors. So
`get_state`/`set_state`, schedulers, round starts and Scaffold's aux vars work unchanged, and
the generic path can take over between any two steps (and back) without losing state. Two
rules keep in-place updates invisible: a state Vector this class did not create (fresh from
`set_state`, a round reset or a generic step) is copied before it is first written, and after
every `get_state()` the next step copies again, so a state read out is a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from declearn.model.api import Vector
from declearn.model.torch import TorchVector
from declearn.optimizer.modules import (
    AdaGradModule,
    AdamModule,
    EWMAModule,
    MomentumModule,
    OptiModule,
    RMSPropModule,
    ScaffoldClientModule,
    YogiModule,
    YogiMomentumModule,
)
from declearn.optimizer.regularizers import (
    FedProxRegularizer,
    LassoRegularizer,
    Regularizer,
    RidgeRegularizer,
)

from common.errors import PayloadError
from common.optimizers.optimizer import Optimizer

__all__ = ["FusedTorchStep", "fused_plugin_names"]

Tensors = list[torch.Tensor]


@dataclass
class _Quotient:
    """A gradient left as `num / den / divisor`, so the last step can fold it into addcdiv."""

    num: Tensors
    den: Tensors  # always a scratch buffer: materializing writes the result into it
    divisor: float


_Grad = Tensors | _Quotient


class _Workspace:
    """Parameters of the current step, scratch buffers and the state Vectors this step owns."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.params: Tensors = []
        self._scratch: list[Tensors] = []
        # (id(plug-in), attribute) -> the TorchVector this class wrote there and may mutate.
        self._owned: dict[tuple[int, str], TorchVector] = {}

    def bind(self, names: list[str], params: Tensors) -> None:
        if names != self.names:
            self._owned.clear()
            self._scratch.clear()
        self.names = names
        self.params = params

    def release_state(self) -> None:
        """Forget ownership: the next write to any state Vector copies it first."""
        self._owned.clear()

    # -- buffers ------------------------------------------------------------------------------
    def is_scratch(self, tensors: Tensors) -> bool:
        return any(tensors is buffer for buffer in self._scratch)

    def scratch(self, *avoid: Tensors) -> Tensors:
        """A scratch buffer (contents undefined) that is none of `avoid`."""
        for buffer in self._scratch:
            if not any(buffer is other for other in avoid):
                return buffer
        buffer = [torch.empty_like(p) for p in self.params]
        self._scratch.append(buffer)
        return buffer

    def dense(self, grad: _Grad) -> Tensors:
        """The gradient as tensors, computing a pending quotient into its scratch buffer."""
        if not isinstance(grad, _Quotient):
            return grad
        for num, den in zip(grad.num, grad.den, strict=True):
            torch.div(num, den, out=den)
        if grad.divisor != 1.0:
            torch._foreach_div_(grad.den, grad.divisor)
        return grad.den

    # -- state --------------------------------------------------------------------------------
    def state(self, holder: Any, attr: str) -> Tensors:
        """The tensors of state `holder.attr`, owned by this step (copied in if needed)."""
        key = (id(holder), attr)
        value = getattr(holder, attr)
        owned = self._owned.get(key)
        if owned is not None and owned is value:
            return [owned.coefs[name] for name in self.names]
        if value is None:
            raise PayloadError(f"{type(holder).__name__}.{attr} has no value to update")
        tensors = self._copy_in(value, f"{type(holder).__name__}.{attr}")
        vector = TorchVector(dict(zip(self.names, tensors, strict=True)))
        setattr(holder, attr, vector)
        self._owned[key] = vector
        return tensors

    def adopt(self, holder: Any, attr: str, tensors: Tensors) -> None:
        """Store freshly built `tensors` as state `holder.attr`, owned by this step."""
        vector = TorchVector(dict(zip(self.names, tensors, strict=True)))
        setattr(holder, attr, vector)
        self._owned[(id(holder), attr)] = vector

    def read(self, value: Vector[Any], what: str) -> Tensors:
        """Tensors of a state Vector only read by the step (on the parameters' devices)."""
        self._check_keys(value, what)
        return [
            _as_tensor(value.coefs[name]).to(p.device)
            for name, p in zip(self.names, self.params, strict=True)
        ]

    def _copy_in(self, value: Any, what: str) -> Tensors:
        if isinstance(value, int | float):
            # declearn's conventional initial state is the scalar 0.0; it broadcasts.
            return [torch.full_like(p, float(value)) for p in self.params]
        if not isinstance(value, Vector):
            raise PayloadError(f"{what} is a {type(value).__name__}, expected a Vector or 0.0")
        self._check_keys(value, what)
        return [
            _as_tensor(value.coefs[name]).to(device=p.device, copy=True)
            for name, p in zip(self.names, self.params, strict=True)
        ]

    def _check_keys(self, value: Vector[Any], what: str) -> None:
        if set(value.coefs) != set(self.names):
            raise PayloadError(
                f"{what} covers parameters {sorted(value.coefs)} but the model trains "
                f"{sorted(self.names)}: discard the saved optimizer state"
            )


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.array(value, copy=True))


# -- regularizers: gradients + correction(weights) ----------------------------------------------


def _fedprox(ws: _Workspace, reg: FedProxRegularizer, grad: Tensors) -> Tensors:
    if reg.ref_wgt is None:
        # First step of the round: these weights become the proximal anchor.
        reg.ref_wgt = TorchVector(
            {name: p.detach().clone() for name, p in zip(ws.names, ws.params, strict=True)}
        )
        return grad
    ref = ws.read(reg.ref_wgt, "FedProx reference weights")
    out = ws.scratch(grad)
    for o, p, r in zip(out, ws.params, ref, strict=True):
        torch.sub(p, r, out=o)
    torch._foreach_mul_(out, reg.alpha)
    torch._foreach_add_(out, grad)
    return out


def _lasso(ws: _Workspace, reg: LassoRegularizer, grad: Tensors) -> Tensors:
    out = ws.scratch(grad)
    for o, p in zip(out, ws.params, strict=True):
        torch.sign(p, out=o)
    torch._foreach_mul_(out, reg.alpha)
    torch._foreach_add_(out, grad)
    return out


def _ridge(ws: _Workspace, reg: RidgeRegularizer, grad: Tensors) -> Tensors:
    out = ws.scratch(grad)
    for o, p in zip(out, ws.params, strict=True):
        torch.mul(p, 2 * reg.alpha, out=o)
    torch._foreach_add_(out, grad)
    return out


# -- modules ----------------------------------------------------------------------------------


def _ewma_update(ws: _Workspace, ewma: EWMAModule, values: Tensors) -> Tensors:
    """state = beta * state + (1 - beta) * values, in place; returns the state."""
    state = ws.state(ewma, "state")
    if type(ewma) is YogiMomentumModule:
        # Yogi: state -= sign(state - values) * (1 - beta) * values
        sign = torch._foreach_sub(state, values)
        torch._foreach_sign_(sign)
        torch._foreach_mul_(sign, 1 - ewma.beta)
        torch._foreach_mul_(sign, values)
        torch._foreach_sub_(state, sign)
        return state
    torch._foreach_mul_(state, ewma.beta)
    torch._foreach_add_(state, values, alpha=1 - ewma.beta)
    return state


def _ewma(ws: _Workspace, module: EWMAModule, grad: _Grad) -> _Grad:
    return _ewma_update(ws, module, ws.dense(grad))


def _momentum(ws: _Workspace, module: MomentumModule, grad: _Grad) -> _Grad:
    g = ws.dense(grad)
    velocity = ws.state(module, "velocity")
    torch._foreach_mul_(velocity, module.beta)
    torch._foreach_add_(velocity, g)
    if not module.nesterov:
        return velocity
    out = ws.scratch(g)
    for o, v in zip(out, velocity, strict=True):
        torch.mul(v, module.beta, out=o)
    torch._foreach_add_(out, g)
    return out


def _adam(ws: _Workspace, module: AdamModule, grad: _Grad) -> _Grad:
    g = ws.dense(grad)
    momentum = _ewma_update(ws, module.ewma_1, g)
    if type(module.ewma_2) is YogiMomentumModule:
        squares = ws.scratch(g)
        for s, gi in zip(squares, g, strict=True):
            torch.mul(gi, gi, out=s)
        velocity = _ewma_update(ws, module.ewma_2, squares)
        den = squares
    else:
        velocity = ws.state(module.ewma_2, "state")
        torch._foreach_mul_(velocity, module.ewma_2.beta)
        torch._foreach_addcmul_(velocity, g, g, value=1 - module.ewma_2.beta)
        den = ws.scratch(g)
    step = module.steps + 1
    for d, v in zip(den, velocity, strict=True):
        torch.div(v, 1 - module.ewma_2.beta**step, out=d)
    if module.amsgrad:
        if module.vmax is None:
            ws.adopt(module, "vmax", [d.clone() for d in den])
        else:
            vmax = ws.state(module, "vmax")
            torch._foreach_maximum_(den, vmax)
            torch._foreach_copy_(vmax, den)
    torch._foreach_sqrt_(den)
    torch._foreach_add_(den, module.eps)
    module.steps = step
    return _Quotient(momentum, den, 1 - module.ewma_1.beta**step)


def _rmsprop(ws: _Workspace, module: RMSPropModule, grad: _Grad) -> _Grad:
    g = ws.dense(grad)
    velocity = ws.state(module.ewma, "state")
    torch._foreach_mul_(velocity, module.ewma.beta)
    torch._foreach_addcmul_(velocity, g, g, value=1 - module.ewma.beta)
    return _scaled_by_root(ws, g, velocity, module.eps)


def _adagrad(ws: _Workspace, module: AdaGradModule, grad: _Grad) -> _Grad:
    g = ws.dense(grad)
    total = ws.state(module, "state")
    torch._foreach_addcmul_(total, g, g)
    return _scaled_by_root(ws, g, total, module.eps)


def _scaled_by_root(ws: _Workspace, g: Tensors, state: Tensors, eps: float) -> _Quotient:
    """g / (state ** 0.5 + eps), left pending."""
    den = ws.scratch(g)
    for d, s in zip(den, state, strict=True):
        torch.sqrt(s, out=d)
    torch._foreach_add_(den, eps)
    return _Quotient(g, den, 1.0)


def _scaffold_client(ws: _Workspace, module: ScaffoldClientModule, grad: _Grad) -> _Grad:
    g = ws.dense(grad)
    total = ws.state(module, "_grads")
    torch._foreach_add_(total, g)
    module._steps += 1
    delta = module.delta
    if isinstance(delta, int | float):
        if delta == 0:
            return g
        out = g if ws.is_scratch(g) else ws.scratch(g)
        for o, gi in zip(out, g, strict=True):
            torch.sub(gi, delta, out=o)
        return out
    correction = ws.read(delta, "Scaffold correction")
    out = g if ws.is_scratch(g) else ws.scratch(g)
    for o, gi, c in zip(out, g, correction, strict=True):
        torch.sub(gi, c, out=o)
    return out


_RegularizerKernel = Callable[[_Workspace, Any, Tensors], Tensors]
_ModuleKernel = Callable[[_Workspace, Any, _Grad], _Grad]

# Exact types only: a subclass may override `run`, so it takes declearn's generic path.
_REGULARIZER_KERNELS: dict[type[Regularizer], _RegularizerKernel] = {
    FedProxRegularizer: _fedprox,
    LassoRegularizer: _lasso,
    RidgeRegularizer: _ridge,
}
_MODULE_KERNELS: dict[type[OptiModule[Any]], _ModuleKernel] = {
    AdaGradModule: _adagrad,
    AdamModule: _adam,
    EWMAModule: _ewma,
    MomentumModule: _momentum,
    RMSPropModule: _rmsprop,
    ScaffoldClientModule: _scaffold_client,
    YogiModule: _adam,
    YogiMomentumModule: _ewma,
}


def fused_plugin_names() -> list[str]:
    """Names of the declearn modules and regularizers that have a fused torch kernel."""
    return sorted(
        [cls.name for cls in _MODULE_KERNELS] + [cls.name for cls in _REGULARIZER_KERNELS]
    )


class FusedTorchStep:
    """Runs an `Optimizer`'s steps on torch parameters with fused in-place kernels.

    Build it with `for_optimizer`, which returns None when a plug-in has no kernel (the
    caller then uses declearn's generic path).
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self._optimizer = optimizer
        self._workspace = _Workspace()
        self._exports_seen = -1

    @classmethod
    def for_optimizer(cls, optimizer: Optimizer) -> FusedTorchStep | None:
        """A fused stepper for `optimizer`, or None if some plug-in needs the generic path."""
        declearn_opt = optimizer.declearn_optimizer
        plugins = [*declearn_opt.regularizers, *declearn_opt.modules]
        if any(type(p) not in _REGULARIZER_KERNELS | _MODULE_KERNELS for p in plugins):
            return None
        return cls(optimizer)

    @staticmethod
    def accepts(gradients: Mapping[str, torch.Tensor | None]) -> bool:
        """Whether these gradients suit the fused kernels (dense, strided tensors)."""
        return all(g is None or g.layout == torch.strided for g in gradients.values())

    def step(self, params: Mapping[str, torch.Tensor]) -> None:
        """Update `params` in place from their `.grad` (None counts as zeros)."""
        declearn_opt = self._optimizer.declearn_optimizer
        ws = self._workspace
        exports = self._optimizer.state_exports
        if exports != self._exports_seen:
            ws.release_state()  # states read out since the last step must stay snapshots
            self._exports_seen = exports
        with torch.no_grad():
            tensors = [p.detach() for p in params.values()]
            ws.bind(list(params), tensors)
            grad: _Grad = [
                torch.zeros_like(t) if p.grad is None else p.grad.detach()
                for p, t in zip(params.values(), tensors, strict=True)
            ]
            lrate, w_decay = float(declearn_opt.lrate), float(declearn_opt.w_decay)
            for regularizer in declearn_opt.regularizers:
                grad = _REGULARIZER_KERNELS[type(regularizer)](ws, regularizer, ws.dense(grad))
            for module in declearn_opt.modules:
                grad = _MODULE_KERNELS[type(module)](ws, module, grad)
            self._apply(ws, grad, lrate, w_decay)
        self._optimizer.advance_rates()

    @staticmethod
    def _apply(ws: _Workspace, grad: _Grad, lrate: float, w_decay: float) -> None:
        """weights -= lrate * grad + w_decay * weights (the weights before this step)."""
        if not w_decay:
            if isinstance(grad, _Quotient):
                torch._foreach_addcdiv_(ws.params, grad.num, grad.den, value=-lrate / grad.divisor)
            else:
                torch._foreach_add_(ws.params, grad, alpha=-lrate)
            return
        g = ws.dense(grad)
        updates = g if ws.is_scratch(g) else ws.scratch(g)
        for u, gi in zip(updates, g, strict=True):
            torch.mul(gi, lrate, out=u)
        torch._foreach_add_(updates, ws.params, alpha=w_decay)
        torch._foreach_sub_(ws.params, updates)
