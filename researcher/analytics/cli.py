"""`fedloom researcher analytics`: cohort statistics of connected nodes' datasets."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

from common.errors import FedloomError
from researcher.analytics.display import print_statistics
from researcher.analytics.run import cohort_statistics
from researcher.server import shutdown_server

__all__ = ["add_analytics_command"]

#: Exit codes: the query failed (no node answered, SecAgg below threshold); bad flags.
EXIT_FAILED = 1
EXIT_USAGE = 2


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers, e.g. 0.25,0.5,0.75"
        ) from None


def add_analytics_command(
    rsub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_server_flags: Callable[[argparse.ArgumentParser], None],
    run_options: Callable[[argparse.Namespace], Any],
) -> None:
    """Add `analytics` to the researcher's sub-commands (server flags shared with `run`)."""
    parser = rsub.add_parser(
        "analytics",
        help="cohort statistics (count, mean, variance, histograms, quantiles, correlation)",
    )
    parser.add_argument("--tags", required=True, help="comma-separated dataset tags")
    parser.add_argument("--columns", required=True, help="comma-separated numeric columns")
    parser.add_argument(
        "--histogram",
        action="append",
        default=[],
        metavar="COL=LOW:HIGH:BINS",
        help="equal bins over [LOW, HIGH] for a column; repeatable",
    )
    parser.add_argument(
        "--quantiles",
        type=_floats,
        default=[],
        metavar="Q1,Q2,...",
        help="quantiles read off the histograms (error within one bin width)",
    )
    parser.add_argument(
        "--correlation", action="store_true", help="correlation matrix over complete rows"
    )
    parser.add_argument(
        "--range",
        dest="ranges",
        action="append",
        default=[],
        metavar="COL=LOW:HIGH",
        help="declared range of a column: under --secagg values are clipped into it and "
        "min/max show it (a histogram's span serves when absent); repeatable",
    )
    parser.add_argument(
        "--secagg", action="store_true", help="the researcher sees only sums over the nodes"
    )
    parser.add_argument(
        "--nodes", type=int, default=1, help="wait for this many matching nodes (default 1)"
    )
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for them (default 60)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for answers (default 120)"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    add_server_flags(parser)
    parser.set_defaults(func=lambda args: _cmd_analytics(args, run_options))


def _cmd_analytics(
    args: argparse.Namespace, run_options: Callable[[argparse.Namespace], Any]
) -> int:
    """Start the server, wait for nodes, run the query, print the result."""
    try:
        options = run_options(args)
        stats = cohort_statistics(
            tags=[t.strip() for t in args.tags.split(",") if t.strip()],
            columns=[c.strip() for c in args.columns.split(",") if c.strip()],
            histograms=args.histogram,
            quantiles=args.quantiles,
            correlation=args.correlation,
            ranges=args.ranges,
            secagg=args.secagg,
            min_nodes=args.nodes,
            wait=args.wait,
            timeout=args.timeout,
            options=options,
        )
    except FedloomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        shutdown_server()
    if args.format == "json":
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print_statistics(Console(), stats)
    return 0
