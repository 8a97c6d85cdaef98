"""`fedloom simulate EXPERIMENT.toml --nodes N --data DATA ...`: a TOML experiment on virtual nodes.

The experiment runs as `fedloom researcher run` would run it (same plan, optimizers,
aggregator, strategy, checkpoints, progress and metrics under --out/<name>), except that
its nodes are N shards of DATA trained by a pool of Ray actors (fedloom/simulation).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common.errors import ConfigurationError, FedloomError

__all__ = ["parse_bytes", "register"]

EXIT_USAGE = 2

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `simulate` command."""
    cmd = sub.add_parser(
        "simulate",
        help="run a TOML experiment on N virtual nodes (shards of one dataset) on Ray",
        description="Simulate before you federate: the experiment's rounds run on N virtual "
        "nodes, each holding a shard of DATA, trained by a pool of Ray actors with the node's "
        'own code. Needs the simulation extra: pip install "fedloom[simulation]".',
    )
    cmd.add_argument("experiment", type=Path, help="EXPERIMENT.toml")
    cmd.add_argument("--nodes", type=int, required=True, help="number of virtual nodes")
    cmd.add_argument("--data", type=Path, required=True, help="DATA.csv (header line) or DATA.npz")
    cmd.add_argument(
        "--split",
        default="iid",
        help="iid, label-skew:K or dirichlet:ALPHA (default iid); see `fedloom data split`",
    )
    cmd.add_argument("--target", default=None, help="class column (CSV) or array (NPZ)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the split and the sampling")
    sample = cmd.add_mutually_exclusive_group()
    sample.add_argument(
        "--sample", type=float, default=None, help="fraction of the nodes trained per round"
    )
    sample.add_argument(
        "--sample-count", type=int, default=None, help="number of nodes trained per round"
    )
    cmd.add_argument(
        "--pool", type=int, default=None, help="Ray actors at once (default: CPUs / per task)"
    )
    cmd.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per task (1)")
    cmd.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs per task (0)")
    cmd.add_argument(
        "--memory-per-task", default=None, help="memory reserved per task, e.g. 512M or 2G"
    )
    cmd.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (HOST:PORT of `ray start --head`); default: a local Ray",
    )
    cmd.add_argument("--rounds", type=int, default=None, help="round limit (overrides the TOML's)")
    cmd.add_argument("--out", type=Path, default=None, help="output root (default ./fedloom-runs)")
    cmd.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    cmd.set_defaults(func=cmd_simulate)


def parse_bytes(text: str) -> int:
    """`512M`, `2G`, `1.5G` or a number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"--memory-per-task {text!r}: give a size such as 512M, 2G or a number of bytes"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        summary = _simulate(args)
    except FedloomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        loss = summary["last_mean_loss"]
        print(
            f"{summary['rounds']} round(s) on {summary['nodes']} virtual node(s); last mean loss "
            f"{'n/a' if loss is None else f'{loss:.4g}'}; results in {summary['folder']}"
        )
    return 0


def _simulate(args: argparse.Namespace) -> dict[str, object]:
    from fedloom.simulation import Simulation
    from researcher.config import load_experiment_config
    from researcher.run_options import RunOptions
    from researcher.strategies import SamplingStrategy

    if args.experiment.suffix != ".toml":
        raise ConfigurationError(
            f"{args.experiment}: `fedloom simulate` runs TOML experiments; from Python, give "
            "Experiment(..., backend=Simulation(...)) instead"
        )
    config = load_experiment_config(args.experiment)
    options = RunOptions(
        out_dir=(args.out or RunOptions().out_dir).resolve(), rounds=args.rounds, insecure=True
    )
    folder = options.out_dir / config.name
    simulation = Simulation(
        nodes=args.nodes,
        data=args.data,
        split=args.split,
        target=args.target,
        seed=args.seed,
        pool=args.pool,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        memory_per_task=None if args.memory_per_task is None else parse_bytes(args.memory_per_task),
        ray_address=args.ray_address,
    )
    with simulation:
        exp = config.build_experiment(folder, options, backend=simulation)
        if args.sample is not None or args.sample_count is not None:
            exp.set_strategy(
                SamplingStrategy(
                    fraction=1.0 if args.sample is None else args.sample,
                    count=args.sample_count,
                    min_nodes=exp.strategy().min_nodes,
                    seed=args.seed,
                )
            )
        limit = args.rounds if args.rounds is not None else config.rounds
        exp.set_round_limit(limit)
        exp.run()
    history = exp.metrics_history()
    return {
        "experiment": exp.id,
        "folder": str(folder),
        "nodes": args.nodes,
        "rounds": exp.round_current(),
        "last_mean_loss": history[-1].mean_loss if history else None,
    }
