"""The daemon's side of record-level DP: what a task may spend, and what it spent.

Before a train task runs, `view` reads the node's privacy ledger into the `LedgerView`
the training process checks the round against; after it trained, `record` writes the
round's DP-SGD steps to the ledger before the parameters leave the node.
"""

from __future__ import annotations

from common.errors import PlanError
from common.privacy.accountant import DpSteps
from common.privacy.budget import DpRequired, LedgerView
from common.proto import fedloom_pb2 as pb
from common.training_args import TrainingArgs
from node.home import NodeHome
from node.privacy_ledger import PrivacyLedger

__all__ = ["PrivacyGate"]


class PrivacyGate:
    """Privacy checks and bookkeeping of one node's train tasks."""

    def __init__(self, home: NodeHome) -> None:
        self._home = home
        self.ledger = PrivacyLedger(home.db_path)

    def view(
        self, task: pb.TaskRequest, dataset: str, args: TrainingArgs, *, researcher: str
    ) -> LedgerView | None:
        """The ledger's view for a DP task (None without DP); refuses a task without DP on
        a dataset with a budget."""
        budget = self.ledger.budget(dataset)
        if args.local_dp is None:
            if budget is not None:
                raise DpRequired(
                    f"dataset {dataset!r} on node {self._home.name} carries a privacy budget "
                    f"({budget.describe()}): its records are only trained on under record-level "
                    "DP; add training_args['dp'] = {'type': 'local', 'clip': ..., "
                    "'noise_multiplier': ..., 'delta': ...} to the experiment"
                )
            return None
        command = (
            f"fedloom node --home {self._home.path} dataset budget {dataset} --epsilon <higher> "
            f"--delta {budget.delta:g} --per {budget.scope}"
            if budget is not None
            else ""
        )
        return LedgerView(
            experiment_history=tuple(
                self.ledger.history(dataset, experiment_id=task.experiment_id)
            ),
            budget=budget,
            budget_history=tuple(
                self.ledger.scope_history(
                    dataset, budget, experiment_id=task.experiment_id, researcher=researcher
                )
            )
            if budget is not None
            else (),
            dataset=dataset,
            raise_command=command,
        )

    def record(
        self,
        task: pb.TaskRequest,
        dataset: str,
        args: TrainingArgs,
        result: pb.WorkerResult,
        *,
        researcher: str,
    ) -> float | None:
        """Write a DP round's steps to the ledger; return the experiment's ε (None without DP)."""
        if args.local_dp is None:
            return None
        if result.dp_steps <= 0:
            raise PlanError(
                "the experiment asks for record-level DP but the training process reported no "
                "DP-SGD step: its reply stays on the node (is the plan a TorchTrainingPlan?)"
            )
        self.ledger.record(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            researcher=researcher,
            dataset=dataset,
            round_number=task.round,
            steps=DpSteps(result.dp_noise_multiplier, result.dp_sample_rate, result.dp_steps),
        )
        return float(result.dp_epsilon)
