"""`fedloom demo`: a researcher and three nodes on loopback, five rounds of FedAvg, start to finish."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.errors import FedloomError

__all__ = ["register", "run_demo"]

#: Seconds nodes get to exit after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 5.0

#: Synthetic samples per node: enough for a visible learning curve in 5 rounds, small enough
#: that a round takes about a second on a laptop.
SAMPLES_PER_NODE = 600


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "demo", help="run a local federation (researcher + 3 nodes) on synthetic data"
    )
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="number of rounds (default 5)")
    parser.add_argument(
        "--split",
        default="dirichlet:1",
        metavar="iid|label-skew:K|dirichlet:ALPHA",
        help="how the synthetic data is shared among nodes, as in `fedloom data split` "
        "(default dirichlet:1: label proportions differ between nodes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where node homes and data go (default: a temp dir)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where results go (default: WORKDIR/runs)"
    )
    parser.set_defaults(func=run_demo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare_nodes(work: Path, n_nodes: int, split: str, seed: int) -> list[Path]:
    from common.data_split import parse_split
    from common.split_files import split_file
    from common.training_plans.source import plan_source
    from fedloom import demo_experiment
    from fedloom.data_cmd import format_split_table
    from fedloom.demo_data import write_demo_csv
    from node.provision import DatasetSpec, ReviewedPlan, provision_node

    spec = parse_split(split)  # before writing anything: a typo leaves no files behind
    # One pooled dataset cut into node datasets the way `fedloom data split` does it.
    pool = write_demo_csv(
        work / "data" / "pool.csv", node_index=0, n_samples=SAMPLES_PER_NODE * n_nodes
    )
    result = split_file(pool, n_nodes, spec, work / "data", seed=seed, target="y")
    print(format_split_table(result))
    # The demo operator has reviewed the demo plan: approve it ahead of time.
    plan = ReviewedPlan("DemoMLP", plan_source(demo_experiment.DemoMLP), reviewer="fedloom demo")
    homes = []
    for i, csv in enumerate(result.paths):
        home = provision_node(
            work / f"node-{i + 1}",
            name=f"hospital-{chr(ord('a') + i)}",
            datasets=[DatasetSpec("demo", ["#demo"], csv, "csv", "y")],
            approved_plans=[plan],
        )
        homes.append(home.path)
    return homes


def node_start_command(home: Path, address: str) -> list[str]:
    """`fedloom node start` for a local plain-text node of `home` (demo and benchmarks)."""
    return [
        sys.executable, "-m", "fedloom.cli", "node", "--home", str(home),
        "start", "--researcher", address, "--insecure",
    ]  # fmt: skip


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _summary(out: Path) -> None:
    runs = sorted(out.glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    if not runs:
        print("no results were written", file=sys.stderr)
        return
    metrics = runs[-1]
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    by_round: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if "loss" in row:
            by_round.setdefault(row["round"], []).append(row)
    print("\nround  nodes  mean training loss  mean local accuracy")
    for rnd, items in sorted(by_round.items()):
        total = sum(r["n_samples"] for r in items)
        loss = sum(r["loss"] * r["n_samples"] for r in items) / total
        accs = [
            r["metrics"].get("local_accuracy") for r in items if "local_accuracy" in r["metrics"]
        ]
        acc = f"{sum(accs) / len(accs):.3f}" if accs else "n/a"
        print(f"{rnd:>5}  {len(items):>5}  {loss:>18.4f}  {acc:>19}")
    print(f"\nfinal model:  {metrics.parent / 'final_params.npz'}")
    print(f"metrics:      {metrics}")


def run_demo(args: argparse.Namespace) -> int:
    """Set up nodes, start all processes, wait for the researcher, clean up."""
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="fedloom-demo-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = (args.out or work / "runs").resolve()
    try:
        homes = _prepare_nodes(work, args.nodes, args.split, args.seed)
    except FedloomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    address = f"127.0.0.1:{_free_port()}"
    print(
        f"fedloom demo: {args.nodes} nodes, {args.rounds} rounds, researcher on {address}, work dir {work}"
    )
    from fedloom import demo_experiment

    env = {
        **os.environ,
        "FEDLOOM_DEMO_ROUNDS": str(args.rounds),
        "FEDLOOM_DEMO_NODES": str(args.nodes),
    }
    cli = [sys.executable, "-m", "fedloom.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        researcher = subprocess.Popen(
            [
                *cli,
                "researcher",
                "run",
                demo_experiment.__file__,
                "--address",
                address,
                "--out",
                str(out),
                "--insecure",
            ],
            env=env,
        )
        procs.append(researcher)
        for home in homes:
            log_file = open(home / "demo-node.log", "wb")
            procs.append(
                subprocess.Popen(
                    node_start_command(home, address),
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
        code = researcher.wait()
    except KeyboardInterrupt:
        print("interrupted; stopping the federation", file=sys.stderr)
        code = 130
    finally:
        _stop(procs)
    if code == 0:
        _summary(out)
        print(f"node logs:    {work}/node-*/demo-node.log")
    else:
        print(
            f"the researcher exited with code {code}; node logs are in {work}/node-*/demo-node.log",
            file=sys.stderr,
        )
    return code
