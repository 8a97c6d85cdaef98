"""FedSGDClassifier / FedSGDRegressor: local training equals plain-numpy references."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier

from common.data import DataManager
from common.errors import ConfigurationError, DatasetError, PlanError
from common.optimizers.declearn import AdamModule, ScaffoldClientModule
from common.optimizers.optimizer import Optimizer
from common.training_args import TrainingArgs
from common.training_plans import FedSGDClassifier, FedSGDRegressor
from common.training_plans.sklearn_plans import DEFAULT_LR
from common.training_plans.source import plan_source

#: Adam hyperparameters spelled out so the reference does not depend on declearn's defaults.
BETA_1, BETA_2, EPS = 0.9, 0.99, 1e-7


class _DefaultOptimizerClassifier(FedSGDClassifier):
    def training_data(self):
        raise AssertionError("not used")


def _binary_data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.3 * rng.normal(size=n) > 0).astype(int)
    return x, y


def _regression_data(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, x @ np.array([0.7, -1.2, 2.0]) + 0.5 + 0.1 * rng.normal(size=n)


def _plan(
    base: type,
    optimizer: Optimizer,
    model_args: dict[str, Any],
    data: tuple[np.ndarray, np.ndarray] | None = None,
    **training_args: Any,
) -> Any:
    """A `base` plan training with `optimizer` on `data`, after post_init."""

    class Plan(base):  # type: ignore[misc, valid-type]
        def init_optimizer(self) -> Optimizer:
            return optimizer

        def training_data(self) -> DataManager:
            assert data is not None
            return DataManager(dataset=data[0], target=data[1])

    plan = Plan()
    plan.post_init(model_args, TrainingArgs(**training_args))
    return plan


def _train(plan: Any, x: np.ndarray, y: np.ndarray) -> Any:
    optimizer = plan.training_optimizer()
    result = plan.train_round(DataManager(dataset=x, target=y), optimizer)
    return optimizer, result


# ---------------------------------------------------------------- numpy references


def _log_loss_grads(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of mean(log(1 + exp(-s z))) + alpha/2 |w|^2 with s = +-1, z = x w + b."""
    z = x @ w[0] + b[0]
    residual = 1.0 / (1.0 + np.exp(-z)) - y
    return (residual @ x / len(x) + alpha * w[0])[None, :], np.array([residual.mean()])


def _squared_grads(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of mean((x w + b - y)^2 / 2) + alpha/2 |w|^2."""
    residual = x @ w + b[0] - y
    return residual @ x / len(x) + alpha * w, np.array([residual.mean()])


def _reference_sgd(grads_fn, w, b, batches, lr: float, alpha: float):
    for x, y in batches:
        gw, gb = grads_fn(w, b, x, y, alpha)
        w, b = w - lr * gw, b - lr * gb
    return w, b


def _reference_adam(grads_fn, w, b, batches, lr: float, alpha: float):
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    params = [w, b]
    for t, (x, y) in enumerate(batches, start=1):
        grads = grads_fn(params[0], params[1], x, y, alpha)
        for i, g in enumerate(grads):
            m[i] = BETA_1 * m[i] + (1 - BETA_1) * g
            v[i] = BETA_2 * v[i] + (1 - BETA_2) * g**2
            m_hat, v_hat = m[i] / (1 - BETA_1**t), v[i] / (1 - BETA_2**t)
            params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + EPS)
    return params[0], params[1]


def _adam() -> Optimizer:
    return Optimizer(lr=0.05, modules=[AdamModule(beta_1=BETA_1, beta_2=BETA_2, eps=EPS)])


# ------------------------------------------------------------------------ training


def test_one_full_batch_sgd_step_matches_numpy_log_loss_gradient() -> None:
    x, y = _binary_data()
    args = {"n_features": 3, "n_classes": 2, "loss": "log_loss", "alpha": 0.01}
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.3), args, num_updates=1, batch_size=100)
    start = {"coef": np.array([[0.2, -0.1, 0.4]]), "intercept": np.array([0.05])}
    plan.set_parameters(start)
    _, result = _train(plan, x, y)
    w, b = _reference_sgd(
        _log_loss_grads, start["coef"], start["intercept"], [(x, y)], lr=0.3, alpha=0.01
    )
    got = plan.get_parameters()
    np.testing.assert_allclose(got["coef"], w, rtol=1e-12)
    np.testing.assert_allclose(got["intercept"], b, rtol=1e-12)
    assert result.n_steps == 1 and result.n_samples == 40
    z = x @ start["coef"][0] + start["intercept"][0]
    assert result.losses[0] == pytest.approx(np.mean(np.logaddexp(0, z) - y * z))


def test_sgd_over_minibatches_and_epochs_matches_numpy_reference() -> None:
    x, y = _binary_data(n=25)
    args = {"n_features": 3, "loss": "log_loss", "alpha": 0.001}
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.2), args, num_updates=7, batch_size=10)
    _train(plan, x, y)
    # Batches of 10, 10, 5 in order (no shuffling), cycling over the data for 7 updates.
    order = [(0, 10), (10, 20), (20, 25)] * 3
    batches = [(x[a:b], y[a:b]) for a, b in order[:7]]
    w, b = _reference_sgd(
        _log_loss_grads, np.zeros((1, 3)), np.zeros(1), batches, lr=0.2, alpha=0.001
    )
    np.testing.assert_allclose(plan.get_parameters()["coef"], w, rtol=1e-10)
    np.testing.assert_allclose(plan.get_parameters()["intercept"], b, rtol=1e-10)


def test_epochs_run_every_batch_of_every_epoch() -> None:
    x, y = _binary_data(n=25)
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.2), {"n_features": 3}, epochs=2, batch_size=10)
    _, result = _train(plan, x, y)
    assert result.n_steps == 6


def test_log_interval_logs_the_loss_every_that_many_steps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x, y = _binary_data(n=25)
    plan = _plan(
        FedSGDClassifier, Optimizer(lr=0.2), {"n_features": 3}, num_updates=7, log_interval=3
    )
    caplog.set_level(logging.INFO, logger="common.training_plans.base")
    _, result = _train(plan, x, y)
    logged = [r.getMessage() for r in caplog.records if "training loss" in r.getMessage()]
    assert logged == [
        f"local step {step}: training loss {result.losses[step - 1]:.6g}" for step in (3, 6)
    ]


def test_log_interval_zero_logs_no_step_and_a_negative_one_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x, y = _binary_data(n=25)
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.2), {"n_features": 3}, log_interval=0)
    caplog.set_level(logging.INFO, logger="common.training_plans.base")
    _train(plan, x, y)
    assert not [r for r in caplog.records if "training loss" in r.getMessage()]
    with pytest.raises(ConfigurationError, match="log_interval"):
        TrainingArgs(log_interval=-1)


def test_adam_steps_match_numpy_reference_on_log_loss() -> None:
    x, y = _binary_data()
    args = {"n_features": 3, "loss": "log_loss", "penalty": None}
    plan = _plan(FedSGDClassifier, _adam(), args, num_updates=4, batch_size=40)
    _train(plan, x, y)
    w, b = _reference_adam(
        _log_loss_grads, np.zeros((1, 3)), np.zeros(1), [(x, y)] * 4, lr=0.05, alpha=0.0
    )
    np.testing.assert_allclose(plan.get_parameters()["coef"], w, rtol=1e-10)
    np.testing.assert_allclose(plan.get_parameters()["intercept"], b, rtol=1e-10)


def test_regressor_sgd_and_adam_match_numpy_squared_error_reference() -> None:
    x, y = _regression_data()
    args = {"n_features": 3, "alpha": 0.01}
    batches = [(x[:20], y[:20]), (x[20:], y[20:])] * 2
    sgd = _plan(FedSGDRegressor, Optimizer(lr=0.1), args, num_updates=4, batch_size=20)
    _train(sgd, x, y)
    w, b = _reference_sgd(_squared_grads, np.zeros(3), np.zeros(1), batches, lr=0.1, alpha=0.01)
    np.testing.assert_allclose(sgd.get_parameters()["coef"], w, rtol=1e-10)
    np.testing.assert_allclose(sgd.get_parameters()["intercept"], b, rtol=1e-10)

    adam = _plan(FedSGDRegressor, _adam(), args, num_updates=4, batch_size=20)
    _train(adam, x, y)
    w, b = _reference_adam(_squared_grads, np.zeros(3), np.zeros(1), batches, lr=0.05, alpha=0.01)
    np.testing.assert_allclose(adam.get_parameters()["coef"], w, rtol=1e-10)
    np.testing.assert_allclose(adam.get_parameters()["intercept"], b, rtol=1e-10)


def test_adam_state_exported_and_imported_into_a_fresh_plan_continues_like_one_run() -> None:
    x, y = _regression_data()
    args = {"n_features": 3, "penalty": None}
    first = _plan(FedSGDRegressor, _adam(), args, num_updates=3, batch_size=40)
    optimizer, _ = _train(first, x, y)
    meta, arrays = optimizer.export_state()

    second = _plan(FedSGDRegressor, _adam(), args, num_updates=3, batch_size=40)
    second.set_parameters(first.get_parameters())
    resumed = second.training_optimizer()
    resumed.import_state(meta, arrays)
    second.train_round(DataManager(dataset=x, target=y), resumed)

    w, b = _reference_adam(
        _squared_grads, np.zeros(3), np.zeros(1), [(x, y)] * 6, lr=0.05, alpha=0.0
    )
    np.testing.assert_allclose(second.get_parameters()["coef"], w, rtol=1e-10)
    np.testing.assert_allclose(second.get_parameters()["intercept"], b, rtol=1e-10)


def test_l1_and_elasticnet_penalties_add_alpha_times_their_subgradient() -> None:
    x, y = _regression_data()
    start = {"coef": np.array([0.5, -0.25, 0.0]), "intercept": np.array([0.1])}
    for penalty, l1_ratio, expected_penalty in [
        ("l1", 0.15, np.sign(start["coef"])),
        ("elasticnet", 0.3, 0.3 * np.sign(start["coef"]) + 0.7 * start["coef"]),
    ]:
        args = {"n_features": 3, "penalty": penalty, "l1_ratio": l1_ratio, "alpha": 0.2}
        plan = _plan(FedSGDRegressor, Optimizer(lr=1.0), args, num_updates=1, batch_size=40)
        plan.set_parameters(start)
        grads, _ = plan._gradients(x, y)
        gw, gb = _squared_grads(start["coef"], start["intercept"], x, y, alpha=0.0)
        np.testing.assert_allclose(grads["coef"], gw + 0.2 * expected_penalty, rtol=1e-12)
        np.testing.assert_allclose(grads["intercept"], gb, rtol=1e-12)


_CLASSIFIER_LOSSES = [
    "hinge",
    "perceptron",
    "squared_hinge",
    "log_loss",
    "modified_huber",
    "squared_error",
    "huber",
    "epsilon_insensitive",
    "squared_epsilon_insensitive",
]
_REGRESSOR_LOSSES = ["squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"]


@pytest.mark.parametrize("from_zero", [False, True], ids=["random_start", "zero_start"])
@pytest.mark.parametrize(
    ("plan_class", "loss", "n_classes"),
    [(FedSGDClassifier, loss, n) for loss in _CLASSIFIER_LOSSES for n in (2, 3)]
    + [(FedSGDRegressor, loss, None) for loss in _REGRESSOR_LOSSES],
)
def test_gradient_equals_scikit_learn_own_single_sample_sgd_update(
    plan_class: type, loss: str, n_classes: int | None, from_zero: bool
) -> None:
    # With eta0=1 and a constant rate, one partial_fit on one sample moves the weights by
    # minus the gradient of scikit-learn's objective (loss + alpha/2 |w|^2) at that sample.
    # Zero weights put margin losses exactly on their kinks (perceptron: z = 0).
    rng = np.random.default_rng(7)
    args: dict[str, Any] = {"n_features": 4, "loss": loss, "alpha": 0.05, "epsilon": 0.3}
    if n_classes:
        args["n_classes"] = n_classes
    plan = _plan(plan_class, Optimizer(lr=1.0), args)
    shapes = {k: v.shape for k, v in plan.get_parameters().items()}
    start = {k: rng.normal(size=shape) * (not from_zero) for k, shape in shapes.items()}
    x = rng.normal(size=(1, 4))
    y = np.array([1]) if n_classes else rng.normal(size=1)
    plan.set_parameters(start)
    grads, _ = plan._gradients(x, y)

    estimator = type(plan.model())(
        loss=loss, alpha=0.05, epsilon=0.3, learning_rate="constant", eta0=1.0
    )
    estimator.coef_, estimator.intercept_ = start["coef"].copy(), start["intercept"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partial_fit warns that one epoch did not converge
        if n_classes:
            estimator.partial_fit(x, y, classes=np.arange(n_classes))
        else:
            estimator.partial_fit(x, y)
    np.testing.assert_allclose(grads["coef"], start["coef"] - estimator.coef_, rtol=1e-9)
    np.testing.assert_allclose(
        grads["intercept"], start["intercept"] - estimator.intercept_, rtol=1e-9
    )


def test_fit_intercept_false_keeps_the_intercept_at_zero() -> None:
    x, y = _regression_data()
    args = {"n_features": 3, "fit_intercept": False}
    plan = _plan(FedSGDRegressor, Optimizer(lr=0.1), args, num_updates=3, batch_size=40)
    _train(plan, x, y)
    assert plan.get_parameters()["intercept"].tolist() == [0.0]
    assert np.all(plan.get_parameters()["coef"] != 0)


# ---------------------------------------------------------------- parameters, model


def test_parameters_are_zero_coef_and_intercept_with_scikit_learn_shapes() -> None:
    binary = _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 5})
    multi = _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 5, "n_classes": 4})
    reg = _plan(FedSGDRegressor, Optimizer(lr=0.1), {"n_features": 5})
    shapes = [{k: v.shape for k, v in p.get_parameters().items()} for p in (binary, multi, reg)]
    assert shapes == [
        {"coef": (1, 5), "intercept": (1,)},
        {"coef": (4, 5), "intercept": (4,)},
        {"coef": (5,), "intercept": (1,)},
    ]
    assert all(not v.any() for p in (binary, multi, reg) for v in p.get_parameters().values())
    assert binary.vector_kind == "numpy"


def test_model_is_a_usable_estimator_holding_the_current_parameters() -> None:
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 2, "n_classes": 3})
    coef = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    plan.set_parameters({"coef": coef, "intercept": np.zeros(3)})
    estimator = plan.model()
    assert isinstance(estimator, SGDClassifier)
    np.testing.assert_array_equal(estimator.coef_, coef)
    assert estimator.predict(np.array([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])).tolist() == [0, 1, 2]


def test_init_model_override_receives_model_args() -> None:
    class Custom(FedSGDClassifier):
        def init_model(self, model_args):
            return SGDClassifier(loss="modified_huber", alpha=model_args["strength"])

        def training_data(self):
            raise AssertionError("not used")

    plan = Custom()
    plan.post_init({"n_features": 3, "strength": 0.5}, TrainingArgs())
    assert plan.model().loss == "modified_huber" and plan.model().alpha == 0.5
    assert plan.get_parameters()["coef"].shape == (1, 3)


def test_plan_without_init_optimizer_trains_with_plain_sgd_at_the_default_rate() -> None:
    plan = _DefaultOptimizerClassifier()
    plan.post_init({"n_features": 3, "loss": "log_loss", "penalty": None}, TrainingArgs())
    optimizer = plan.optimizer()
    assert isinstance(optimizer, Optimizer)
    assert optimizer.module_names == [] and optimizer.regularizer_names == []
    assert optimizer.lr == DEFAULT_LR == 0.01
    assert plan.optimizer_spec() == optimizer.to_spec()


def test_scaffold_client_module_collects_numpy_aux_vars_shaped_like_the_parameters() -> None:
    x, y = _binary_data()
    optimizer = Optimizer(lr=0.1, modules=[ScaffoldClientModule()])
    plan = _plan(FedSGDClassifier, optimizer, {"n_features": 3}, num_updates=2, batch_size=40)
    adapter, _ = _train(plan, x, y)
    aux = adapter.collect_aux_var()
    assert list(aux) == ["scaffold"]
    delta = aux["scaffold"].delta
    assert {k: v.shape for k, v in delta.coefs.items()} == {"coef": (1, 3), "intercept": (1,)}
    assert type(delta).__name__ == "NumpyVector"


def test_plan_source_imports_its_scikit_learn_base_class() -> None:
    source = plan_source(_DefaultOptimizerClassifier)
    assert "from common.training_plans import FedSGDClassifier" in source


# ------------------------------------------------------------------------ evaluation


def test_validation_reports_loss_accuracy_and_f1_for_classifiers() -> None:
    x, y = _binary_data(n=50)
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.5), {"n_features": 3, "loss": "log_loss"})
    plan.set_parameters({"coef": np.array([[1.5, -2.0, 0.5]]), "intercept": np.zeros(1)})
    metrics = plan.evaluate(DataManager(dataset=x, target=y))
    predicted = (x @ np.array([1.5, -2.0, 0.5]) > 0).astype(int)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == y))
    assert metrics["accuracy"] > 0.85 and 0.85 < metrics["f1"] <= 1.0
    assert metrics["loss"] > 0


def test_validation_reports_mse_and_mae_for_regressors_even_with_integer_targets() -> None:
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([1, 2, 5])
    plan = _plan(FedSGDRegressor, Optimizer(lr=0.1), {"n_features": 1})
    plan.set_parameters({"coef": np.array([2.0]), "intercept": np.array([1.0])})
    metrics = plan.evaluate(DataManager(dataset=x, target=y))
    assert metrics["mse"] == pytest.approx(1 / 3) and metrics["mae"] == pytest.approx(1 / 3)
    assert metrics["loss"] == pytest.approx(1 / 6)


def test_run_local_training_reports_metrics_before_and_after_training() -> None:
    args = {
        "num_updates": 20,
        "batch_size": 60,
        "test_ratio": 0.25,
        "test_on_global_updates": True,
        "test_on_local_updates": True,
        "random_seed": 3,
    }
    model_args = {"n_features": 3, "loss": "log_loss"}
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.5), model_args, _binary_data(n=60), **args)
    result = plan.run_local_training(plan.training_optimizer())
    assert result.n_samples == 45
    assert result.metrics["global_accuracy"] < result.metrics["local_accuracy"]
    assert result.metrics["local_loss"] < result.metrics["global_loss"]
    assert result.losses[-1] < result.losses[0]


# ---------------------------------------------------------------------------- errors


def test_missing_n_features_names_the_model_arg() -> None:
    with pytest.raises(PlanError, match=r"model_args\['n_features'\]"):
        _plan(FedSGDClassifier, Optimizer(lr=0.1), {})


def test_label_outside_the_classes_names_n_classes() -> None:
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 1, "n_classes": 2})
    with pytest.raises(DatasetError, match=r"\[2\].*n_classes"):
        _train(plan, np.ones((3, 1)), np.array([0, 1, 2]))


def test_inputs_with_the_wrong_number_of_columns_are_refused() -> None:
    plan = _plan(FedSGDRegressor, Optimizer(lr=0.1), {"n_features": 3})
    with pytest.raises(DatasetError, match=r"\(n_samples, 3\)"):
        _train(plan, np.ones((4, 2)), np.ones(4))


def test_parameters_with_other_shapes_are_refused() -> None:
    plan = _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 3})
    with pytest.raises(PlanError, match="'coef' has shape"):
        plan.set_parameters({"coef": np.zeros((1, 4)), "intercept": np.zeros(1)})
    with pytest.raises(PlanError, match=r"missing \['intercept'\]"):
        plan.set_parameters({"coef": np.zeros((1, 3))})


def test_unsupported_estimator_settings_fail_at_post_init() -> None:
    with pytest.raises(PlanError, match="loss='log_loss' is not supported"):
        _plan(FedSGDRegressor, Optimizer(lr=0.1), {"n_features": 3, "loss": "log_loss"})
    with pytest.raises(PlanError, match="class_weight"):
        _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 3, "class_weight": {"0": 2.0}})
    with pytest.raises(PlanError, match="averaged SGD"):
        _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 3, "average": True})


def test_init_model_returning_another_estimator_and_non_declearn_optimizer_are_refused() -> None:
    class WrongModel(FedSGDRegressor):
        def init_model(self):
            return SGDClassifier()

        def training_data(self):
            raise AssertionError("not used")

    with pytest.raises(PlanError, match=r"return a sklearn\.linear_model\.SGDRegressor"):
        WrongModel().post_init({"n_features": 2}, TrainingArgs())

    class WrongOptimizer(FedSGDRegressor):
        def init_optimizer(self):
            return "sgd"

        def training_data(self):
            raise AssertionError("not used")

    with pytest.raises(PlanError, match=r"common\.optimizers\.optimizer\.Optimizer"):
        WrongOptimizer().post_init({"n_features": 2}, TrainingArgs())


def test_aux_vars_for_a_module_the_plan_does_not_have_are_refused() -> None:
    from common.optimizers.declearn import ScaffoldAuxVar

    plan = _plan(FedSGDClassifier, Optimizer(lr=0.1), {"n_features": 3})
    adapter = plan.training_optimizer()
    with pytest.raises(ConfigurationError, match="scaffold"):
        adapter.process_aux_var({"scaffold": ScaffoldAuxVar(state=0.0)})


def test_model_args_the_estimator_does_not_know_are_named_in_a_warning(caplog) -> None:
    with caplog.at_level("WARNING", logger="common.training_plans.sklearn_plans"):
        plan = _plan(FedSGDRegressor, Optimizer(lr=0.1), {"n_features": 2, "alpah": 0.1})
    assert "['alpah']" in caplog.text and "SGDRegressor" in caplog.text
    assert "n_features" not in caplog.text.split("known")[0]
    assert plan.model().alpha == 1e-4
