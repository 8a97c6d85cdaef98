"""Train the 3D CNN of plan.py over the nodes holding `#mri` medical folders.

fedloom researcher run examples/medical_3d_cnn/experiment.py --insecure
"""

from plan import Medical3dCnnPlan

from researcher.federated_workflows import Experiment
from researcher.strategies.default_strategy import DefaultStrategy

if __name__ == "__main__":
    exp = Experiment(
        tags=["#mri"],
        training_plan_class=Medical3dCnnPlan,
        model_args={"channels": 4},
        training_args={
            "epochs": 2,
            "batch_size": 4,
            "random_seed": 0,
            "test_ratio": 0.25,
            "test_on_global_updates": True,
        },
        round_limit=5,
        node_selection_strategy=DefaultStrategy(min_nodes=2),
    )
    exp.run()
