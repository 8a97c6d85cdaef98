"""`fedloom researcher ...`: run experiments (.py or .toml), list connected datasets, report
results, and manage runs from another shell (ls, logs, stop)."""

from __future__ import annotations

import argparse
import json
import logging
import runpy
import shutil
import signal
import sys
import time
import tomllib
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from common.constants import DEFAULT_PORT
from common.errors import ConfigurationError, FedloomError
from common.tags import tag_problem
from researcher.analytics.cli import add_analytics_command
from researcher.checkpoint import latest_checkpoint, read_checkpoint_state
from researcher.config import ExperimentConfig, load_experiment_config
from researcher.overrides import apply_overrides
from researcher.progress import format_duration
from researcher.report import (
    REPORT_FILE,
    TRAIN_LOSS_LABEL,
    format_number,
    load_history,
    plot_history,
    print_summary,
    summarize,
)
from researcher.run_control import (
    find_run,
    follow_log,
    list_runs,
    read_status,
    request_stop,
    runs_started_here,
)
from researcher.run_options import RunOptions, use_run_options
from researcher.server import get_server, shutdown_server
from researcher.tables import Column, print_table

__all__ = ["register"]

log = logging.getLogger(__name__)

#: Exit codes: a failed run, a usage or configuration error, an interrupted run (128 + SIGINT).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Seconds between two looks at a run's state while `stop --wait` waits.
STOP_POLL_SECONDS = 0.25


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `researcher` command and its sub-commands."""
    parser = sub.add_parser(
        "researcher", help="run experiments, list connected nodes' datasets, report"
    )
    rsub = parser.add_subparsers(dest="researcher_command", required=True, metavar="SUBCOMMAND")

    run = rsub.add_parser("run", help="run an experiment: a Python script or a TOML description")
    run.add_argument("experiment", type=Path, help="EXPERIMENT.py or EXPERIMENT.toml")
    _add_server_flags(run)
    run.add_argument("--out", type=Path, default=None, help="output root (default ./fedloom-runs)")
    run.add_argument(
        "--rounds", type=int, default=None, help="round limit (overrides the experiment's)"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint (TOML: <out>/<name>; .py: the script's folder "
        "or the latest experiment under --out)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of a TOML experiment (dotted path, TOML value), e.g. "
        "--set training_args.batch_size=64; repeatable",
    )
    run.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="end-of-run summary: a table (default) or JSON on stdout",
    )
    run.set_defaults(func=cmd_run)

    ls = rsub.add_parser("ls", help="list the runs under --out: state, rounds, last loss, time")
    _add_out_flag(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_ls)

    logs = rsub.add_parser("logs", help="print a run's log; --follow keeps printing while it runs")
    logs.add_argument("run", metavar="RUN", help="run name from `ls`, or its folder")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the run ends")
    _add_out_flag(logs)
    logs.set_defaults(func=cmd_logs)

    stop = rsub.add_parser("stop", help="stop a run after its current round's checkpoint")
    stop.add_argument("run", metavar="RUN", help="run name from `ls`, or its folder")
    stop.add_argument("--wait", action="store_true", help="return only once the run has stopped")
    stop.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds --wait waits at most (default: no limit)",
    )
    _add_out_flag(stop)
    stop.set_defaults(func=cmd_stop)

    datasets = rsub.add_parser(
        "datasets", help="list the datasets of connected nodes matching tags"
    )
    datasets.add_argument("--tags", default="", help="comma-separated tags (default: all datasets)")
    datasets.add_argument(
        "--wait", type=float, default=5.0, help="seconds to wait for nodes to connect"
    )
    datasets.add_argument(
        "--expect", type=int, default=None, help="stop waiting once this many nodes are connected"
    )
    datasets.add_argument("--json", action="store_true", help="machine-readable output")
    _add_server_flags(datasets)
    datasets.set_defaults(func=cmd_datasets)

    report = rsub.add_parser("report", help="plot loss and metrics per round and print a summary")
    report.add_argument("folder", type=Path, help="experiment folder (holding metrics.jsonl)")
    report.add_argument(
        "--output", type=Path, default=None, help="PNG path (default FOLDER/report.png)"
    )
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.add_argument(
        "--all", action="store_true", help="list every round (long runs are summarised)"
    )
    report.set_defaults(func=cmd_report)

    add_analytics_command(rsub, _add_server_flags, _run_options)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=f"0.0.0.0:{DEFAULT_PORT}",
        help=f"HOST:PORT to listen on (default 0.0.0.0:{DEFAULT_PORT})",
    )
    parser.add_argument(
        "--certs", type=Path, default=None, help="certificate directory from `fedloom certs init`"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plain text, no TLS (local development only)"
    )


def _add_out_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=None, help="where the runs are (default ./fedloom-runs)"
    )


def _out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out is not None else RunOptions().out_dir


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The run options the flags give (--address, --certs/--insecure, --out, --rounds, --resume)."""
    if not args.insecure and args.certs is None:
        raise FedloomError(
            "TLS is on by default: pass --certs DIR (created by `fedloom certs init`), "
            "or --insecure for local development"
        )
    out = getattr(args, "out", None)
    return RunOptions(
        address=args.address,
        out_dir=out.resolve() if out is not None else RunOptions().out_dir,
        cert_dir=None if args.certs is None else args.certs.resolve(),
        insecure=bool(args.insecure),
        rounds=getattr(args, "rounds", None),
        resume=bool(getattr(args, "resume", False)),
    )


def _error(message: object, code: int = EXIT_USAGE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    """Run EXPERIMENT.py as __main__, or build and run the Experiment an EXPERIMENT.toml describes."""
    code, error = _run(args)
    if args.format == "json":
        print(json.dumps(_run_summary(code, error), indent=2))
    return code


def _run(args: argparse.Namespace) -> tuple[int, str]:
    """Exit code and error message of the run."""
    path: Path = args.experiment
    if not path.is_file():
        return _usage_error(f"experiment file {path} does not exist")
    if path.suffix not in (".py", ".toml"):
        return _usage_error(
            f"{path} is neither a Python script (.py) nor a TOML experiment (.toml)"
        )
    if args.rounds is not None and args.rounds < 1:
        return _usage_error(f"--rounds must be at least 1, got {args.rounds}")
    if args.overrides and path.suffix != ".toml":
        return _usage_error(
            "--set overrides keys of a TOML experiment; a Python script sets its own values"
        )
    try:
        options = _run_options(args)
    except FedloomError as exc:
        return _usage_error(str(exc))
    previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        # Every Experiment the script creates takes these options unless given others.
        with use_run_options(options):
            if path.suffix == ".toml":
                _run_toml(path, options, args.overrides)
            else:
                sys.path.insert(0, str(path.resolve().parent))
                runpy.run_path(str(path), run_name="__main__")
        if args.format == "table":
            _print_summaries()
        return 0, ""
    except ConfigurationError as exc:
        log.error("%s", exc)
        return EXIT_USAGE, str(exc)
    except FedloomError as exc:
        log.error("%s", exc)
        return EXIT_FAILED, str(exc)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return EXIT_INTERRUPTED, "interrupted"
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        shutdown_server()


def _usage_error(message: str) -> tuple[int, str]:
    return _error(message), message


def _run_summary(code: int, error: str) -> dict[str, Any]:
    """What `run --format json` prints: the exit code and every run this process started."""
    runs: list[dict[str, Any]] = []
    for folder in dict.fromkeys(runs_started_here()):
        status = read_status(folder)
        if status is None:
            continue
        try:
            rounds = [s.to_dict() for s in summarize(load_history(folder))]
        except ConfigurationError:
            rounds = []
        final = folder / "final_params.npz"
        runs.append(
            {
                **status.to_dict(),
                "final_params": str(final) if final.exists() else None,
                "rounds": rounds,
            }
        )
    return {"exit_code": code, "error": error, "runs": runs}


def _print_summaries() -> None:
    """The end-of-run table of every run this process started (a script may run several)."""
    console = Console()
    for folder in dict.fromkeys(runs_started_here()):
        status = read_status(folder)
        try:
            records = load_history(folder)
        except ConfigurationError:
            continue  # no round completed: the log already says why
        name = status.experiment_id if status is not None else folder.name
        state = f", {status.state}" if status is not None and status.state != "done" else ""
        print_summary(console, summarize(records), f"experiment {name} ({folder}{state})")


def _load_config(path: Path, overrides: list[str]) -> ExperimentConfig:
    """The validated TOML experiment, with `--set` overrides applied before validation."""
    if not overrides:
        return load_experiment_config(path)
    source = path.resolve()
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source} is not valid TOML: {exc}") from exc
    return ExperimentConfig.from_dict(apply_overrides(document, overrides), source)


def _run_toml(path: Path, options: RunOptions, overrides: list[str]) -> None:
    config = _load_config(path, overrides)
    folder = (options.out_dir / config.name).resolve()
    latest = latest_checkpoint(folder)
    if not options.resume and latest is not None:
        state = read_checkpoint_state(latest)
        raise ConfigurationError(
            f"{folder} already holds experiment {state.get('experiment_id')} (checkpointed at round "
            f"{state.get('round')}): pass --resume to continue it, or --out DIR (or another `name`) "
            "to start afresh"
        )
    if options.resume and latest is None:
        raise ConfigurationError(
            f"nothing to resume: {folder} holds no checkpoint; run without --resume"
        )
    # The TOML's own round count is the limit unless --rounds overrides it.
    exp = config.build_experiment(folder, options.with_changes(resume=False))
    if options.resume:
        exp.resume(folder)
    limit = options.rounds if options.rounds is not None else config.rounds
    exp.set_round_limit(max(limit, exp.round_current()))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / "experiment.toml")
    if overrides:
        (folder / "overrides.txt").write_text("\n".join(overrides) + "\n", encoding="utf-8")
    exp.run()


def cmd_report(args: argparse.Namespace) -> int:
    """Write the PNG report of an experiment folder and print its summary table."""
    folder: Path = args.folder
    try:
        records = load_history(folder)
        output = args.output or (folder / REPORT_FILE)
        png = plot_history(records, output, title=folder.resolve().name)
    except ConfigurationError as exc:
        return _error(exc)
    summaries = summarize(records)
    if args.json:
        print(json.dumps({"png": str(png), "rounds": [s.to_dict() for s in summaries]}, indent=2))
        return 0
    console = Console()
    title = f"{folder.resolve().name}: {len(summaries)} round(s)"
    print_summary(console, summaries, title, all_rounds=args.all)
    console.print(f"plot written to {png}", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """List the runs under --out with their state, rounds, last loss and time."""
    out = _out_dir(args)
    try:
        runs = list_runs(out)
    except ConfigurationError as exc:
        return _error(exc)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return 0
    console = Console()
    if not runs:
        console.print(f"no runs under {out}", markup=False, highlight=False, soft_wrap=True)
        return 0
    columns = [
        Column("run", numeric=False),
        Column("state", numeric=False),
        Column("rounds"),
        Column(f"last {TRAIN_LOSS_LABEL}"),
        Column("started", numeric=False),
        Column("time"),
    ]
    rows = [
        [
            r.name,
            r.state if not r.error else f"{r.state}: {r.error.splitlines()[0]}",
            f"{r.rounds_done}/{r.last_round}",
            format_number(r.last_loss),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_at)),
            format_duration(r.seconds),
        ]
        for r in runs
    ]
    print_table(console, f"runs under {out}", columns, rows)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a run's log; with --follow, keep printing until the run ends."""
    try:
        folder = find_run(_out_dir(args), args.run)
        follow_log(folder, sys.stdout, follow=args.follow)
    except ConfigurationError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        return 0  # leaving a --follow is the normal way to end it
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Ask a run to stop after its current round's checkpoint; with --wait, wait until it has."""
    try:
        folder = find_run(_out_dir(args), args.run)
        status = request_stop(folder)
    except ConfigurationError as exc:
        return _error(exc)
    print(
        f"stop requested: {status.name} (round {status.rounds_done + 1} under way) stops after "
        "the current round's checkpoint"
    )
    if not args.wait:
        return 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        current = read_status(folder)
        if current is None or not current.is_running:
            state = current.state if current is not None else "gone"
            print(f"{status.name} is {state} after round {current.rounds_done if current else '?'}")
            return 0
        if deadline is not None and time.monotonic() > deadline:
            return _error(f"{status.name} is still running after {args.timeout:.0f} s", EXIT_FAILED)
        time.sleep(STOP_POLL_SECONDS)


def cmd_datasets(args: argparse.Namespace) -> int:
    """Start the server, wait for nodes, print their datasets matching --tags."""
    try:
        server = get_server(_run_options(args))
    except (FedloomError, OSError) as exc:
        return _error(exc)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    problems = [p for p in map(tag_problem, tags) if p is not None]
    if problems:
        shutdown_server()
        return _error("; ".join(problems))
    try:
        if args.expect is None:
            time.sleep(max(args.wait, 0.0))
        elif not server.directory.wait_until(
            lambda: len(server.directory.connected()) >= args.expect, max(args.wait, 0.0)
        ):
            log.warning(
                "only %d of %d expected node(s) connected within %.0f s",
                len(server.directory.connected()),
                args.expect,
                args.wait,
            )
        rows: list[dict[str, Any]] = []
        for node in sorted(server.directory.connected(), key=lambda n: n.name):
            for d in node.datasets:
                if d.matches(tags):
                    rows.append(
                        {
                            "node": node.name,
                            "node_id": node.node_id,
                            "dataset": d.name,
                            "tags": list(d.tags),
                            "samples": d.n_samples,
                            "shape": list(d.shape),
                            "type": d.data_type,
                        }
                    )
        n_nodes = len(server.directory.connected())
    finally:
        shutdown_server()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = [
        Column("node", numeric=False),
        Column("dataset", numeric=False),
        Column("tags", numeric=False),
        Column("samples"),
        Column("shape", numeric=False),
        Column("type", numeric=False),
    ]
    cells = [
        [
            r["node"],
            r["dataset"],
            ", ".join(r["tags"]),
            str(r["samples"]),
            "x".join(str(n) for n in r["shape"]),
            r["type"],
        ]
        for r in rows
    ]
    title = f"datasets matching {', '.join(tags) or 'any tags'} on {n_nodes} connected node(s)"
    print_table(Console(), title, columns, cells, key_columns=2)
    return 0
