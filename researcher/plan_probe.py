"""The plan probe: what the researcher needs from a training plan, without importing torch.

A plan given as a file (`PlanFile`: TOML experiments, `Experiment(training_plan=...)`, a
checkpoint's saved source) is instantiated in a short-lived child process
(`python -m researcher.plan_probe`). The child writes the initial parameters as a payload
file and a JSON description (source sent to the nodes, its hash, trainable parameter
names, optimizer spec); the researcher maps the file and reads the JSON. So the
long-lived researcher process, which only aggregates numpy arrays, never imports the
plan's framework (torch alone is ~200 MB of resident memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigurationError, FedloomError
from common.payload_files import read_payload_file, write_payload_file

__all__ = ["PlanDetails", "PlanFile", "ProbedPlan", "plan_file_for_source", "probe_plan"]

#: Seconds a probe may take (importing torch and building a large model included).
PROBE_TIMEOUT = 600.0


@dataclass(frozen=True)
class PlanFile:
    """A training plan as a Python file and the name of its class, imported only in a probe."""

    path: Path
    class_name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).resolve())
        if not isinstance(self.class_name, str) or not self.class_name:
            raise ConfigurationError(
                f"PlanFile needs the plan's class name, got {self.class_name!r}"
            )


@dataclass(frozen=True)
class PlanDetails:
    """What the round engine asks of a plan: trainable names and its optimizer."""

    trainable: tuple[str, ...]
    optimizer_spec: dict[str, Any] | None
    native_optimizer: bool
    #: Local parameters (common.training_plans.personalization): absent from the global model.
    local: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbedPlan:
    """A probe's answer: the plan as it travels, its details and its initial parameters."""

    class_name: str
    source: str
    sha256: str
    details: PlanDetails
    params: dict[str, np.ndarray]


def plan_file_for_source(class_name: str, source: str, sha256: str) -> PlanFile:
    """A plan known by its source only (a checkpoint's) as a file that outlives checkpoints.

    Kept under the temporary directory, named by the source's hash, so the same source is
    written once and a lazily built plan can still read its own source back.
    """
    folder = Path(tempfile.gettempdir()) / "fedloom-plans"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"plan_{sha256[:32]}.py"
    if not path.is_file() or path.read_text(encoding="utf-8") != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source, encoding="utf-8")
        tmp.replace(path)
    return PlanFile(path, class_name)


def probe_plan(
    plan: PlanFile, model_args: Mapping[str, Any], training_args: Mapping[str, Any]
) -> ProbedPlan:
    """Instantiate `plan` in a child process; ConfigurationError naming the fault if it fails.

    The initial parameters are read-only views over a memory-mapped file, already unlinked:
    they cost page cache, not researcher heap, and vanish with the last view.
    """
    if not plan.path.is_file():
        raise ConfigurationError(f"training plan file {plan.path} does not exist")
    request = {
        "file": str(plan.path),
        "class_name": plan.class_name,
        "model_args": dict(model_args),
        "training_args": dict(training_args),
    }
    with tempfile.TemporaryDirectory(prefix="fedloom-probe-") as tmp:
        params_path, answer_path = Path(tmp) / "params.bin", Path(tmp) / "answer.json"
        request.update(params=str(params_path), answer=str(answer_path))
        # The child imports what this process can (the researcher's own sys.path).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "researcher.plan_probe"],
                input=json.dumps(request),
                text=True,
                capture_output=True,
                env=env,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ConfigurationError(
                f"building training plan {plan.class_name} from {plan.path} took more than "
                f"{PROBE_TIMEOUT:.0f} s"
            ) from exc
        answer = json.loads(answer_path.read_text()) if answer_path.is_file() else {}
        if done.returncode != 0 or "error" in answer or "sha256" not in answer:
            message = answer.get("error") or done.stderr.strip()[-2000:] or "no output"
            raise ConfigurationError(
                f"training plan {plan.class_name} from {plan.path} could not be built: {message}"
            )
        params = read_payload_file(params_path).arrays()
    return ProbedPlan(
        class_name=str(answer["class_name"]),
        source=str(answer["source"]),
        sha256=str(answer["sha256"]),
        details=PlanDetails(
            trainable=tuple(answer["trainable"]),
            optimizer_spec=answer["optimizer_spec"],
            native_optimizer=bool(answer["native_optimizer"]),
            local=tuple(answer.get("local", ())),
        ),
        params=params,
    )


def _probe_main() -> int:
    """The child: build the plan, write its parameters and description."""
    request = json.loads(sys.stdin.read())
    answer_path = Path(request["answer"])
    try:
        from common.training_args import TrainingArgs
        from common.training_plans.source import plan_hash, plan_source
        from researcher.plan_loader import load_plan_class

        plan_class = load_plan_class(Path(request["file"]), request["class_name"])
        source = plan_source(plan_class)
        plan = plan_class()
        plan.post_init(request["model_args"], TrainingArgs.from_dict(request["training_args"]))
        # The global model: local parameters never leave the nodes, so it has none.
        write_payload_file(Path(request["params"]), plan.shared_parameters())
        local = plan.parameter_tags().local
        answer: dict[str, Any] = {
            "class_name": plan_class.__name__,
            "source": source,
            "sha256": plan_hash(source),
            "trainable": [n for n in plan.trainable_parameter_names() if n not in local],
            "optimizer_spec": plan.optimizer_spec(),
            "native_optimizer": plan.uses_native_optimizer(),
            "local": sorted(local),
        }
        text = json.dumps(answer)
    except Exception as exc:  # the researcher's own plan: report what broke, whatever it is
        message = str(exc) if isinstance(exc, FedloomError) else f"{type(exc).__name__}: {exc}"
        answer_path.write_text(json.dumps({"error": message}))
        return 1
    answer_path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(_probe_main())
