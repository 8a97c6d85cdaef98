"""A training plan's source: what travels to the nodes and what their operators approve by hash."""

from __future__ import annotations

import inspect
import textwrap

from common.errors import PlanError
from common.plan_hash import canonical_source, plan_hash

__all__ = ["canonical_source", "plan_hash", "plan_source"]


def plan_source(plan_class: type) -> str:
    """The module the node runs: the plan's dependencies, the base-class import, then the class.

    User-written base classes of the plan (between it and the fedloom base) are sent too,
    parents first, so a plan may specialise another plan of the researcher's.
    """
    user_classes = [
        cls
        for cls in reversed(plan_class.__mro__)
        if isinstance(cls, type)
        and cls is not object
        and not cls.__module__.startswith("common.")
        and any(b.__module__.startswith("common.training_plans") for b in cls.__mro__)
    ]
    bodies = []
    for cls in user_classes:
        try:
            bodies.append(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError) as exc:
            raise PlanError(
                f"cannot read the source of training plan {cls.__name__}: define it in a "
                "Python file (not an interactive prompt) so it can be sent to the nodes"
            ) from exc
    body = "\n\n".join(bodies)
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
