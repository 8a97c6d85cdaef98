"""Training processes: each task of an approved plan runs in its own process, not the daemon.

node.executor starts this module once as a *zygote*: it imports torch and the plan API,
then forks one fresh child per task spec path it reads on stdin. The child runs the task,
writes the reply payload and a result JSON, and exits; a crash, hang or memory blow-up
takes down only that child. Logs go to stderr as JSON lines, relayed to the researcher.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import time
import traceback
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("node.worker")

#: The zygote's first protocol line: its imports are done and tasks start in milliseconds.
READY_LINE = "ready"

#: Key of the stderr line the zygote writes after a child's last log line (see _serve_forks).
LOG_END_KEY = "task_end"

#: Frames of a plan's traceback sent to the researcher: enough to locate the error,
#: small enough for a log line.
TRACEBACK_FRAMES = 6


class _JsonLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        line = json.dumps({"level": record.levelname, "message": self.format(record)})
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _limit_memory(max_memory_mb: int | None) -> None:
    if not max_memory_mb:
        return
    import psutil

    current = psutil.Process().memory_info().vms
    limit = current + max_memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _load_plan_class(plan_path: Path, class_name: str) -> type:
    from common.errors import PlanError

    source = plan_path.read_text(encoding="utf-8")
    module = types.ModuleType(f"fedloom_plan_{plan_path.stem[:12]}")
    module.__file__ = str(plan_path)
    sys.modules[module.__name__] = module
    code = compile(source, str(plan_path), "exec")
    try:
        exec(code, module.__dict__)  # the operator approved this exact source
    except NameError as exc:
        raise PlanError(
            f"{exc} while loading the plan: add the import to init_dependencies()"
        ) from exc
    plan_class = getattr(module, class_name, None)
    if not isinstance(plan_class, type):
        raise PlanError(f"the plan source defines no class {class_name!r}")
    return plan_class


#: Optimizer states kept per experiment: the one a replayed round needs, plus a margin.
KEEP_STATES = 3


def _round_dirs(state_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if state_dir.is_dir():
        for entry in state_dir.iterdir():
            if entry.name.startswith("round-") and (entry / "optimizer.json").exists():
                found.append((int(entry.name[len("round-") :]), entry))
    return sorted(found)


def _read_state(
    state_dir: Path, round_number: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The state saved by the latest round before `round_number` (a replayed round reads
    the state it started from, not the one an abandoned attempt wrote)."""
    from common.payload import read_payload_file

    earlier = [path for r, path in _round_dirs(state_dir) if r < round_number]
    if not earlier:
        return None
    meta = json.loads((earlier[-1] / "optimizer.json").read_text(encoding="utf-8"))
    arrays = {
        k: np.array(v) for k, v in read_payload_file(earlier[-1] / "optimizer.bin").arrays().items()
    }
    return meta, arrays


def _write_state(
    state_dir: Path, round_number: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Save the state after `round_number` atomically (directory renamed into place)."""
    from common.payload import write_payload_file

    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    write_payload_file(tmp / "optimizer.bin", arrays)
    (tmp / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")
    final = state_dir / f"round-{round_number:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in _round_dirs(state_dir)[:-KEEP_STATES]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _skip_torch_weight_init() -> Iterator[None]:
    """Make torch.nn.init's in-place initialisers no-ops while the node builds the model."""
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, _return_tensor)
        yield
    finally:
        for name, func in saved.items():
            setattr(torch.nn.init, name, func)


def _return_tensor(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one train task described by `spec`; returns the result dict (also on plan errors)."""
    from common.optimizers.aux_codec import decode_aux_vars, encode_aux_vars
    from common.payload import read_payload_file, write_sections_file
    from common.proto import fedloom_pb2 as pb
    from common.training_args import TrainingArgs

    started = time.perf_counter()
    plan_class = _load_plan_class(Path(spec["plan_path"]), spec["class_name"])
    plan = plan_class()
    plan.dataset_path = spec["dataset_path"]
    training_args = TrainingArgs.from_json(spec["training_args_json"])
    with _skip_torch_weight_init():
        # Every floating tensor of the model is overwritten by the global parameters just
        # below, so drawing random initial weights would be wasted work (0.1 s per 10M).
        plan.post_init(json.loads(spec["model_args_json"] or "{}"), training_args)
    sections = read_payload_file(Path(spec["global_payload_path"])).sections()
    plan.set_parameters(sections.get(pb.PAYLOAD_SECTION_PARAMS, {}))
    optimizer = plan.training_optimizer()
    state_dir = Path(spec["state_dir"])
    saved = _read_state(state_dir, int(spec["round"]))
    if saved is not None:
        optimizer.import_state(*saved)
    aux_in = pb.AuxVars()
    aux_in.ParseFromString(Path(spec["aux_path"]).read_bytes())
    if aux_in.items:
        aux_arrays = sections.get(pb.PAYLOAD_SECTION_AUX, {})
        optimizer.process_aux_var(decode_aux_vars(aux_in, aux_arrays, plan.vector_kind))
    result = plan.run_local_training(optimizer)
    aux = optimizer.collect_aux_var()
    if spec.get("secagg"):
        out_sections, aux_out = _protected_reply(
            spec["secagg"], plan.get_parameters(), result.n_samples, aux
        )
    else:
        aux_out, aux_out_arrays = encode_aux_vars(aux, prefix="aux")
        out_sections = {
            pb.PAYLOAD_SECTION_PARAMS: plan.get_parameters(),
            pb.PAYLOAD_SECTION_AUX: aux_out_arrays,
        }
    _write_state(state_dir, int(spec["round"]), *optimizer.export_state())
    write_sections_file(Path(spec["reply_payload_path"]), out_sections)
    Path(spec["aux_out_path"]).write_bytes(aux_out.SerializeToString())
    log.info(
        "trained %d step(s) on %d samples in %.2f s, last loss %s",
        result.n_steps,
        result.n_samples,
        time.perf_counter() - started,
        f"{result.losses[-1]:.4f}" if result.losses else "n/a",
    )
    return {
        "ok": True,
        "n_samples": result.n_samples,
        "n_steps": result.n_steps,
        "losses": result.losses,
        "metrics": result.metrics,
        "train_seconds": result.seconds,
    }


def _protected_reply(
    secagg: dict[str, Any], params: dict[str, np.ndarray], n_samples: int, aux: dict[str, Any]
) -> tuple[Any, Any]:
    """Mask the reply for secure aggregation with this node's keys (see common.secagg.protect)."""
    from common.proto import fedloom_pb2 as pb
    from common.secagg import CorrectionLedger, NodeMasker, load_or_create_keypair
    from common.secagg.protect import context_settings, protect_node_reply

    context = pb.SecaggContext()
    context.ParseFromString(bytes.fromhex(secagg["context_hex"]))
    settings = context_settings(context)
    if context.threshold:  # double masking: shares came with the request
        from node.secagg_tasks import double_masker

        return protect_node_reply(
            double_masker(secagg, context),
            params,
            n_samples,
            aux,
            protect_parameters=settings.protect_parameters,
        )
    masker = NodeMasker(
        context.session_id,
        secagg["node_id"],
        load_or_create_keypair(Path(secagg["keys_dir"])),
        {peer.node_id: bytes(peer.public_key) for peer in context.peers},
        settings,
        ledger=CorrectionLedger(Path(secagg["ledger_path"])),
    )
    return protect_node_reply(
        masker, params, n_samples, aux, protect_parameters=settings.protect_parameters
    )


def _error_result(exc: BaseException) -> dict[str, Any]:
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    summary = "".join(frames[-TRACEBACK_FRAMES:]).strip()
    kind = type(exc).__name__
    if isinstance(exc, SystemExit):
        message = f"the training plan called sys.exit({exc.code})"
    elif isinstance(exc, MemoryError):
        message = "the training plan ran out of memory (node memory limit reached)"
    else:
        message = str(exc) or kind
    return {"ok": False, "kind": kind, "message": message, "traceback": summary}


def _run_spec_file(spec_path: str) -> None:
    """Body of one task process: read the spec, run the task, write the result file."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    # Anything the plan prints goes to the log relay, never to the zygote's protocol pipe.
    sys.stdout = _StdoutToLog()
    _limit_memory(spec.get("max_memory_mb"))
    if spec.get("random_seed") is not None:
        import torch

        torch.manual_seed(int(spec["random_seed"]))
    try:
        result = run_task(spec)
    except BaseException as exc:  # the plan is untrusted: any failure becomes a reply
        result = _error_result(exc)
    Path(spec["result_path"]).write_text(json.dumps(result), encoding="utf-8")


def _serve_forks() -> None:
    """Zygote loop: fork one fresh child per task spec path read on stdin.

    Protocol on stdout, one line each: ``ready`` once imports are done, ``pid <child pid>``
    when a task starts and ``exit <child pid> <exit code>`` when it ends (negative: killed
    by that signal). On stderr, after the child's log lines, ``{"task_end": <child pid>}``
    marks their end.
    """
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the zygote or its children land in the log relay
    protocol.write(f"{READY_LINE}\n")  # imports done: the daemon may now say hello
    for line in sys.stdin:
        spec_path = line.strip()
        if not spec_path:
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.setpgid(0, 0)  # its own group: the daemon can kill it and anything it starts
                _run_spec_file(spec_path)
            except BaseException:
                code = 1
            finally:
                sys.stderr.flush()
                # Skip interpreter teardown: the result is on disk and the daemon waits.
                os._exit(code)
        protocol.write(f"pid {pid}\n")
        _, status = os.waitpid(pid, 0)
        # The child's log lines are all in the stderr pipe by now; this marker follows them,
        # so the daemon can relay every one of them before it sends the task's reply.
        sys.stderr.write(json.dumps({LOG_END_KEY: pid}) + "\n")
        sys.stderr.flush()
        protocol.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")


def _import_torch_optim_lazies() -> None:
    """Import what building and stepping a torch.optim optimizer imports lazily.

    Building the first one imports torch._dynamo (about 1 s, 800 modules); done here once, a
    plan returning `torch.optim.SGD(...)` pays nothing for it in each task.
    """
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    for optimizer_class in (torch.optim.SGD, torch.optim.Adam):
        optimizer = optimizer_class([param], lr=0.1)
        param.grad = torch.ones(1)
        optimizer.step()  # the first step imports a few more modules
        optimizer.load_state_dict(optimizer.state_dict())


def main() -> int:
    handler = _JsonLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # Warm-up: importing torch, scikit-learn, declearn and the plan API once, here, is the
    # point of this process: each task then starts as a fork in milliseconds.
    import common.optimizers.adapters
    import common.optimizers.aux_codec
    import common.secagg
    import common.training_plans  # noqa: F401

    _import_torch_optim_lazies()

    _serve_forks()
    return 0


class _StdoutToLog:
    def write(self, text: str) -> int:
        for line in text.rstrip("\n").splitlines():
            if line.strip():
                log.info("%s", line)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


if __name__ == "__main__":
    sys.exit(main())
