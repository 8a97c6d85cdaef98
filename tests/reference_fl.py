"""Plain numpy references for the federated algorithms of the seed page's table.

No fedloom and no declearn here: each algorithm is written out from its paper, with the
conventions declearn documents where a paper leaves a choice (noted per class), so a
federation's global parameters can be checked against an independent computation.

A federation is replayed round by round with `run_federation`: every participating node
starts from the global parameters, runs `local_steps` full-batch steps of its local
optimizer, and the sample-weighted mean of the local models (FedAverage) goes through the
server optimizer, which steps on the pseudo-gradient `global - mean`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AdaGradState",
    "AdamState",
    "LinearRegression",
    "LocalAdaGrad",
    "LocalAdam",
    "LocalFedProx",
    "LocalOptimizer",
    "LocalSGD",
    "LocalScaffold",
    "NoServerOptimizer",
    "NodeData",
    "ServerAdaGrad",
    "ServerAdam",
    "ServerOptimizer",
    "ServerSGD",
    "ServerScaffold",
    "ServerYogi",
    "YogiState",
    "run_federation",
    "weighted_mean",
]

Params = dict[str, np.ndarray]
GradientFn = Callable[[Params, np.ndarray, np.ndarray], Params]


@dataclass(frozen=True)
class NodeData:
    """One node's training set, as its training plan sees it (same dtype, same rounding)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class LinearRegression:
    """Gradients of `0.5 * mean((x w + b - y)^2) + ridge/2 * |w|^2` (ridge: no penalty on b).

    `weight` and `bias` name the parameters; the weight may be stored as (features,) or
    (1, features) (torch's Linear), gradients come back in the stored shape.
    """

    weight: str = "weight"
    bias: str = "bias"
    ridge: float = 0.0

    def gradients(self, params: Params, x: np.ndarray, y: np.ndarray) -> Params:
        w = params[self.weight]
        residual = x @ w.reshape(-1) + params[self.bias][0] - y
        grad_w = x.T @ residual / len(x) + self.ridge * w.reshape(-1)
        return {
            self.weight: grad_w.reshape(w.shape),
            self.bias: np.array([residual.mean()]),
        }


def weighted_mean(models: Sequence[Params], weights: Sequence[float]) -> Params:
    """FedAverage: the mean of `models` weighted by `weights` (sample counts)."""
    total = float(sum(weights))
    return {
        name: sum(w * model[name] for model, w in zip(models, weights, strict=True)) / total
        for name in models[0]
    }


def _copy(params: Mapping[str, np.ndarray]) -> Params:
    return {name: np.array(value, dtype=np.float64) for name, value in params.items()}


# ------------------------------------------------------------------- node side


class LocalOptimizer:
    """One node's optimizer; its attributes persist from round to round (as on a real node)."""

    def start_round(self, global_params: Params, server_message: Params | None) -> None:
        """Called before the round's first step with the global model and the server's message."""

    def step(self, params: Params, grads: Params) -> Params:
        raise NotImplementedError

    def end_round(self, global_params: Params, local_params: Params, steps: int) -> Params | None:
        """Called after the last step; returns what goes back to the server (or None)."""
        return None


@dataclass
class LocalSGD(LocalOptimizer):
    """w <- w - lr * g."""

    lr: float

    def step(self, params: Params, grads: Params) -> Params:
        return {k: params[k] - self.lr * grads[k] for k in params}


@dataclass
class AdaGradState:
    """AdaGrad's accumulator of squared gradients, starting at zero (Duchi et al., 2011)."""

    eps: float
    accumulator: Params = field(default_factory=dict)

    def direction(self, grads: Params) -> Params:
        """Accumulate g^2 and return g / (sqrt(accumulator) + eps) (eps outside the root)."""
        out = {}
        for k, g in grads.items():
            self.accumulator[k] = self.accumulator.get(k, np.zeros_like(g)) + g**2
            out[k] = g / (np.sqrt(self.accumulator[k]) + self.eps)
        return out


@dataclass
class AdamState:
    """Adam's moments (Kingma & Ba, 2015), from zero, bias-corrected, eps outside the root.

    The step count t, which the bias correction uses, counts every step since the start.
    """

    beta_1: float
    beta_2: float
    eps: float
    m: Params = field(default_factory=dict)
    v: Params = field(default_factory=dict)
    t: int = 0

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1.0 - self.beta_2) * g2

    def direction(self, grads: Params) -> Params:
        """Update the moments with `grads`; return m_hat / (sqrt(v_hat) + eps)."""
        self.t += 1
        out = {}
        for k, g in grads.items():
            zero = np.zeros_like(g)
            self.m[k] = self.beta_1 * self.m.get(k, zero) + (1.0 - self.beta_1) * g
            self.v[k] = self.second_moment(self.v.get(k, zero), g**2)
            m_hat = self.m[k] / (1.0 - self.beta_1**self.t)
            v_hat = self.v[k] / (1.0 - self.beta_2**self.t)
            out[k] = m_hat / (np.sqrt(v_hat) + self.eps)
        return out


@dataclass
class YogiState(AdamState):
    """Yogi (Zaheer et al., 2018): Adam whose second moment moves additively.

    v <- v - (1 - beta_2) * sign(v - g^2) * g^2, from v = 0, with Adam's bias correction
    and eps outside the root (declearn's YogiModule conventions).
    """

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta_2) * np.sign(v - g2) * g2


@dataclass
class LocalAdaGrad(LocalOptimizer):
    """AdaGrad on the node (AdaAlter's local step); the accumulator survives between rounds."""

    lr: float
    eps: float
    state: AdaGradState = field(init=False)

    def __post_init__(self) -> None:
        self.state = AdaGradState(self.eps)

    def step(self, params: Params, grads: Params) -> Params:
        direction = self.state.direction(grads)
        return {k: params[k] - self.lr * direction[k] for k in params}


@dataclass
class LocalAdam(LocalOptimizer):
    """Adam on the node (e.g. torch.optim.Adam); moments and step count survive between rounds.

    With `round_reset`, they restart from zero every round instead.
    """

    lr: float
    beta_1: float
    beta_2: float
    eps: float
    round_reset: bool = False
    state: AdamState = field(init=False)

    def __post_init__(self) -> None:
        self.state = AdamState(self.beta_1, self.beta_2, self.eps)

    def start_round(self, global_params: Params, server_message: Params | None) -> None:
        if self.round_reset:
            self.state = AdamState(self.beta_1, self.beta_2, self.eps)

    def step(self, params: Params, grads: Params) -> Params:
        direction = self.state.direction(grads)
        return {k: params[k] - self.lr * direction[k] for k in params}


@dataclass
class LocalFedProx(LocalOptimizer):
    """SGD on f + mu/2 |w - w_global|^2 (Li et al., 2020), anchored at the round's global model."""

    lr: float
    mu: float
    anchor: Params = field(default_factory=dict)

    def start_round(self, global_params: Params, server_message: Params | None) -> None:
        self.anchor = _copy(global_params)

    def step(self, params: Params, grads: Params) -> Params:
        return {
            k: params[k] - self.lr * (grads[k] + self.mu * (params[k] - self.anchor[k]))
            for k in params
        }


@dataclass
class LocalScaffold(LocalOptimizer):
    """SCAFFOLD's client (Karimireddy et al., 2020), "option II" control-variate update.

    Steps use g - c_i + c. At the end of a round, c_i+ = c_i - c + (x - y_i) / (K lr) with
    x the global model and y_i the local model after K steps; the node sends c_i+ - c_i.
    c_i starts at zero and persists on the node, also through rounds it sits out.
    """

    lr: float
    control: Params | None = None  # c_i
    server_control: Params | None = None  # c, as last received

    def start_round(self, global_params: Params, server_message: Params | None) -> None:
        zeros = {k: np.zeros_like(v, dtype=np.float64) for k, v in global_params.items()}
        if self.control is None:
            self.control = zeros
        self.server_control = zeros if server_message is None else _copy(server_message)

    def step(self, params: Params, grads: Params) -> Params:
        assert self.control is not None and self.server_control is not None
        return {
            k: params[k] - self.lr * (grads[k] - self.control[k] + self.server_control[k])
            for k in params
        }

    def end_round(self, global_params: Params, local_params: Params, steps: int) -> Params:
        assert self.control is not None and self.server_control is not None
        new_control = {
            k: self.control[k]
            - self.server_control[k]
            + (global_params[k] - local_params[k]) / (steps * self.lr)
            for k in global_params
        }
        delta = {k: new_control[k] - self.control[k] for k in new_control}
        self.control = new_control
        return delta


# ----------------------------------------------------------------- server side


class ServerOptimizer:
    """The researcher's optimizer: new global = global - lr * direction(global - aggregate)."""

    def message(self) -> Params | None:
        """What every node receives with its next train request (None: nothing)."""
        return None

    def receive(self, node_messages: Mapping[str, Params]) -> None:
        """The participating nodes' `end_round` outputs by node, before this round's step."""

    def step(self, global_params: Params, aggregate: Params) -> Params:
        raise NotImplementedError


class NoServerOptimizer(ServerOptimizer):
    """FedAvg: the aggregate becomes the global model."""

    def step(self, global_params: Params, aggregate: Params) -> Params:
        return _copy(aggregate)


@dataclass
class ServerSGD(ServerOptimizer):
    """A server learning rate on the pseudo-gradient (lr=1 gives FedAvg)."""

    lr: float

    def step(self, global_params: Params, aggregate: Params) -> Params:
        return {
            k: global_params[k] - self.lr * (global_params[k] - aggregate[k]) for k in aggregate
        }


@dataclass
class ServerAdaGrad(ServerOptimizer):
    """FedAdagrad (Reddi et al., 2021) with a zero initial accumulator and eps outside the root."""

    lr: float
    eps: float
    state: AdaGradState = field(init=False)

    def __post_init__(self) -> None:
        self.state = AdaGradState(self.eps)

    def step(self, global_params: Params, aggregate: Params) -> Params:
        pseudo = {k: global_params[k] - aggregate[k] for k in aggregate}
        direction = self.state.direction(pseudo)
        return {k: global_params[k] - self.lr * direction[k] for k in aggregate}


@dataclass
class ServerAdam(ServerOptimizer):
    """FedAdam: Adam on the pseudo-gradient, one step per round, its state kept across rounds."""

    lr: float
    beta_1: float
    beta_2: float
    eps: float
    state: AdamState = field(init=False)

    def __post_init__(self) -> None:
        self.state = AdamState(self.beta_1, self.beta_2, self.eps)

    def step(self, global_params: Params, aggregate: Params) -> Params:
        pseudo = {k: global_params[k] - aggregate[k] for k in aggregate}
        direction = self.state.direction(pseudo)
        return {k: global_params[k] - self.lr * direction[k] for k in aggregate}


@dataclass
class ServerYogi(ServerAdam):
    """FedYogi: FedAdam with Yogi's additive second moment."""

    def __post_init__(self) -> None:
        self.state = YogiState(self.beta_1, self.beta_2, self.eps)


@dataclass
class ServerScaffold(ServerSGD):
    """SCAFFOLD's server: keeps the sum of the nodes' controls, sends their mean over known nodes.

    The global control c is the mean of the latest c_i of every node seen so far; a node
    that skips a round keeps counting with its last c_i (declearn's ScaffoldServerModule
    rule, equal to the paper's c += |S|/N mean(dc) once every node has taken part).
    """

    control_sum: Params | None = None
    known_nodes: set[str] = field(default_factory=set)

    def message(self) -> Params | None:
        if self.control_sum is None:
            return None
        return {k: v / len(self.known_nodes) for k, v in self.control_sum.items()}

    def receive(self, node_messages: Mapping[str, Params]) -> None:
        for delta in node_messages.values():
            if self.control_sum is None:
                self.control_sum = {k: np.zeros_like(v) for k, v in delta.items()}
            self.control_sum = {k: self.control_sum[k] + delta[k] for k in delta}
        self.known_nodes.update(node_messages)


# ------------------------------------------------------------------ a federation


def run_federation(
    nodes: Mapping[str, NodeData],
    start: Mapping[str, np.ndarray],
    *,
    rounds: int,
    local_steps: int,
    gradient: GradientFn,
    make_local: Callable[[], LocalOptimizer],
    server: ServerOptimizer,
    participants: Callable[[int], Sequence[str]] | None = None,
) -> list[Params]:
    """Global parameters after each round (float64).

    `participants(round_number)` names the nodes training that round (default: all). Each
    node keeps its own local optimizer from `make_local()` for the whole federation.
    """
    optimizers = {name: make_local() for name in nodes}
    global_params = _copy(start)
    history = []
    for round_number in range(1, rounds + 1):
        selected = list(participants(round_number)) if participants else list(nodes)
        message = server.message()
        local_models, weights = [], []
        node_messages: dict[str, Params] = {}
        for name in selected:
            data, optimizer = nodes[name], optimizers[name]
            optimizer.start_round(global_params, message)
            params = _copy(global_params)
            for _ in range(local_steps):
                params = optimizer.step(params, gradient(params, data.x, data.y))
            reply = optimizer.end_round(global_params, params, local_steps)
            local_models.append(params)
            weights.append(len(data))
            if reply is not None:
                node_messages[name] = reply
        server.receive(node_messages)
        global_params = server.step(global_params, weighted_mean(local_models, weights))
        history.append(global_params)
    return history
