"""The same experiment as experiment.toml, written in Python (Fed-BioMed's style).

fedloom researcher run examples/fedyogi_scaffold/experiment.py --insecure
"""

from plan import LogisticScaffoldPlan

from common.optimizers.declearn import ScaffoldServerModule, YogiModule
from common.optimizers.optimizer import Optimizer
from researcher.aggregators import FedAverage
from researcher.federated_workflows import Experiment
from researcher.strategies.default_strategy import DefaultStrategy

if __name__ == "__main__":
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=LogisticScaffoldPlan,
        model_args={"n_features": 4},
        training_args={
            "num_updates": 5,
            "batch_size": 100000,
            "random_seed": 0,
            "test_ratio": 0.25,
            "test_on_local_updates": True,
            "test_on_global_updates": True,
            "round_timeout": 600,
        },
        round_limit=4,
        aggregator=FedAverage(),
        agg_optimizer=Optimizer(lr=0.1, modules=[ScaffoldServerModule(), YogiModule()]),
        node_selection_strategy=DefaultStrategy(min_nodes=2),
    )
    exp.run(increase=True)
