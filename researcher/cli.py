"""`fedloom researcher ...`: run experiments (.py or .toml), list connected datasets, report results."""

from __future__ import annotations

import argparse
import json
import logging
import runpy
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from common.constants import DEFAULT_PORT
from common.errors import ConfigurationError, FedloomError
from researcher.checkpoint import latest_checkpoint, read_checkpoint_state
from researcher.config import load_experiment_config
from researcher.report import REPORT_FILE, load_history, plot_history, summarize, summary_table
from researcher.run_options import RunOptions, use_run_options
from researcher.server import get_server, shutdown_server

__all__ = ["register"]

log = logging.getLogger(__name__)

#: Exit codes: a failed run, a usage or configuration error, an interrupted run (128 + SIGINT).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
    run.set_defaults(func=cmd_run)

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
    report.set_defaults(func=cmd_report)


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
    path: Path = args.experiment
    if not path.is_file():
        return _error(f"experiment file {path} does not exist")
    if path.suffix not in (".py", ".toml"):
        return _error(f"{path} is neither a Python script (.py) nor a TOML experiment (.toml)")
    if args.rounds is not None and args.rounds < 1:
        return _error(f"--rounds must be at least 1, got {args.rounds}")
    try:
        options = _run_options(args)
    except FedloomError as exc:
        return _error(exc)
    previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        # Every Experiment the script creates takes these options unless given others.
        with use_run_options(options):
            if path.suffix == ".toml":
                return _run_toml(path, options)
            sys.path.insert(0, str(path.resolve().parent))
            runpy.run_path(str(path), run_name="__main__")
            return 0
    except ConfigurationError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except FedloomError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.warning("interrupted")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        shutdown_server()


def _run_toml(path: Path, options: RunOptions) -> int:
    config = load_experiment_config(path)
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
    exp.run()
    records = exp.metrics_history()
    if records:
        Console().print(summary_table(summarize(records), f"experiment {exp.id} ({folder})"))
    return 0


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
    console.print(summary_table(summaries, f"{folder.resolve().name}: {len(summaries)} round(s)"))
    console.print(f"plot written to {png}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """Start the server, wait for nodes, print their datasets matching --tags."""
    try:
        server = get_server(_run_options(args))
    except (FedloomError, OSError) as exc:
        return _error(exc)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
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
    table = Table(title=f"datasets matching {tags or 'any tags'} on {n_nodes} connected node(s)")
    for column in ("node", "dataset", "tags", "samples", "shape", "type"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["node"],
            r["dataset"],
            ", ".join(r["tags"]),
            str(r["samples"]),
            str(tuple(r["shape"])),
            r["type"],
        )
    Console().print(table)
    return 0
