"""Privacy budgets a node operator sets on a dataset, and the check before a DP round.

The node's daemon hands the training process a `LedgerView` (what its ledger holds for
this experiment and for the budget's scope); the DP round projects the ε after itself and
refuses before any step when that would exceed the budget. Budgets are accounted with the
RDP accountant at the budget's δ, whatever accountant the experiment reports with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common.errors import FedloomError
from common.privacy.accountant import DpSteps, epsilon_spent

__all__ = [
    "BUDGET_ACCOUNTANT",
    "BUDGET_SCOPES",
    "DpRequired",
    "LedgerView",
    "PrivacyBudget",
    "PrivacyBudgetExceeded",
    "check_budget",
]

#: "experiment": each experiment may spend the budget; "researcher": all experiments of one
#: researcher on the dataset share it.
BUDGET_SCOPES = ("experiment", "researcher")

#: The accountant budgets are kept with (see the module docstring).
BUDGET_ACCOUNTANT = "rdp"


class PrivacyBudgetExceeded(FedloomError):
    """A DP round would spend more than the dataset's privacy budget allows."""


class DpRequired(FedloomError):
    """A task without record-level DP asks for a dataset that carries a privacy budget."""


@dataclass(frozen=True)
class PrivacyBudget:
    """ε at δ that tasks on a dataset may spend in total, per experiment or per researcher."""

    epsilon: float
    delta: float
    scope: str

    def describe(self) -> str:
        return f"ε = {self.epsilon:g} at δ = {self.delta:g} per {self.scope}"


@dataclass(frozen=True)
class LedgerView:
    """The node ledger's part a DP round needs, filled in by the daemon."""

    experiment_history: tuple[DpSteps, ...] = ()
    budget: PrivacyBudget | None = None
    budget_history: tuple[DpSteps, ...] = ()
    dataset: str = ""
    raise_command: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "experiment_history": [h.to_dict() for h in self.experiment_history],
                "budget": None
                if self.budget is None
                else {
                    "epsilon": self.budget.epsilon,
                    "delta": self.budget.delta,
                    "scope": self.budget.scope,
                },
                "budget_history": [h.to_dict() for h in self.budget_history],
                "dataset": self.dataset,
                "raise_command": self.raise_command,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LedgerView:
        if not text:
            return cls()
        data = json.loads(text)
        budget = data.get("budget")
        return cls(
            experiment_history=tuple(DpSteps.from_dict(h) for h in data["experiment_history"]),
            budget=None if budget is None else PrivacyBudget(**budget),
            budget_history=tuple(DpSteps.from_dict(h) for h in data["budget_history"]),
            dataset=str(data.get("dataset", "")),
            raise_command=str(data.get("raise_command", "")),
        )


def check_budget(view: LedgerView, planned: DpSteps) -> float | None:
    """Refuse `planned` if it would take the budget's scope past its ε; return the projected ε
    (None when the dataset has no budget)."""
    budget = view.budget
    if budget is None:
        return None
    spent = epsilon_spent(view.budget_history, budget.delta, BUDGET_ACCOUNTANT)
    projected = epsilon_spent((*view.budget_history, planned), budget.delta, BUDGET_ACCOUNTANT)
    if projected > budget.epsilon:
        raise PrivacyBudgetExceeded(
            f"dataset {view.dataset!r} has a privacy budget of {budget.describe()}; ε already "
            f"spent: {spent:.3f}, this round would bring it to {projected:.3f}, so the node "
            "refused it before training (nothing was spent). Lower the rounds or steps, raise "
            "the noise multiplier, or ask the node's operator to raise the budget with "
            f"`{view.raise_command}`"
        )
    return projected
