"""Building an Optimizer from instances, names and specs; describing it back; clear errors."""

from __future__ import annotations

import json

import pytest

from common.errors import ConfigurationError
from common.optimizers import Optimizer as PackageOptimizer
from common.optimizers import list_optim_modules as package_list_modules
from common.optimizers.declearn import (
    AdamModule,
    FedProxRegularizer,
    MomentumModule,
    OptiModule,
    Regularizer,
    RidgeRegularizer,
    ScaffoldClientModule,
    ScaffoldServerModule,
    list_optim_modules,
    list_optim_regularizers,
)
from common.optimizers.optimizer import Optimizer


def test_package_and_module_export_the_same_optimizer() -> None:
    assert PackageOptimizer is Optimizer
    assert package_list_modules is list_optim_modules


def test_list_functions_map_names_to_plugin_classes() -> None:
    modules, regularizers = list_optim_modules(), list_optim_regularizers()
    assert {"adam", "adagrad", "rmsprop", "momentum", "yogi", "scaffold-client"} <= set(modules)
    assert set(regularizers) == {"fedprox", "lasso", "ridge"}
    assert all(issubclass(cls, OptiModule) and cls.name == n for n, cls in modules.items())
    assert all(issubclass(cls, Regularizer) and cls.name == n for n, cls in regularizers.items())


@pytest.mark.parametrize(
    "modules",
    [
        [AdamModule(beta_1=0.8), MomentumModule()],
        [("adam", {"beta_1": 0.8}), "momentum"],
        [["adam", {"beta_1": 0.8}], {"name": "momentum"}],
        [{"name": "adam", "config": {"beta_1": 0.8}}, MomentumModule],
    ],
    ids=["instances", "tuples-and-names", "lists-and-dicts", "dicts-and-classes"],
)
def test_modules_build_from_every_spec_form(modules: list) -> None:
    optimizer = Optimizer(lr=0.1, modules=modules)
    assert optimizer.module_names == ["adam", "momentum"]
    assert optimizer.to_spec()["modules"][0] == [
        "adam",
        {"beta_1": 0.8, "beta_2": 0.99, "amsgrad": False, "eps": 1e-7, "round_reset": False},
    ]


def test_regularizer_class_without_parentheses_is_instantiated() -> None:
    optimizer = Optimizer(lr=0.1, regularizers=[FedProxRegularizer])
    assert optimizer.regularizer_names == ["fedprox"]


def test_unknown_module_name_lists_known_names() -> None:
    with pytest.raises(ConfigurationError, match="unknown entry 'adamw' in modules") as info:
        Optimizer(lr=0.1, modules=["adamw"])
    assert "adam" in str(info.value) and "momentum" in str(info.value)


def test_regularizer_given_as_module_names_the_right_argument() -> None:
    with pytest.raises(ConfigurationError, match="regularizers"):
        Optimizer(lr=0.1, modules=["ridge"])
    with pytest.raises(ConfigurationError, match="pass it in regularizers"):
        Optimizer(lr=0.1, modules=[RidgeRegularizer()])
    with pytest.raises(ConfigurationError, match="pass it in modules"):
        Optimizer(lr=0.1, regularizers=[AdamModule])


def test_bad_module_config_names_the_parameters() -> None:
    with pytest.raises(ConfigurationError, match="beta_1") as info:
        Optimizer(lr=0.1, modules=[("adam", {"beta": 0.9})])
    assert "AdamModule" in str(info.value)


def test_modules_given_as_a_single_string_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be a list"):
        Optimizer(lr=0.1, modules="adam")


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf"), True, "0.1", [0.1]])
def test_invalid_learning_rates_are_refused(lr: object) -> None:
    with pytest.raises(ConfigurationError, match="lr"):
        Optimizer(lr=lr)


def test_integer_learning_rate_is_accepted() -> None:
    assert Optimizer(lr=1).lr == 1.0


def test_unknown_scheduler_lists_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="exponential-decay"):
        Optimizer(lr=("step-decay", {"base": 0.1}))
    with pytest.raises(ConfigurationError, match="invalid config"):
        Optimizer(lr=("exponential-decay", {"base": 0.1}))


def test_two_modules_sharing_an_aux_var_name_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="scaffold"):
        Optimizer(lr=0.1, modules=[ScaffoldClientModule(), ScaffoldServerModule()])


def test_aux_var_properties_describe_scaffold_modules() -> None:
    client = Optimizer(lr=0.1, modules=[MomentumModule(), ScaffoldClientModule()])
    assert client.uses_aux_vars and client.aux_var_names == ["scaffold"]
    assert client.aux_var_modules() == {"scaffold": "scaffold-client"}
    assert not Optimizer(lr=0.1, modules=["adam"]).uses_aux_vars


@pytest.mark.parametrize("name", sorted(list_optim_modules()))
def test_spec_round_trips_through_json_for_every_module(name: str) -> None:
    optimizer = Optimizer(lr=0.1, decay=0.01, modules=[name], regularizers=["fedprox", "ridge"])
    spec = json.loads(json.dumps(optimizer.to_spec()))
    assert Optimizer.from_spec(spec).to_spec() == optimizer.to_spec()


def test_spec_keeps_round_reset_which_declearn_config_omits() -> None:
    optimizer = Optimizer(
        lr=0.1, modules=[AdamModule(round_reset=True), ("rmsprop", {"round_reset": True})]
    )
    rebuilt = Optimizer.from_spec(optimizer.to_spec())
    adam, rmsprop = rebuilt.declearn_optimizer.modules
    assert adam.round_reset is True
    assert rmsprop.ewma.round_reset is True


def test_spec_with_scheduler_round_trips() -> None:
    optimizer = Optimizer(
        lr=("warmup", {"base": ("exponential-decay", {"base": 0.1, "rate": 0.9}), "warmup": 5})
    )
    spec = json.loads(json.dumps(optimizer.to_spec()))
    assert spec["lr"][0] == "warmup"
    assert Optimizer.from_spec(spec).to_spec() == spec


def test_from_spec_refuses_unknown_keys_and_missing_lr() -> None:
    with pytest.raises(ConfigurationError, match="learning_rate"):
        Optimizer.from_spec({"lr": 0.1, "learning_rate": 0.1})
    with pytest.raises(ConfigurationError, match="needs 'lr'"):
        Optimizer.from_spec({"modules": ["adam"]})


def test_toml_style_spec_builds_an_optimizer() -> None:
    spec = {
        "lr": {"name": "exponential-decay", "config": {"base": 0.1, "rate": 0.99}},
        "modules": [{"name": "yogi", "config": {"beta_1": 0.85}}],
        "regularizers": ["lasso"],
    }
    optimizer = Optimizer.from_spec(spec)
    assert optimizer.module_names == ["yogi"] and optimizer.regularizer_names == ["lasso"]
    assert optimizer.to_spec()["lr"] == [
        "exponential-decay",
        {"base": 0.1, "rate": 0.99, "step_level": True},
    ]
