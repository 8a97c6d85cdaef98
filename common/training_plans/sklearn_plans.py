"""FedSGDClassifier and FedSGDRegressor: scikit-learn SGD models trained by a declearn optimizer.

The researcher subclasses one of them and defines `training_data()` (and optionally
`init_model`, `init_optimizer`, `testing_step`). The estimator is only a container for the
hyperparameters (`loss`, `penalty`, `alpha`, `l1_ratio`, `epsilon`, `fit_intercept`) and for
the fitted attributes; fedloom computes the per-batch gradient of the estimator's objective in
vectorised numpy, exactly as scikit-learn's `_sgd_fast` defines each loss, and hands it to the
plan's `common.optimizers.optimizer.Optimizer`, which computes and applies the update. The
estimator's own `learning_rate`/`eta0`/`max_iter` settings are therefore unused.

```python
class MyPlan(FedSGDClassifier):
    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(dataset=df.drop(columns="y").values, target=df["y"].values)

exp = Experiment(..., training_plan_class=MyPlan,
                 model_args={"n_features": 4, "n_classes": 2, "loss": "log_loss"})
```

Parameters travel as `coef` and `intercept` numpy arrays, with scikit-learn's shapes:
`(1 or n_classes, n_features)` and `(1 or n_classes,)` for classifiers, `(n_features,)` and
`(1,)` for regressors. Multi-class classifiers are one-versus-all, as in scikit-learn.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit
from sklearn.linear_model import SGDClassifier, SGDRegressor

from common.data import DataManager
from common.errors import DatasetError, PlanError
from common.training_args import TrainingArgs
from common.training_plans.base import BaseTrainingPlan, LocalTrainingResult, call_with_optional_arg
from common.training_plans.metrics import classification_or_regression_metrics

__all__ = ["FedSGDClassifier", "FedSGDRegressor"]

logger = logging.getLogger(__name__)

#: Learning rate of the plain-SGD Optimizer a plan gets when it defines no init_optimizer();
#: the same default as TorchTrainingPlan, so switching frameworks keeps the step size.
DEFAULT_LR = 0.01

#: scikit-learn clips each sample's loss derivative to +-1e12 "to avoid numerical
#: instabilities" (MAX_DLOSS in sklearn/linear_model/_sgd_fast.pyx.tp); we do the same.
MAX_DLOSS = 1e12

#: Names of the parameters that travel, in scikit-learn's attribute order.
PARAMETER_NAMES = ("coef", "intercept")

#: model_args read by the plans themselves (to size the coefficients), not by the estimator.
SIZING_ARGS = frozenset({"n_features", "n_classes"})

#: (target, raw prediction, epsilon) -> (per-sample loss, derivative w.r.t. the prediction).
#: Classification targets are +-1 signs; regression targets are real values.
LossFunction = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------- scikit-learn's losses


def _hinge(threshold: float) -> LossFunction:
    def loss(y: np.ndarray, p: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
        z = y * p
        active = z <= threshold
        return np.where(active, threshold - z, 0.0), np.where(active, -y, 0.0)

    return loss


def _squared_hinge(y: np.ndarray, p: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    z = 1.0 - y * p
    active = z > 0
    return np.where(active, z * z, 0.0), np.where(active, -2.0 * y * z, 0.0)


def _log_loss(y: np.ndarray, p: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    # log(1 + exp(-y p)), i.e. scikit-learn's half binomial loss with labels in {0, 1}.
    return np.logaddexp(0.0, -y * p), -y * expit(-y * p)


def _modified_huber(y: np.ndarray, p: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    z = y * p
    quadratic = (z >= -1.0) & (z < 1.0)
    loss = np.where(z >= 1.0, 0.0, np.where(quadratic, (1.0 - z) ** 2, -4.0 * z))
    dloss = np.where(z >= 1.0, 0.0, np.where(quadratic, -2.0 * (1.0 - z) * y, -4.0 * y))
    return loss, dloss


def _squared_error(y: np.ndarray, p: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    residual = p - y
    return 0.5 * residual**2, residual


def _huber(y: np.ndarray, p: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    residual = p - y
    small = np.abs(residual) <= epsilon
    loss = np.where(small, 0.5 * residual**2, epsilon * (np.abs(residual) - 0.5 * epsilon))
    return loss, np.where(small, residual, epsilon * np.sign(residual))


def _epsilon_insensitive(
    y: np.ndarray, p: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    z = y - p
    loss = np.maximum(np.abs(z) - epsilon, 0.0)
    return loss, np.where(z > epsilon, -1.0, np.where(-z > epsilon, 1.0, 0.0))


def _squared_epsilon_insensitive(
    y: np.ndarray, p: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    z = y - p
    margin = np.maximum(np.abs(z) - epsilon, 0.0)
    dloss = np.where(
        z > epsilon, -2.0 * (z - epsilon), np.where(z < -epsilon, 2.0 * (-z - epsilon), 0.0)
    )
    return margin**2, dloss


_REGRESSION_LOSSES: dict[str, LossFunction] = {
    "squared_error": _squared_error,
    "huber": _huber,
    "epsilon_insensitive": _epsilon_insensitive,
    "squared_epsilon_insensitive": _squared_epsilon_insensitive,
}

_CLASSIFICATION_LOSSES: dict[str, LossFunction] = {
    "hinge": _hinge(1.0),
    "perceptron": _hinge(0.0),
    "squared_hinge": _squared_hinge,
    "log_loss": _log_loss,
    "modified_huber": _modified_huber,
    **_REGRESSION_LOSSES,
}


def _penalty_ratio(estimator: SGDClassifier | SGDRegressor) -> float | None:
    """The L1 share of the penalty (0 for 'l2', 1 for 'l1'), or None without penalty."""
    penalty = estimator.penalty
    if penalty is None or penalty == "none":
        return None
    ratios = {"l2": 0.0, "l1": 1.0, "elasticnet": float(estimator.l1_ratio)}
    if penalty not in ratios:
        raise PlanError(
            f"penalty={penalty!r} is not supported: use 'l2', 'l1', 'elasticnet' or None"
        )
    return ratios[penalty]


# ------------------------------------------------------------------------- the plans


class _SGDTrainingPlan(BaseTrainingPlan):
    """What FedSGDClassifier and FedSGDRegressor share: parameters, gradients, training loop."""

    vector_kind = "numpy"
    _estimator_class: ClassVar[type[SGDClassifier] | type[SGDRegressor]]
    _losses: ClassVar[dict[str, LossFunction]]

    def __init__(self) -> None:
        super().__init__()
        self._model: Any = None
        self._optimizer: Any = None
        self._loss_fn: LossFunction = _squared_error
        self._l1_ratio: float | None = None

    # -- user hooks ---------------------------------------------------------------------
    def init_model(self, model_args: Mapping[str, Any] | None = None) -> Any:
        """The estimator, built from the `model_args` it accepts (`loss`, `alpha`, ...).

        Override to configure it yourself; `n_features` (and `n_classes`) still size the
        coefficients unless the returned estimator already has `coef_`.
        """
        args = dict(model_args or {})
        accepted = set(self._estimator_class().get_params())
        ignored = sorted(set(args) - accepted - SIZING_ARGS)
        if ignored:
            logger.warning(
                "model_args %s are not %s hyperparameters and are ignored (known: %s)",
                ignored,
                self._estimator_class.__name__,
                sorted(accepted),
            )
        return self._estimator_class(**{k: v for k, v in args.items() if k in accepted})

    def init_optimizer(self, optimizer_args: Mapping[str, Any] | None = None) -> Any:
        """The node optimizer; default: plain SGD with lr=`DEFAULT_LR`."""
        from common.optimizers.optimizer import Optimizer

        return Optimizer(lr=DEFAULT_LR)

    # -- accessors in Fed-BioMed's style --------------------------------------------------
    def model(self) -> Any:
        """The scikit-learn estimator, its `coef_`/`intercept_` holding the current parameters."""
        if self._model is None:
            raise PlanError("the model is not built yet: post_init() builds it from init_model()")
        return self._model

    def optimizer(self) -> Any:
        """The Optimizer returned by `init_optimizer()`."""
        return self._optimizer

    # -- lifecycle ------------------------------------------------------------------------
    def post_init(self, model_args: Mapping[str, Any], training_args: TrainingArgs) -> None:
        from common.optimizers.optimizer import Optimizer

        name = type(self).__name__
        if self.local_parameters or self.persistent_parameters:
            # A linear model has one layer: nothing would be left to federate or to personalize.
            raise PlanError(
                f"{name} tags local or persistent parameters, which scikit-learn plans do not "
                "support: personalize with a TorchTrainingPlan (e.g. a shared body, local heads)"
            )
        self._model_args = dict(model_args)
        self._training_args = training_args
        estimator = call_with_optional_arg(self.init_model, self._model_args)
        expected = self._estimator_class.__name__
        if not isinstance(estimator, self._estimator_class):
            raise PlanError(
                f"{name}.init_model() returned {type(estimator).__name__}: return a "
                f"sklearn.linear_model.{expected}"
            )
        self._check_estimator(estimator)
        if not hasattr(estimator, "coef_"):
            self._init_coefficients(estimator)
        self._check_coefficients(estimator)
        self._model = estimator
        self._optimizer = call_with_optional_arg(self.init_optimizer, {})
        if not isinstance(self._optimizer, Optimizer):
            raise PlanError(
                f"{name}.init_optimizer() returned {type(self._optimizer).__name__}: scikit-learn "
                "plans train with common.optimizers.optimizer.Optimizer (e.g. Optimizer(lr=0.01))"
            )

    def _check_estimator(self, estimator: Any) -> None:
        name = type(self).__name__
        loss = estimator.loss
        if loss not in self._losses:
            raise PlanError(
                f"{name}: loss={loss!r} is not supported; choose one of {sorted(self._losses)}"
            )
        if getattr(estimator, "class_weight", None) is not None:
            raise PlanError(
                f"{name}: class_weight is not supported; resample the classes in "
                "training_data() instead"
            )
        if estimator.average:
            raise PlanError(
                f"{name}: average={estimator.average!r} (averaged SGD) is not supported: the "
                "declearn optimizer computes the updates; leave average=False"
            )
        self._loss_fn = self._losses[loss]
        self._l1_ratio = _penalty_ratio(estimator)

    def _n_features(self) -> int:
        value = self._model_args.get("n_features")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PlanError(
                f"{type(self).__name__} needs model_args['n_features'] (the number of input "
                f"columns, a positive integer) to create its coefficients, got {value!r}"
            )
        return value

    @abc.abstractmethod
    def _init_coefficients(self, estimator: Any) -> None:
        """Give a fresh estimator zero `coef_`/`intercept_` sized from `model_args`."""

    @abc.abstractmethod
    def _check_coefficients(self, estimator: Any) -> None:
        """Raise PlanError when `coef_`/`intercept_` do not have the shapes this plan expects."""

    def get_parameters(self) -> dict[str, np.ndarray]:
        model = self.model()
        return {
            "coef": np.array(model.coef_, copy=True),
            "intercept": np.array(model.intercept_, copy=True),
        }

    def set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        model = self.model()
        missing = sorted(set(PARAMETER_NAMES) - set(params))
        extra = sorted(set(params) - set(PARAMETER_NAMES))
        if missing or extra:
            raise PlanError(
                f"parameters do not fit {type(self).__name__}: missing {missing}, unexpected "
                f"{extra}; the node and researcher built different models"
            )
        current = {"coef": model.coef_, "intercept": model.intercept_}
        for key, value in current.items():
            shape = np.shape(params[key])
            if shape != value.shape:
                raise PlanError(
                    f"parameter {key!r} has shape {shape}, the model expects {value.shape}: check "
                    "model_args['n_features'] and ['n_classes'] on both sides"
                )
        model.coef_ = np.array(params["coef"], dtype=model.coef_.dtype, copy=True)
        model.intercept_ = np.array(params["intercept"], dtype=model.intercept_.dtype, copy=True)

    def training_optimizer(self) -> Any:
        from common.optimizers.adapters import NumpyTrainingOptimizer

        return NumpyTrainingOptimizer(self.get_parameters, self.set_parameters, self._optimizer)

    def optimizer_spec(self) -> dict[str, Any] | None:
        spec: dict[str, Any] = self._optimizer.to_spec()
        return spec

    # -- the model's objective ---------------------------------------------------------------
    @abc.abstractmethod
    def _encode_targets(self, target: np.ndarray) -> np.ndarray:
        """Targets as the loss expects them (one column per output of the decision function)."""

    def _inputs(self, inputs: np.ndarray) -> np.ndarray:
        x: np.ndarray = np.asarray(inputs, dtype=self.model().coef_.dtype)
        n_features = self.model().coef_.shape[-1]
        if x.ndim != 2 or x.shape[1] != n_features:
            raise DatasetError(
                f"{type(self).__name__} expects inputs of shape (n_samples, {n_features}), got "
                f"{x.shape}: training_data() must return one row per sample and "
                "model_args['n_features'] must match the number of columns"
            )
        return x

    def _decision(self, x: np.ndarray) -> np.ndarray:
        """Raw predictions: (n, outputs) for classifiers, (n,) for regressors."""
        model = self.model()
        decision: np.ndarray = x @ model.coef_.T + model.intercept_
        return decision

    def _objective(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean data loss and its derivative w.r.t. each raw prediction, shaped like them."""
        loss, dloss = self._loss_fn(y, self._decision(x), float(self.model().epsilon))
        per_sample = loss.sum(axis=1) if loss.ndim == 2 else loss
        return float(per_sample.mean()), np.clip(dloss, -MAX_DLOSS, MAX_DLOSS)

    def _gradients(self, inputs: np.ndarray, target: Any) -> tuple[dict[str, np.ndarray], float]:
        """Gradient of mean loss + alpha * penalty over one batch, and the batch's mean loss."""
        model = self.model()
        x = self._inputs(inputs)
        y = self._encode_targets(self._require_target(target))
        loss, dloss = self._objective(x, y)
        n = len(x)
        grad_coef = (dloss.T @ x) / n
        grad_intercept = np.atleast_1d(dloss.sum(axis=0) / n)
        if not model.fit_intercept:
            grad_intercept = np.zeros_like(grad_intercept)
        if self._l1_ratio is not None:
            coef, alpha, l1 = model.coef_, float(model.alpha), self._l1_ratio
            grad_coef = grad_coef + alpha * ((1.0 - l1) * coef + l1 * np.sign(coef))
        grads = {
            "coef": grad_coef.astype(model.coef_.dtype, copy=False),
            "intercept": grad_intercept.astype(model.intercept_.dtype, copy=False),
        }
        return grads, loss

    def _require_target(self, target: Any) -> np.ndarray:
        if target is None:
            raise DatasetError(
                f"{type(self).__name__} needs a target: return DataManager(dataset=..., "
                "target=...) from training_data()"
            )
        y = np.asarray(target)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DatasetError(
                f"{type(self).__name__} expects a 1-d target (one value per sample), got shape {y.shape}"
            )
        return y

    # -- training ---------------------------------------------------------------------------
    def train_round(self, data: DataManager, optimizer: Any) -> LocalTrainingResult:
        """One round: per batch, the objective's gradient goes through `optimizer` (declearn)."""
        rng = np.random.default_rng(self._training_args.random_seed)
        optimizer.init_round()
        losses: list[float] = []
        for inputs, target in self.local_batches(data, rng):
            optimizer.zero_grad()
            grads, loss = self._gradients(inputs, target)
            if not np.isfinite(loss):
                raise PlanError(
                    f"training loss became {loss} at local step {len(losses) + 1}: lower the "
                    "learning rate or check the data for NaNs"
                )
            optimizer.set_gradients(grads)
            optimizer.step()
            losses.append(loss)
            self.report_step(len(losses), loss)
        return LocalTrainingResult(n_samples=len(data), n_steps=len(losses), losses=losses)

    def evaluate(self, data: DataManager) -> dict[str, float]:
        """`testing_step(inputs, target)` when the plan defines it, else loss and built-in metrics."""
        x = self._inputs(data.inputs)
        if hasattr(self, "testing_step"):
            out = self.testing_step(x, data.targets)
            if isinstance(out, dict):
                return {k: float(v) for k, v in out.items()}
            return {"metric": float(out)}
        y = self._require_target(data.targets)
        loss, _ = self._objective(x, self._encode_targets(y))
        return {"loss": loss, **self._metrics(x, y)}

    @abc.abstractmethod
    def _metrics(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Built-in validation metrics on inputs `x` and raw targets `y`."""


class FedSGDClassifier(_SGDTrainingPlan):
    """A `sklearn.linear_model.SGDClassifier` trained federatively with a declearn Optimizer.

    `model_args`: `n_features` (required unless `init_model` returns an estimator with
    `coef_`), `n_classes` (default 2; classes are 0..n_classes-1), plus any SGDClassifier
    hyperparameter (`loss` default 'hinge', `penalty` default 'l2', `alpha` default 1e-4,
    `l1_ratio`, `epsilon`, `fit_intercept`). Validation reports loss, accuracy and macro F1.
    """

    _estimator_class = SGDClassifier
    _losses = _CLASSIFICATION_LOSSES

    def _init_coefficients(self, estimator: Any) -> None:
        n_features = self._n_features()
        n_classes = self._model_args.get("n_classes", 2)
        if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
            raise PlanError(f"model_args['n_classes'] must be an integer >= 2, got {n_classes!r}")
        outputs = 1 if n_classes == 2 else n_classes
        estimator.classes_ = np.arange(n_classes)
        estimator.coef_ = np.zeros((outputs, n_features), dtype=np.float64)
        estimator.intercept_ = np.zeros(outputs, dtype=np.float64)
        estimator.n_features_in_ = n_features

    def _check_coefficients(self, estimator: Any) -> None:
        classes = getattr(estimator, "classes_", None)
        if classes is None or len(classes) < 2:
            raise PlanError(
                f"{type(self).__name__}: the estimator returned by init_model() has coef_ but no "
                "classes_ (at least 2): set both, or leave both unset and pass model_args"
            )
        outputs = 1 if len(classes) == 2 else len(classes)
        coef, intercept = np.asarray(estimator.coef_), np.asarray(estimator.intercept_)
        if coef.ndim != 2 or coef.shape[0] != outputs or intercept.shape != (outputs,):
            raise PlanError(
                f"{type(self).__name__}: coef_ {coef.shape} and intercept_ {intercept.shape} do "
                f"not fit {len(classes)} classes: expected ({outputs}, n_features) and ({outputs},)"
            )

    def _class_index(self, y: np.ndarray) -> np.ndarray:
        classes = np.asarray(self.model().classes_)
        matches = y[:, None] == classes[None, :]
        unknown = ~matches.any(axis=1)
        if unknown.any():
            raise DatasetError(
                f"target labels {np.unique(y[unknown])[:5].tolist()} are not among the model's "
                f"classes {classes.tolist()}: set model_args['n_classes'] to cover every label "
                "(labels must be 0..n_classes-1)"
            )
        index: np.ndarray = matches.argmax(axis=1)
        return index

    def _encode_targets(self, target: np.ndarray) -> np.ndarray:
        index = self._class_index(target)
        n_classes = len(self.model().classes_)
        if n_classes == 2:
            return np.where(index == 1, 1.0, -1.0)[:, None]
        return np.where(index[:, None] == np.arange(n_classes)[None, :], 1.0, -1.0)

    def _metrics(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        decision = self._decision(x)
        n_classes = len(self.model().classes_)
        predicted = (decision[:, 0] > 0).astype(int) if n_classes == 2 else decision.argmax(axis=1)
        one_hot = np.eye(n_classes)[predicted]
        return classification_or_regression_metrics(one_hot, self._class_index(y))


class FedSGDRegressor(_SGDTrainingPlan):
    """A `sklearn.linear_model.SGDRegressor` trained federatively with a declearn Optimizer.

    `model_args`: `n_features` (required unless `init_model` returns an estimator with
    `coef_`), plus any SGDRegressor hyperparameter (`loss` default 'squared_error',
    `penalty` default 'l2', `alpha` default 1e-4, `epsilon`, `fit_intercept`).
    Validation reports loss, MSE and MAE.
    """

    _estimator_class = SGDRegressor
    _losses = _REGRESSION_LOSSES

    def _init_coefficients(self, estimator: Any) -> None:
        n_features = self._n_features()
        estimator.coef_ = np.zeros(n_features, dtype=np.float64)
        estimator.intercept_ = np.zeros(1, dtype=np.float64)
        estimator.n_features_in_ = n_features

    def _check_coefficients(self, estimator: Any) -> None:
        coef, intercept = np.asarray(estimator.coef_), np.asarray(estimator.intercept_)
        if coef.ndim != 1 or intercept.shape != (1,):
            raise PlanError(
                f"{type(self).__name__}: coef_ {coef.shape} and intercept_ {intercept.shape} "
                "should be (n_features,) and (1,)"
            )

    def _encode_targets(self, target: np.ndarray) -> np.ndarray:
        return np.asarray(target, dtype=self.model().coef_.dtype)

    def _metrics(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        error = self._decision(x) - np.asarray(y, dtype=np.float64)
        return {"mse": float(np.mean(error**2)), "mae": float(np.mean(np.abs(error)))}
