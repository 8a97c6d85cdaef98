"""Optimizer state survives JSON + arrays persistence: resumed training equals uninterrupted."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from common.errors import ConfigurationError, PayloadError
from common.optimizers.adapters import NumpyTrainingOptimizer, make_torch_optimizer
from common.optimizers.declearn import AdamModule, ScaffoldClientModule
from common.optimizers.optimizer import Optimizer
from common.optimizers.state_codec import decode_state, encode_state


def _persisted(meta: dict, arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """What a node reads back: JSON-parsed metadata and read-only arrays."""
    stored = {}
    for name, array in arrays.items():
        copy = np.array(array, copy=True)
        copy.setflags(write=False)
        stored[name] = copy
    return json.loads(json.dumps(meta)), stored


def _torch_round(
    model: torch.nn.Module, adapter, data: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    adapter.init_round()
    for x, y in data:
        adapter.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        adapter.step()


def _data(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)) for _ in range(3)]


def _fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def _build_declearn() -> Optimizer:
    return Optimizer(
        lr=0.05, decay=0.01, modules=[AdamModule(amsgrad=True), "momentum"], regularizers=["ridge"]
    )


def _build_native(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.05)


@pytest.mark.parametrize("kind", ["declearn", "native"])
def test_torch_training_resumed_from_saved_state_equals_uninterrupted(kind: str) -> None:
    build = (lambda m: _build_declearn()) if kind == "declearn" else _build_native
    reference = _fresh_model()
    continuous = make_torch_optimizer(reference, build(reference))
    for seed in range(3):
        _torch_round(reference, continuous, _data(seed))

    model = _fresh_model()
    saved = None
    for seed in range(3):
        adapter = make_torch_optimizer(model, build(model))  # rebuilt each round, like a node
        if saved is not None:
            adapter.import_state(*_persisted(*saved))
        _torch_round(model, adapter, _data(seed))
        saved = adapter.export_state()

    for (name, expected), actual in zip(
        reference.state_dict().items(), model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7, msg=name)


def test_numpy_training_resumed_from_saved_state_equals_uninterrupted() -> None:
    rng = np.random.default_rng(0)
    grads = [{"coef": rng.normal(size=(3,)), "bias": rng.normal(size=(1,))} for _ in range(6)]

    def run(resume: bool) -> dict[str, np.ndarray]:
        store = {"w": {"coef": np.zeros(3), "bias": np.zeros(1)}}
        saved = None
        adapter = None
        for round_grads in (grads[:3], grads[3:]):
            if adapter is None or resume:
                adapter = NumpyTrainingOptimizer(
                    lambda: store["w"], lambda w: store.__setitem__("w", w), _build_declearn()
                )
                if saved is not None:
                    adapter.import_state(*_persisted(*saved))
            adapter.init_round()
            for g in round_grads:
                adapter.step_with_gradients(g)
            saved = adapter.export_state()
        return store["w"]

    resumed, continuous = run(resume=True), run(resume=False)
    for key in continuous:
        np.testing.assert_allclose(resumed[key], continuous[key], rtol=1e-12)


def test_scaffold_client_keeps_its_identity_and_state_across_rebuilds() -> None:
    model = _fresh_model()
    first = make_torch_optimizer(model, Optimizer(lr=0.1, modules=[ScaffoldClientModule()]))
    _torch_round(model, first, _data(0))
    aux = first.collect_aux_var()
    meta, arrays = first.export_state()
    second = make_torch_optimizer(model, Optimizer(lr=0.1, modules=[ScaffoldClientModule()]))
    second.import_state(*_persisted(meta, arrays))
    module = second.optimizer.declearn_optimizer.modules[0]
    assert module.uuid in aux["scaffold"].clients
    original = first.optimizer.declearn_optimizer.modules[0].state
    for key, tensor in original.coefs.items():
        torch.testing.assert_close(module.state.coefs[key], tensor)


def test_state_saved_for_other_modules_is_refused_with_a_fix() -> None:
    meta, arrays = Optimizer(lr=0.1, modules=["adam"]).export_state()
    with pytest.raises(ConfigurationError, match="discard the saved state"):
        Optimizer(lr=0.1, modules=["momentum"]).import_state(meta, arrays, vector_kind="numpy")


def test_native_and_declearn_states_are_not_mixed_up() -> None:
    model = _fresh_model()
    native = make_torch_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    declearn = make_torch_optimizer(model, Optimizer(lr=0.1))
    with pytest.raises(ConfigurationError, match="native torch optimizer"):
        declearn.import_state(*native.export_state())
    with pytest.raises(ConfigurationError, match="discard"):
        native.import_state(*declearn.export_state())
    adam = make_torch_optimizer(model, torch.optim.Adam(model.parameters()))
    with pytest.raises(ConfigurationError, match="SGD"):
        adam.import_state(*native.export_state())


def test_missing_state_array_is_a_payload_error() -> None:
    optimizer = Optimizer(lr=0.1, modules=["adam"])
    optimizer.step_numpy({"w": np.ones(2)}, {"w": np.ones(2)})
    meta, arrays = optimizer.export_state()
    assert arrays
    with pytest.raises(PayloadError, match="not saved"):
        Optimizer(lr=0.1, modules=["adam"]).import_state(meta, {}, vector_kind="numpy")


def test_state_codec_round_trips_odd_structures() -> None:
    state = {
        "tuple": (1, "a", None),
        "set": {"x", "y"},
        "int_keys": {0: {"step": torch.tensor(3.0)}, 1: {}},
        "__reserved": [np.arange(3, dtype=np.int32), 2.5, True],
    }
    tree, arrays = encode_state(state, prefix="s")
    json.dumps(tree)
    assert set(arrays) == {"s/0", "s/1"}
    decoded = decode_state(json.loads(json.dumps(tree)), arrays)
    assert decoded["tuple"] == (1, "a", None)
    assert decoded["set"] == {"x", "y"}
    assert set(decoded["int_keys"]) == {0, 1}
    torch.testing.assert_close(decoded["int_keys"][0]["step"], torch.tensor(3.0))
    np.testing.assert_array_equal(decoded["__reserved"][0], np.arange(3, dtype=np.int32))
    assert decoded["__reserved"][0].dtype == np.int32
    assert decoded["__reserved"][1:] == [2.5, True]


def test_state_codec_refuses_objects_it_cannot_persist() -> None:
    with pytest.raises(PayloadError, match="cannot persist a object"):
        encode_state({"x": object()})
