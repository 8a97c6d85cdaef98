"""FedPer over the nodes holding `#fedper` datasets: a shared body, local heads.

fedloom researcher run examples/fedper/experiment.py --insecure

Each round every node reports its validation metrics on the global model (`global_*`, the
head at its initial values: what a new node starts from), on its personalized model
(`personalized_*`, its own head) before training, and after training (`local_*`).
"""

from plan import FedPerPlan

from researcher.federated_workflows import Experiment

if __name__ == "__main__":
    exp = Experiment(
        tags=["#fedper"],
        training_plan_class=FedPerPlan,
        model_args={"n_features": 8, "hidden": 16, "n_classes": 4},
        training_args={
            "epochs": 2,
            "batch_size": 32,
            "random_seed": 0,
            "test_ratio": 0.25,
            "test_on_global_updates": True,
            "test_on_local_updates": True,
        },
        round_limit=5,
    )
    exp.run()
    for reply in exp.training_replies()[5].values():
        m = reply["metrics"]
        print(
            f"{reply['node_name']}: global accuracy {m['global_accuracy']:.2f}, "
            f"personalized {m['personalized_accuracy']:.2f}"
        )
