"""Every Optimizer construction of the seed page (advanced-optimization.md) runs unchanged.

Snippets are copied verbatim from the page, with the `fedbiomed.` import prefix dropped. A few
snippets use names imported by earlier ones (the page reads as one session); their `needs`
states those imports explicitly. The algorithms table writes `xx` for the learning rate.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import pytest

from common.optimizers.optimizer import Optimizer
from researcher.optimization import ResearcherOptimizer, check_optimizer_pairing


@dataclass(frozen=True)
class Snippet:
    code: str
    modules: list[str]
    regularizers: list[str]
    needs: str = ""
    result_name: str | None = None  # variable holding the Optimizer, if not the last expression


SNIPPETS: dict[str, Snippet] = {
    "1.2-signature": Snippet(
        """
from common.optimizers import Optimizer

Optimizer(lr=.1, decay=.0, modules=[], regularizers=[])
""",
        [],
        [],
    ),
    "1.3-sgd": Snippet(
        """
from common.optimizers.optimizer import Optimizer

lr = .01
Optimizer(lr=lr)
""",
        [],
        [],
    ),
    "1.3-adam": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import AdamModule

lr = .01
Optimizer(lr=lr, modules=[AdamModule()])
""",
        ["adam"],
        [],
    ),
    "1.3-adam-momentum": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import AdamModule, MomentumModule

lr = .01
Optimizer(lr=lr, modules=[AdamModule(), MomentumModule()])
""",
        ["adam", "momentum"],
        [],
    ),
    "1.4-sgd-ridge": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import RidgeRegularizer

lr = .01
Optimizer(lr=lr, regularizers=[RidgeRegularizer()])
""",
        [],
        ["ridge"],
    ),
    "1.4-adam-lasso": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import AdamModule
from common.optimizers.declearn import LassoRegularizer

lr = .01
Optimizer(lr=lr, modules=[AdamModule()], regularizers=[LassoRegularizer()])
""",
        ["adam"],
        ["lasso"],
    ),
    "1.4-chained-regularizers": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import LassoRegularizer, RidgeRegularizer

lr = .01
Optimizer(lr=lr, modules=[AdamModule(), MomentumModule()], regularizers=[LassoRegularizer(), RidgeRegularizer()])
""",
        ["adam", "momentum"],
        ["lasso", "ridge"],
        needs="from common.optimizers.declearn import AdamModule, MomentumModule",
    ),
    "1.5-rmsprop-momentum-lasso-ridge": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn  import RMSPropModule, MomentumModule, LassoRegularizer, RidgeRegularizer

lr = .01
Optimizer(lr=lr,
          modules=[RMSPropModule(), MomentumModule()],
          regularizers=[LassoRegularizer(), RidgeRegularizer()])
""",
        ["rmsprop", "momentum"],
        ["lasso", "ridge"],
    ),
    "1.5-names": Snippet(
        """
from common.optimizers.optimizer import Optimizer


lr = .01
Optimizer(lr=lr,
          modules=['adam', 'momentum'],
          regularizers=['lasso', 'ridge'])
""",
        ["adam", "momentum"],
        ["lasso", "ridge"],
    ),
    "2-node-torch-and-sklearn-plan": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn  import AdamModule, RidgeRegularizer

Optimizer(lr=.01, modules=[AdamModule()], regularizers=[RidgeRegularizer()])
""",
        ["adam"],
        ["ridge"],
    ),
    "3-fedyogi": Snippet(
        """
from common.optimizers.declearn  import YogiModule as FedYogi

fed_opt = Optimizer(lr=.8, modules=[FedYogi()])
""",
        ["yogi"],
        [],
        needs="from common.optimizers.optimizer import Optimizer",
        result_name="fed_opt",
    ),
    "4.2-scaffold-node": Snippet(
        """
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import ScaffoldClientModule

Optimizer(lr=.01, modules=[ScaffoldClientModule()])
""",
        ["scaffold-client"],
        [],
    ),
    "4.2-scaffold-researcher": Snippet(
        """
from declearn.optimizer.modules import ScaffoldServerModule

fed_opt = Optimizer(lr=.8, modules=[ScaffoldServerModule()])
""",
        ["scaffold-server"],
        [],
        needs="from common.optimizers.optimizer import Optimizer",
        result_name="fed_opt",
    ),
}


def _run(code: str, namespace: dict[str, Any]) -> Any:
    """Execute `code`; return the value of its last statement when that is an expression."""
    tree = ast.parse(code)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    body = tree.body[:-1] if last is not None else tree.body
    exec(compile(ast.Module(body=body, type_ignores=[]), "<snippet>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<snippet>", "eval"), namespace)


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_seed_page_snippet_builds_the_described_optimizer(name: str) -> None:
    snippet = SNIPPETS[name]
    namespace: dict[str, Any] = {}
    if snippet.needs:
        exec(snippet.needs, namespace)
    result = _run(snippet.code, namespace)
    if snippet.result_name:
        result = namespace[snippet.result_name]
    assert isinstance(result, Optimizer)
    assert result.module_names == snippet.modules
    assert result.regularizer_names == snippet.regularizers


def test_list_optim_modules_snippets_list_module_classes() -> None:
    ours = _run(
        "from common.optimizers.declearn import list_optim_modules\n\nlist_optim_modules()", {}
    )
    declearn = _run("from declearn.optimizer import list_optim_modules\n\nlist_optim_modules()", {})
    assert {"adam", "momentum", "scaffold-client", "scaffold-server"} <= set(ours)
    assert set(ours) <= set(declearn)


# Algorithms table: (node optimizer, researcher optimizer or None), `xx` being the learning rate.
TABLE = {
    "AdaAlter": ("Optimizer(lr=xx, modules=[AdaGradModule()])", None),
    "FedAdagrad": ("Optimizer(lr=xx)", "Optimizer(lr=xx, modules=[AdaGradModule()])"),
    "FedAdam": ("Optimizer(lr=xx)", "Optimizer(lr=xx, modules=[AdamModule()])"),
    "FedAvg": ("Optimizer(lr=xx)", None),
    "FedProx": ("Optimizer(lr=xx, regularizers=[FedProxRegularizer])", None),
    "FedYogi": ("Optimizer(lr=xx)", "Optimizer(lr=xx, modules=[YogiModule()])"),
    "Scaffold": (
        "Optimizer(lr=xx, modules=[ScaffoldClientModule()])",
        "Optimizer(lr=xx, modules=[ScaffoldServerModule()])",
    ),
}


@pytest.mark.parametrize("algorithm", list(TABLE))
def test_algorithms_table_pairs_build_and_pass_compatibility_checks(algorithm: str) -> None:
    namespace: dict[str, Any] = {"xx": 0.1}
    exec(
        "from common.optimizers.optimizer import Optimizer\nfrom common.optimizers.declearn import *",
        namespace,
    )
    node_code, researcher_code = TABLE[algorithm]
    node = _run(node_code, namespace)
    assert isinstance(node, Optimizer)
    if researcher_code is not None:
        researcher = ResearcherOptimizer(_run(researcher_code, namespace))
        assert (
            check_optimizer_pairing(researcher.optimizer, node.to_spec(), native_torch=False) == []
        )
