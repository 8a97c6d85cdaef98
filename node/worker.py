"""Training processes: each task of an approved plan runs in its own processes, not the daemon.

node.executor starts this module once as a *zygote*: it imports torch and the plan API,
then forks, per task file path read on stdin, a fresh *supervisor* for that task. The
supervisor reads the `WorkerTask`, forks the *plan process*, which confines itself
(node.containment: no network, writes only to the task's scratch folder and the
experiment's state, a memory cap) and trains. When the plan process ends, the supervisor
kills every process it left behind (it is their subreaper, so setsid or double forks do
not escape), then turns the plan's output into the `WorkerResult`: under SecAgg it masks
the reply itself, so the plan never writes the node's SecAgg ledger. A crash, hang or
memory blow-up takes down only the plan process. Logs go to stderr as JSON lines,
relayed to the researcher.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.proto import fedloom_pb2 as pb
from common.trace import span
from node.containment import (
    become_subreaper,
    confine_process,
    kill_descendants,
    oom_kill_count,
    set_parent_death_signal,
)
from node.worker_protocol import (
    WorkerProtocolError,
    error_result,
    read_worker_result,
    read_worker_task,
    write_message,
)

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


#: File of a round's state folder holding the node's own local and persistent parameters.
PERSONAL_FILE = "personal.bin"


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
    from common.payload_files import read_payload_file

    earlier = [path for r, path in _round_dirs(state_dir) if r < round_number]
    if not earlier:
        return None
    meta = json.loads((earlier[-1] / "optimizer.json").read_text(encoding="utf-8"))
    arrays = {
        k: np.array(v) for k, v in read_payload_file(earlier[-1] / "optimizer.bin").arrays().items()
    }
    return meta, arrays


def _read_personal(state_dir: Path, round_number: int) -> dict[str, np.ndarray]:
    """The node's own local and persistent parameters after the latest round before
    `round_number` (empty before its first round)."""
    from common.payload_files import read_payload_file

    earlier = [path for r, path in _round_dirs(state_dir) if r < round_number]
    if not earlier or not (earlier[-1] / PERSONAL_FILE).exists():
        return {}
    return {
        k: np.array(v) for k, v in read_payload_file(earlier[-1] / PERSONAL_FILE).arrays().items()
    }


def _write_state(
    state_dir: Path,
    round_number: int,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    personal: dict[str, np.ndarray] | None = None,
) -> None:
    """Save the state after `round_number` atomically (directory renamed into place):
    the optimizer's and, for plans that have some, the local and persistent parameters."""
    from common.payload_files import write_payload_file

    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    write_payload_file(tmp / "optimizer.bin", arrays)
    if personal:
        write_payload_file(tmp / PERSONAL_FILE, personal)
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


#: Files of the plan process in the scratch folder; the supervisor turns them into the
#: task's reply payload and WorkerResult.
PLAN_PAYLOAD = "plan-reply.bin"
#: The downloaded global model while a plan trains in it (it then becomes PLAN_PAYLOAD).
TRAINING_FILE = "training.bin"
PLAN_RESULT = "plan-result.pb"

#: Exception texts by which torch's CPU allocator reports a refused allocation.
_TORCH_ALLOCATION_FAILURES = ("DefaultCPUAllocator", "can't allocate memory", "not enough memory")


def run_task(task: pb.WorkerTask) -> pb.WorkerResult:
    """Train as `task` says (in the plan process); writes the clear reply payload."""
    from common.errors import PlanError
    from common.optimizers.aux_codec import decode_aux_vars, encode_aux_vars
    from common.payload_files import read_payload_file, write_sections_file
    from common.training_args import TrainingArgs
    from common.training_plans.personalization import ParameterTags

    started = time.perf_counter()
    training_args = TrainingArgs.from_json(task.training_args_json)
    if training_args.random_seed is not None:
        import torch

        torch.manual_seed(int(training_args.random_seed))
    with span("plan.build"):
        plan, personalized = _build_plan(task, training_args)
    scratch = Path(task.scratch_dir)
    in_place = _may_train_in_place(task, training_args, personalized)
    with span("plan.read_global"):
        global_path = Path(task.global_payload_path)
        wait_for_global(global_path)
        # A file with other links is shared (the simulation links one global model into
        # every virtual node's task): training in it would change it for the others.
        in_place = in_place and os.stat(global_path).st_nlink == 1
        global_payload = read_payload_file(global_path, writable=in_place)
        sections = global_payload.sections()
    state_dir = Path(task.state_dir)
    tags = plan.parameter_tags() if personalized else ParameterTags()
    own = tags.own(_read_personal(state_dir, task.round)) if tags else None
    global_params = sections.get(pb.PAYLOAD_SECTION_PARAMS, {})
    with span("plan.set_params"):
        adopted = (
            in_place
            and set(sections) == {pb.PAYLOAD_SECTION_PARAMS}
            and hasattr(plan, "adopt_parameters")
            and plan.adopt_parameters(global_params)
        )
        if not adopted:
            plan.set_shared_parameters(global_params)
    with span("plan.optimizer"):
        optimizer = plan.training_optimizer()
        saved = _read_state(state_dir, task.round)
        if saved is not None:
            optimizer.import_state(*saved)
        if task.aux_vars.items:
            aux_arrays = sections.get(pb.PAYLOAD_SECTION_AUX, {})
            optimizer.process_aux_var(decode_aux_vars(task.aux_vars, aux_arrays, plan.vector_kind))
            del aux_arrays
    del sections
    if adopted:
        # The model trains in this file, which becomes its reply: one copy of the model.
        os.replace(global_path, scratch / TRAINING_FILE)
    else:
        del global_params
        _release_global(global_path, global_payload, training_args)
    with span("plan.train"):
        outcome = plan.run_local_training(optimizer, own)
    aux_out, aux_arrays = encode_aux_vars(optimizer.collect_aux_var(), prefix="aux")
    if tags.local and aux_out.items:
        # Aux vars (Scaffold's state) are computed over every trainable parameter: local
        # ones included, which must not leave the node.
        raise PlanError(
            f"{type(plan).__name__} tags local parameters and its optimizer sends aux vars "
            f"{sorted({i.module for i in aux_out.items})}, which would carry them to the "
            "researcher: drop the aux-var module (e.g. Scaffold) or the local tags"
        )
    # Views over the trained model (no copy), written to files below before it changes.
    trained = plan.parameter_views()
    out_sections = {
        pb.PAYLOAD_SECTION_PARAMS: tags.shared(trained),
        pb.PAYLOAD_SECTION_AUX: aux_arrays,
    }
    with span("plan.write_state"):
        meta, state_arrays = optimizer.export_state()
        _write_state(state_dir, task.round, meta, state_arrays, tags.own(trained))
    with span("plan.write_reply"):
        if (
            adopted
            and not aux_arrays
            and _same_arrays(out_sections[pb.PAYLOAD_SECTION_PARAMS], global_params)
        ):
            os.replace(scratch / TRAINING_FILE, scratch / PLAN_PAYLOAD)  # trained in place
        else:
            write_sections_file(scratch / PLAN_PAYLOAD, out_sections)
            (scratch / TRAINING_FILE).unlink(missing_ok=True)
    log.info(
        "trained %d step(s) on %d samples in %.2f s, last loss %s",
        outcome.n_steps,
        outcome.n_samples,
        time.perf_counter() - started,
        f"{outcome.losses[-1]:.4f}" if outcome.losses else "n/a",
    )
    return pb.WorkerResult(
        ok=True,
        n_samples=outcome.n_samples,
        n_steps=outcome.n_steps,
        losses=[float(v) for v in outcome.losses],
        metrics={k: float(v) for k, v in outcome.metrics.items()},
        train_seconds=float(outcome.seconds),
        aux_vars=aux_out,
        vector_kind=plan.vector_kind,
        **_dp_fields(outcome),
    )


def _may_train_in_place(task: pb.WorkerTask, training_args: Any, personalized: bool) -> bool:
    """Whether the plan may train in the downloaded global model's file, its reply to be.

    Not where the global model must outlive training (node-level DP measures the update
    against it; SecAgg's supervisor pins its digest), nor where the reply differs from it
    in layout (aux vars in, local parameters kept out) or record-level DP wraps the model.
    """
    return (
        training_args.node_dp is None
        and training_args.local_dp is None
        and not task.secagg.enabled
        and not task.aux_vars.items
        and not personalized
    )


def _same_arrays(trained: Mapping[str, Any], mapped: Mapping[str, np.ndarray]) -> bool:
    """True when the trained parameters are the mapped arrays themselves (the plan did not
    swap a tensor out of the file during training), so the file holds the reply as is."""
    return set(trained) == set(mapped) and all(
        isinstance(value, np.ndarray)
        and value.shape == mapped[name].shape
        and value.dtype == mapped[name].dtype
        and value.__array_interface__["data"][0] == mapped[name].__array_interface__["data"][0]
        for name, value in trained.items()
    )


def _release_global(path: Path, payload: Any, training_args: Any) -> None:
    """Free the downloaded global model once the plan has loaded it, before training.

    Its page cache would otherwise stay until the task ends while training allocates a
    model's size again (the gradients): with the file gone, the kernel hands its just-freed
    pages to those allocations instead of fresh ones, and the plan frees the gradients in
    turn for the reply (common/training_plans/torch_plan.py). Under node-level DP the
    supervisor measures the update against this file after training, so it stays.
    """
    if training_args.node_dp is not None:
        return
    path.unlink(missing_ok=True)
    try:
        payload.close()
    except BufferError:
        # The plan kept views over the parameters (a model holding them as they came): the
        # mapping stays valid, and its pages go when the process ends.
        log.debug("the plan holds views over the global model: its pages stay mapped")


#: Seconds between looks for the global payload while the daemon still downloads it.
GLOBAL_POLL_SECONDS = 0.002


def wait_for_global(path: Path) -> None:
    """Block until the daemon has renamed the downloaded global payload into place.

    The daemon starts a task's processes before its download ends, so that forking and
    building the model overlap the transfer; if the download fails it kills them, so
    waiting has no deadline of its own (the task's timeout applies).
    """
    while not path.exists():
        time.sleep(GLOBAL_POLL_SECONDS)


def _build_plan(task: pb.WorkerTask, training_args: Any) -> tuple[Any, bool]:
    """The plan object with its model built; True when it has local or persistent
    parameters (personalization)."""
    plan_class = _load_plan_class(Path(task.plan_path), task.class_name)
    plan = plan_class()
    plan.dataset_path = task.dataset_path
    plan.dataset_type = task.dataset_type or None
    plan.dataset_target = task.dataset_target or None
    plan.dataset_options = json.loads(task.dataset_options_json or "{}")
    if training_args.local_dp is not None:
        _prepare_private_training(plan, task)
    # Local parameters have no global value: they need the model's real initial weights.
    personalized = bool(plan.local_parameters or plan.persistent_parameters)
    with contextlib.nullcontext() if personalized else _skip_torch_weight_init():
        # Every floating tensor of the model is overwritten by the global parameters just
        # below, so drawing random initial weights would be wasted work (0.1 s per 10M).
        plan.post_init(json.loads(task.model_args_json or "{}"), training_args)
    return plan, personalized


def _prepare_private_training(plan: Any, task: pb.WorkerTask) -> None:
    """Refuse DP on plans without DP-SGD; hand a torch plan the node ledger's view."""
    from common.errors import PlanError
    from common.privacy.budget import LedgerView

    if plan.vector_kind != "torch":
        raise PlanError(
            f"record-level DP (training_args['dp']) runs DP-SGD on torch plans only; "
            f"{type(plan).__name__} is a scikit-learn plan: remove the dp block or write the "
            "model as a TorchTrainingPlan"
        )
    plan.privacy_ledger = LedgerView.from_json(task.dp_ledger_json)


def _dp_fields(outcome: Any) -> dict[str, Any]:
    if outcome.dp is None:
        return {}
    return {
        "dp_noise_multiplier": outcome.dp.noise_multiplier,
        "dp_sample_rate": outcome.dp.sample_rate,
        "dp_steps": outcome.dp.steps,
        "dp_epsilon": float(outcome.dp_epsilon),
    }


def _mask_reply(
    task: pb.WorkerTask, result: pb.WorkerResult, payload: Path, global_digest: str | None
) -> None:
    """Mask the plan's clear reply for secure aggregation (see common.secagg.protect)."""
    from common.optimizers.aux_codec import decode_aux_vars
    from common.payload_files import read_payload_file, write_sections_file
    from common.secagg import CorrectionLedger, NodeMasker, load_or_create_keypair
    from common.secagg.protect import context_settings, protect_node_reply
    from common.training_args import TrainingArgs

    sections = read_payload_file(payload).sections()
    params = sections.get(pb.PAYLOAD_SECTION_PARAMS, {})
    aux_arrays = sections.get(pb.PAYLOAD_SECTION_AUX, {})
    aux = decode_aux_vars(result.aux_vars, aux_arrays, result.vector_kind)  # type: ignore[arg-type]
    context = task.secagg
    settings = context_settings(context)
    masker: Any
    if context.threshold:  # double masking: shares came with the request
        from node.secagg_tasks import double_masker

        masker = double_masker(
            {"node_id": task.node_id, "state_dir": task.secagg_sessions_dir}, context
        )
    else:
        masker = NodeMasker(
            context.session_id,
            task.node_id,
            load_or_create_keypair(Path(task.keys_dir)),
            {peer.node_id: bytes(peer.public_key) for peer in context.peers},
            settings,
            ledger=CorrectionLedger(Path(task.ledger_path)),
        )
    n_samples = int(result.n_samples)
    node_dp = TrainingArgs.from_json(task.training_args_json).node_dp
    if node_dp is not None:
        from node.node_dp import privatize_reply

        # Here in the supervisor, not in the plan process: the plan cannot skip its noise.
        params = privatize_reply(
            task, global_digest, params, aux, node_dp, settings, len(masker.participants)
        )
        n_samples = 1  # DP-FedAvg: uniform node weights, a sample count would leak
    out_sections, aux_out = protect_node_reply(
        masker, params, n_samples, aux, protect_parameters=settings.protect_parameters
    )
    write_sections_file(Path(task.reply_payload_path), out_sections)
    result.aux_vars.CopyFrom(aux_out)


def _memory_refusal(exc: BaseException, limits: pb.WorkerLimits) -> str | None:
    """The truth about a refused allocation, or None when `exc` is not one."""
    text = str(exc)
    refused = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(m in text for m in _TORCH_ALLOCATION_FAILURES)
    )
    if not refused:
        return None
    detail = text or type(exc).__name__
    if limits.max_memory_bytes:
        mb = limits.max_memory_bytes // (1024 * 1024)
        return (
            f"the training plan's memory allocation was refused: the task reached the node's "
            f"memory limit of {mb} MB ({detail}); use less memory (smaller batches or model), "
            "or ask the node's operator to raise max_memory_mb"
        )
    return (
        f"the training plan's memory allocation was refused by the operating system ({detail}); "
        "this node sets no memory limit, so the machine itself is short of memory"
    )


def _plan_error(exc: BaseException, limits: pb.WorkerLimits) -> pb.WorkerResult:
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    summary = "".join(frames[-TRACEBACK_FRAMES:]).strip()
    kind = type(exc).__name__
    if isinstance(exc, SystemExit):
        message = f"the training plan called sys.exit({exc.code})"
    else:
        message = _memory_refusal(exc, limits) or str(exc) or kind
    return error_result(kind, message, summary)


def describe_plan_exit(status: int, elapsed: float, oom_kills: int | None) -> str:
    """Why the plan process ended without a result; `oom_kills` is the kernel's count of
    OOM kills during the task (None: unknown)."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return (
            f"the training process exited with code {code} after {elapsed:.1f} s without a result"
        )
    number = -code
    name = (
        signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
    )
    text = f"the training process was killed by signal {name} after {elapsed:.1f} s"
    if number != signal.SIGKILL:
        return text
    if oom_kills:
        return (
            f"{text} by the kernel's out-of-memory killer: the machine (or the node's memory "
            "cgroup) ran out of memory; lower max_memory_mb so the node's own limit applies first"
        )
    if oom_kills is None:
        return f"{text}, not by the node (whether the kernel's OOM killer did is unknown here)"
    return f"{text}, not by the node nor by the kernel's OOM killer (another process sent it)"


def _plan_process(task: pb.WorkerTask) -> None:
    """Body of the plan process: confine, train, write the plan's result file."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    set_parent_death_signal(signal.SIGKILL)  # the supervisor died: so does the plan
    # Anything the plan prints goes to the log relay, never to the zygote's protocol pipe.
    sys.stdout = _StdoutToLog()
    scratch = Path(task.scratch_dir)
    tmp = scratch / "tmp"
    tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(tmp)  # tempfile and libraries write inside the box
    tempfile.tempdir = None
    try:
        with span("plan.process"):  # opens the trace file before confinement
            confine_process(task.limits, [scratch, Path(task.state_dir)])
            result = run_task(task)
    except BaseException as exc:  # the plan is untrusted: any failure becomes a reply
        result = _plan_error(exc, task.limits)
    write_message(scratch / PLAN_RESULT, result)


def _plan_outcome(
    task: pb.WorkerTask,
    status: int,
    elapsed: float,
    oom_before: int | None,
    global_digest: str | None = None,
) -> pb.WorkerResult:
    """The task's WorkerResult, from the plan's result file or from how its process ended."""
    scratch = Path(task.scratch_dir)
    result_path = scratch / PLAN_RESULT
    if not (os.waitstatus_to_exitcode(status) == 0 and result_path.exists()):
        oom_after = oom_kill_count()
        oom_kills = None if oom_before is None or oom_after is None else oom_after - oom_before
        return error_result("WorkerDied", describe_plan_exit(status, elapsed, oom_kills))
    try:
        result = read_worker_result(result_path)
        if not result.ok:
            return result
        with span("supervisor.reply"):
            if task.secagg.enabled:
                _mask_reply(task, result, scratch / PLAN_PAYLOAD, global_digest)
            else:
                _check_payload(scratch / PLAN_PAYLOAD)
                os.replace(scratch / PLAN_PAYLOAD, task.reply_payload_path)
    except WorkerProtocolError as exc:
        return error_result("BadResult", f"the training plan left an unusable result: {exc}")
    except Exception as exc:  # masking a forged or broken reply: a reason, not a crash
        return error_result(type(exc).__name__, str(exc) or type(exc).__name__)
    return result


def _check_payload(path: Path) -> None:
    """Refuse a reply payload the plan process could have forged before the daemon reads it."""
    from common.payload_files import read_payload_file

    try:
        read_payload_file(path).sections()
    except Exception as exc:  # payload.py lets some malformed files through as other errors
        raise WorkerProtocolError(f"reply payload {path.name} is malformed: {exc}") from exc


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM in the zygote or a supervisor: end every process of the task(s), then exit."""
    kill_descendants()
    os._exit(128 + signum)


def _supervise(task_path: Path) -> None:
    """Body of one task's supervisor: run the plan process, clean up after it, write the result."""
    become_subreaper()
    set_parent_death_signal(signal.SIGTERM)  # the zygote died: clean up and go
    task = read_worker_task(task_path)
    # Under node-level DP the update is taken against these global parameters: pin them
    # before the plan, which may write to its scratch folder, runs.
    global_digest = None
    if task.secagg.enabled:
        from node.node_dp import global_params_digest

        wait_for_global(Path(task.global_payload_path))

        global_digest = global_params_digest(task)
    oom_before = oom_kill_count()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _plan_process(task)
        except BaseException:
            code = 1
        finally:
            sys.stderr.flush()
            # Skip interpreter teardown: the result is on disk and the supervisor waits.
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - started
    # Before the plan's output is read: nothing it left running may still change it.
    leftovers = kill_descendants()
    if leftovers:
        log.warning("stopped %d process(es) the training plan left running", leftovers)
    write_message(
        Path(task.result_path), _plan_outcome(task, status, elapsed, oom_before, global_digest)
    )


def _serve_forks() -> None:
    """Zygote loop: fork one supervisor per task file path read on stdin.

    Protocol on stdout, one line each: ``ready`` once imports are done, ``pid <supervisor
    pid>`` when a task starts, ``done <supervisor pid>`` from the supervisor itself once
    its result file is written (the task is over), and ``exit <supervisor pid> <exit
    code>`` when the supervisor has ended (negative: killed by that signal). On stderr,
    after the task's log lines, ``{"task_end": <pid>}`` marks their end.
    """
    become_subreaper()  # a supervisor killed by the daemon leaves its orphans to us
    signal.signal(signal.SIGTERM, _terminate)
    # The daemon died: end every task. (The kernel ties this to the daemon thread that
    # started us, its main or task thread, which live as long as the daemon.)
    set_parent_death_signal(signal.SIGTERM)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the zygote or its children land in the log relay
    protocol.write(f"{READY_LINE}\n")  # imports done: the daemon may now say hello
    for line in sys.stdin:
        task_path = line.strip()
        if not task_path:
            continue
        _warm_up_for(Path(task_path))
        # Out of the collector's sight: the first collection in a fresh fork would otherwise
        # walk every object torch left in this process (0.5 s at each task) and, by touching
        # their headers, copy the zygote's pages into the child.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.setpgid(0, 0)  # its own group: the daemon can kill it and its plan at once
                with span("supervisor"):
                    _supervise(Path(task_path))
                _report_done(protocol)
            except WorkerProtocolError as exc:
                log.error("%s", exc)
                code = 1
            except BaseException:
                log.exception("the task supervisor failed")
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        protocol.write(f"pid {pid}\n")
        _, status = os.waitpid(pid, 0)
        leftovers = kill_descendants()
        if leftovers:
            log.warning("stopped %d process(es) left by a stopped task", leftovers)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:  # (on success the supervisor wrote the marker with its `done` line)
            _mark_logs_end(pid)
        protocol.write(f"exit {pid} {code}\n")
    kill_descendants()


def _mark_logs_end(pid: int) -> None:
    """Mark the end of task `pid`'s log lines on stderr: they are all in the pipe by now,
    so the daemon can relay every one of them before it sends the task's reply."""
    sys.stderr.write(json.dumps({LOG_END_KEY: pid}) + "\n")
    sys.stderr.flush()


def _report_done(protocol: Any) -> None:
    """In a supervisor whose result file is complete and whose plan processes are all
    dead: tell the daemon, which may go on while this process is still being torn down
    (tens of milliseconds for a fork of the zygote)."""
    pid = os.getpid()
    _mark_logs_end(pid)
    protocol.write(f"done {pid}\n")  # one short line: atomic among the pipe's writers


def _warm_up_for(task_path: Path) -> None:
    """Import in the zygote what a task needs beyond the warm-up, so later tasks fork with it.

    Opacus (record-level DP) takes seconds to import: the first DP task pays it here,
    the next ones nothing, and a node that never sees a DP task never loads it.
    """
    if "opacus" in sys.modules:
        return
    try:
        training_args = json.loads(read_worker_task(task_path).training_args_json or "{}")
    except (WorkerProtocolError, ValueError):
        return  # the task's supervisor reports what is wrong with it
    dp = training_args.get("dp") if isinstance(training_args, dict) else None
    if isinstance(dp, dict) and dp.get("type") == "local":
        with contextlib.suppress(ImportError):  # the task says Opacus is missing
            import opacus  # noqa: F401


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


def warm_up() -> None:
    """Import, and run once, what tasks use: each task then starts as a fork in milliseconds.

    That is the point of this process. Whatever a task imports or caches that is not done
    here, every task pays again in its own process (the framework plans, loaded lazily by
    `common.training_plans`, cost 20-40 ms per task that way).
    """
    import common.optimizers.adapters
    import common.optimizers.aux_codec
    import common.payload_files  # every task's plan process and supervisor: 9 ms each
    import common.secagg  # noqa: F401
    import node.node_dp  # noqa: F401 - a SecAgg task's supervisor
    from common.optimizers.optimizer import Optimizer
    from common.training_plans import framework_plan_modules
    from node.huge_pages import collapse_private_memory

    for module in framework_plan_modules():
        importlib.import_module(module)
    _import_torch_optim_lazies()
    # Fills the abc caches its spec checks consult (isinstance against Mapping, Iterable).
    Optimizer(lr=0.1)
    # Last, once the memory to share is all there: forks then copy 2 MB page entries.
    collapse_private_memory()


def main() -> int:
    handler = _JsonLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    warm_up()
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
