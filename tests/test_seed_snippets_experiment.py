"""The seed page's training-plan and Experiment snippets, run against real nodes holding '#my-data'.

Snippets are copied from advanced-optimization.md with only the `fedbiomed.` import prefix
dropped. Two things are added, each where the page leaves it to the reader:

- the page's training plans write `...` for the user's own model and data; the test puts a
  small logistic-regression model and CSV loader in place of the `...` inside the class
  (their imports are local, since the page's `init_dependencies()` is kept as written);
- the page's Experiment snippets use `Optimizer` without importing it; the test adds that
  import line on top, marked with a comment.

The page's pitfalls (section 5) are checked here too: pairing mistakes are refused before
any task reaches a node, and a regularizer on the researcher is a warning given before the
first round.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.errors import ConfigurationError
from common.optimizers.declearn import (
    RidgeRegularizer,
    ScaffoldServerModule,
    YogiModule,
)
from common.optimizers.optimizer import Optimizer
from researcher.federated_workflows import Experiment
from tests.conftest import NodeProcess, wait_for_nodes, write_tabular_csv
from tests.plans.algorithms import (
    NativeSGDRegressionPlan,
    ScaffoldRegressionPlan,
    SGDRegressionPlan,
)
from tests.plans.tabular import make_logistic_data

pytestmark = pytest.mark.slow

TAGS = ["#my-data"]
#: Samples per node: a few default-size batches (48) per round.
NODE_SIZES = (60, 90)

# ------------------------------------------------------------------- page snippets

#: Section 2: a torch plan trained with Adam and a Ridge regularizer.
TORCH_ADAM_PLAN = """
from common.training_plans import TorchTrainingPlan
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn  import AdamModule, RidgeRegularizer
...

class MyTrainingPlan(TorchTrainingPlan):
    ...

    def init_dependencies(self):
        deps = [
                "from common.optimizers.optimizer import Optimizer",
                "from common.optimizers.declearn  import AdamModule, RidgeRegularizer"
                ]

        return deps

    def init_optimizer(self):
        return Optimizer(lr=.01, modules=[AdamModule()], regularizers=[RidgeRegularizer()])


"""

#: Section 2: the same optimizer in a scikit-learn plan.
SKLEARN_ADAM_PLAN = """
from common.training_plans import FedSGDClassifier
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import AdamModule, RidgeRegularizer
...

class MyTrainingPlan(FedSGDClassifier):
    ...

    def init_dependencies(self):
        deps = [
                "from common.optimizers.optimizer import Optimizer",
                "from common.optimizers.declearn  import AdamModule, RidgeRegularizer"
                ]

        return deps

    def init_optimizer(self):
        return Optimizer(lr=.01, modules=[AdamModule()], regularizers=[RidgeRegularizer()])

"""

#: Section 4.2: the Scaffold client plan.
SCAFFOLD_PLAN = """
from common.training_plans import TorchTrainingPlan
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import ScaffoldClientModule
...

class MyTrainingPlan(TorchTrainingPlan):
    ...

    def init_dependencies(self):
        deps = [
                "from common.optimizers.optimizer import Optimizer",
                "from common.optimizers.declearn import ScaffoldClientModule",
                ]

        return deps

    def init_optimizer(self):
        return Optimizer(lr=.01, modules=[ScaffoldClientModule()])

"""

#: Section 3: FedYogi set with `set_agg_optimizer`.
EXPERIMENT_SET_AGG_OPTIMIZER = """
from researcher.federated_workflows import Experiment
from researcher.aggregators import FedAverage
from researcher.strategies.default_strategy import DefaultStrategy
from common.optimizers.declearn  import YogiModule as FedYogi

tags = ['#my-data']

exp = Experiment()
exp.set_training_plan_class(training_plan_class=MyTrainingPlan)
exp.set_tags(tags = tags)
exp.set_aggregator(aggregator=FedAverage())
exp.set_round_limit(2)
exp.set_training_data(training_data=None, from_tags=True)
exp.set_strategy(node_selection_strategy=DefaultStrategy())

# here we are adding an Optimizer on Researcher side (FedYogi)
fed_opt = Optimizer(lr=.8, modules=[FedYogi()])
exp.set_agg_optimizer(fed_opt)

exp.run(increase=True)
"""

#: Section 3: FedYogi given to the Experiment constructor.
EXPERIMENT_AGG_OPTIMIZER_ARG = """
from researcher.federated_workflows import Experiment
from researcher.aggregators import FedAverage
from researcher.strategies.default_strategy import DefaultStrategy
from common.optimizers.declearn import YogiModule as FedYogi


tags = ['#my-data']
fed_opt = Optimizer(lr=.8, modules=[FedYogi()])


exp = Experiment(tags=tags,
                 training_plan_class=MyTrainingPlan,
                 round_limit=2,
                 agg_optimizer=fed_opt,
                 aggregator=FedAverage(),
                 node_selection_strategy=None)

exp.run(increase=True)

"""

#: Section 4.2: the Scaffold server side (the page imports the module from declearn itself).
EXPERIMENT_SCAFFOLD = """
from researcher.federated_workflows import Experiment
from researcher.aggregators import FedAverage
from researcher.strategies.default_strategy import DefaultStrategy
from declearn.optimizer.modules import ScaffoldServerModule


tags = ['#my-data']
fed_opt = Optimizer(lr=.8, modules=[ScaffoldServerModule()])


exp = Experiment(tags=tags,
                 training_plan_class=MyTrainingPlan,
                 round_limit=2,
                 agg_optimizer=fed_opt,
                 aggregator=FedAverage(),
                 node_selection_strategy=None)

exp.run(increase=True)

"""

#: Added on top of every Experiment snippet: the page uses Optimizer without importing it.
MISSING_IMPORT = (
    "from common.optimizers.optimizer import Optimizer  # added: the seed page omits this import\n"
)

# ------------------------------------------------------- what the page's `...` stands for

#: The user's model and data for the torch plans: logistic regression on x0..x3 -> y.
TORCH_USER_CODE = """
    def init_model(self):
        import torch

        torch.manual_seed(0)
        return torch.nn.Linear(4, 1)

    def training_data(self):
        import pandas as pd
        from common.data import DataManager

        df = pd.read_csv(self.dataset_path)
        features = df.drop(columns="y").values.astype("float32")
        return DataManager(dataset=features, target=df["y"].values)

    def training_step(self, data, target):
        import torch

        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
"""

#: The user's model and data for the scikit-learn plan: SGDClassifier with log loss, 4 features.
SKLEARN_USER_CODE = """
    def init_model(self):
        import numpy as np
        from sklearn.linear_model import SGDClassifier

        model = SGDClassifier(loss="log_loss")
        model.classes_ = np.array([0, 1])
        model.coef_ = np.zeros((1, 4))
        model.intercept_ = np.zeros(1)
        return model

    def training_data(self):
        import pandas as pd
        from common.data import DataManager

        df = pd.read_csv(self.dataset_path)
        return DataManager(dataset=df.drop(columns="y").values, target=df["y"].values)
"""

#: The class-level `...` line of the page's plans, where the user's code goes.
CLASS_ELLIPSIS = "\n    ...\n"


def load_plan_snippet(
    snippet: str, user_code: str, path: Path, monkeypatch: pytest.MonkeyPatch
) -> type:
    """Write the snippet, with the user's code in place of its class-level `...`, and import it.

    The plan is imported from a real file so its source can be read and sent to the nodes.
    """
    assert snippet.count(CLASS_ELLIPSIS) == 1, "the snippet should elide the class body once"
    path.write_text(snippet.replace(CLASS_ELLIPSIS, "\n" + user_code, 1), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    return module.MyTrainingPlan


def run_experiment_snippet(snippet: str, plan: type) -> Experiment:
    """Execute an Experiment snippet with `MyTrainingPlan` defined; return its `exp`."""
    namespace: dict[str, Any] = {"MyTrainingPlan": plan}
    exec(compile(MISSING_IMPORT + snippet, "<seed snippet>", "exec"), namespace)
    exp = namespace["exp"]
    assert isinstance(exp, Experiment)
    return exp


def start_my_data_nodes(
    tmp_path: Path, start_node, approve: list[type], sizes: tuple[int, ...] = NODE_SIZES
) -> list[NodeProcess]:
    """Nodes holding a '#my-data' CSV (x0..x3, binary y), with `approve` pre-approved."""
    nodes = []
    for index, n in enumerate(sizes):
        x, y = make_logistic_data(seed=index, n=n)
        csv = write_tabular_csv(tmp_path / f"my-data{index}.csv", x, y)
        nodes.append(
            start_node(f"node{index}", datasets=[("my-data", TAGS, csv, "y")], approve=approve)
        )
    wait_for_nodes(len(sizes))
    return nodes


def assert_trained_two_rounds(exp: Experiment, initial: dict[str, np.ndarray], nodes: int) -> None:
    assert exp.round_current() == 2
    for rnd in (1, 2):
        replies = exp.training_replies()[rnd]
        assert len(replies) == nodes, f"round {rnd}: {len(replies)} replies"
        assert all(r["sample_size"] > 0 for r in replies.values())
    final = exp.aggregated_params()[2]["params"]
    assert set(final) == set(initial)
    assert all(np.all(np.isfinite(v)) for v in final.values())
    assert any(not np.allclose(final[k], initial[k]) for k in initial), "the model did not move"


def initial_parameters(plan: type) -> dict[str, np.ndarray]:
    """The global parameters an Experiment starts from: the plan's freshly built model."""
    from common.training_args import TrainingArgs

    instance = plan()
    instance.post_init({}, TrainingArgs())
    return instance.get_parameters()


# ----------------------------------------------------------------------- snippets


def test_torch_adam_ridge_plan_trains_under_both_fedyogi_experiment_snippets(
    tmp_path: Path, start_node, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = load_plan_snippet(
        TORCH_ADAM_PLAN, TORCH_USER_CODE, tmp_path / "seed_torch_adam.py", monkeypatch
    )
    start_my_data_nodes(tmp_path, start_node, approve=[plan])
    initial = initial_parameters(plan)

    for snippet in (EXPERIMENT_SET_AGG_OPTIMIZER, EXPERIMENT_AGG_OPTIMIZER_ARG):
        exp = run_experiment_snippet(snippet, plan)
        assert exp.agg_optimizer().module_names == ["yogi"]
        assert exp.training_plan().optimizer().module_names == ["adam"]
        assert exp.training_plan().optimizer().regularizer_names == ["ridge"]
        assert_trained_two_rounds(exp, initial, nodes=len(NODE_SIZES))


def test_sklearn_adam_ridge_plan_trains_under_the_constructor_snippet(
    tmp_path: Path, start_node, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = load_plan_snippet(
        SKLEARN_ADAM_PLAN, SKLEARN_USER_CODE, tmp_path / "seed_sklearn_adam.py", monkeypatch
    )
    start_my_data_nodes(tmp_path, start_node, approve=[plan])

    exp = run_experiment_snippet(EXPERIMENT_AGG_OPTIMIZER_ARG, plan)
    assert_trained_two_rounds(exp, initial_parameters(plan), nodes=len(NODE_SIZES))
    assert exp.training_plan().model().coef_.shape == (1, 4)


def test_scaffold_client_plan_and_server_experiment_snippets_train_together(
    tmp_path: Path, start_node, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = load_plan_snippet(
        SCAFFOLD_PLAN, TORCH_USER_CODE, tmp_path / "seed_scaffold.py", monkeypatch
    )
    start_my_data_nodes(tmp_path, start_node, approve=[plan])

    exp = run_experiment_snippet(EXPERIMENT_SCAFFOLD, plan)
    assert_trained_two_rounds(exp, initial_parameters(plan), nodes=len(NODE_SIZES))
    server_state = exp.agg_optimizer().get_state()["modules"][0][1]
    assert len(server_state["clients"]) == len(NODE_SIZES)  # one Scaffold client per node


# ----------------------------------------------------------------------- pitfalls


def wait_for_log(node: NodeProcess, text: str, timeout: float = 10.0) -> bool:
    """Whether `text` shows up in the node's log within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while text not in node.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _experiment(plan: type, agg_optimizer: Optimizer | None) -> Experiment:
    return Experiment(
        tags=TAGS,
        training_plan_class=plan,
        training_args={"num_updates": 1},
        round_limit=1,
        agg_optimizer=agg_optimizer,
        show_progress=False,
    )


PAIRING_MISTAKES = {
    "Scaffold server, SGD nodes": (
        SGDRegressionPlan,
        lambda: Optimizer(lr=1.0, modules=[ScaffoldServerModule()]),
        "ScaffoldClientModule",
    ),
    "Scaffold client nodes, no researcher optimizer": (
        ScaffoldRegressionPlan,
        lambda: None,
        "ScaffoldServerModule",
    ),
    "Scaffold client nodes, FedYogi researcher": (
        ScaffoldRegressionPlan,
        lambda: Optimizer(lr=0.1, modules=[YogiModule()]),
        "ScaffoldServerModule",
    ),
    "native torch.optim nodes, Scaffold server": (
        NativeSGDRegressionPlan,
        lambda: Optimizer(lr=1.0, modules=[ScaffoldServerModule()]),
        "torch.optim",
    ),
}


def test_optimizer_pairing_mistakes_are_refused_before_any_task_reaches_the_nodes(
    tmp_path: Path, start_node
) -> None:
    plans = [SGDRegressionPlan, ScaffoldRegressionPlan, NativeSGDRegressionPlan]
    (node,) = start_my_data_nodes(tmp_path, start_node, approve=plans, sizes=(40,))

    refused = {}
    for case, (plan, agg_optimizer, hint) in PAIRING_MISTAKES.items():
        exp = _experiment(plan, agg_optimizer())
        with pytest.raises(ConfigurationError, match=hint):
            exp.run()
        assert exp.round_current() == 0, case
        assert exp.training_replies() == {}, case
        refused[case] = exp.id

    # A well-paired experiment's task does show in the node's log; the node handles tasks in
    # order, so by then a task of a refused experiment would have shown too.
    paired = _experiment(
        ScaffoldRegressionPlan, Optimizer(lr=1.0, modules=[ScaffoldServerModule()])
    )
    assert paired.run() == 1
    assert wait_for_log(node, paired.id)
    for case, experiment_id in refused.items():
        assert experiment_id not in node.log(), f"{case}: a task reached the node"


def test_a_regularizer_on_the_researcher_is_a_warning_given_before_the_first_round(
    tmp_path: Path, start_node, caplog: pytest.LogCaptureFixture
) -> None:
    start_my_data_nodes(tmp_path, start_node, approve=[SGDRegressionPlan], sizes=(40,))
    agg_optimizer = Optimizer(lr=1.0, regularizers=[RidgeRegularizer()])
    exp = _experiment(SGDRegressionPlan, agg_optimizer)

    with caplog.at_level(logging.INFO):
        assert exp.run() == 1  # a warning, not an error: the experiment runs
    messages = [record.getMessage() for record in caplog.records]
    warnings = [
        i
        for i, record in enumerate(caplog.records)
        if record.levelno == logging.WARNING and "regularizers ['ridge']" in record.getMessage()
    ]
    round_start = next(i for i, message in enumerate(messages) if message.startswith("round 1/1"))
    assert warnings, messages
    assert warnings[0] < round_start
