"""Local and persistent parameters: which of a plan's parameters are personal to each node.

A plan tags parameters by name pattern in two class attributes (Fed-BioMed's local and
persistent parameter tags, in fedloom's plan API):

- `local_parameters`: never leave the node. The global model has no such parameters; each
  node keeps its own copy in its state folder across rounds (FedPer's heads).
- `persistent_parameters`: sent to the researcher and aggregated like any other, but the
  node trains from its own copy, never from the global value (round 1 starts from it).

A pattern is an `fnmatch` glob on a parameter name (`head.*`) or a module name matching
every parameter under it (`head` matches `head.weight` and `head.bias`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from common.errors import PlanError

__all__ = ["ParameterTags", "resolve_tags"]


@dataclass(frozen=True)
class ParameterTags:
    """A plan's parameter names split by where they live."""

    local: frozenset[str] = frozenset()
    persistent: frozenset[str] = frozenset()

    @property
    def personal(self) -> frozenset[str]:
        """Names a node keeps its own copy of: local and persistent."""
        return self.local | self.persistent

    def __bool__(self) -> bool:
        return bool(self.local or self.persistent)

    def shared(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`params` without the local ones: what may leave the node."""
        return {k: v for k, v in params.items() if k not in self.local}

    def own(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The local and persistent entries of `params`: what a node keeps for itself."""
        return {k: v for k, v in params.items() if k in self.personal}


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def _resolve(plan: str, kind: str, patterns: Iterable[str], names: Collection[str]) -> set[str]:
    if isinstance(patterns, str):
        raise PlanError(
            f"{plan}.{kind}_parameters is the string {patterns!r}: make it a tuple of name "
            f"patterns, e.g. ({patterns!r},)"
        )
    found: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if _matches(n, pattern)}
        if not hits:
            raise PlanError(
                f"{plan}.{kind}_parameters pattern {pattern!r} matches no parameter of the "
                f"model; its parameters are {sorted(names)[:8]}"
            )
        found |= hits
    return found


def resolve_tags(
    plan: str, names: Collection[str], local: Iterable[str], persistent: Iterable[str]
) -> ParameterTags:
    """Match the plan's patterns against its parameter `names`; PlanError naming a fault."""
    local_names = _resolve(plan, "local", local, names)
    persistent_names = _resolve(plan, "persistent", persistent, names)
    both = sorted(local_names & persistent_names)
    if both:
        raise PlanError(
            f"{plan} tags {both[:5]} both local and persistent: a parameter is either kept on "
            "the node (local) or sent and aggregated (persistent), not both"
        )
    if names and local_names >= set(names):
        raise PlanError(
            f"{plan} tags every parameter local: nothing would be federated; leave the shared "
            "part (e.g. the model's body) untagged"
        )
    return ParameterTags(frozenset(local_names), frozenset(persistent_names))
