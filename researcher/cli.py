"""`fedloom researcher ...`: run experiment scripts and look at connected nodes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys
import time
from pathlib import Path

from common.constants import DEFAULT_PORT
from common.errors import FedloomError

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `researcher` command and its sub-commands."""
    parser = sub.add_parser("researcher", help="run experiments, list connected nodes' datasets")
    rsub = parser.add_subparsers(dest="researcher_command", required=True, metavar="SUBCOMMAND")

    run = rsub.add_parser("run", help="run an experiment script (.py) with these settings")
    run.add_argument("experiment", type=Path, help="EXPERIMENT.py")
    _add_server_flags(run)
    run.add_argument("--out", type=Path, default=None, help="output root (default ./fedloom-runs)")
    run.set_defaults(func=cmd_run)

    datasets = rsub.add_parser("datasets", help="list the datasets of connected nodes matching tags")
    datasets.add_argument("--tags", default="", help="comma-separated tags (default: all datasets)")
    datasets.add_argument("--wait", type=float, default=5.0, help="seconds to wait for nodes to connect")
    datasets.add_argument("--json", action="store_true", help="machine-readable output")
    _add_server_flags(datasets)
    datasets.set_defaults(func=cmd_datasets)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=f"0.0.0.0:{DEFAULT_PORT}", help=f"HOST:PORT to listen on (default 0.0.0.0:{DEFAULT_PORT})"
    )
    parser.add_argument("--certs", type=Path, default=None, help="certificate directory from `fedloom certs init`")
    parser.add_argument("--insecure", action="store_true", help="plain text, no TLS (local development only)")


def _apply_server_flags(args: argparse.Namespace) -> None:
    if not args.insecure and args.certs is None:
        raise FedloomError(
            "TLS is on by default: pass --certs DIR (created by `fedloom certs init`), "
            "or --insecure for local development"
        )
    os.environ["FEDLOOM_RESEARCHER_ADDRESS"] = args.address
    os.environ["FEDLOOM_INSECURE"] = "1" if args.insecure else "0"
    if args.certs is not None:
        os.environ["FEDLOOM_CERT_DIR"] = str(args.certs.resolve())


def cmd_run(args: argparse.Namespace) -> int:
    """Run EXPERIMENT.py as __main__ with the address/out settings applied to its Experiments."""
    from researcher.server import shutdown_server

    script: Path = args.experiment
    if not script.is_file():
        print(f"error: experiment file {script} does not exist", file=sys.stderr)
        return 2
    if script.suffix != ".py":
        print(f"error: {script} is not a Python experiment script (.py)", file=sys.stderr)
        return 2
    try:
        _apply_server_flags(args)
    except FedloomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        os.environ["FEDLOOM_OUT"] = str(args.out.resolve())
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except FedloomError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    finally:
        shutdown_server()
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """Start the server, wait for nodes, print their datasets matching --tags."""
    from researcher.server import get_server, shutdown_server

    try:
        _apply_server_flags(args)
        server = get_server()
    except (FedloomError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    try:
        time.sleep(max(args.wait, 0.0))
        rows = []
        for node in sorted(server.directory.connected(), key=lambda n: n.name):
            for d in node.datasets:
                if d.matches(tags):
                    rows.append(
                        {"node": node.name, "node_id": node.node_id, "dataset": d.name, "tags": list(d.tags),
                         "samples": d.n_samples, "shape": list(d.shape), "type": d.data_type}
                    )
        n_nodes = len(server.directory.connected())
    finally:
        shutdown_server()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"datasets matching {tags or 'any tags'} on {n_nodes} connected node(s)")
    for column in ("node", "dataset", "tags", "samples", "shape", "type"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["node"], r["dataset"], ", ".join(r["tags"]), str(r["samples"]), str(tuple(r["shape"])), r["type"])
    Console().print(table)
    return 0
