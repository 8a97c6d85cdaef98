"""A training plan's source: what travels to the nodes and what their operators approve by hash."""

from __future__ import annotations

import hashlib
import inspect
import textwrap

from common.errors import PlanError

__all__ = ["canonical_source", "plan_hash", "plan_source"]


def canonical_source(source: str) -> str:
    """Normalise line endings and trailing whitespace so the hash ignores editor noise."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


def plan_hash(source: str) -> str:
    """SHA-256 (hex) of the canonical source."""
    return hashlib.sha256(canonical_source(source).encode("utf-8")).hexdigest()


def plan_source(plan_class: type) -> str:
    """The module the node runs: the plan's dependencies, the base-class import, then the class."""
    try:
        body = textwrap.dedent(inspect.getsource(plan_class))
    except (OSError, TypeError) as exc:
        raise PlanError(
            f"cannot read the source of training plan {plan_class.__name__}: define it in a "
            "Python file (not an interactive prompt) so it can be sent to the nodes"
        ) from exc
    try:
        deps = list(plan_class().init_dependencies())
    except Exception as exc:
        raise PlanError(f"{plan_class.__name__}.init_dependencies() failed: {exc}") from exc
    if not all(isinstance(d, str) for d in deps):
        raise PlanError(f"{plan_class.__name__}.init_dependencies() must return a list of strings")
    bases = [b for b in plan_class.__mro__[1:] if b.__module__.startswith("common.training_plans")]
    base_imports = [f"from common.training_plans import {bases[0].__name__}"] if bases else []
    header = "\n".join([*base_imports, *deps])
    return canonical_source(f"{header}\n\n\n{body}")
