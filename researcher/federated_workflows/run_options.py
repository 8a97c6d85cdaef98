"""Options `fedloom researcher run` passes to the Experiments of a script: --rounds, --resume."""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.errors import ConfigurationError

__all__ = ["RunOptions", "run_options"]

ROUNDS_ENV = "FEDLOOM_RUN_ROUNDS"
RESUME_ENV = "FEDLOOM_RUN_RESUME"


@dataclass(frozen=True)
class RunOptions:
    """`rounds` overrides every Experiment's round limit; `resume` restores its latest checkpoint."""

    rounds: int | None = None
    resume: bool = False


def run_options() -> RunOptions:
    """Read FEDLOOM_RUN_ROUNDS and FEDLOOM_RUN_RESUME (set by the CLI; unset in plain Python use)."""
    raw_rounds = os.environ.get(ROUNDS_ENV, "").strip()
    rounds = None
    if raw_rounds:
        try:
            rounds = int(raw_rounds)
        except ValueError as exc:
            raise ConfigurationError(
                f"{ROUNDS_ENV} must be a whole number of rounds, got {raw_rounds!r}"
            ) from exc
    return RunOptions(rounds=rounds, resume=os.environ.get(RESUME_ENV, "0") == "1")
